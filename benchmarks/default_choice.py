"""How the default recipe was chosen: candidate member sets, blended as the recipe would, by cross-validated OOF.

Trains what is unfinished of ``recipes/ravdess_candidates.toml`` (every candidate member, on the
same speaker-grouped folds with the default's speaker normalisation; finished runs are skipped, as
``ens train --recipe recipes/ravdess_candidates.toml`` skips them), then blends each candidate member set with every blend method,
cross-validated over the folds as ``ens blend`` does, then as ``[blend] method = "auto"`` would: the
method with the best cross-validated ``[train].metric`` (UAR). The choice rule: the best
cross-validated OOF accuracy of that blend among the candidates whose estimated time for the README's
main command fits the budget (15 minutes on this 2-core CPU); between candidates within 0.001, the
one with fewer members. The hidden-test column is reported, never used.

The time estimate of a candidate: the fixed steps of the main command (venv, install, data, blend,
score) and each image member's rendering, as measured by ``benchmarks/main_job.py`` at commit e7c6aef
(:data:`MEASURED`; idle, two threads); each image member's training, the sum of its runs' epoch seconds
(``log.csv``); each functionals set's extraction, ``--time-clips`` clips timed here side by side x 1440
(an encoder set: ``benchmarks/results/encoder_members.json``'s seconds per clip of its window, measured the same way).
``benchmarks/main_job.py`` then measures the chosen default from a fresh clone.

    python benchmarks/default_choice.py

Prints and saves ``benchmarks/results/default_choice.{md,json}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, save  # noqa: E402
from results import commit  # noqa: E402
from speaker_ablation import hidden_truth  # noqa: E402

import ensemble as ens  # noqa: E402
from ensemble.blending import blend, blenders  # noqa: E402
from ensemble.core import atomic, encoder_sets  # noqa: E402
from ensemble.inputs import audio  # noqa: E402
from ensemble.members import functionals  # noqa: E402
from ensemble.store import runs  # noqa: E402
from ensemble.store import split as split_mod  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
BUDGET_MIN = 15.0
CLIPS = 1440

MEASURED = {
    "fixed": 3.6 + 96.2 + 3.8 + 7.9 + 4.0,  # venv, pip install, ens data, ens blend, ens score
    "voices": 4.5,  # voice embeddings of the test clips, per sample rate (16 kHz; mn04 adds its 32 kHz)
    "render tf_mobilenetv3_small_100": 53.3,
    "render efficientat_mn04": 90.1,
}
"""Seconds measured by ``benchmarks/main_job.py`` at commit e7c6aef (README, "Results on RAVDESS" of that commit), idle, two threads."""

IMAGES, MN04 = ["tf_mobilenetv3_small_100"], ["efficientat_mn04"]
WHISPER, WHISPER_PAD30, COMPARE = ["whisper_lr"], ["whisper_pad30_lr"], ["compare_lr"]
FUNCTIONALS = ["compare_lr", "egemaps_svm", "basic_lr"]
EMBEDDING = ["mn04_emb_lr"]

CANDIDATES = {
    # name: (members, note)
    "functionals (3)": (FUNCTIONALS, "openSMILE + librosa functionals"),
    "mobilenetv3 + mn04 + functionals (3)": (IMAGES + MN04 + FUNCTIONALS, "the old default without regnetx_002 (10.6 min alone)"),
    "whisper": (WHISPER, "the Whisper member alone"),
    "whisper + compare_lr": (WHISPER + COMPARE, ""),
    "whisper + functionals (3)": (WHISPER + FUNCTIONALS, ""),
    "whisper + functionals (3) + mn04 embedding": (WHISPER + FUNCTIONALS + EMBEDDING, ""),
    "whisper + mobilenetv3 + functionals (3)": (WHISPER + IMAGES + FUNCTIONALS, ""),
    "whisper + mn04 + functionals (3)": (WHISPER + MN04 + FUNCTIONALS, ""),
    "whisper + mobilenetv3 + mn04 + functionals (3)": (WHISPER + IMAGES + MN04 + FUNCTIONALS, ""),
    "permissive: whisper + basic_lr": (WHISPER + ["basic_lr"], "no openSMILE (research licence)"),
    "whisper pad30": (WHISPER_PAD30, "the clip padded to 30 s (seconds per clip: docs/results.md)"),
    "whisper pad30 + compare_lr": (WHISPER_PAD30 + COMPARE, ""),
    "whisper pad30 + functionals (3)": (WHISPER_PAD30 + FUNCTIONALS, ""),
}


def set_seconds(recipe, split, set_name: str, clips: int) -> float:
    """Median seconds per clip of reading, trimming and extracting ``set_name`` over ``clips`` training clips (the extractor warmed up first)."""
    f, comp = recipe.features, split.competition
    paths = comp.audio_paths(comp.train)[:clips]
    functionals.extract([audio.load_trimmed(paths[0], f.sample_rate, f.trim_db)[0]], f.sample_rate, set_name, recipe.runtime.threads)
    times = []
    for path in paths:
        start = time.perf_counter()
        functionals.extract([audio.load_trimmed(path, f.sample_rate, f.trim_db)[0]], f.sample_rate, set_name, recipe.runtime.threads)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def member_seconds(recipe, split, clips: int) -> dict[str, float]:
    """Estimated seconds of each candidate member in the main command (see the module docstring)."""
    seconds = {}
    for member in runs.members(recipe):
        spec = recipe.functionals_member(member.name)
        if spec is None:
            logs = [run / runs.LOG for entry in member.entries for run in member.runs(entry)]
            seconds[member.name] = sum(pd.read_csv(log)["seconds"].sum() for log in logs) + MEASURED[f"render {member.name}"]
        elif functionals.is_encoder(spec.set):
            per_clip = json.loads((OUT / "encoder_members.json").read_text())["seconds_per_clip"]
            seconds[member.name] = per_clip[encoder_sets.split_window(spec.set)[1]] * CLIPS
        else:
            seconds[member.name] = set_seconds(recipe, split, spec.set, clips) * CLIPS
    return seconds


def minutes(members: list[str], seconds: dict[str, float]) -> float:
    """The candidate's estimated minutes for the README's main command."""
    rates = 1 + any(m in MN04 for m in members)  # mn04 embeds the test voices at 32 kHz too
    return (MEASURED["fixed"] + rates * MEASURED["voices"] + sum(seconds[m] for m in members)) / 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "ravdess_candidates.toml"))
    parser.add_argument("--time-clips", type=int, default=30)
    args = parser.parse_args()
    base = ens.load_recipe(args.recipe, {"runtime": {"threads": 2}})
    cpu = machine("cpu")  # the load average before this benchmark's own work
    ens.train_runs(base)  # the candidates' unfinished runs; finished ones are skipped
    split = split_mod.load_split(base)
    task = split.competition.task
    y_test, _ = hidden_truth(split)
    seconds = member_seconds(base, split, args.time_clips)
    fold_of = split.folds["fold"].to_numpy()
    rows = []
    for name, (members, note) in CANDIDATES.items():
        recipe = dataclasses.replace(base, blend=dataclasses.replace(base.blend, members=members))
        _, oofs, tests, _ = blend.collect(recipe, split)
        oof, test, options = np.stack(oofs), np.stack(tests), blend.method_options(recipe, task)
        cv = {method: blenders.cross_validate(method, oof, split.y, fold_of, **options) for method in task.blend_methods}
        scores = {method: task.scores(split.y, p) for method, p in cv.items()}
        auto = blend.best_method(scores, base.train.metric)  # what [blend] method = "auto" takes
        row = {"candidate": name, "members": len(members), "est. min": round(minutes(members, seconds), 1)}
        row.update({f"CV OOF acc {m}": scores[m]["accuracy"] for m in ("mean", "geometric", "caruana")})
        row.update({"auto takes": auto, "CV OOF acc auto": scores[auto]["accuracy"], "CV OOF uar auto": scores[auto]["uar"]})
        row["hidden-test acc auto"] = task.scores(y_test, blenders.fit(auto, oof, split.y, **options).combine(test))["accuracy"]
        row["note"] = note
        rows.append(row)
        print(name, {k: round(float(v), 4) for k, v in row.items() if isinstance(v, float)}, auto, flush=True)
    table = pd.DataFrame(rows)
    eligible = table[table["est. min"] <= BUDGET_MIN]
    top = eligible["CV OOF acc auto"].max()
    chosen = eligible[eligible["CV OOF acc auto"] >= top - 0.001].sort_values("members", kind="stable").iloc[0]
    header = (
        f"Commit {commit()}, {cpu['processor']}, {cpu['cpu_count']} cores, load {cpu['load_average_1min']} at the start. "
        "Rule: the best cross-validated OOF accuracy of the blend "
        f'`[blend] method = "auto"` makes (the method with the best cross-validated {base.train.metric}) among candidates estimated within '
        f"{BUDGET_MIN:g} minutes, fewer members within 0.001. Chosen: **{chosen['candidate']}**, auto takes {chosen['auto takes']}, "
        f"CV OOF accuracy {chosen['CV OOF acc auto']:.4f} (est. {chosen['est. min']:.1f} min). The hidden-test column chose nothing."
    )
    text = header + "\n\n" + markdown_table(table, digits=4) + "\n"
    save(
        {"commit": commit(), "machine": cpu, "chosen": chosen["candidate"], "method": chosen["auto takes"], "member_seconds": seconds, "rows": rows},
        OUT / "default_choice.json",
        echo=False,
    )
    atomic.write_text(OUT / "default_choice.md", text)
    print(text)


if __name__ == "__main__":
    main()
