"""Training-step speed by memory layout and autocast precision, each backbone side by side.

For every backbone of each ``--recipes`` recipe: images/s of forward/backward/AdamW steps of the
model ens trains (:func:`ensemble.members.models.build`, randomly initialised: speed does not depend
on the weights) on one resident random batch of the recipe's shape ``(batch_size, channels,
height, frames)``, in three arms measured in alternation for ``--repeats`` rounds:

- ``contiguous_fp32``: timm's default memory order, no autocast;
- ``channels_last_fp32``: ens's memory order (:func:`ensemble.members.runtime.to_device`), no autocast;
- ``channels_last_bf16``: with bf16 autocast, ``[train].cpu_precision = "bf16"`` on a CPU
  (``[train].precision``'s default on CUDA).

Each arm of each round builds a fresh model and times ``--steps`` steps after two untimed ones;
the arms' order rotates from round to round, so none is always first. Medians over rounds and
their ratio to ``contiguous_fp32`` are reported.

    python benchmarks/train_step.py [--recipes recipes/ravdess_images.toml recipes/seed_deep_cnn.toml] [--repeats 3] [--steps 4]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import machine, median, peak_rss_mib, save

from ensemble.core import recipe as recipe_mod
from ensemble.inputs import features
from ensemble.members import models, runtime

ARMS = {"contiguous_fp32": (False, "fp32"), "channels_last_fp32": (True, "fp32"), "channels_last_bf16": (True, "bf16")}


def run_steps(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, precision: str, recipe: recipe_mod.Recipe, optimizer: torch.optim.Optimizer
) -> float:
    """Seconds of ``steps`` training steps (cross-entropy with the recipe's label smoothing, under
    :func:`ensemble.members.runtime.autocast` of ``precision``) of ``model`` on the resident batch ``x``,
    labels ``y``; waits for the device before and after."""
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=recipe.train.label_smoothing)
    model.train()
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        with runtime.autocast(x.device, precision):
            loss = criterion(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def arm_rate(recipe: recipe_mod.Recipe, backbone: str, classes: int, device: torch.device, layout: bool, precision: str, steps: int) -> float:
    """Images/s of one arm: a fresh model and AdamW (the recipe's lr and weight decay), the batch
    in channels_last order if ``layout`` else contiguous, two untimed steps, then ``steps`` timed."""
    torch.manual_seed(0)
    model = models.build(recipe, backbone, classes)
    model = runtime.to_device(model, device) if layout else model.to(device)
    f = recipe.features
    x = torch.rand(recipe.train.batch_size, len(f.channels), f.height, features.frames(f), device=device)
    x = runtime.channels_last(x) if layout else x
    y = torch.randint(0, classes, (len(x),), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.train.lr, weight_decay=recipe.train.weight_decay)
    run_steps(model, x, y, 2, precision, recipe, optimizer)
    return steps * len(x) / run_steps(model, x, y, steps, precision, recipe, optimizer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", type=Path, nargs="+", default=[Path("recipes/ravdess_images.toml"), Path("recipes/seed_deep_cnn.toml")])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_step.json"))
    args = parser.parse_args()

    device = runtime.resolve_device(args.device)
    jobs = []
    for path in args.recipes:
        recipe = recipe_mod.load(path)
        recipe.train.pretrained = False
        jobs += [(recipe, backbone, len(recipe.competition.classes)) for backbone in recipe.backbones]
    rates = {(r.name, b): {arm: [] for arm in ARMS} for r, b, _ in jobs}
    for round_ in range(args.repeats):
        for recipe, backbone, classes in jobs:
            names = list(ARMS)
            for arm in names[round_ % len(names) :] + names[: round_ % len(names)]:
                layout, precision = ARMS[arm]
                rates[recipe.name, backbone][arm].append(arm_rate(recipe, backbone, classes, device, layout, precision, args.steps))
            print(
                f"round {round_ + 1} {backbone}: " + ", ".join(f"{arm} {v[-1]:.1f}" for arm, v in rates[recipe.name, backbone].items()) + " img/s", flush=True
            )
    rows = []
    for (name, backbone), arms in rates.items():
        base = median(arms["contiguous_fp32"], 3)
        rows.append(
            {
                "recipe": name,
                "backbone": backbone,
                "img_per_s": {arm: [round(v, 1) for v in values] for arm, values in arms.items()},
                "median_img_per_s": {arm: median(values) for arm, values in arms.items()},
                "vs_contiguous_fp32": {arm: round(median(values, 3) / base, 2) for arm, values in arms.items()},
            }
        )
    save(
        {
            "repeats": args.repeats,
            "steps": args.steps,
            "arms": {arm: {"channels_last": cl, "autocast": p} for arm, (cl, p) in ARMS.items()},
            "backbones": rows,
            "peak_rss_mib": peak_rss_mib(),
            "machine": machine(str(device)),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
