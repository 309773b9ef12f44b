"""The mixed recipe's whole shape in one go on real RAVDESS clips: recipes/ravdess_mixed.toml itself (the
default until the speech-encoder members, the base of recipes/ravdess_gpu.toml; extended, so its members,
speaker normalisation and blend are today's), cut to 2 folds and 1 epoch on the 48
clips, with an ImageNet image member at 16 kHz (its first backbone, tf_mobilenetv3_small_100) beside
the AudioSet frontend member efficientat_mn04 at 32 kHz, its three functionals members (openSMILE
ComParE_2016 and eGeMAPSv02, ens_basic) and the geometric blend, through ``ens train``, ``ens blend``
and ``ens predict``. Every figure is checked against a recomputation from the run tables or the saved models."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from ensemble.core import recipe as recipe_mod
from ensemble.inputs import audio, features
from ensemble.members import models
from ensemble.speaker import speaker_groups
from ensemble.store import runs

from .conftest import ROOT, cli_ok

WEIGHTS = ROOT.parent / "shared" / "weights"
IMAGE, AUDIOSET = "tf_mobilenetv3_small_100", "efficientat_mn04"
FUNCTIONALS = ("compare_lr", "egemaps_svm", "basic_lr")


@pytest.fixture(scope="module")
def default_run(small_source, tmp_path_factory):
    root = tmp_path_factory.mktemp("default_shape")
    comp = root / "comp"
    cli_ok(["data", "ravdess", "--source", str(small_source), "--out", str(comp), "--test-actors", "5,6", "--folds", "2"])
    recipe = root / "default.toml"
    recipe.write_text(
        f'extends = "{ROOT / "recipes" / "ravdess_mixed.toml"}"\nname = "default_shape"\nbackbones = ["{IMAGE}", "{AUDIOSET}"]\n'
        f'[paths]\nruns_dir = "{root / "runs"}"\nsubmissions_dir = "{root / "subs"}"\nweights_dir = "{WEIGHTS}"\n'
        f'[competition]\ndir = "{comp}"\n[folds]\nn_splits = 2\n[train]\nepochs = 1\nbatch_size = 8\n[augment]\ncopies = 0\n'
        "[by_backbone.efficientat_mn04.train]\nepochs = 1\n"
    )
    outputs = {"train": cli_ok(["train", "--recipe", str(recipe), "--quiet"]), "blend": cli_ok(["blend", "--recipe", str(recipe)])}
    return {"recipe": recipe, "r": recipe_mod.load(recipe), "comp": comp, "root": root, **outputs}


def _tables(r, name: str, table: str, ids: pd.Index) -> np.ndarray:
    """A member's probabilities from its fold tables, rows in ``ids`` order: ``oof.csv`` pooled over the
    folds (each clip from the fold model that did not train on it), ``test.csv`` averaged over the folds."""
    frames = [pd.read_csv(runs.run_dir(r, name, k) / table, dtype={"id": str}).set_index("id") for k in range(r.folds.n_splits)]
    classes = r.competition.classes
    if table == runs.OOF:
        pooled = pd.concat(frames)
        assert not pooled.index.duplicated().any()
        return pooled.loc[ids, classes].to_numpy()
    return np.mean([f.loc[ids, classes].to_numpy() for f in frames], axis=0)


def _geometric(probas: list[np.ndarray]) -> np.ndarray:
    """The normalised geometric mean of members' probabilities (each clipped at 1e-7, as the blender clips)."""
    logs = np.mean([np.log(np.clip(p, 1e-7, None)) for p in probas], axis=0)
    out = np.exp(logs)
    return out / out.sum(axis=1, keepdims=True)


def test_the_default_recipe_shape_trains_every_member_on_every_fold(default_run):
    r = default_run["r"]
    assert r.speakers.norm == "speaker" and r.blend.method == "geometric" and [m.name for m in r.functionals] == list(FUNCTIONALS)
    assert {m.set for m in r.functionals} == {"ComParE_2016", "eGeMAPSv02", "ens_basic"}
    for name in (IMAGE, AUDIOSET, *FUNCTIONALS):
        for fold in range(2):
            run = runs.run_dir(r, name, fold)
            assert runs.is_finished(run), run
            assert (run / runs.POPULATION).is_file()  # speaker-normalised: the training population saved for unknown speakers
            assert f"{name} fold {fold}:" in default_run["train"]
    made = {name: json.loads((runs.run_dir(r, name, 0) / runs.CONFIG).read_text())["recipe"] for name in (IMAGE, AUDIOSET)}
    assert made[IMAGE]["features"]["sample_rate"] == 16000 and made[IMAGE]["features"]["frontend"] == "image"
    assert made[AUDIOSET]["features"]["sample_rate"] == 32000 and made[AUDIOSET]["features"]["frontend"] == "efficientat"
    assert made[AUDIOSET]["train"]["layer_decay"] == 0.75 and made[AUDIOSET]["augment"]["freq_mask"] == 12  # its by_backbone settings
    test_speakers = json.loads((default_run["comp"] / speaker_groups.JSON).read_text())
    assert test_speakers["how"] == "inferred" and test_speakers["k"] >= 2


