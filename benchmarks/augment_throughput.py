"""Training throughput (images/s) of `ens train`'s loop with and without augmentation, side by side.

Runs one epoch of fold 0 for each ablation recipe (none / waveform / spectrogram / both), round-robin
``--repeats`` times so that every arm sees the same machine load, and reports the median of the
``train_img_per_s`` column of each run's log.csv. Needs the RAVDESS competition (`ens data ravdess`);
augmented renderings are cached on first use.

    python benchmarks/augment_throughput.py [--repeats 3] [--out benchmarks/results/augment_throughput.json]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd
from common import machine, median, save

from ensemble.core import recipe as recipe_mod
from ensemble.members import data as data_mod
from ensemble.members import image_fit, runtime
from ensemble.store import runs

ARMS = {
    "none": "recipes/ravdess_aug_none.toml",
    "waveform": "recipes/ravdess_aug_wave.toml",
    "spectrogram": "recipes/ravdess_aug_spec.toml",
    "both": "recipes/ravdess_aug_both.toml",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backbone", default="tf_mobilenetv3_small_100")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/augment_throughput.json"))
    args = parser.parse_args()

    recipes = {arm: recipe_mod.load(path) for arm, path in ARMS.items()}
    data = {arm: data_mod.load_data(r, progress=True) for arm, r in recipes.items()}
    speeds = {arm: [] for arm in ARMS}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for arm, r in recipes.items():
                r.paths.runs_dir, r.train.epochs, r.name = tmp, 1, f"{arm}{repeat}"
                image_fit.train_fold(r, data[arm], args.backbone, 0, progress=False)
                log = pd.read_csv(runs.run_dir(r, args.backbone, 0) / "log.csv")
                speeds[arm].append(float(log["train_img_per_s"].iloc[0]))
                print(f"repeat {repeat + 1}: {arm:12s} {speeds[arm][-1]:7.1f} img/s", flush=True)
    medians = {arm: median(v) for arm, v in speeds.items()}
    result = {
        "machine": machine(str(runtime.resolve_device(recipes["none"].runtime.device))),
        "backbone": args.backbone,
        "batch_size": recipes["none"].train.batch_size,
        "image": list(data["none"].x_train.shape[1:]),
        "img_per_s": speeds,
        "median_img_per_s": medians,
        "ratio_to_none": {arm: round(m / medians["none"], 3) for arm, m in medians.items()},
    }
    save(result, args.out)


if __name__ == "__main__":
    main()
