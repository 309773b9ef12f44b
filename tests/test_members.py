"""Members of any recipe: blending reads the run store's tables only (no feature cache, no audio),
and a recipe blends members of another recipe with other features (a longer clip) on the same
competition and folds, end to end on real RAVDESS clips; members trained on other folds are refused."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from ensemble import predict
from ensemble.blending import blend
from ensemble.core import recipe as recipe_mod
from ensemble.inputs import features
from ensemble.store import runs

from .conftest import cli_ok, copy_tiny_runs


def _no_rendering(monkeypatch):
    def refuse(*args, **kwargs):
        pytest.fail("blending rendered or read audio")

    for name in ("render_batch", "model_inputs", "load_waveform"):
        monkeypatch.setattr(features, name, refuse)
    monkeypatch.setattr(features.FeatureCache, "get", refuse)


def test_ens_blend_works_with_the_feature_cache_deleted_and_renders_nothing(tiny_trained, tmp_path, monkeypatch):
    comp = tmp_path / "comp"  # a copy of the competition folder without its feature cache
    shutil.copytree(tiny_trained["comp"], comp, symlinks=True, ignore=shutil.ignore_patterns(".ens_cache"))
    recipe = copy_tiny_runs(tiny_trained, tmp_path, blend=False)
    recipe.write_text(recipe.read_text().replace("[paths]\n", f'[competition]\ndir = "{comp}"\n[paths]\n'))
    _no_rendering(monkeypatch)
    output = cli_ok(["blend", "--recipe", str(recipe), "--method", "mean"])
    assert "wrote" in output and not (comp / ".ens_cache").exists()
    expected = pd.read_csv(tiny_trained["runs"] / "blend" / "leaderboard.csv").set_index("model").loc[["test_efficientnet", "test_resnet"], "accuracy"]
    board = pd.read_csv(tmp_path / "runs" / "tiny" / "blend" / "leaderboard.csv").set_index("model")
    np.testing.assert_array_equal(board.loc[expected.index, "accuracy"], expected)  # the same members, read from the tables alone


@pytest.fixture(scope="module")
def two_recipes(tiny_trained, tmp_path_factory):
    """The shared tiny runs (2.0 s clips) and competition copied, and a second recipe ``tiny_long``
    (3.0 s clips, another feature cache) that trains test_resnet on the same competition and folds
    into the same runs_dir."""
    root = tmp_path_factory.mktemp("two_recipes")
    comp = root / "comp"  # a copy: the 3.0 s clips get their own feature cache in it
    shutil.copytree(tiny_trained["comp"], comp, symlinks=True)
    tiny = copy_tiny_runs(tiny_trained, root, blend=False)
    tiny.write_text(tiny.read_text().replace("[paths]\n", f'[competition]\ndir = "{comp}"\n[paths]\n'))
    long = root / "tiny_long.toml"
    long.write_text(f'extends = "{tiny}"\nname = "tiny_long"\nbackbones = ["test_resnet"]\n[features]\nduration = 3.0\n')
    cli_ok(["train", "--recipe", str(long), "--quiet"])
    return {"root": root, "tiny": tiny, "long": long}


def test_a_blend_of_members_from_two_recipes_with_different_clip_lengths(two_recipes):
    root = two_recipes["root"]
    both = root / "both.toml"
    both.write_text(f'extends = "{two_recipes["tiny"]}"\nname = "tiny"\n[blend]\nmethod = "mean"\nmembers = ["test_resnet", "tiny_long:test_resnet"]\n')
    output = cli_ok(["blend", "--recipe", str(both)])
    board = pd.read_csv(root / "runs" / "tiny" / "blend" / "leaderboard.csv")
    assert list(board["model"][:2]) == ["test_resnet", "tiny_long:test_resnet"] and "wrote" in output

    r = recipe_mod.load(both)
    members = runs.members(r)
    result = blend.blend(r)
    short = runs.read_member(members[0], result.split)
    long = runs.read_member(members[1], result.split)
    assert not np.allclose(short[0], long[0])  # two different models
    np.testing.assert_allclose(result.oof, (short[0] + long[0]) / 2, atol=1e-12)  # the mean blend of both members' OOF
    np.testing.assert_allclose(result.test, (short[1] + long[1]) / 2, atol=1e-12)

    ensemble = predict.load_ensemble(r)  # each member renders the clip length it was trained on
    assert {name: made.features.duration for name, made in ensemble.trained_with.items()} == {"test_resnet": 2.0, "tiny_long:test_resnet": 3.0}
    clip = result.split.competition.audio_paths(result.split.competition.test)[0]
    (prediction,) = predict.predict(ensemble, [clip])
    assert prediction.proba.sum() == pytest.approx(1.0) and ensemble.duration == 2.0


def test_a_member_trained_on_other_folds_is_refused(two_recipes, tiny_trained, tmp_path):
    root = two_recipes["root"]
    comp = tmp_path / "comp"  # the same competition with another fold assignment
    shutil.copytree(tiny_trained["comp"], comp, symlinks=True)
    folds = pd.read_csv(comp / "folds.csv", dtype=str)
    folds["fold"] = folds["fold"].map({"0": "1", "1": "0"})
    folds.to_csv(comp / "folds.csv", index=False)
    other = root / "tiny_other.toml"
    other.write_text(f'extends = "{two_recipes["tiny"]}"\nname = "tiny_other"\nbackbones = ["test_resnet"]\n[competition]\ndir = "{comp}"\n')
    cli_ok(["train", "--recipe", str(other), "--quiet"])
    mixed = root / "mixed.toml"
    mixed.write_text(f'extends = "{two_recipes["tiny"]}"\nname = "tiny"\n[blend]\nmembers = ["test_resnet", "tiny_other:test_resnet"]\n')
    with pytest.raises(runs.RunError, match=r"tiny_other/test_resnet/fold0 was trained on another fold assignment than .*folds.csv"):
        blend.blend(recipe_mod.load(mixed))


def test_a_member_item_that_names_nothing_is_refused(two_recipes):
    r = recipe_mod.load(two_recipes["tiny"])
    r.blend.members = ["tiny_long:regnetx_002"]
    with pytest.raises(runs.RunError, match=r"\[blend\].members item 'tiny_long:regnetx_002': .*tiny_long has no run folder of 'regnetx_002'"):
        runs.members(r)
    r.blend.members = ["convnext"]
    with pytest.raises(runs.RunError, match=r"\[blend\].members item 'convnext' is no model of backbones"):
        runs.members(r)
