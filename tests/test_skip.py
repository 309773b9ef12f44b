"""--on-error fail|skip: clips that cannot be loaded stop the run with a list of them, or are left
out and listed, and a skipped test clip still gets a submission row (the training prior)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from ensemble.blending import blend, blenders
from ensemble.cli import app
from ensemble.core import recipe as recipe_mod
from ensemble.inputs import features
from ensemble.members import data as data_mod
from ensemble.store import competition
from ensemble.store import runs as run_store
from ensemble.store import split as split_mod

from .conftest import cli_ok, ravdess_clip, tiny_competition

RUN = ["--backbone", "test_resnet", "--quiet"]


@pytest.fixture(scope="module")
def broken(small_source, tiny_recipe_text, tmp_path_factory):
    """A tiny competition whose first training clip is a text file and whose first test clip does not exist."""
    root = tmp_path_factory.mktemp("skip")
    recipe = tiny_competition(root / "tiny.toml", tiny_recipe_text(root / "comp", root / "runs", root / "subs"), small_source)
    comp = root / "comp"
    (root / "notes.wav").write_text("recorded on the old phone, see notes")
    for table, path in (("train.csv", root / "notes.wav"), ("test.csv", root / "gone.wav")):
        frame = pd.read_csv(comp / table, dtype=str, keep_default_na=False)
        frame.loc[0, "path"] = str(path)
        frame.to_csv(comp / table, index=False)
    frames = {name: pd.read_csv(comp / f"{name}.csv", dtype=str, keep_default_na=False) for name in ("train", "test")}
    return {"root": root, "recipe": recipe, "bad_train": frames["train"]["id"][0], "bad_test": frames["test"]["id"][0]}


def test_by_default_unloadable_clips_stop_training_with_each_file_named(broken):
    result = CliRunner().invoke(app, ["train", "--recipe", str(broken["recipe"]), *RUN])
    assert result.exit_code == 2
    assert "gone.wav: audio file does not exist" in result.output and "--on-error skip" not in result.output  # missing files fail first
    (broken["root"] / "gone.wav").write_bytes(b"")  # now it exists but is empty: both files are listed
    try:
        result = CliRunner().invoke(app, ["train", "--recipe", str(broken["recipe"]), *RUN])
    finally:
        (broken["root"] / "gone.wav").unlink()
    assert result.exit_code == 2
    assert "2 audio file(s) cannot be used" in result.output and "notes.wav" in result.output and "gone.wav" in result.output
    assert "--on-error skip" in result.output
    assert not (broken["root"] / "runs").exists()  # nothing trained


def test_skip_leaves_bad_clips_out_lists_them_and_predicts_skipped_test_clips_as_the_prior(broken):
    output = cli_ok(["train", "--recipe", str(broken["recipe"]), *RUN, "--on-error", "skip"])
    assert "skipped 1 training and 1 test clip(s)" in output
    skipped = pd.read_csv(broken["root"] / "runs" / "tiny" / "skipped.csv", dtype=str)
    assert skipped[["table", "id"]].values.tolist() == [["train", broken["bad_train"]], ["test", broken["bad_test"]]]
    assert "notes.wav" in skipped["path"][0] and "not audio" in skipped["error"][0] and "does not exist" in skipped["error"][1]

    r = recipe_mod.load(broken["recipe"])
    r.backbones = ["test_resnet"]
    with pytest.warns(split_mod.SkippedClipsWarning):
        data = data_mod.load_data(r, progress=False, on_error="skip")
    assert broken["bad_train"] not in set(data.competition.train["id"]) and len(data.y) == len(data.folds) == len(data.x_train) == 31
    classes = data.competition.classes
    prior = np.bincount(data.y, minlength=len(classes)) / len(data.y)
    oof = pd.concat([pd.read_csv(run_store.run_dir(r, "test_resnet", k) / "oof.csv", dtype={"id": str}) for k in (0, 1)])
    assert len(oof) == 31 and broken["bad_train"] not in set(oof["id"])
    for k in (0, 1):
        test = pd.read_csv(run_store.run_dir(r, "test_resnet", k) / "test.csv", dtype={"id": str}).set_index("id")
        assert len(test) == 16
        np.testing.assert_allclose(test.loc[broken["bad_test"], classes].to_numpy(dtype=float), prior)
        assert not np.allclose(test.drop(index=broken["bad_test"])[classes].to_numpy(dtype=float), prior)

    rows = (data.competition.test["id"] == broken["bad_test"]).to_numpy()
    for method in blenders.METHODS:  # the prior whatever the method makes of it, even a rank blend
        result = blend.blend(r, method=method)  # the skipped clips read from skipped.csv, no audio
        np.testing.assert_allclose(result.test[rows][0], prior, err_msg=method)
        submission = pd.read_csv(blend.write(r, result, f"skip-{method}"), dtype=str, keep_default_na=False)
        assert sorted(submission["id"]) == sorted(data.competition.sample["id"])  # every id, the skipped one included
        assert submission.set_index("id").loc[broken["bad_test"], "label"] == classes[int(prior.argmax())], method


def test_blend_leaves_out_the_clips_training_skipped(broken):
    """Blending reads no audio: the clips training skipped come from the run store's skipped.csv."""
    output = cli_ok(["train", "--recipe", str(broken["recipe"]), *RUN, "--on-error", "skip"])
    skipped = broken["root"] / "runs" / "tiny" / "skipped.csv"
    assert f"listed in {skipped}" in output
    output = cli_ok(["blend", "--recipe", str(broken["recipe"]), "--backbone", "test_resnet"])
    assert f"training left out 1 training and 1 test clip(s) that cannot be loaded ({skipped})" in output and "wrote" in output


