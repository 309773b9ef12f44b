"""Pseudo-labelling on RAVDESS: one round of students beside their teachers, each alone and blended.

Trains (or reuses) ``recipes/ravdess_speaker.toml``'s members (the teachers: two backbones on
speaker-normalised images and four functionals members) and one ``[pseudo]`` round of students of
the members named with ``--members`` (default: all), with the recipe's ``[pseudo]`` settings
(threshold chosen per fold on the other folds' OOF for ``[pseudo].precision``). For every member
and for blends of the teachers, of the students and of both: pooled OOF accuracy / macro-F1 / UAR,
the blender's cross-validated OOF (accuracy, macro-F1, UAR), and hidden-test accuracy (reported, never used to choose).

    python benchmarks/pseudo_labels.py [--members compare_lr,basic_lr,...]

Prints a Markdown table and saves ``benchmarks/results/pseudo_labels.{md,json}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table  # noqa: E402
from results import commit  # noqa: E402
from speaker_ablation import hidden_truth  # noqa: E402

import ensemble as ens  # noqa: E402
from ensemble.blending import blend  # noqa: E402
from ensemble.core import atomic  # noqa: E402
from ensemble.members import pseudo  # noqa: E402
from ensemble.store import runs  # noqa: E402
from ensemble.store import split as split_mod  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("accuracy", "macro_f1", "uar")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", default="", help="comma-separated members retrained in the round (default: all)")
    args = parser.parse_args()
    chosen = [m for m in args.members.split(",") if m]
    base = ens.load_recipe(ROOT / "recipes" / "ravdess_speaker.toml")
    recipe = ens.load_recipe(ROOT / "recipes" / "ravdess_speaker.toml", {"pseudo": {"rounds": 1, "members": chosen}})
    ens.train_runs(base, progress=False)
    started = time.time()
    results = ens.train_runs(recipe, backbones=[e for e in recipe.entries() if e not in base.entries()], progress=False)
    seconds = time.time() - started if not all(r.skipped for r in results) else None
    split = split_mod.load_split(recipe)
    task = split.competition.task
    y_test, _ = hidden_truth(split)
    members = runs.members(recipe)
    rows = []
    for m in members:
        oof, test = runs.read_member(m, split)
        o, t = task.scores(split.y, oof), task.scores(y_test, test)
        rows.append({"model": m.name, **{f"OOF {k}": o[k] for k in COLUMNS}, **{f"test {k}": t[k] for k in COLUMNS}})
    kept = []
    for fold in range(recipe.folds.n_splits):
        labels = pd.read_csv(pseudo.labels_path(recipe, 1, fold))
        kept.append(f"fold {fold}: {len(labels)} at >= {labels['threshold'].iloc[0]:.3f}" if len(labels) else f"fold {fold}: none")
    students = [m.name for m in members if "+pl" in m.name]
    teachers = [m.name for m in members if "+pl" not in m.name]
    blends = []
    for label, names in (("teachers", teachers), ("students", students), ("teachers + students", teachers + students)):
        limited = dataclasses.replace(recipe, blend=dataclasses.replace(recipe.blend, members=names))
        for method in ("mean", "caruana"):
            result = blend.blend(limited, method=method)  # result.oof: the blender's cross-validated OOF
            o, t = task.scores(split.y, result.oof), task.scores(y_test, result.test)
            blends.append(
                {
                    "blend": f"{method}: {label}",
                    **{f"CV OOF {k}": o[k] for k in COLUMNS},
                    **{f"test {k}": t[k] for k in COLUMNS},
                }
            )
    cpu = machine("cpu")
    text = (
        f"Commit {commit()}, {cpu['processor']}, {cpu['cpu_count']} cores. Pseudo-labelled test clips per fold (round 1): {'; '.join(kept)}."
        + (f" Students trained in {seconds:.0f} s." if seconds else "")
        + "\n\n"
        + markdown_table(pd.DataFrame(rows))
        + "\n\n"
        + markdown_table(pd.DataFrame(blends))
    )
    print(text)
    out = ROOT / "benchmarks" / "results"
    atomic.write_text(out / "pseudo_labels.md", text + "\n")
    atomic.write_json(out / "pseudo_labels.json", {"commit": commit(), "machine": cpu, "members": rows, "blends": blends, "kept": kept, "seconds": seconds})


if __name__ == "__main__":
    main()
