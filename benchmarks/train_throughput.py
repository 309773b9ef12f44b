"""Data-path efficiency: steady-state images/s of `ens train`'s loop against a bare timm loop, side by side.

The ens loop is :func:`ensemble.members.image_fit.train_fold` on fold 0 of ``--recipe`` (memory-mapped cache,
gather of clean or augmented renderings, albumentations / SpecAugment / mixup as the recipe says,
prefetch, optimizer, scheduler and EMA steps): its ``train_img_per_s`` of epoch 2 (epoch 1 warms
up). The bare loop is what the hardware can do with no data path: ``timm.create_model`` of the same
backbone, one random batch of the same shape resident on the device, AdamW, cross-entropy, the
same channels_last order and autocast (:func:`ensemble.members.runtime.precision_on`), for as many steps as an ens epoch; its second pass is
timed. The two alternate for ``--repeats`` rounds; medians and their ratio are reported
(ratio = ens / bare, the data-path efficiency; 1.0 means the data path costs nothing).

    python benchmarks/train_throughput.py [--recipe recipes/ravdess_images.toml] [--backbone tf_mobilenetv3_small_100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd
import timm
import torch
from common import machine, median, peak_rss_mib, save
from train_step import run_steps

from ensemble.core import recipe as recipe_mod
from ensemble.members import data as data_mod
from ensemble.members import image_fit, runtime
from ensemble.store import runs


def bare_loop(backbone: str, shape: tuple[int, ...], classes: int, steps: int, recipe: recipe_mod.Recipe, device: torch.device) -> float:
    """Images/s of the second of two passes of ``steps`` forward/backward/AdamW steps on one resident random batch ``shape``."""
    torch.manual_seed(0)
    model = runtime.to_device(timm.create_model(backbone, pretrained=False, num_classes=classes, in_chans=shape[1]), device)
    x = runtime.channels_last(torch.rand(shape, device=device))
    y = torch.randint(0, classes, (shape[0],), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.train.lr, weight_decay=recipe.train.weight_decay)
    precision = runtime.precision_on(recipe.train, device)
    run_steps(model, x, y, steps, precision, recipe, optimizer)
    return steps * shape[0] / run_steps(model, x, y, steps, precision, recipe, optimizer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=Path("recipes/ravdess_images.toml"))
    parser.add_argument("--backbone", default="tf_mobilenetv3_small_100")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_throughput.json"))
    args = parser.parse_args()

    recipe = recipe_mod.load(args.recipe)
    recipe.train.epochs, recipe.train.patience = 2, 0
    data = data_mod.load_data(recipe)
    device = runtime.resolve_device(recipe.runtime.device)
    n_train = int((data.folds["fold"] != 0).sum())
    batch = min(recipe.train.batch_size, n_train)
    steps = n_train // batch
    shape = (batch, *data.x_train.shape[1:])
    ens, bare = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            recipe.paths.runs_dir, recipe.name = tmp, f"round{repeat}"
            image_fit.train_fold(recipe, data, args.backbone, 0, progress=False)
            ens.append(float(pd.read_csv(runs.run_dir(recipe, args.backbone, 0) / "log.csv")["train_img_per_s"].iloc[1]))
            bare.append(bare_loop(args.backbone, shape, len(data.competition.classes), steps, recipe, device))
            print(f"round {repeat + 1}: ens {ens[-1]:.1f} img/s, bare timm {bare[-1]:.1f} img/s", flush=True)
    result = {
        "recipe": str(args.recipe),
        "backbone": args.backbone,
        "batch": list(shape),
        "steps_per_epoch": steps,
        "precision": runtime.precision_on(recipe.train, device),
        "channels_last": True,
        "augment": {
            "waveform_copies": recipe.augment.copies,
            "image": recipe.augment.image,
            "freq_mask": recipe.augment.freq_mask,
            "time_mask": recipe.augment.time_mask,
            "mixup_alpha": recipe.augment.mixup_alpha,
        },
        "ens_img_per_s": [round(v, 1) for v in ens],
        "bare_img_per_s": [round(v, 1) for v in bare],
        "ens_median": median(ens),
        "bare_median": median(bare),
        "efficiency": round(median(ens) / median(bare), 3),
        "peak_rss_mib": peak_rss_mib(),
        "machine": machine(str(device)),
    }
    save(result, args.out)


if __name__ == "__main__":
    main()
