"""Acoustic functionals: one fixed-length vector of statistics per clip.

Descriptors computed frame by frame (pitch, energy, spectral shape, voice quality) are summarised
over the clip by functionals (mean, spread, percentiles, slope, ...), giving one row per clip for
classical models such as scikit-learn's. Three sets, by name (:data:`SETS`):

- ``ComParE_2016``: 6373 functionals of 65 descriptors and their deltas, the feature set of the
  INTERSPEECH Computational Paralinguistics Challenges since 2013 (Schuller et al. 2016, "The
  INTERSPEECH 2016 Computational Paralinguistics Challenge: Deception, Sincerity & Native
  Language", Interspeech), as computed by openSMILE.
- ``eGeMAPSv02``: the 88 functionals of the extended Geneva Minimalistic Acoustic Parameter Set
  (Eyben et al. 2016, "The Geneva Minimalistic Acoustic Parameter Set (GeMAPS) for Voice
  Research and Affective Computing", IEEE Trans. Affective Computing), as computed by openSMILE.
- ``ens_basic``: 319 functionals of librosa descriptors (McFee et al. 2015, "librosa: Audio and
  music signal analysis in Python", SciPy), defined in :func:`basic_names` and :func:`extract`;
  permissive (librosa: ISC; NumPy, SciPy: BSD) and without openSMILE.
- ``yamnet_embedding`` (2048) and ``mn04_embedding`` (768): the frozen AudioSet-pretrained
  embedding of the whole clip, the mean then the max over time of the frequency-averaged last
  feature map of YAMNet (1024 channels; Apache-2.0) or EfficientAT mn04 (384; MIT), each on its own
  frontend (:func:`ensemble.members.audioset.embed`; weights from :func:`ensemble.core.weights.weights_dir`'s
  folder, i.e. ``$ENS_WEIGHTS_DIR`` or ``../shared/weights``). torch is imported on first use only.

- a speech-pretrained transformer encoder (Whisper, wav2vec2, HuBERT, WavLM, any transformers audio
  encoder) named by its weights folder, a path or a hub id (``"whisper_base"``): the mean and standard
  deviation over the clip's frames of every hidden state, frozen (:mod:`ensemble.members.encoders`; a member
  picks its states with ``[[functionals]].layers``). transformers and torch are imported on first use.

The two openSMILE sets need the ``opensmile`` package, an optional extra (``pip install
"ens[opensmile]"``) under the audEERING Research License: free for research and education, NOT
for commercial use. It is imported on first use; without it they raise :class:`FunctionalsError`.

:class:`FunctionalsCache` computes each clip's functionals once and keeps them on disk
(:class:`ensemble.inputs.vectors.VectorCache`); a cached set reads back in a fraction of a second. What
each set costs per clip on this project's CPU: docs/benchmarks.md ("Functionals on threads").
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import scipy.fft

from ..core import encoder_sets
from ..core.errors import EnsError
from ..core.threads import resolve, thread_map
from ..inputs.vectors import VectorCache
from . import encoders

OPENSMILE_LICENCE = "openSMILE is under the audEERING Research License: free for research and education, not for commercial use"


class FunctionalsError(EnsError, ValueError):
    """Functionals cannot be computed as asked: an unknown set, the opensmile extra not installed,
    or an unusable waveform or sample rate; the message names the value and the fix."""


@dataclass(frozen=True)
class FunctionalSet:
    """A set of functionals.

    Attributes:
        name: its name in :data:`SETS`.
        size: the number of functionals (columns).
        source: where its definition comes from.
        licence: the licence of the software that computes it.
    """

    name: str
    size: int
    source: str
    licence: str


# ---- ens_basic: the frame settings and descriptors ----

BASIC_VERSION = 1
"""Bumped whenever ``ens_basic``'s definition changes, so cached vectors of the old one are not reused."""

