"""Audio loading: read any WAV/FLAC, make mono, resample, trim silence, fix the duration.

Files are decoded by libsndfile (through ``soundfile``), which recognises a format by its content,
not its name: AIFF or FLAC behind a ``.wav`` name loads like the correctly named file. Every file
that cannot be used is refused with an :class:`AudioError` naming the path, the problem and what
to do about it; the refusals and what is handled are tested case by case in
``tests/test_bad_audio.py``.
"""

from __future__ import annotations

import os

import librosa
import numpy as np
import soundfile as sf

from ..core.errors import EnsError, Message
from . import decoder_noise


class AudioError(EnsError, ValueError):
    """An audio file cannot be read or holds no usable signal; the message names the file."""


def error_list(failed: dict[str | os.PathLike, str], fix: str | Message, shown: int = 20) -> Message:
    """The message of an :class:`AudioError` over many files: a count, ``fix`` (words, or a
    :class:`~ensemble.core.errors.Message` naming a parameter), then one line per file (the first
    ``shown``) with its problem."""
    lines = [message if message.startswith(str(path)) else f"{path}: {message}" for path, message in list(failed.items())[:shown]]
    more = f"\n... and {len(failed) - shown} more" if len(failed) > shown else ""
    return Message(f"{len(failed)} audio file(s) cannot be used (", fix, "):\n" + "\n".join(lines) + more)


#: sample rates (Hz) accepted; a rate outside this is a corrupt header, not a recording.
MIN_RATE, MAX_RATE = 1_000, 768_000

# frames decoded per read: memory follows the audio actually decoded, not the length a
# (possibly corrupt) header claims.
_BLOCK_FRAMES = 1 << 18

# container signatures, to name the format whose header libsndfile could not parse.
_SIGNATURES = {b"RIFF": "WAV", b"RIFX": "WAV", b"RF64": "WAV", b"FORM": "AIFF", b"fLaC": "FLAC", b"OggS": "Ogg"}


def _why_undecodable(path: str | os.PathLike, size: int, err: sf.LibsndfileError) -> str:
    """What is wrong with a file libsndfile refused to open, from its first bytes, and the fix."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as oserr:
        return f"cannot be opened ({oserr.strerror}); check that it is a readable file"
    detail = f"{size} bytes; libsndfile: {err.error_string}"
    if head.startswith(b"version https://git-lfs"):
        return f"is a Git LFS pointer, not the audio ({detail}); run `git lfs pull` in the data repository"
    container = _SIGNATURES.get(head[:4])
    if container:
        return f"has a damaged or truncated {container} header ({detail}); re-export or re-download the file"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\t\r\n" for c in text):
        return f"is a text file, not audio (it begins {text[:40]!r}; {detail}); point the table at the audio file"
    return f"is not in an audio format libsndfile reads ({detail}); convert it to WAV or FLAC"


def read(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read an audio file as mono float32 (:func:`_decode`). An MPEG file (MP3, or MPEG data in a
    ``.wav``) is decoded with C stderr caught: the notes libmpg123 prints about a damaged stream
    become one :class:`ensemble.inputs.decoder_noise.DecoderWarning` per file instead of lines in the log
    (:func:`ensemble.inputs.decoder_noise.quiet`).

    Returns and raises as :func:`_decode`.
    """
    with decoder_noise.quiet(path) as heard:
        y, rate = _decode(path)
        heard.decoded = len(y) / rate
    return y, rate


def _decode(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read an audio file as mono float32.

    Integer PCM (8/16/24/32-bit) is scaled by libsndfile to [-1, 1); channels are averaged. Float
    files may hold samples beyond ±1 (float headroom): such a clip is divided by its peak, which
    keeps its waveform (clipping would distort it) and its rendered features (which are relative
    to each clip's peak), so the result always lies in [-1, 1]. A WAV whose data chunk is cut short
    yields the frames present.

    Returns:
        ``(samples, sample_rate)``: samples of shape ``(n,)``, n >= 1, finite, in [-1, 1]; rate in Hz.

    Raises:
        AudioError: the path is missing or a folder; the file is empty (0 bytes), not audio
            (text, a Git LFS pointer, unknown bytes), has a damaged header, is cut short in a
            compressed stream, holds 0 frames, has a sample rate outside
            [``MIN_RATE``, ``MAX_RATE``] Hz, or has NaN/Inf samples (float64 samples beyond the
            float32 range count as Inf). The message names the path, the problem and the fix.
    """
    if not os.path.exists(path):
        raise AudioError(f"{path}: audio file does not exist; check the path column and [competition].audio_root.")
    if os.path.isdir(path):
        raise AudioError(f"{path}: is a folder, not an audio file; check the path column.")
    size = os.path.getsize(path)
    if size == 0:
        raise AudioError(f"{path}: the file is empty, 0 bytes (an interrupted copy or download?); re-copy it or drop it from the table.")
    try:
        f = sf.SoundFile(path)
    except sf.LibsndfileError as err:
        raise AudioError(f"{path}: {_why_undecodable(path, size, err)}.") from err
    with f:
        rate, channels, claimed = f.samplerate, f.channels, f.frames
        if not MIN_RATE <= rate <= MAX_RATE:
            raise AudioError(f"{path}: sample rate {rate} Hz is outside {MIN_RATE}-{MAX_RATE} Hz, so the header is corrupt; re-export the file.")
        blocks, decoded, bad = [], 0, 0
        while True:
            try:
                block = f.read(_BLOCK_FRAMES, dtype="float32", always_2d=True)
            except sf.LibsndfileError as err:
                raise AudioError(
                    f"{path}: the audio stream is cut short or corrupt (libsndfile: {err.error_string}; "
                    f"the header lists {claimed} frames); re-export or re-download the file."
                ) from err
            if not len(block):
                break
            decoded += len(block)
            bad += int(block.size - np.count_nonzero(np.isfinite(block)))
            blocks.append(block[:, 0] if channels == 1 else block.mean(axis=1, dtype=np.float64).astype(np.float32))
    if decoded == 0:
        raise AudioError(f"{path}: the file holds no audio (a header with 0 frames); re-export it or drop it from the table.")
    if bad:
        raise AudioError(f"{path}: {bad} of {decoded * channels} samples are NaN or Inf; repair or re-export the file, or drop it from the table.")
    mono = np.concatenate(blocks)
    peak = max(float(mono.max()), -float(mono.min()))
    if peak > 1.0:
        mono /= np.float32(peak)
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
    (``librosa.effects.trim``; 0 keeps everything; an all-zero clip is kept whole).

    Returns:
        ``(y, start)``: float32 samples ``(n,)`` at ``sample_rate`` Hz, and the index in the
        resampled file where ``y`` begins (what trimming dropped in front). Resampling can
        overshoot [-1, 1] slightly next to clipped (flat-topped) stretches; values are kept.

    Raises:
        AudioError: see :func:`read`.
    """
    y, rate = read(path)
    if rate != sample_rate:
        y = librosa.resample(y, orig_sr=rate, target_sr=sample_rate)
    start = 0
    if trim_db > 0 and y.any():
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
