"""The fine-tuned Whisper base member on RAVDESS, on a CPU-affordable schedule, beside the frozen Whisper member.

The fine-tune kind (:mod:`ensemble.members.finetune`) on ``whisper_base`` (``../shared/weights``): the top
``--train-layers`` of its six layers trained with the hidden-state weights, attentive pooling and
the head, ``--epochs`` epochs, AdamW at ``--lr`` (default 1e-3: fold 0's two epochs at 5e-4 ended with
a training loss of 1.40, above the fold's validation loss, still falling: underfit) with layer-wise
decay ``--layer-decay``, batches of 16, SpecAugment from ``recipes/ravdess.toml``'s image settings, no waveform copies (they cost more
than the model on this CPU); everything else is ``recipes/ravdess.toml``'s (3.5 s clips, trimmed at
40 dB). It runs through :func:`ensemble.train.train` (the grid ``ens train`` runs) on ``--folds``
(default all five), then reads the run store. Beside it, the frozen Whisper member of
``recipes/ravdess.toml`` (``whisper_lr``: every hidden state's mean and std, per-speaker z-normalised,
logistic regression) trained on the same folds.

Each row: the member's pooled OOF accuracy / macro-F1 / UAR over the folds trained, and the hidden
test of the mean of those folds' models (read from ``solution.csv`` here, never by training); for
the fine-tuned member also the seconds per epoch per fold (training plus validation, ``log.csv``)
and the plan's estimate of them (``ens train``'s calibrated estimate, printed before it trains).
With every fold trained, a third row blends the two members as ``ens blend`` does (``[blend].members``
naming the frozen recipe's member, method ``auto``: the best cross-validated one; its OOF is the
blend's cross-validated OOF).

Finished runs of the same configuration are kept, as ``ens train`` keeps them (``--force`` trains them
again), so a second call only scores and blends.

    python benchmarks/finetune.py [--folds 0,1,2,3,4] [--epochs 3] [--lr 1e-3] [--train-layers 2] [--force] [--tag e6]

Prints and saves ``benchmarks/results/finetune.{md,json}`` (with ``--tag T``: ``finetune_T``, its runs in the
recipe ``finetune_cpu_T``, so another schedule keeps the first one's runs).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table  # noqa: E402
from results import commit  # noqa: E402
from speaker_ablation import hidden_truth  # noqa: E402

import ensemble as ens  # noqa: E402
from ensemble import plan  # noqa: E402
from ensemble.blending import blend as blend_mod  # noqa: E402
from ensemble.core import atomic  # noqa: E402
from ensemble.store import runs  # noqa: E402
from ensemble.store import split as split_mod  # noqa: E402
from ensemble.train import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
ENCODER = "whisper_base"
METRICS = ("accuracy", "macro_f1", "uar")


def scores(r, split, entry: str, folds: list[int], y_test) -> dict:
    """Pooled OOF scores over ``folds`` and the hidden-test scores of the mean of those folds' test tables."""
    task = split.competition.task
    member = runs.Member(entry, runs.root(r), (entry,), r.folds.n_splits)
    rows, probas, tests = [], [], []
    for k in folds:
        row, proba, test = runs.read_fold(member, split, entry, k)
        rows.append(row), probas.append(proba), tests.append(test)
    rows = np.concatenate(rows)
    o, t = task.scores(split.y[rows], np.concatenate(probas)), task.scores(y_test, np.mean(tests, axis=0))
    return {**{f"OOF {k}": o[k] for k in METRICS}, "hidden-test accuracy": t["accuracy"], "hidden-test uar": t["uar"]}


