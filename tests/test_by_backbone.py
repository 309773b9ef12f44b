"""Per-backbone settings (``[by_backbone.<model>.train]`` / ``.augment``): applied to that model's
entries only (every seed and pseudo round), outside every other run's identity, overridden by
the command line, checked like the sections themselves; and a grid that trains two backbones with
different epochs and augmented copies on real RAVDESS clips."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from ensemble import train
from ensemble.core import recipe as recipe_mod
from ensemble.store import runs

from .conftest import cli_ok

MIXED = """
name = "mixed"
backbones = ["regnetx_002", "regnetx_002@43", "efficientat_mn04"]
[train]
epochs = 15
[by_backbone.efficientat_mn04.train]
epochs = 8
layer_decay = 0.75
[by_backbone.efficientat_mn04.augment]
freq_mask = 12
"""


def _load(tmp_path, text: str, overrides: dict | None = None, name: str = "mixed.toml") -> recipe_mod.Recipe:
    path = tmp_path / name
    path.write_text(text)
    return recipe_mod.load(path, overrides)


def test_settings_apply_to_their_model_only_with_every_seed_and_round(tmp_path):
    r = _load(tmp_path, MIXED)
    mn04, plain, seeded = (r.for_backbone(e) for e in ("efficientat_mn04", "regnetx_002", "regnetx_002@43"))
    assert (mn04.train.epochs, mn04.train.layer_decay, mn04.augment.freq_mask) == (8, 0.75, 12)
    assert (plain.train.epochs, plain.train.layer_decay, plain.augment.freq_mask) == (15, 0.0, 0)
    assert (seeded.train.epochs, seeded.train.seed) == (15, 43)
    assert r.for_backbone("efficientat_mn04+pl1").train.epochs == 8  # a pseudo round's student trains like its teacher
    assert mn04.by_backbone == {} and r.for_backbone("efficientat_mn04") == mn04.for_backbone("efficientat_mn04")


def test_one_models_table_is_no_part_of_another_models_run_identity(tmp_path):
    with_table = _load(tmp_path, MIXED)
    without = _load(tmp_path, MIXED.split("[by_backbone")[0], name="plain.toml")
    config = lambda r, entry: runs.run_config(r, ["a", "b"], "digest", entry, 0)  # noqa: E731
    assert config(with_table, "regnetx_002") == config(without, "regnetx_002")
    mn04 = config(with_table, "efficientat_mn04")
    assert mn04["recipe"]["train"]["epochs"] == 8 and "by_backbone" not in mn04["recipe"]
    assert mn04 != config(without, "efficientat_mn04")


def test_a_command_line_override_wins_over_the_table_and_extends_merges_tables(tmp_path):
    r = _load(tmp_path, MIXED, {"train": {"epochs": 1}})  # ens train --epochs 1
    assert r.for_backbone("efficientat_mn04").train.epochs == 1 and r.for_backbone("regnetx_002").train.epochs == 1
    assert r.for_backbone("efficientat_mn04").train.layer_decay == 0.75  # keys the override does not set stay
    (tmp_path / "mixed.toml").write_text(MIXED)
    child = _load(tmp_path, 'extends = "mixed.toml"\n[by_backbone.efficientat_mn04.train]\nepochs = 4\n', name="child.toml")
    assert (child.for_backbone("efficientat_mn04").train.epochs, child.for_backbone("efficientat_mn04").train.layer_decay) == (4, 0.75)
    narrowed = _load(tmp_path, MIXED, {"backbones": ["regnetx_002"]})  # ens train --backbone regnetx_002: the table is not stray
    assert narrowed.backbones == ["regnetx_002"]


@pytest.mark.parametrize(
    "table, message",
    [
        ("[by_backbone.regnetx_02.train]\nepochs = 3\n", r"\[by_backbone\] tables \['regnetx_02'\] name no model of backbones"),
        ("[by_backbone.regnetx_002.features]\nn_mels = 64\n", r"\[by_backbone.regnetx_002\] may hold only the tables \['augment', 'train'\]"),
        ("[by_backbone.regnetx_002.train]\nepoch = 3\n", r"unknown key\(s\) \['epoch'\] in \[by_backbone.regnetx_002.train\]"),
        ("[by_backbone.regnetx_002.train]\nlr = 'fast'\n", r"\[by_backbone.regnetx_002.train\].lr = 'fast' should be of type float"),
        ("[by_backbone.efficientat_mn04.train]\nlayer_decay = 2.0\n", r"\[by_backbone.efficientat_mn04\]: \[train\].layer_decay = 2.0: must be in \(0, 1\]"),
        ("[by_backbone.efficientat_mn04.augment]\nfreq_mask = 200\n", r"\[by_backbone.efficientat_mn04\]: \[augment\].freq_mask = 200 is wider than the 128"),
    ],
)
def test_bad_tables_are_refused_naming_the_table(tmp_path, table, message):
    with pytest.raises(recipe_mod.RecipeError, match=message):
        _load(tmp_path, MIXED.split("[by_backbone")[0] + table)


def test_a_grid_trains_each_backbone_with_its_own_epochs_and_augmented_copies(small_source, tiny_recipe_text, tmp_path):
    comp = tmp_path / "comp"
    cli_ok(["data", "ravdess", "--source", str(small_source), "--out", str(comp), "--test-actors", "5,6", "--folds", "2"])
    text = tiny_recipe_text(comp, tmp_path / "runs", tmp_path / "subs")
    text += "[by_backbone.test_resnet.train]\nepochs = 2\n[by_backbone.test_resnet.augment]\ncopies = 1\n"
    path = tmp_path / "tiny.toml"
    path.write_text(text)
    r = recipe_mod.load(path)
    results = train.train(r, progress=False)
    assert sorted((x.entry, x.fold) for x in results) == [("test_efficientnet", 0), ("test_efficientnet", 1), ("test_resnet", 0), ("test_resnet", 1)]
    for entry, epochs, copies in (("test_efficientnet", 1, 0), ("test_resnet", 2, 1)):
        for fold in (0, 1):
            run = runs.run_dir(r, entry, fold)
            assert len(pd.read_csv(run / runs.LOG)) == epochs
            stored = json.loads((run / runs.CONFIG).read_text())["recipe"]
            assert (stored["train"]["epochs"], stored["augment"]["copies"]) == (epochs, copies)
    assert all(x.skipped for x in train.train(r, progress=False))  # each run finished with its own settings
