"""How well inferred training speakers stand in for real ones (``[speakers].train = "inferred"``,
what ens does when ``train.csv`` has no group column), on RAVDESS's training actors 1-20 where the
truth is known: k chosen by silhouette over :func:`ensemble.speaker.speaker_groups.train_k_range`, the
adjusted Rand index against the actors, and how many of the 5 folds each real actor lands in when
the folds are grouped by the inferred speakers (1 with the real speakers; ungrouped folds: 5).
And the test speakers as ``ens train`` writes them (``<competition>/test_speakers.csv``,
``[speakers].test = "auto"``: inferred, since RAVDESS's ``test.csv`` has no speaker column): their
adjusted Rand index against ``solution.csv``'s actors (:func:`ari_of_test_speakers`). ens itself never
opens ``solution.csv`` outside ``ens score``; this measurement lives here for that reason.

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
from ensemble.core import atomic  # noqa: E402
from ensemble.speaker import speaker_groups, speakers  # noqa: E402
from ensemble.store import competition as comp_mod  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def ari_of_test_speakers(competition: comp_mod.Competition) -> tuple[int, float]:
    """The number of test speakers in the written ``test_speakers.csv`` (:func:`ensemble.speaker.speaker_groups.write`)
    and their adjusted Rand index against ``solution.csv``'s group column (the true speakers).

    Raises:
        FileNotFoundError: no ``test_speakers.csv`` or ``solution.csv``.
        ValueError: ``test_speakers.csv`` does not list exactly the ids of ``solution.csv``.
    """
    c = competition.config
    written = pd.read_csv(competition.root / speaker_groups.CSV, dtype=str, keep_default_na=False)
    solution = pd.read_csv(competition.root / comp_mod.SOLUTION, dtype=str, keep_default_na=False)
    if set(written["id"]) != set(solution[c.id_col]):
        raise ValueError(f"{competition.root / speaker_groups.CSV} does not list exactly the ids of {competition.root / comp_mod.SOLUTION}")
    truth = solution.set_index(c.id_col)[c.group_col].loc[written["id"]].to_numpy()
    return written["speaker"].nunique(), float(speakers.adjusted_rand(truth, written["speaker"].to_numpy()))


def main() -> None:
    recipe = ens.load_recipe(ROOT / "recipes" / "ravdess_speaker.toml", {"speakers": {"train": "inferred"}})
    competition = comp_mod.load(recipe.competition)
    found = speaker_groups.infer_train_speakers(competition, recipe, progress=False)
    actors = competition.train[competition.config.group_col].astype(str).to_numpy()
    inferred = competition.train.assign(**{competition.config.group_col: found.groups.astype(str)})
    folds = comp_mod.make_folds(dataclasses.replace(competition, train=inferred), recipe.folds.n_splits, recipe.folds.seed)
    per_actor = pd.Series(folds["fold"].to_numpy()).groupby(actors).nunique()
    if not (competition.root / speaker_groups.CSV).is_file():  # what ens train writes, made here as it makes it
        speaker_groups.write(competition, speaker_groups.test_speakers(competition, recipe.speakers, recipe.features, progress=False))
    test_k, test_ari = ari_of_test_speakers(competition)
    result = {
        "clips": len(actors),
        "actors": len(set(actors)),
        "k": found.k,
        "k_range": list(found.k_range),
        "silhouette": found.silhouette,
        "ari": found.ari,
        "folds_per_actor_mean": float(per_actor.mean()),
        "folds_per_actor_max": int(per_actor.max()),
        "test_speakers": test_k,
        "test_ari": test_ari,
    }
    text = (
        f"Commit {commit()}. {result['clips']} RAVDESS training clips of {result['actors']} actors: {found.k} speakers inferred "
        f"(k {found.k_range[0]}..{found.k_range[1]} by silhouette, best {found.silhouette:.3f}), adjusted Rand index {found.ari:.3f}; "
        f"folds grouped by them put each actor in {result['folds_per_actor_mean']:.1f} of {recipe.folds.n_splits} folds on average "
        f"(at most {result['folds_per_actor_max']}). Test speakers as ens train wrote them ({speaker_groups.CSV}): {test_k}, "
        f"adjusted Rand index {test_ari:.3f} against solution.csv's actors."
    )
    print(text)
    out = ROOT / "benchmarks" / "results"
    atomic.write_text(out / "inferred_speakers.md", text + "\n")
    atomic.write_json(out / "inferred_speakers.json", {"commit": commit(), "machine": machine("cpu"), **result})


if __name__ == "__main__":
    main()
