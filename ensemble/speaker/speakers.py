"""Speakers: who speaks in each clip, and per-speaker normalisation of features.

Normalising each speaker's features by that speaker's own statistics takes out differences
between voices that an emotion classifier would otherwise have to learn around (Busso et al. 2011, "Iterative feature
normalization scheme for automatic emotion detection from speech", IEEE Trans. Affective
Computing; the per-speaker z-normalisation of the INTERSPEECH / ComParE challenge baselines).
A competition's test set does not say who speaks, so speakers are inferred:

- :func:`embed`: one 256-d voice embedding per clip from the GE2E speaker encoder (Wan et al.
  2018, "Generalized end-to-end loss for speaker verification", ICASSP), as pretrained and
  shipped by ``resemblyzer`` (Apache-2.0; the weights ``pretrained.pt`` are inside the wheel, so
  nothing is downloaded; CPU). :class:`EmbeddingCache` keeps them on disk, one file per setting.
- :func:`infer`: agglomerative clustering of the embeddings (cosine distance, average linkage),
  the number of speakers chosen by the best silhouette. On all 240 RAVDESS clips of actors
  21-24 it finds k = 5 with adjusted Rand index 0.98 against the 4 actors (12 s to embed on 2
  CPU cores); on 10 clips of each (all 8 emotions, ``tests/test_speakers.py``) k = 4, ARI 1.0.
  Clustering emotion features instead of voices fails (ARI 0.37, measured in the issue).
- :class:`SpeakerNorm`: per-speaker z-normalisation of any feature array (pooling extra axes
  such as time gives speaker-level CMVN of feature images), with population statistics for
  rows of a speaker never seen.
- :func:`adjusted_rand`: how well inferred speakers match known ones.

No label is ever used: no function here takes one, so normalisation statistics cannot leak the
targets, and the unlabelled test rows of a speaker can be normalised by their own statistics.
"""

from __future__ import annotations

import hashlib
import os
import threading
import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.cluster import AgglomerativeClustering
from sklearn.metrics import adjusted_rand_score, silhouette_score

from ..core import atomic
from ..core.errors import EnsError
from ..inputs.vectors import VectorCache

EMBEDDING_SIZE = 256
"""Length of one voice embedding (the GE2E encoder's output; each has unit L2 norm)."""

EPS = 1e-6
"""Default floor on a standard deviation in :class:`SpeakerNorm`: a feature whose spread is under
it is treated as constant (its standardised values are ``(x - mean) / EPS``, 0 for a constant)."""


class SpeakerError(EnsError, ValueError):
    """Speakers cannot be embedded, inferred or normalised as asked; the message names the value and the fix."""


_ENCODER = None  # the resemblyzer VoiceEncoder, loaded on first use
_ENCODER_ID: str | None = None
_LOCK = threading.Lock()


def _resemblyzer():
    """The ``resemblyzer`` module, imported without the deprecation warnings of its own imports
    (``scipy.ndimage.morphology``, ``pkg_resources`` in webrtcvad) that ens cannot fix."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*scipy.ndimage.morphology.*", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        import resemblyzer
    return resemblyzer


def weights_path() -> Path:
    """The encoder's pretrained weights: ``pretrained.pt`` inside the installed ``resemblyzer`` package."""
    return Path(_resemblyzer().__file__).resolve().parent / "pretrained.pt"


def encoder():
    """The GE2E voice encoder (``resemblyzer.VoiceEncoder`` on the CPU), loaded once from
    :func:`weights_path` (no network) and kept for the process.

    Raises:
        SpeakerError: the weights file is missing from the installed package; reinstall resemblyzer.
    """
    global _ENCODER
    with _LOCK:
        if _ENCODER is None:
            path = weights_path()
            if not path.is_file():
                raise SpeakerError(
                    f"{path}: the voice encoder's weights are missing; reinstall it (pip install -c requirements.lock --force-reinstall resemblyzer)."
                )
            _ENCODER = _resemblyzer().VoiceEncoder("cpu", verbose=False, weights_fpath=path)
        return _ENCODER


