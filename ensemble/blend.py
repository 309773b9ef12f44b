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

from . import atomic, blenders, competition, metrics, multilabel, submission
from .errors import EnsError, OptionError
from .recipe import Recipe
from .train import Data, proba_frame


class BlendError(EnsError, ValueError):
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


def _run_table(path: Path, keys: list[str], classes: list[str], retrain: str) -> tuple[pd.DataFrame, np.ndarray]:
    """A run's ``oof.csv`` or ``test.csv``, every cell a string (:func:`competition.read_csv`), and each row's line number.

    Raises:
        BlendError: the file is missing or not a readable CSV, or its columns are not the ``keys``
            and exactly the ``classes`` (in any order: columns are matched by name).
    """
    try:
        frame, lines = competition.read_csv(path)
    except competition.CompetitionError as err:
        raise BlendError(f"{err} The run is damaged; {retrain}.") from err
    missing = [c for c in [*keys, *classes] if c not in frame.columns]
    extra = [c for c in frame.columns if c not in keys and c not in classes]
    if missing or extra:
        raise BlendError(
            f"{path} has columns {list(frame.columns)}: it lacks {missing} and has unknown {extra}, where a run table holds "
            f"{keys} and one column per class of the competition, {classes}; {retrain}."
        )
    return frame, lines


def _probabilities(frame: pd.DataFrame, lines: np.ndarray, classes: list[str], multilabel_task: bool, path: Path, retrain: str) -> np.ndarray:
    """The ``classes`` columns of a run table as float64 ``(rows, classes)``, in ``classes`` order
    whatever the file's column order (the realignment is by column name, exact).

    Raises:
        BlendError: naming the file, line and class, a cell that is not a number, is NaN or
            infinite, or lies outside [0, 1]; for a multiclass task, a row whose probabilities do
            not sum to 1 within 1e-3.
    """
    cells = frame[classes].to_numpy(dtype=object)
    try:
        values = cells.astype(np.float64)
    except ValueError:
        values = np.array([[_number(cell) for cell in row] for row in cells], dtype=np.float64).reshape(cells.shape)
    problems = ~np.isfinite(values) | (values < 0) | (values > 1)
    if problems.any():
        row, col = (int(k) for k in np.argwhere(problems)[0])
        raise BlendError(f"{path}: line {lines[row]}, class {classes[col]!r} holds {cells[row, col]!r}, not a probability in [0, 1]; {retrain}.")
    if not multilabel_task and len(values):
        off = np.abs(values.sum(axis=1) - 1.0)
        if (off > 1e-3).any():
            row = int(np.argmax(off > 1e-3))
            raise BlendError(
                f"{path}: the probabilities in line {lines[row]} sum to {values[row].sum():.6g}, not 1 (a multiclass run writes softmax outputs); {retrain}."
            )
    return values


def _number(cell: str) -> float:
    """``float(cell)``, or NaN for a cell that is not a number (refused by :func:`_probabilities`)."""
    try:
        return float(cell)
    except ValueError:
        return np.nan


def _rows(frame: pd.DataFrame, lines: np.ndarray, expected: np.ndarray, where: str, path: Path, retrain: str) -> np.ndarray:
    """Positions in ``expected`` of the ``id`` column of a run table, which must list exactly the
    ids ``expected`` (those of ``where``), each once.

    Raises:
        BlendError: naming the file and line, an id that repeats or is not one of ``where``'s, or ids of ``where`` it lacks.
    """
    ids = frame["id"]
    rows = pd.Index(expected).get_indexer(ids)
    repeated, unknown = np.flatnonzero(ids.duplicated().to_numpy()), np.flatnonzero(rows < 0)
    if len(repeated):
        raise BlendError(f"{path}: id {ids.iloc[repeated[0]]!r} in line {lines[repeated[0]]} appears more than once; {retrain}.")
    if len(unknown):
        raise BlendError(f"{path}: id {ids.iloc[unknown[0]]!r} in line {lines[unknown[0]]} is not one of the ids of {where}; {retrain}.")
    if len(rows) != len(expected):
        lacking = sorted(set(expected) - set(ids))
        raise BlendError(f"{path} lacks {len(lacking)} id(s) of {where}, e.g. {lacking[:3]}; {retrain}.")
    return rows


