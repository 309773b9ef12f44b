"""ens predict on real RAVDESS clips with a tiny trained ensemble: same input as training, windows, images, errors."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from typer.testing import CliRunner

from ensemble import predict
from ensemble.cli import app
from ensemble.core import recipe as recipe_mod
from ensemble.inputs import audio, features, plots
from ensemble.store import competition

from .conftest import cli_ok as _ok
from .conftest import copy_tiny_runs, fold_mean, ravdess_clip

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
    weights_json = Path(r.paths.runs_dir) / r.name / "blend" / "weights.json"
    images = predict.model_inputs([audio.load_trimmed(trained["clip"], r.features.sample_rate, r.features.trim_db)[0]], r.features)
    a, b = (fold_mean(r, [backbone], images) for backbone in BACKBONES)
    try:
        weights_json.parent.mkdir(exist_ok=True)
        weights_json.write_text(json.dumps({"method": "caruana", "weights": {"test_efficientnet": 0.25, "test_resnet": 0.75}}))
        ensemble = predict.load_ensemble(r)
        shown = [(m.name, ensemble.weights[m.name], len(ensemble.models[m.name])) for m in ensemble.members]
        assert shown == [("test_efficientnet", 0.25, 2), ("test_resnet", 0.75, 2)]
        waveform = audio.load_trimmed(trained["clip"], r.features.sample_rate, r.features.trim_db)[0]
        np.testing.assert_allclose(ensemble.predict_waveforms([waveform]), 0.25 * a + 0.75 * b, atol=1e-6)
        # a blend that is not a weighted mean (stacking) falls back to equal weights over its members
        weights_json.write_text(json.dumps({"method": "stacking", "members": ["test_resnet"], "weights": None}))
        ensemble = predict.load_ensemble(r)
        assert [m.name for m in ensemble.members] == ["test_resnet"] and "not a weighted mean" in ensemble.weights_from
    finally:
        weights_json.unlink(missing_ok=True)


LEAD, TAIL = 1.3, 0.7  # seconds of digital silence around the speech of the long file


@pytest.fixture(scope="module")
def long_file(tmp_path_factory):
    """A folder holding a note and one WAV at 16 kHz (the clips' and the recipe's rate, so nothing is
    resampled): 1.3 s of zeros, three real clips one after the other (about 11 s), 0.7 s of zeros."""
    parts = [sf.read(ravdess_clip(actor, emotion), dtype="float32") for actor, emotion in ((1, 5), (2, 3), (3, 4))]
    rate = parts[0][1]
    assert {r for _, r in parts} == {rate}
    y = np.concatenate([np.zeros(round(LEAD * rate), np.float32), *(p for p, _ in parts), np.zeros(round(TAIL * rate), np.float32)])
    folder = tmp_path_factory.mktemp("long")
    sf.write(folder / "three_clips.wav", y, rate, subtype="FLOAT")
    (folder / "notes.txt").write_text("not audio")
    return folder, y, rate


def test_a_long_file_is_windowed_each_window_predicted_from_its_audio_and_placed_in_the_file(trained, long_file, tmp_path):
    import librosa

    folder, y, rate = long_file
    r, classes = trained["recipe"], trained["recipe"].competition.classes
    f = r.features
    assert (f.sample_rate, f.duration) == (rate, 2.0)
    out = tmp_path / "timeline.csv"
    _ok(["predict", str(folder), "--recipe", str(trained["recipe_path"]), "--timeline", "--hop", "1.0", "--out", str(out)])
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["path", "start_s", "end_s", *classes] and set(frame["path"]) == {str(folder / "three_clips.wav")}
    file_row, windows = frame.iloc[0], frame.iloc[1:]
    assert np.isnan(file_row["start_s"]) and np.isnan(file_row["end_s"])

    # where the speech is, by hand: librosa's trim of the file's samples at the recipe's trim_db
    speech, (first, last) = librosa.effects.trim(y, top_db=f.trim_db)
    assert LEAD * rate - 2048 <= first and last <= len(y) - TAIL * rate + 2048  # the zeros around it are trimmed
    # 2 s windows every 1 s over the trimmed speech, the last one ending where the speech ends
    n, window, hop = len(speech), 2 * rate, rate
    spans = [(a, a + window) for a in range(0, n - window + 1, hop)]
    if spans[-1][1] < n:
        spans.append((n - window, n))
    assert len(windows) == len(spans) >= 8
    np.testing.assert_allclose(windows["start_s"], [(first + a) / rate for a, _ in spans], rtol=0, atol=1e-9)  # seconds of the file
    np.testing.assert_allclose(windows["end_s"], [(first + b) / rate for _, b in spans], rtol=0, atol=1e-9)
    assert windows["start_s"].iloc[0] >= LEAD - 0.13 and windows["end_s"].iloc[-1] == pytest.approx(last / rate)

    # each window's row is the ensemble (equal weights: no blend) on that window's audio, cut and rendered by hand
    cut = np.stack([audio.fix_length(speech[a:b], features.samples(f)) for a, b in spans])
    images = features.render_batch(cut, f).astype(np.float16)
    expected = np.mean([fold_mean(r, [b], images) for b in BACKBONES], axis=0)
    got = windows[classes].to_numpy(dtype=float)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert len({tuple(row.round(4)) for row in got}) == len(got)  # the windows differ: each row is its own window's
    np.testing.assert_allclose(frame[classes].sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(file_row[classes].to_numpy(dtype=float), got.mean(axis=0), atol=1e-9)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--window", "1.0", "--hop", "1.5"], "--hop 1.5 s is longer than the window (1.0 s): audio between windows would be skipped"),
        (["--window", "0.00002"], "--window 2e-05: give a positive number of seconds (at least one sample, 1/16000 s)"),
        (["--window", "-1"], "--window -1.0: give a positive number of seconds"),
        (["--hop", "0.00002"], "--hop 2e-05: give a positive number of seconds (at least one sample, 1/16000 s)"),
        (["--hop", "0"], "--hop 0.0: give a positive number of seconds"),
    ],
)
def test_a_hop_longer_than_the_window_or_a_window_or_hop_under_one_sample_is_refused(trained, long_file, tmp_path, args, message):
    out = tmp_path / "refused.csv"
    result = runner.invoke(app, ["predict", str(long_file[0]), "--recipe", str(trained["recipe_path"]), "--timeline", *args, "--out", str(out)])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not out.exists()


def test_a_hop_equal_to_the_window_and_one_sample_windows_and_hops_are_accepted(trained, long_file, tmp_path):
    folder, y, rate = long_file
    out = tmp_path / "edge.csv"
    _ok(["predict", str(folder), "--recipe", str(trained["recipe_path"]), "--timeline", "--window", "2", "--hop", "2", "--out", str(out)])
    starts = pd.read_csv(out)["start_s"].dropna().to_numpy()
    np.testing.assert_allclose(np.diff(starts)[:-1], 2.0)  # back to back; the last one ends at the end of the speech
    short = folder.parent / "short"
    short.mkdir(exist_ok=True)
    sf.write(short / "a.wav", y[round(LEAD * rate) : round(LEAD * rate) + 40], rate, subtype="FLOAT")  # 40 samples of speech
    # one-sample windows every sample (on the library: a CSV of them would be long)
    [prediction] = predict.predict(predict.load_ensemble(trained["recipe"]), [short / "a.wav"], window=1 / rate, hop=1 / rate)
    assert len(prediction.spans) == len(prediction.window_proba) >= 2
    np.testing.assert_allclose(np.diff(prediction.spans[:, 0]), 1 / rate)


def test_windows_cover_the_audio():
    assert predict.windows(50, 100, 50) == [(0, 50)]
    assert predict.windows(250, 100, 50) == [(0, 100), (50, 150), (100, 200), (150, 250)]
    assert predict.windows(260, 100, 100) == [(0, 100), (100, 200), (160, 260)]


def test_save_image_writes_a_png_per_file(trained, long_file, tmp_path, monkeypatch):
    _ok(["predict", str(trained["clip"]), "--recipe", str(trained["recipe_path"]), "--save-image", str(tmp_path / "img")])
    png = tmp_path / "img" / f"{trained['clip'].stem}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert predict.image_names([tmp_path / "a" / "x.wav", tmp_path / "b" / "x.flac"]) == ["x.png", "x-2.png"]

    # what is drawn: a short clip's model input, a long file whole (trimmed), every channel (plots.clip_figure)
    drawn = []
    real = plots.clip_figure
    monkeypatch.setattr(plots, "clip_figure", lambda image, config, title: drawn.append((image, title)) or real(image, config, title))
    f = trained["recipe"].features
    predict.save_image(trained["clip"], f, tmp_path / "short.png")
    y, _ = audio.load_trimmed(trained["clip"], f.sample_rate, f.trim_db)
    np.testing.assert_array_equal(drawn[0][0], predict.model_inputs([y], f)[0])
    assert f"centre-padded to {f.duration} s" in drawn[0][1]
    predict.save_image(long_file[0] / "three_clips.wav", f, tmp_path / "long.png")
    speech, _ = audio.load_trimmed(long_file[0] / "three_clips.wav", f.sample_rate, f.trim_db)
    assert drawn[1][0].shape == (len(f.channels), f.height, 1 + len(speech) // f.hop_length) and "whole" in drawn[1][1]
    assert (tmp_path / "long.png").stat().st_size > (tmp_path / "short.png").stat().st_size  # a wider figure


def test_errors_name_the_path_or_folder_and_the_fix(trained, tmp_path):
    recipe_path = str(trained["recipe_path"])
    result = runner.invoke(app, ["predict", str(tmp_path / "missing.wav"), "--recipe", recipe_path])
    assert result.exit_code == 2 and f"{tmp_path / 'missing.wav'}: no such file or folder" in result.output
    result = runner.invoke(app, ["predict", str(trained["clip"]), "--recipe", recipe_path, "--window", "3"])
    assert (
        result.exit_code == 2
        and "--window 3.0 s is longer than 2.0 s, the shortest clip length ([features].duration) the models were trained on" in result.output
    )
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
