"""Wall time of one small training grid with the local executor vs Ray (``ens train --executor``), in one run.

    python benchmarks/executors.py --competition data/ravdess [--backbones test_resnet,test_efficientnet] \
        [--epochs 2] [--workers 2] [--repeats 1]

The grid is every backbone x every fold of the competition's ``folds.csv`` (5 for RAVDESS) on a
small image (``height = 32``, ``hop_length = 640``) so that it fits a CPU box; the feature cache is
filled before the clock starts. Arms, each from an empty run store, round-robin: ``local`` (one
run after another with torch's threads as the environment sets them: ``OMP_NUM_THREADS``, else
every core), ``ray`` (a local Ray instance with ``--workers`` CPUs, one task per run with
``run_cpus = 1`` and one torch thread each; Ray's start is timed apart). Both arms' OOF tables are
compared (equal only when both ran one torch thread). Writes ``benchmarks/results/executors.json``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from common import machine, median, save

from ensemble import train
from ensemble.core import recipe as recipe_mod
from ensemble.deploy import executors
from ensemble.members.data import load_data
from ensemble.store import runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--competition", default="data/ravdess")
    parser.add_argument("--backbones", default="test_resnet,test_efficientnet")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/executors.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        settings = {
            "name": "grid",
            "backbones": args.backbones.split(","),
            "competition": {"dir": args.competition},
            "features": {"duration": 3.5, "height": 32, "hop_length": 640},
            "train": {"epochs": args.epochs, "pretrained": False, "batch_size": 32},
            "augment": {"copies": 0},
            "paths": {"runs_dir": str(Path(tmp) / "runs")},
        }
        recipe = recipe_mod.load(Path("recipes/ravdess.toml"), settings)
        load_data(recipe, progress=False)  # the cache, before any clock
        started = time.perf_counter()
        ray = executors.Ray(num_cpus=args.workers)
        ray_start_s = time.perf_counter() - started
        one_thread = recipe_mod.load(Path("recipes/ravdess.toml"), {**settings, "runtime": {"threads": 1, "run_cpus": 1}})
        arms = {"local": (recipe, executors.Local()), "ray": (one_thread, ray)}
        seconds: dict[str, list[float]] = {arm: [] for arm in arms}
        tables = {}
        threads = torch.get_num_threads()
        for _ in range(args.repeats):
            for arm, (r, executor) in arms.items():
                shutil.rmtree(runs.root(r), ignore_errors=True)
                started = time.perf_counter()
                results = train.train(r, progress=False, executor=executor)
                seconds[arm].append(time.perf_counter() - started)
                torch.set_num_threads(threads)
                tables[arm] = {str(p.relative_to(runs.root(r))): p.read_text() for p in sorted(runs.root(r).glob("*/fold*/oof.csv"))}
        ray.ray.shutdown()
    result = {
        "grid": {"backbones": recipe.backbones, "folds": recipe.folds.n_splits, "runs": len(results), "epochs": args.epochs, "image": "(3, 32, 88)"},
        "workers": args.workers,
        "wall_s": {arm: median(v, 1) for arm, v in seconds.items()},
        "ray_over_local": round(median(seconds["local"], 3) / median(seconds["ray"], 3), 2),
        "ray_start_s": round(ray_start_s, 1),
        "same_oof_tables": tables["local"] == tables["ray"],
        "repeats": args.repeats,
        "machine": machine("cpu"),
    }
    save(result, args.out)


if __name__ == "__main__":
    main()
