"""How well inferred training speakers stand in for real ones (``[speakers].train = "inferred"``,
what ens does when ``train.csv`` has no group column), on RAVDESS's training actors 1-20 where the
truth is known: k chosen by silhouette over :func:`ensemble.speaker_groups.train_k_range`, the
adjusted Rand index against the actors, and how many of the 5 folds each real actor lands in when
the folds are grouped by the inferred speakers (1 with the real speakers; ungrouped folds: 5).

    python benchmarks/inferred_speakers.py

Prints and saves ``benchmarks/results/inferred_speakers.{md,json}``.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402
from results import commit  # noqa: E402

import ensemble as ens  # noqa: E402
from ensemble import atomic, speaker_groups  # noqa: E402
from ensemble import competition as comp_mod  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    recipe = ens.load_recipe(ROOT / "recipes" / "ravdess_speaker.toml", {"speakers": {"train": "inferred"}})
    competition = comp_mod.load(recipe.competition)
    found = speaker_groups.infer_train_speakers(competition, recipe, progress=False)
    actors = competition.train[competition.config.group_col].astype(str).to_numpy()
    inferred = competition.train.assign(**{competition.config.group_col: found.groups.astype(str)})
    folds = comp_mod.make_folds(dataclasses.replace(competition, train=inferred), recipe.folds.n_splits, recipe.folds.seed)
    per_actor = pd.Series(folds["fold"].to_numpy()).groupby(actors).nunique()
    result = {
        "clips": len(actors),
        "actors": len(set(actors)),
        "k": found.k,
        "k_range": list(found.k_range),
        "silhouette": found.silhouette,
        "ari": found.ari,
        "folds_per_actor_mean": float(per_actor.mean()),
        "folds_per_actor_max": int(per_actor.max()),
    }
    text = (
        f"Commit {commit()}. {result['clips']} RAVDESS training clips of {result['actors']} actors: {found.k} speakers inferred "
        f"(k {found.k_range[0]}..{found.k_range[1]} by silhouette, best {found.silhouette:.3f}), adjusted Rand index {found.ari:.3f}; "
        f"folds grouped by them put each actor in {result['folds_per_actor_mean']:.1f} of {recipe.folds.n_splits} folds on average "
        f"(at most {result['folds_per_actor_max']})."
    )
    print(text)
    out = ROOT / "benchmarks" / "results"
    atomic.write_text(out / "inferred_speakers.md", text + "\n")
    atomic.write_json(out / "inferred_speakers.json", {"commit": commit(), "machine": machine("cpu"), **result})


if __name__ == "__main__":
    main()
