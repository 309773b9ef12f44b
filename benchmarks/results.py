"""Recipes' members and blends from scratch with today's code, in one table (the image-only recipe by default).

Runs the README's commands through the ``ens`` CLI (``ens data ravdess``, ``ens train --force``
for each backbone of each recipe, ``ens blend`` per member and per method, then scores every
submission against the hidden ``solution.csv``), and writes the table as Markdown with the commit,
the machine and each stage's wall time:

    python benchmarks/results.py --backbones tf_mobilenetv3_small_100,regnetx_002   # ravdess_images.toml, mean and caruana
    python benchmarks/results.py --recipe recipes/ravdess_aug_none.toml,recipes/ravdess_aug_wave.toml --methods mean --out benchmarks/results/aug
    python benchmarks/results.py --recipe recipes/seed_gender_emotion.toml --methods mean \\
        --data-args "--labels gender_emotion --out data/ravdess_gender_emotion" --out benchmarks/results/seed_gender_emotion

Prints the table and saves ``<out>.md`` and ``<out>.json`` (default ``benchmarks/results/ravdess_images``).
``--force`` (the default) retrains every run, so figures never come from older code; the feature
cache is reused when present (it holds the same arrays: features are cached by a hash of their
settings). OOF columns pool the five validation folds; hidden-test columns score the submission.
A multilabel recipe's columns are its task's headline scores (lwlrap, mAP, micro-F1).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table  # noqa: E402

from ensemble.core import atomic, tasks  # noqa: E402
from ensemble.core import recipe as recipe_mod
from ensemble.store import competition, submission  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def ens(*args: str) -> float:
    """Run ``ens ARGS`` from the repository root (output shown), return its wall time in seconds.

    Raises:
        subprocess.CalledProcessError: the command failed.
    """
    started = time.perf_counter()
    print("$ ens " + " ".join(args), flush=True)
    subprocess.run([str(Path(sys.executable).parent / "ens"), *args], check=True)
    return time.perf_counter() - started


def commit() -> str:
    """The checked-out commit, with ``+dirty`` when the work tree has uncommitted changes to tracked files."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "ensemble", "recipes"], cwd=ROOT).returncode != 0
    return head + ("+dirty" if dirty else "")


def recipe_rows(path: str, backbones: list[str], methods: list[str], force: bool, seconds: dict) -> list[dict]:
    """Train one recipe's backbones (with ``--force``: afresh), blend each alone and all of them per
    method, score every submission; one row each (OOF columns: a fitted method's cross-validated OOF)."""
    recipe = recipe_mod.load(path)
    backbones = backbones or recipe.backbones
    columns = tasks.get(recipe.competition.task).headline  # accuracy, macro-F1, UAR; a multilabel task's lwlrap, mAP, micro-F1
    for name in backbones:
        seconds[f"train {recipe.name} {name}"] = ens("train", "--recipe", path, "--backbone", name, *(["--force"] if force else []))
    comp = competition.load(recipe.competition)
    board_path = Path(recipe.paths.runs_dir) / recipe.name / "blend" / "leaderboard.csv"

    def row(model: str, submission_name: str, board_model: str, cv: bool) -> dict:
        board = pd.read_csv(board_path).set_index("model").loc[board_model]
        hidden = submission.score(comp, Path(recipe.paths.submissions_dir) / f"{submission_name}.csv")
        prefix = "cv_" if cv else ""
        return {
            "recipe": recipe.name,
            "model": model,
            **{f"OOF {k}": float(board[prefix + k]) for k in columns},
            **{f"hidden-test {k}": float(hidden.get(k, float("nan"))) for k in columns},
        }

    rows = []
    for name in backbones:
        seconds[f"blend {recipe.name} {name}"] = ens("blend", "--recipe", path, "--backbone", name, "--method", "mean", "--name", f"{recipe.name}-{name}")
        rows.append(row(name, f"{recipe.name}-{name}", name, cv=False))
    for method in methods:
        seconds[f"blend {recipe.name} {method}"] = ens("blend", "--recipe", path, "--backbone", ",".join(backbones), "--method", method)
        # mean, rank and geometric fit nothing: their in-sample OOF is honest; a fitted method is quoted cross-validated
        fitted = method not in ("mean", "rank", "geometric")
        rows.append(row(f"blend: {method}" + (" (cross-validated OOF)" if fitted else ""), f"{recipe.name}-{method}", f"blend: {method}", cv=fitted))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/ravdess_images.toml", help="a recipe, or several comma-separated (one table)")
    parser.add_argument("--backbones", default="", help="comma-separated backbones (default: each recipe's)")
    parser.add_argument(
        "--data-args",
        default="",
        help="more options of `ens data ravdess` for the recipes' competition, e.g. '--labels gender_emotion --out data/X'",
    )
    parser.add_argument("--methods", default="mean,caruana", help="Blend methods, each a row; the first is the recipe's default.")
    parser.add_argument("--force", action=argparse.BooleanOptionalAction, default=True, help="Retrain finished runs (default).")
    parser.add_argument("--out", default="benchmarks/results/ravdess_images")
    args = parser.parse_args()
    os.chdir(ROOT)  # the recipe's folders are relative to the repository root, as in the README
    backbones, methods = [b for b in args.backbones.split(",") if b], args.methods.split(",")
    seconds = {"data": ens("data", "ravdess", *args.data_args.split())}
    rows = [row for path in args.recipe.split(",") for row in recipe_rows(path, backbones, methods, args.force, seconds)]
    table = pd.DataFrame(rows)
    if table["recipe"].nunique() == 1:
        table = table.drop(columns="recipe")
    info = {
        "commit": commit(),
        "machine": machine(),
        "recipes": args.recipe.split(","),
        "methods": methods,
        "forced": args.force,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "rows": rows,
    }
    m = info["machine"]
    text = "\n".join(
        [
            f"Commit {info['commit']}; {m['processor']}, {m['cpu_count']} cores, torch {m['torch']}; "
            + "; ".join(f"{k} {v:.0f} s" for k, v in info["seconds"].items())
            + ".",
            "",
            markdown_table(table, digits=4),
        ]
    )
    print(text)
    atomic.write_text(f"{args.out}.md", text + "\n")
    atomic.write_json(f"{args.out}.json", info)


if __name__ == "__main__":
    main()
