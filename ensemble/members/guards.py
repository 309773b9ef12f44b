"""Guards that make a recipe copied onto another competition safe to train.

- Speaker normalisation (:func:`speaker_norm`): ``[speakers].norm = "speaker"`` standardises each
  clip by its group's (speaker's) statistics. ``ens train`` switches it off, with a
  :class:`SpeakerNormWarning` saying why, when the training groups are too small to estimate them
  (median below :data:`MIN_CLIPS_PER_SPEAKER` clips: a group of one clip becomes all zeros, and
  every functionals member then predicts one class for every clip) or when the clips are not
  speech (:mod:`ensemble.members.speech`; ``[speakers].require_speech = false`` skips that check).
  The runs then train, and record in their identity, ``norm = "clip"``.
- Constant members (:func:`constant_members`): after training, a member whose out-of-fold
  predictions are one class for every clip (or the same probabilities for every clip) is named
  in a :class:`ConstantMemberWarning`, whatever the cause.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..core.entry import Entry
from ..core.recipe import Recipe
from ..store import competition as comp_mod
from ..store import runs
from . import speech

MIN_CLIPS_PER_SPEAKER = 8
"""Fewest clips per group (median over the training groups) for per-speaker statistics. A
speaker's mean and standard deviation use up 2 of its n values per feature: a quarter of them at
n = 8, all of them at n = 2 (each feature becomes +-1), and a group of one clip becomes all zeros;
the relative standard error of a standard deviation from n normal values, 1 / sqrt(2 (n - 1)), is
27 % at n = 8 and 71 % at n = 2. It is also the number of clips per speaker ens assumes when it
infers training speakers (:data:`ensemble.speaker.speaker_groups.CLIPS_PER_SPEAKER`). RAVDESS has 60
clips per actor."""


class SpeakerNormWarning(UserWarning):
    """Speaker normalisation was switched off (or could not be checked) for the reason given."""


class ConstantMemberWarning(UserWarning):
    """A trained member predicts one class (or the same probabilities) for every clip."""


@dataclass
class Decision:
    """What :func:`speaker_norm` decided.

    Attributes:
        recipe: the recipe to train with (``[speakers].norm = "clip"`` when switched off).
        reason: why speaker normalisation was switched off, or None when the recipe is unchanged.
        note: a caveat when the recipe is unchanged but a check could not be made, else None.
    """

    recipe: Recipe
    reason: str | None = None
    note: str | None = None


def group_problem(competition: comp_mod.Competition) -> str | None:
    """Why the training groups (``[competition].group_col``, given or inferred) are too small for
    per-speaker statistics (median clips per group below :data:`MIN_CLIPS_PER_SPEAKER`), or None
    (also when there is no group column: nothing to judge)."""
    if not competition.has_groups:
        return None
    column = competition.config.group_col
    sizes = competition.train[column].astype(str).value_counts()
    median = float(sizes.median())
    if median >= MIN_CLIPS_PER_SPEAKER:
        return None
    ones = int((sizes == 1).sum())
    return (
        f"the group column {column!r} of {competition.root / comp_mod.TRAIN} has a median of {median:g} clip(s) per group "
        f"({len(sizes)} groups, {ones} of a single clip), and per-speaker statistics need at least {MIN_CLIPS_PER_SPEAKER} clips per speaker "
        "(a speaker's mean and standard deviation use up 2 of its values per feature; a group of one clip becomes all zeros, "
        "a member that predicts one class for every clip). Name a speaker column with more clips each in [competition].group_col, "
        "or set [speakers].norm = 'clip' to keep this recipe quiet"
    )


def speaker_norm(recipe: Recipe, competition: comp_mod.Competition) -> Decision:
    """The recipe ``ens train`` trains with: unchanged unless ``[speakers].norm = "speaker"`` and
    the training groups of ``competition`` (with its training speakers resolved,
    :func:`ensemble.speaker.speaker_groups.with_train_speakers`) are too small (:func:`group_problem`), or
    ``[speakers].require_speech`` and the clips are not speech (:func:`ensemble.members.speech.of_competition`);
    then with ``norm = "clip"`` and the reason. When the clips cannot be tagged (no YAMNet weights),
    the recipe is kept with a note saying so."""
    if recipe.speakers.norm != "speaker":
        return Decision(recipe)
    reason, note = group_problem(competition), None
    if reason is None and recipe.speakers.require_speech:
        tags = speech.of_competition(competition, recipe.paths.weights_dir)
        if tags is None:
            note = (
                "cannot tell whether the clips are speech (the YAMNet weights of [paths].weights_dir are absent, or no sampled clip reads): "
                "speaker normalisation is applied as the recipe says"
            )
        elif not tags.is_speech:
            reason = (
                f"{tags.describe()}: the clips are not speech, so speakers' statistics have no meaning here (and inferred test "
                "'speakers' would be clusters of sounds). Set [speakers].require_speech = false to normalise per group anyway, "
                "or [speakers].norm = 'clip'"
            )
    if reason is None:
        return Decision(recipe, note=note)
    off = dataclasses.replace(recipe, speakers=dataclasses.replace(recipe.speakers, norm="clip"))
    return Decision(off, reason=f"speaker normalisation switched off: {reason}.")


def constant_members(results) -> list[str]:
    """One message per member whose out-of-fold predictions are constant, from the runs of
    ``results`` (:class:`ensemble.train.RunResult` list; each run's ``oof.csv``): the same
    probabilities for every clip (largest spread of a class column under 1e-6), or, for more than
    one OOF clip, the same top class for every clip. A member is judged on all of its runs in
    ``results`` together; a run without ``oof.csv`` is passed over."""
    tables: dict[str, list[pd.DataFrame]] = {}
    for result in results:
        path = result.run / runs.OOF
        if path.is_file():
            tables.setdefault(Entry.parse(result.entry).member, []).append(pd.read_csv(path))
    messages = []
    for member, frames in tables.items():
        frame = pd.concat(frames, ignore_index=True)
        classes = [c for c in frame.columns if c not in ("id", "fold")]
        proba = frame[classes].to_numpy(dtype=np.float64)
        if len(proba) < 2 or len(classes) < 2:
            continue
        if np.ptp(proba, axis=0).max() < 1e-6:
            what = "gives every clip the same probabilities"
        elif len(set(proba.argmax(axis=1))) == 1:
            what = f"predicts {classes[int(proba[0].argmax())]!r} for every clip"
        else:
            continue
        messages.append(
            f"member {member} {what} out of fold ({len(proba)} clips): it learnt nothing that separates the classes. "
            "Inputs that carry no signal (e.g. features standardised per group of one clip), too few epochs, or too strong "
            "regularisation do this; its blend weight should be 0"
        )
    return messages
