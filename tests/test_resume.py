"""Determinism and crash recovery of training: a real `ens train` process killed with SIGKILL
mid-run, then `ens train --resume`, ends with the same predictions as an uninterrupted run.

The recipe's seed is one whose best epoch comes after the resume points (:data:`SELECTED`), so the
weights, tables and metrics compared are made by training after the resume (or restored at it
and kept to the end), not epoch 1's."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.numpy import load_file
from typer.testing import CliRunner

from ensemble.cli import app
from ensemble.core import recipe as recipe_mod
from ensemble.members import checkpoint as checkpoint_mod
from ensemble.members import data as data_mod
from ensemble.members import image_fit
from ensemble.members.checkpoint import Checkpoint
from ensemble.store import runs as run_store

from .conftest import cli_ok, killed_after_first_epoch, tiny_competition

# every random part of training is on: waveform copies, SpecAugment, time roll, mixup, an
# albumentations transform, dropout, EMA, label smoothing and balanced class weights
AUGMENTED = """
[augment]
copies = 1
freq_mask = 4
time_mask = 6
time_roll = 0.1
mixup_alpha = 0.4
image = [{ name = "GaussNoise", p = 0.5 }]
[train]
epochs = 4
batch_size = 8
pretrained = false
drop_rate = 0.2
ema_decay = 0.9
class_weights = "balanced"
seed = 7
"""
EPOCHS = 4
# which epochs improve the fold's UAR in the uninterrupted run (a premise of every resume test here,
# checked by `uninterrupted`): epoch 3 beats epoch 1, epochs 2 and 4 do not, so a resume after
# epoch 1 or 2 must train the best weights itself, and one at epoch 3 must keep the restored ones
SELECTED = [True, False, True, False]
BEST = 3
RUN = ["--backbone", "test_efficientnet", "--fold", "0", "--quiet"]


def _recipe(tmp_path, text: str, runs: str):
    path = tmp_path / f"{runs}.toml"
    path.write_text(text.replace(str(tmp_path / "runs"), str(tmp_path / runs)))
    return path


@pytest.fixture(scope="module")
def setup(small_source, tiny_recipe_text, tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    text = tiny_recipe_text(root / "comp", root / "runs", root / "subs").split("[train]")[0] + AUGMENTED
    tiny_competition(root / "base.toml", text, small_source)  # builds the competition and its cache once
    return root, text


def _run_dir(recipe_path):
    return run_store.run_dir(recipe_mod.load(recipe_path), "test_efficientnet", 0)


def _outputs(run):
    log = pd.read_csv(run / "log.csv").drop(columns=["train_img_per_s", "seconds"])
    return pd.read_csv(run / "oof.csv"), pd.read_csv(run / "test.csv"), log, load_file(run / "model.safetensors")


def _assert_same(a, b):
    for x, y in zip(a[:3], b[:3]):
        pd.testing.assert_frame_equal(x, y, check_exact=True)
    assert a[3].keys() == b[3].keys() and all(np.array_equal(a[3][k], b[3][k]) for k in a[3])


@pytest.fixture(scope="module")
def uninterrupted(setup):
    """The outputs of an uninterrupted run of the resume recipe, the reference of every test here."""
    root, text = setup
    path = _recipe(root, text, "uninterrupted")
    cli_ok(["train", "--recipe", str(path), *RUN])
    run = _run_dir(path)
    assert not (run / run_store.CHECKPOINT).exists()  # a finished run keeps no checkpoint
    outputs = _outputs(run)
    assert outputs[2]["selected"].tolist() == SELECTED, f"premise: seed 7 no longer makes epoch {BEST} the best\n{outputs[2]}"
    assert Checkpoint(run, {}, "").saved_epoch() == BEST and json.loads((run / "metrics.json").read_text())["epoch"] == BEST
    return outputs


def test_same_recipe_and_seed_give_identical_predictions(setup, uninterrupted):
    root, text = setup
    second = _recipe(root, text, "second")
    cli_ok(["train", "--recipe", str(second), *RUN])
    _assert_same(_outputs(_run_dir(second)), uninterrupted)


def test_sigkill_mid_training_then_resume_matches_an_uninterrupted_run(setup, uninterrupted):
    root, text = setup
    killed = _recipe(root, text, "killed")
    run = _run_dir(killed)
    killed_after_first_epoch(["train", "--recipe", str(killed), *RUN], run, timeout=300, env={**os.environ, "PYTHONHASHSEED": "0"})
    epochs_done = len(pd.read_csv(run / "log.csv"))
    assert 1 <= epochs_done < EPOCHS
    assert "best" not in torch.load(run / run_store.CHECKPOINT, weights_only=False)  # the best weights are in model.safetensors only

    # a checkpoint of another configuration is refused, not mixed in
    result = CliRunner().invoke(app, ["train", "--recipe", str(killed), *RUN, "--epochs", "5", "--resume"])
    assert result.exit_code == 2 and "different configuration" in result.output

    cli_ok(["train", "--recipe", str(killed), *RUN, "--resume"])
    assert (run / "metrics.json").exists() and not (run / run_store.CHECKPOINT).exists()
    _assert_same(_outputs(run), uninterrupted)


class Crash(Exception):
    pass


def test_without_resume_an_interrupted_run_starts_afresh(setup, monkeypatch):
    root, text = setup
    path = _recipe(root, text, "afresh")
    r = recipe_mod.load(path)
    data = data_mod.load_data(r, progress=False)
    saved, crashed = [], []
    real_save = image_fit.torch.save

    def save_then_crash_once_at_epoch_2(obj, f):
        real_save(obj, f)
        saved.append(obj["epoch"])
        if obj["epoch"] == 2 and not crashed:
            crashed.append(True)
            raise Crash

    monkeypatch.setattr(image_fit.torch, "save", save_then_crash_once_at_epoch_2)
    with pytest.raises(Crash):
        image_fit.train_fold(r, data, "test_efficientnet", 0, progress=False)
    run = run_store.run_dir(r, "test_efficientnet", 0)
    assert (run / run_store.CHECKPOINT).exists() and len(pd.read_csv(run / "log.csv")) == 2
    saved.clear()
    image_fit.train_fold(r, data, "test_efficientnet", 0, progress=False)  # no resume: all four epochs again
    assert saved == [1, 2, 3, 4] and (run / "metrics.json").exists()


def _stop_before_the_weights_of(path, epoch, monkeypatch):
    """Train ``path``'s run in-process and stop it right after epoch ``epoch``'s checkpoint, before
    that epoch's weights (an improvement: :data:`SELECTED`) are written; return the run folder and
    the checkpoint."""
    assert SELECTED[epoch - 1]
    r = recipe_mod.load(path)
    real_save_file = checkpoint_mod.save_file

    def crash_at_epoch(tensors, filename, metadata):
        if metadata["epoch"] == str(epoch):
            raise Crash
        real_save_file(tensors, filename, metadata=metadata)

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint_mod, "save_file", crash_at_epoch)
        with pytest.raises(Crash):
            image_fit.train_fold(r, data_mod.load_data(r, progress=False), "test_efficientnet", 0, progress=False)
    run = run_store.run_dir(r, "test_efficientnet", 0)
    checkpoint = torch.load(run / run_store.CHECKPOINT, weights_only=False)
    assert (checkpoint["epoch"], checkpoint["best_epoch"]) == (epoch, epoch)
    previous_best = max((k + 1 for k in range(epoch - 1) if SELECTED[k]), default=None)
    assert Checkpoint(run, {}, "").saved_epoch() == previous_best  # model.safetensors is still the earlier best, or absent
    return run, checkpoint


@pytest.mark.parametrize("epoch", [1, BEST], ids=["after-epoch-1-the-best-is-trained-after-the-resume", "at-the-best-epoch-its-restored-weights-stay-best"])
def test_stopped_between_the_checkpoint_and_the_weights_resume_restores_them(setup, uninterrupted, monkeypatch, epoch):
    root, text = setup
    path = _recipe(root, text, f"between{epoch}")
    run, _ = _stop_before_the_weights_of(path, epoch, monkeypatch)
    cli_ok(["train", "--recipe", str(path), *RUN, "--resume"])
    _assert_same(_outputs(run), uninterrupted)
    assert Checkpoint(run, {}, "").saved_epoch() == BEST


def test_stopped_after_an_epoch_that_did_not_improve_resume_keeps_the_earlier_best_and_trains_the_later_one(setup, uninterrupted, monkeypatch):
    """Stopped after epoch 2's checkpoint, while epoch 3's is written (its log row already is):
    model.safetensors holds epoch 1 (the checkpoint's best), which the resume keeps until epoch 3 beats it."""
    assert SELECTED[:2] == [True, False]
    root, text = setup
    path = _recipe(root, text, "after2")
    r = recipe_mod.load(path)

    def crash_writing_epoch_3s_checkpoint(obj, f):
        if obj["epoch"] == 3:
            raise Crash
        real_save(obj, f)

    real_save = image_fit.torch.save
    with monkeypatch.context() as patch:
        patch.setattr(image_fit.torch, "save", crash_writing_epoch_3s_checkpoint)
        with pytest.raises(Crash):
            image_fit.train_fold(r, data_mod.load_data(r, progress=False), "test_efficientnet", 0, progress=False)
    run = run_store.run_dir(r, "test_efficientnet", 0)
    checkpoint = torch.load(run / run_store.CHECKPOINT, weights_only=False)
    assert (checkpoint["epoch"], checkpoint["best_epoch"], Checkpoint(run, {}, "").saved_epoch()) == (2, 1, 1)
    assert len(pd.read_csv(run / "log.csv")) == 3  # the row of the unfinished epoch 3, which the resume trains again
    cli_ok(["train", "--recipe", str(path), *RUN, "--resume"])
    _assert_same(_outputs(run), uninterrupted)


def test_a_checkpoint_with_its_own_best_copy_still_resumes(setup, uninterrupted, monkeypatch):
    """A checkpoint saved before the best weights lived in model.safetensors only carries them as
    ``best``, and its config still counts ``submissions_dir`` (no longer part of a run's identity).
    Stopped at the best epoch, whose weights are then only in the checkpoint and stay the best."""
    root, text = setup
    path = _recipe(root, text, "older")
    run, checkpoint = _stop_before_the_weights_of(path, BEST, monkeypatch)
    del checkpoint["best_epoch"]
    checkpoint["best"] = {k.removeprefix("module."): v for k, v in checkpoint["ema"].items()}  # the best epoch's EMA weights, the evaluated ones
    checkpoint["config"]["recipe"]["submissions_dir"] = str(root / "elsewhere")
    torch.save(checkpoint, run / run_store.CHECKPOINT)
    cli_ok(["train", "--recipe", str(path), *RUN, "--resume"])
    _assert_same(_outputs(run), uninterrupted)


def test_resume_refuses_weights_of_another_epoch_than_the_checkpoints_best(tmp_path):
    model = torch.nn.Linear(2, 2)
    checkpoint = {"epoch": 3, "best_epoch": 2, "log": []}
    saved = Checkpoint(tmp_path, {}, "linear")
    with pytest.raises(
        run_store.RunConflictError,
        match=r"model.safetensors holds no weights, not epoch 2, the best epoch .*checkpoint.pt was saved "
        r"with; train again without resume=True to start afresh",
    ):
        saved.restore_best(checkpoint, model)
    saved.save_best(model.state_dict(), 3)
    with pytest.raises(run_store.RunConflictError, match="model.safetensors holds epoch 3, not epoch 2"):
        saved.restore_best(checkpoint, model)
    saved.save_best(model.state_dict(), 2)
    assert saved.restore_best(checkpoint, model) == 2
