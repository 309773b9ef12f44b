"""What every corpus builder does with files: fetch its public archive (or say how to go without one)
and place its clips in a competition folder."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from ...core.errors import EnsError, Param


@contextlib.contextmanager
def fetched(url: str, dest: Path, corpus: str, local_copy: str, error: type[EnsError], timeout: float = 30.0) -> Iterator[Path]:
    """The archive at ``url`` downloaded into a scratch folder under ``dest`` (created if needed), for the
    ``with`` block to unpack; the scratch folder and the archive are removed afterwards.

    Raises:
        error: the archive could not be fetched (offline, or the host refused); the message names
            ``corpus`` and ``url`` and says to pass ``--source DIR`` with ``local_copy`` (what that folder holds).
    """
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        archive = Path(tmp) / "archive.zip"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(archive, "wb") as fh:
                shutil.copyfileobj(response, fh)
        except (urllib.error.URLError, OSError) as err:
            raise error(
                f"could not download {corpus} from {url} ({err}); this machine may be offline. Pass ",
                Param("source", shown="DIR"),
                f" with a local copy ({local_copy}).",
            ) from err
        yield archive


def place(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (same file system) or copy it, replacing ``dst``."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