def encoder_id() -> str:
    """The encoder's identity, for cache keys: ``resemblyzer-<version>-<first 12 hex of the weights' SHA-256>``."""
    global _ENCODER_ID
    if _ENCODER_ID is None:
        from importlib import metadata

        digest = hashlib.sha256(weights_path().read_bytes()).hexdigest()[:12]
        _ENCODER_ID = f"resemblyzer-{metadata.version('resemblyzer')}-{digest}"
    return _ENCODER_ID


def embed(waveforms: Sequence[np.ndarray] | np.ndarray, sample_rate: int) -> np.ndarray:
    """Voice embeddings of ``waveforms``, one per clip.

    Each waveform goes through resemblyzer's own preprocessing (``preprocess_wav``: resampling to
    16 kHz, raising the volume to -30 dBFS if quieter, and cutting the long silences the WebRTC
    voice-activity detector finds in 30 ms windows), then ``VoiceEncoder.embed_utterance``
    (the mean of the embeddings of 1.6 s windows, renormalised; a shorter utterance is
    zero-padded to one window).

    A clip in which the detector finds no voiced 30 ms window (one shorter than 30 ms, or
    without voice) would be left empty by that preprocessing, and every such clip would get the
    same embedding, that of silence. Such a clip is embedded without the silence cutting
    instead (resampled and volume-raised only): the embedding then describes whatever sound
    there is, but carries little of the voice, so such clips may form their own cluster in
    :func:`infer`.

    The encoder runs on one CPU thread (torch's thread count is restored afterwards): its small
    LSTM steps gain nothing from more, and lose much when the cores are shared.

    Args:
        waveforms: float waveforms, each ``(samples,)`` at ``sample_rate`` Hz (a sequence, or a
            ``(clips, samples)`` array).
        sample_rate: their sample rate in Hz.

    Returns:
        float32 ``(len(waveforms), 256)``, each row of unit L2 norm.

    Raises:
        SpeakerError: ``sample_rate`` is not a positive integer; a waveform is not 1-D, is empty,
            holds NaN or Inf, or is all zeros (the message names its index in ``waveforms``).
    """
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise SpeakerError(f"sample_rate={sample_rate!r} is not a positive integer number of Hz; pass the rate the waveforms are sampled at.")
    import torch

    model = encoder()
    out = np.empty((len(waveforms), EMBEDDING_SIZE), np.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see the docstring: one thread is faster for this small LSTM, much faster on shared cores
    try:
        for index, y in enumerate(waveforms):
            out[index] = model.embed_utterance(_prepare(y, int(sample_rate), index))
    finally:
        torch.set_num_threads(threads)
    return out


def _prepare(y: np.ndarray, sample_rate: int, index: int) -> np.ndarray:
    """Waveform ``index`` as the encoder takes it: 16 kHz, preprocessed as :func:`embed` says."""
    y = np.asarray(y, dtype=np.float32)
    if y.ndim != 1 or not y.size:
        raise SpeakerError(f"waveform {index}: expected a non-empty 1-D array of samples, got shape {y.shape}.")
    if not np.isfinite(y).all():
        raise SpeakerError(f"waveform {index}: holds NaN or Inf samples; repair or drop the clip.")
    if not y.any():
        raise SpeakerError(f"waveform {index}: all {y.size} samples are zero, so there is no voice to embed; drop the clip.")
    rz = _resemblyzer()
    wav = rz.preprocess_wav(y, source_sr=sample_rate)
    if len(wav):
        return wav
    import librosa

    resampled = librosa.resample(y, orig_sr=sample_rate, target_sr=rz.sampling_rate)
    return rz.normalize_volume(resampled, rz.hparams.audio_norm_target_dBFS, increase_only=True)


def _embed_one(y: np.ndarray, sample_rate: int) -> np.ndarray:
    """:func:`embed` of one waveform: float32 ``(256,)``."""
    return embed([y], sample_rate)[0]


class EmbeddingCache:
    """Voice embeddings of audio files, computed once: :func:`embed` of :func:`ensemble.inputs.audio.load_trimmed`,
    kept by a :class:`ensemble.inputs.vectors.VectorCache` named after the encoder.

    One ``.npz`` file per encoder and loading setting, ``<root>/<encoder_id()>-<rate>hz-trim<dB>.npz``
    (``keys``: each clip's resolved path, size and modification time; ``vectors``: float32
    ``(clips, 256)``), replaced atomically after every ``VectorCache.SAVE_EVERY`` new clips, so an
    interrupted run keeps what it embedded. A changed file (size or modification time) is embedded
    again; another encoder version or weights writes another file. An unreadable cache file is
    embedded again, with a warning. One process writes a cache at a time.
    A competition's cache belongs beside its feature cache, e.g. ``<competition>/.ens_cache/voices``.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def vectors(self) -> VectorCache:
        """The cache of the installed encoder (its identity read on first use, so constructing loads nothing)."""
        return VectorCache(self.root, encoder_id(), EMBEDDING_SIZE, _embed_one, label="embed voices")

    def file(self, sample_rate: int, trim_db: float) -> Path:
        """The cache file of one setting."""
        return self.vectors().file(sample_rate, trim_db)

    def get(self, paths: Sequence[str | os.PathLike], sample_rate: int, trim_db: float = 0.0, progress: bool = True) -> np.ndarray:
        """Embeddings of ``paths``, embedding (and adding to the cache) only clips not cached yet.

        Args:
            paths: audio files; one row each, in this order.
            sample_rate, trim_db: how each clip is loaded (:func:`ensemble.inputs.audio.load_trimmed`:
                resampled to ``sample_rate`` Hz, edges quieter than ``trim_db`` dB under the peak
                trimmed; 0 keeps everything); part of the cache file's name.
            progress: report embedding (nothing is reported when every clip is cached): tqdm's
                "embed voices" bar when stderr is a terminal, otherwise one line on stdout when it
                is done, e.g. ``embed voices: 240 clips in 12.1 s``; False reports nothing.

        Returns:
            float32 ``(len(paths), 256)``.

        Raises:
            AudioError: files that do not exist (before anything is embedded) or cannot be loaded
                (after the others are embedded and cached); the message names each file and its problem.
            SpeakerError: a clip is all zeros (:func:`embed`); the clips embedded before it are cached.
        """
        return self.vectors().get(paths, sample_rate, trim_db, progress)


@dataclass(frozen=True)
class InferredSpeakers:
    """Speakers inferred by :func:`infer`.

    Attributes:
        labels: int64 ``(n,)``, the speaker of each clip, ``0 .. k - 1``.
        k: the number of speakers.
        silhouette: the mean silhouette (cosine distance) of each k tried, ``{k: score}``; with
            ``k`` given, that k alone, or empty when its silhouette is undefined (k = 1 or k = n).
        score: the silhouette of the chosen k (NaN when undefined).
    """

    labels: np.ndarray
    k: int
    silhouette: dict[int, float]
    score: float


def infer(embeddings: np.ndarray, k: int = 0, k_min: int = 2, k_max: int = 8) -> InferredSpeakers:
    """Group clips by speaker: agglomerative clustering of their voice embeddings (scikit-learn's
    ``AgglomerativeClustering``, cosine distance, average linkage).

    Args:
        embeddings: ``(n, d)`` finite, no all-zero row, e.g. :func:`embed`'s ``(n, 256)``.
        k: the number of speakers, from 1 to n; 0 chooses it: each k from ``k_min`` to
            ``min(k_max, n - 1)`` is tried and the one with the best mean silhouette
            (``silhouette_score(metric="cosine")``) kept, the smaller k on a tie.

    Returns:
        :class:`InferredSpeakers`.

    Raises:
        SpeakerError: fewer than 2 clips; embeddings not 2-D, with NaN / Inf or all-zero rows;
            ``k`` negative or above n; ``k=0`` with ``k_min < 2``, ``k_max < k_min``, or fewer
            than ``k_min + 1`` clips. The message names the values.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise SpeakerError(f"embeddings must be 2-D (clips, dimensions), got shape {x.shape}.")
    n = len(x)
    if n < 2:
        raise SpeakerError(f"inferring speakers needs at least 2 clips, got {n}.")
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1) | ~x.any(axis=1))
    if len(bad):
        raise SpeakerError(f"embedding rows {bad[:10].tolist()} hold NaN / Inf or only zeros, which have no cosine distance; drop those clips.")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= n:
        raise SpeakerError(f"k={k!r} is not a number of speakers for {n} clips; pass 1 to {n}, or 0 to choose k by silhouette.")
    if k:
        labels = _cluster(x, int(k))
        score = _silhouette(x, labels, int(k))
        return InferredSpeakers(labels, int(k), {} if np.isnan(score) else {int(k): score}, score)
    if not 2 <= k_min <= k_max:
        raise SpeakerError(f"k_min={k_min}, k_max={k_max}: choosing k by silhouette needs 2 <= k_min <= k_max.")
    if n < k_min + 1:
        raise SpeakerError(f"choosing k by silhouette needs at least k_min + 1 = {k_min + 1} clips, got {n}; pass k.")
    tried = {kk: _cluster(x, kk) for kk in range(k_min, min(k_max, n - 1) + 1)}
    silhouette = {kk: _silhouette(x, labels, kk) for kk, labels in tried.items()}
    best = max(silhouette, key=lambda kk: (silhouette[kk], -kk))
    return InferredSpeakers(tried[best], best, silhouette, silhouette[best])


