"""Encoder sets by name (torch-free, for recipe checks and the members that run them,
:mod:`ensemble.members.encoders`): which weights a ``[[functionals]].set`` names (a folder of
:func:`ensemble.core.weights.weights_dir`, a path, or a model hub id ``org/name``), which of Whisper's two
input windows (``<encoder>`` or ``<encoder>:pad30``), and which hidden states a member's
``[[functionals]].layers`` picks.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import EnsError
from .weights import weights_dir as find_weights

WINDOWS = ("clip", "pad30")
"""Whisper's input windows (:mod:`ensemble.members.encoders`); ``<encoder>:pad30`` names the second."""

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_LAYERS = re.compile(r"all|\d+(-\d+)?(,\d+(-\d+)?)*")


class EncoderError(EnsError, ValueError):
    """An encoder set cannot be found, loaded or used as asked; the message names the set and the fix."""


def split_window(set_name: str) -> tuple[str, str]:
    """``"whisper_base:pad30"`` -> ``("whisper_base", "pad30")``; no suffix: window ``"clip"``.

    Raises:
        EncoderError: an unknown window suffix.
    """
    name, _, window = set_name.partition(":")
    window = window or "clip"
    if window not in WINDOWS:
        raise EncoderError(f"set={set_name!r}: the window {window!r} is not one of {WINDOWS}; write '{name}' or '{name}:pad30'.")
    return name, window


def source(set_name: str, weights_dir: str | os.PathLike | None = None) -> str:
    """Where ``set_name``'s encoder is loaded from: ``<weights_dir>/<name>`` or a path when it holds
    ``config.json``, else a hub id ``org/name`` as given.

    Raises:
        EncoderError: none of these (the message lists what was looked for).
    """
    name, _ = split_window(set_name)
    root = find_weights(weights_dir)
    for folder in ([root / name] if root is not None else []) + [Path(name).expanduser()]:
        if (folder / "config.json").is_file():
            return str(folder)
    if _HUB_ID.fullmatch(name) and not Path(name).exists():
        return name
    where = f"{root}/{name}" if root is not None else f"<weights_dir>/{name} (no weights folder is set)"
    raise EncoderError(
        f"set={set_name!r} is not a functionals set and names no transformers encoder: no config.json in {where} or in {name}, "
        "and it is not a model hub id 'org/name'; pass a folder of [paths].weights_dir (e.g. 'whisper_base'), a path, or a hub id."
    )


def check(set_name: str, weights_dir: str | os.PathLike | None = None) -> str | None:
    """Why ``set_name`` cannot name an encoder set (torch-free, for recipe checks), or None when it can."""
    try:
        source(set_name, weights_dir)
    except EncoderError as err:
        return str(err)
    return None


def check_layers(layers: str) -> bool:
    """Whether ``layers`` is a layer choice :func:`layer_indices` can read: ``all``, ``k``, ``a-b`` or a comma list of them."""
    return isinstance(layers, str) and bool(_LAYERS.fullmatch(layers.replace(" ", "")))


def layer_indices(layers: str, states: int) -> list[int]:
    """The hidden states ``layers`` picks out of ``states`` (0 = the embeddings, ``states - 1`` = the last layer).

    Args:
        layers: ``"all"``, one index ``"3"``, a range ``"2-4"`` (both ends included) or a comma list ``"1,3-5"``.
        states: the encoder's number of hidden states (layers + 1).

    Raises:
        EncoderError: unreadable, or an index outside ``0..states - 1``.
    """
    if not check_layers(layers):
        raise EncoderError(f"layers={layers!r} is not a layer choice; write 'all', one index '3', a range '2-4' or a list '1,3-5'.")
    text = layers.replace(" ", "")
    if text == "all":
        return list(range(states))
    picked: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        picked += range(int(first), int(last or first) + 1)
    if not picked or max(picked) >= states:
        raise EncoderError(f"layers={layers!r} asks for hidden state {max(picked, default=-1)} of an encoder with {states} (0..{states - 1}); pick in range.")
    return sorted(set(picked))