def test_unknown_policy_is_refused(broken):
    result = CliRunner().invoke(app, ["train", "--recipe", str(broken["recipe"]), *RUN, "--on-error", "ignore"])
    assert result.exit_code == 2 and "ignore" in result.output and "fail" in result.output and "skip" in result.output


@pytest.mark.parametrize("broken_rows, message", [("fold 0", r"leaves fold\(s\) \[0\] empty"), ("all", "none of the 32 training clips")])
def test_skipping_that_empties_a_fold_or_the_training_set_is_refused(broken, tmp_path, broken_rows, message):
    import shutil

    comp = tmp_path / "comp"
    shutil.copytree(broken["root"] / "comp", comp, ignore=shutil.ignore_patterns(".ens_cache"))
    train_csv = pd.read_csv(comp / "train.csv", dtype=str, keep_default_na=False)
    folds = pd.read_csv(comp / "folds.csv", dtype=str).set_index("id").loc[train_csv["id"], "fold"].to_numpy()
    rows = folds == "0" if broken_rows == "fold 0" else np.ones(len(train_csv), bool)
    train_csv.loc[rows, "path"] = str(broken["root"] / "notes.wav")
    train_csv.to_csv(comp / "train.csv", index=False)
    r = recipe_mod.load(broken["recipe"])
    r.competition.dir, r.paths.runs_dir = str(comp), str(tmp_path / "runs")
    with pytest.raises(competition.CompetitionError, match=message):
        data_mod.load_data(r, progress=False, on_error="skip")
    assert not (tmp_path / "runs").exists()


def test_skip_with_augmented_copies_drops_only_the_bad_clip(broken, tmp_path):
    r = recipe_mod.load(broken["recipe"])
    r.augment.copies, r.paths.runs_dir = 1, str(tmp_path / "runs")
    with pytest.warns(split_mod.SkippedClipsWarning, match="skipped 1 training and 1 test clip"):
        data = data_mod.load_data(r, progress=False, on_error="skip")
    full = pd.read_csv(broken["root"] / "comp" / "train.csv", dtype=str, keep_default_na=False)
    assert sorted(data.competition.train["id"]) == sorted(set(full["id"]) - {broken["bad_train"]})
    assert data.x_aug.shape[:2] == (1, 31) and len(data.x_train) == len(data.y) == len(data.folds) == 31
    assert data.skipped[["table", "id"]].values.tolist() == [["train", broken["bad_train"]], ["test", broken["bad_test"]]]
    assert not (tmp_path / "runs").exists()  # loading writes nothing


def test_a_failed_clip_is_not_read_again_until_it_is_fixed_then_it_is_rendered(tmp_path, monkeypatch):
    """The cache remembers a clip's error under its key (path, size, mtime): the next run does not read
    it again; once the file is fixed (new content) it is read once, rendered and cached correctly."""
    import shutil

    config = recipe_mod.FeatureConfig(duration=2.0, height=32, hop_length=640)
    good, bad, replacement = ravdess_clip(1, 1), tmp_path / "clip.flac", ravdess_clip(2, 3)
    bad.write_text("not audio yet: still uploading")
    reads, real_load = [], features.audio.load

    def counting_load(path, *args, **kwargs):
        reads.append(Path(path).name)
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(features.audio, "load", counting_load)
    cache = features.FeatureCache(tmp_path / "cache", config)
    images, failed = cache.get_skipping([good, bad], progress=False)
    assert reads == [good.name, bad.name] and list(failed) == [1] and "not audio" in failed[1] and not images[1].any()

    reads.clear()
    with pytest.raises(features.audio.AudioError, match="clip.flac: .*not audio"):  # the next run: the same error, from the index
        features.FeatureCache(tmp_path / "cache", config).get([good, bad], progress=False)
    assert reads == []  # neither clip read again

    shutil.copyfile(replacement, bad)  # fixed: other size and mtime, so another key
    fixed = np.array(features.FeatureCache(tmp_path / "cache", config).get([good, bad], progress=False))
    assert reads == [bad.name]  # only the fixed clip is read, once
    reads.clear()
    expected = features.FeatureCache(tmp_path / "fresh", config).get([good, replacement], progress=False)
    np.testing.assert_array_equal(fixed, expected)  # the right image, next to the good clip's unchanged one
    np.testing.assert_array_equal(features.FeatureCache(tmp_path / "cache", config).get([bad], progress=False)[0], expected[1])
    assert reads == [good.name, replacement.name]  # the fresh cache's renders; the fixed clip came from the cache