FRAME_S = 0.032
"""Analysis frame of the spectral and energy descriptors, seconds (512 samples at 16 kHz); Hann window for the STFT."""
PITCH_FRAME_S = 0.040
"""Frame of F0 and periodicity, seconds (640 samples at 16 kHz): more than two periods of :data:`F0_MIN`, as YIN needs."""
HOP_S = 0.010
"""Hop between frames, seconds (160 samples at 16 kHz); every descriptor has one value per hop, frames centred on ``k * hop``."""
F0_MIN, F0_MAX = 60.0, 500.0
"""Range of F0 searched, Hz (``librosa.yin`` and the periodicity lags)."""
F0_REFERENCE = 27.5
"""F0 is given in semitones above this frequency (Hz, the note A0), as in GeMAPS."""
VOICED_PERIODICITY = 0.7
"""A frame is voiced when its periodicity reaches this ..."""
VOICED_RANGE_DB = 40.0
"""... and its RMS energy is within this many dB of the clip's loudest frame (digital near-silence can be periodic) ..."""
SEMITONE = 2 ** (1 / 12)
"""... and its F0 is more than a semitone inside the search range: YIN puts a period outside the range
at its edge, e.g. the 60 Hz mains hum under some RAVDESS recordings."""
RMS_FLOOR = 1e-5
"""RMS energy is floored here (-100 dBFS), so silence has a finite level."""
CONTRAST_FMIN, CONTRAST_BANDS = 200.0, 4
"""Spectral contrast bands: [0, 200], [200, 400], [400, 800], [800, 1600] and [1600 Hz, Nyquist]."""
N_MFCC, N_MELS = 20, 40
"""MFCCs 0-19 from a 40-band mel spectrogram (0 Hz to Nyquist)."""
MIN_SAMPLE_RATE = 8000
"""The lowest sample rate ens_basic accepts, Hz (telephone speech): its bands are meant for speech's bandwidth (the top
contrast band starts at 1.6 kHz; the F0 range ends at 500 Hz)."""

DESCRIPTORS: tuple[str, ...] = (
    "rms_db",
    "zcr",
    "spectral_centroid",
    "spectral_bandwidth",
    "spectral_rolloff",
    "spectral_flatness",
    *(f"spectral_contrast{band}" for band in range(CONTRAST_BANDS + 1)),
    *(f"mfcc{k:02d}" for k in range(N_MFCC)),
    *(f"mfcc_delta{k:02d}" for k in range(N_MFCC)),
    "f0_semitones",
    "periodicity",
)
"""ens_basic's frame descriptors, in column order (units in :func:`extract`)."""

STATISTICS: tuple[str, ...] = ("mean", "std", "p10", "p50", "p90", "slope")
"""The functionals of each descriptor: mean, standard deviation (population), 10th / 50th / 90th
percentiles (linear interpolation), and the least-squares slope over time (descriptor units per second)."""


def basic_names() -> list[str]:
    """ens_basic's column names: ``<descriptor>_<statistic>`` for each of :data:`DESCRIPTORS` and
    :data:`STATISTICS` (descriptor-major), then ``voiced_fraction``: 53 x 6 + 1 = 319."""
    return [f"{d}_{s}" for d in DESCRIPTORS for s in STATISTICS] + ["voiced_fraction"]


SETS: dict[str, FunctionalSet] = {
    "ComParE_2016": FunctionalSet(
        "ComParE_2016", 6373, "Schuller et al. 2016, INTERSPEECH ComParE challenge; openSMILE's ComParE_2016 configuration", OPENSMILE_LICENCE
    ),
    "eGeMAPSv02": FunctionalSet(
        "eGeMAPSv02", 88, "Eyben et al. 2016, GeMAPS, IEEE Trans. Affective Computing; openSMILE's eGeMAPSv02 configuration", OPENSMILE_LICENCE
    ),
    "ens_basic": FunctionalSet(
        "ens_basic", len(basic_names()), "ens: librosa descriptors (ensemble.members.functionals)", "ISC (librosa) / BSD (NumPy, SciPy)"
    ),
    "yamnet_embedding": FunctionalSet(
        "yamnet_embedding",
        2 * 1024,
        "YAMNet (tensorflow/models research/audioset/yamnet) penultimate 1024-d features, mean and max over time (ensemble.members.audioset.embed)",
        "Apache-2.0 (YAMNet weights, google-coral/coralmicro)",
    ),
    "mn04_embedding": FunctionalSet(
        "mn04_embedding",
        2 * 384,
        "EfficientAT mn04_as (Schmid et al. 2023) last 384-d feature map, mean and max over time (ensemble.members.audioset.embed)",
        "MIT (EfficientAT, (c) 2022 Florian Schmid)",
    ),
}
"""The functional sets by name."""


