"""Speaker groups of a competition and speaker-level normalisation of its images, on real RAVDESS clips."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest

from ensemble import predict
from ensemble.core import recipe as recipe_mod
from ensemble.members import data as data_mod
from ensemble.speaker import speaker_groups
from ensemble.store import competition

from .conftest import ROOT, cli_ok

sys.path.insert(0, str(ROOT / "benchmarks"))
import inferred_speakers  # noqa: E402


@pytest.fixture(scope="module")
def comp_dir(small_source, tmp_path_factory):
    """A competition of 48 real clips (actors 1-6; actors 5 and 6 are the test set, 2 folds)."""
    root = tmp_path_factory.mktemp("speaker_groups") / "comp"
    cli_ok(["data", "ravdess", "--source", str(small_source), "--out", str(root), "--test-actors", "5,6", "--folds", "2"])
    return root


def _recipe(comp_dir, **speakers) -> recipe_mod.Recipe:
    return recipe_mod.from_dict(
        {
            "competition": {"dir": str(comp_dir)},
            "folds": {"n_splits": 2},
            "features": {"duration": 2.0, "height": 32, "hop_length": 640},
            "speakers": speakers,
        }
    )


def _with_test_groups(comp_dir, tmp_path, groups) -> competition.Competition:
    """A copy of the competition whose test.csv has a group column holding ``groups``."""
    copy = tmp_path / "comp"
    copy.mkdir()
    for name in ("train.csv", "sample_submission.csv", "folds.csv"):
        (copy / name).write_bytes((comp_dir / name).read_bytes())
    test = pd.read_csv(comp_dir / "test.csv", dtype=str)
    test["path"] = [str(comp_dir / p) for p in test["path"]]
    test["group"] = groups
    test.to_csv(copy / "test.csv", index=False)
    train = pd.read_csv(comp_dir / "train.csv", dtype=str)
    train["path"] = [str(comp_dir / p) for p in train["path"]]
    train.to_csv(copy / "train.csv", index=False)
    return competition.load(recipe_mod.CompetitionConfig(dir=str(copy)))


def test_a_test_group_column_is_used_as_given_and_an_empty_one_is_refused_naming_the_row(comp_dir, tmp_path):
    solution = pd.read_csv(comp_dir / "solution.csv", dtype=str).set_index("id")
    test = pd.read_csv(comp_dir / "test.csv", dtype=str)
    actors = solution.loc[test["id"], "group"].to_numpy()
    comp = _with_test_groups(comp_dir, tmp_path, actors)
    found = speaker_groups.test_speakers(comp, recipe_mod.SpeakersConfig(test="auto"), recipe_mod.FeatureConfig())
    assert (found.how, found.k) == ("given", 2) and list(found.groups) == list(actors)

    test = pd.read_csv(comp.root / "test.csv", dtype=str)
    test.loc[3, "group"] = " "
    test.to_csv(comp.root / "test.csv", index=False)
    comp = competition.load(comp.config)
    with pytest.raises(speaker_groups.SpeakerGroupError, match=rf"test.csv: the row with id {test['id'][3]!r} has no 'group' \(speaker\)"):
        speaker_groups.test_speakers(comp, recipe_mod.SpeakersConfig(test="given"), recipe_mod.FeatureConfig())


def test_given_without_a_column_and_norm_without_training_groups_are_refused(comp_dir, tmp_path):
    comp = competition.load(recipe_mod.CompetitionConfig(dir=str(comp_dir)))
    with pytest.raises(speaker_groups.SpeakerGroupError, match="has no group column 'group' for \\[speakers\\].test = 'given'"):
        speaker_groups.test_speakers(comp, recipe_mod.SpeakersConfig(test="given"), recipe_mod.FeatureConfig())
    no_groups = competition.load(recipe_mod.CompetitionConfig(dir=str(comp_dir), group_col="speaker"))
    with pytest.raises(speaker_groups.SpeakerGroupError, match="train.csv has no group column 'speaker'"):
        speaker_groups.train_groups(no_groups)


def test_pool_is_one_speaker_and_inferred_speakers_are_written_and_measured_by_the_benchmark(comp_dir):
    comp = competition.load(recipe_mod.CompetitionConfig(dir=str(comp_dir)))
    pooled = speaker_groups.test_speakers(comp, recipe_mod.SpeakersConfig(test="pool"), recipe_mod.FeatureConfig())
    assert pooled.k == 1 and set(pooled.groups) == {"pool"} and pooled.describe() == "test speakers: 1 (pool)"
    found = speaker_groups.test_speakers(comp, recipe_mod.SpeakersConfig(test="auto"), recipe_mod.FeatureConfig())
    assert found.how == "inferred" and found.k >= 2 and found.silhouette is not None
    assert "adjusted Rand" not in found.describe() and not hasattr(found, "ari")  # no score against the hidden labels
    path = speaker_groups.write(comp, found)
    written = pd.read_csv(path, dtype=str)
    assert list(written.columns) == ["id", "speaker"]
    assert list(written["id"]) == list(comp.test["id"]) and list(written["speaker"]) == list(found.groups)
    report = json.loads((comp_dir / speaker_groups.JSON).read_text())
    assert report == {"how": "inferred", "k": found.k, "silhouette": pytest.approx(found.silhouette)}
    # the benchmark measures the written file against solution.csv: actors 5 and 6, 8 clips each,
    # the encoder separates two voices (measured 1.0)
    k, ari = inferred_speakers.ari_of_test_speakers(comp)
    assert k == found.k and ari >= 0.8


def test_speaker_normalised_images_use_only_their_own_speakers_clips_and_no_label(comp_dir):
    r = _recipe(comp_dir, norm="speaker", test="pool")
    clip = data_mod.load_data(r, progress=False)
    plain = data_mod.load_data(_recipe(comp_dir), progress=False)
    train = speaker_groups.train_groups(plain.competition)
    assert clip.test_speakers.how == "pool" and plain.test_speakers is None
    # by hand: per speaker, channel and row, over that speaker's clips and frames
    for speaker in set(train):
        rows = train == speaker
        x = plain.x_train[rows].astype(np.float64)
        mean, std = x.mean(axis=(0, 3), keepdims=True), x.std(axis=(0, 3), keepdims=True)
        expected = np.clip(0.5 + (x - mean) / np.maximum(std, 1e-6) / 6, 0, 1)
        np.testing.assert_allclose(clip.x_train[rows].astype(np.float64), expected, atol=2e-3)
    # another speaker's images and every label changed: this speaker's normalised images are the same
    first = train == sorted(set(train))[0]
    other = plain.x_train.copy()
    other[~first] = other[~first][::-1]
    again, _, _, _ = speaker_groups.normalise_images(other, train, plain.x_test, np.full(len(plain.x_test), "pool"))
    np.testing.assert_array_equal(again[first], clip.x_train[first])


@pytest.fixture(scope="module")
def speaker_run(comp_dir, tmp_path_factory):
    """test_resnet trained 1 epoch on 2 folds with speaker-normalised images (test speakers inferred)."""
    root = tmp_path_factory.mktemp("speaker_run")
    recipe = root / "spk.toml"
    recipe.write_text(
        f'name = "spk"\nbackbones = ["test_resnet"]\n[paths]\nruns_dir = "{root / "runs"}"\nsubmissions_dir = "{root / "subs"}"\n'
        f'[competition]\ndir = "{comp_dir}"\n[folds]\nn_splits = 2\n[features]\nduration = 2.0\nheight = 32\nhop_length = 640\n'
        '[train]\nepochs = 1\nbatch_size = 8\npretrained = false\n[speakers]\nnorm = "speaker"\n'
    )
    output = cli_ok(["train", "--recipe", str(recipe), "--quiet"])
    return {"recipe": recipe, "output": output, "root": root}


def test_training_prints_the_test_speakers_and_saves_the_population_statistics(speaker_run, comp_dir):
    assert "test speakers: " in speaker_run["output"] and "(inferred, silhouette" in speaker_run["output"]
    assert (comp_dir / speaker_groups.CSV).is_file()
    r = recipe_mod.load(speaker_run["recipe"])
    plain = data_mod.load_data(_recipe(comp_dir), progress=False)
    train = speaker_groups.train_groups(plain.competition)
    x = plain.x_train.astype(np.float64)
    for fold in (0, 1):
        with np.load(speaker_run["root"] / "runs" / "spk" / "test_resnet" / f"fold{fold}" / "speaker_population.npz") as saved:
            # the population: every training speaker's clips pooled (means and variances combined by speaker)
            assert saved["mean"].shape == (3, 32, 1)
            np.testing.assert_allclose(saved["mean"], x.mean(axis=(0, 3))[..., None], atol=1e-4)
    assert len(set(train)) == 4 and r.speakers.norm == "speaker"


def test_predict_normalises_with_the_speakers_recordings_or_warns_and_uses_the_population(speaker_run, comp_dir, tmp_path):
    r = recipe_mod.load(speaker_run["recipe"])
    ensemble = predict.load_ensemble(r)
    assert list(ensemble.populations) == ["test_resnet"]
    test = pd.read_csv(comp_dir / "test.csv", dtype=str).set_index("id")
    solution = pd.read_csv(comp_dir / "solution.csv", dtype=str).set_index("id")
    files = [comp_dir / test.loc[i, "path"] for i in solution.index[solution["group"] == solution["group"].iloc[0]][:3]]  # one test actor
    with pytest.warns(predict.SpeakerNormWarning, match="training population's statistics"):
        population = predict.predict(ensemble, files)
    together = predict.predict(ensemble, files, same_speaker=True)
    speaker_dir = tmp_path / "same_speaker"
    speaker_dir.mkdir()
    for f in files:
        (speaker_dir / f.name).symlink_to(f)
    from_dir = predict.predict(ensemble, files, speaker=[speaker_dir])
    for a, b, c in zip(population, together, from_dir):
        # the same recordings: as windows (same_speaker) or whole and centre-cropped (speaker=): nearly the same statistics
        np.testing.assert_allclose(b.proba, c.proba, atol=2e-3)
        assert not np.allclose(a.proba, b.proba, atol=1e-4)
    with pytest.raises(predict.PredictError, match="either speaker= .* or same_speaker=True"):
        predict.predict(ensemble, files, speaker=[speaker_dir], same_speaker=True)
    output = cli_ok(["predict", str(files[0]), "--recipe", str(speaker_run["recipe"])])
    assert "warning: members ['test_resnet'] were trained on speaker-normalised images; with no other recording of the speaker (--speaker-dir DIR)" in output


def _cmvn_by_hand(x: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``x`` ``(n, channels, height, frames)`` standardised per channel and row by the mean and standard
    deviation of ``reference``'s clips and frames (float64), as [0, 1] pixels: 0.5 + z / 6, clipped."""
    ref = reference.astype(np.float64)
    mean, std = ref.mean(axis=(0, 3), keepdims=True), ref.std(axis=(0, 3), keepdims=True)
    return np.clip(0.5 + (x.astype(np.float64) - mean) / np.maximum(std, 1e-6) / 6, 0, 1)


