"""Pseudo-labelling of the unlabelled test clips (``[pseudo]``, ``ens train --pseudo-label``): the
labels each round's members are retrained with.

Round ``r`` retrains members as new members ``"<entry>+pl<r>"`` (:class:`ensemble.core.entry.Entry`).
Its teachers are round ``r - 1``'s members: for round 1 the recipe's blend members
(:func:`ensemble.store.runs.members`), later the previous round's retrained members. For fold ``k`` the
pseudo probabilities of every test clip are the mean over the teachers of their fold-``k`` models'
test probabilities (each teacher the mean over its seeds): models that never trained on fold ``k``'s
validation clips, so no label of those clips reaches fold ``k``'s student and its OOF stays
honest. (The blend's fitted weights are not used: they were fitted on every fold's OOF labels.)

A test clip is kept when its highest pseudo probability reaches the threshold; its soft target is
the whole probability row. ``[pseudo].threshold = 0`` chooses the threshold per fold from the
teachers' OOF clips of the *other* folds (pooled OOF of the same mean): the lowest confidence at
which the kept OOF clips are right at least ``[pseudo].precision`` of the time. Test clips that
could not be loaded are never kept. Each fold's labels are written to
``<runs_dir>/<recipe>/pseudo/round<r>/fold<k>.csv`` (id, threshold, one column per class).

What the hidden test can and cannot tell: the students see the test clips (without labels), so
their test score is transductive, as in a competition where the test audio is given; their OOF
score measures whether the extra, pseudo-labelled speakers help on held-out *training* speakers.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core import atomic
from ..core.entry import Entry
from ..core.errors import EnsError
from ..core.recipe import Recipe
from ..store import runs
from ..store.split import Split

MIN_KEPT = 20
"""The automatic threshold counts a confidence only when at least this many OOF clips reach it, so a
handful of lucky clips does not set it."""


class PseudoError(EnsError, ValueError):
    """Pseudo-labels cannot be made: a teacher round has no member, or a teacher is unfinished."""


@dataclass(frozen=True)
class PseudoLabels:
    """The pseudo-labelled test clips of one round and fold.

    Attributes:
        round, fold: which round's students and which fold they are for.
        rows: ``(n,)`` positions in the test table of the kept clips.
        targets: ``(n, classes)`` float64 soft targets (each row sums to 1).
        threshold: the confidence a kept clip reached (given, or chosen for ``[pseudo].precision``).
        teachers: the members whose fold models made the labels.
    """

    round: int
    fold: int
    rows: np.ndarray
    targets: np.ndarray
    threshold: float
    teachers: tuple[str, ...]

    def digest(self) -> str:
        """A short hash of the kept rows and their targets (rounded to 1e-6): part of a student run's identity."""
        blob = np.ascontiguousarray(self.rows, dtype=np.int64).tobytes() + np.round(self.targets, 6).astype(np.float64).tobytes()
        return hashlib.sha1(blob).hexdigest()[:12]

    def identity(self) -> dict:
        """What a student run records in ``config.json`` (:func:`ensemble.store.runs.run_config`'s ``pseudo``)."""
        return {"round": self.round, "threshold": round(self.threshold, 6), "n": len(self.rows), "labels": self.digest(), "teachers": list(self.teachers)}


def teachers(recipe: Recipe, round_: int) -> list[runs.Member]:
    """The members whose predictions label round ``round_``'s students: round 1, the blend members
    of the recipe without rounds (``[blend].members``, else every member); later rounds, the
    previous round's retrained members.

    Raises:
        PseudoError: ``round_`` < 1, or the previous round has no member.
        RunError: a ``[blend].members`` item names no member (see :func:`ensemble.store.runs.members`).
    """
    if round_ < 1:
        raise PseudoError(f"pseudo-labelling rounds count from 1, not {round_}.")
    if round_ == 1:
        return runs.members(_without_rounds(recipe))
    wanted = {Entry.parse(e).member for e in recipe.entries() if Entry.parse(e).round == round_ - 1}
    chosen = [runs.Member(name, runs.root(recipe), tuple(entries), recipe.folds.n_splits) for name, entries in recipe.members().items() if name in wanted]
    if not chosen:
        raise PseudoError(f"round {round_ - 1} has no member to teach round {round_}; raise [pseudo].rounds or check [pseudo].members.")
    return chosen


def _without_rounds(recipe: Recipe) -> Recipe:
    """``recipe`` with no pseudo round, and none among ``[blend].members``."""
    listed = [item for item in recipe.blend.members if Entry.parse(item).round == 0]
    return dataclasses.replace(recipe, pseudo=dataclasses.replace(recipe.pseudo, rounds=0), blend=dataclasses.replace(recipe.blend, members=listed))


def auto_threshold(confidence: np.ndarray, correct: np.ndarray, precision: float, min_kept: int = MIN_KEPT) -> float:
    """The lowest confidence ``t`` such that the clips with ``confidence >= t`` (at least ``min_kept``
    of them) are ``correct`` at least ``precision`` of the time; 1.0 (keep nothing) when none is.

    Args:
        confidence: ``(n,)`` highest probability of each OOF clip. correct: ``(n,)`` bool, its arg-max is its label.
    """
    order = np.argsort(-confidence, kind="stable")
    hits = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    ok = np.flatnonzero((hits >= precision) & (np.arange(1, len(order) + 1) >= min_kept))
    if not len(ok):
        return 1.0
    cut = confidence[order][ok[-1]]  # the largest kept set that is precise enough
    return float(cut)


def fold_labels(recipe: Recipe, split: Split, round_: int, fold: int) -> PseudoLabels:
    """The pseudo-labels of round ``round_``'s students of ``fold`` (see the module docstring).

    Raises:
        PseudoError: see :func:`teachers`. RunError: a teacher's run is unfinished or its tables fail
            the strict checks of :func:`ensemble.store.runs.read_member`.
    """
    chosen = teachers(recipe, round_)
    comp = split.competition
    test = np.mean([np.mean([runs.read_fold(m, split, e, fold)[2] for e in m.entries], axis=0) for m in chosen], axis=0)
    confidence = test.max(axis=1)
    threshold = recipe.pseudo.threshold
    if threshold <= 0:
        oof = np.mean([runs.read_member(m, split)[0] for m in chosen], axis=0)
        other = split.folds["fold"].to_numpy() != fold
        threshold = auto_threshold(oof[other].max(axis=1), oof[other].argmax(axis=1) == split.y[other], recipe.pseudo.precision)
    skipped = set(split.skipped.loc[split.skipped["table"] == "test", "id"].astype(str)) if len(split.skipped) else set()
    loadable = ~comp.test[comp.config.id_col].astype(str).isin(skipped).to_numpy()
    rows = np.flatnonzero((confidence >= threshold) & loadable)
    return PseudoLabels(round_, fold, rows, test[rows], float(threshold), tuple(m.name for m in chosen))


def labels_path(recipe: Recipe, round_: int, fold: int) -> Path:
    """Where round ``round_``'s labels of ``fold`` are written."""
    return runs.root(recipe) / "pseudo" / f"round{round_}" / f"fold{fold}.csv"


def write_labels(recipe: Recipe, split: Split, labels: PseudoLabels) -> Path:
    """Write ``labels`` (id, threshold, one column per class) atomically; returns the path."""
    comp = split.competition
    frame = runs.proba_frame(comp.test[comp.config.id_col].to_numpy()[labels.rows], labels.targets, comp.classes, threshold=labels.threshold)
    path = labels_path(recipe, labels.round, labels.fold)
    atomic.write_csv(path, frame)
    return path
