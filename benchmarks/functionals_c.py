"""Choose each functionals member's C by cross-validation on the training folds only.

For every ``[[functionals]]`` member of ``--recipe`` (default ``recipes/ravdess_speaker.toml``)
and each C of ``--grid``, fits the member's pipeline (:func:`ensemble.members.tabular.pipeline`) on the
training folds and scores the pooled OOF of the five validation folds, exactly as ``ens train``
would, without writing runs. The chosen C is the one with the best OOF accuracy (the smaller C on
a tie). The hidden test set is not read.

    python benchmarks/functionals_c.py

Prints a Markdown table and saves ``benchmarks/results/functionals_c.{md,json}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table  # noqa: E402
from results import commit  # noqa: E402

import ensemble as ens  # noqa: E402
from ensemble.core import atomic  # noqa: E402
from ensemble.members import tabular  # noqa: E402
from ensemble.store import split as split_mod  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def oof_accuracy(recipe, split, table: tabular.Table, member) -> float:
    """Pooled OOF accuracy of ``member`` over the recipe's folds."""
    fold_of = split.folds["fold"].to_numpy()
    predicted = np.empty(len(split.y), dtype=np.int64)
    for fold in np.unique(fold_of):
        train, valid = fold_of != fold, fold_of == fold
        model = tabular.pipeline(member, recipe.train.seed, split.y[train]).fit(table.x_train[train], split.y[train])
        predicted[valid] = tabular.class_proba(model, table.x_train[valid], len(split.competition.classes)).argmax(axis=1)
    return float((predicted == split.y).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "ravdess_speaker.toml"))
    parser.add_argument("--grid", default="0.01,0.03,0.1,0.3,1,3")
    args = parser.parse_args()
    recipe = ens.load_recipe(args.recipe)
    split = split_mod.load_split(recipe)
    grid = [float(c) for c in args.grid.split(",")]
    rows, chosen = [], {}
    for member in recipe.functionals:
        table = tabular.load_table(recipe, split, member, progress=False)
        scores = {c: oof_accuracy(recipe, split, table, dataclasses.replace(member, c=c)) for c in grid}
        chosen[member.name] = max(grid, key=lambda c: (scores[c], -c))
        rows.append({"member": member.name, **{f"C={c:g}": scores[c] for c in grid}, "chosen C": f"{chosen[member.name]:g}"})
    cpu = machine("cpu")
    text = f"Commit {commit()}, {cpu['processor']}, {cpu['cpu_count']} cores. Pooled OOF accuracy by C:\n\n" + markdown_table(pd.DataFrame(rows))
    print(text)
    out = ROOT / "benchmarks" / "results"
    atomic.write_text(out / "functionals_c.md", text + "\n")
    atomic.write_json(out / "functionals_c.json", {"commit": commit(), "machine": cpu, "rows": rows, "chosen": chosen})


if __name__ == "__main__":
    main()
