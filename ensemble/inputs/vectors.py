"""One fixed-length vector per audio file, computed once and kept on disk.

:class:`VectorCache` is the cache behind every per-clip vector ens computes from a whole clip:
the voice embeddings of :mod:`ensemble.speaker.speakers` (``EmbeddingCache``) and the acoustic functionals
of :mod:`ensemble.members.functionals` (``FunctionalsCache``). It loads each clip with
:func:`ensemble.inputs.audio.load_trimmed`, calls an extractor on the waveform and stores the float32
result, keyed by the file (resolved path, size, modification time), the extractor's identity and
the loading settings. Feature images, which have a time axis, live in ``features.FeatureCache``.
"""

from __future__ import annotations

import os
import re
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..core import atomic
from ..core.errors import EnsError
from ..core.threads import thread_map
from . import audio

Compute = Callable[[np.ndarray, int], np.ndarray]
"""An extractor: ``compute(waveform, sample_rate)`` with ``waveform`` float32 ``(samples,)`` at
``sample_rate`` Hz, returning one float vector ``(size,)``."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


class VectorError(EnsError, ValueError):
    """A vector cache is set up wrongly, or its extractor returned something else than one finite vector of the declared size."""


def clip_key(path: Path) -> str:
    """A clip's identity in a cache, as the feature cache keys clips: resolved path, size, modification time (ns)."""
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


