"""Wall time and peak RAM of a recipe's whole training grid (backbones x folds), feature rendering included.

Builds the features into a fresh cache (the competition's tables are copied into a temporary
folder whose ``audio_root`` is the original one, so nothing is reused from earlier runs), then
trains every (backbone, fold) of the recipe into a temporary runs folder with
:func:`ensemble.members.image_fit.train_fold`, exactly what ``ens train --recipe ...`` does. Reports the wall
time of the feature build and of each run, the total, and the peak resident memory of the process
during the feature build and during training.
``--backbones``, ``--folds`` and ``--epochs`` shrink the grid (for a CPU); the JSON says which grid ran.
``--no-pretrained`` starts every backbone from random weights: the same wall time, less loading,
for a machine without the ImageNet weights and without internet. The JSON is saved after the
feature build and after every run (``"finished": false`` until the last), so a grid killed by a
time limit still leaves the times of the runs it finished.

    python benchmarks/grid.py [--recipe recipes/ravdess_images.toml] [--backbones a,b] [--folds 0,1] [--epochs N] [--no-pretrained]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from common import machine, peak_rss_mib, reset_peak, save

from ensemble.core import recipe as recipe_mod
from ensemble.members import data as data_mod
from ensemble.members import image_fit, runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=Path("recipes/ravdess_images.toml"))
    parser.add_argument("--backbones", default="", help="Comma-separated subset of the recipe's backbones (default: all).")
    parser.add_argument("--folds", default="", help="Comma-separated folds (default: all).")
    parser.add_argument("--epochs", type=int, default=0, help="Epochs per run (default: the recipe's).")
    parser.add_argument("--no-pretrained", action="store_true", help="Random initial weights (timing only).")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/grid.json"))
    args = parser.parse_args()

    recipe = recipe_mod.load(args.recipe)
    backbones = args.backbones.split(",") if args.backbones else recipe.backbones
    folds = [int(f) for f in args.folds.split(",")] if args.folds else list(range(recipe.folds.n_splits))
    if args.epochs:
        recipe.train.epochs = args.epochs
    if args.no_pretrained:
        recipe.train.pretrained = False
    full = backbones == recipe.backbones and len(folds) == recipe.folds.n_splits and not args.epochs
    result = {
        "recipe": str(args.recipe),
        "grid": {"backbones": backbones, "folds": folds, "epochs": recipe.train.epochs, "full": full, "pretrained": recipe.train.pretrained},
        "finished": False,
        "machine": machine(str(runtime.resolve_device(recipe.runtime.device))),
    }
    source = Path(recipe.competition.dir).resolve()
    if not (source / "train.csv").exists():
        raise SystemExit(f"{source} holds no competition: run `ens data ravdess` (or give another --recipe).")
    with tempfile.TemporaryDirectory() as tmp:
        competition = Path(tmp) / "competition"
        competition.mkdir()
        for table in source.glob("*.csv"):
            shutil.copy(table, competition)
        recipe.competition.audio_root = str(Path(recipe.competition.audio_root or source).resolve())
        recipe.competition.dir, recipe.paths.runs_dir = str(competition), str(Path(tmp) / "runs")

        started = time.perf_counter()
        data = data_mod.load_data(recipe)
        result["clips"] = {"train": len(data.x_train), "test": len(data.x_test), "augmented_copies": recipe.augment.copies}
        result["feature_build_s"] = round(time.perf_counter() - started, 1)
        result["peak_rss_mib"] = {"feature_build": peak_rss_mib()}
        result["runs"] = runs = {}
        save(result, args.out, echo=False)
        reset_peak()
        for backbone in backbones:
            for fold in folds:
                t0 = time.perf_counter()
                metrics = image_fit.train_fold(recipe, data, backbone, fold)
                runs[f"{backbone}/fold{fold}"] = {"seconds": round(time.perf_counter() - t0, 1), recipe.train.metric: round(metrics[recipe.train.metric], 4)}
                result["peak_rss_mib"]["training"] = peak_rss_mib()
                save(result, args.out, echo=False)
                print(f"{backbone} fold {fold}: {runs[f'{backbone}/fold{fold}']}", flush=True)
        total_s = time.perf_counter() - started
    result.update(finished=True, total_s=round(total_s, 1), total_min=round(total_s / 60, 2))
    save(result, args.out)


if __name__ == "__main__":
    main()
