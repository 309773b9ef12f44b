"""Audio loading: read any WAV/FLAC, make mono, resample, trim silence, fix the duration."""

from __future__ import annotations

import os

import librosa
import numpy as np
import soundfile as sf


class AudioError(ValueError):
    """An audio file cannot be read or holds no usable signal; the message names the file."""


def read(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read an audio file as mono float32.

    Returns:
        ``(samples, sample_rate)``: samples of shape ``(n,)`` in [-1, 1] (channels averaged), rate in Hz.

    Raises:
        AudioError: the file is missing, not audio libsndfile understands, empty, or not finite.
    """
    if not os.path.isfile(path):
        raise AudioError(f"{path}: audio file does not exist; check the path column and [competition].audio_root.")
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as err:
        raise AudioError(f"{path}: cannot read audio ({err}); convert it to WAV or FLAC.") from err
    if data.shape[0] == 0:
        raise AudioError(f"{path}: the file holds no samples.")
    mono = data.mean(axis=1)
    if not np.isfinite(mono).all():
        raise AudioError(f"{path}: samples contain NaN or Inf.")
    return mono, int(rate)


def fix_length(y: np.ndarray, n: int) -> np.ndarray:
    """Centre-crop or centre-zero-pad ``y`` (shape ``(m,)``) to exactly ``n`` samples."""
    m = len(y)
    if m >= n:
        start = (m - n) // 2
        return y[start : start + n]
    left = (n - m) // 2
    return np.pad(y, (left, n - m - left))


def load_trimmed(path: str | os.PathLike, sample_rate: int, trim_db: float = 0.0) -> tuple[np.ndarray, int]:
    """Read ``path`` (:func:`read`), resample to ``sample_rate`` Hz (soxr through ``librosa.resample``)
    and trim leading/trailing audio quieter than ``trim_db`` dB under the peak
    (``librosa.effects.trim``; 0 keeps everything).

    Returns:
        ``(y, start)``: float32 samples ``(n,)`` at ``sample_rate`` Hz, and the index in the
        resampled file where ``y`` begins (what trimming dropped in front).

    Raises:
        AudioError: see :func:`read`.
    """
    y, rate = read(path)
    if rate != sample_rate:
        y = librosa.resample(y, orig_sr=rate, target_sr=sample_rate)
    start = 0
    if trim_db > 0 and np.abs(y).max() > 0:
        y, (start, _) = librosa.effects.trim(y, top_db=trim_db)
    return y.astype(np.float32, copy=False), int(start)


def load(path: str | os.PathLike, sample_rate: int, duration: float, trim_db: float = 0.0) -> np.ndarray:
    """Load a clip ready for rendering: :func:`load_trimmed`, then centre-crop or centre-pad to
    ``duration`` seconds (:func:`fix_length`).

    Returns:
        float32 array of shape ``(round(duration * sample_rate),)``.

    Raises:
        AudioError: see :func:`read`.
    """
    y, _ = load_trimmed(path, sample_rate, trim_db)
    return fix_length(y, int(round(duration * sample_rate))).astype(np.float32, copy=False)
