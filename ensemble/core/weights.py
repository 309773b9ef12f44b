"""Where local pretrained weights live (torch-free): ``[paths].weights_dir``, ``$ENS_WEIGHTS_DIR`` or ``../shared/weights``.

Every loader of pretrained weights (timm backbones in :mod:`ensemble.members.models`, the AudioSet CNNs in
:mod:`ensemble.members.audioset`, the transformer encoders in :mod:`ensemble.members.encoders`) finds its folder here.
"""

from __future__ import annotations

import os
from pathlib import Path

WEIGHTS_ENV = "ENS_WEIGHTS_DIR"
"""The environment variable naming the weights folder when ``[paths].weights_dir`` is unset."""
DEFAULT_WEIGHTS_DIR = Path("../shared/weights")
"""The weights folder used when neither ``[paths].weights_dir`` nor :data:`WEIGHTS_ENV` is set, if it exists."""


def weights_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """The folder of local weights: ``explicit``, else ``$ENS_WEIGHTS_DIR``, else ``../shared/weights`` if it exists
    (``""`` counts as unset); None when there is none."""
    for candidate in (explicit, os.environ.get(WEIGHTS_ENV)):
        if candidate:
            return Path(candidate)
    return DEFAULT_WEIGHTS_DIR if DEFAULT_WEIGHTS_DIR.is_dir() else None