def blended(args, settings: dict, frozen, frozen_name: str, y_test) -> dict:
    """The row of the two members blended as ``ens blend`` blends them (method ``auto``)."""
    members = [ENCODER, f"{frozen.name}:{frozen_name}"]
    both = ens.load_recipe(args.recipe, {**settings, "backbones": [ENCODER], "functionals": [], "blend": {"members": members, "method": "auto"}})
    result = blend_mod.blend(both)
    task = result.split.competition.task
    o, t = task.scores(result.split.y, result.oof), task.scores(y_test, result.test)
    shown = "" if result.weights is None else " (" + ", ".join(f"{k} {v:.2f}" for k, v in result.weights.items()) + ")"
    return {
        "member": f"blend of both: {result.method}{shown}",
        "s per epoch per fold": float("nan"),
        "plan's estimate": float("nan"),
        "training s (all folds)": float("nan"),
        **{f"OOF {k}": o[k] for k in METRICS},
        "hidden-test accuracy": t["accuracy"],
        "hidden-test uar": t["uar"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "ravdess.toml"))
    parser.add_argument("--folds", default="0,1,2,3,4")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--layer-decay", type=float, default=0.4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--force", action="store_true", help="train finished runs again")
    parser.add_argument("--tag", default="", help="another schedule's runs and output: recipe finetune_cpu_<tag>, results/finetune_<tag>.{md,json}")
    args = parser.parse_args()
    folds = [int(k) for k in args.folds.split(",")]
    torch.set_num_threads(args.threads)  # this script owns its process
    cpu = machine("cpu")  # the load average before this benchmark's own work
    settings = {
        "name": "finetune_cpu" + (f"_{args.tag}" if args.tag else ""),
        "runtime": {"threads": args.threads},
        "train": {"epochs": args.epochs, "batch_size": 16, "lr": args.lr, "layer_decay": args.layer_decay, "warmup_epochs": 0.5},
        "augment": {"copies": 0},
        "finetune": {"train_layers": args.train_layers, "pooling": "attention"},
    }
    tuned = ens.load_recipe(args.recipe, {**settings, "backbones": [ENCODER], "functionals": []})
    frozen = ens.load_recipe(args.recipe, {"name": "finetune_cpu_frozen", "runtime": {"threads": args.threads}})
    stages = plan.estimate(tuned, folds=folds, force=True)  # the estimate of every fold, trained now or kept
    now = [k for k in folds if args.force or not (runs.run_dir(tuned, ENCODER, k) / runs.METRICS).is_file()]
    print(plan.describe(stages), flush=True)
    train(tuned, folds=folds, force=args.force)
    train(frozen, folds=folds, force=args.force)
    split = split_mod.load_split(tuned)
    y_test, _ = hidden_truth(split)
    logs = [pd.read_csv(runs.run_dir(tuned, ENCODER, k) / runs.LOG) for k in folds]
    per_epoch = float(np.mean([log["seconds"].mean() for log in logs]))
    estimate = stages[-1].basis.split(" s per epoch")[0]
    (frozen_name,) = [m.name for m in frozen.functionals]
    rows = [
        {
            "member": f"{ENCODER} fine-tuned (top {args.train_layers} layers, {args.epochs} epochs)",
            "s per epoch per fold": round(per_epoch, 1),
            "plan's estimate": float(estimate),
            "training s (all folds)": round(float(sum(log["seconds"].sum() for log in logs)), 1),
            **scores(tuned, split, ENCODER, folds, y_test),
        },
        {
            "member": f"{frozen_name} (frozen {ENCODER}, logistic regression)",
            "s per epoch per fold": float("nan"),
            "plan's estimate": float("nan"),
            "training s (all folds)": float("nan"),
            **scores(frozen, split, frozen_name, folds, y_test),
        },
    ]
    if len(folds) == tuned.folds.n_splits:
        rows.append(blended(args, settings, frozen, frozen_name, y_test))
    frame = pd.DataFrame(rows)
    head = (
        f"Commit {commit()}, {cpu['processor']}, {cpu['cpu_count']} cores, {args.threads} torch threads, load {cpu['load_average_1min']} at the start. "
        f"Folds {folds} of RAVDESS's five speaker-grouped folds (OOF pooled over them; hidden test: the mean of their models). Fine-tuned: "
        f"top {args.train_layers} of 6 layers, {args.epochs} epochs, batch 16, lr {args.lr:g}, layer decay {args.layer_decay:g}, "
        "no waveform copies; training seconds: the sum of the epochs' (training and validation) in the runs' log.csv. "
        f"Fine-tuned folds trained by this call: {now or 'none (finished runs kept)'}."
    )
    text = head + "\n\n" + markdown_table(frame, digits=4)
    print(text)
    stem = "finetune" + (f"_{args.tag}" if args.tag else "")
    atomic.write_text(OUT / f"{stem}.md", text + "\n")
    result = {"commit": commit(), "machine": cpu, "args": vars(args), "rows": rows, "plan": [s.__dict__ for s in stages]}
    result["logs"] = [log.to_dict("list") for log in logs]
    atomic.write_text(OUT / f"{stem}.json", json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
