"""Whether a competition's clips are speech, as an AudioSet tagger hears them.

YAMNet (:mod:`ensemble.members.audioset`, its 521-class AudioSet head kept) tags a sample of the training
clips; a clip is speech when its probability of AudioSet class 0, "Speech", is at least
:data:`CLIP_THRESHOLD`, and the clips are speech when at least :data:`SPEECH_SHARE` of the sample
is. ``ens init`` (:mod:`ensemble.scaffold`) turns speaker settings on only then, and
``ens train`` switches speaker normalisation off on clips that are not
(:mod:`ensemble.members.guards`, ``[speakers].require_speech``).

Why YAMNet: measured when this module was written (nice'd, on this project's shared 2-core CPU),
on one ESC-50 clip of each of its 50 classes (the 16 kHz copy in ``../shared/data/esc50``) and 32
RAVDESS clips spread over all 24 actors: YAMNet gave P(Speech) >= 0.91 on every RAVDESS clip and
< 0.5 on every ESC-50 clip (highest: laughing 0.39, crying baby 0.24, coughing 0.22); EfficientAT
mn04 also separated them, with a thinner margin (RAVDESS from 0.50, ESC-50 up to 0.42:
crying baby, helicopter), and needs the clips upsampled to 32 kHz.

The tags of a competition are cached in ``<competition>/.ens_cache/speech.json``, keyed by the
sampled files (path, size, modification time) and the weights file, so ``ens init`` and every
later ``ens train`` tag once.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import atomic, frontends
from ..inputs import audio

MODEL = "yamnet"
"""The tagger: YAMNet's AudioSet head (``<weights_dir>/yamnet_mobilenetv1_100``)."""
SPEECH_CLASS = 0
"""AudioSet class 0, "Speech" (``ensemble.members.audioset.SPEECH``)."""
SAMPLE = 16
"""Training clips tagged, spread over the labels (:func:`sample_rows`)."""
CLIP_THRESHOLD = 0.5
"""P(Speech) from which a clip counts as speech (the sigmoid's even odds)."""
SPEECH_SHARE = 0.5
"""Share of sampled clips that must be speech for the clips to be speech."""
UNSURE = (0.25, 0.75)
"""Shares between these (both included) are reported as unsure: ``ens init`` asks, or says so."""
MAX_SECONDS = 10.0
"""Longer clips are tagged on their middle 10 s (trimmed of silence first)."""
CACHE = "speech.json"


@dataclass
class SpeechTags:
    """The tagger's verdict on a sample of clips.

    Attributes:
        paths: the clips tagged.
        probabilities: P(Speech) of each, ``len(paths)`` floats in [0, 1].
    """

    paths: list[str]
    probabilities: list[float]

    @property
    def share(self) -> float:
        """The share of tagged clips with P(Speech) >= :data:`CLIP_THRESHOLD` (NaN when none was tagged)."""
        p = np.asarray(self.probabilities)
        return float((p >= CLIP_THRESHOLD).mean()) if len(p) else float("nan")

    @property
    def is_speech(self) -> bool:
        """Whether at least :data:`SPEECH_SHARE` of the tagged clips are speech."""
        return bool(self.share >= SPEECH_SHARE)

    @property
    def unsure(self) -> bool:
        """Whether the share lies in :data:`UNSURE`."""
        return bool(UNSURE[0] <= self.share <= UNSURE[1])

    def describe(self) -> str:
        """One line: how many clips the tagger heard as speech, and the model."""
        k = int(round(self.share * len(self.paths)))
        return (
            f"YAMNet (AudioSet) tags {k} of {len(self.paths)} sampled training clips as Speech "
            f"(P(Speech) >= {CLIP_THRESHOLD}; median {float(np.median(self.probabilities)):.2f})"
        )


