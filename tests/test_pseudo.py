"""Pseudo-labelling on real RAVDESS clips: a recipe with an image member and a functionals member
trains a round of students with `ens train --pseudo-label` and blends them with `ens blend
--pseudo-label`; the labels come from the teachers' fold models only, never include a training
(hence never a validation) clip nor a clip below the threshold, and the students learn from them."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from ensemble.core import recipe as recipe_mod
from ensemble.core.entry import Entry
from ensemble.members import data as data_mod
from ensemble.members import pseudo, tabular
from ensemble.store import runs
from ensemble.store import split as split_mod

from .conftest import BASIC_LR, cli_ok, one_backbone_recipe, ravdess_clip

MEMBERS = (
    BASIC_LR
    + """
[pseudo]
threshold = 0.14
"""
)


@pytest.fixture(scope="module")
def rounds(small_source, tiny_recipe_text, tmp_path_factory):
    """The tiny recipe (test_resnet, 2 folds, 1 epoch) with a functionals member, trained with one pseudo round and blended."""
    root = tmp_path_factory.mktemp("pseudo")
    recipe, comp = one_backbone_recipe(root, small_source, tiny_recipe_text, MEMBERS)
    train_output = cli_ok(["train", "--recipe", str(recipe), "--quiet", "--pseudo-label"])
    blend_output = cli_ok(["blend", "--recipe", str(recipe), "--method", "mean", "--pseudo-label"])
    r = recipe_mod.load(recipe, {"pseudo": {"rounds": 1}})
    return {"recipe": recipe, "r": r, "root": root, "comp": comp, "train": train_output, "blend": blend_output}


def teacher_mean(r, fold: int) -> pd.DataFrame:
    """The teachers' fold-``fold`` test probabilities averaged, read straight from their test.csv files."""
    tables = [pd.read_csv(runs.run_dir(r, name, fold) / runs.TEST).set_index("id").sort_index() for name in ("test_resnet", "basic_lr")]
    return sum(tables) / len(tables)


def test_one_round_trains_students_of_every_kind_after_their_teachers_and_blends_them(rounds):
    lines = [line.split(":")[0] for line in rounds["train"].splitlines() if " fold " in line and "->" in line and not line.startswith("round")]
    assert lines == [
        "test_resnet fold 0",
        "test_resnet fold 1",
        "basic_lr fold 0",
        "basic_lr fold 1",
        "test_resnet+pl1 fold 0",
        "test_resnet+pl1 fold 1",
        "basic_lr+pl1 fold 0",
        "basic_lr+pl1 fold 1",
    ]
    assert "round 1 fold 0:" in rounds["train"] and "test clips pseudo-labelled at confidence >= 0.140" in rounds["train"]
    board = pd.read_csv(rounds["root"] / "runs" / "tiny" / "blend" / "leaderboard.csv")
    assert {"test_resnet", "basic_lr", "test_resnet+pl1", "basic_lr+pl1"} <= set(board["model"])
    config = json.loads((runs.run_dir(rounds["r"], "test_resnet+pl1", 0) / runs.CONFIG).read_text())
    assert config["pseudo"]["round"] == 1 and config["pseudo"]["teachers"] == ["test_resnet", "basic_lr"]
    assert config["recipe"]["train"]["seed"] == rounds["r"].train.seed  # the student trains with its teacher entry's settings


def test_labels_are_the_teachers_fold_models_mean_above_the_threshold_and_never_a_training_clip(rounds):
    r, comp = rounds["r"], rounds["comp"]
    train_ids = set(pd.read_csv(comp / "train.csv", dtype=str)["id"])
    test_ids = set(pd.read_csv(comp / "test.csv", dtype=str)["id"])
    folds = pd.read_csv(comp / "folds.csv", dtype=str)
    for fold in (0, 1):
        written = pd.read_csv(pseudo.labels_path(r, 1, fold), dtype={"id": str}).set_index("id")
        classes = r.competition.classes
        mean = teacher_mean(r, fold)
        expected = mean[mean[classes].max(axis=1) >= 0.14]
        assert 0 < len(written) and set(written.index) == set(expected.index.astype(str))
        assert set(written.index) <= test_ids and not set(written.index) & train_ids
        assert not set(written.index) & set(folds.loc[folds["fold"] == str(fold), "id"])  # no validation clip of the fold
        np.testing.assert_allclose(written.loc[expected.index.astype(str), classes].to_numpy(), expected[classes].to_numpy(), atol=1e-9)
        assert (written[classes].max(axis=1) >= 0.14).all()


