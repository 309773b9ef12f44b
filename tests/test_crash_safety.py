"""Crashes and full disks never leave a partial result: the feature cache under SIGKILL, writes under ENOSPC."""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from ensemble import atomic, features
from ensemble.cli import app
from ensemble.recipe import FeatureConfig

from .conftest import RAVDESS

CLIPS = sorted(RAVDESS.glob("Actor_0[1-4]/*.flac"))  # 240 real clips
CONFIG = FeatureConfig(duration=2.0, height=32, hop_length=640)
BUILD = """
import sys
from pathlib import Path
from ensemble import features
from ensemble.recipe import FeatureConfig
paths = [Path(line) for line in sys.stdin.read().split()]
features.FeatureCache(sys.argv[1], FeatureConfig(duration=2.0, height=32, hop_length=640)).get(paths, progress=False)
"""


def test_sigkill_while_growing_the_cache_keeps_the_old_cache_and_the_next_build_completes(tmp_path):
    cache = features.FeatureCache(tmp_path, CONFIG)
    before = np.array(cache.get(CLIPS[:8], progress=False))

    process = subprocess.Popen([sys.executable, "-c", BUILD, str(tmp_path)], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdin.write("\n".join(map(str, CLIPS)).encode())
    process.stdin.close()
    deadline = time.time() + 300
    while not list(cache.dir.glob(".features-*.tmp.npy")):  # the build has started writing its new array
        assert process.poll() is None, process.stderr.read().decode()
        assert time.time() < deadline, "the build never started"
        time.sleep(0.005)
    time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL

    leftovers = list(cache.dir.glob(".features-*.tmp.npy"))
    assert leftovers, "the build finished before it was killed"
    index = json.loads((cache.dir / "index.json").read_text())
    assert len(index["keys"]) == 8  # the old index, pointing at the old, complete array
    np.testing.assert_array_equal(cache.get(CLIPS[:8], progress=False), before)

    grown = cache.get(CLIPS, progress=False)  # renders the 232 missing clips
    assert not list(cache.dir.glob(".features-*.tmp.npy"))  # the killed build's temporary array is deleted
    assert len(list(cache.dir.glob("features-*.npy"))) == 1
    np.testing.assert_array_equal(grown[:8], before)
    fresh = features.FeatureCache(tmp_path / "fresh", CONFIG).get(CLIPS[::40], progress=False)
    np.testing.assert_array_equal(grown[::40], fresh)


@pytest.mark.parametrize("damage", ["array deleted", "array truncated", "index not json"])
def test_a_damaged_cache_is_rendered_again_with_a_warning(tmp_path, damage):
    cache = features.FeatureCache(tmp_path, CONFIG)
    first = np.array(cache.get(CLIPS[:3], progress=False))
    array = next(cache.dir.glob("features-*.npy"))
    if damage == "array deleted":
        array.unlink()
    elif damage == "array truncated":
        array.write_bytes(array.read_bytes()[:1000])
    else:
        (cache.dir / "index.json").write_text("{not json")
    with pytest.warns(UserWarning, match="feature cache is unreadable"):
        again = cache.get(CLIPS[:3], progress=False)
    np.testing.assert_array_equal(again, first)


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_keeps_the_previous_file_and_names_it(tmp_path, monkeypatch):
    target = tmp_path / "submission.csv"
    atomic.write_text(target, "id,label\n1,calm\n")
    monkeypatch.setattr(atomic.os, "fsync", _enospc)  # the disk fills up while the new file is flushed
    with pytest.raises(OSError, match=r"No space left on device while writing .*submission.csv; the previous file is kept"):
        atomic.write_csv(target, pd.DataFrame({"id": [1], "label": ["sad"]}))
    assert target.read_text() == "id,label\n1,calm\n"
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]  # no temporary left behind


def test_ens_blend_on_a_full_disk_is_a_clean_error_that_keeps_the_previous_submission(tmp_path, monkeypatch, small_source, tiny_recipe_text):
    from .conftest import cli_ok, tiny_competition

    recipe = tiny_competition(tmp_path / "tiny.toml", tiny_recipe_text(tmp_path / "comp", tmp_path / "runs", tmp_path / "subs"), small_source)
    cli_ok(["train", "--recipe", str(recipe), "--backbone", "test_resnet", "--quiet"])
    cli_ok(["blend", "--recipe", str(recipe), "--backbone", "test_resnet", "--name", "sub"])
    before = (tmp_path / "subs" / "sub.csv").read_text()
    monkeypatch.setattr(atomic.os, "fsync", _enospc)
    result = CliRunner().invoke(app, ["blend", "--recipe", str(recipe), "--backbone", "test_resnet", "--name", "sub", "--method", "mean"])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "No space left on device while writing" in result.output and "previous file is kept" in result.output
    assert (tmp_path / "subs" / "sub.csv").read_text() == before
