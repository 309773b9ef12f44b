"""Every shipped recipe builds and trains one short epoch on real RAVDESS clips."""

import dataclasses
import json

import numpy as np
import pytest

from ensemble.core import recipe as recipe_mod
from ensemble.members import data as data_mod
from ensemble.members import image_fit, tabular
from ensemble.store import runs as run_store
from ensemble.store import split as split_mod
from ensemble.store.corpora import ravdess

from .conftest import ROOT

RECIPES = sorted((ROOT / "recipes").glob("*.toml"))


def _first_run(path) -> str:
    """What a recipe's first backbone's run is defined by (image_fit.run_config's recipe part and the backbone);
    for a recipe of functionals members only, its first member's settings and the competition."""
    r = recipe_mod.load(path)
    if not r.backbones:
        return json.dumps([dataclasses.asdict(r.functionals[0]), r.competition.dir], sort_keys=True)
    return json.dumps([r.backbones[0], r.competition.dir, run_store._training_settings(r.for_backbone(r.backbones[0]))], sort_keys=True)


FIRST_RUNS: dict[str, object] = {}
for _path in RECIPES:  # recipes whose first run is the same run (ravdess / ravdess_aug_wave, ...) train once
    FIRST_RUNS.setdefault(_first_run(_path), _path)
TRAINED = list(FIRST_RUNS.values())


@pytest.fixture(scope="module")
def competitions(small_source, tmp_path_factory):
    root = tmp_path_factory.mktemp("recipes")
    out = {}
    for scheme in ravdess.LABEL_SCHEMES:
        ravdess.build(small_source, root / scheme, test_actors=(5, 6), labels=scheme)
        out[scheme] = root / scheme
    return out


def test_every_recipe_is_covered():
    """Every recipe loads, and either trains below or defines the same first run as one that does."""
    names = {p.stem for p in RECIPES}
    assert {"ravdess", "seed_mfcc_cnn", "seed_deep_cnn", "seed_gender_emotion", "seed_mfcc_noise_shift", "seed_pretrained_ensemble"} <= names
    twins = {p.stem: FIRST_RUNS[_first_run(p)].stem for p in RECIPES if p not in TRAINED}
    assert twins == {
        "esc50_candidates": "esc50",
        "ravdess_images": "ravdess_aug_wave",
        "ravdess_mixed": "ravdess_candidates",
        "ravdess_speaker": "ravdess_candidates",
        "seed_pretrained_ensemble": "ravdess_aug_none",
    }, twins


@pytest.mark.parametrize("path", TRAINED, ids=[p.stem for p in TRAINED])
def test_recipe_builds_and_runs_one_epoch(path, competitions, tmp_path):
    r = recipe_mod.load(path)
    by_folder = {"ravdess_gender_emotion": "gender_emotion", "ravdess_multilabel": "emotion_intensity"}
    scheme = by_folder.get(r.competition.dir.rstrip("/").split("/")[-1], "emotion")
    r.competition.dir = str(competitions[scheme])
    r.paths.runs_dir = str(tmp_path / "runs")
    r.folds.n_splits = 2
    r.train.epochs = 1
    r.train.batch_size = 8
    r.augment.copies = min(r.augment.copies, 1)
    if not r.backbones:  # functionals members only (a speech encoder's, the default's): its first member's fold 0
        member = r.functionals[0]
        split = split_mod.load_split(r)
        report, _ = tabular.train_fold(r, split, tabular.load_table(r, split, member, progress=False), member, 0)
        assert len(report["per_class_accuracy"]) == 8 and report["backbone"] == member.name
        assert run_store.is_finished(run_store.run_dir(r, member.name, 0))
        return
    data = data_mod.load_data(r.for_backbone(r.backbones[0]), progress=False)  # its first backbone's features (an AudioSet backbone's own frontend)
    assert data.x_train.shape[1] == len(r.for_backbone(r.backbones[0]).features.channels)
    if r.augment.copies:
        assert data.x_aug.shape == (1, *data.x_train.shape)
    report = image_fit.train_fold(r, data, r.backbones[0], 0, progress=False)
    classes = {"gender_emotion": 10, "emotion_intensity": 9}.get(scheme, 8)
    assert len(report["per_class_ap" if r.competition.task == "multilabel" else "per_class_accuracy"]) == classes
    run = run_store.run_dir(r, r.backbones[0], 0)
    log = [line for line in (run / "log.csv").read_text().splitlines()[1:]]
    assert len(log) == 1 and np.isfinite(json.loads((run / "metrics.json").read_text())["log_loss"])
