"""The competition as training and blending see it: its tables, folds and labels, without the
clips that cannot be loaded (:class:`Split`). Reads tables only: no audio, no feature cache, no
torch, so blending imports it cheaply; :mod:`ensemble.members.data` adds the images for training.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..core.errors import EnsWarning, OptionError, Param
from ..core.recipe import Recipe
from ..speaker import speaker_groups
from . import competition as comp_mod
from . import runs

ON_ERROR = ("fail", "skip")  # what load_data and predict.predict do with clips that cannot be loaded


def check_on_error(on_error: str) -> None:
    """Refuse an unknown policy for clips that cannot be loaded.

    Raises:
        OptionError: ``on_error`` is not one of :data:`ON_ERROR` (``fail``, ``skip``).
    """
    if on_error not in ON_ERROR:
        raise OptionError(f"on_error={on_error!r}: use one of {ON_ERROR}.")


def check_fold(recipe: Recipe, fold: int) -> None:
    """Raises OptionError: ``fold`` is not one of the recipe's folds (``0 .. [folds].n_splits - 1``)."""
    n_folds = recipe.folds.n_splits
    if not 0 <= fold < n_folds:
        raise OptionError(f"fold {fold} is not one of 0..{n_folds - 1} (the recipe's [folds].n_splits = {n_folds}).")


class SkippedClipsWarning(EnsWarning):
    """Clips that cannot be loaded were skipped (``on_error="skip"``); the list is in :attr:`Split.skipped`."""


def _no_skips() -> pd.DataFrame:
    return pd.DataFrame(columns=runs.SKIPPED_COLUMNS)


@dataclass
class Split:
    """The competition as training and blending see it.

    Attributes:
        competition: the loaded competition folder, without the training rows that were skipped.
        folds: ``id, fold`` aligned with ``competition.train``.
        skipped: the clips left out because they cannot be loaded (``on_error="skip"``): columns
            ``table`` (train or test), ``id``, ``path``, ``error``. Skipped training rows are not
            in ``competition.train``, ``folds`` or ``y``; skipped test rows stay (a submission
            needs every id) and are predicted as :attr:`prior`, see :meth:`fill_skipped`.
    """

    competition: comp_mod.Competition
    folds: pd.DataFrame
    skipped: pd.DataFrame = dataclasses.field(default_factory=_no_skips)

    @functools.cached_property
    def y(self) -> np.ndarray:
        """The training labels, encoded (:meth:`ensemble.store.competition.Competition.encode`)."""
        return self.competition.y

    @functools.cached_property
    def folds_hash(self) -> str:
        """:func:`ensemble.store.runs.folds_hash` of :attr:`folds`; runs of one blend must share it."""
        return runs.folds_hash(self.folds)

    @property
    def prior(self) -> np.ndarray:
        """Class frequencies of the training labels ``(classes,)``: what a skipped test clip is predicted
        (multilabel: each class's label rate)."""
        return self.competition.task.prior(self.y, len(self.competition.classes))

    def fill_skipped(self, proba: np.ndarray) -> np.ndarray:
        """``proba`` ``(n_test, classes)`` with the rows of skipped test clips set to :attr:`prior`."""
        ids = self.skipped.loc[self.skipped["table"] == "test", "id"]
        if len(ids):
            proba = proba.copy()
            proba[self.competition.test[self.competition.config.id_col].isin(ids).to_numpy()] = self.prior
        return proba

    def without(self, skipped: pd.DataFrame) -> Split:
        """This split without the training rows of ``skipped`` (``table, id, path, error``), which it records.

        Raises:
            CompetitionError: no training row would be left, or a fold would be left empty.
        """
        comp = self.competition
        ids = comp.train[comp.config.id_col]
        keep = np.flatnonzero(~ids.isin(skipped.loc[skipped["table"] == "train", "id"]).to_numpy())
        n_bad = len(ids) - len(keep)
        if not len(keep):
            raise comp_mod.CompetitionError(
                f"none of the {len(ids)} training clips of {comp.root / comp_mod.TRAIN} can be loaded; see the errors with ",
                Param("on_error", "fail"),
                ".",
            )
        folds = self.folds.iloc[keep].reset_index(drop=True)
        empty = sorted(set(self.folds["fold"]) - set(folds["fold"]))
        if empty:
            raise comp_mod.CompetitionError(
                f"skipping {n_bad} unloadable training clips leaves fold(s) {empty} empty; fix the files or lower [folds].n_splits."
            )
        kept = dataclasses.replace(comp, train=comp.train.iloc[keep].reset_index(drop=True))
        return Split(kept, folds, skipped.reset_index(drop=True))

    def skipping(self, failed: dict[tuple[str, int], tuple[str, str]]) -> Split:
        """This split without the clips of ``failed`` (``("train" or "test", row)`` -> ``(path, problem)``,
        rows of this split's tables), recorded beside those it had skipped, with a :class:`SkippedClipsWarning`
        (``on_error="skip"``: each kind that reads audio skips what it cannot read this way).

        Raises:
            CompetitionError: see :meth:`without`.
        """
        comp, id_col = self.competition, self.competition.config.id_col
        rows = [
            {"table": table, "id": (comp.train if table == "train" else comp.test)[id_col].iloc[row], "path": str(path), "error": error}
            for (table, row), (path, error) in sorted(failed.items(), key=lambda item: (item[0][0] != "train", item[0][1]))
        ]  # training rows first, as skipped.csv lists them
        new = pd.DataFrame(rows, columns=runs.SKIPPED_COLUMNS)
        skipped = pd.concat([self.skipped, new], ignore_index=True) if len(self.skipped) else new
        kept = self.without(skipped)  # refused before any warning when nothing, or an empty fold, would be left
        n_train = sum(table == "train" for table, _ in failed)
        warnings.warn(
            f"skipped {n_train} training and {len(failed) - n_train} test clip(s) that cannot be loaded; the test clips are predicted as the training prior.",
            SkippedClipsWarning,
            stacklevel=3,
        )
        return kept


def load_split(recipe: Recipe, skipped: bool = True) -> Split:
    """The competition, its folds and the clips the recipe's training skipped (``skipped.csv`` in its
    run store; with ``skipped=False`` every clip, for a kind that reads the audio and finds them itself):
    what blending needs. Reads tables only (no audio, no feature cache), except where the training speakers
    are to be inferred and ``train_speakers.csv`` is not written yet
    (:func:`ensemble.speaker.speaker_groups.with_train_speakers`; ``ens train`` writes it first).

    Raises:
        CompetitionError: see :func:`ensemble.store.competition.load` and :func:`ensemble.store.competition.folds`.
        SpeakerGroupError, AudioError, SpeakerError: see :func:`ensemble.speaker.speaker_groups.with_train_speakers`.
    """
    competition = speaker_groups.load_competition(recipe)
    split = Split(competition, comp_mod.folds(competition, recipe.folds))
    listed = runs.read_skipped(recipe) if skipped else []
    return split.without(listed) if len(listed) else split
