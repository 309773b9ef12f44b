"""data -> features -> train -> blend -> score through the real CLI, on 48 real RAVDESS clips."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from ensemble.blending import blenders
from ensemble.cli import app
from ensemble.core import atomic
from ensemble.core import recipe as recipe_mod

from .conftest import cli_ok as _ok
from .conftest import copy_tiny_runs

runner = CliRunner()


@pytest.fixture(scope="module")
def pipeline(tiny_trained):
    """The session's tiny pipeline (data, train, train again, blend; read-only) and its ens score."""
    return {**tiny_trained, "score": _ok(["score", str(tiny_trained["subs"] / "tiny-caruana.csv"), "--recipe", str(tiny_trained["recipe"])])}


def test_every_run_folder_is_complete(pipeline):
    train = pd.read_csv(pipeline["comp"] / "train.csv", dtype=str)
    folds = pd.read_csv(pipeline["comp"] / "folds.csv", dtype={"id": str})
    test = pd.read_csv(pipeline["comp"] / "test.csv", dtype=str)
    classes = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
    for backbone in ("test_efficientnet", "test_resnet"):
        oof_ids = []
        for fold in (0, 1):
            run = pipeline["runs"] / backbone / f"fold{fold}"
            assert {p.name for p in run.iterdir()} == {"config.json", "model.safetensors", "log.csv", "oof.csv", "test.csv", "metrics.json"}
            oof = pd.read_csv(run / "oof.csv", dtype={"id": str})
            assert list(oof.columns) == ["id", "fold", *classes]
            assert set(oof["id"]) == set(folds["id"][folds["fold"] == fold])
            np.testing.assert_allclose(oof[classes].sum(axis=1), 1.0, atol=1e-5)
            oof_ids += list(oof["id"])
            assert sorted(pd.read_csv(run / "test.csv", dtype={"id": str})["id"]) == sorted(test["id"])
            metrics = json.loads((run / "metrics.json").read_text())
            assert 0 <= metrics["uar"] <= 1 and np.array(metrics["confusion_matrix"]).sum() == len(oof)
            assert set(metrics["per_class_accuracy"]) == set(classes)
        assert sorted(oof_ids) == sorted(train["id"])  # OOF covers every training clip once


def test_finished_runs_are_skipped(pipeline):
    assert pipeline["retrain"].count("->") == 4 and pipeline["retrain"].count("[already finished, skipped]") == 4
    for backbone in ("test_efficientnet", "test_resnet"):
        log = pd.read_csv(pipeline["runs"] / backbone / "fold0" / "log.csv")
        assert len(log) == 1  # not trained twice


def test_blend_writes_the_sample_layout_and_a_leaderboard(pipeline):
    assert "blend: caruana" in pipeline["blend"] and "test_resnet" in pipeline["blend"]
    sub = pd.read_csv(pipeline["subs"] / "tiny-caruana.csv", dtype=str)
    sample = pd.read_csv(pipeline["comp"] / "sample_submission.csv", dtype=str)
    assert list(sub.columns) == list(sample.columns) and list(sub["id"]) == list(sample["id"])
    board = pd.read_csv(pipeline["runs"] / "blend" / "leaderboard.csv")
    assert list(board["model"]) == ["test_efficientnet", "test_resnet", *(f"blend: {m}" for m in blenders.METHODS)]
    assert {"accuracy", "uar", "cv_accuracy", "cv_uar", "cv_log_loss"} <= set(board.columns)
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, log_loss  # a member's row: its pooled oof.csv, scored here

    labels = pd.read_csv(pipeline["comp"] / "train.csv", dtype=str).set_index("id")["label"]
    classes = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
    for row in board.iloc[:2].to_dict("records"):  # nothing is fitted for a single member: its CV score is its score
        oof = pd.concat([pd.read_csv(pipeline["runs"] / row["model"] / f"fold{k}" / "oof.csv", dtype={"id": str}) for k in (0, 1)])
        y, proba = labels.loc[oof["id"]].map(classes.index).to_numpy(), oof[classes].to_numpy()
        pred = proba.argmax(axis=1)
        expected = {
            "accuracy": accuracy_score(y, pred),
            "macro_f1": f1_score(y, pred, labels=range(8), average="macro", zero_division=0),
            "uar": balanced_accuracy_score(y, pred),
            "log_loss": log_loss(y, proba / proba.sum(axis=1, keepdims=True), labels=range(8)),
        }
        for name, value in expected.items():
            assert row[name] == pytest.approx(value, rel=1e-6) and row[f"cv_{name}"] == pytest.approx(value, rel=1e-6), (row["model"], name)
    assert "cv_ columns" in pipeline["blend"]
    assert "accuracy" in pipeline["score"] and "n 16" in pipeline["score"]


