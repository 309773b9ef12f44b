"""ESC-50 on the literature's protocol: each candidate member and blend, 5-fold accuracy on the official folds, beside the published anchors.

Builds ``data/esc50`` when absent (``ens data esc50``: ``../shared/data/esc50``, 16 kHz Ogg Vorbis), then
for the candidates of ``recipes/esc50_candidates.toml`` (every one on the official folds, settings of
``recipes/esc50.toml``):

1. each functionals member's C, chosen on OOF: its cached vectors (extracted here when missing), a
   logistic regression per fold for each C of ``--grid`` (:func:`ensemble.members.tabular.pipeline`); the best
   mean fold accuracy (a tie: the smaller C). Where it differs from the recipe's C the script says so.
2. the recipe's members trained as ``ens train`` trains them (finished runs are reused; ``--force`` re-trains).
3. every subset of the members blended as ``[blend] method = "auto"`` blends them: each method
   cross-validated over the folds (:func:`ensemble.blending.blenders.cross_validate`), the best
   cross-validated accuracy taken. The choice: the best mean fold accuracy; a subset with fewer members
   within 0.001 wins.

Each row: the mean and standard deviation over the five folds of the fold accuracy (the protocol's
figure; five folds of 400 clips, so also the pooled OOF accuracy) and the mean fold macro-F1 of the OOF
(a blend: its cross-validated OOF). Seconds on this CPU: ``s extract (est.)``, the set's extraction
estimated from ``--time-clips`` clips timed here x 2000 (reading included, the model loaded first);
``s fit``, the wall time of the member's ``ens train`` in step 2 (its five fits; empty when its runs
were finished before and reused); a blend, the sum of its members'. Rows ``not trained: plan
estimate``: what fine-tuning each ``--plan`` backbone for ``--plan-epochs`` epochs on the five folds
would take here, by ``ens train``'s own plan (:func:`ensemble.plan.estimate`: a few real training steps
timed, its feature rendering included); nothing is trained for them. The anchors are published
5-fold accuracies on the 44.1 kHz originals (:data:`ANCHORS`); this copy is 16 kHz Ogg Vorbis
(``../shared/data/esc50/README.md``), so they compare with that caveat.

    python benchmarks/esc50.py [--recipe recipes/esc50_candidates.toml] [--grid 0.01,0.03,0.1,0.3,1] [--force] [--plan efficientat_mn04,tf_efficientnet_lite0]

Prints and saves ``benchmarks/results/esc50.{md,json}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, save  # noqa: E402
from results import commit  # noqa: E402

import ensemble as ens  # noqa: E402
from ensemble import plan  # noqa: E402
from ensemble.blending import blend, blenders  # noqa: E402
from ensemble.core import atomic  # noqa: E402
from ensemble.inputs import audio  # noqa: E402
from ensemble.members import functionals, tabular  # noqa: E402
from ensemble.store import runs  # noqa: E402
from ensemble.store import split as split_mod  # noqa: E402
from ensemble.store.corpora import esc50  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
SOURCE = ROOT.parent / "shared" / "data" / "esc50"

ANCHORS = (
    ("human listeners", 0.813, "Piczak 2015"),
    ("random forest on MFCC", 0.443, "Piczak 2015"),
    ("ImageNet DenseNet on 3-channel spectrograms", 0.929, "Palanisamy et al. 2020"),
    ("PANNs CNN14 (AudioSet)", 0.947, "Kong et al. 2020"),
    ("AST (AudioSet)", 0.956, "Gong et al. 2021"),
    ("BEATs (AudioSet)", 0.981, "Chen et al. 2023"),
)
"""Published 5-fold accuracies on the official 44.1 kHz WAV release (``../shared/data/esc50/README.md``)."""
GOAL = 0.947


def fold_metrics(task, y: np.ndarray, proba: np.ndarray, fold_of: np.ndarray) -> dict[str, float]:
    """Mean and standard deviation (population) over folds of the fold accuracy, and the mean fold macro-F1."""
    per = [task.scores(y[fold_of == k], proba[fold_of == k]) for k in np.unique(fold_of)]
    accuracy = [s["accuracy"] for s in per]
    return {"5-fold accuracy": float(np.mean(accuracy)), "fold std": float(np.std(accuracy)), "macro-F1": float(np.mean([s["macro_f1"] for s in per]))}


def choose_c(recipe, split, member, grid: list[float]) -> tuple[float, list[dict]]:
    """The C of ``grid`` with the best mean fold accuracy of ``member`` (a tie: the smaller C) and every C's row."""
    table = tabular.load_table(recipe, split, member)  # cached per clip; extracted here when missing
    task, classes, fold_of = split.competition.task, len(split.competition.classes), split.folds["fold"].to_numpy()
    rows = []
    for c in grid:
        trial = dataclasses.replace(member, c=c)
        oof = np.zeros((len(split.y), classes))
        for k in np.unique(fold_of):
            train = fold_of != k
            model = tabular.pipeline(trial, recipe.train.seed, split.y[train]).fit(table.x_train[train], split.y[train])
            oof[~train] = tabular.class_proba(model, table.x_train[~train], classes)
        rows.append({"member": member.name, "C": c, **fold_metrics(task, split.y, oof, fold_of)})
        print(rows[-1], flush=True)
    best = max(rows, key=lambda r: (r["5-fold accuracy"], -r["C"]))
    return best["C"], rows


