"""Decoders that complain on C stderr: MPEG audio read quietly, its complaints listed once per file.

libsndfile (through ``soundfile``) decodes MP3 files, and MPEG Layer III data inside a RIFF/WAVE
``.wav`` (format tag 0x55), with libmpg123. libmpg123 writes its notes straight to the C stream
``stderr`` (file descriptor 2) unless its ``MPG123_QUIET`` flag is set, which libsndfile does not
set and ``soundfile`` cannot reach: a stream with junk between frames prints, per damaged spot,
``Note: Illegal Audio-MPEG-Header 0x... at offset ...``, ``Note: Trying to resync...`` and
``Note: Skipped ... bytes in input.`` (and ``Warning: Xing stream size off by more than 1%`` at
every seek). Python's ``sys.stderr`` never sees these lines, so neither ``warnings`` nor
``contextlib.redirect_stderr`` can catch them: :func:`captured` points descriptor 2 at a
temporary file while such a file is decoded, and :func:`quiet` turns what was written there into
one :class:`DecoderWarning` per file and process, naming the file, the number of lines and the first.

Only files whose first bytes say MPEG (:func:`is_mpeg`) are captured: the redirection is
process-wide, so whatever another thread writes to descriptor 2 meanwhile (a progress bar) is
caught with the decoder's lines; one capture runs at a time (a lock).
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

_LOCK = threading.Lock()
_REPORTED: set[str] = set()
_MPEG_TAGS = (0x50, 0x55)
"""WAVE format tags of MPEG audio: 0x50 (MPEG-1 Layer I/II) and 0x55 (MPEG Layer III), Microsoft's mmreg.h."""
HEAD = 4096
"""Bytes read to tell the container (:func:`is_mpeg`)."""


class DecoderWarning(UserWarning):
    """A file was read, but its decoder complained (on C stderr, caught): the file is named once per process."""


@dataclass
class Captured:
    """What descriptor 2 received inside :func:`captured` (``text``, set when the block ends); in
    :func:`quiet`, also the seconds the file's header lists and those the reader says it decoded
    (``decoded``, set by the reader inside the block), None when unknown."""

    text: str = ""
    listed: float | None = None
    decoded: float | None = None

    @property
    def lines(self) -> list[str]:
        """The non-empty lines of :attr:`text`."""
        return [line.strip() for line in self.text.splitlines() if line.strip()]


def is_mpeg(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds MPEG audio by its first :data:`HEAD` bytes: an ID3 tag, an MPEG frame
    sync (11 set bits), or a RIFF/WAVE file whose ``fmt`` chunk has an MPEG format tag
    (:data:`_MPEG_TAGS`). A file that cannot be opened is not MPEG (the reader names its problem)."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD)
    except OSError:
        return False
    if head[:3] == b"ID3" or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return True
    if head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
        return False
    order = "<" if head[:4] == b"RIFF" else ">"
    at = 12
    while at + 10 <= len(head):
        chunk, size = head[at : at + 4], struct.unpack(order + "I", head[at + 4 : at + 8])[0]
        if chunk == b"fmt ":
            return struct.unpack(order + "H", head[at + 8 : at + 10])[0] in _MPEG_TAGS
        at += 8 + size + (size & 1)
    return False


@contextlib.contextmanager
def captured() -> Iterator[Captured]:
    """Descriptor 2 (C ``stderr``) pointed at a temporary file for the block; yields a
    :class:`Captured` whose ``text`` is what was written there once the block ends. Python's own
    ``sys.stderr`` is flushed first, so nothing printed before the block is caught."""
    box = Captured()
    with _LOCK:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            with tempfile.TemporaryFile() as tmp:
                os.dup2(tmp.fileno(), 2)
                try:
                    yield box
                finally:
                    os.dup2(saved, 2)
                    tmp.seek(0)
                    box.text = tmp.read().decode("utf-8", errors="replace")
        finally:
            os.close(saved)


@contextlib.contextmanager
def quiet(path: str | os.PathLike) -> Iterator[Captured]:
    """Read ``path`` in the block: an MPEG file (:func:`is_mpeg`) with descriptor 2 captured
    (:func:`captured`) and, when its decoder wrote anything, one :class:`DecoderWarning` the first
    time this process reads it (later reads of the same file are quiet), saying how much of the
    length its header lists was decoded when the reader sets ``decoded``; any other file as it is.
    Yields a :class:`Captured` (the reader may set ``decoded``, in seconds)."""
    if not is_mpeg(path):
        yield Captured()
        return
    with captured() as noise:
        try:
            import soundfile

            noise.listed = soundfile.info(str(path)).duration
        except (RuntimeError, OSError):
            pass  # the reader names the problem
        yield noise
    lines = noise.lines
    key = os.path.abspath(path)
    if lines and key not in _REPORTED:
        _REPORTED.add(key)
        length = ""
        if noise.listed and noise.decoded is not None:
            length = f"; {noise.decoded:.2f} s decoded of the {noise.listed:.2f} s its header lists"
        warnings.warn(
            f"{path}: read, but its MPEG decoder (libmpg123, through libsndfile) complained in {len(lines)} line(s), "
            f"first {lines[0]!r}{length}: the stream holds damaged or foreign bytes, and the decoder drops what it cannot "
            "resynchronise on. Re-encode the file (e.g. to FLAC) to read it whole and quietly. Listed once per file.",
            DecoderWarning,
            stacklevel=3,
        )
