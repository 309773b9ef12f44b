"""Crashes and full disks never leave a partial result: the feature cache under SIGKILL, writes under
ENOSPC / EDQUOT / EFBIG; ens train names --resume when it starts an interrupted run afresh, and --resume continues it."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from ensemble.cli import app
from ensemble.core import atomic
from ensemble.core.recipe import FeatureConfig
from ensemble.inputs import features
from ensemble.store import runs as run_store

from .conftest import RAVDESS

CLIPS = sorted(RAVDESS.glob("Actor_0[1-4]/*.flac"))  # 240 real clips
CONFIG = FeatureConfig(duration=2.0, height=32, hop_length=640)
BUILD = """
import sys
from pathlib import Path
from ensemble.inputs import features
from ensemble.core.recipe import FeatureConfig
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


FULL = {"ENOSPC": errno.ENOSPC, "EDQUOT": errno.EDQUOT, "EFBIG": errno.EFBIG}  # full disk, quota, file-size limit


@pytest.mark.parametrize("where", ["fsync", "writer"])
@pytest.mark.parametrize("name", list(FULL))
def test_full_disk_keeps_the_previous_file_and_names_it(tmp_path, monkeypatch, name, where):
    code = FULL[name]
    target = tmp_path / "submission.csv"
    atomic.write_text(target, "id,label\n1,calm\n")

    def full(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    if where == "fsync":
        monkeypatch.setattr(atomic.os, "fsync", full)  # the disk fills up while the new file is flushed
    else:
        monkeypatch.setattr(pd.DataFrame, "to_csv", full)  # the writer itself hits the limit mid-file
    with pytest.raises(OSError) as caught:
        atomic.write_csv(target, pd.DataFrame({"id": [1], "label": ["sad"]}))
    assert caught.value.errno == code
    fix = "Raise the file-size limit (ulimit -f) or write to another file system" if name == "EFBIG" else f"Free space on {tmp_path}"
    assert str(caught.value) == (f"[Errno {code}] {os.strerror(code)} while writing {target}; the previous file is kept. {fix} and run again.")
    assert target.read_text() == "id,label\n1,calm\n"
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]  # no temporary left behind
    monkeypatch.undo()
    new = tmp_path / "new.csv"  # nothing there before: the message says so
    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(OSError, match=f"while writing {new}; nothing was written"):
        atomic.write_text(new, "id\n")
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]


def test_other_os_errors_pass_through_unchanged(tmp_path, monkeypatch):
    target = tmp_path / "a.txt"
    atomic.write_text(target, "old")

    def eio(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(atomic.os, "fsync", eio)
    with pytest.raises(OSError) as caught:
        atomic.write_text(target, "new")
    assert caught.value.errno == errno.EIO and str(caught.value) == "[Errno 5] Input/output error"
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


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


class Crash(Exception):
    """Stands in for the process dying (kill -9, power cut) right after a checkpoint is written."""


def test_ens_train_names_resume_when_it_starts_an_interrupted_run_afresh_and_resume_continues(tiny_trained, tmp_path, monkeypatch):
    """Through the CLI: a run stopped after epoch 1's checkpoint is started afresh without --resume
    (all 3 epochs again, and ens train says so naming --resume); stopped again, --resume trains
    only epochs 2 and 3 and ends with the same weights, tables and log as the uninterrupted run."""
    from safetensors.numpy import load_file

    from ensemble.members import image_fit

    from .conftest import cli_ok, copy_tiny_runs

    recipe = copy_tiny_runs(tiny_trained, tmp_path, blend=False)
    run = tmp_path / "runs" / "tiny" / "test_resnet" / "fold0"
    args = ["train", "--recipe", str(recipe), "--backbone", "test_resnet", "--fold", "0", "--epochs", "3", "--quiet"]
    saved, crash_now, real_save = [], [], image_fit.torch.save

    def save_then_crash_at_epoch_2(obj, f):
        real_save(obj, f)
        saved.append(obj["epoch"])
        if obj["epoch"] == 2 and crash_now:
            crash_now.clear()
            raise Crash  # inside atomic_path: epoch 2's checkpoint is dropped, epoch 1's stays

    def interrupted():
        (run / "metrics.json").unlink()  # unfinished: this fold is trained again, with 3 epochs
        crash_now.append(True)
        crashed = CliRunner().invoke(app, args)
        assert isinstance(crashed.exception, Crash), crashed.output
        assert "--resume" not in crashed.output  # no checkpoint yet when it started
        assert torch_load_epoch(run / run_store.CHECKPOINT) == 1 and not (run / "metrics.json").exists()
        saved.clear()

    def outputs():
        log = pd.read_csv(run / "log.csv").drop(columns=["train_img_per_s", "seconds"])
        return pd.read_csv(run / "oof.csv"), pd.read_csv(run / "test.csv"), log, load_file(run / "model.safetensors")

    monkeypatch.setattr(image_fit.torch, "save", save_then_crash_at_epoch_2)
    interrupted()
    output = cli_ok(args)
    assert "test_resnet fold 0: starting afresh; pass --resume to continue the interrupted run from its checkpoint." in output
    assert saved == [1, 2, 3]  # every epoch again, not from epoch 2
    assert (run / "metrics.json").exists() and not (run / run_store.CHECKPOINT).exists()
    uninterrupted = outputs()
    assert len(uninterrupted[2]) == 3

    interrupted()
    output = cli_ok(args + ["--resume"])
    assert saved == [2, 3] and "starting afresh" not in output  # continued from the checkpoint
    assert (run / "metrics.json").exists() and not (run / run_store.CHECKPOINT).exists()
    resumed = outputs()
    for a, b in zip(resumed[:3], uninterrupted[:3]):
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert resumed[3].keys() == uninterrupted[3].keys() and all(np.array_equal(resumed[3][k], uninterrupted[3][k]) for k in resumed[3])

    again = cli_ok(args)  # finished: skipped, and nothing said about --resume
    assert "already finished, skipped" in again and "--resume" not in again


def torch_load_epoch(path) -> int:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)["epoch"]
