"""Functionals members beside the image members on RAVDESS: each member alone, and blends of them.

Trains (or reuses, when finished with the same configuration) ``recipes/ravdess_speaker.toml``:
two backbones on speaker-normalised images and its functionals members (ComParE_2016 + logistic
regression, eGeMAPSv02 + SVM, ens_basic + logistic regression, ens_basic + LightGBM), all
per-speaker normalised with the test speakers inferred. For each member and for mean blends of the
backbones, of the functionals members and of all members, it scores the pooled OOF (accuracy, macro-F1, UAR) and the
hidden test set; for the functionals members the test set is also re-scored from the same fold
pipelines with the test speakers true (``solution.csv``'s actors, for reference) or pooled (the
classic "test set as one pool" setting). The blender's cross-validated OOF of each method over
all members comes from :func:`ensemble.blending.blend.blend`. Settings are chosen on OOF only.

    python benchmarks/functionals_members.py

Prints a Markdown table and saves ``benchmarks/results/functionals_members.{md,json}``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table  # noqa: E402
from results import commit  # noqa: E402
from speaker_ablation import hidden_truth  # noqa: E402

import ensemble as ens  # noqa: E402
from ensemble.blending import blend  # noqa: E402
from ensemble.core import atomic  # noqa: E402
from ensemble.members import functionals, tabular  # noqa: E402
from ensemble.speaker import speakers  # noqa: E402
from ensemble.store import runs  # noqa: E402
from ensemble.store import split as split_mod  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("accuracy", "macro_f1", "uar")


def renormalised_test(recipe, member: runs.Member, split: split_mod.Split, groups: np.ndarray) -> np.ndarray:
    """A functionals member's test probabilities (mean over its fold pipelines) with the test
    functionals z-normalised per ``groups`` instead of the inferred speakers."""
    spec = recipe.functionals_member(member.name)
    comp, f = split.competition, recipe.features
    x = functionals.FunctionalsCache(comp.root / ".ens_cache").get(comp.audio_paths(comp.test), f.sample_rate, f.trim_db, spec.set, progress=False)
    x = np.asarray(speakers.SpeakerNorm().fit_transform(x, groups), dtype=np.float64)
    probas = []
    for run in member.runs(member.name):
        model = tabular.load_pipeline(run)
        probas.append(tabular.class_proba(model, x, len(comp.classes)))
    return np.mean(probas, axis=0)


def main() -> None:
    recipe = ens.load_recipe(ROOT / "recipes" / "ravdess_speaker.toml")
    ens.train_runs(recipe)  # finished runs with the same configuration are skipped
    split = split_mod.load_split(recipe)
    task = split.competition.task
    y_test, actors = hidden_truth(split)
    members = runs.members(recipe)
    tables = {m.name: runs.read_member(m, split) for m in members}
    pooled = np.full(len(y_test), "pool", dtype=object)
    rows = []

    def add(model: str, speakers_: str, oof: np.ndarray, test: np.ndarray) -> None:
        oof_scores, test_scores = task.scores(split.y, oof), task.scores(y_test, test)
        rows.append(
            {"model": model, "test speakers": speakers_, **{f"OOF {k}": oof_scores[k] for k in COLUMNS}, **{f"test {k}": test_scores[k] for k in COLUMNS}}
        )

    for m in members:
        oof, test = tables[m.name]
        add(m.name, "inferred", oof, test)
        if recipe.functionals_member(m.name) is not None:
            add(m.name, "true", oof, renormalised_test(recipe, m, split, actors))
            add(m.name, "pool", oof, renormalised_test(recipe, m, split, pooled))
    groups = {
        "mean blend: backbones": [m.name for m in members if recipe.functionals_member(m.name) is None],
        "mean blend: functionals": [m.name for m in members if recipe.functionals_member(m.name) is not None],
        "mean blend: all": [m.name for m in members],
    }
    for label, names in groups.items():
        add(label, "inferred", np.mean([tables[n][0] for n in names], axis=0), np.mean([tables[n][1] for n in names], axis=0))
    result = blend.blend(recipe, method="caruana")
    board = result.leaderboard.set_index("model")
    cv = {method: board.loc[f"blend: {method}", "cv_accuracy"] for method in task.blend_methods}
    caruana = task.scores(y_test, result.test)["accuracy"]
    table = pd.DataFrame(rows)
    cpu = machine("cpu")
    text = (
        f"Commit {commit()}, {cpu['processor']}, {cpu['cpu_count']} cores.\n\n"
        + markdown_table(table)
        + f"\n\nBlender over all {len(members)} members, cross-validated OOF accuracy: "
        + ", ".join(f"{k} {v:.4f}" for k, v in cv.items())
        + f"; caruana fitted on all OOF rows, hidden-test accuracy {caruana:.4f} (weights "
        + ", ".join(f"{k} {v:.2f}" for k, v in (result.weights or {}).items())
        + ")."
    )
    print(text)
    out = ROOT / "benchmarks" / "results"
    atomic.write_text(out / "functionals_members.md", text + "\n")
    atomic.write_json(out / "functionals_members.json", {"commit": commit(), "machine": cpu, "rows": rows, "cv_accuracy": cv, "caruana_test_accuracy": caruana})


if __name__ == "__main__":
    main()
