"""Several seeds of one backbone (``name@S`` entries) averaged into one blend member, and time-shift TTA
([train].tta_shifts) in training, blending and ens predict, on real RAVDESS clips with tiny timm models."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from ensemble import predict
from ensemble.blending import blend, blenders
from ensemble.cli import app
from ensemble.core import metrics, tasks
from ensemble.core import recipe as recipe_mod
from ensemble.inputs import audio
from ensemble.members import data as data_mod
from ensemble.members import image_fit, loop, models
from ensemble.store import runs as run_store

from .conftest import cli_ok as _ok
from .conftest import fold_mean, tiny_competition

runner = CliRunner()
CPU = torch.device("cpu")
SHIFTS = [-0.1, 0.1]
BACKBONES = ["test_resnet", "test_efficientnet", "test_resnet@7"]  # test_resnet with seeds 42 and 7


def _tiny_model(seed: int = 0) -> torch.nn.Module:
    """An untrained test_resnet with 4 outputs on 3-channel images, in eval mode."""
    torch.manual_seed(seed)
    r = recipe_mod.from_dict({"train": {"pretrained": False}})
    return models.build(r, "test_resnet", 4).eval()


def test_no_shifts_is_plain_prediction():
    model = _tiny_model()
    x = np.random.default_rng(0).random((5, 3, 32, 40), dtype=np.float32)
    plain = loop.predict(model, x, CPU, batch_size=2)
    np.testing.assert_array_equal(loop.predict(model, x, CPU, batch_size=2, shifts=[]), plain)
    with torch.no_grad():
        np.testing.assert_allclose(plain, model(torch.from_numpy(x)).softmax(dim=1).numpy(), atol=1e-6)


@pytest.mark.parametrize("multilabel", [False, True])
def test_shifts_average_the_image_rolled_along_time(multilabel):
    model = _tiny_model()
    x = np.random.default_rng(1).random((5, 3, 32, 40), dtype=np.float32)
    shifts = [-0.1, 0.25]  # of 40 frames: -4 and +10 frames
    activation = torch.sigmoid if multilabel else (lambda logits: logits.softmax(dim=1))
    with torch.no_grad():
        batch = torch.from_numpy(x)
        expected = np.mean([activation(model(torch.roll(batch, frames, dims=3))).numpy() for frames in (0, -4, 10)], axis=0)
    task = tasks.MULTILABEL if multilabel else tasks.MULTICLASS
    shifted = loop.predict(model, x, CPU, task.activation, batch_size=2, shifts=shifts)
    np.testing.assert_allclose(shifted, expected, atol=1e-6)
    assert not np.allclose(shifted, loop.predict(model, x, CPU, task.activation), atol=1e-4)  # the shifts change it


@pytest.fixture(scope="module")
def trained(small_source, tiny_recipe_text, tmp_path_factory):
    """Two seeds of test_resnet and one of test_efficientnet, 2 folds x 1 epoch with time-shift TTA, blended by the mean."""
    root = tmp_path_factory.mktemp("seeds")
    comp, subs = root / "comp", root / "subs"
    text = tiny_recipe_text(comp, root / "runs", subs)
    default_backbones = 'backbones = ["test_efficientnet", "test_resnet"]'
    assert default_backbones in text and text.rstrip().endswith("pretrained = false")  # [train] is the last section
    text = text.replace(default_backbones, f"backbones = {json.dumps(BACKBONES)}") + f"tta_shifts = {SHIFTS}\n"
    recipe_path = tiny_competition(root / "tiny.toml", text, small_source)
    r = recipe_mod.load(recipe_path)
    outputs = {
        "seed": _ok(["train", "--recipe", str(recipe_path), "--backbone", "test_resnet@7", "--quiet"]),
        "all": _ok(["train", "--recipe", str(recipe_path), "--quiet"]),
        "blend": _ok(["blend", "--recipe", str(recipe_path), "--method", "mean"]),
    }
    return {"recipe_path": recipe_path, "recipe": r, "data": data_mod.load_data(r, progress=False), "subs": subs, **outputs}


def _pooled(r, entry, data, name="oof.csv"):
    """An entry's OOF ``(n_train, classes)`` in train.csv order from its folds' oof.csv, or its
    test.csv rows ``(n_test, classes)`` averaged over folds."""
    classes = data.competition.classes
    if name == "test.csv":
        return np.mean([pd.read_csv(run_store.run_dir(r, entry, k) / name, dtype={"id": str})[classes].to_numpy() for k in range(2)], axis=0)
    ids = pd.Index(data.competition.train["id"].astype(str))
    out = np.full((len(ids), len(classes)), np.nan)
    for fold in range(2):
        frame = pd.read_csv(run_store.run_dir(r, entry, fold) / name, dtype={"id": str})
        out[ids.get_indexer(frame["id"])] = frame[classes].to_numpy()
    assert not np.isnan(out).any()
    return out


def test_each_seed_trains_its_own_run_folders_with_its_seed(trained):
    r = trained["recipe"]
    assert trained["seed"].count("test_resnet@7 fold") == 2 and "already finished" not in trained["seed"]
    assert f"-> {run_store.run_dir(r, 'test_resnet@7', 0)}" in trained["seed"]
    # the second ens train trains the other entries and skips the seed trained by name
    assert trained["all"].count("[already finished, skipped]") == 2 and trained["all"].count("->") == 6
    for entry, seed in (("test_resnet", 42), ("test_resnet@7", 7)):
        for fold in range(2):
            config = json.loads((run_store.run_dir(r, entry, fold) / "config.json").read_text())
            assert config["backbone"] == entry and config["recipe"]["train"]["seed"] == seed
            assert config["recipe"]["train"]["tta_shifts"] == SHIFTS
    assert not np.allclose(_pooled(r, "test_resnet", trained["data"]), _pooled(r, "test_resnet@7", trained["data"]), atol=1e-3)


def test_the_seeds_of_a_backbone_blend_as_one_member_their_mean(trained):
    r, data = trained["recipe"], trained["data"]
    mean_oof = (_pooled(r, "test_resnet", data) + _pooled(r, "test_resnet@7", data)) / 2
    mean_test = (_pooled(r, "test_resnet", data, "test.csv") + _pooled(r, "test_resnet@7", data, "test.csv")) / 2
    members, oofs, tests, skipped = blend.collect(r, data)
    assert [(m.name, m.seeds()) for m in members] == [("test_resnet", [42, 7]), ("test_efficientnet", [42])] and not skipped
    np.testing.assert_allclose(oofs[0], mean_oof, atol=1e-9)
    np.testing.assert_allclose(tests[0], mean_test, atol=1e-9)

    board = pd.read_csv(Path(r.paths.runs_dir) / r.name / "blend" / "leaderboard.csv", dtype={"seeds": str})
    assert list(board["model"]) == ["test_resnet", "test_efficientnet", *(f"blend: {m}" for m in blenders.METHODS)]
    assert list(board["seeds"][:2]) == ["42, 7", "42"] and board["seeds"][2:].isna().all()
    assert board["log_loss"][0] == pytest.approx(metrics.scores(data.y, mean_oof)["log_loss"], abs=1e-9)
    assert "42, 7" in trained["blend"] and "test_resnet@7" not in trained["blend"]
    weights = json.loads((Path(r.paths.runs_dir) / r.name / "blend" / "weights.json").read_text())
    assert weights["members"] == ["test_resnet", "test_efficientnet"] and set(weights["weights"]) == {"test_resnet", "test_efficientnet"}


def test_runs_save_their_predictions_with_time_shift_tta(trained):
    r, data = trained["recipe"], trained["data"]
    run = run_store.run_dir(r, "test_resnet@7", 1)
    model = models.build(r, "test_resnet@7", 8)
    model.load_state_dict(load_file(run / "model.safetensors"))
    classes = data.competition.classes
    oof = pd.read_csv(run / "oof.csv", dtype={"id": str})
    rows = pd.Index(data.competition.train["id"].astype(str)).get_indexer(oof["id"])
    images = data.x_train[rows]
    np.testing.assert_allclose(oof[classes].to_numpy(), loop.predict(model, images, CPU, shifts=SHIFTS), atol=1e-7)
    assert not np.allclose(oof[classes].to_numpy(), loop.predict(model, images, CPU), atol=1e-4)
    test = pd.read_csv(run / "test.csv", dtype={"id": str})
    np.testing.assert_allclose(test[classes].to_numpy(), loop.predict(model, data.x_test, CPU, shifts=SHIFTS), atol=1e-7)


def test_predict_averages_the_seeds_with_the_recipe_tta(trained, tmp_path):
    r, data = trained["recipe"], trained["data"]
    clip = data.competition.audio_paths(data.competition.train)[0]
    out = tmp_path / "pred.csv"
    output = _ok(["predict", str(clip), "--recipe", str(trained["recipe_path"]), "--out", str(out)])
    assert "test_resnet x4 folds of seeds 42, 7 (0.50)" in output and f"time-shift TTA {SHIFTS}" in output
    waveform = audio.load_trimmed(clip, r.features.sample_rate, r.features.trim_db)[0]
    image = predict.model_inputs([waveform], r.features)
    expected = 0.5 * fold_mean(r, ["test_resnet", "test_resnet@7"], image, SHIFTS)[0] + 0.5 * fold_mean(r, ["test_efficientnet"], image, SHIFTS)[0]
    np.testing.assert_allclose(pd.read_csv(out)[r.competition.classes].to_numpy()[0], expected, atol=1e-6)

    # each member predicts with the TTA its runs were made with (its OOF, and so the blend weights, used it), whatever the recipe says now
    other_tta = dataclasses.replace(r, train=dataclasses.replace(r.train, tta_shifts=[0.2]))
    ensemble = predict.load_ensemble(other_tta)
    assert {name: made.train.tta_shifts for name, made in ensemble.trained_with.items()} == {"test_resnet": SHIFTS, "test_efficientnet": SHIFTS}
    np.testing.assert_allclose(ensemble.predict_waveforms([waveform])[0], expected, atol=1e-6)


def test_a_run_finished_before_tta_shifts_existed_is_still_finished(trained):
    """A config.json written before the setting existed has no tta_shifts; it reads as today's default []."""
    r, data = trained["recipe"], trained["data"]
    before = dataclasses.replace(r, name="before_tta", train=dataclasses.replace(r.train, tta_shifts=[]))
    run = run_store.run_dir(before, "test_resnet", 0)
    config = image_fit.run_config(before, data, "test_resnet", 0)
    del config["recipe"]["train"]["tta_shifts"]
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.json").write_text(json.dumps({"uar": 0.5}))
    assert image_fit.finished_run(before, data, "test_resnet", 0) == {"uar": 0.5}
    with_tta = dataclasses.replace(before, train=r.train)  # turning TTA on changes the run's predictions: a conflict
    with pytest.raises(run_store.RunConflictError, match="different configuration"):
        image_fit.finished_run(with_tta, data, "test_resnet", 0)


