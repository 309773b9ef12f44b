"""Feature rendering: a clip becomes an image of shape ``(channels, height, frames)`` in [0, 1], cached.

Channels share one STFT, hence one time axis:

- ``mel``: log-Mel power, ``librosa.feature.melspectrogram`` + ``power_to_db`` (ref = clip peak).
- ``chroma``: chromagram, ``librosa.feature.chroma_stft`` with ``tuning=0`` (12 pitch classes).
- ``stft``: log-STFT magnitude, ``amplitude_to_db`` (ref = clip peak).
- ``mfcc``: ``librosa.feature.mfcc`` of the log-Mel, min-max scaled per clip.

Log channels span ``top_db`` dB and are mapped linearly to [0, 1]; chroma is already in [0, 1]
(each frame divided by its maximum). Every channel is resized along frequency to ``height`` rows:
bilinear with anti-aliasing, except chroma, which is repeated (nearest) because its 12 rows are
pitch classes, not a continuous axis. The backbone's ImageNet mean/std is applied later, on the batch.

The cache holds one float16 array per competition folder and feature setting
(``<competition>/.ens_cache/<FeatureConfig.key()>/``) and an index of the clips in it, keyed by
path, size and modification time; clips already in it are never rendered again.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import librosa
import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from . import atomic, audio
from .augment import augment_waveform
from .recipe import AugmentConfig, FeatureConfig


def frames(config: FeatureConfig) -> int:
    """Number of STFT frames (image width) of a clip: ``1 + samples // hop_length`` (centred STFT)."""
    return 1 + int(round(config.duration * config.sample_rate)) // config.hop_length


def _resize(rows: np.ndarray, height: int, nearest: bool) -> np.ndarray:
    tensor = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))[None, None]
    if nearest:
        out = F.interpolate(tensor, size=(height, rows.shape[1]), mode="nearest")
    else:
        out = F.interpolate(tensor, size=(height, rows.shape[1]), mode="bilinear", align_corners=False, antialias=True)
    return out[0, 0].numpy()