def test_the_geometric_blend_is_the_members_tables_geometric_mean(default_run):
    from ensemble.blending import blend

    r, comp = default_run["r"], default_run["comp"]
    train_ids = pd.Index(pd.read_csv(comp / "train.csv", dtype=str)["id"])
    test_ids = pd.Index(pd.read_csv(comp / "test.csv", dtype=str)["id"])
    names = (IMAGE, AUDIOSET, *FUNCTIONALS)
    oof = _geometric([_tables(r, name, runs.OOF, train_ids) for name in names])
    test = _geometric([_tables(r, name, runs.TEST, test_ids) for name in names])
    written = pd.read_csv(runs.blend_dir(r) / runs.OOF, dtype={"id": str}).set_index("id")
    np.testing.assert_allclose(written.loc[train_ids, r.competition.classes].to_numpy(), oof, atol=1e-9)
    weights = json.loads((runs.blend_dir(r) / runs.WEIGHTS).read_text())
    assert weights["method"] == "geometric" and weights["members"] == list(names) and weights["weights"] is None
    result = blend.blend(r)
    np.testing.assert_allclose(result.test, test, atol=1e-9)
    sub = pd.read_csv(default_run["root"] / "subs" / "default_shape-geometric.csv", dtype=str)
    assert list(sub["id"]) == list(test_ids)  # every test id once, in test.csv's order
    assert list(sub["label"]) == [r.competition.classes[k] for k in test.argmax(axis=1)]
    assert not np.allclose(test, np.mean([_tables(r, name, runs.TEST, test_ids) for name in names], axis=0), atol=1e-3)  # not the arithmetic mean


def test_ens_predict_of_one_test_speakers_clips_is_the_equal_weight_mean_of_its_members(default_run, tmp_path):
    """ens predict --same-speaker on one inferred test speaker's clips (each fits one 3.5 s window, so
    each is its cached training image): the 16 kHz members give their test.csv rows (normalised there
    by the same inferred speaker); efficientat_mn04 reads the 16 kHz audio resampled to 32 kHz, its
    images normalised by that speaker's and run through its fold models by hand. A geometric blend has
    no weights: ens predict averages its members equally (predict's documented rule)."""
    import librosa

    r, comp = default_run["r"], default_run["comp"]
    speakers_of = pd.read_csv(comp / speaker_groups.CSV, dtype=str).set_index("id")["speaker"]
    test = pd.read_csv(comp / "test.csv", dtype=str)
    one = test[test["id"].map(speakers_of) == speakers_of.iloc[0]]
    assert 2 <= len(one) < len(test)
    out = tmp_path / "p.csv"
    cli_ok(["predict", *[str(comp / p) for p in one["path"]], "--recipe", str(default_run["recipe"]), "--same-speaker", "--out", str(out)])
    got = pd.read_csv(out)
    assert [Path(p).name for p in got["path"]] == [Path(p).name for p in one["path"]]
    ids = pd.Index(one["id"])
    members = {name: _tables(r, name, runs.TEST, ids) for name in (IMAGE, *FUNCTIONALS)}
    # efficientat_mn04 by hand: 16 kHz trimmed audio -> 32 kHz -> its frontend's images -> CMVN over the speaker's images -> fold models
    made = r.for_backbone(AUDIOSET)
    unloaded = dataclasses.replace(made, train=dataclasses.replace(made.train, pretrained=False))  # its weights come from the runs
    clips = [audio.load_trimmed(comp / p, 16000, r.features.trim_db)[0] for p in one["path"]]
    images = features.model_inputs([librosa.resample(y, orig_sr=16000, target_sr=32000) for y in clips], made.features).astype(np.float64)
    mean, std = images.mean(axis=(0, 3), keepdims=True), images.std(axis=(0, 3), keepdims=True)
    pixels = np.clip(0.5 + (images - mean) / np.maximum(std, 1e-6) / 6, 0, 1).astype(np.float16).astype(np.float32)
    probas = []
    for fold in range(2):
        model = models.build(unloaded, AUDIOSET, len(r.competition.classes)).eval()
        model.load_state_dict(load_file(runs.run_dir(r, AUDIOSET, fold) / runs.MODEL))
        with torch.no_grad():
            probas.append(torch.softmax(model(torch.from_numpy(pixels)), dim=1).numpy())
    members[AUDIOSET] = np.mean(probas, axis=0)
    expected = np.mean(list(members.values()), axis=0)
    np.testing.assert_allclose(got[r.competition.classes].to_numpy(), expected, atol=1e-4)
