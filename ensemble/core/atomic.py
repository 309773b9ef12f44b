"""Atomic file writes: a crash or a full disk leaves the previous file intact, never half a file.

Every write goes to a temporary file in the destination's folder, is flushed and fsync'ed, and
then replaces the destination with :func:`os.replace` (atomic on POSIX and Windows).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it onto ``path``, else delete it.

    Use for writers that want a file name (``numpy.save``, ``safetensors.torch.save_file``).
    The temporary name keeps the destination's suffix so such writers do not append their own.

    Raises:
        OSError: a full disk, quota or file-size limit (ENOSPC, EDQUOT, EFBIG) is re-raised with a
            message naming ``path`` and saying the previous file is kept; other OS errors as they are.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f"{path.suffix}.tmp{path.suffix}")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would have
        os.replace(tmp_path, path)
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            kept = "the previous file is kept" if path.exists() else "nothing was written"
            fix = (
                "Raise the file-size limit (ulimit -f) or write to another file system" if err.errno == errno.EFBIG else f"Free space on {path.parent}"
            ) + " and run again."
            raise OSError(err.errno, f"{os.strerror(err.errno)} while writing {path}; {kept}. {fix}") from err
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file for writing that atomically becomes ``path`` when the block exits cleanly."""
    with atomic_path(path) as tmp, open(tmp, mode) as fh:
        yield fh


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def write_json(path: str | os.PathLike, obj) -> None:
    """Atomically write ``obj`` as indented JSON to ``path``."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_csv(path: str | os.PathLike, frame) -> None:
    """Atomically write a pandas DataFrame to ``path`` without its index."""
    with atomic_open(path, "w") as fh:
        frame.to_csv(fh, index=False)