def render(y: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """Render a waveform into the image described by ``config``.

    Args:
        y: float32 waveform of shape ``(samples,)`` at ``config.sample_rate`` Hz.

    Returns:
        float32 array ``(len(config.channels), config.height, 1 + samples // hop_length)`` in [0, 1],
        channels in the order of ``config.channels``.
    """
    c = config
    magnitude = np.abs(librosa.stft(y, n_fft=c.n_fft, hop_length=c.hop_length, center=True))
    power = magnitude**2
    fmax = c.fmax or c.sample_rate / 2
    mel_db = None

    def log_mel() -> np.ndarray:
        nonlocal mel_db
        if mel_db is None:
            mel = librosa.feature.melspectrogram(S=power, sr=c.sample_rate, n_mels=c.n_mels, fmin=c.fmin, fmax=fmax)
            mel_db = librosa.power_to_db(mel, ref=np.max, top_db=c.top_db)
        return mel_db

    images = []
    for name in c.channels:
        if name == "mel":
            rows, nearest = (log_mel() + c.top_db) / c.top_db, False
        elif name == "stft":
            rows, nearest = (librosa.amplitude_to_db(magnitude, ref=np.max, top_db=c.top_db) + c.top_db) / c.top_db, False
        elif name == "chroma":
            rows, nearest = librosa.feature.chroma_stft(S=power, sr=c.sample_rate, tuning=0.0, n_fft=c.n_fft), True
        elif name == "mfcc":
            mfcc = librosa.feature.mfcc(S=log_mel(), n_mfcc=c.n_mfcc)
            span = mfcc.max() - mfcc.min()
            rows, nearest = (mfcc - mfcc.min()) / (span if span > 0 else 1.0), False
        else:  # validated by the recipe
            raise ValueError(f"unknown channel {name!r}")
        images.append(_resize(rows, c.height, nearest))
    return np.clip(np.stack(images), 0.0, 1.0).astype(np.float32)


def render_file(path: str | os.PathLike, config: FeatureConfig, augment: AugmentConfig | None = None, copy: int = 0) -> np.ndarray:
    """:func:`audio.load`, then for ``copy >= 1`` augmented copy number ``copy`` of the waveform
    (:func:`ensemble.augment.augment_waveform`, seeded by file name and copy, so reproducible),
    then :func:`render`. Raises :class:`audio.AudioError` naming the file."""
    y = audio.load(path, config.sample_rate, config.duration, config.trim_db)
    if copy:
        seed = zlib.crc32(f"{Path(path).name}|{copy}|{augment.waveform_key()}".encode())
        y = augment_waveform(y, config.sample_rate, augment, seed)
    return render(y, config)


def _render_one(job) -> np.ndarray:
    path, config, augment, copy = job
    with threadpool_limits(1):  # one BLAS thread per worker (librosa's mel matmul)
        return render_file(path, config, augment, copy).astype(np.float16)


def _clip_key(path: Path, augment: AugmentConfig | None, copy: int) -> str:
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return f"{key}|aug{copy}:{augment.waveform_key()}" if copy else key


class FeatureCache:
    """One feature setting's cache: ``index.json`` (clip keys and the array's file name) + a ``.npy`` array.

    The index is written last and atomically, so a crash leaves either the old or the new cache,
    never a partial one.
    """

    def __init__(self, root: str | os.PathLike, config: FeatureConfig):
        self.config = config
        self.dir = Path(root) / config.key()

    def _read(self) -> tuple[dict[str, int], np.ndarray | None, str | None]:
        """Cached clip keys -> row, the memory-mapped array, and the array's file name."""
        index_path = self.dir / "index.json"
        if not index_path.exists():
            return {}, None, None
        index = json.loads(index_path.read_text())
        array = np.load(self.dir / index["array"], mmap_mode="r")
        return {key: row for row, key in enumerate(index["keys"])}, array, index["array"]

    def get(self, paths: list[Path], progress: bool = True, augment: AugmentConfig | None = None, copy: int = 0,
            workers: int | None = None) -> np.ndarray:
        """Images of ``paths``, rendering (and adding to the cache) only clips not cached yet.

        Args:
            paths: audio files.
            augment, copy: ``copy = 0`` is the clean rendering; ``copy = k >= 1`` the k-th augmented
                rendering under ``augment``'s waveform settings (cached separately per setting).
            workers: rendering processes (default: one per CPU core); 1 renders in this process.

        Returns:
            float16 array ``(len(paths), channels, height, frames)``.

        Raises:
            AudioError: a clip cannot be loaded; nothing is added to the cache then.
        """
        paths = [Path(p) for p in paths]
        for p in paths:
            if not p.is_file():
                raise audio.AudioError(f"{p}: audio file does not exist; check the path column and [competition].audio_root.")
        keys = [_clip_key(p, augment, copy) for p in paths]
        rows, cached, old_array = self._read()
        todo = sorted({k: p for k, p in zip(keys, paths) if k not in rows}.items())
        if todo:
            jobs = [(p, self.config, augment, copy) for _, p in todo]
            workers = min(workers or os.cpu_count() or 1, len(jobs))
            desc = f"render features{f' (augmented copy {copy})' if copy else ''}"
            if workers > 1:
                with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                    images = list(tqdm(pool.map(_render_one, jobs, chunksize=16), total=len(jobs), desc=desc, unit="clip", disable=not progress))
            else:
                images = [_render_one(job) for job in tqdm(jobs, desc=desc, unit="clip", disable=not progress)]
            fresh = np.stack(images)
            old_keys = list(rows)
            merged = fresh if cached is None else np.concatenate([np.asarray(cached), fresh])
            all_keys = old_keys + [k for k, _ in todo]
            name = f"features-{len(all_keys)}-{os.getpid()}.npy"
            with atomic.atomic_path(self.dir / name) as tmp:
                np.save(tmp, merged)
            atomic.write_json(self.dir / "index.json", {"config": self.config.__dict__, "array": name, "keys": all_keys})
            if old_array and old_array != name:
                (self.dir / old_array).unlink(missing_ok=True)
            rows, cached, _ = self._read()
        return np.asarray(cached[[rows[k] for k in keys]])
