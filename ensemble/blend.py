"""Blend the out-of-fold (OOF) predictions of finished runs and write the submission.

Every backbone whose folds are all finished becomes one ensemble member: its OOF probabilities
(each training clip predicted by the fold model that did not train on it) and its test
probabilities averaged over folds. Entries ``name@S`` of one timm model with several seeds
(:meth:`Recipe.members`) are one member, named ``name``: the equal-weight mean of its seeds' OOF
and test probabilities, finished when every fold of every seed is. The methods (mean, rank,
geometric, Caruana selection, optimised weights, stacking) live in :mod:`ensemble.blenders`; a
blend fitted on OOF rows and scored on them is optimistic, so the leaderboard also gives each
method's cross-validated score.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import atomic, blenders, metrics, multilabel, submission
from .recipe import Recipe
from .train import Data, run_config


class BlendError(ValueError):
    """Runs cannot be blended: they disagree on folds, ids or classes, or hold invalid probabilities."""


@dataclass
class Member:
    """One backbone's predictions, the mean over its seeds.

    Attributes:
        backbone: the timm model name (the member's name in the leaderboard and ``weights.json``).
        seeds: the ``[train].seed`` of each of its runs, in ``backbones`` order.
        oof: ``(n_train, classes)`` in ``train.csv`` order.
        test: ``(n_test, classes)`` in ``test.csv`` order, the mean over its fold models.
    """

    backbone: str
    seeds: list[int]
    oof: np.ndarray
    test: np.ndarray


def _probabilities(frame: pd.DataFrame, classes: list[str], path: Path) -> np.ndarray:
    missing = [c for c in classes if c not in frame.columns]
    if missing:
        raise BlendError(f"{path} has no probability column(s) {missing}; it was trained with other classes.")
    values = frame[classes].to_numpy(dtype=np.float64)
    if not np.isfinite(values).all() or (values < 0).any():
        raise BlendError(f"{path} holds NaN, infinite or negative probabilities; re-train that run with --force.")
    return values


def load_runs(recipe: Recipe, data: Data, backbone: str) -> tuple[np.ndarray, np.ndarray]:
    """Read the finished runs of every fold of ``backbone`` (a ``backbones`` entry): its OOF
    ``(n_train, classes)`` and its test probabilities ``(n_test, classes)``, the mean over folds.

    Raises:
        FileNotFoundError: a fold has no finished run (no ``metrics.json``).
        BlendError: a run was trained on other folds, classes or ids than ``data`` holds.
    """
    id_col, classes = data.competition.config.id_col, data.competition.classes
    train_ids = data.competition.train[id_col].to_numpy()
    test_ids = data.competition.test[id_col].to_numpy()
    fold_of = data.folds["fold"].to_numpy()
    oof = np.full((len(train_ids), len(classes)), np.nan)
    test = np.zeros((len(test_ids), len(classes)))
    for fold in range(recipe.folds.n_splits):
        run = recipe.run_dir(backbone, fold)
        if not (run / "metrics.json").exists():
            raise FileNotFoundError(f"{run} is not finished; run `ens train --backbone {backbone} --fold {fold}`.")
        config = json.loads((run / "config.json").read_text())
        expected = run_config(recipe, data, backbone, fold)
        if config["folds_hash"] != expected["folds_hash"]:
            raise BlendError(f"{run} was trained on another fold assignment than {data.competition.root / 'folds.csv'}; re-train it with --force.")
        if config["classes"] != classes:
            raise BlendError(f"{run} was trained with classes {config['classes']}, the competition has {classes}.")
        frame = pd.read_csv(run / "oof.csv", dtype={"id": str})
        if sorted(frame["id"]) != sorted(train_ids[fold_of == fold]):
            raise BlendError(f"{run / 'oof.csv'} does not hold exactly the ids of fold {fold} in folds.csv.")
        rows = pd.Index(train_ids).get_indexer(frame["id"])
        oof[rows] = _probabilities(frame, classes, run / "oof.csv")
        frame = pd.read_csv(run / "test.csv", dtype={"id": str})
        if sorted(frame["id"]) != sorted(test_ids):
            raise BlendError(f"{run / 'test.csv'} does not hold exactly the ids of test.csv.")
        test += _probabilities(frame.set_index("id").loc[test_ids].reset_index(), classes, run / "test.csv")
    return oof, test / recipe.folds.n_splits


def load_member(recipe: Recipe, data: Data, backbone: str, entries: list[str]) -> Member:
    """The member ``backbone`` (a timm model name): the mean of :func:`load_runs` over its
    ``backbones`` entries ``entries`` (one per seed).

    Raises:
        FileNotFoundError: a fold of an entry has no finished run.
        BlendError: see :func:`load_runs`.
    """
    runs = [load_runs(recipe, data, entry) for entry in entries]
    seeds = [recipe.for_backbone(entry).train.seed for entry in entries]
    return Member(backbone, seeds, np.mean([oof for oof, _ in runs], axis=0), np.mean([test for _, test in runs], axis=0))


def collect(recipe: Recipe, data: Data) -> tuple[list[Member], dict[str, str]]:
    """Members for every backbone of the recipe (:meth:`Recipe.members`) whose folds are all
    finished for every seed, and the skipped backbones with the reason (the first unfinished fold).

    Raises:
        BlendError: no backbone is finished, or a run disagrees with the competition (see :func:`load_runs`).
        RecipeError: a malformed ``backbones`` entry.
    """
    members, skipped = [], {}
    for backbone, entries in recipe.members().items():
        try:
            members.append(load_member(recipe, data, backbone, entries))
        except FileNotFoundError as err:
            skipped[backbone] = str(err)
    if not members:
        raise BlendError(f"no backbone of recipe {recipe.name!r} has all {recipe.folds.n_splits} folds finished under {Path(recipe.runs_dir) / recipe.name}; run `ens train` first.")
    return members, skipped


@dataclass
class BlendResult:
    """A blend: the leaderboard (one row per member and per method), the chosen method's weights
    by backbone (None for rank, geometric and stacking, which are not weighted means), its test probabilities ``(n_test, classes)``, the submission path, and the
    backbones left out because a fold is unfinished (with the reason)."""

    leaderboard: pd.DataFrame
    weights: dict[str, float] | None
    test: np.ndarray
    submission: Path
    skipped: dict[str, str] = field(default_factory=dict)


def blend(recipe: Recipe, data: Data, method: str | None = None, name: str | None = None) -> BlendResult:
    """Blend the finished runs of ``recipe``, write ``submissions/<name>.csv`` and the leaderboard.

    The leaderboard has a row per member (and, when a member averages several seeds, a ``seeds``
    column listing each member's seeds, e.g. ``42, 43``) and a row per method. Every method of
    :data:`blenders.METHODS` is fitted and scored twice: in-sample (fitted and scored on all OOF
    rows) and cross-validated (``cv_`` columns: fitted on the other folds, scored on each
    held-out fold; see :func:`blenders.cross_validate`). Only ``method`` (default
    the recipe's) is fitted on all rows for the submission. Written to ``runs/<recipe>/blend/``:
    ``leaderboard.csv``, ``weights.json`` and ``oof.csv`` (the chosen method's cross-validated
    OOF probabilities, the honest ones); for a multilabel task also ``thresholds.json``, per-class
    thresholds tuned on that OOF (:func:`multilabel.tune_thresholds`), which make its label submissions.

    Raises:
        BlendError: see :func:`collect`. ValueError: unknown method.
    """
    method = method or recipe.blend.method
    multilabel_task = data.competition.multilabel
    methods, score = (blenders.MULTILABEL_METHODS, multilabel.scores) if multilabel_task else (blenders.METHODS, metrics.scores)
    if method not in methods:
        raise ValueError(f"blend method {method!r} is not one of {methods}, the methods for a {data.competition.config.task} task.")
    b = recipe.blend
    options = {"iterations": b.iterations, "bags": b.bags, "bag_fraction": b.bag_fraction, "stacking_c": b.stacking_c, "seed": b.seed}
    members, skipped = collect(recipe, data)
    oof = np.stack([m.oof for m in members])
    test = np.stack([m.test for m in members])
    fold_of = data.folds["fold"].to_numpy()
    seeded = any(len(m.seeds) > 1 for m in members)
    rows = []
    for m in members:  # nothing is fitted for one member: its cross-validated score is its score
        scores = score(data.y, m.oof)
        rows.append({"model": m.backbone, **({"seeds": ", ".join(map(str, m.seeds))} if seeded else {}), **scores, **_prefixed(scores)})
    cv_oof = {}
    for candidate in methods:
        fitted = blenders.fit(candidate, oof, data.y, **options)
        cv_oof[candidate] = blenders.cross_validate(candidate, oof, data.y, fold_of, **options)
        weights_text = "" if fitted.weights is None else " ".join(f"{m.backbone}={x:.2f}" for m, x in zip(members, fitted.weights))
        rows.append({"model": f"blend: {candidate}", **score(data.y, fitted.combine(oof)),
                     **_prefixed(score(data.y, cv_oof[candidate])), "weights": weights_text})
        if candidate == method:
            chosen = fitted
    board = pd.DataFrame(rows)
    test_proba = chosen.combine(test)
    out_dir = Path(recipe.runs_dir) / recipe.name / "blend"
    atomic.write_csv(out_dir / "leaderboard.csv", board)
    train_ids = data.competition.train[data.competition.config.id_col].to_numpy()
    blended_oof = pd.DataFrame(cv_oof[method], columns=data.competition.classes)
    blended_oof.insert(0, "id", train_ids)
    atomic.write_csv(out_dir / "oof.csv", blended_oof)
    weight_map = None if chosen.weights is None else {m.backbone: float(x) for m, x in zip(members, chosen.weights)}
    atomic.write_json(out_dir / "weights.json", {"method": method, "members": [m.backbone for m in members], "weights": weight_map})
    thresholds = None
    if multilabel_task:  # per-class F1-optimal thresholds on the honest (cross-validated) blend OOF
        thresholds = multilabel.tune_thresholds(data.y, cv_oof[method])
        atomic.write_json(out_dir / "thresholds.json", dict(zip(data.competition.classes, map(float, thresholds))))
    test_ids = data.competition.test[data.competition.config.id_col].to_numpy()
    path = submission.write(data.competition, test_ids, test_proba, Path(recipe.submissions_dir) / f"{name or f'{recipe.name}-{method}'}.csv", thresholds)
    return BlendResult(board, weight_map, test_proba, path, skipped)


def _prefixed(scores: dict[str, float]) -> dict[str, float]:
    return {f"cv_{k}": v for k, v in scores.items()}