def _cluster(x: np.ndarray, k: int) -> np.ndarray:
    return AgglomerativeClustering(n_clusters=k, metric="cosine", linkage="average").fit_predict(x).astype(np.int64)


def _silhouette(x: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Mean cosine silhouette of ``labels``; NaN where it is undefined (k = 1 or k = n)."""
    return float(silhouette_score(x, labels, metric="cosine")) if 2 <= k < len(x) else float("nan")


def adjusted_rand(true_groups: Sequence[Hashable] | np.ndarray, labels: Sequence[Hashable] | np.ndarray) -> float:
    """Adjusted Rand index of inferred ``labels`` against the true speakers ``true_groups`` (both
    ``(n,)``; scikit-learn's ``adjusted_rand_score``): 1 for the same partition whatever the
    label names, about 0 for a random one."""
    return float(adjusted_rand_score(np.asarray(true_groups), np.asarray(labels)))


class Statistics(NamedTuple):
    """A mean and a standard deviation (already floored at ``eps``), float64, shaped to broadcast against one row."""

    mean: np.ndarray
    std: np.ndarray


def save_statistics(path: str | os.PathLike, stats: Statistics) -> None:
    """Write ``stats`` to the ``.npz`` file ``path`` (``mean``, ``std``) atomically."""
    with atomic.atomic_path(path) as tmp:
        np.savez(tmp, mean=stats.mean, std=stats.std)


def load_statistics(path: str | os.PathLike) -> Statistics:
    """The :class:`Statistics` :func:`save_statistics` wrote.

    Raises:
        OSError, KeyError, ValueError: the file is missing, lacks ``mean`` / ``std`` or is not an ``.npz`` file.
    """
    with np.load(path) as saved:
        return Statistics(saved["mean"], saved["std"])


def standardise_one(x: np.ndarray, reference: np.ndarray | None, population: Statistics, pooled_axes: tuple[int, ...] = ()) -> np.ndarray:
    """Rows ``x`` of one speaker (a new recording) standardised as a training speaker's were: by the
    statistics of ``reference`` (other rows of the same speaker; ``pooled_axes`` pooled as in
    :class:`SpeakerNorm`) when given, else by the training ``population``'s (float32 arithmetic)."""
    if reference is not None:
        norm = SpeakerNorm(pooled_axes=pooled_axes).fit(reference, np.zeros(len(reference), dtype=np.int64))
        return norm.transform(x, np.zeros(len(x), dtype=np.int64))
    return (np.asarray(x).astype(np.float32) - population.mean) / population.std


class SpeakerNorm(BaseEstimator):
    """Per-speaker z-normalisation: each row standardised by the mean and standard deviation of
    its own speaker's rows (Busso et al. 2011; the ComParE baselines' speaker z-normalisation).

    Works on any array ``(n, ...)`` of rows: feature vectors ``(n, d)`` or images
    ``(n, channels, height, frames)``. ``pooled_axes`` names row axes whose positions share
    statistics: ``pooled_axes=(-1,)`` on images pools time, giving one mean and std per channel
    and frequency row per speaker (speaker-level CMVN); such an axis may have another length in
    :meth:`transform` than in :meth:`fit`. Statistics are computed in float64.

    No method takes labels (there is no ``y``): statistics come from a speaker's rows alone, so
    unlabelled test rows can be normalised by their own (inferred) speaker. Because
    :meth:`transform` needs the groups, this is not a ``TransformerMixin`` and does not go in a
    scikit-learn ``Pipeline`` (which would also pass labels where groups are expected).

    A speaker with a single row and nothing pooled has a spread of 0, so its rows become 0:
    normalise per speaker where each speaker has several clips.

    Args:
        pooled_axes: axes of ``X`` besides the rows (1 .. ndim - 1, or negative) to pool.
        eps: floor on each standard deviation (default :data:`EPS`, 1e-6): a constant feature
            becomes 0, not Inf / NaN; a spread under it is treated as rounding, not signal.

    Attributes (after :meth:`fit`):
        groups_: the speakers seen, sorted, ``(g,)``.
        counts_: rows per speaker, int64 ``(g,)``.
        mean_, std_: float64 ``(g, *shape)``, where ``shape`` is a row's shape with pooled axes of
            size 1; ``std_`` floored at ``eps``.
        population_: :class:`Statistics` over all fitted rows (pooled as the speakers'), for
            rows of a speaker not seen in :meth:`fit` (:meth:`transform_population`).
    """

    def __init__(self, pooled_axes: tuple[int, ...] = (), eps: float = EPS):
        self.pooled_axes = pooled_axes
        self.eps = eps

    def fit(self, X: np.ndarray, groups: Sequence[Hashable] | np.ndarray) -> SpeakerNorm:
        """Store each speaker's statistics over its rows of ``X`` ``(n, ...)``; ``groups`` ``(n,)``
        names each row's speaker (any hashable values, e.g. :func:`infer`'s labels or actor ids).

        Raises:
            SpeakerError: ``X`` is not a real numeric array with at least one row, holds NaN / Inf,
                or ``groups`` is not ``(n,)``; ``pooled_axes`` names a bad axis; ``eps`` is not positive.
        """
        x = _features(X)
        if not np.isfinite(x).all():
            raise SpeakerError("X holds NaN or Inf values, which would spoil their speaker's statistics; repair or drop those rows.")
        if not (isinstance(self.eps, (int, float)) and self.eps > 0):
            raise SpeakerError(f"eps={self.eps!r}: the floor on a standard deviation must be a positive number.")
        reduce = (0, *self._axes(x.ndim))
        self.groups_, inverse, self.counts_ = np.unique(_groups(groups, len(x)), return_inverse=True, return_counts=True)
        means, variances = [], []
        for g in range(len(self.groups_)):
            rows = x[inverse == g]
            means.append(rows.mean(axis=reduce, dtype=np.float64, keepdims=True)[0])
            variances.append(rows.var(axis=reduce, dtype=np.float64, keepdims=True)[0])
        mean, var = np.stack(means), np.stack(variances)
        weights = (self.counts_ / len(x)).reshape(-1, *[1] * (mean.ndim - 1))
        population_mean = (weights * mean).sum(axis=0)  # every row has the same number of pooled values, so rows weigh alike
        population_var = (weights * (var + (mean - population_mean) ** 2)).sum(axis=0)  # the law of total variance
        self.counts_ = self.counts_.astype(np.int64)
        self.mean_, self.std_ = mean, np.maximum(np.sqrt(var), self.eps)
        self.population_ = Statistics(population_mean, np.maximum(np.sqrt(population_var), self.eps))
        return self

    def transform(self, X: np.ndarray, groups: Sequence[Hashable] | np.ndarray) -> np.ndarray:
        """``(X - mean) / std`` of each row's own speaker.

        Returns:
            ``X``'s shape; float32 for float16 / float32 ``X``, else float64.

        Raises:
            SpeakerError: not fitted; ``X``'s rows do not have the fitted shape (pooled axes aside);
                ``groups`` is not ``(n,)``; a speaker was not seen in :meth:`fit` (the message names
                it: fit on its rows, which needs no labels, or use :meth:`transform_population`).
        """
        x = self._check(X)
        uniq, inverse = np.unique(_groups(groups, len(x)), return_inverse=True)
        index = {g: i for i, g in enumerate(self.groups_.tolist())}
        unseen = [g for g in uniq.tolist() if g not in index]
        if unseen:
            raise SpeakerError(
                f"speaker(s) {unseen[:10]} were not seen in fit (it saw {len(index)}: {list(index)[:10]}); fit on their rows too "
                "(no labels are needed), or standardise them with transform_population."
            )
        out = np.empty(x.shape, _out_dtype(x))
        for u, g in enumerate(uniq.tolist()):
            rows = inverse == u
            out[rows] = _standardise(x[rows], Statistics(self.mean_[index[g]], self.std_[index[g]]), out.dtype)
        return out

    def fit_transform(self, X: np.ndarray, groups: Sequence[Hashable] | np.ndarray) -> np.ndarray:
        """:meth:`fit` then :meth:`transform` on the same rows."""
        return self.fit(X, groups).transform(X, groups)

    def transform_population(self, X: np.ndarray) -> np.ndarray:
        """Standardise rows of an unknown speaker by the statistics of all fitted rows (``population_``):
        global z-normalisation, the fallback where a speaker cannot be fitted on its own rows.

        Returns and raises as :meth:`transform` (no groups)."""
        x = self._check(X)
        return _standardise(x, self.population_, _out_dtype(x))

    def _axes(self, ndim: int) -> tuple[int, ...]:
        """``pooled_axes`` as sorted positive axes of an array with ``ndim`` dimensions."""
        axes = []
        for axis in self.pooled_axes:
            if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -ndim < axis < ndim or axis % ndim == 0:
                raise SpeakerError(
                    f"pooled_axes={self.pooled_axes!r}: {axis!r} is not a row axis of an array with {ndim} dimensions; "
                    f"name axes 1 to {ndim - 1} (or -1 to -{ndim - 1}); rows (axis 0) are always pooled within a speaker."
                )
            axes.append(int(axis) % ndim)
        if len(set(axes)) != len(axes):
            raise SpeakerError(f"pooled_axes={self.pooled_axes!r} names an axis twice.")
        return tuple(sorted(axes))

    def _check(self, X) -> np.ndarray:
        """``X`` as an array whose rows match the fitted statistics (pooled axes of any length)."""
        if not hasattr(self, "mean_"):
            raise SpeakerError("this SpeakerNorm is not fitted yet; call fit(X, groups) first.")
        x = _features(X)
        shape = self.mean_.shape[1:]
        pooled = self._axes(len(shape) + 1)
        if x.ndim != len(shape) + 1 or any(x.shape[a] != shape[a - 1] for a in range(1, x.ndim) if a not in pooled):
            raise SpeakerError(
                f"X has shape {x.shape} but SpeakerNorm was fitted on rows of shape {shape} (pooled axes {pooled} may have any length); "
                "pass features made the same way."
            )
        return x


def _features(X) -> np.ndarray:
    x = np.asarray(X)
    if x.ndim < 1 or not len(x) or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise SpeakerError(f"X must be a real numeric array of rows (n, ...) with n >= 1, got shape {x.shape} and dtype {x.dtype}.")
    return x


def _groups(groups, n: int) -> np.ndarray:
    g = np.asarray(groups)
    if g.shape != (n,):
        raise SpeakerError(f"groups must name the speaker of each of the {n} rows, shape ({n},), got shape {g.shape}.")
    return g


def _out_dtype(x: np.ndarray) -> type:
    return np.float32 if x.dtype in (np.float16, np.float32) else np.float64


def _standardise(x: np.ndarray, stats: Statistics, dtype) -> np.ndarray:
    return (x.astype(dtype, copy=False) - stats.mean.astype(dtype)) / stats.std.astype(dtype)