def _set(set_name: str, weights_dir: str | os.PathLike | None = None) -> FunctionalSet:
    """The set named ``set_name``: one of :data:`SETS`, else a transformers encoder set (:mod:`ensemble.members.encoders`)."""
    if not isinstance(set_name, str):
        raise FunctionalsError(f"set_name={set_name!r} is not a set of functionals; choose one of {sorted(SETS)} or a transformers encoder.")
    if set_name in SETS:
        return SETS[set_name]
    if (why := encoder_sets.check(set_name, weights_dir)) is not None:
        raise FunctionalsError(f"set_name={set_name!r} is not a set of functionals; choose one of {sorted(SETS)} or a transformers encoder ({why})")
    return FunctionalSet(
        set_name,
        encoders.size(set_name, weights_dir),
        f"transformers encoder {encoder_sets.source(set_name, weights_dir)}: "
        "mean and std over the clip's tokens of every hidden state (ensemble.members.encoders)",
        "the encoder's own (its folder's README or model card)",
    )


def is_encoder(set_name: str) -> bool:
    """Whether ``set_name`` is a transformers encoder set rather than one of :data:`SETS`."""
    return set_name not in SETS


# ---- openSMILE ----

_SMILES: dict[str, object] = {}  # opensmile.Smile per set name, made on first use
_LOCK = threading.Lock()


def _opensmile():
    """The ``opensmile`` module, or :class:`FunctionalsError` naming the extra to install and its licence."""
    try:
        import opensmile
    except ImportError as err:
        raise FunctionalsError(
            'the ComParE_2016 and eGeMAPSv02 functionals need the opensmile package: pip install "ens[opensmile]" '
            f"(or pip install -c requirements.lock opensmile). {OPENSMILE_LICENCE}; the ens_basic set needs no openSMILE."
        ) from err
    return opensmile


def _smile(set_name: str):
    """The openSMILE extractor of ``set_name``'s functionals, made once per process."""
    opensmile = _opensmile()
    with _LOCK:
        if set_name not in _SMILES:
            _SMILES[set_name] = opensmile.Smile(feature_set=opensmile.FeatureSet[set_name], feature_level=opensmile.FeatureLevel.Functionals)
        return _SMILES[set_name]


def _opensmile_row(smile, y: np.ndarray, sample_rate: int, index: int, set_name: str) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Segment too short", category=UserWarning)
        row = smile.process_signal(y, sample_rate).to_numpy(dtype=np.float32)[0]
    if np.isnan(row).all():
        raise FunctionalsError(
            f"waveform {index}: {len(y)} samples ({len(y) / sample_rate * 1000:.0f} ms) are too short for openSMILE's {set_name} "
            "(it gives no frame); pass clips of 0.1 s or more, or drop it."
        )
    return np.where(np.isfinite(row), row, np.float32(0.0))


# ---- ens_basic ----


def _frames(sample_rate: int) -> tuple[int, int, int]:
    """(frame, pitch frame, hop) in samples at ``sample_rate``."""
    even = [2 * round(seconds * sample_rate / 2) for seconds in (FRAME_S, PITCH_FRAME_S)]  # even: centred frames then number 1 + samples // hop
    return even[0], even[1], round(HOP_S * sample_rate)


