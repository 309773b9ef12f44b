"""ens predict on real RAVDESS clips with a tiny trained ensemble: same input as training, windows, images, errors."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from typer.testing import CliRunner

from ensemble import audio, competition, features, predict, recipe as recipe_mod
from ensemble.cli import app

from .conftest import cli_ok as _ok, copy_tiny_runs, fold_mean, ravdess_clip

runner = CliRunner()
BACKBONES = ("test_efficientnet", "test_resnet")


@pytest.fixture(scope="module")
def trained(tiny_trained, tmp_path_factory):
    """A copy of the session's 2-fold, 1-epoch runs of both tiny backbones, without their blend
    (ens predict weighs the backbones equally; a test writes its own blend weights into it)."""
    root = tmp_path_factory.mktemp("predict")
    recipe_path = copy_tiny_runs(tiny_trained, root, blend=False)
    r = recipe_mod.load(recipe_path)
    c = competition.load(r.competition)
    clips = c.audio_paths(c.train)
    short = next(p for p in clips if len(audio.load_trimmed(p, r.features.sample_rate, r.features.trim_db)[0]) <= features.samples(r.features))
    return {"recipe_path": recipe_path, "recipe": r, "comp": tiny_trained["comp"], "clip": short}


def test_a_clip_is_predicted_from_its_cached_training_image(trained, tmp_path):
    r, clip = trained["recipe"], trained["clip"]
    cached = features.FeatureCache(trained["comp"] / ".ens_cache", r.features).get([clip], progress=False)
    f = r.features
    y, _ = audio.load_trimmed(clip, f.sample_rate, f.trim_db)
    loaded = audio.load(clip, f.sample_rate, f.duration, f.trim_db)
    np.testing.assert_array_equal(audio.fix_length(y, len(loaded)), loaded)
    np.testing.assert_array_equal(predict.model_inputs([y], r.features)[0], cached[0])  # bit-identical model input

    out = tmp_path / "pred.csv"
    output = _ok(["predict", str(clip), "--recipe", str(trained["recipe_path"]), "--out", str(out)])
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["path", *r.competition.classes] and frame["path"].tolist() == [str(clip)]
    row = frame[r.competition.classes].to_numpy()[0]
    assert row.sum() == pytest.approx(1.0, abs=1e-6)
    expected = np.mean([fold_mean(r, [b], cached)[0] for b in BACKBONES], axis=0)  # no blend yet: equal weights
    np.testing.assert_allclose(row, expected, atol=1e-5)
    assert clip.name in output and "equal weights" in output and r.competition.classes[int(row.argmax())] in output


def test_blend_weights_weight_the_members(trained):
    r = trained["recipe"]
    weights_json = Path(r.runs_dir) / r.name / "blend" / "weights.json"
    images = predict.model_inputs([audio.load_trimmed(trained["clip"], r.features.sample_rate, r.features.trim_db)[0]], r.features)
    a, b = (fold_mean(r, [backbone], images) for backbone in BACKBONES)
    try:
        weights_json.parent.mkdir(exist_ok=True)
        weights_json.write_text(json.dumps({"method": "caruana", "weights": {"test_efficientnet": 0.25, "test_resnet": 0.75}}))
        ensemble = predict.load_ensemble(r)
        assert [(m.backbone, m.weight, len(m.models)) for m in ensemble.members] == [("test_efficientnet", 0.25, 2), ("test_resnet", 0.75, 2)]
        np.testing.assert_allclose(ensemble.predict_images(images), 0.25 * a + 0.75 * b, atol=1e-6)
        # a blend that is not a weighted mean (stacking) falls back to equal weights over its members
        weights_json.write_text(json.dumps({"method": "stacking", "members": ["test_resnet"], "weights": None}))
        ensemble = predict.load_ensemble(r)
        assert [m.backbone for m in ensemble.members] == ["test_resnet"] and "not a weighted mean" in ensemble.weights_from
    finally:
        weights_json.unlink(missing_ok=True)


def test_a_long_file_is_windowed_and_its_row_is_the_mean_of_its_windows(trained, tmp_path):
    parts = [sf.read(ravdess_clip(actor, emotion), dtype="float32")[0] for actor, emotion in ((1, 5), (2, 3), (3, 4))]
    rate = sf.info(ravdess_clip(1, 5)).samplerate
    folder = tmp_path / "long"
    folder.mkdir()
    sf.write(folder / "three_clips.wav", np.concatenate(parts), rate)
    (folder / "notes.txt").write_text("not audio")
    out = tmp_path / "timeline.csv"
    _ok(["predict", str(folder), "--recipe", str(trained["recipe_path"]), "--timeline", "--hop", "1.0", "--out", str(out)])
    classes = trained["recipe"].competition.classes
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["path", "start_s", "end_s", *classes] and set(frame["path"]) == {str(folder / "three_clips.wav")}
    file_row, windows = frame.iloc[0], frame.iloc[1:]
    assert np.isnan(file_row["start_s"]) and len(windows) >= 6  # about 10 s of speech, 2 s windows every 1 s
    np.testing.assert_allclose(windows["end_s"] - windows["start_s"], 2.0)
    assert windows["start_s"].is_monotonic_increasing and windows["end_s"].max() <= sum(map(len, parts)) / rate
    np.testing.assert_allclose(frame[classes].sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(windows[classes].mean().to_numpy(), file_row[classes].to_numpy(dtype=float), atol=1e-9)


def test_windows_cover_the_audio():
    assert predict.windows(50, 100, 50) == [(0, 50)]
    assert predict.windows(250, 100, 50) == [(0, 100), (50, 150), (100, 200), (150, 250)]
    assert predict.windows(260, 100, 100) == [(0, 100), (100, 200), (160, 260)]


def test_save_image_writes_a_png_per_file(trained, tmp_path):
    _ok(["predict", str(trained["clip"]), "--recipe", str(trained["recipe_path"]), "--save-image", str(tmp_path / "img")])
    png = tmp_path / "img" / f"{trained['clip'].stem}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert predict.image_names([tmp_path / "a" / "x.wav", tmp_path / "b" / "x.flac"]) == ["x.png", "x-2.png"]


def test_errors_name_the_path_or_folder_and_the_fix(trained, tmp_path):
    recipe_path = str(trained["recipe_path"])
    result = runner.invoke(app, ["predict", str(tmp_path / "missing.wav"), "--recipe", recipe_path])
    assert result.exit_code == 2 and f"{tmp_path / 'missing.wav'}: no such file or folder" in result.output
    result = runner.invoke(app, ["predict", str(trained["clip"]), "--recipe", recipe_path, "--window", "3"])
    assert result.exit_code == 2 and "--window 3.0 s is longer than the recipe's [features].duration = 2.0 s" in result.output
    untrained = tmp_path / "untrained.toml"
    untrained.write_text(f'extends = "{recipe_path}"\nruns_dir = "{tmp_path / "no_runs"}"\n')
    result = runner.invoke(app, ["predict", str(trained["clip"]), "--recipe", str(untrained)])
    assert result.exit_code == 2 and str(tmp_path / "no_runs" / "untrained") in result.output and "ens train" in result.output


def test_on_error_skip_predicts_the_readable_files_and_lists_the_others(trained, tmp_path):
    recipe_path, clip = str(trained["recipe_path"]), trained["clip"]
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "notes.wav").write_text("not audio\n")
    args = ["predict", str(clip), str(tmp_path / "empty.wav"), str(tmp_path / "notes.wav"), "--recipe", recipe_path]

    failed = runner.invoke(app, args + ["--out", str(tmp_path / "fail.csv")])  # the default stops at the first bad file
    assert failed.exit_code == 2 and f"{tmp_path / 'empty.wav'}" in failed.output and not (tmp_path / "fail.csv").exists()

    result = runner.invoke(app, args + ["--on-error", "skip", "--out", str(tmp_path / "skip.csv")])
    assert result.exit_code == 0, result.output
    assert "warning: 2 audio file(s) cannot be used (skipped: they have no prediction)" in result.output
    assert f"{tmp_path / 'empty.wav'}: " in result.output and f"{tmp_path / 'notes.wav'}: " in result.output
    table = pd.read_csv(tmp_path / "skip.csv")
    assert table["path"].tolist() == [str(clip)]
    _ok(["predict", str(clip), "--recipe", recipe_path, "--out", str(tmp_path / "alone.csv")])
    pd.testing.assert_frame_equal(table, pd.read_csv(tmp_path / "alone.csv"))  # the good file's row is unchanged

    nothing = runner.invoke(app, ["predict", str(tmp_path / "empty.wav"), "--recipe", recipe_path, "--on-error", "skip"])
    assert nothing.exit_code == 2 and "no file left to predict" in nothing.output
