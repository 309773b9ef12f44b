import os
import stat

import pandas as pd
import pytest

from ensemble.core import atomic


def test_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "oof.csv"
    atomic.write_csv(target, pd.DataFrame({"id": ["a"], "p": [0.5]}))
    before = target.read_text()

    class Boom(pd.DataFrame):
        def to_csv(self, fh, **kwargs):
            fh.write("id,p\nhalf")
            raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic.write_csv(target, Boom({"id": ["b"]}))
    assert target.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["oof.csv"]


def test_atomic_path_keeps_suffix_for_writers_that_append_one(tmp_path):
    with atomic.atomic_path(tmp_path / "features.npy") as tmp:
        assert tmp.suffix == ".npy" and tmp.parent == tmp_path
        tmp.write_bytes(b"x")
    assert (tmp_path / "features.npy").read_bytes() == b"x"


def test_atomic_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic.write_text(tmp_path / "a.txt", "x")
        (tmp_path / "b.txt").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o644