def _periodicity(y: np.ndarray, sample_rate: int) -> np.ndarray:
    """Each frame's periodicity: the highest normalised cross-correlation between the frame's start
    and the same span ``lag`` samples later, over the lags of :data:`F0_MAX` to :data:`F0_MIN`
    (the NCCF of RAPT, Talkin 1995): 1 for a periodic frame, about 0 for noise; ``(frames,)``,
    in [-1, 1], 0 for silence; computed in float32. Frames of :data:`PITCH_FRAME_S` every :data:`HOP_S`, centred (zero padding)."""
    _, n, hop = _frames(sample_rate)
    shortest, longest = int(sample_rate // F0_MAX), int(np.ceil(sample_rate / F0_MIN))
    span = n - longest  # the compared stretch: the frame's first `span` samples against `span` samples `lag` later
    frames = librosa.util.frame(np.pad(y, n // 2), frame_length=n, hop_length=hop, axis=0).astype(np.float32)
    frames = frames - frames.mean(axis=1, keepdims=True)
    size = scipy.fft.next_fast_len(n + span)
    cross = scipy.fft.irfft(np.conj(scipy.fft.rfft(frames[:, :span], size, axis=1)) * scipy.fft.rfft(frames, size, axis=1), size, axis=1)
    energy = np.cumsum(np.pad(frames * frames, ((0, 0), (1, 0))), axis=1)  # energy[:, j] = sum of the first j squares
    lags = np.arange(shortest, longest + 1)
    head = energy[:, span : span + 1]
    later = energy[:, lags + span] - energy[:, lags]
    denominator = np.sqrt(head * later)
    nccf = np.divide(cross[:, lags], denominator, out=np.zeros((len(frames), len(lags)), np.float32), where=denominator > 1e-12)
    return nccf.max(axis=1)


def _statistics(x: np.ndarray, times: np.ndarray) -> np.ndarray:
    """:data:`STATISTICS` of each row of ``x`` ``(d, t)`` over its ``t`` values at ``times`` (s):
    float64 ``(d, 6)``; all 0 when ``t`` is 0, slope 0 when ``t`` is 1."""
    if x.shape[1] == 0:
        return np.zeros((len(x), len(STATISTICS)))
    percentiles = np.percentile(x, [10, 50, 90], axis=1).T
    centred = times - times.mean()
    spread = float(centred @ centred)
    slope = x @ centred / spread if spread > 0 else np.zeros(len(x))
    return np.column_stack([x.mean(axis=1), x.std(axis=1), percentiles, slope])


def _basic(y: np.ndarray, sample_rate: int) -> np.ndarray:
    """ens_basic's functionals of one waveform: float32 ``(319,)``."""
    with warnings.catch_warnings():
        # a clip shorter than a frame is zero-padded by the centring, as extract documents
        warnings.filterwarnings("ignore", message=r".* is too large for input signal of length", category=UserWarning)
        return _basic_unchecked(y, sample_rate)


def _basic_unchecked(y: np.ndarray, sample_rate: int) -> np.ndarray:
    n_fft, pitch_frame, hop = _frames(sample_rate)
    magnitude = np.abs(librosa.stft(y, n_fft=n_fft, hop_length=hop, window="hann", center=True, pad_mode="constant"))
    rms = librosa.feature.rms(y=y, frame_length=n_fft, hop_length=hop, center=True, pad_mode="constant")[0].astype(np.float64)
    rms_db = 20 * np.log10(np.maximum(rms, RMS_FLOOR))
    spectral = dict(S=magnitude, sr=sample_rate, n_fft=n_fft, hop_length=hop)
    log_mel = librosa.power_to_db(librosa.feature.melspectrogram(S=magnitude**2, sr=sample_rate, n_fft=n_fft, n_mels=N_MELS), top_db=80.0)
    mfcc = librosa.feature.mfcc(S=log_mel, n_mfcc=N_MFCC)
    rows = np.vstack(
        [
            rms_db,
            librosa.feature.zero_crossing_rate(y, frame_length=n_fft, hop_length=hop, center=True)[0],
            librosa.feature.spectral_centroid(**spectral)[0],
            librosa.feature.spectral_bandwidth(**spectral)[0],
            librosa.feature.spectral_rolloff(**spectral, roll_percent=0.85)[0],
            librosa.feature.spectral_flatness(S=magnitude)[0],
            librosa.feature.spectral_contrast(**spectral, fmin=CONTRAST_FMIN, n_bands=CONTRAST_BANDS),
            mfcc,
            librosa.feature.delta(mfcc, width=9, mode="nearest"),
        ]
    ).astype(np.float64)
    times = np.arange(rows.shape[1]) * (hop / sample_rate)
    f0 = librosa.yin(y, fmin=F0_MIN, fmax=F0_MAX, sr=sample_rate, frame_length=pitch_frame, hop_length=hop, center=True, pad_mode="constant")
    periodicity = _periodicity(y, sample_rate)
    inside = (f0 > F0_MIN * SEMITONE) & (f0 < F0_MAX / SEMITONE)  # at the edge, the period is likely outside the range (mains hum at 60 Hz)
    voiced = inside & (periodicity >= VOICED_PERIODICITY) & (rms_db >= rms_db.max() - VOICED_RANGE_DB) & (rms > RMS_FLOOR)
    semitones = 12 * np.log2(f0[voiced] / F0_REFERENCE)
    out = np.concatenate(
        [
            _statistics(rows, times).ravel(),
            _statistics(semitones[None, :], times[voiced]).ravel(),
            _statistics(periodicity[None, :], times).ravel(),
            [voiced.mean()],
        ]
    )
    return out.astype(np.float32)


# ---- frozen AudioSet embeddings ----

EMBEDDING_VERSION = 1
"""Bumped whenever the embedding sets' definition changes, so cached vectors of the old one are not reused."""

EMBEDDING_SETS = ("yamnet_embedding", "mn04_embedding")
"""The sets computed by a frozen pretrained network (:func:`ensemble.members.audioset.embed`)."""


def _embedding_names(set_name: str) -> list[str]:
    """``<set>_mean<k>`` then ``<set>_max<k>`` for each channel ``k``."""
    half = SETS[set_name].size // 2
    stem = set_name.removesuffix("_embedding")
    return [f"{stem}_mean{k:04d}" for k in range(half)] + [f"{stem}_max{k:04d}" for k in range(half)]


def _embedding_weights(weights_dir: str | os.PathLike | None = None) -> str:
    """A short fingerprint of the weights files the embeddings come from (their sizes), in the
    weights folder :func:`ensemble.core.weights.weights_dir` finds from ``weights_dir``."""
    from ..core.weights import weights_dir as find

    root = find(weights_dir)
    parts = []
    for folder in ("yamnet_mobilenetv1_100", "efficientat_mn04_as"):
        path = None if root is None else Path(root) / folder / "model.safetensors"
        parts.append(f"{path.stat().st_size}" if path is not None and path.is_file() else "none")
    return "-".join(parts)


# ---- the public functions ----


def names(set_name: str, weights_dir: str | os.PathLike | None = None) -> list[str]:
    """The column names of ``set_name``'s functionals, in :func:`extract`'s order (``weights_dir``: an encoder set's weights folder).

    Raises:
        FunctionalsError: an unknown set, or an openSMILE set without the opensmile package.
    """
    if _set(set_name, weights_dir).name == "ens_basic":
        return basic_names()
    if set_name in EMBEDDING_SETS:
        return _embedding_names(set_name)
    if is_encoder(set_name):
        return encoders.names(set_name, weights_dir)
    return list(_smile(set_name).feature_names)


def extract(
    waveforms: Sequence[np.ndarray] | np.ndarray, sample_rate: int, set_name: str, threads: int = 0, weights_dir: str | os.PathLike | None = None
) -> np.ndarray:
    """The functionals of ``set_name`` (:data:`SETS`) of each waveform.

    ``ComParE_2016`` / ``eGeMAPSv02``: ``opensmile.Smile(feature_set=..., feature_level=Functionals)``'s
    ``process_signal(y, sample_rate)``, as openSMILE defines them (see :data:`SETS` for the sources).
    A functional openSMILE leaves NaN / Inf (none seen on RAVDESS) becomes 0.

    ``ens_basic``: 53 descriptors per frame (frames of :data:`FRAME_S` = 32 ms every
    :data:`HOP_S` = 10 ms, centred, zero-padded at the ends; F0 and periodicity on :data:`PITCH_FRAME_S` = 40 ms),
    each summarised by :data:`STATISTICS` (mean, std, p10, p50, p90, slope per second), plus the
    voiced fraction: 53 x 6 + 1 = 319 functionals, named by :func:`basic_names`. The descriptors:

    - ``rms_db``: RMS energy of the frame (rectangular, ``librosa.feature.rms``), dBFS, floored at -100.
    - ``zcr``: zero-crossing rate, the fraction of successive samples that change sign (0-1).
    - ``spectral_centroid``, ``spectral_bandwidth`` (2nd-order spread about the centroid),
      ``spectral_rolloff`` (frequency under which 85 % of the magnitude lies): Hz, of the STFT magnitude (Hann).
    - ``spectral_flatness``: geometric over arithmetic mean of the power spectrum (0-1; 1 for white noise and silence).
    - ``spectral_contrast0..4``: peak minus valley level (2 % quantiles), dB, in the bands of
      :data:`CONTRAST_FMIN` / :data:`CONTRAST_BANDS`: 0-200, 200-400, 400-800, 800-1600 Hz, 1.6 kHz-Nyquist.
    - ``mfcc00..19``: MFCCs (DCT-II, orthonormal) of the 40-band mel log power spectrum (dB, 80 dB range), librosa's defaults otherwise.
    - ``mfcc_delta00..19``: their deltas (Savitzky-Golay, 9 frames, ``librosa.feature.delta``), per frame.
    - ``f0_semitones``: F0 from ``librosa.yin`` (de Cheveigne & Kawahara 2002; 60-500 Hz), in
      semitones above 27.5 Hz as in GeMAPS (``12 * log2(f0 / 27.5)``; 110 Hz is 24, 220 Hz is 36),
      over the voiced frames only.
    - ``periodicity``: the frame's highest normalised cross-correlation at lags of 60-500 Hz
      (Talkin 1995, RAPT's NCCF): near 1 for voiced speech, near 0 for noise, 0 for silence.
    - ``voiced_fraction``: the fraction of frames that are voiced, i.e. periodicity >= 0.7,
      RMS within 40 dB of the clip's loudest frame and above the -100 dB floor, and F0 more than a
      semitone inside 60-500 Hz (so a 60 Hz mains hum is not a voice).

    Nothing is NaN or Inf: a clip without a voiced frame has its six F0 functionals 0 and a
    ``voiced_fraction`` of 0 (which tells it apart); a slope over fewer than two frames is 0; silence has
    finite levels by the floors above. librosa and NumPy only: the cheapest set (docs/benchmarks.md).

    Args:
        waveforms: float waveforms, each ``(samples,)`` at ``sample_rate`` Hz (a sequence, or a
            ``(clips, samples)`` array), e.g. from :func:`ensemble.inputs.audio.load_trimmed`.
        sample_rate: their sample rate in Hz (at least 8000 for ``ens_basic``).
        set_name: a key of :data:`SETS`.
        threads: threads for an openSMILE set's clips (:func:`workers`; 0: every core); the result
            does not depend on it.
        weights_dir: an embedding set's weights folder (``[paths].weights_dir``; None or ``""``:
            :func:`ensemble.core.weights.weights_dir`'s default).

    ``yamnet_embedding`` / ``mn04_embedding``: :func:`ensemble.members.audioset.embed` (the waveform
    resampled to the network's frontend rate, its log-mel, the frozen network in eval mode, mean
    and max over time); weights from ``weights_dir``, else ``$ENS_WEIGHTS_DIR`` or ``../shared/weights``.
    An encoder set: :func:`ensemble.members.encoders.embed` (states x 2 x width values).

    Returns:
        float32 ``(len(waveforms), d)``: d = 6373, 88, 319, 2048, 768, or an encoder's states x 2 x width
        (Whisper base: 7168); columns named by :func:`names`.

    Raises:
        FunctionalsError: an unknown set; an openSMILE set without the opensmile package (the
            message says how to install it and its licence); ``sample_rate`` not a positive
            integer (below 8000 for ``ens_basic``); a waveform that is not 1-D, is empty, holds NaN
            or Inf, or is too short for openSMILE (under about 0.1 s; the message names its index).
        BackboneError: an embedding set whose weights are absent (:mod:`ensemble.members.audioset`).
    """
    chosen = _set(set_name, weights_dir)
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise FunctionalsError(f"sample_rate={sample_rate!r} is not a positive integer number of Hz; pass the rate the waveforms are sampled at.")
    if chosen.name == "ens_basic" and sample_rate < MIN_SAMPLE_RATE:
        raise FunctionalsError(f"sample_rate={sample_rate}: ens_basic needs at least {MIN_SAMPLE_RATE} Hz; load the clips at 16000 Hz.")
    clips = [np.asarray(y, dtype=np.float32) for y in waveforms]
    for index, y in enumerate(clips):
        if y.ndim != 1 or not y.size:
            raise FunctionalsError(f"waveform {index}: expected a non-empty 1-D array of samples, got {y.shape}.")
        if not np.isfinite(y).all():
            raise FunctionalsError(f"waveform {index}: holds NaN or Inf samples; repair or drop the clip.")
    rate = int(sample_rate)
    if chosen.name in EMBEDDING_SETS:
        from .audioset import embed

        rows = (embed([y], rate, chosen.name, weights_dir)[0] for y in clips)
    elif is_encoder(chosen.name):
        rows = (encoders.embed([y], rate, chosen.name, weights_dir)[0] for y in clips)
    elif chosen.name == "ens_basic":
        rows = (_basic(y, rate) for y in clips)
    else:
        smile = _smile(chosen.name)
        rows = thread_map(lambda job: _opensmile_row(smile, job[1], rate, job[0], chosen.name), enumerate(clips), workers(set_name, threads))
    out = np.empty((len(clips), chosen.size), np.float32)
    for index, row in enumerate(rows):
        out[index] = row
    return out


def workers(set_name: str, threads: int = 0, weights_dir: str | os.PathLike | None = None) -> int:
    """Threads :func:`extract` and :class:`FunctionalsCache` compute ``set_name``'s clips on: the
    openSMILE sets ``threads`` (``[runtime].threads``; 0: every core), since openSMILE's C library
    releases the GIL (:mod:`ensemble.core.threads`); one for ``ens_basic`` (GIL-bound: slower on
    threads), the embedding sets and the encoder sets (torch spreads each clip over the cores itself).

    Raises:
        FunctionalsError: an unknown set.
    """
    name = _set(set_name, weights_dir).name
    return 1 if name == "ens_basic" or name in EMBEDDING_SETS or is_encoder(name) else resolve(threads)


def identity(set_name: str, weights_dir: str | os.PathLike | None = None) -> str:
    """The cache identity of ``set_name``: ``opensmile-<version>-<set>``, ``ens_basic-<BASIC_VERSION>-librosa-<version>``
    or ``<set>-<EMBEDDING_VERSION>-w<weights files' sizes>`` for an embedding set (in ``weights_dir``'s folder, as :func:`extract`).

    Raises:
        FunctionalsError: as :func:`names`.
    """
    if _set(set_name, weights_dir).name == "ens_basic":
        return f"ens_basic-{BASIC_VERSION}-librosa-{librosa.__version__}"
    if set_name in EMBEDDING_SETS:
        return f"{set_name}-{EMBEDDING_VERSION}-w{_embedding_weights(weights_dir)}"
    if is_encoder(set_name):
        return encoders.identity(set_name, weights_dir)
    return f"opensmile-{_opensmile().__version__}-{set_name}"


class FunctionalsCache:
    """Functionals of audio files, computed once: :func:`extract` of :func:`ensemble.inputs.audio.load_trimmed`,
    kept by a :class:`ensemble.inputs.vectors.VectorCache` named by :func:`identity`, one file per set,
    extractor version and loading setting, e.g. ``<root>/opensmile-2.6.0-ComParE_2016-16000hz-trim0.npz``.
    A competition's cache belongs beside its feature cache, e.g. ``<competition>/.ens_cache/functionals``.

    Args:
        root: the folder of the cache files.
        threads: ``[runtime].threads``: an openSMILE set's clips are loaded and computed on this
            many threads (:func:`workers`; 0: every core).
        weights_dir: ``[paths].weights_dir``, the embedding sets' weights folder (as :func:`extract`).
    """

    def __init__(self, root: str | os.PathLike, threads: int = 0, weights_dir: str | os.PathLike | None = None):
        self.root, self.threads, self.weights_dir = Path(root), threads, weights_dir

    def cache(self, set_name: str) -> VectorCache:
        """The vector cache of one set.

        Raises:
            FunctionalsError: as :func:`names`.
        """
        chosen = _set(set_name, self.weights_dir)

        def compute(y: np.ndarray, sample_rate: int) -> np.ndarray:
            return extract([y], sample_rate, chosen.name, threads=1, weights_dir=self.weights_dir)[0]

        label, threads = f"functionals {chosen.name}", workers(chosen.name, self.threads, self.weights_dir)
        return VectorCache(self.root, identity(chosen.name, self.weights_dir), chosen.size, compute, label=label, threads=threads)

    def get(self, paths: Sequence[str | os.PathLike], sample_rate: int, trim_db: float = 0.0, set_name: str = "ens_basic", progress: bool = True) -> np.ndarray:
        """Functionals of ``paths``, computing (and adding to the cache) only clips not cached yet.

        Args:
            paths: audio files; one row each, in this order.
            sample_rate, trim_db: how each clip is loaded (:func:`ensemble.inputs.audio.load_trimmed`:
                resampled to ``sample_rate`` Hz, edges quieter than ``trim_db`` dB under the peak
                trimmed; 0 keeps everything); part of the cache file's name.
            set_name: a key of :data:`SETS`.
            progress: a bar on a terminal, else one line when done, e.g. ``functionals ens_basic: 1440 clips in 30.2 s``.

        Returns:
            float32 ``(len(paths), d)``, columns named by :func:`names`.

        Raises:
            AudioError: files that do not exist (before anything is computed) or cannot be loaded
                (after the others are computed and cached); the message names each file.
            FunctionalsError: as :func:`extract` (the clips computed before are cached).
        """
        return self.cache(set_name).get(paths, sample_rate, trim_db, progress)