def test_blend_refuses_runs_trained_on_other_folds(pipeline, tmp_path):
    recipe = copy_tiny_runs(pipeline, tmp_path)
    comp = tmp_path / "comp"  # a copy of the competition (and its feature cache) whose folds.csv is changed
    shutil.copytree(pipeline["comp"], comp, symlinks=True)
    with recipe.open("a") as f:
        f.write(f'[competition]\ndir = "{comp}"\n')
    folds = pd.read_csv(comp / "folds.csv", dtype={"id": str})
    folds["fold"] = 1 - folds["fold"]
    atomic.write_csv(comp / "folds.csv", folds)
    result = runner.invoke(app, ["blend", "--recipe", str(recipe)])
    assert result.exit_code == 2
    assert "trained on another fold assignment" in result.output


def test_changed_recipe_does_not_overwrite_a_finished_run(pipeline):
    result = runner.invoke(app, ["train", "--recipe", str(pipeline["recipe"]), "--epochs", "2", "--backbone", "test_resnet", "--fold", "0", "--quiet"])
    assert result.exit_code == 2 and "different configuration" in result.output and "--force" in result.output


def test_a_renamed_recipe_with_other_backbones_blend_and_submissions_reuses_finished_runs(pipeline, tmp_path):
    renamed = tmp_path / "renamed.toml"
    renamed.write_text(
        f'extends = "{pipeline["recipe"]}"\nbackbones = ["test_resnet"]\nruns_dir = "{tmp_path / "runs"}"\n'
        f'submissions_dir = "{tmp_path / "subs"}"\n\n[blend]\nmethod = "mean"\n'
    )
    runs = tmp_path / "runs" / "renamed" / "test_resnet"  # a copy: the shared session runs stay read-only
    shutil.copytree(pipeline["runs"] / "test_resnet", runs)
    before = {p: p.stat().st_mtime_ns for p in runs.rglob("*")}
    output = _ok(["train", "--recipe", str(renamed), "--quiet"])
    assert {p: p.stat().st_mtime_ns for p in runs.rglob("*")} == before  # nothing retrained or rewritten
    assert output.count("[already finished, skipped]") == 2  # both folds
    for fold in (0, 1):  # the renamed recipe's own copies were found finished, not the original's runs
        assert f"-> {runs / f'fold{fold}'}  [already finished, skipped]" in output
    original, other = recipe_mod.load(pipeline["recipe"]), recipe_mod.load(renamed)
    ignored = [(r.name, r.backbones, r.blend.method, r.paths.runs_dir, r.paths.submissions_dir) for r in (original, other)]  # what the identity must ignore
    assert ignored[1] == ("renamed", ["test_resnet"], "mean", str(tmp_path / "runs"), str(tmp_path / "subs"))
    assert ignored[0][:3] == ("tiny", ["test_efficientnet", "test_resnet"], "caruana") and ignored[0][3:] != ignored[1][3:]


def test_bad_options_are_clear_errors(pipeline):
    result = runner.invoke(app, ["train", "--recipe", str(pipeline["recipe"]), "--fold", "7", "--quiet"])
    assert result.exit_code == 2 and "fold 7 is not one of 0..1" in result.output
    result = runner.invoke(app, ["train", "--recipe", "missing.toml"])
    assert result.exit_code == 2 and "recipe file missing.toml does not exist" in result.output


def test_blend_skips_a_backbone_with_an_unfinished_fold(pipeline, tmp_path):
    from ensemble.blending import blend

    r = recipe_mod.load(copy_tiny_runs(pipeline, tmp_path))  # blend writes its leaderboard and weights into the copy
    r.backbones = ["test_efficientnet", "test_resnet", "test_convnext"]
    result = blend.blend(r)
    assert list(result.skipped) == ["test_convnext"] and "fold0 is not finished" in result.skipped["test_convnext"]
    assert set(result.weights) == {"test_efficientnet", "test_resnet"}


def test_machine_settings_are_not_part_of_a_run_identity(pipeline, tmp_path):
    """Another device, weights folder and location of the competition folder reuse the finished
    runs (they change no number a model computes); a changed training setting is still refused."""
    recipe = copy_tiny_runs(pipeline, tmp_path)
    moved = tmp_path / "moved_comp"  # the competition folder (audio and feature cache) somewhere else
    shutil.copytree(pipeline["comp"], moved, symlinks=True)
    with recipe.open("a") as f:
        f.write(f'[competition]\ndir = "{moved}"\n')
    weights = tmp_path / "weights"
    weights.mkdir()
    stored = json.loads((pipeline["runs"] / "test_resnet" / "fold0" / "config.json").read_text())["recipe"]
    assert recipe_mod.load(pipeline["recipe"]).runtime.device == "auto" and "device" not in stored["train"]
    output = _ok(["train", "--recipe", str(recipe), "--device", "cpu", "--weights-dir", str(weights), "--quiet"])
    assert output.count("[already finished, skipped]") == 4, output
    result = runner.invoke(
        app, ["train", "--recipe", str(recipe), "--device", "cpu", "--cpu-precision", "bf16", "--backbone", "test_resnet", "--fold", "0", "--quiet"]
    )
    assert result.exit_code == 2 and "different configuration" in result.output, result.output
