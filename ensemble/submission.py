"""Kaggle-style submission files: written in the sample submission's exact ids, order and columns; scored."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from . import atomic, metrics, multilabel
from .competition import SOLUTION, Competition, CompetitionError


def to_frame(competition: Competition, test_ids, proba: np.ndarray, thresholds: np.ndarray | None = None) -> pd.DataFrame:
    """The submission table for test probabilities ``proba`` ``(n_test, classes)`` of ``test_ids``.

    The format follows ``sample_submission.csv``: with one column per class it holds the
    probabilities, in the sample's column order; with one column besides the id it holds the
    predicted class name (argmax), or for a multilabel task the space-separated classes at or
    above their ``thresholds`` ``(classes,)`` (default 0.5; see :func:`multilabel.labels`).
    Rows are in the sample's id order.

    Raises:
        CompetitionError: ``test_ids`` differ from the sample's, or its columns fit neither format.
    """
    id_col, sample = competition.config.id_col, competition.sample
    frame = pd.DataFrame(proba, index=list(test_ids), columns=competition.classes)
    if set(frame.index) != set(sample[id_col]):
        raise CompetitionError("the predictions' ids differ from sample_submission.csv's; every test id needs exactly one row.")
    frame = frame.loc[sample[id_col]]
    targets = [c for c in sample.columns if c != id_col]
    if len(targets) == 1:
        if competition.multilabel:
            cut = np.full(len(competition.classes), 0.5) if thresholds is None else thresholds
            labels = multilabel.labels(frame.to_numpy(), cut, competition.classes)
        else:
            labels = np.asarray(competition.classes)[frame.to_numpy().argmax(axis=1)]
        out = pd.DataFrame({id_col: sample[id_col].to_numpy(), targets[0]: labels})
    elif set(targets) == set(competition.classes):
        out = frame[targets].reset_index(drop=True)
        out.insert(0, id_col, sample[id_col].to_numpy())
    else:
        raise CompetitionError(
            f"sample_submission.csv columns {targets} are neither one label column nor the classes {competition.classes}."
        )
    return out[sample.columns]


def write(competition: Competition, test_ids, proba: np.ndarray, path: str | os.PathLike, thresholds: np.ndarray | None = None) -> Path:
    """Write :func:`to_frame` atomically to ``path``; returns the path."""
    path = Path(path)
    atomic.write_csv(path, to_frame(competition, test_ids, proba, thresholds))
    return path


def score(competition: Competition, path: str | os.PathLike) -> dict[str, float]:
    """Score a label submission against the competition's hidden ``solution.csv`` (id, label).

    Returns:
        ``accuracy``, ``macro_f1``, ``uar`` and ``n``. For a probability submission the
        argmax class is scored, and ``log_loss`` is added. A multilabel task gives the scores of
        :func:`multilabel.scores` instead.

    Raises:
        CompetitionError: no ``solution.csv``, or the submission's ids differ from the solution's.
    """
    id_col = competition.config.id_col
    solution_path = competition.root / SOLUTION
    if not solution_path.is_file():
        raise CompetitionError(f"{solution_path} does not exist: this competition has no hidden labels to score against.")
    solution = pd.read_csv(solution_path, dtype=str, keep_default_na=False).set_index(id_col)
    sub = pd.read_csv(path, dtype={id_col: str}, keep_default_na=False)
    if id_col not in sub.columns or set(sub[id_col]) != set(solution.index) or sub[id_col].duplicated().any():
        raise CompetitionError(f"{path}: ids must be exactly the {len(solution)} ids of {solution_path}, once each.")
    sub = sub.set_index(id_col).loc[solution.index]
    if competition.multilabel:
        return _score_multilabel(competition, solution["label"], sub, path)
    index = {c: i for i, c in enumerate(competition.classes)}
    y = solution["label"].map(index).to_numpy()
    if set(competition.classes) <= set(sub.columns):
        proba = sub[competition.classes].to_numpy(dtype=float)
        return {**metrics.scores(y, proba), "n": len(y)}
    label_col = sub.columns[0]
    unknown = sorted(set(sub[label_col]) - set(index))
    if unknown:
        raise CompetitionError(f"{path}: labels {unknown[:3]} are not among the classes {competition.classes}.")
    onehot = np.eye(len(competition.classes))[sub[label_col].map(index).to_numpy()]
    scores = metrics.scores(y, onehot)
    scores.pop("log_loss")
    return {**scores, "n": len(y)}


def _score_multilabel(competition: Competition, truth: pd.Series, sub: pd.DataFrame, path) -> dict[str, float]:
    """Multilabel scores (:func:`multilabel.scores`) of probability columns, or of space-separated
    labels taken as 0/1 scores (then without log-loss)."""
    classes = competition.classes
    y = multilabel.encode(truth, classes)
    if set(classes) <= set(sub.columns):
        return {**multilabel.scores(y, sub[classes].to_numpy(dtype=float)), "n": len(y)}
    predicted = sub[sub.columns[0]]
    unknown = sorted({t for label in predicted for t in multilabel.tokens(label)} - set(classes))
    if unknown:
        raise CompetitionError(f"{path}: labels {unknown[:3]} are not among the classes {classes}.")
    scores = multilabel.scores(y, multilabel.encode(predicted, classes))
    scores.pop("log_loss")
    return {**scores, "n": len(y)}
