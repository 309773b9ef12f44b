"""Functionals on threads: each set's extraction of real clips on one thread vs several
(:func:`ensemble.core.threads.thread_map`, one clip per task), side by side in one run, medians of
round-robin repeats; the ground for :func:`ensemble.members.functionals.workers` (threads for openSMILE only).

    python benchmarks/functionals_threads.py [--clips 120] [--threads 2] [--repeats 3]

Clips: the first ``--clips`` hidden-test clips of ``data/ravdess`` (``ens data ravdess``), loaded
and trimmed once before timing. Writes ``benchmarks/results/functionals_threads.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from common import machine, median, save

from ensemble.core import atomic
from ensemble.core import recipe as recipe_mod
from ensemble.core.threads import thread_map
from ensemble.inputs import audio
from ensemble.members import functionals
from ensemble.store import competition

SETS = ("ComParE_2016", "eGeMAPSv02", "ens_basic")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=Path("recipes/ravdess.toml"))
    parser.add_argument("--clips", type=int, default=120)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/functionals_threads.json"))
    args = parser.parse_args()

    recipe = recipe_mod.load(args.recipe)
    c = competition.load(recipe.competition)
    rate = recipe.features.sample_rate
    clips = [audio.load_trimmed(p, rate, recipe.features.trim_db)[0] for p in c.audio_paths(c.test)[: args.clips]]
    counts = (1, args.threads)
    times = {name: {n: [] for n in counts} for name in SETS}
    same = {}
    for name in SETS:
        functionals.extract(clips[:2], rate, name, threads=1)  # warm-up: openSMILE's first start

        def run(n: int, name: str = name) -> np.ndarray:
            return np.stack(list(thread_map(lambda y: functionals.extract([y], rate, name, threads=1)[0], clips, n)))

        rows = {}
        for _ in range(args.repeats):
            for n in counts:
                started = time.perf_counter()
                rows[n] = run(n)
                times[name][n].append(time.perf_counter() - started)
        same[name] = bool(np.array_equal(rows[1], rows[args.threads]))
    result = {
        "clips": len(clips),
        "threads": args.threads,
        "machine": machine("cpu"),
        "seconds": {name: {str(n): median(v, 2) for n, v in by.items()} for name, by in times.items()},
        "speed_up": {name: round(float(np.median(by[1]) / np.median(by[args.threads])), 2) for name, by in times.items()},
        "same_rows": same,
        "repeats": args.repeats,
    }
    save(result, args.out)
    rows = [f"| set | 1 thread: s | {args.threads} threads: s | speed-up | same rows |", "| --- | ---: | ---: | ---: | --- |"]
    for name in SETS:
        s = result["seconds"][name]
        rows.append(f"| {name} | {s['1']} | {s[str(args.threads)]} | {result['speed_up'][name]} | {same[name]} |")
    atomic.write_text(args.out.with_suffix(".md"), "\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
