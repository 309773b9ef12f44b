"""The Whisper base member on RAVDESS: window, hidden states and C, chosen on cross-validated OOF only.

For each window of :mod:`ensemble.members.encoders` (``clip``: the encoder sees the trimmed clip alone, its
position table cut to the clip's tokens; ``pad30``: the clip padded to Whisper's 30 s, only the clip's
tokens pooled), the cached vectors of every RAVDESS clip (computed when missing), speaker-normalised
as ``recipes/ravdess.toml`` normalises (training speakers: the actors; test speakers: inferred, no
test metadata), then a logistic regression per fold (:func:`ensemble.members.tabular.pipeline`, balanced
class weights) on each choice of hidden states and each C. Each row: pooled OOF accuracy, macro-F1
and UAR over the five speaker-grouped folds, and the hidden test (the mean of the five fold models;
read from ``solution.csv``, reported, never used to choose). The choice: the best OOF accuracy (on a
tie the smaller C, then the fewer states). Seconds per clip: ``--time-clips`` clips of each window
timed side by side in this run (reading and trimming included, the model loaded beforehand).

    python benchmarks/encoder_members.py [--recipe recipes/ravdess_candidates.toml]

Prints and saves ``benchmarks/results/encoder_members.{md,json}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table  # noqa: E402
from results import commit  # noqa: E402
from speaker_ablation import hidden_truth  # noqa: E402

import ensemble as ens  # noqa: E402
from ensemble.core import atomic, encoder_sets, recipe  # noqa: E402
from ensemble.inputs import audio  # noqa: E402
from ensemble.members import encoders, functionals, tabular  # noqa: E402
from ensemble.store import split as split_mod  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
ENCODER = "whisper_base"
LAYERS = ("all", "0", "1", "2", "3", "4", "5", "6", "2-4", "1-5")
GRID = (0.001, 0.003, 0.01, 0.03)
METRICS = ("accuracy", "macro_f1", "uar")


def fold_scores(split, table: tabular.Table, member, y_test) -> dict:
    """Pooled OOF and hidden-test scores of ``member`` on ``table`` over the split's folds."""
    task, classes = split.competition.task, len(split.competition.classes)
    fold_of = split.folds["fold"].to_numpy()
    oof, test = np.zeros((len(split.y), classes)), np.zeros((len(table.x_test), classes))
    for fold in np.unique(fold_of):
        train, valid = fold_of != fold, fold_of == fold
        model = tabular.pipeline(member, 42, split.y[train]).fit(table.x_train[train], split.y[train])
        oof[valid] = tabular.class_proba(model, table.x_train[valid], classes)
        test += tabular.class_proba(model, table.x_test, classes) / len(np.unique(fold_of))
    o, t = task.scores(split.y, oof), task.scores(y_test, test)
    return {**{f"OOF {k}": o[k] for k in METRICS}, "hidden-test accuracy": t["accuracy"], "hidden-test uar": t["uar"]}


def seconds_per_clip(paths: list[Path], set_name: str, rate: int, trim_db: float) -> float:
    """Median seconds per clip of reading, trimming and embedding (the model loaded first)."""
    encoders.load(set_name)
    times = []
    for path in paths:
        start = time.perf_counter()
        functionals.extract([audio.load_trimmed(path, rate, trim_db)[0]], rate, set_name)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "ravdess_candidates.toml"))
    parser.add_argument("--time-clips", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    base = ens.load_recipe(args.recipe, {"runtime": {"threads": args.threads}})
    torch.set_num_threads(args.threads)  # this script owns its process
    cpu = machine("cpu")  # the load average before this benchmark's own work
    split = split_mod.load_split(base)
    y_test, _ = hidden_truth(split)
    f = base.features
    comp = split.competition
    timing_paths = comp.audio_paths(comp.train)[: args.time_clips]
    rows, per_clip = [], {}
    for window in encoder_sets.WINDOWS:
        set_name = ENCODER if window == "clip" else f"{ENCODER}:{window}"
        per_clip[window] = seconds_per_clip(timing_paths, set_name, f.sample_rate, f.trim_db)
        full = recipe.FunctionalsMember(name="whisper_lr", set=set_name, model="logreg")
        table = tabular.load_table(base, split, full)  # every hidden state, speaker-normalised; computed once per clip and cached
        for layers in LAYERS:
            picked = encoders.columns(set_name, layers)
            part = tabular.Table(table.x_train[:, picked], table.x_test[:, picked])
            for c in GRID:
                member = dataclasses.replace(full, layers=layers, c=c)
                rows.append({"window": window, "layers": layers, "C": c, **fold_scores(split, part, member, y_test)})
                print(rows[-1], flush=True)
    frame = pd.DataFrame(rows)
    states = {layers: len(encoder_sets.layer_indices(layers, 7)) for layers in LAYERS}
    best = frame.assign(states=frame["layers"].map(states)).sort_values(["OOF accuracy", "C", "states"], ascending=[False, True, True]).iloc[0]
    chosen = {"window": best["window"], "layers": best["layers"], "c": float(best["C"])}
    best_per = frame.loc[frame.groupby(["window", "layers"])["OOF accuracy"].idxmax()]  # each layer choice at its best C
    best_per = best_per.assign(order=best_per["layers"].map(LAYERS.index)).sort_values(["window", "order"]).drop(columns="order")
    best_per.insert(3, "s per clip", best_per["window"].map(per_clip))
    head = (
        f"Commit {commit()}, {cpu['processor']}, {cpu['cpu_count']} cores, {args.threads} torch threads, load {cpu['load_average_1min']} at the start. "
        f"Whisper base encoder ({ENCODER}), per-speaker z-normalised mean+std of the chosen hidden states (0: the embeddings, 6: the last layer), "
        f"logistic regression per fold; each row at its best C of {list(GRID)} by OOF accuracy. Seconds per clip: median of {args.time_clips} clips "
        "timed side by side (reading and trimming included). Chosen on OOF accuracy only: "
        f"**window {chosen['window']}, layers {chosen['layers']}, C {chosen['c']:g}**."
    )
    text = head + "\n\n" + markdown_table(best_per.reset_index(drop=True))
    print(text)
    atomic.write_text(OUT / "encoder_members.md", text + "\n")
    atomic.write_json(OUT / "encoder_members.json", {"commit": commit(), "machine": cpu, "seconds_per_clip": per_clip, "chosen": chosen, "rows": rows})


if __name__ == "__main__":
    main()