def test_test_images_are_normalised_per_inferred_test_speaker_and_augmented_copies_by_their_clean_speaker(comp_dir):
    """By value: each inferred test speaker's images by that speaker's own statistics (not the test set
    pooled), and each augmented copy of a training clip by its speaker's clean-clip statistics."""
    r = _recipe(comp_dir, norm="speaker", test="auto")
    r.augment.copies = 1
    normed = data_mod.load_data(r, progress=False)
    plain_recipe = _recipe(comp_dir)
    plain_recipe.augment.copies = 1
    plain = data_mod.load_data(plain_recipe, progress=False)
    found = normed.test_speakers
    assert found.how == "inferred" and found.k >= 2
    groups = found.groups
    for speaker in set(groups):
        rows = groups == speaker
        assert 2 <= rows.sum() < len(groups)
        expected = _cmvn_by_hand(plain.x_test[rows], plain.x_test[rows])
        np.testing.assert_allclose(normed.x_test[rows].astype(np.float64), expected, atol=2e-3)
        # not vacuous: the test set pooled gives other pixels
        pooled = _cmvn_by_hand(plain.x_test[rows], plain.x_test)
        assert np.abs(pooled - expected).max() > 0.05
    train = speaker_groups.train_groups(plain.competition)
    assert plain.x_aug.shape == (1, *plain.x_train.shape) and not np.array_equal(plain.x_aug[0], plain.x_train)
    for speaker in set(train):
        rows = train == speaker
        expected = _cmvn_by_hand(plain.x_aug[0][rows], plain.x_train[rows])  # the clean clips' statistics
        np.testing.assert_allclose(normed.x_aug[0][rows].astype(np.float64), expected, atol=2e-3)
        own = _cmvn_by_hand(plain.x_aug[0][rows], plain.x_aug[0][rows])  # what normalising the copy by itself would give
        assert np.abs(own - expected).max() > 0.05
