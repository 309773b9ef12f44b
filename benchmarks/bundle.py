"""The offline inference bundle of a trained recipe (`ens bundle`): its size by part, and its predict throughput as installed.

Builds the bundle (:func:`ensemble.bundle.build`: the locked wheels downloaded, ens's wheel, the runs, the
graphs, the weights, the zip), installs it into a fresh virtual environment with its own ``predict.py``
(``pip install --no-index``), and runs that ``predict.py`` on the competition's hidden-test clips, timed
(:func:`ensemble.bundle.measure_budget`, which also says whether ``--budget-clips`` such files fit in
``--budget-minutes`` with this machine's throughput); checks its probabilities against ``ens predict``
in this process.

    python benchmarks/bundle.py [--recipe recipes/ravdess.toml] [--runtime openvino] [--runs-dir runs] [--competition data/ravdess]

Writes ``benchmarks/results/bundle.json`` and ``bundle.md`` (the table of docs/benchmarks.md, "Offline bundle").
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from common import machine, save

from ensemble import bundle, predict
from ensemble.core import atomic
from ensemble.core import recipe as recipe_mod
from ensemble.store import competition

MB = 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=Path("recipes/ravdess.toml"))
    parser.add_argument("--runtime", default="openvino", choices=bundle.RUNTIMES)
    parser.add_argument("--runs-dir", help="the run store holding the trained recipe (default the recipe's [paths].runs_dir)")
    parser.add_argument("--competition", help="the competition folder whose test clips are timed (default the recipe's)")
    parser.add_argument("--budget-clips", type=int, default=700, help="files of the budget check (default BirdCLEF's ~700)")
    parser.add_argument("--budget-minutes", type=float, default=90.0, help="its limit in minutes (default BirdCLEF's 90)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bundle.json"))
    args = parser.parse_args()

    load_at_start = round(os.getloadavg()[0], 2)
    overrides = {"paths": {"runs_dir": args.runs_dir}} if args.runs_dir else {}
    if args.competition:
        overrides["competition"] = {"dir": args.competition}
    r = recipe_mod.load(args.recipe, overrides)
    c = competition.load(r.competition)
    clips = c.audio_paths(c.test)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / f"{r.name}-{args.runtime}"
        started = time.monotonic()
        built = bundle.build(r, args.runtime, folder, on_step=print)
        build_s = time.monotonic() - started
        budget = bundle.measure_budget(built.folder, clips, args.budget_clips, args.budget_minutes, Path(scratch) / "venv")
        print(budget.describe())
        # The same predict.py again in the installed environment, for its submission: checked against ens predict here.
        sub = Path(scratch) / "submission.csv"
        python = Path(scratch) / "venv" / "bin" / "python"
        subprocess.run([str(python), str(built.folder / "predict.py"), "--no-install", str(Path(clips[0]).parent), "--out", str(sub)], check=True)
        got = pd.read_csv(sub)
        graphs = None if args.runtime == "torch" else built.folder / bundle.EXPORT / args.runtime  # the bundle's graphs, checked against its runs
        ensemble = predict.load_ensemble(r, "cpu", args.runtime, graphs)
        expected = predict.predict(ensemble, clips)
        by_stem = {Path(p.path).stem: p.proba for p in expected}
        diff = float(np.abs(got[ensemble.classes].to_numpy() - np.stack([by_stem[i] for i in got[r.competition.id_col]])).max())
        manifest = built.manifest
    sizes = {k: round(v / MB, 1) for k, v in built.sizes.items()}
    wheels = manifest["files"]
    largest = sorted(((n, e["bytes"]) for n, e in wheels.items() if n.startswith("wheels/")), key=lambda x: -x[1])[:3]
    result = {
        "recipe": str(args.recipe),
        "runtime": args.runtime,
        "commit": manifest["ens_commit"][:7],
        "dirty": manifest["ens_dirty"],
        "members": manifest["members"],
        "wheels": sum(1 for n in wheels if n.startswith("wheels/")),
        "sizes_mb": sizes,
        "largest_wheels_mb": {Path(n).name: round(b / MB, 1) for n, b in largest},
        "build_s": round(build_s, 1),
        "install_s": round(budget.install_s, 1),
        "startup_s": round(budget.fixed_s, 1),
        "test_clips": budget.sample,
        "predict_s": round(budget.predict_s, 2),
        "clips_per_s": round(budget.clips_per_s, 2),
        "budget": {"clips": args.budget_clips, "minutes": args.budget_minutes, "estimate_min": round(budget.estimate_s / 60, 1), "fits": budget.fits},
        "max_abs_diff_vs_ens_predict": diff,
        "load_average_at_start": load_at_start,
        "machine": machine(),
    }
    save(result, args.out)
    table = (
        f"Commit {result['commit']}{' (uncommitted changes)' if result['dirty'] else ''}, {result['machine']['processor']}, "
        f"{result['machine']['cpu_count']} cores, load {load_at_start} at the start. Recipe {args.recipe} "
        f"({', '.join(m['name'] for m in result['members'])}), runtime {args.runtime}.\n\n"
        "| part | MB |\n| --- | ---: |\n"
        + "".join(f"| {part} | {sizes[part]} |\n" for part in ("wheels", "ens", "runs", "export", "weights", "total", "zip"))
        + f"\n{result['wheels']} wheels; the largest: {', '.join(f'{n} {mb} MB' for n, mb in result['largest_wheels_mb'].items())}.\n\n"
        "| step | seconds |\n| --- | ---: |\n"
        f"| build (download, ens wheel, export, hashes, zip) | {result['build_s']} |\n"
        f"| install into a fresh venv (predict.py --install-only) | {result['install_s']} |\n"
        f"| predict.py start-up, imports, loading, warm-up file | {result['startup_s']} |\n"
        f"| predict {result['test_clips']} hidden-test clips ({result['clips_per_s']} clips/s) | {result['predict_s']} |\n\n"
        f"Budget check: {args.budget_clips} files like these in {args.budget_minutes:g} min: estimated {result['budget']['estimate_min']} min, "
        f"{'fits' if budget.fits else 'does not fit'}. Largest probability difference from `ens predict` in this process: {diff:.1e}.\n"
    )
    atomic.write_text(args.out.with_suffix(".md"), table)
    print(table)


if __name__ == "__main__":
    main()
