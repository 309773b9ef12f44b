"""The librosa reference renderer: one clip at a time, in NumPy, what :class:`ensemble.inputs.features.Renderer`
renders in batches with torch (``tests/test_features.py`` checks that both agree within 1e-4 on
real RAVDESS clips). Training, prediction and the report never use it; ``benchmarks/features.py``
times it beside the torch renderer.

Each channel's computation (see :mod:`ensemble.inputs.features` for what the channels are) is a function of
:data:`CHANNELS`, looked up by the channel's name (:mod:`ensemble.core.channels`):

- ``mel``: ``librosa.feature.melspectrogram`` + ``power_to_db`` (ref = clip peak).
- ``chroma``: ``librosa.feature.chroma_stft`` with ``tuning=0`` (12 pitch classes).
- ``stft``: ``amplitude_to_db`` of the STFT magnitude (ref = clip peak).
- ``mfcc``: ``librosa.feature.mfcc`` of the log-Mel, min-max scaled per clip.
"""

from __future__ import annotations

import librosa
import numpy as np
import torch

from ..core.channels import CHANNELS as FACTS
from ..core.recipe import FeatureConfig
from .features import resize


class _Spectra:
    """One clip's STFT magnitude and power ``(n_fft // 2 + 1, frames)``, and its log-Mel in dB,
    computed on first use and shared by the ``mel`` and ``mfcc`` channels."""

    def __init__(self, y: np.ndarray, config: FeatureConfig):
        self.config = config
        self.magnitude = np.abs(librosa.stft(y, n_fft=config.n_fft, hop_length=config.hop_length, center=True))
        self.power = self.magnitude**2
        self._mel_db = None

    def mel_db(self) -> np.ndarray:
        """``power_to_db`` of the mel power ``(n_mels, frames)``, ``ref=np.max``, floored ``top_db`` dB under the peak."""
        if self._mel_db is None:
            c = self.config
            mel = librosa.feature.melspectrogram(S=self.power, sr=c.sample_rate, n_mels=c.n_mels, fmin=c.fmin, fmax=c.fmax or c.sample_rate / 2)
            self._mel_db = librosa.power_to_db(mel, ref=np.max, top_db=c.top_db)
        return self._mel_db


def _mel(s: _Spectra) -> np.ndarray:
    return (s.mel_db() + s.config.top_db) / s.config.top_db


def _stft(s: _Spectra) -> np.ndarray:
    c = s.config
    return (librosa.amplitude_to_db(s.magnitude, ref=np.max, top_db=c.top_db) + c.top_db) / c.top_db


def _chroma(s: _Spectra) -> np.ndarray:
    return librosa.feature.chroma_stft(S=s.power, sr=s.config.sample_rate, tuning=0.0, n_fft=s.config.n_fft)


def _mfcc(s: _Spectra) -> np.ndarray:
    mfcc = librosa.feature.mfcc(S=s.mel_db(), n_mfcc=s.config.n_mfcc)
    span = mfcc.max() - mfcc.min()
    return (mfcc - mfcc.min()) / (span if span > 0 else 1.0)


CHANNELS = {"mel": _mel, "chroma": _chroma, "stft": _stft, "mfcc": _mfcc}
"""Channel name -> its rows ``(rows, frames)`` in [0, 1] before resizing, from a clip's :class:`_Spectra`."""


def render(y: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """Render a waveform into the image described by ``config``, with librosa.

    Every channel is resized to ``config.height`` rows by :func:`ensemble.inputs.features.resize` (the
    torch renderer's resize, so both differ only in the spectral computations), nearest or bilinear
    as :data:`ensemble.core.channels.CHANNELS` says, then clipped to [0, 1].

    Args:
        y: float32 waveform of shape ``(samples,)`` at ``config.sample_rate`` Hz.
        config: the feature settings; its channels must be names of :data:`CHANNELS` (the recipe checks).

    Returns:
        float32 array ``(len(config.channels), config.height, 1 + samples // hop_length)`` in [0, 1],
        channels in the order of ``config.channels``.
    """
    spectra = _Spectra(y, config)
    images = []
    for name in config.channels:
        rows = torch.from_numpy(np.ascontiguousarray(CHANNELS[name](spectra), dtype=np.float32))
        images.append(resize(rows[None], config.height, FACTS[name].nearest)[0].numpy())
    return np.clip(np.stack(images), 0.0, 1.0).astype(np.float32)
