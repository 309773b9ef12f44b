"""The feature channels an image can hold, by name: what each one is and how figures show it.

The one list of channels: :data:`CHANNELS` (name -> :class:`Channel`), in the order of
:data:`NAMES`, which ``[features].channels`` is checked against (``ensemble.core.recipe.CHANNELS``).
How each channel is computed is looked up by the same name: the batched torch computation in
``ensemble.inputs.features.Renderer.CHANNELS`` and the librosa reference in ``ensemble.inputs.reference.CHANNELS``
(``tests/test_channels.py`` checks that both cover every name here).

This module imports neither torch nor librosa, so the recipe can import it cheaply.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .frontends import IMAGE

PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
"""Chroma's 12 rows, lowest first (``librosa.filters.chroma`` with its default ``base_c=True``)."""


class Settings(Protocol):
    """The ``[features]`` values a channel reads (a :class:`ensemble.core.recipe.FeatureConfig` has them)."""

    frontend: str
    top_db: float
    n_mels: int
    n_mfcc: int
    sample_rate: int


@dataclass(frozen=True)
class Channel:
    """One feature channel.

    Attributes:
        name: the name in ``[features].channels``.
        title: what the channel is, for a figure's panel.
        axis: the frequency-axis label of a figure, with its unit.
        extent: ``config -> (low, high)``, the frequency axis spanned by the image's ``height`` rows
            in the unit of ``axis``.
        ticks: labels of the rows' centres when they are classes (chroma's pitch classes), else empty.
        log: a log channel: a pixel value ``v`` in [0, 1] is ``v * top_db - top_db`` dB under the
            clip's peak.
        value: what a pixel value measures, for a colour bar (dB for a log channel).
        nearest: resized to ``height`` rows by repetition (nearest), because the rows are classes,
            not a continuous axis; otherwise bilinearly with anti-aliasing.
    """

    name: str
    title: str
    axis: str
    extent: Callable[[Settings], tuple[float, float]]
    value: str
    log: bool = False
    nearest: bool = False
    ticks: tuple[str, ...] = ()

    def values(self, rows: np.ndarray, config: Settings) -> tuple[np.ndarray, tuple[float, float]]:
        """Pixel values ``rows`` (any shape) in the channel's own unit (:meth:`unit`), and the range
        to colour: dB under the clip's peak in ``(-top_db, 0)`` for a log channel of ens's images,
        else the values as they are in ``(0, 1)``; a pretrained frontend's log-mel
        (``config.frontend`` not ``image``, not in [0, 1]) as it is, over its own extremes."""
        if config.frontend != IMAGE:
            return rows, (float(np.min(rows)), float(np.max(rows)))
        if self.log:
            return rows * config.top_db - config.top_db, (-config.top_db, 0.0)
        return rows, (0.0, 1.0)

    def unit(self, config: Settings) -> str:
        """What :meth:`values` measures, for a colour bar: :attr:`value`, or for a pretrained
        frontend's log-mel its own scale (:class:`ensemble.inputs.features.FrontendRenderer`: log mel
        energy above the frontend's silence floor, 0 = silence)."""
        return f"{config.frontend} log-mel above silence" if config.frontend != IMAGE else self.value


CHANNELS: dict[str, Channel] = {
    "mel": Channel("mel", "log-Mel", "mel band", lambda c: (0.0, float(c.n_mels)), "dB re clip peak", log=True),
    "chroma": Channel("chroma", "chroma", "pitch class", lambda c: (-0.5, 11.5), "energy / frame max", nearest=True, ticks=PITCH_CLASSES),
    "stft": Channel("stft", "log-STFT magnitude", "frequency (kHz)", lambda c: (0.0, c.sample_rate / 2000), "dB re clip peak", log=True),
    "mfcc": Channel("mfcc", "MFCC", "MFCC coefficient", lambda c: (0.0, float(c.n_mfcc)), "scaled per clip"),
}
"""Every channel by name: log-Mel power, chromagram, log-STFT magnitude, MFCC (see :mod:`ensemble.inputs.features`)."""

NAMES = tuple(CHANNELS)
"""The channel names, the values ``[features].channels`` may list."""