@pytest.mark.parametrize(
    "backbones, message",
    [
        (["test_resnet@"], "backbones entry 'test_resnet@'"),
        (["test_resnet@x"], "backbones entry 'test_resnet@x'"),
        (["@7"], "backbones entry '@7'"),
        (["test_resnet", "test_resnet@42"], r"\['test_resnet', 'test_resnet@42'\] train one model twice with one seed"),
    ],
)
def test_malformed_or_repeated_entries_are_refused(backbones, message):
    with pytest.raises(recipe_mod.RecipeError, match=message):
        recipe_mod.from_dict({"backbones": backbones})


@pytest.mark.parametrize("shifts", [[1.0], [0.0], [0.1, -1.5], ["0.1"]])
def test_bad_tta_shifts_are_refused(shifts):
    with pytest.raises(recipe_mod.RecipeError, match=r"\[train\].tta_shifts = .*non-zero fraction of the frames in \(-1, 1\)"):
        recipe_mod.from_dict({"train": {"tta_shifts": shifts}})


def test_ens_train_refuses_a_malformed_seed_before_training(trained):
    result = runner.invoke(app, ["train", "--recipe", str(trained["recipe_path"]), "--backbone", "test_resnet@x", "--quiet"])
    assert result.exit_code == 2 and "backbones entry 'test_resnet@x'" in result.output and "regnetx_002@43" in result.output
    assert not (Path(trained["recipe"].paths.runs_dir) / "tiny" / "test_resnet@x").exists()