def test_a_threshold_between_the_confidences_keeps_exactly_the_clips_above_it(rounds):
    r = rounds["r"]
    split = split_mod.load_split(r)
    confidence = teacher_mean(r, 0)[r.competition.classes].max(axis=1).to_numpy()
    middle = float(np.median(confidence))
    labels = pseudo.fold_labels(dataclasses.replace(r, pseudo=dataclasses.replace(r.pseudo, threshold=middle)), split, 1, 0)
    test_ids = split.competition.test["id"].astype(str).to_numpy()
    by_id = dict(zip(teacher_mean(r, 0).index.astype(str), confidence, strict=True))
    kept = {test_ids[row] for row in labels.rows}
    assert kept == {i for i, c in by_id.items() if c >= middle} and 0 < len(kept) < len(test_ids)
    assert labels.targets.max(axis=1).min() >= middle and np.allclose(labels.targets.sum(axis=1), 1)


def test_the_automatic_threshold_is_the_lowest_confidence_precise_enough_on_oof():
    confidence = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    correct = np.array([True, True, True, False, True, False, False, False])
    # kept from the top: precision 1, 1, 1, .75, .8, .67, .57, .5
    assert pseudo.auto_threshold(confidence, correct, precision=0.8, min_kept=1) == 0.6
    assert pseudo.auto_threshold(confidence, correct, precision=0.9, min_kept=1) == 0.8
    assert pseudo.auto_threshold(confidence, correct, precision=0.9, min_kept=4) == 1.0  # never precise enough with 4 kept: keep nothing


def test_a_functionals_student_is_fitted_on_soft_targets_as_weighted_rows(rounds):
    r = rounds["r"]
    split = split_mod.load_split(r)
    member = r.functionals_member("basic_lr+pl1")
    assert member.name == "basic_lr+pl1" and member.set == "ens_basic"
    table = tabular.load_table(r, split, member, progress=False)
    labels = pseudo.fold_labels(r, split, 1, 1)
    fold_of = split.folds["fold"].to_numpy()
    train_idx = np.flatnonzero(fold_of != 1)
    c = len(r.competition.classes)
    x = np.concatenate([table.x_train[train_idx], np.repeat(table.x_test[labels.rows], c, axis=0)])
    y = np.concatenate([split.y[train_idx], np.tile(np.arange(c), len(labels.rows))])
    w = np.concatenate([np.ones(len(train_idx)), labels.targets.ravel()])
    model = tabular.pipeline(member, r.train.seed, y)
    model.fit(x, y, standardscaler__sample_weight=w, logisticregression__sample_weight=w)
    saved = tabular.load_pipeline(runs.run_dir(r, "basic_lr+pl1", 1))
    valid = table.x_train[fold_of == 1]
    np.testing.assert_allclose(saved.predict_proba(valid), model.predict_proba(valid), atol=1e-8)
    teacher = tabular.load_pipeline(runs.run_dir(r, "basic_lr", 1))
    assert not np.allclose(saved.predict_proba(valid), teacher.predict_proba(valid), atol=1e-3)  # the pseudo rows changed the model


