"""Documented options, each checked to do what its documentation says: early stopping
(``[train].patience``), ``[train].select = "last"``, ``[train].class_weights = "given"``,
``ens report --out``, MP3 and OGG input (the loader and ``ens predict``), the recipe's type
checks (a TOML ``true`` is not a number) and the ``extends`` cycle check.

Training runs the tiny recipe of conftest (timm's test_resnet on 32-row images of 48 real
RAVDESS clips) on fold 0, on the CPU.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn
from typer.testing import CliRunner

from ensemble import predict
from ensemble.cli import app
from ensemble.core import metrics, tasks
from ensemble.core import recipe as recipe_mod
from ensemble.inputs import audio
from ensemble.members import data as data_mod
from ensemble.members import image_fit, loop, models
from ensemble.store import runs as run_store

from .conftest import cli_ok, copy_tiny_runs, fold_mean, ravdess_clip, tiny_competition

BACKBONE = "test_resnet"


@pytest.fixture(scope="module")
def tiny(small_source, tiny_recipe_text, tmp_path_factory):
    """The tiny recipe (its competition built and its features cached once) and its loaded data."""
    root = tmp_path_factory.mktemp("options")
    path = tiny_competition(root / "tiny.toml", tiny_recipe_text(root / "comp", root / "runs", root / "subs"), small_source)
    r = recipe_mod.load(path)
    return {"path": path, "recipe": r, "data": data_mod.load_data(r, progress=False)}


def _variant(tiny, tmp_path, name: str, **train_settings) -> recipe_mod.Recipe:
    """The tiny recipe named ``name``, its runs under ``tmp_path``, with ``[train]`` changed as given
    (and ``[competition].classes`` when ``classes`` is given)."""
    base = tiny["recipe"]
    competition = base.competition if "classes" not in train_settings else dataclasses.replace(base.competition, classes=train_settings.pop("classes"))
    r = dataclasses.replace(
        base,
        name=name,
        paths=dataclasses.replace(base.paths, runs_dir=str(tmp_path / "runs")),
        competition=competition,
        train=dataclasses.replace(base.train, **train_settings),
    )
    recipe_mod.validate(r, name)
    return r


def _log(r, fold: int = 0) -> pd.DataFrame:
    return pd.read_csv(run_store.run_dir(r, BACKBONE, fold) / "log.csv")


def _saved_epoch(r) -> int:
    with safe_open(run_store.run_dir(r, BACKBONE, 0) / "model.safetensors", "pt") as f:
        return int(f.metadata()["epoch"])


def _oof(r, classes) -> np.ndarray:
    return pd.read_csv(run_store.run_dir(r, BACKBONE, 0) / "oof.csv")[classes].to_numpy()


# --- [train].patience ------------------------------------------------------------------------


@pytest.fixture
def frozen(monkeypatch):
    """Models whose batch-norm running statistics do not move (momentum 0): with ``lr = 0`` (and
    ``min_lr = 0``, so the warm-up and the cosine schedule stay at 0) no number of the model
    changes in training, every epoch predicts exactly what the first did, and the fold metric can
    never improve after epoch 1."""
    real = models.build

    def build(*args, **kwargs):
        model = real(*args, **kwargs)
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = 0.0
        return model

    monkeypatch.setattr(models, "build", build)


def test_patience_stops_the_run_after_that_many_epochs_without_gain(tiny, tmp_path, frozen, capsys):
    r = _variant(tiny, tmp_path, "patient", epochs=6, patience=2, lr=0.0, min_lr=0.0)
    report = image_fit.train_fold(r, tiny["data"], BACKBONE, 0, progress=True)
    log = _log(r)
    assert log["epoch"].tolist() == [1, 2, 3]  # epoch 1, then 2 epochs without gain: stopped before epoch 4 of 6
    assert log["selected"].tolist() == [True, False, False]
    assert (log["lr"] == 0).all() and log["valid_log_loss"].nunique() == 1  # the construction: nothing changed after epoch 1
    assert f"{BACKBONE} fold 0: early stop, no uar gain in 2 epochs" in capsys.readouterr().out
    assert report["epoch"] == 1 and _saved_epoch(r) == 1
    assert not (run_store.run_dir(r, BACKBONE, 0) / run_store.CHECKPOINT).exists()  # a stopped run is a finished run
    assert json.loads((run_store.run_dir(r, BACKBONE, 0) / "metrics.json").read_text())["epoch"] == 1

    # the same run without patience trains all 6 epochs: the stop above is patience's doing
    r = _variant(tiny, tmp_path, "impatient", epochs=6, patience=0, lr=0.0, min_lr=0.0)
    image_fit.train_fold(r, tiny["data"], BACKBONE, 0, progress=False)
    assert _log(r)["epoch"].tolist() == [1, 2, 3, 4, 5, 6] and _log(r)["valid_log_loss"].nunique() == 1


# --- [train].select = "last" -----------------------------------------------------------------


@pytest.fixture
def epochs_seen(tiny, monkeypatch) -> list[dict]:
    """Make epoch 1 the best by the fold metric, and record what each epoch validated.

    The fold metric (``uar``) each epoch reports is replaced by 1 / epoch, so under ``best`` epoch
    1 is kept whatever training does (the other scores, ``metrics.json`` and the weights are
    real). Each :func:`loop.predict` of the validation fold (any call but the one on the test
    images) is recorded with its model's weights and its output. Returns those records, one per
    epoch, of the latest run."""
    real_scores, real_predict, x_test = tasks.Multiclass.scores, loop.predict, tiny["data"].x_test
    epochs: list[dict] = []
    calls: list[None] = []  # validations of the current run
    ended = [True]  # the last prediction was a run's test set: the next validation starts a new run

    def scores(self, y, proba):
        calls.append(None)
        return {**real_scores(self, y, proba), "uar": 1.0 / len(calls)}

    def spy(model, x, device, *args, **kwargs):
        out = real_predict(model, x, device, *args, **kwargs)
        if x is x_test:
            calls.clear()
            ended[0] = True
        else:
            if ended[0]:
                epochs.clear()  # a new run
                ended[0] = False
            epochs.append({"weights": {k: v.detach().clone() for k, v in model.state_dict().items()}, "proba": out})
        return out

    monkeypatch.setattr(tasks.Multiclass, "scores", scores)
    monkeypatch.setattr(image_fit, "predict", spy)
    return epochs


def _same_weights(file: Path, weights: dict) -> bool:
    saved = load_file(file)
    return saved.keys() == weights.keys() and all(torch.equal(saved[k], weights[k]) for k in saved)


def test_select_last_keeps_the_last_epoch_not_the_best(tiny, tmp_path, epochs_seen):
    data, classes = tiny["data"], tiny["data"].competition.classes
    runs = {}
    for select in ("best", "last"):
        r = _variant(tiny, tmp_path, select, epochs=3, select=select)
        report = image_fit.train_fold(r, data, BACKBONE, 0, progress=False)
        runs[select] = (r, report, list(epochs_seen))
    r_best, best_report, best_epochs = runs["best"]
    r_last, last_report, last_epochs = runs["last"]
    assert len(last_epochs) == 3
    for a, b in zip(best_epochs, last_epochs):  # one training trajectory: select changes what is kept, not the run
        np.testing.assert_array_equal(a["proba"], b["proba"])
    first, last = last_epochs[0], last_epochs[-1]
    assert np.abs(first["proba"] - last["proba"]).max() > 1e-4  # the epochs predict differently: the choice shows

    # select = "best": epoch 1 (the best uar) is kept
    assert _log(r_best)["selected"].tolist() == [True, False, False]
    assert best_report["epoch"] == 1 and _saved_epoch(r_best) == 1
    assert _same_weights(run_store.run_dir(r_best, BACKBONE, 0) / "model.safetensors", first["weights"])
    np.testing.assert_allclose(_oof(r_best, classes), first["proba"], rtol=0, atol=1e-12)

    # select = "last": every epoch is taken, and the run ends with epoch 3's weights and predictions
    assert _log(r_last)["selected"].tolist() == [True, True, True]
    assert last_report["epoch"] == 3 and _saved_epoch(r_last) == 3
    assert _same_weights(run_store.run_dir(r_last, BACKBONE, 0) / "model.safetensors", last["weights"])
    assert not _same_weights(run_store.run_dir(r_last, BACKBONE, 0) / "model.safetensors", first["weights"])
    np.testing.assert_allclose(_oof(r_last, classes), last["proba"], rtol=0, atol=1e-12)
    assert last_report["accuracy"] == metrics.scores(data.y[data.folds["fold"].to_numpy() == 0], last["proba"])["accuracy"]


# --- [train].class_weights = "given" ----------------------------------------------------------


GIVEN = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0]


def test_given_class_weights_reach_the_loss(tiny, tmp_path, monkeypatch):
    losses = []

    class SpyLoss(nn.CrossEntropyLoss):
        def forward(self, logits, target):
            loss = super().forward(logits, target)
            losses.append((self.weight, self.label_smoothing, logits.detach().clone(), target.clone(), loss.detach()))
            return loss

    monkeypatch.setattr(torch.nn, "CrossEntropyLoss", SpyLoss)  # undone after the test
    r = _variant(tiny, tmp_path, "weighted", epochs=1, class_weights="given", class_weight_values=GIVEN)
    image_fit.train_fold(r, tiny["data"], BACKBONE, 0, progress=False)
    assert losses, "training did not use nn.CrossEntropyLoss"
    for weight, smoothing, logits, target, loss in losses:
        assert torch.equal(weight, torch.tensor(GIVEN)) and smoothing == pytest.approx(0.1)
        weighted = nn.functional.cross_entropy(logits, target, weight=torch.tensor(GIVEN), label_smoothing=0.1)
        plain = nn.functional.cross_entropy(logits, target, label_smoothing=0.1)
        torch.testing.assert_close(loss, weighted)
        assert abs(float(weighted) - float(plain)) > 1e-4  # the weights change the number
    assert _log(r)["train_loss"][0] == pytest.approx(float(torch.stack([x[-1] for x in losses]).mean()), rel=1e-6)


def test_given_class_weights_of_the_wrong_length_are_refused(tiny, tmp_path):
    with pytest.raises(recipe_mod.RecipeError, match=r"class_weight_values has 3 values for the 8 \[competition\].classes"):
        _variant(tiny, tmp_path, "short", epochs=1, class_weights="given", class_weight_values=[1.0, 2.0, 3.0])
    r = _variant(tiny, tmp_path, "short", epochs=1, class_weights="given", class_weight_values=[1.0, 2.0, 3.0], classes=[])
    with pytest.raises(ValueError, match=r"\[train\].class_weight_values has 3 values for 8 classes"):  # classes from the data
        image_fit.train_fold(r, tiny["data"], BACKBONE, 0, progress=False)
    assert not (run_store.run_dir(r, BACKBONE, 0) / "metrics.json").exists()

    recipe_file = tmp_path / "short.toml"
    recipe_file.write_text(
        f'extends = "{tiny["path"]}"\nruns_dir = "{tmp_path / "cli_runs"}"\n[train]\nclass_weights = "given"\nclass_weight_values = [1.0, 2.0, 3.0]\n'
    )
    result = CliRunner().invoke(app, ["train", "--recipe", str(recipe_file), "--backbone", BACKBONE, "--fold", "0", "--quiet"])
    # the recipe lists its classes, so the CLI refuses it when the recipe loads, before any data or run folder
    assert result.exit_code == 2 and "[train].class_weight_values has 3 values for the 8 [competition].classes" in result.output
    assert not (tmp_path / "cli_runs").exists()
    with pytest.raises(recipe_mod.RecipeError, match=r"class_weights = 'given' needs class_weight_values"):
        recipe_mod.from_dict({"train": {"class_weights": "given"}})


# --- ens report --out --------------------------------------------------------------------------


def test_report_out_writes_there_and_not_to_the_default_path(tiny_trained, tmp_path):
    recipe_file = copy_tiny_runs(tiny_trained, tmp_path)
    out = tmp_path / "elsewhere" / "tiny report.html"
    output = cli_ok(["report", "--recipe", str(recipe_file), "--out", str(out)])
    assert f"wrote {out}" in output
    page = out.read_text()
    assert page.lstrip().lower().startswith("<!doctype html") and "test_resnet" in page and "test_efficientnet" in page
    assert not (tmp_path / "runs" / "tiny" / "report.html").exists()
    assert [p.name for p in tmp_path.rglob("*.html")] == ["tiny report.html"]


# --- MP3 and OGG input -------------------------------------------------------------------------

CLIP = ravdess_clip(1, 1)  # 1.6 s after trimming: one window of the tiny recipe's 2 s
LOSSY = {"ogg": ("OGG", "VORBIS"), "mp3": ("MP3", "MPEG_LAYER_III")}


@pytest.fixture(scope="module")
def lossy_copies(tmp_path_factory) -> dict[str, Path]:
    """The FLAC clip and the same audio written by libsndfile as Ogg Vorbis and MP3, in one folder."""
    available = sf.available_formats()
    assert "OGG" in available and "MP3" in available, f"libsndfile {sf.__libsndfile_version__} lacks OGG or MP3 (MP3 needs >= 1.1)"
    folder = tmp_path_factory.mktemp("lossy")
    y, rate = sf.read(CLIP, dtype="float32")
    files = {"flac": folder / "clip.flac"}
    files["flac"].write_bytes(CLIP.read_bytes())
    for ext, (fmt, subtype) in LOSSY.items():
        files[ext] = folder / f"clip.{ext}"
        sf.write(files[ext], y, rate, format=fmt, subtype=subtype)
        assert sf.info(files[ext]).format == fmt
    return files


@pytest.mark.parametrize("ext", list(LOSSY))
def test_mp3_and_ogg_load_like_the_flac_original(lossy_copies, ext):
    original, rate = audio.read(lossy_copies["flac"])
    decoded, decoded_rate = audio.read(lossy_copies[ext])
    assert decoded_rate == rate and abs(len(decoded) - len(original)) <= 1152  # at most one MPEG frame of padding
    n = min(len(original), len(decoded))
    assert np.corrcoef(original[:n], decoded[:n])[0, 1] > 0.98  # aligned in time: an encoder delay would break this
    a, b = audio.load(lossy_copies["flac"], 16000, 3.5), audio.load(lossy_copies[ext], 16000, 3.5)  # no trimming
    assert a.shape == b.shape and np.corrcoef(a, b)[0, 1] > 0.98
    assert not np.array_equal(a, b)  # really decoded from the lossy file
    # trimming at 40 dB under the peak sees the coding noise: it may keep one more or one less trim frame (512 samples)
    (a, a_start), (b, b_start) = audio.load_trimmed(lossy_copies["flac"], 16000, 40.0), audio.load_trimmed(lossy_copies[ext], 16000, 40.0)
    assert abs(a_start - b_start) <= 512 and abs(len(a) - len(b)) <= 512


def test_ens_predict_reads_mp3_and_ogg(tiny_trained, lossy_copies, tmp_path):
    recipe_file = copy_tiny_runs(tiny_trained, tmp_path, blend=False)  # no blend: the two backbones weigh the same
    r = recipe_mod.load(recipe_file)
    out = tmp_path / "pred.csv"
    output = cli_ok(["predict", str(lossy_copies["flac"].parent), "--recipe", str(recipe_file), "--out", str(out)])
    frame = pd.read_csv(out).set_index("path")
    classes = r.competition.classes
    assert sorted(frame.index) == sorted(str(p) for p in lossy_copies.values())  # the folder search finds .mp3 and .ogg
    assert all(Path(p).name in output for p in frame.index)
    f = r.features
    images = {}
    for ext, path in lossy_copies.items():
        y, _ = audio.load_trimmed(path, f.sample_rate, f.trim_db)
        assert len(y) <= round(f.duration * f.sample_rate)  # one window: the file's image is its whole trimmed audio
        images[ext] = predict.model_inputs([y], f)
        expected = np.mean([fold_mean(r, [b], images[ext])[0] for b in ("test_efficientnet", "test_resnet")], axis=0)
        np.testing.assert_allclose(frame.loc[str(path), classes].to_numpy(float), expected, rtol=0, atol=1e-5)
    for ext in LOSSY:
        assert not np.array_equal(images[ext], images["flac"])  # predicted from the decoded lossy audio
        np.testing.assert_allclose(
            frame.loc[str(lossy_copies[ext]), classes].to_numpy(float), frame.loc[str(lossy_copies["flac"]), classes].to_numpy(float), rtol=0, atol=0.05
        )


# --- recipe checks -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("train", "epochs", True),
        ("train", "patience", False),
        ("train", "lr", True),
        ("folds", "n_splits", True),
        ("features", "duration", False),
        ("blend", "iterations", True),
    ],
)
def test_true_and_false_are_not_numbers(tmp_path, section, key, value):
    with pytest.raises(recipe_mod.RecipeError, match=rf"\[{section}\]\.{key} = {value!r} should be of type (int|float)"):
        recipe_mod.from_dict({section: {key: value}})
    path = tmp_path / "bool.toml"
    path.write_text(f"[{section}]\n{key} = {str(value).lower()}\n")
    with pytest.raises(recipe_mod.RecipeError, match=rf"bool.toml: \[{section}\]\.{key} = {value!r}"):
        recipe_mod.load(path)


def test_bool_keys_take_bools_and_float_keys_take_integers():
    r = recipe_mod.from_dict({"train": {"pretrained": False, "compile": True, "lr": 1, "epochs": 3}, "features": {"duration": 2}})
    assert r.train.pretrained is False and r.runtime.compile is True and r.train.epochs == 3
    assert r.train.lr == 1.0 and isinstance(r.train.lr, float) and isinstance(r.features.duration, float)
    with pytest.raises(recipe_mod.RecipeError, match=r"\[train\]\.pretrained = 1 should be of type bool"):
        recipe_mod.from_dict({"train": {"pretrained": 1}})
    with pytest.raises(recipe_mod.RecipeError, match=r"\[train\]\.epochs = 2\.0 should be of type int"):
        recipe_mod.from_dict({"train": {"epochs": 2.0}})


def test_an_extends_cycle_is_refused_naming_it(tmp_path):
    (tmp_path / "a.toml").write_text('extends = "b.toml"\n[train]\nepochs = 1\n')
    (tmp_path / "b.toml").write_text('extends = "a.toml"\n[train]\nepochs = 2\n')
    with pytest.raises(recipe_mod.RecipeError, match=r"a\.toml: 'extends' forms a cycle through") as caught:
        recipe_mod.load(tmp_path / "a.toml")
    assert str(tmp_path / "a.toml") in str(caught.value) and str(tmp_path / "b.toml") in str(caught.value)

    (tmp_path / "self.toml").write_text('extends = "self.toml"\n')
    with pytest.raises(recipe_mod.RecipeError, match=r"self\.toml: 'extends' forms a cycle"):
        recipe_mod.load(tmp_path / "self.toml")
    # a chain without a cycle loads, each file overriding its base
    (tmp_path / "base.toml").write_text("[train]\nepochs = 2\nlr = 0.5\n")
    (tmp_path / "mid.toml").write_text('extends = "base.toml"\n[train]\nepochs = 3\n')
    (tmp_path / "top.toml").write_text('extends = "mid.toml"\n[folds]\nn_splits = 3\n')
    r = recipe_mod.load(tmp_path / "top.toml")
    assert (r.name, r.train.epochs, r.train.lr, r.folds.n_splits) == ("top", 3, 0.5, 3)