def extraction_seconds(recipe, split, set_name: str, clips: int) -> float:
    """Estimated seconds to extract ``set_name`` for every training clip: the median of ``clips`` clips
    timed here (reading included; the extractor warmed up on the first) x the number of clips."""
    f, comp = recipe.features, split.competition
    paths = comp.audio_paths(comp.train)[: clips + 1]
    times = []
    for k, path in enumerate(paths):
        start = time.perf_counter()
        functionals.extract([audio.load_trimmed(path, f.sample_rate, f.trim_db)[0]], f.sample_rate, set_name, 1, recipe.paths.weights_dir or None)
        if k:
            times.append(time.perf_counter() - start)
    return statistics.median(times) * len(comp.train)


def train_seconds(recipe, name: str, force: bool) -> float:
    """Wall seconds of ``ens train`` of one member (its features cached before, for a functionals member);
    NaN when every run of it was already finished (reused, not timed)."""
    start = time.perf_counter()
    results = ens.train_runs(recipe, backbones=[name], force=force, progress=False)
    return time.perf_counter() - start if any(not r.skipped for r in results) else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "esc50_candidates.toml"))
    parser.add_argument("--grid", default="0.01,0.03,0.1,0.3,1", help="comma-separated C values of the functionals members")
    parser.add_argument("--time-clips", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--force", action="store_true", help="re-train finished runs")
    parser.add_argument("--plan", default="efficientat_mn04,tf_efficientnet_lite0", help="fine-tuned backbones to estimate (not train), comma-separated")
    parser.add_argument("--plan-epochs", type=int, default=10)
    args = parser.parse_args()
    cpu = machine("cpu")  # the load average before this benchmark's own work
    torch.set_num_threads(args.threads)  # this script owns its process
    base = ens.load_recipe(args.recipe, {"runtime": {"threads": args.threads}})
    comp_dir = Path(base.competition.dir)
    if not (comp_dir / "train.csv").is_file():
        esc50.build_competition(SOURCE, comp_dir)
    split = split_mod.load_split(base)
    task, fold_of = split.competition.task, split.folds["fold"].to_numpy()
    grid = [float(c) for c in args.grid.split(",")]

    c_rows, notes, extract, fit = [], [], {}, {}
    for member in base.functionals:
        best, rows = choose_c(base, split, member, grid)
        c_rows += rows
        if best != member.c:
            notes.append(f"{member.name}: the best C on OOF is {best:g}, the recipe has {member.c:g}; set c = {best:g}.")
        extract[member.name] = extraction_seconds(base, split, member.set, args.time_clips)
    for name in runs.members(base):
        fit[name.name] = train_seconds(base, name.name, args.force)
    seconds = {name: extract.get(name, 0.0) + fit[name] for name in fit}

    members, oofs, _, unfinished = blend.collect(base, split)
    if unfinished:
        raise SystemExit(f"error: unfinished members {unfinished}")
    names = [m.name for m in members]
    rows = []
    for name, oof in zip(names, oofs):
        c = base.functionals_member(name).c if base.functionals_member(name) else ""
        scores = fold_metrics(task, split.y, oof, fold_of)
        rows.append(
            {"model": name, "kind": "member", "C": c, **scores, "s extract (est.)": extract.get(name), "s fit": fit[name], "s (this CPU)": seconds[name]}
        )
    options = blend.method_options(base, task)
    for size in range(2, len(names) + 1):
        for subset in itertools.combinations(range(len(names)), size):
            stacked = np.stack([oofs[k] for k in subset])
            cv = {m: blenders.cross_validate(m, stacked, split.y, fold_of, **options) for m in task.blend_methods}
            auto = blend.best_method({m: task.scores(split.y, p) for m, p in cv.items()}, base.train.metric)
            label = " + ".join(names[k] for k in subset)
            rows.append(
                {
                    "model": f"blend ({auto}): {label}",
                    "kind": "blend",
                    "C": "",
                    **fold_metrics(task, split.y, cv[auto], fold_of),
                    "s (this CPU)": sum(seconds[names[k]] for k in subset),
                }
            )
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    top = table["5-fold accuracy"].max()
    sizes = table["model"].map(lambda m: m.count(" + ") + 1)
    chosen = table[table["5-fold accuracy"] >= top - 0.001].assign(size=sizes).sort_values(["size", "5-fold accuracy"], ascending=[True, False]).iloc[0]
    table["chosen"] = np.where(table["model"] == chosen["model"], "yes", "")
    planned = []
    for name in [n for n in args.plan.split(",") if n]:
        trial = dataclasses.replace(base, backbones=[name], functionals=[], train=dataclasses.replace(base.train, epochs=args.plan_epochs))
        stages = plan.estimate(trial, entries=[name], force=True)
        print(plan.describe(stages), flush=True)
        planned.append(
            {"model": f"{name}, fine-tuned {args.plan_epochs} epochs", "kind": "not trained: plan estimate", "s (this CPU)": sum(s.seconds for s in stages)}
        )
    anchors = pd.DataFrame([{"model": f"{name} ({source})", "kind": "published, 44.1 kHz", "5-fold accuracy": acc} for name, acc, source in ANCHORS])
    shown = pd.concat([table, pd.DataFrame(planned), anchors], ignore_index=True)
    for column in ("s extract (est.)", "s fit", "s (this CPU)"):
        shown[column] = shown[column].map(lambda v: "" if v is None or v != v else f"{v:.0f}")
    end_load = round(os.getloadavg()[0], 2)
    header = (
        f"Commit {commit()}, {cpu['processor']}, {cpu['cpu_count']} cores, {args.threads} torch threads, "
        f"load {cpu['load_average_1min']} at the start, {end_load} at the end. "
        f"ESC-50 on the official 5 folds (2000 clips; this copy 16 kHz Ogg Vorbis, the published rows 44.1 kHz WAV: nothing above 8 kHz here). "
        f"5-fold accuracy: mean over the folds (std: their spread); macro-F1: mean over the folds. Members' C chosen on OOF over {grid}; "
        f'blends as `[blend] method = "auto"` blends (the method in brackets), cross-validated. Chosen on OOF: **{chosen["model"]}**, '
        f"{chosen['5-fold accuracy']:.4f}; CNN14's {GOAL} is {GOAL - chosen['5-fold accuracy']:+.4f} away."
    )
    text = header + "\n\n" + markdown_table(shown, digits=4) + "\n" + "".join(f"\n{n}" for n in notes)
    print(text)
    save(
        {
            "commit": commit(),
            "machine": cpu,
            "load_at_end": end_load,
            "chosen": chosen["model"],
            "c_grid": c_rows,
            "extract": extract,
            "fit": fit,
            "rows": rows,
            "planned": planned,
            "notes": notes,
        },
        OUT / "esc50.json",
        echo=False,
    )
    atomic.write_text(OUT / "esc50.md", text if text.endswith("\n") else text + "\n")


if __name__ == "__main__":
    main()