def test_an_image_student_draws_the_pseudo_labelled_test_images(rounds):
    r = rounds["r"]
    data = data_mod.load_data(r, progress=False)
    n_train = len(data.y)
    test_rows = np.array([3, 0])
    got = data.gather(np.array([1, n_train + 1, n_train]), None, test_rows)
    np.testing.assert_array_equal(got[0], data.x_train[1].astype(np.float32))
    np.testing.assert_array_equal(got[1], data.x_test[0].astype(np.float32))
    np.testing.assert_array_equal(got[2], data.x_test[3].astype(np.float32))
    metrics = json.loads((runs.run_dir(r, "test_resnet+pl1", 0) / runs.METRICS).read_text())
    written = pd.read_csv(pseudo.labels_path(r, 1, 0))
    assert metrics["pseudo_labelled"] == len(written) > 0


def test_students_are_skipped_when_finished_and_new_labels_are_a_conflict(rounds):
    again = cli_ok(["train", "--recipe", str(rounds["recipe"]), "--quiet", "--pseudo-label"])
    assert again.count("[already finished, skipped]") == 8
    other = rounds["root"] / "other.toml"
    other.write_text(rounds["recipe"].read_text().replace("threshold = 0.14", "threshold = 0.3"))
    r = recipe_mod.load(other, {"pseudo": {"rounds": 1}})
    split = split_mod.load_split(r)
    member = r.functionals_member("basic_lr+pl1")
    labels = pseudo.fold_labels(r, split, 1, 0)
    with pytest.raises(runs.RunConflictError, match=r"basic_lr\+pl1/fold0 holds a finished run with a different configuration"):
        tabular.train_fold(r, split, tabular.load_table(r, split, member, progress=False), member, 0, pseudo=labels)


def test_pseudo_settings_are_checked():
    with pytest.raises(recipe_mod.RecipeError, match="mixup_alpha > 0 do not go together"):
        recipe_mod.from_dict({"backbones": ["a"], "pseudo": {"rounds": 1}, "augment": {"mixup_alpha": 0.4}})
    recipe_mod.from_dict({"backbones": ["a"], "functionals": [{"name": "f"}], "pseudo": {"rounds": 1, "members": ["f"]}, "augment": {"mixup_alpha": 0.4}})
    with pytest.raises(recipe_mod.RecipeError, match=r"\[pseudo\].members = \['b'\]: each must be a member of this recipe"):
        recipe_mod.from_dict({"backbones": ["a"], "pseudo": {"rounds": 1, "members": ["b"]}})
    with pytest.raises(recipe_mod.RecipeError, match="0 <= threshold < 1"):
        recipe_mod.from_dict({"backbones": ["a"], "pseudo": {"threshold": 1.5}})
    with pytest.raises(recipe_mod.RecipeError, match="may not contain '\\+pl'"):
        recipe_mod.from_dict({"backbones": ["a+pl1"]})
    with pytest.raises(recipe_mod.RecipeError, match="works for multiclass tasks only"):
        recipe_mod.from_dict({"competition": {"task": "multilabel"}, "train": {"metric": "lwlrap"}, "blend": {"method": "mean"}, "pseudo": {"rounds": 1}})


def test_round_entries_name_their_members():
    r = recipe_mod.from_dict({"backbones": ["a", "a@7", "b"], "functionals": [{"name": "f"}], "pseudo": {"rounds": 2, "members": ["a", "f"]}})
    assert r.entries() == ["a", "a@7", "b", "f", "a+pl1", "a@7+pl1", "f+pl1", "a+pl2", "a@7+pl2", "f+pl2"]
    assert r.members()["a+pl1"] == ["a+pl1", "a@7+pl1"] and r.members()["f+pl2"] == ["f+pl2"]
    assert Entry.parse("a@7+pl2") == Entry("a", 7, 2) and str(Entry.parse("a@7+pl2").base) == "a@7" and Entry.parse("a@7+pl2").member == "a+pl2"
    assert r.for_backbone("a@7+pl1").train.seed == 7
    assert [m.name for m in pseudo.teachers(r, 1)] == ["a", "b", "f"] and [m.name for m in pseudo.teachers(r, 2)] == ["a+pl1", "f+pl1"]