def _run_config(run: Path, retrain: str) -> dict:
    """The ``config.json`` of a finished run.

    Raises:
        BlendError: it is missing or not a JSON object with ``folds_hash`` and ``classes``.
    """
    try:
        config = json.loads((run / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BlendError(f"{run / 'config.json'} cannot be read ({err}); the run is damaged: {retrain}.") from err
    if not isinstance(config, dict) or not {"folds_hash", "classes"} <= set(config):
        raise BlendError(f"{run / 'config.json'} has no folds_hash and classes; the run is damaged: {retrain}.")
    return config


def load_runs(recipe: Recipe, data: Data, backbone: str) -> tuple[np.ndarray, np.ndarray]:
    """Read the finished runs of every fold of ``backbone`` (a ``backbones`` entry): its OOF
    ``(n_train, classes)`` and its test probabilities ``(n_test, classes)``, the mean over folds.

    Rows are matched by id and class columns by name, so a run table in another row or column
    order is realigned exactly; anything else that does not fit the competition is refused.

    Raises:
        FileNotFoundError: a fold has no finished run (no ``metrics.json``).
        BlendError: naming the run (file, line) and the fix: its ``config.json`` is unreadable or
            records another fold assignment (``folds_hash``) or other classes than ``data``; its
            ``oof.csv`` / ``test.csv`` is missing or unreadable, has missing or extra class
            columns, invalid probabilities (see :func:`_probabilities`), repeated, unknown or
            missing ids (``oof.csv``: those of its fold in ``folds.csv``; ``test.csv``: those of
            ``test.csv``), or an ``oof.csv`` row of another fold.
    """
    id_col, classes = data.competition.config.id_col, data.competition.classes
    multilabel_task = data.competition.multilabel
    train_ids = data.competition.train[id_col].to_numpy()
    test_ids = data.competition.test[id_col].to_numpy()
    fold_of = data.folds["fold"].to_numpy()
    folds_path = data.competition.root / competition.FOLDS
    oof = np.full((len(train_ids), len(classes)), np.nan)
    test = np.zeros((len(test_ids), len(classes)))
    for fold in range(recipe.folds.n_splits):
        run = recipe.run_dir(backbone, fold)
        if not (run / "metrics.json").exists():
            raise FileNotFoundError(f"{run} is not finished; run `ens train --backbone {backbone} --fold {fold}`.")
        retrain = f"re-train it with `ens train --backbone {backbone} --fold {fold} --force`"
        config = _run_config(run, retrain)
        if config["folds_hash"] != data.folds_hash:
            raise BlendError(f"{run} was trained on another fold assignment than {folds_path}; {retrain}, or restore the folds.csv it was trained on.")
        if config["classes"] != classes:
            raise BlendError(f"{run} was trained with classes {config['classes']}, the competition has {classes} (names and order); {retrain}.")
        path = run / "oof.csv"
        frame, lines = _run_table(path, ["id", "fold"], classes, retrain)
        fold_rows = np.flatnonzero(fold_of == fold)
        rows = fold_rows[_rows(frame, lines, train_ids[fold_rows], f"fold {fold} in {folds_path}", path, retrain)]
        other = np.flatnonzero((frame["fold"].str.strip() != str(fold)).to_numpy())
        if len(other):
            raise BlendError(f"{path}: line {lines[other[0]]} is of fold {frame['fold'].iloc[other[0]]!r}, the run of fold {fold}; {retrain}.")
        oof[rows] = _probabilities(frame, lines, classes, multilabel_task, path, retrain)
        path = run / "test.csv"
        frame, lines = _run_table(path, ["id"], classes, retrain)
        order = np.argsort(_rows(frame, lines, test_ids, data.competition.root / competition.TEST, path, retrain))
        test += _probabilities(frame, lines, classes, multilabel_task, path, retrain)[order]
    return oof, test / recipe.folds.n_splits


def load_member(recipe: Recipe, data: Data, backbone: str, entries: list[str]) -> Member:
    """The member ``backbone`` (a timm model name): the mean of :func:`load_runs` over its
    ``backbones`` entries ``entries`` (one per seed).

    Raises:
        FileNotFoundError: a fold of an entry has no finished run.
        BlendError: see :func:`load_runs`.
    """
    runs = [load_runs(recipe, data, entry) for entry in entries]
    return Member(backbone, recipe.seeds(entries), np.mean([oof for oof, _ in runs], axis=0), np.mean([test for _, test in runs], axis=0))


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
        raise BlendError(
            f"no backbone of recipe {recipe.name!r} has all {recipe.folds.n_splits} folds finished under "
            f"{Path(recipe.runs_dir) / recipe.name}; run `ens train` first."
        )
    return members, skipped


@dataclass
class BlendResult:
    """A blend: the leaderboard (one row per member and per method), the chosen method's weights
    by backbone (None for rank, geometric and stacking, which are not weighted means), its test
    probabilities ``(n_test, classes)``, the submission path, and the backbones left out because
    a fold is unfinished (with the reason)."""

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
        BlendError: see :func:`collect`. OptionError: unknown method.
    """
    method = method or recipe.blend.method
    multilabel_task = data.competition.multilabel
    methods = blenders.MULTILABEL_METHODS if multilabel_task else blenders.METHODS
    score = metrics.for_task(multilabel_task).scores
    if method not in methods:
        raise OptionError(f"blend method {method!r} is not one of {methods}, the methods for a {data.competition.config.task} task.")
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
        rows.append(
            {"model": f"blend: {candidate}", **score(data.y, fitted.combine(oof)), **_prefixed(score(data.y, cv_oof[candidate])), "weights": weights_text}
        )
        if candidate == method:
            chosen = fitted
    board = pd.DataFrame(rows)
    test_proba = data.fill_skipped(chosen.combine(test))  # skipped test clips: the prior, whatever the method made of it
    out_dir = Path(recipe.runs_dir) / recipe.name / "blend"
    atomic.write_csv(out_dir / "leaderboard.csv", board)
    train_ids = data.competition.train[data.competition.config.id_col].to_numpy()
    atomic.write_csv(out_dir / "oof.csv", proba_frame(train_ids, cv_oof[method], data.competition.classes))
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