def sample_rows(labels: pd.Series, sample: int = SAMPLE) -> np.ndarray:
    """Up to ``sample`` row positions of a training table, spread over its labels ``(n,)``: the first
    row of each label (labels in sorted order), then the second of each, and so on; in table order."""
    order = {}
    for row, label in enumerate(labels.astype(str)):
        order.setdefault(label, []).append(row)
    picked, depth = [], 0
    while len(picked) < min(sample, len(labels)):
        for label in sorted(order):
            if depth < len(order[label]) and len(picked) < sample:
                picked.append(order[label][depth])
        depth += 1
    return np.array(sorted(picked), dtype=np.int64)


def tag(paths: list[str | os.PathLike], weights_dir: str | os.PathLike | None = None) -> list[float]:
    """P(Speech) of each clip: read (:func:`ensemble.inputs.audio.load_trimmed` at YAMNet's 16 kHz, 40 dB
    trim), its middle :data:`MAX_SECONDS` kept, YAMNet's own log-mel (:class:`ensemble.inputs.features.FrontendRenderer`)
    through the pretrained network with its AudioSet head (patches averaged, :class:`ensemble.members.audioset.YAMNet`),
    then the sigmoid of class 0.

    Raises:
        AudioError: a clip cannot be read. BackboneError: the YAMNet weights are absent.
    """
    import torch

    from ..core.recipe import FeatureConfig
    from ..inputs.features import FrontendRenderer
    from . import audioset

    settings = frontends.feature_settings(frontends.for_model(MODEL))
    model = audioset.embedder(MODEL, weights_dir)
    render = FrontendRenderer(FeatureConfig(**settings))
    mean = float(model.pretrained_cfg["mean"][0])
    rate = settings["sample_rate"]
    out = []
    with torch.inference_mode():
        for path in paths:
            y, _ = audio.load_trimmed(path, rate, 40.0)
            if len(y) > MAX_SECONDS * rate:
                y = audio.fix_length(y, int(MAX_SECONDS * rate))
            x = render(torch.from_numpy(np.ascontiguousarray(y))[None]) - mean  # the frontend's own values
            out.append(float(torch.sigmoid(model(x))[0, SPEECH_CLASS]))
    return out


def _key(paths: list[Path], weights_dir) -> str:
    from ..core.weights import weights_dir as find

    root = find(weights_dir)
    weights = None if root is None else Path(root) / "yamnet_mobilenetv1_100" / "model.safetensors"
    known = weights is not None and weights.is_file()
    stamp = [str(weights.resolve()) if known else None, weights.stat().st_size if known else None]
    files = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]
    return hashlib.sha1(json.dumps([MODEL, stamp, files]).encode()).hexdigest()


def of_competition(competition, weights_dir: str | os.PathLike | None = None) -> SpeechTags | None:
    """The tags of a sample of ``competition``'s training clips (:func:`sample_rows` over its label
    column, :func:`tag`), read from ``<competition>/.ens_cache/speech.json`` when that holds the same
    sample, else tagged and written there (atomically). Clips that cannot be read are left out.

    Returns:
        the tags, or None when they cannot be made: the YAMNet weights are absent, or no sampled clip reads.
    """
    from ..core.errors import BackboneError

    rows = sample_rows(competition.train[competition.config.label_col])
    paths = [competition.audio_paths(competition.train)[i] for i in rows]
    paths = [p for p in paths if p.is_file()]
    if not paths:
        return None
    cache = competition.root / ".ens_cache" / CACHE
    key = _key(paths, weights_dir)
    try:
        stored = json.loads(cache.read_text())
        if stored.get("key") == key:
            return SpeechTags(stored["paths"], stored["probabilities"])
    except (OSError, ValueError, KeyError, AttributeError):
        pass  # no cache, or an unreadable one: tag again
    kept, probabilities = [], []
    try:
        for path in paths:
            try:
                probabilities += tag([path], weights_dir)
                kept.append(str(path))
            except audio.AudioError:
                continue  # training names it; the sample does without it
    except BackboneError:
        return None
    if not kept:
        return None
    atomic.write_json(cache, {"key": key, "model": MODEL, "paths": kept, "probabilities": probabilities})
    return SpeechTags(kept, probabilities)
