"""The AudioSet members of ``recipes/ravdess_audioset.toml`` on the RAVDESS competition: pooled OOF
accuracy, macro-F1 and UAR per member, and seconds per fold.

By default only the cheap frozen-embedding members (``yamnet_emb_lr``, ``mn04_emb_lr``: the
pretrained networks' embeddings + logistic regression per fold); ``--fine-tune`` adds the two
fine-tuned backbones (5 folds x the recipe's epochs: hours on a 2-core CPU). The competition is
built afresh from ``../shared/data/ravdess`` into ``--competition`` (default
``/tmp/ens_bench_ravdess``, the same actors and folds as ``ens data ravdess``'s defaults) so that
no other folder's cache is written; runs go under ``--runs``. Only OOF is scored: the hidden
test labels are neither read nor used to choose anything.

    python benchmarks/audioset_members.py [--fine-tune] [--epochs N]

Writes ``benchmarks/results/audioset.{md,json}``. The seconds of a member's first fold include
computing the embeddings of all 1440 clips (cached afterwards), which is most of its cost.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table  # noqa: E402

from ensemble import recipe as recipe_mod  # noqa: E402
from ensemble import runs, train  # noqa: E402
from ensemble.corpora import ravdess  # noqa: E402
from ensemble.split import load_split  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "data" / "ravdess"
COLUMNS = ("accuracy", "macro_f1", "uar")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--competition", default="/tmp/ens_bench_ravdess")
    parser.add_argument("--runs", default="/tmp/ens_bench_runs")
    parser.add_argument("--fine-tune", action="store_true", help="also fine-tune yamnet and efficientat_mn04 (slow on CPU)")
    parser.add_argument("--epochs", type=int, default=0, help="override [train].epochs of the fine-tuned members")
    args = parser.parse_args()
    comp = Path(args.competition)
    if not (comp / "train.csv").is_file():
        ravdess.build_competition(SOURCE, comp)
    overrides = {"competition": {"dir": str(comp)}, "paths": {"runs_dir": args.runs}}
    if args.epochs:
        overrides["train"] = {"epochs": args.epochs}
    recipe = recipe_mod.load(ROOT / "recipes" / "ravdess_audioset.toml", overrides)
    entries = [m.name for m in recipe.functionals] + (list(recipe.backbones) if args.fine_tune else [])
    split = load_split(recipe)
    task = split.competition.task
    rows = []
    for entry in entries:
        seconds = []
        for fold in range(recipe.folds.n_splits):
            started = time.monotonic()
            (result,) = train.train(recipe, backbones=[entry], folds=[fold], progress=True)
            seconds.append(round(time.monotonic() - started, 1) if not result.skipped else float("nan"))
        oof = pd.concat([pd.read_csv(runs.run_dir(recipe, entry, k) / runs.OOF, dtype={"id": str}) for k in range(recipe.folds.n_splits)])
        proba = oof.set_index("id").loc[split.competition.train[split.competition.config.id_col].astype(str), split.competition.classes].to_numpy()
        scores = task.scores(split.y, proba)
        rows.append({"member": entry, **{f"OOF {k}": scores[k] for k in COLUMNS}, "s / fold (first, rest mean)": f"{seconds[0]} / {np.mean(seconds[1:]):.1f}"})
    table = pd.DataFrame(rows)
    text = (
        "# AudioSet members on RAVDESS (pooled OOF, 5 speaker-grouped folds of actors 1-20)\n\n"
        "`python benchmarks/audioset_members.py` on this project's shared 2-core CPU, taken under load "
        "(another engineer's trainings ran at the same time): seconds are indicative only. The first fold's "
        "seconds include embedding all 1440 clips.\n\n" + markdown_table(table) + "\n"
    )
    out = ROOT / "benchmarks" / "results"
    (out / "audioset.md").write_text(text)
    (out / "audioset.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1, default=str))
    print(text)


if __name__ == "__main__":
    main()