def test_ens_predict_predicts_with_the_students(rounds):
    from ensemble import predict

    ensemble = predict.load_ensemble(rounds["r"])  # after `ens blend --pseudo-label`: its weights name the students too
    names = [m.name for m in ensemble.members]
    assert {"test_resnet+pl1", "basic_lr+pl1"} <= set(names) and isinstance(ensemble.loaded["basic_lr+pl1"], tabular.TabularMember)
    test = pd.read_csv(rounds["comp"] / "test.csv", dtype=str)
    (result,) = predict.predict(ensemble, [rounds["comp"] / test["path"][0]], same_speaker=True)
    assert result.proba.sum() == pytest.approx(1.0)
    alone = dataclasses.replace(ensemble, members=[m for m in ensemble.members if m.name == "basic_lr+pl1"], weights={"basic_lr+pl1": 1.0})
    (only,) = predict.predict(alone, [rounds["comp"] / test["path"][0]], same_speaker=True)
    models = [tabular.load_pipeline(runs.run_dir(rounds["r"], "basic_lr+pl1", k)) for k in (0, 1)]
    assert only.proba == pytest.approx(np.mean([m.predict_proba(tabular_row(rounds, test["path"][0])) for m in models], axis=0)[0], abs=1e-6)


def test_the_cli_predicts_and_reports_with_the_students_only_when_told(rounds, tmp_path):
    test = pd.read_csv(rounds["comp"] / "test.csv", dtype=str)
    clip = str(rounds["comp"] / test["path"][0])
    from typer.testing import CliRunner

    from ensemble.cli import app

    refused = CliRunner().invoke(app, ["predict", clip, "--recipe", str(rounds["recipe"])])
    assert refused.exit_code == 2 and "pseudo-labelling students: set [pseudo].rounds, or pass --pseudo-label" in refused.output
    out = tmp_path / "p.csv"
    cli_ok(["predict", clip, "--recipe", str(rounds["recipe"]), "--pseudo-label", "--out", str(out)])
    assert len(pd.read_csv(out)) == 1
    cli_ok(["report", "--recipe", str(rounds["recipe"]), "--pseudo-label", "--out", str(tmp_path / "r.html")])
    page = (tmp_path / "r.html").read_text()
    assert "basic_lr+pl1 (ens_basic, logreg)" in page  # the student's top functionals


def tabular_row(rounds, path: str) -> np.ndarray:
    """ens_basic functionals of one test clip, written out (no speaker normalisation in this recipe)."""
    from ensemble.inputs import audio
    from ensemble.members import functionals

    r = rounds["r"]
    clip = audio.load_trimmed(rounds["comp"] / path, r.features.sample_rate, r.features.trim_db)[0]  # a functionals-only ensemble takes the recording whole
    return functionals.extract([clip], r.features.sample_rate, "ens_basic").astype(np.float64)


# ---- the automatic threshold ([pseudo] threshold = 0, the default) through ens train ----

AUTO_PRECISION = 0.3
"""The precision the automatic-threshold recipe asks for: on its 128 training clips, the two logistic
regressions' OOF reaches it at a confidence below 1 on each fold's other fold (measured 0.49 and 0.22),
and pooling both folds would choose another (0.26)."""


@pytest.fixture(scope="module")
def auto(tmp_path_factory):
    """Two ens_basic logistic regressions on 160 real clips (actors 1-10, 8 emotions x 2 statements;
    actors 9 and 10 held out, 2 folds of 64 training clips: over MIN_KEPT on each side), then one
    pseudo round with [pseudo] left at its defaults but for ``precision``: the threshold chosen per fold."""
    root = tmp_path_factory.mktemp("pseudo_auto")
    for actor in range(1, 11):
        folder = root / "source" / f"Actor_{actor:02d}"
        folder.mkdir(parents=True)
        for emotion in range(1, 9):
            for statement in (1, 2):
                clip = ravdess_clip(actor, emotion, statement)
                (folder / clip.name).symlink_to(clip)
    comp = root / "comp"
    cli_ok(["data", "ravdess", "--source", str(root / "source"), "--out", str(comp), "--test-actors", "9,10", "--folds", "2"])
    recipe = root / "auto.toml"
    recipe.write_text(
        f'name = "auto"\nbackbones = []\n[paths]\nruns_dir = "{root / "runs"}"\nsubmissions_dir = "{root / "subs"}"\n'
        f'[competition]\ndir = "{comp}"\n[folds]\nn_splits = 2\n[pseudo]\nprecision = {AUTO_PRECISION}\n'
        + BASIC_LR
        + '\n[[functionals]]\nname = "basic_lr1"\nset = "ens_basic"\nmodel = "logreg"\nc = 1.0\n'
    )
    output = cli_ok(["train", "--recipe", str(recipe), "--quiet", "--pseudo-label"])
    return {"recipe": recipe, "r": recipe_mod.load(recipe, {"pseudo": {"rounds": 1}}), "comp": comp, "root": root, "train": output}


