"""Feature rendering: a clip becomes an image of shape ``(channels, height, frames)`` in [0, 1], cached.

:func:`model_inputs` is the one way waveforms become what a model sees: fixed to ``duration``,
rendered in batches by :class:`Renderer` (torch, CPU or CUDA) and rounded to float16. The feature
cache stores its images, ``ens predict`` renders its windows and ``ens report`` its feature images
with it. :func:`ensemble.inputs.reference.render` is the per-clip librosa reference the renderer matches
within 1e-4. Channels share one STFT, hence one time axis (the names, and how figures show each
channel: :mod:`ensemble.core.channels`):

- ``mel``: log-Mel power, as ``librosa.feature.melspectrogram`` + ``power_to_db`` (ref = clip peak).
- ``chroma``: chromagram, as ``librosa.feature.chroma_stft`` with ``tuning=0`` (12 pitch classes).
- ``stft``: log-STFT magnitude, as ``amplitude_to_db`` (ref = clip peak).
- ``mfcc``: as ``librosa.feature.mfcc`` of the log-Mel, min-max scaled per clip.

Log channels span ``top_db`` dB and are mapped linearly to [0, 1]; chroma is already in [0, 1]
(each frame divided by its maximum). Every channel is resized along frequency to ``height`` rows:
bilinear with anti-aliasing, except chroma, which is repeated (nearest) because its 12 rows are
pitch classes, not a continuous axis. The backbone's ImageNet mean/std is applied later, on the batch.

The cache holds one memory-mapped float16 array per competition folder and feature setting
(``<competition>/.ens_cache/<FeatureConfig.key()>/``) and an index of the clips in it, keyed by
path, size and modification time (and augmented copy); clips already in it are never rendered again.
A clip that cannot be loaded is recorded in the index with its error (and a zero row), so a
corpus with bad files is not re-read on every run; fixing the file changes its key.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import re
import time
import warnings
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import librosa
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..core import atomic, frontends
from ..core.channels import CHANNELS as FACTS
from ..core.errors import Message, Param
from ..core.recipe import AugmentConfig, FeatureConfig
from . import audio
from .augment import augment_waveform


def samples(config: FeatureConfig) -> int:
    """Length of a clip in samples: ``round(duration * sample_rate)``."""
    return int(round(config.duration * config.sample_rate))


def frames(config: FeatureConfig, n_samples: int | None = None) -> int:
    """Number of STFT frames (image width) of a clip of ``n_samples`` samples (default
    :func:`samples`): ``1 + n_samples // hop_length`` (centred STFT), or the pretrained frontend's
    count (:meth:`ensemble.core.frontends.Frontend.frames`: one sample fewer after pre-emphasis)."""
    n = samples(config) if n_samples is None else n_samples
    if config.frontend != frontends.IMAGE:
        return frontends.get(config.frontend).frames(n)
    return 1 + n // config.hop_length


def resize(rows: torch.Tensor, height: int, nearest: bool) -> torch.Tensor:
    """Resize ``rows`` ``(batch, rows, frames)`` along frequency to ``(batch, height, frames)``, as
    both the torch renderer and the librosa reference (:mod:`ensemble.inputs.reference`) do.

    Bilinear with anti-aliasing (``F.interpolate``; its weights are non-negative and sum to 1, so
    it commutes with an affine map of the values), or nearest for chroma's pitch classes. Equal
    sizes are returned as they are (both modes are the identity there).
    """
    if rows.shape[1] == height:
        return rows
    size = (height, rows.shape[-1])
    if nearest:
        return F.interpolate(rows[:, None], size=size, mode="nearest")[:, 0]
    return F.interpolate(rows[:, None], size=size, mode="bilinear", align_corners=False, antialias=True)[:, 0]


def _bands(matrix: torch.Tensor, rows_per_band: int) -> list[tuple[int, int, int, int]]:
    """Split a sparse, banded ``matrix`` ``(rows, columns)`` into blocks of ``rows_per_band`` rows,
    each with the one column range ``[lo, hi)`` that holds all its non-zeros: ``(r0, r1, lo, hi)``.

    A Slaney mel filterbank (128 x 513) has 1007 non-zeros; blocks of 16 rows touch 8560 entries,
    7.7x fewer multiply-adds than the dense product, with the same sums (only zeros are left out).
    """
    nonzero = matrix != 0
    bands = []
    for r0 in range(0, matrix.shape[0], rows_per_band):
        r1 = min(r0 + rows_per_band, matrix.shape[0])
        columns = nonzero[r0:r1].any(dim=0).nonzero()[:, 0]
        lo, hi = (int(columns.min()), int(columns.max()) + 1) if len(columns) else (0, 0)
        bands.append((r0, r1, lo, hi))
    return bands


class Renderer(nn.Module):
    """Batched torch rendering of the images :func:`ensemble.inputs.reference.render` makes, on CPU or CUDA.

    One STFT (``torchaudio.transforms.Spectrogram``: periodic Hann window, centred with zero
    padding, as ``librosa.stft``), then per channel: log-Mel through the mel filterbank
    (``torchaudio.functional.melscale_fbanks`` with Slaney scale and norm, librosa's default
    filterbank, multiplied band by band over its non-zero bins), chroma through
    ``librosa.filters.chroma``'s matrix with each frame divided by its maximum, log-STFT
    magnitude, MFCC as the orthonormal DCT-II of the log-Mel
    (``torchaudio.functional.create_dct``). dB values are taken relative to each clip's peak, as
    librosa's ``ref=np.max``. The filterbanks are buffers, so ``.to(device)`` moves them. Each
    channel is the method :attr:`CHANNELS` names for it.

    :func:`ensemble.inputs.reference.render` (librosa, one clip at a time) is the reference; ``tests/test_features.py``
    checks that both agree within 1e-4 on real RAVDESS clips (images are in [0, 1], and the
    cache stores float16, whose step near 1 is 5e-4).

    Args:
        config: the feature settings; validated by the recipe.
    """

    MEL_ROWS_PER_BAND = 16
    """Mel filters per block of the banded filterbank product (:func:`_bands`): 8 products for 128
    filters, with 7.7x fewer multiply-adds than the dense one. ``benchmarks/features.py`` measures
    the dense product side by side (``torch_cpu_b8_dense_mel``)."""

    def __init__(self, config: FeatureConfig):
        super().__init__()
        import torchaudio

        c = self.config = config
        n_freqs = c.n_fft // 2 + 1
        self.stft = torchaudio.transforms.Spectrogram(n_fft=c.n_fft, hop_length=c.hop_length, power=None, center=True, pad_mode="constant")
        mel = torchaudio.functional.melscale_fbanks(n_freqs, c.fmin, c.fmax or c.sample_rate / 2, c.n_mels, c.sample_rate, norm="slaney", mel_scale="slaney")
        self.register_buffer("mel_fb", mel.T.contiguous(), persistent=False)  # (n_mels, n_freqs)
        self.mel_bands = _bands(self.mel_fb, self.MEL_ROWS_PER_BAND)
        chroma = librosa.filters.chroma(sr=c.sample_rate, n_fft=c.n_fft, tuning=0.0)
        self.register_buffer("chroma_fb", torch.from_numpy(chroma).float(), persistent=False)  # (12, n_freqs)
        self.register_buffer("dct", torchaudio.functional.create_dct(c.n_mfcc, c.n_mels, "ortho").T.contiguous(), persistent=False)

    def _mel(self, power: torch.Tensor) -> torch.Tensor:
        """Mel power ``(batch, n_mels, frames)`` of ``power`` ``(batch, n_freqs, frames)``: the filterbank
        product taken band by band over each band's non-zero bins (:func:`_bands`)."""
        return torch.cat([torch.matmul(self.mel_fb[r0:r1, lo:hi], power[:, lo:hi]) for r0, r1, lo, hi in self.mel_bands], dim=1)

    def _log10(self, power: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``log10`` of ``power`` ``(batch, rows, frames)`` floored ``top_db`` dB below each clip's peak,
        and ``log10`` of that peak ``(batch, 1, 1)``. ``10 * (log10 - log10_peak)`` is
        ``librosa.power_to_db(S, ref=np.max, amin=1e-10, top_db=top_db)`` (``amplitude_to_db``'s
        ``amin=1e-5`` on magnitudes is the same floor on power); the floor is applied before the
        logarithm, so the full-size array is touched twice."""
        peak = power.amax(dim=(1, 2), keepdim=True).clamp_min_(1e-10)
        floor = (peak * 10.0 ** (-self.config.top_db / 10.0)).clamp_min_(1e-10)
        return torch.maximum(power, floor).log10_(), peak.log10_()

    def _unit(self, log10: torch.Tensor, log10_peak: torch.Tensor, out: torch.Tensor) -> None:
        """Write the log channel ``(dB + top_db) / top_db`` of :meth:`_log10`'s output, resized to
        ``height`` rows, into ``out`` ``(batch, height, frames)``. The resize comes first: it is linear
        with weights summing to 1, so it commutes with this affine map and runs on fewer rows."""
        scale = 10.0 / self.config.top_db
        torch.add(1.0 - scale * log10_peak, resize(log10, self.config.height, nearest=False), alpha=scale, out=out)

    def _log_mel(self, power: torch.Tensor, shared: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_log10` of the mel power of ``power``, computed once per batch and kept in ``shared``
        for the ``mel`` and ``mfcc`` channels."""
        if "log_mel" not in shared:
            shared["log_mel"] = self._log10(self._mel(power))
        return shared["log_mel"]

    def _fit(self, name: str, rows: torch.Tensor, out: torch.Tensor) -> None:
        """Write channel ``name``'s ``rows`` ``(batch, rows, frames)`` resized to ``height`` rows (nearest or
        bilinear, as :data:`ensemble.core.channels.CHANNELS` says) into ``out``."""
        out.copy_(resize(rows, self.config.height, FACTS[name].nearest))

    def _mel_channel(self, power: torch.Tensor, shared: dict, out: torch.Tensor) -> None:
        self._unit(*self._log_mel(power, shared), out=out)

    def _stft_channel(self, power: torch.Tensor, shared: dict, out: torch.Tensor) -> None:
        self._unit(*self._log10(power), out=out)

    def _chroma_channel(self, power: torch.Tensor, shared: dict, out: torch.Tensor) -> None:
        raw = torch.matmul(self.chroma_fb, power)
        peak = raw.amax(dim=1, keepdim=True)
        self._fit("chroma", raw / torch.where(peak < torch.finfo(raw.dtype).tiny, torch.ones_like(peak), peak), out)

    def _mfcc_channel(self, power: torch.Tensor, shared: dict, out: torch.Tensor) -> None:
        log10, log10_peak = self._log_mel(power, shared)
        mfcc = torch.matmul(self.dct, 10.0 * (log10 - log10_peak))
        low, high = mfcc.amin(dim=(1, 2), keepdim=True), mfcc.amax(dim=(1, 2), keepdim=True)
        span = high - low
        self._fit("mfcc", (mfcc - low) / torch.where(span > 0, span, torch.ones_like(span)), out)

    CHANNELS = {"mel": _mel_channel, "chroma": _chroma_channel, "stft": _stft_channel, "mfcc": _mfcc_channel}
    """Channel name -> the method that writes that channel of a batch, ``(self, power, shared, out)``:
    ``power`` ``(batch, n_freqs, frames)``, ``shared`` a dict of results the channels of one batch
    share, ``out`` the channel's ``(batch, height, frames)`` slice of the output."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """``y``: float32 waveforms ``(batch, samples)`` at ``config.sample_rate`` Hz ->
        float32 images ``(batch, len(config.channels), config.height, 1 + samples // hop_length)`` in [0, 1]."""
        c = self.config
        spectrum = self.stft(y)  # complex (batch, n_freqs, frames)
        power = spectrum.real.square() + spectrum.imag.square()
        out = power.new_empty(power.shape[0], len(c.channels), c.height, power.shape[-1])
        shared: dict = {}
        for k, name in enumerate(c.channels):
            self.CHANNELS[name](self, power, shared, out[:, k])
        return out.clamp_(0.0, 1.0)


def tf_mel_matrix(frontend: frontends.Frontend) -> torch.Tensor:
    """``tf.signal.linear_to_mel_weight_matrix`` (TensorFlow, ``tf.signal.mel_ops``) as float32
    ``(n_mels, n_fft // 2 + 1)``: FFT bins at ``linspace(0, sample_rate / 2, n_fft // 2 + 1)`` Hz
    on the HTK mel scale ``1127 ln(1 + f / 700)``, ``n_mels`` triangles with edges equally spaced
    in mel from ``fmin`` to ``fmax``, slopes taken in mel, peak 1, no area normalisation; the DC
    bin's weights are 0. Computed in float64. YAMNet's filterbank (its ``features.py``)."""
    f = frontend
    n_bins = f.n_fft // 2 + 1
    hz = torch.linspace(0.0, f.sample_rate / 2, n_bins, dtype=torch.float64)[1:]

    def to_mel(x):
        return 1127.0 * torch.log1p(torch.as_tensor(x, dtype=torch.float64) / 700.0)

    bins_mel = to_mel(hz)[:, None]
    edges = torch.linspace(float(to_mel(f.fmin)), float(to_mel(f.fmax)), f.n_mels + 2, dtype=torch.float64)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    weights = torch.clamp(torch.minimum((bins_mel - lower) / (center - lower), (upper - bins_mel) / (upper - center)), min=0.0)
    return F.pad(weights, (0, 0, 1, 0)).T.contiguous().float()


def kaldi_mel_matrix(frontend: frontends.Frontend) -> torch.Tensor:
    """EfficientAT's filterbank as float32 ``(n_mels, n_fft // 2 + 1)``:
    ``torchaudio.compliance.kaldi.get_mel_banks(n_mels, n_fft, sample_rate, fmin, fmax, vtln_low=100,
    vtln_high=-500, vtln_warp_factor=1.0)`` (triangles equally spaced on ``1127 ln(1 + f / 700)``,
    over the first ``n_fft // 2`` bins) with a zero column appended for the Nyquist bin, as
    EfficientAT's ``AugmentMelSTFT`` does."""
    import torchaudio

    f = frontend
    banks, _ = torchaudio.compliance.kaldi.get_mel_banks(f.n_mels, f.n_fft, float(f.sample_rate), f.fmin, f.fmax, 100.0, -500.0, 1.0)
    return F.pad(banks.float(), (0, 1)).contiguous()


class FrontendRenderer(nn.Module):
    """Batched torch rendering of a pretrained network's own log-mel spectrogram (``[features].frontend``
    other than ``image``; the facts of each: :mod:`ensemble.core.frontends`), on CPU or CUDA.

    Pre-emphasis (EfficientAT), the centred STFT (``torch.stft``, the frontend's Hann window of
    ``win_length`` samples centred in ``n_fft``, its pad mode), magnitude (YAMNet) or power
    (EfficientAT), the mel filterbank (:func:`tf_mel_matrix` or :func:`kaldi_mel_matrix`),
    ``(log(mel + log_offset) + shift) / scale``, minus the frontend's silence floor
    (:attr:`ensemble.core.frontends.Frontend.floor`), so 0 is silence. ``tests/test_audioset.py`` checks
    both against independent NumPy / librosa references on real RAVDESS clips.

    Args:
        config: feature settings with ``frontend`` one of :data:`ensemble.core.frontends.FRONTENDS`.

    Raises:
        KeyError: ``config.frontend`` is not a pretrained frontend.
    """

    def __init__(self, config: FeatureConfig):
        super().__init__()
        self.config = config
        f = self.frontend = frontends.get(config.frontend)
        self.register_buffer("window", torch.hann_window(f.win_length, periodic=f.periodic), persistent=False)
        self.register_buffer("mel_fb", tf_mel_matrix(f) if f.mel == "tf" else kaldi_mel_matrix(f), persistent=False)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """``y``: float32 waveforms ``(batch, samples)`` at the frontend's rate ->
        float32 ``(batch, 1, n_mels, frames)``, frames as :meth:`ensemble.core.frontends.Frontend.frames`;
        the frontend's values minus its floor (>= 0 up to rounding)."""
        f = self.frontend
        if f.preemphasis:
            y = y[:, 1:] - f.preemphasis * y[:, :-1]
        spectrum = torch.stft(
            y, f.n_fft, hop_length=f.hop_length, win_length=f.win_length, window=self.window, center=True, pad_mode=f.pad_mode, return_complex=True
        )
        power = spectrum.real.square() + spectrum.imag.square()
        mel = torch.matmul(self.mel_fb, power if f.power == 2 else power.sqrt())
        values = (torch.log(mel + f.log_offset) + f.shift) / f.scale
        return (values - f.floor)[:, None]


def renderer(config: FeatureConfig) -> nn.Module:
    """The renderer of ``config``: :class:`Renderer` for ens's images, :class:`FrontendRenderer` for a pretrained frontend."""
    return Renderer(config) if config.frontend == frontends.IMAGE else FrontendRenderer(config)


def render_batch(waveforms: np.ndarray, config: FeatureConfig, device: str | torch.device = "cpu", batch_size: int | None = None) -> np.ndarray:
    """:func:`renderer` (:class:`Renderer` or :class:`FrontendRenderer`) over ``waveforms`` in batches, without autograd.

    Args:
        waveforms: float32 ``(clips, samples)`` at ``config.sample_rate`` Hz (usually
            ``config.duration`` long; longer clips give wider images).
        device: where to render (``cpu`` or ``cuda``).
        batch_size: clips per forward pass; default 8 on CPU (the STFT of a small batch stays in
            the CPU cache: ``benchmarks/features.py`` measures batch sizes) and 256 on CUDA.

    Returns:
        float32 ``(clips, channels, height, frames(config, samples))``: in [0, 1] for ens's images,
        the frontend's values minus its silence floor for a pretrained frontend.
    """
    device = torch.device(device)
    batch_size = batch_size or (256 if device.type == "cuda" else 8)
    render = renderer(config).to(device)
    out = np.empty((len(waveforms), len(config.channels), config.height, frames(config, waveforms.shape[-1])), np.float32)
    with torch.inference_mode():
        for start in range(0, len(waveforms), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(waveforms[start : start + batch_size], dtype=np.float32))
            out[start : start + batch_size] = render(batch.to(device, non_blocking=True)).cpu().numpy()
    return out


def model_inputs(
    waveforms: Sequence[np.ndarray] | np.ndarray, config: FeatureConfig, device: str | torch.device = "cpu", batch_size: int | None = None
) -> np.ndarray:
    """The images a model sees for ``waveforms``: the one way a waveform becomes a model input,
    used by the feature cache, ``ens predict`` and ``ens report``.

    Each waveform is centre-cropped or zero-padded to ``duration`` (:func:`ensemble.inputs.audio.fix_length`,
    which leaves a waveform of that length as it is), all are rendered by :func:`render_batch`, and
    the images are rounded to float16, as the cache stores them.

    Args:
        waveforms: float32 waveforms, each ``(samples,)`` at ``config.sample_rate`` Hz, of any
            length (a sequence, or a ``(clips, samples)`` array); at least one.
        device, batch_size: as :func:`render_batch`.

    Returns:
        float16 ``(len(waveforms), channels, height, frames(config))``: in [0, 1] for ens's images;
        for a pretrained frontend its log-mel minus its silence floor (float16 keeps 11 significant
        bits: a step of 0.004 to 0.008 for YAMNet's values of 4 to 16, 0.001 to 0.002 for EfficientAT's of 1 to 4).
    """
    n = samples(config)
    return render_batch(np.stack([audio.fix_length(y, n) for y in waveforms]), config, device, batch_size).astype(np.float16)


def load_waveform(path: str | os.PathLike, config: FeatureConfig, augment: AugmentConfig | None = None, copy: int = 0) -> np.ndarray:
    """The waveform a clip is rendered from: :func:`audio.load` (``(round(duration * sample_rate),)``
    float32), then for ``copy >= 1`` augmented copy number ``copy`` of it
    (:func:`ensemble.inputs.augment.augment_waveform`, seeded by file name and copy, so reproducible).

    Raises:
        AudioError: the file cannot be loaded; the message names it.
    """
    y = audio.load(path, config.sample_rate, config.duration, config.trim_db)
    if copy:
        seed = zlib.crc32(f"{Path(path).name}|{copy}|{augment.waveform_key()}".encode())
        y = augment_waveform(y, config.sample_rate, augment, seed)
    return y


def _load_one(job) -> tuple[np.ndarray | None, str | None]:
    """``(waveform, None)``, or ``(None, message)`` when the clip cannot be loaded (:class:`AudioError`)."""
    try:
        return load_waveform(*job), None
    except audio.AudioError as err:
        return None, str(err)


# One thread per data worker: the workers already use every core, and a BLAS or OpenMP pool per
# worker oversubscribes them (a 2-core machine loses up to 100x on small matrix products).
_ONE_THREAD = {name: "1" for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A spawned process pool whose workers start with ``OPENBLAS_NUM_THREADS`` (and the OpenMP /
    MKL equivalents) set to 1. The variables stay set while the pool lives (workers start on
    demand) and are restored after; on an error, queued jobs are cancelled instead of awaited."""
    saved = {name: os.environ.get(name) for name in _ONE_THREAD}
    os.environ.update(_ONE_THREAD)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _clip_key(path: Path, augment: AugmentConfig | None, copy: int) -> str:
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return f"{key}|aug{copy}:{augment.waveform_key()}" if copy else key


def _keys(paths, copies: Sequence[int] | None, augment: AugmentConfig | None) -> list[str | None]:
    """Each row's cache key (:func:`_clip_key`; ``copies`` default all 0), None for a file that does not exist."""
    copies = [0] * len(paths) if copies is None else copies
    return [_clip_key(p, augment, k) if p.is_file() else None for p, k in zip(map(Path, paths), copies)]


class FeatureCache:
    """One feature setting's cache: a single float16 ``.npy`` array of every rendered clip,
    memory-mapped when read, and ``index.json`` (each row's clip key, the array's file name, and
    the error of each clip that could not be loaded; such a clip's row is zeros).

    A build writes a new array (old rows copied, new rows rendered into it chunk by chunk, so
    memory holds two chunks of waveforms, the one rendered and the one loaded, not the corpus), then
    the index atomically, then removes every other array: a crash (even ``kill -9``) leaves either
    the old or the new cache, never a partial one, and the next build deletes what the crashed one
    left behind. An index whose array is missing or unreadable is rebuilt, with a warning.
    One process writes a cache at a time.
    """

    CHUNK = 256  # clips loaded by the workers per rendering step
    POOL_MIN_AUGMENTED = 1000
    _LEFTOVER = re.compile(r"^\.features-\d+-(\d+)\..*\.tmp\.npy$")  # atomic_path temporaries: .<stem>.<random>.npy.tmp.npy

    def __init__(self, root: str | os.PathLike, config: FeatureConfig):
        self.config = config
        self.dir = Path(root) / config.key()

    def _read(self) -> tuple[dict[str, int], np.ndarray | None, dict[str, str]]:
        """Cached clip keys -> row, the memory-mapped array, and the errors by key."""
        index_path = self.dir / "index.json"
        if not index_path.exists():
            return {}, None, {}
        try:
            index = json.loads(index_path.read_text())
            array = np.load(self.dir / index["array"], mmap_mode="r")
            if len(array) != len(index["keys"]):
                raise ValueError(f"{len(array)} rows for {len(index['keys'])} clips")
        except (OSError, ValueError, KeyError, TypeError) as err:
            warnings.warn(f"{self.dir}: the feature cache is unreadable ({err!r}); rendering it again.", stacklevel=3)
            return {}, None, {}
        return {key: row for row, key in enumerate(index["keys"])}, array, index.get("errors", {})

    def get(
        self,
        paths: Sequence[str | os.PathLike],
        copies: Sequence[int] | None = None,
        augment: AugmentConfig | None = None,
        progress: bool = True,
        workers: int | None = None,
        device: str | torch.device = "cpu",
    ) -> np.ndarray:
        """Images of ``paths``, rendering (and adding to the cache) only clips not cached yet.

        Args:
            paths: audio files; one output row each, in this order.
            copies: per path, 0 for the clean rendering or ``k >= 1`` for the k-th augmented
                rendering under ``augment``'s waveform settings (cached separately per setting);
                default all 0.
            workers: audio-loading processes; 1 loads in this process. Default: 1, or one per CPU
                core when at least :attr:`POOL_MIN_AUGMENTED` augmented renderings are due: clean clips
                load faster in-process than through spawned workers (``cache_build`` of
                ``benchmarks/features.py``; figures in docs/benchmarks.md), while augmenting a clip
                costs several times its loading, so only large augmented builds repay a pool's start-up.
            device: where :func:`render_batch` renders.
            progress: report a render (nothing is reported when every clip is cached): tqdm's
                "render features" bar when stderr is a terminal (or in a notebook), otherwise one
                line on stdout when it is done, e.g. ``render features: 1440 clips in 52.3 s``
                (no bar fragments in logs); False reports nothing.

        Returns:
            float16 ``(len(paths), channels, height, frames)``: a read-only view of the
            memory-mapped cache when the rows are stored in the requested order (a fresh cache
            built by one call), else a copy in memory.

        Raises:
            AudioError: clips that cannot be loaded, the message listing each file and its
                problem: missing files before anything is rendered, unreadable ones after the
                good clips are cached (:meth:`get_skipping` leaves them out instead).
        """
        images, failed = self._lookup(paths, copies, augment, progress, workers, device, skip=False)
        if failed:
            raise audio.AudioError(
                audio.error_list(
                    {Path(paths[i]): message for i, message in failed.items()}, Message("fix or remove these files, or pass ", Param("on_error", "skip"))
                )
            )
        return images

    def get_skipping(
        self,
        paths: Sequence[str | os.PathLike],
        copies: Sequence[int] | None = None,
        augment: AugmentConfig | None = None,
        progress: bool = True,
        workers: int | None = None,
        device: str | torch.device = "cpu",
    ) -> tuple[np.ndarray, dict[int, str]]:
        """:meth:`get` for a corpus with bad files: the images, with a zero image for each clip that
        does not exist or cannot be loaded, and those clips' positions in ``paths`` -> problem."""
        return self._lookup(paths, copies, augment, progress, workers, device, skip=True)

    def missing(self, paths: Sequence[str | os.PathLike], copies: Sequence[int] | None = None, augment: AugmentConfig | None = None) -> list[int]:
        """The positions in ``paths`` (with ``copies`` and ``augment`` as :meth:`get` takes them) that
        :meth:`get` would render: not cached yet, or not existing (which :meth:`get` refuses)."""
        rows = self._read()[0]
        return [i for i, key in enumerate(_keys(paths, copies, augment)) if key is None or key not in rows]

    def _lookup(self, paths, copies, augment, progress, workers, device, skip: bool) -> tuple[np.ndarray, dict[int, str]]:
        """The images and the failures by position; without ``skip``, missing files raise AudioError before any rendering."""
        paths = [Path(p) for p in paths]
        copies = [0] * len(paths) if copies is None else list(copies)
        keys = _keys(paths, copies, augment)
        missing = {i: "audio file does not exist" for i, key in enumerate(keys) if key is None}
        if missing and not skip:
            raise audio.AudioError(
                audio.error_list({paths[i]: message for i, message in missing.items()}, "check the path column and [competition].audio_root")
            )
        rows, cached, errors = self._read()
        todo = {key: (p, self.config, augment, k) for key, p, k in zip(keys, paths, copies) if key is not None and key not in rows}
        if todo:
            self._build(rows, cached, errors, todo, progress, workers, device)
            rows, cached, errors = self._read()
        failed = {i: missing.get(i) or errors[key] for i, key in enumerate(keys) if i in missing or key in errors}
        shape = (len(self.config.channels), self.config.height, frames(self.config))
        if missing:  # only when skipping: zero rows for files that do not exist
            return np.stack([np.zeros(shape, np.float16) if key is None else cached[rows[key]] for key in keys]), failed
        picked = np.array([rows[k] for k in keys], dtype=np.int64)
        if len(picked) and (picked == np.arange(picked[0], picked[0] + len(picked))).all():
            return cached[picked[0] : picked[0] + len(picked)], failed
        return (np.asarray(cached[picked]) if len(picked) else np.zeros((0, *shape), np.float16)), failed

    def _remove_leftovers(self) -> None:
        """Delete the temporary arrays of builds whose process is gone (killed mid-build)."""
        for path in self.dir.glob(".features-*.tmp.npy"):
            match = self._LEFTOVER.match(path.name)
            if match and not _alive(int(match.group(1))):
                path.unlink(missing_ok=True)

    def _build(self, rows: dict[str, int], cached: np.ndarray | None, errors: dict[str, str], todo: dict, progress: bool, workers: int | None, device) -> None:
        c = self.config
        self._remove_leftovers()
        items = list(todo.items())
        jobs = [job for _, job in items]
        all_keys = list(rows) + list(todo)
        errors = dict(errors)
        name = f"features-{len(all_keys)}-{os.getpid()}.npy"
        if workers is None:
            augmented = sum(1 for job in jobs if job[3])
            workers = (os.cpu_count() or 1) if augmented >= self.POOL_MIN_AUGMENTED else 1
        workers = min(workers, len(jobs))
        n_samples = samples(c)
        started = time.monotonic()
        # disable=None: tqdm draws no bar when stderr is not a terminal (logs); the closing line below reports the stage instead
        bar = tqdm(total=len(jobs), desc="render features", unit="clip", disable=None if progress else True)
        as_line = progress and bar.disable  # read now: close() sets disable
        with atomic.atomic_path(self.dir / name) as tmp, contextlib.ExitStack() as stack:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(all_keys), len(c.channels), c.height, frames(c)))
            for start in range(0, len(rows), self.CHUNK):
                stop = min(start + self.CHUNK, len(rows))
                out[start:stop] = cached[start:stop]
            pool = stack.enter_context(worker_pool(workers)) if workers > 1 else None
            chunks = [items[start : start + self.CHUNK] for start in range(0, len(items), self.CHUNK)]
            load = (
                (lambda chunk: pool.map(_load_one, [job for _, job in chunk], chunksize=4))
                if pool
                else (lambda chunk: map(_load_one, [job for _, job in chunk]))
            )
            pending, row = load(chunks[0]), len(rows)
            for chunk, following in zip(chunks, [*chunks[1:], None]):
                current, pending = pending, (load(following) if following else None)  # the workers load the next chunk meanwhile
                loaded = list(current)
                for (key, _), (_, error) in zip(chunk, loaded):
                    if error is not None:
                        errors[key] = error
                images = model_inputs([np.zeros(n_samples, np.float32) if wave is None else wave for wave, _ in loaded], c, device)
                images[[wave is None for wave, _ in loaded]] = 0.0
                out[row : row + len(images)] = images
                row += len(images)
                bar.update(len(images))
            out.flush()
            del out
        bar.close()
        atomic.write_json(self.dir / "index.json", {"config": c.__dict__, "array": name, "keys": all_keys, "errors": errors})
        for path in self.dir.glob("features-*.npy"):  # the superseded array, and any a crashed build left unindexed
            if path.name != name:
                path.unlink(missing_ok=True)
        if as_line:
            tqdm.write(f"render features: {len(jobs)} clips in {time.monotonic() - started:.1f} s")


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (signal 0 probes without signalling)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
