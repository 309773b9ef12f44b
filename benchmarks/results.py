"""One recipe's members and blends from scratch with today's code (the image-only recipe by default).

Runs the README's commands through the ``ens`` CLI (``ens data ravdess``, ``ens train --force``
for each backbone, ``ens blend`` per member and per method, then scores every submission against
the hidden ``solution.csv``), and writes the table as Markdown with the commit, the machine and
each stage's wall time:

    python benchmarks/results.py                      # tf_mobilenetv3_small_100 + regnetx_002, mean and caruana
    python benchmarks/results.py --backbones regnetx_002 --methods mean --no-force

Prints the table and saves ``benchmarks/results/results_table.md`` and ``results_table.json``.
``--force`` (the default) retrains every run, so figures never come from older code; the feature
cache is reused when present (it holds the same arrays: features are cached by a hash of their
settings). OOF columns pool the five validation folds; hidden-test columns score the submission.
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
from common import machine  # noqa: E402

from ensemble import atomic, competition, submission  # noqa: E402
from ensemble import recipe as recipe_mod

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("accuracy", "macro_f1", "uar")


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/ravdess_images.toml")
    parser.add_argument("--backbones", default="tf_mobilenetv3_small_100,regnetx_002")
    parser.add_argument("--methods", default="mean,caruana", help="Blend methods, each a row; the first is the recipe's default.")
    parser.add_argument("--force", action=argparse.BooleanOptionalAction, default=True, help="Retrain finished runs (default).")
    parser.add_argument("--out", default="benchmarks/results/results_table")
    args = parser.parse_args()
    os.chdir(ROOT)  # the recipe's folders are relative to the repository root, as in the README
    recipe = recipe_mod.load(args.recipe)
    backbones, methods = args.backbones.split(","), args.methods.split(",")
    seconds = {"data": ens("data", "ravdess")}
    for name in backbones:
        seconds[f"train {name}"] = ens("train", "--recipe", args.recipe, "--backbone", name, *(["--force"] if args.force else []))
    comp = competition.load(recipe.competition)
    board_path = Path(recipe.paths.runs_dir) / recipe.name / "blend" / "leaderboard.csv"
    rows = []

    def row(model: str, submission_name: str, board_model: str, cv: bool) -> dict:
        board = pd.read_csv(board_path).set_index("model").loc[board_model]
        hidden = submission.score(comp, Path(recipe.paths.submissions_dir) / f"{submission_name}.csv")
        prefix = "cv_" if cv else ""
        return {"model": model, **{f"oof_{k}": float(board[prefix + k]) for k in COLUMNS}, **{f"test_{k}": float(hidden[k]) for k in COLUMNS}}

    for name in backbones:
        seconds[f"blend {name}"] = ens("blend", "--recipe", args.recipe, "--backbone", name, "--method", "mean", "--name", f"{recipe.name}-{name}")
        rows.append(row(name, f"{recipe.name}-{name}", name, cv=False))
    for method in methods:
        seconds[f"blend {method}"] = ens("blend", "--recipe", args.recipe, "--backbone", ",".join(backbones), "--method", method)
        # mean, rank and geometric fit nothing: their in-sample OOF is honest; a fitted method is quoted cross-validated
        fitted = method not in ("mean", "rank", "geometric")
        label = f"blend: {method}" + (" (cross-validated OOF)" if fitted else "")
        rows.append(row(label, f"{recipe.name}-{method}", f"blend: {method}", cv=fitted))
    table = pd.DataFrame(rows)
    header = ["model", *(f"OOF {k}" for k in COLUMNS), *(f"hidden-test {k}" for k in COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join([r["model"], *(f"{r[f'oof_{k}']:.4f}" for k in COLUMNS), *(f"{r[f'test_{k}']:.4f}" for k in COLUMNS)]) + " |" for r in rows]
    info = {
        "commit": commit(),
        "machine": machine(),
        "recipe": args.recipe,
        "backbones": backbones,
        "methods": methods,
        "forced": args.force,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "rows": table.to_dict("records"),
    }
    m = info["machine"]
    text = "\n".join(
        [
            *lines,
            "",
            f"Commit {info['commit']}; {m['processor']}, {m['cpu_count']} cores, torch {m['torch']}; "
            + "; ".join(f"{k} {v:.0f} s" for k, v in info["seconds"].items())
            + ".",
        ]
    )
    print(text)
    atomic.write_text(f"{args.out}.md", text + "\n")
    atomic.write_json(f"{args.out}.json", info)


if __name__ == "__main__":
    main()