def _threshold_by_hand(confidence: np.ndarray, correct: np.ndarray, precision: float, min_kept: int) -> float:
    """The lowest confidence t at which the clips with confidence >= t (at least ``min_kept``) are right
    at least ``precision`` of the time, tried at every confidence; 1.0 when none is."""
    ok = [t for t in np.unique(confidence) if (confidence >= t).sum() >= min_kept and correct[confidence >= t].mean() >= precision]
    return float(min(ok)) if ok else 1.0


def test_the_automatic_threshold_is_chosen_on_the_other_folds_oof_only(auto):
    r, comp = auto["r"], auto["comp"]
    assert r.pseudo.threshold == 0 and r.pseudo.precision == AUTO_PRECISION
    train = pd.read_csv(comp / "train.csv", dtype=str)
    fold_of = pd.read_csv(comp / "folds.csv", dtype=str).set_index("id").loc[train["id"], "fold"].astype(int).to_numpy()
    teachers = ("basic_lr", "basic_lr1")
    # the teachers' OOF straight from their fold tables, in train.csv order, averaged over the teachers
    oof = []
    for name in teachers:
        frame = pd.concat([pd.read_csv(runs.run_dir(r, name, k) / runs.OOF, dtype={"id": str}) for k in (0, 1)]).set_index("id")
        oof.append(frame.loc[train["id"]].drop(columns="fold"))
    classes = list(oof[0].columns)
    oof = sum(o.to_numpy() for o in oof) / len(oof)
    confidence, correct = oof.max(axis=1), oof.argmax(axis=1) == train["label"].map(classes.index).to_numpy()
    split = split_mod.load_split(r)
    test_ids = split.competition.test["id"].astype(str).to_numpy()
    dropped = []
    for fold in (0, 1):
        other = fold_of != fold
        expected = _threshold_by_hand(confidence[other], correct[other], AUTO_PRECISION, pseudo.MIN_KEPT)
        leaked = _threshold_by_hand(confidence, correct, AUTO_PRECISION, pseudo.MIN_KEPT)  # fold k's own OOF included
        assert 0 < expected < 1 and expected != leaked  # not vacuous: a threshold is chosen, and the leak would choose another
        labels = pseudo.fold_labels(r, split, 1, fold)
        assert labels.threshold == pytest.approx(expected, abs=1e-12)
        # the clips kept: the teachers' fold-k test mean at or above it, as written by ens train --pseudo-label
        mean = sum(pd.read_csv(runs.run_dir(r, name, fold) / runs.TEST, dtype={"id": str}).set_index("id")[classes] for name in teachers) / 2
        kept = set(mean.index[mean.max(axis=1) >= expected])
        assert kept and {test_ids[row] for row in labels.rows} == kept
        dropped.append(len(test_ids) - len(kept))
        written = pd.read_csv(pseudo.labels_path(r, 1, fold), dtype={"id": str})
        assert set(written["id"]) == kept and np.allclose(written["threshold"], expected, atol=1e-9)
        assert f"round 1 fold {fold}:" in auto["train"] and f"confidence >= {expected:.3f}" in auto["train"]
    assert max(dropped) > 0  # some test clip fell below a threshold
