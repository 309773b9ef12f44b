"""Kaggle-style submission files: written in the sample submission's exact ids, order and columns; scored
against ``solution.csv``, per Public/Private leaderboard when it has Kaggle's ``Usage`` column."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import atomic
from .competition import SAMPLE, SOLUTION, Competition, CompetitionError, check_ids, read_csv, require_filled


def to_frame(competition: Competition, test_ids, proba: np.ndarray, thresholds: np.ndarray | None = None) -> pd.DataFrame:
    """The submission table for test probabilities ``proba`` ``(n_test, classes)`` of ``test_ids``.

    The format follows ``sample_submission.csv``: with one column per class it holds the
    probabilities, in the sample's column order; with one column besides the id it holds the
    task's labels (:meth:`ensemble.core.tasks.Task.labels`): the predicted class name (argmax), or
    for a multilabel task the space-separated classes at or above their ``thresholds``
    ``(classes,)`` (default 0.5). Rows are in the sample's id order.

    Raises:
        CompetitionError: ``test_ids`` differ from the sample's, or its columns fit neither format.
        TaskError: ``thresholds`` for a multiclass task, which has none.
    """
    id_col, sample = competition.config.id_col, competition.sample
    frame = pd.DataFrame(proba, index=list(test_ids), columns=competition.classes)
    if set(frame.index) != set(sample[id_col]):
        raise CompetitionError("the predictions' ids differ from sample_submission.csv's; every test id needs exactly one row.")
    frame = frame.loc[sample[id_col]]
    targets = [c for c in sample.columns if c != id_col]
    if len(targets) == 1:
        labels = competition.task.labels(frame.to_numpy(), competition.classes, thresholds)
        out = pd.DataFrame({id_col: sample[id_col].to_numpy(), targets[0]: labels})
    elif set(targets) == set(competition.classes):
        out = frame[targets].reset_index(drop=True)
        out.insert(0, id_col, sample[id_col].to_numpy())
    else:
        raise CompetitionError(f"sample_submission.csv columns {targets} are neither one label column nor the classes {competition.classes}.")
    return out[sample.columns]


def write(competition: Competition, test_ids, proba: np.ndarray, path: str | os.PathLike, thresholds: np.ndarray | None = None) -> Path:
    """Write :func:`to_frame` atomically to ``path``; returns the path."""
    path = Path(path)
    atomic.write_csv(path, to_frame(competition, test_ids, proba, thresholds))
    return path


USAGE = "Usage"  # Kaggle's solution column saying which leaderboard scores a row
SPLITS = {"Public": "public", "Private": "private"}  # Usage value -> key of score_splits
IGNORED = "Ignored"  # Kaggle's Usage for a row that is in the test set but scored on neither leaderboard


def solution_columns(competition: Competition, columns: list[str], path: str | os.PathLike) -> tuple[str, str]:
    """The id and target columns of a solution table with header ``columns``.

    The id column is ``[competition].id_col``, which is also ``sample_submission.csv``'s id column
    (:func:`ensemble.store.competition.load` checks it). The target column is the first of these that
    the solution has: ``[competition].label_col`` (the label column of ``train.csv``); the single
    label column of ``sample_submission.csv`` when the sample is a label submission (Kaggle's
    ``Id,Predicted`` style); the only column besides the id and ``Usage``. So with a probability
    sample submission (one column per class) the target is still one label column, named like
    ``train.csv``'s or standing alone. The target holds class names (multilabel: space-separated).

    Args:
        competition: the loaded competition (its recipe column names and sample submission).
        columns: the solution's header.
        path: the solution's file, named in an error.

    Returns:
        ``(id column, target column)``.

    Raises:
        CompetitionError: naming ``path`` and the columns looked for, when the id column is
            missing or no target column can be told apart.
    """
    c, sample_path = competition.config, competition.root / SAMPLE
    if c.id_col not in columns:
        raise CompetitionError(
            f"{path} has no id column {c.id_col!r} (columns: {columns}); name its id column {c.id_col!r} "
            f"as in {sample_path} and the recipe's [competition].id_col."
        )
    targets = [col for col in competition.sample.columns if col != c.id_col]
    candidates = [c.label_col] + (targets if len(targets) == 1 else [])
    for name in candidates:
        if name in columns:
            return c.id_col, name
    rest = [col for col in columns if col not in (c.id_col, USAGE)]
    if len(rest) == 1:
        return c.id_col, rest[0]
    raise CompetitionError(
        f"{path} has no target column: none of {list(dict.fromkeys(candidates))} ([competition].label_col"
        f"{', the label column of ' + SAMPLE if len(candidates) > 1 else ''}) among its columns {columns}, and "
        f"{'no other column' if not rest else f'{len(rest)} other columns {rest}'} besides the id and {USAGE!r}; "
        f"name its label column {c.label_col!r}."
    )


def read_solution(competition: Competition) -> tuple[pd.DataFrame, str, np.ndarray]:
    """Read and check the competition's hidden ``solution.csv``.

    Its columns are those of :func:`solution_columns`. An optional ``Usage`` column assigns each
    row, as on Kaggle, to the ``Public`` or the ``Private`` leaderboard, or marks it ``Ignored``
    (in the test set and the submission, but scored on neither); the values are case-sensitive,
    as Kaggle writes them. The labels of ``Ignored`` rows are not checked.

    Returns:
        The solution (strings) indexed by id, in file order; the name of its target column; and
        each row's leaderboard ``(n,)``: ``"public"``, ``"private"``, or ``""`` for an ``Ignored``
        row (not scored); without a ``Usage`` column every entry is ``"all"``.

    Raises:
        CompetitionError: naming the file, and the line (header = line 1) or the column, and the
            fix: no ``solution.csv`` or not a readable CSV; no id or no target column (see
            :func:`solution_columns`); an empty (missing) or repeated id; an id that is not a
            test id of ``sample_submission.csv``; a test id without a row; a ``Usage`` value other
            than ``Public``, ``Private`` or ``Ignored``; no row to score; or, in a scored row, an
            empty label or one that is not among the classes (multilabel: a space-separated
            name that is not).
    """
    path = competition.root / SOLUTION
    if not path.is_file():
        raise CompetitionError(f"{path} does not exist: this competition has no hidden labels to score against.")
    frame, lines = read_csv(path)
    id_col, target = solution_columns(competition, list(frame.columns), path)
    check_ids(frame, lines, id_col, path)
    test_ids = set(competition.sample[id_col])
    unknown = np.flatnonzero(~frame[id_col].isin(test_ids).to_numpy())
    if len(unknown):
        row = int(unknown[0])
        raise CompetitionError(
            f"{path}: id {frame[id_col].iloc[row]!r} in line {lines[row]} is not a test id (it is not in {competition.root / SAMPLE}"
            f"{f', nor are {len(unknown) - 1} more' if len(unknown) > 1 else ''}); delete the row or fix its id."
        )
    missing = sorted(test_ids - set(frame[id_col]))
    if missing:
        raise CompetitionError(
            f"{path} has no row for {len(missing)} of the {len(test_ids)} test ids of {competition.root / SAMPLE} ({missing[:3]}); "
            f"add a row for each (with {USAGE!r} {IGNORED!r} if it should not be scored)."
        )
    if USAGE in frame.columns:
        allowed = {**SPLITS, IGNORED: ""}
        bad = np.flatnonzero(~frame[USAGE].isin(list(allowed)).to_numpy())
        if len(bad):
            row = int(bad[0])
            raise CompetitionError(
                f"{path}: {USAGE} {frame[USAGE].iloc[row]!r} in line {lines[row]} is none of {list(allowed)} (Kaggle's values, "
                "case as written); set it to Public or Private to score the row on that leaderboard, or Ignored to score it on neither."
            )
        split = frame[USAGE].map(allowed).to_numpy(dtype=object)
        if not split.astype(bool).any():
            raise CompetitionError(f"{path}: every row's {USAGE} is {IGNORED!r}, so there is nothing to score; mark rows Public or Private.")
    else:
        split = np.full(len(frame), "all", dtype=object)
    scored = split.astype(bool)
    require_filled(frame[scored], lines[scored], target, path, f"label (column {target!r})", id_col)
    known = set(competition.classes)
    for row in np.flatnonzero(scored):
        label = frame[target].iloc[row]
        names = competition.task.tokens(label)
        wrong = [name for name in names if name not in known]
        if wrong:
            which = "" if wrong == [label] else f" ({wrong[0]!r})"
            raise CompetitionError(
                f"{path}: label {label!r}{which} in line {lines[row]} (column {target!r}) is not one of the classes "
                f"{competition.classes}; fix the label or the recipe's [competition].classes."
            )
    return frame.set_index(id_col), target, split


def score_splits(competition: Competition, path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """Score a submission against the competition's hidden ``solution.csv``, overall and, when the
    solution has Kaggle's ``Usage`` column, per leaderboard.

    The solution's columns and checks are those of :func:`read_solution`. The submission needs the
    id column with each test id once, and either the class columns (probabilities; the argmax
    class is scored and ``log_loss`` added) or a label column (its first column besides the id).

    Returns:
        ``{"all": scores}`` without a ``Usage`` column. With one, ``"all"`` scores the ``Public``
        and ``Private`` rows together, and ``"public"`` and ``"private"`` each its own rows (a
        key only when it has rows); ``Ignored`` rows are scored in none. Each ``scores`` is
        ``accuracy``, ``macro_f1``, ``uar`` (plus ``log_loss``) and ``n`` (rows scored); a
        multilabel task gives those of :func:`ensemble.core.multilabel.scores` and ``n`` instead
        (:meth:`ensemble.core.tasks.Task.scores`).

    Raises:
        CompetitionError: a bad ``solution.csv`` (see :func:`read_solution`), or a submission
            without the id column, whose ids differ from the test ids or repeat, without a label
            or class column, or with a label that is not among the classes.
    """
    solution, target, split = read_solution(competition)
    id_col = competition.config.id_col
    sub = pd.read_csv(path, dtype={id_col: str}, keep_default_na=False)
    if id_col not in sub.columns or set(sub[id_col]) != set(solution.index) or sub[id_col].duplicated().any():
        raise CompetitionError(f"{path}: ids must be exactly the {len(solution)} ids of {competition.root / SOLUTION}, once each.")
    if len(sub.columns) < 2:
        raise CompetitionError(f"{path} has no column besides {id_col!r}; write it in the format of {competition.root / SAMPLE}.")
    sub = sub.set_index(id_col).loc[solution.index]
    pred, probabilistic = _predictions(competition, sub, path)
    scored = split.astype(bool)  # Ignored rows out: their labels are unchecked
    truth, pred, split = solution[target][scored], pred[scored], split[scored]
    y = competition.encode(truth)
    task_scores = competition.task.scores

    def scores_of(rows: np.ndarray) -> dict[str, float]:
        with warnings.catch_warnings():  # a leaderboard's few rows may lack a predicted class: UAR is still defined
            warnings.filterwarnings("ignore", "y_pred contains classes not in y_true", UserWarning)
            scores = task_scores(y[rows], pred[rows])
        if not probabilistic:
            scores.pop("log_loss")
        return {**scores, "n": int(rows.sum())}

    result = {"all": scores_of(np.ones(len(y), dtype=bool))}
    for key in SPLITS.values():
        if (split == key).any():
            result[key] = scores_of(split == key)
    return result


def score(competition: Competition, path: str | os.PathLike) -> dict[str, float]:
    """The overall scores of a submission: ``score_splits(competition, path)["all"]``, i.e. every
    row of ``solution.csv`` that is not ``Ignored``.

    Returns:
        ``accuracy``, ``macro_f1``, ``uar`` and ``n``. For a probability submission the
        argmax class is scored, and ``log_loss`` is added. A multilabel task gives the scores of
        :func:`ensemble.core.multilabel.scores` instead.

    Raises:
        CompetitionError: see :func:`score_splits`.
    """
    return score_splits(competition, path)["all"]


def _predictions(competition: Competition, sub: pd.DataFrame, path) -> tuple[np.ndarray, bool]:
    """The submission's rows ``sub`` (indexed by id, in solution order) as ``(n, classes)`` scores:
    its class columns (probabilities), else its first column's labels one-hot (multilabel:
    space-separated labels multi-hot, taken as 0/1 scores); and whether they are probabilities.

    Raises:
        CompetitionError: a label that is not among the classes; class columns that are not
            numbers, are negative or infinite, or cover only some of the classes.
    """
    classes = competition.classes
    if set(classes) <= set(sub.columns):
        try:
            proba = sub[classes].to_numpy(dtype=float)
        except ValueError as err:
            raise CompetitionError(f"{path}: a class column holds a value that is not a number ({err}); write probabilities.") from err
        if not np.isfinite(proba).all() or (proba < 0).any():
            raise CompetitionError(f"{path}: class columns must hold finite probabilities >= 0; write the model's probabilities.")
        return proba, True
    present = [c for c in classes if c in sub.columns]
    if present:
        missing = [c for c in classes if c not in sub.columns]
        raise CompetitionError(
            f"{path} has probability columns for {len(present)} classes but lacks {missing}; "
            f"write one column per class, as {competition.root / SAMPLE} lists them."
        )
    predicted = sub[sub.columns[0]]
    unknown = sorted({name for label in predicted for name in competition.task.tokens(label)} - set(classes))
    if unknown:
        raise CompetitionError(f"{path}: labels {unknown[:3]} are not among the classes {classes}.")
    return competition.task.indicators(competition.encode(predicted), len(classes)), False
