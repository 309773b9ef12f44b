"""Blend the out-of-fold (OOF) predictions of finished runs and write the submission.

Every backbone whose folds are all finished becomes one ensemble member: its OOF probabilities
(each training clip predicted by the fold model that did not train on it) and its test
probabilities averaged over folds. Blend weights are chosen on OOF only; note that the blend's
OOF score is then in-sample for the weights (a small optimism; the hidden test set is the honest check).

Methods:
    ``mean``: equal weights.
    ``caruana``: greedy forward ensemble selection with replacement (Caruana, Niculescu-Mizil,
    Crew & Ksikes 2004, "Ensemble selection from libraries of models", ICML), minimising OOF
    log-loss; weights are how often each member was picked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import atomic, metrics, submission
from .recipe import Recipe
from .train import Data, run_config


class BlendError(ValueError):
    """Runs cannot be blended: they disagree on folds, ids or classes, or hold invalid probabilities."""


@dataclass
class Member:
    """One backbone's predictions. ``oof``: ``(n_train, classes)`` in ``train.csv`` order;
    ``test``: ``(n_test, classes)`` in ``test.csv`` order, the mean over its fold models."""

    backbone: str
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


def load_member(recipe: Recipe, data: Data, backbone: str) -> Member:
    """Read the finished runs of every fold of ``backbone``.

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
    return Member(backbone, oof, test / recipe.folds.n_splits)


def collect(recipe: Recipe, data: Data) -> tuple[list[Member], dict[str, str]]:
    """Members for every backbone of the recipe whose folds are all finished, and the skipped
    backbones with the reason (the first unfinished fold).

    Raises:
        BlendError: no backbone is finished, or a run disagrees with the competition (see :func:`load_member`).
    """
    members, skipped = [], {}
    for backbone in recipe.backbones:
        try:
            members.append(load_member(recipe, data, backbone))
        except FileNotFoundError as err:
            skipped[backbone] = str(err)
    if not members:
        raise BlendError(f"no backbone of recipe {recipe.name!r} has all {recipe.folds.n_splits} folds finished under {Path(recipe.runs_dir) / recipe.name}; run `ens train` first.")
    return members, skipped


def caruana_weights(oof: np.ndarray, y: np.ndarray, iterations: int = 50) -> np.ndarray:
    """Greedy ensemble selection with replacement (Caruana et al. 2004) on OOF log-loss.

    Starts from the single best member, then ``iterations`` times adds (again, if best) the member
    whose inclusion gives the lowest log-loss of the running average. Ties go to the lower index.

    Args:
        oof: ``(members, n, classes)`` OOF probabilities.
        y: ``(n,)`` integer labels.

    Returns:
        ``(members,)`` non-negative weights summing to 1 (pick counts / total picks).
    """
    m = oof.shape[0]
    rows = np.arange(len(y))

    def loss(p: np.ndarray) -> float:
        return float(-np.log(np.clip(p[rows, y], 1e-15, None)).mean())

    counts = np.zeros(m)
    total = np.zeros_like(oof[0])
    for step in range(iterations + 1):
        candidates = [loss((total + oof[j]) / (step + 1)) for j in range(m)]
        best = int(np.argmin(candidates))
        counts[best] += 1
        total += oof[best]
    return counts / counts.sum()


def weights(method: str, oof: np.ndarray, y: np.ndarray, iterations: int = 50) -> np.ndarray:
    """Blend weights ``(members,)`` of ``method`` (``mean`` or ``caruana``)."""
    if method == "mean":
        return np.full(oof.shape[0], 1.0 / oof.shape[0])
    if method == "caruana":
        return caruana_weights(oof, y, iterations)
    raise ValueError(f"unknown blend method {method!r}; choose mean or caruana.")


@dataclass
class BlendResult:
    """A blend: the leaderboard (one row per member and per method), the chosen method's weights
    by backbone, its test probabilities ``(n_test, classes)``, the submission path, and the
    backbones left out because a fold is unfinished (with the reason)."""

    leaderboard: pd.DataFrame
    weights: dict[str, float]
    test: np.ndarray
    submission: Path
    skipped: dict[str, str] = field(default_factory=dict)


def blend(recipe: Recipe, data: Data, method: str | None = None, name: str | None = None) -> BlendResult:
    """Blend the finished runs of ``recipe``, write ``submissions/<name>.csv`` and the leaderboard.

    The leaderboard (OOF accuracy, macro-F1, UAR, log-loss of every member, the mean blend and the
    Caruana blend) is also written to ``runs/<recipe>/blend/leaderboard.csv`` with the weights
    in ``weights.json``.
    """
    method = method or recipe.blend.method
    members, skipped = collect(recipe, data)
    oof = np.stack([m.oof for m in members])
    test = np.stack([m.test for m in members])
    rows = [{"model": m.backbone, **metrics.scores(data.y, m.oof)} for m in members]
    by_method = {}
    for candidate in ("mean", "caruana"):
        w = by_method[candidate] = weights(candidate, oof, data.y, recipe.blend.iterations)
        rows.append({"model": f"blend: {candidate}", **metrics.scores(data.y, np.tensordot(w, oof, axes=1)),
                     "weights": " ".join(f"{m.backbone}={x:.2f}" for m, x in zip(members, w))})
    if method not in by_method:
        raise ValueError(f"unknown blend method {method!r}; choose mean or caruana.")
    chosen = by_method[method]
    board = pd.DataFrame(rows)
    test_proba = np.tensordot(chosen, test, axes=1)
    out_dir = Path(recipe.runs_dir) / recipe.name / "blend"
    atomic.write_csv(out_dir / "leaderboard.csv", board)
    train_ids = data.competition.train[data.competition.config.id_col].to_numpy()
    blended_oof = pd.DataFrame(np.tensordot(chosen, oof, axes=1), columns=data.competition.classes)
    blended_oof.insert(0, "id", train_ids)
    atomic.write_csv(out_dir / "oof.csv", blended_oof)
    weight_map = {m.backbone: float(x) for m, x in zip(members, chosen)}
    atomic.write_json(out_dir / "weights.json", {"method": method, "weights": weight_map})
    test_ids = data.competition.test[data.competition.config.id_col].to_numpy()
    path = submission.write(data.competition, test_ids, test_proba, Path(recipe.submissions_dir) / f"{name or f'{recipe.name}-{method}'}.csv")
    return BlendResult(board, weight_map, test_proba, path, skipped)