class VectorCache:
    """Vectors of audio files, computed once: ``compute`` of :func:`ensemble.inputs.audio.load_trimmed`.

    One ``.npz`` file per extractor and loading setting, ``<root>/<name>-<rate>hz-trim<dB>.npz``
    (``keys``: each clip's resolved path, size and modification time; ``vectors``: float32
    ``(clips, size)``), replaced atomically (:mod:`ensemble.core.atomic`) after every :attr:`SAVE_EVERY`
    new clips and when computing stops (also on an error), so an interrupted run keeps what it
    computed. A changed file (size or modification time) is computed again; another ``name``
    (extractor version or settings) or loading setting writes another file. An unreadable cache
    file is computed again, with a warning. One process writes a cache at a time.

    Args:
        root: the folder of the cache files, e.g. ``<competition>/.ens_cache/voices``.
        name: the extractor's identity, settings and version included (e.g.
            ``opensmile-2.6.0-ComParE_2016``): a file-name stem of letters, digits and ``. _ + -``.
        size: the length of every vector, a positive integer.
        compute: the extractor (:data:`Compute`); whatever it raises reaches the caller, after
            the vectors computed before it are saved.
        label: the name of the work in the progress report (default: ``name``).
        threads: clips loaded and computed at once, on threads (:func:`ensemble.core.threads.thread_map`):
            for an extractor whose work releases the GIL (openSMILE's); 1: one after another.

    Raises:
        VectorError: ``name`` is not such a stem, or ``size`` is not a positive integer.
    """

    SAVE_EVERY = 64

    def __init__(self, root: str | os.PathLike, name: str, size: int, compute: Compute, label: str | None = None, threads: int = 1):
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise VectorError(f"name={name!r} cannot name a cache file; use letters, digits and '. _ + -', starting with a letter or digit.")
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
            raise VectorError(f"size={size!r} is not a vector length; pass a positive integer.")
        self.root = Path(root)
        self.name = name
        self.size = int(size)
        self.compute = compute
        self.label = label or name
        self.threads = threads

    def file(self, sample_rate: int, trim_db: float) -> Path:
        """The cache file of one loading setting."""
        return self.root / f"{self.name}-{sample_rate}hz-trim{trim_db:g}.npz"

    def get(self, paths: Sequence[str | os.PathLike], sample_rate: int, trim_db: float = 0.0, progress: bool = True) -> np.ndarray:
        """Vectors of ``paths``, computing (and adding to the cache) only clips not cached yet.

        Args:
            paths: audio files; one row each, in this order.
            sample_rate, trim_db: how each clip is loaded (:func:`ensemble.inputs.audio.load_trimmed`:
                resampled to ``sample_rate`` Hz, edges quieter than ``trim_db`` dB under the peak
                trimmed; 0 keeps everything); part of the cache file's name.
            progress: report the computing (nothing is reported when every clip is cached): tqdm's
                bar named ``label`` when stderr is a terminal, otherwise one line on stdout when it
                is done, ``<label>: <N> clips in <S> s``; False reports nothing.

        Returns:
            float32 ``(len(paths), size)``.

        Raises:
            AudioError: files that do not exist (before anything is computed) or cannot be loaded
                (after the others are computed and cached); the message names each file and its problem.
            VectorError: ``compute`` returned a vector of another shape, or with NaN / Inf (the
                message names the file).
            Whatever ``compute`` raises, e.g. on a clip it cannot describe.
        """
        paths = [Path(p) for p in paths]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise audio.AudioError(audio.error_list(dict.fromkeys(missing, "audio file does not exist"), "check the paths"))
        keys = [clip_key(p) for p in paths]
        file = self.file(sample_rate, trim_db)
        stored = self._read(file)
        todo = {key: path for key, path in zip(keys, paths) if key not in stored}
        failed = self._compute(file, stored, todo, sample_rate, trim_db, progress) if todo else {}
        if failed:
            raise audio.AudioError(audio.error_list(failed, "fix or remove these files"))
        return np.stack([stored[key] for key in keys]) if keys else np.zeros((0, self.size), np.float32)

    def missing(self, paths: Sequence[str | os.PathLike], sample_rate: int, trim_db: float = 0.0) -> list[Path]:
        """The files of ``paths`` that :meth:`get` would compute (not cached for this loading setting), in order."""
        stored = self._read(self.file(sample_rate, trim_db))
        return [Path(p) for p in paths if not Path(p).is_file() or clip_key(Path(p)) not in stored]

    def seconds_per_clip(self, path: str | os.PathLike, sample_rate: int, trim_db: float = 0.0, repeats: int = 2) -> float:
        """Wall seconds per clip as :meth:`get` computes them, for planning: the fastest of ``repeats``
        loads and computes of one clip (after one warm-up call, which pays the extractor's start-up)
        over :attr:`threads`, the clips computed at once; caches nothing.

        Raises:
            AudioError: the clip cannot be loaded. Whatever ``compute`` raises.
        """
        y, _ = audio.load_trimmed(path, sample_rate, trim_db)
        self.compute(y, sample_rate)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            self.compute(audio.load_trimmed(path, sample_rate, trim_db)[0], sample_rate)
            times.append(time.perf_counter() - started)
        return min(times) / self.threads

    def _read(self, file: Path) -> dict[str, np.ndarray]:
        """The cached vectors by clip key; empty when there is no cache file or it is unreadable."""
        if not file.exists():
            return {}
        try:
            with np.load(file, allow_pickle=False) as data:
                keys, vectors = data["keys"], data["vectors"]
            if vectors.shape != (len(keys), self.size):
                raise ValueError(f"vectors of shape {vectors.shape} for {len(keys)} clips, expected length {self.size}")
        except (OSError, ValueError, KeyError) as err:
            # stacklevel 4: the caller of the cache's owner (EmbeddingCache.get, FunctionalsCache.get)
            warnings.warn(f"{file}: the {self.name} cache is unreadable ({err!r}); computing it again.", stacklevel=4)
            return {}
        return dict(zip(keys.tolist(), vectors.astype(np.float32, copy=False)))

    def _compute(self, file: Path, stored: dict, todo: dict[str, Path], sample_rate: int, trim_db: float, progress: bool) -> dict[Path, str]:
        """Compute ``todo`` into ``stored``, saving as it goes; returns the files that could not be loaded -> problem."""
        failed: dict[Path, str] = {}
        started = time.monotonic()
        # disable=None: no bar when stderr is not a terminal (logs); the closing line reports the stage instead
        bar = tqdm(total=len(todo), desc=self.label, unit="clip", disable=None if progress else True)
        as_line = progress and bar.disable  # read now: close() sets disable
        unsaved = 0

        def one(job: tuple[str, Path]) -> tuple[str, Path, np.ndarray | None, str | None]:
            key, path = job
            try:
                y, _ = audio.load_trimmed(path, sample_rate, trim_db)
            except audio.AudioError as err:
                return key, path, None, str(err)
            return key, path, self._vector(y, sample_rate, path), None

        try:
            for key, path, vector, problem in thread_map(one, todo.items(), self.threads):
                if vector is None:
                    failed[path] = problem
                else:
                    stored[key] = vector
                    unsaved += 1
                bar.update(1)
                if unsaved == self.SAVE_EVERY:
                    self._write(file, stored)
                    unsaved = 0
        finally:
            if unsaved:
                self._write(file, stored)
            bar.close()
        if as_line:
            tqdm.write(f"{self.label}: {len(todo)} clips in {time.monotonic() - started:.1f} s")
        return failed

    def _vector(self, y: np.ndarray, sample_rate: int, path: Path) -> np.ndarray:
        """``compute`` of one clip, checked: float32 ``(size,)``, finite."""
        vector = np.asarray(self.compute(y, sample_rate), dtype=np.float32)
        if vector.shape != (self.size,):
            raise VectorError(f"{path}: the {self.name} extractor returned shape {vector.shape}, expected ({self.size},); fix the extractor or its size.")
        if not np.isfinite(vector).all():
            raise VectorError(f"{path}: the {self.name} extractor returned NaN or Inf; the clip cannot be described by it, drop it or fix the extractor.")
        return vector

    @staticmethod
    def _write(file: Path, stored: dict[str, np.ndarray]) -> None:
        with atomic.atomic_path(file) as tmp:
            np.savez(tmp, keys=np.array(list(stored), dtype=str), vectors=np.stack(list(stored.values())).astype(np.float32))
