"""Functionals members: trained per fold on real RAVDESS clips, written to the run store, read by the
blend's strict reader, blended with a backbone of the same recipe, and predicted by ens predict."""

from __future__ import annotations

import dataclasses
import json
import shutil

import joblib
import numpy as np
import pandas as pd
import pytest

from ensemble import predict
from ensemble.blending import blend
from ensemble.core import recipe as recipe_mod
from ensemble.members import functionals, tabular
from ensemble.store import runs
from ensemble.store import split as split_mod

from .conftest import BASIC_LR, EGEMAPS_SVM, cli_ok, one_backbone_recipe

MEMBERS = (
    BASIC_LR
    + EGEMAPS_SVM
    + """
[[functionals]]
name = "basic_gbm"
set = "ens_basic"
model = "lightgbm"
trees = 40
"""
)


@pytest.fixture(scope="module")
def mixed(small_source, tiny_recipe_text, tmp_path_factory):
    """The tiny recipe (test_resnet, 2 folds, 1 epoch) with two functionals members, trained by one ens train and blended by one ens blend."""
    root = tmp_path_factory.mktemp("tabular")
    recipe, comp = one_backbone_recipe(root, small_source, tiny_recipe_text, MEMBERS, speaker_norm=True)
    train_output = cli_ok(["train", "--recipe", str(recipe), "--quiet"])
    blend_output = cli_ok(["blend", "--recipe", str(recipe), "--method", "mean"])
    return {"recipe": recipe, "root": root, "comp": comp, "train": train_output, "blend": blend_output}


def test_one_ens_train_trains_every_kind_and_one_ens_blend_blends_them(mixed):
    for name in ("test_resnet", "basic_lr", "egemaps_svm", "basic_gbm"):
        assert f"{name} fold 0:" in mixed["train"] and f"{name} fold 1:" in mixed["train"]
    board = pd.read_csv(mixed["root"] / "runs" / "tiny" / "blend" / "leaderboard.csv")
    assert list(board["model"][:3]) == ["test_resnet", "basic_lr", "egemaps_svm"]
    assert "wrote" in mixed["blend"]


def test_functionals_tables_pass_the_strict_reader_and_match_the_saved_pipelines(mixed):
    r = recipe_mod.load(mixed["recipe"])
    split = split_mod.load_split(r)
    member = next(m for m in runs.members(r) if m.name == "egemaps_svm")
    oof, test = runs.read_member(member, split)  # the blend's checks: ids, folds, classes, rows sum to 1
    assert np.isfinite(oof).all() and np.allclose(oof.sum(axis=1), 1)
    spec = r.functionals_member("egemaps_svm")
    table = tabular.load_table(r, split, spec, progress=False)
    assert table.x_train.shape == (len(split.y), len(functionals.names("eGeMAPSv02"))) and table.population is not None
    fold_of = split.folds["fold"].to_numpy()
    for fold, run in enumerate(member.runs("egemaps_svm")):
        model = joblib.load(run / tabular.MODEL)
        np.testing.assert_allclose(oof[fold_of == fold], model.predict_proba(table.x_train[fold_of == fold]), atol=1e-9)
        assert (run / runs.POPULATION).is_file()
    # per-speaker z-normalised training functionals: every training speaker has mean 0 in every functional
    groups = split.competition.train["group"].to_numpy()
    for speaker in set(groups):
        np.testing.assert_allclose(table.x_train[groups == speaker].mean(axis=0), 0, atol=1e-5)


def test_a_functionals_run_stays_valid_when_the_backbones_training_changes(mixed):
    changed = recipe_mod.load(mixed["recipe"], {"train": {"epochs": 2, "lr": 0.01}, "augment": {"copies": 1}})
    split = split_mod.load_split(changed)
    spec = changed.functionals_member("basic_lr")
    table = tabular.load_table(changed, split, spec, progress=False)
    report, skipped = tabular.train_fold(changed, split, table, spec, 0)
    assert skipped and report["fold"] == 0  # finished with the same identity: not trained again
    other = recipe_mod.load(mixed["recipe"], {"speakers": {"test": "pool"}})  # what a functionals run depends on
    with pytest.raises(runs.RunConflictError, match="basic_lr/fold0 holds a finished run with a different configuration"):
        tabular.train_fold(other, split, tabular.load_table(other, split, spec, progress=False), spec, 0)


def test_ens_predict_predicts_with_functionals_members(mixed):
    r = recipe_mod.load(mixed["recipe"])
    ensemble = predict.load_ensemble(r)
    tables = {name for name, member in ensemble.loaded.items() if isinstance(member, tabular.TabularMember)}
    assert tables == {"basic_lr", "egemaps_svm", "basic_gbm"} and ensemble.duration == 2.0
    test = pd.read_csv(mixed["comp"] / "test.csv", dtype=str)
    files = [mixed["comp"] / p for p in test["path"][:2]]
    (first, second) = predict.predict(ensemble, files, same_speaker=True)
    assert first.proba.sum() == pytest.approx(1.0) and not np.allclose(first.proba, second.proba)
    kept = [m for m in ensemble.members if m.name in tables]
    alone = dataclasses.replace(ensemble, members=kept, weights={m.name: 1 / len(kept) for m in kept})  # functionals members only
    assert alone.duration is None
    (whole,) = predict.predict(alone, files[:1], same_speaker=True)  # no image member: the recording whole
    assert whole.spans.shape == (1, 2)


def test_functionals_members_are_refused_for_a_multilabel_task_and_need_unique_names():
    with pytest.raises(recipe_mod.RecipeError, match="functionals\\]\\] members work for multiclass tasks only"):
        multilabel = {"competition": {"task": "multilabel"}, "train": {"metric": "lwlrap"}, "blend": {"method": "mean"}}
        recipe_mod.from_dict({**multilabel, "functionals": [{"name": "a"}]})
    with pytest.raises(recipe_mod.RecipeError, match="must be unique and differ from the backbones' names"):
        recipe_mod.from_dict({"backbones": ["a"], "functionals": [{"name": "a"}]})


def test_blending_reads_functionals_tables_without_audio(mixed, monkeypatch):
    def refuse(*args, **kwargs):
        pytest.fail("blending computed functionals")

    monkeypatch.setattr(functionals, "extract", refuse)
    result = blend.blend(recipe_mod.load(mixed["recipe"]), method="mean")
    assert [m.name for m in result.members] == ["test_resnet", "basic_lr", "egemaps_svm", "basic_gbm"]


def test_backbone_option_selects_functionals_members_too(mixed, tmp_path):
    output = cli_ok(["train", "--recipe", str(mixed["recipe"]), "--backbone", "basic_lr", "--quiet"])
    lines = [line for line in output.splitlines() if " fold " in line]
    assert [line.split(":")[0] for line in lines] == ["basic_lr fold 0", "basic_lr fold 1"] and all("[already finished, skipped]" in x for x in lines)
    copy = tmp_path / "tiny.toml"  # blend into a copy of the run store: the shared one stays as the module made it
    shutil.copytree(mixed["root"] / "runs", tmp_path / "runs")
    copy.write_text(f'extends = "{mixed["recipe"]}"\nname = "tiny"\n[paths]\nruns_dir = "{tmp_path / "runs"}"\nsubmissions_dir = "{tmp_path / "subs"}"\n')
    cli_ok(["blend", "--recipe", str(copy), "--backbone", "basic_lr,test_resnet", "--method", "mean"])
    board = pd.read_csv(tmp_path / "runs" / "tiny" / "blend" / "leaderboard.csv")
    assert list(board["model"][:2]) == ["basic_lr", "test_resnet"] and "egemaps_svm" not in set(board["model"])


def test_a_lightgbm_member_is_repeatable_and_its_pipelines_reproduce_its_tables(mixed):
    r = recipe_mod.load(mixed["recipe"])
    split = split_mod.load_split(r)
    member = next(m for m in runs.members(r) if m.name == "basic_gbm")
    oof, _ = runs.read_member(member, split)
    spec = r.functionals_member("basic_gbm")
    table = tabular.load_table(r, split, spec, progress=False)
    fold_of = split.folds["fold"].to_numpy()
    for fold, run in enumerate(member.runs("basic_gbm")):
        model = tabular.load_pipeline(run)
        assert type(model.steps[-1][1]).__name__ == "LGBMClassifier" and model.steps[-1][1].n_estimators == 40
        rows = fold_of == fold
        np.testing.assert_allclose(oof[rows], tabular.class_proba(model, table.x_train[rows], len(split.competition.classes)), atol=1e-9)
        again = tabular.pipeline(spec, r.train.seed, split.y[~rows]).fit(table.x_train[~rows], split.y[~rows])  # the same seed: the same trees
        np.testing.assert_array_equal(tabular.class_proba(again, table.x_train[rows], 8), tabular.class_proba(model, table.x_train[rows], 8))


def test_a_functionals_run_saved_before_a_member_setting_existed_is_still_finished(mixed):
    """config.json's member is read through today's FunctionalsMember: a setting added since takes its default."""
    r = recipe_mod.load(mixed["recipe"])
    run = runs.run_dir(r, "basic_lr", 1)
    config = json.loads((run / runs.CONFIG).read_text())
    for key in ("trees", "learning_rate", "leaves"):  # lightgbm's settings, added after the first functionals members
        del config["member"][key]
    (run / runs.CONFIG).write_text(json.dumps(config))
    split = split_mod.load_split(r)
    spec = r.functionals_member("basic_lr")
    _, skipped = tabular.train_fold(r, split, tabular.load_table(r, split, spec, progress=False), spec, 1)
    assert skipped


def test_tune_chooses_c_by_inner_speaker_grouped_cv_on_the_training_folds_only(mixed, tmp_path):
    r = recipe_mod.load(mixed["recipe"], {"paths": {"runs_dir": str(tmp_path / "runs")}})
    split = split_mod.load_split(r)
    spec = dataclasses.replace(r.functionals_member("basic_lr"), tune=True)
    table = tabular.load_table(r, split, spec, progress=False)
    fold_of, groups = split.folds["fold"].to_numpy(), split.competition.train["group"].astype(str).to_numpy()
    train_idx = np.flatnonzero(fold_of != 0)
    inner = tabular.inner_folds(split, train_idx)
    assert len(inner) >= 2
    for fit, check in inner:  # positions into the training folds: the validation fold never takes part
        assert set(train_idx[fit]) | set(train_idx[check]) <= set(train_idx)
        assert not set(groups[train_idx[fit]]) & set(groups[train_idx[check]])  # no speaker on both sides
    report, skipped = tabular.train_fold(r, split, table, spec, 0)
    assert not skipped and set(report["inner_scores"]) == {str({"c": c}) for c in tabular.GRIDS["logreg"]["c"]}
    x, y = table.x_train[train_idx], split.y[train_idx]
    by_hand = {}
    for c in tabular.GRIDS["logreg"]["c"]:  # the same search written out: balanced accuracy (the recipe's metric is uar)
        scores = []
        for fit, check in inner:
            model = tabular.pipeline(dataclasses.replace(spec, c=c), r.train.seed, y[fit]).fit(x[fit], y[fit])
            scores.append(np.mean([np.mean(model.predict(x[check][y[check] == k]) == k) for k in np.unique(y[check])]))
        by_hand[c] = np.mean(scores)
    best = max(by_hand, key=by_hand.get)
    assert report["chosen"] == {"c": best}
    assert report["inner_scores"][str({"c": best})] == pytest.approx(by_hand[best], abs=1e-4)
    model = tabular.load_pipeline(runs.run_dir(r, "basic_lr", 0))
    assert model.steps[-1][1].C == best  # the saved pipeline is the chosen setting refitted on every training fold


def test_tune_refuses_training_folds_of_a_single_speaker(mixed):
    r = recipe_mod.load(mixed["recipe"])
    split = split_mod.load_split(r)
    one_speaker = np.flatnonzero(split.competition.train["group"].astype(str).to_numpy() == split.competition.train["group"].astype(str).iloc[0])
    with pytest.raises(tabular.TabularError, match="at least 2 speakers"):
        tabular.inner_folds(split, one_speaker)


def test_importance_ranks_the_functionals_a_logistic_regression_and_lightgbm_lean_on(mixed, monkeypatch):
    r = recipe_mod.load(mixed["recipe"])
    names = functionals.names("ens_basic")
    lr = [tabular.load_pipeline(runs.run_dir(r, "basic_lr", k)) for k in (0, 1)]
    shares = tabular.importance(lr, names)
    by_hand = np.mean([np.abs(m.steps[-1][1].coef_).mean(axis=0) / np.abs(m.steps[-1][1].coef_).mean(axis=0).sum() for m in lr], axis=0)
    assert shares.index[0] == names[int(np.argmax(by_hand))] and shares.iloc[0] == pytest.approx(by_hand.max())
    assert shares.sum() == pytest.approx(1.0) and shares.is_monotonic_decreasing
    # LightGBM: 16 clips per fold make no split (min_child_samples 20), so a synthetic table whose class is one column's sign
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6))
    y = (x[:, 3] > 0).astype(int)
    spec = recipe_mod.FunctionalsMember(name="g", model="lightgbm", trees=30)
    gbm = [tabular.pipeline(spec, seed, y).fit(x, y) for seed in (0, 1)]
    gain = tabular.importance(gbm, [f"f{k}" for k in range(6)])
    assert gain.index[0] == "f3" and gain.iloc[0] > 0.9 and gain.sum() == pytest.approx(1.0)
    svm = [tabular.load_pipeline(runs.run_dir(r, "egemaps_svm", k)) for k in (0, 1)]
    assert tabular.importance(svm, functionals.names("eGeMAPSv02")) is None
    from ensemble import report

    monkeypatch.setattr(tabular, "TOP_FUNCTIONALS", 5)
    (section,) = tabular.TabularKind().report(r, [m.name for m in r.functionals])
    assert section.title == "Top functionals"
    page = report._kind_section(section)
    assert f"<td>{shares.index[0]}</td>" in page and "egemaps_svm (svm): an RBF SVM has no per-feature weights" in page
    assert page.count("<tr>") == 2 * (5 + 1)  # basic_lr and basic_gbm: a header row and 5 functionals each


def test_ens_predict_z_normalises_functionals_per_speaker_as_training_did(mixed):
    """A speaker-normalised functionals member at predict time, by value: the clips' functionals
    standardised by their speaker's (the clips given together) mean and standard deviation, or
    without them by the training population's, then the saved fold pipelines' mean probability."""
    from ensemble.inputs import audio

    r = recipe_mod.load(mixed["recipe"])
    ensemble = predict.load_ensemble(r)
    spec = [m for m in ensemble.members if m.name == "basic_lr"]
    alone = dataclasses.replace(ensemble, members=spec, weights={"basic_lr": 1.0})
    comp = mixed["comp"]
    # one inferred test speaker's clips, as ens train found them
    speakers_of = pd.read_csv(comp / "test_speakers.csv", dtype=str).set_index("id")["speaker"]
    test = pd.read_csv(comp / "test.csv", dtype=str)
    one = test[test["id"].map(speakers_of) == speakers_of.iloc[0]]
    assert 2 <= len(one) < len(test)
    rate = ensemble.sample_rate
    clips = [audio.load_trimmed(comp / p, rate, ensemble.trim_db)[0] for p in one["path"]]
    x = functionals.extract(clips, rate, "ens_basic").astype(np.float64)
    pipelines = [joblib.load(runs.run_dir(r, "basic_lr", k) / tabular.MODEL) for k in (0, 1)]

    def proba(rows):
        return np.mean([m.predict_proba(rows) for m in pipelines], axis=0)

    by_speaker = proba((x - x.mean(axis=0)) / np.maximum(x.std(axis=0), 1e-6))
    np.testing.assert_allclose(alone.predict_waveforms(clips, speaker_clips=clips), by_speaker, atol=1e-5)
    # the same rows ens train wrote for these test clips (normalised there by the same inferred speaker)
    written = np.mean([pd.read_csv(runs.run_dir(r, "basic_lr", k) / runs.TEST, dtype={"id": str}).set_index("id") for k in (0, 1)], axis=0)
    written = pd.DataFrame(written, index=pd.read_csv(runs.run_dir(r, "basic_lr", 0) / runs.TEST, dtype={"id": str})["id"])
    np.testing.assert_allclose(written.loc[one["id"]].to_numpy(), by_speaker, atol=1e-5)
    # without the speaker's other clips: the training population's statistics, every training clip pooled
    train = pd.read_csv(comp / "train.csv", dtype=str)
    x_train = functionals.extract([audio.load_trimmed(comp / p, rate, ensemble.trim_db)[0] for p in train["path"]], rate, "ens_basic").astype(np.float64)
    by_population = proba((x - x_train.mean(axis=0)) / np.maximum(x_train.std(axis=0), 1e-6))
    with pytest.warns(predict.SpeakerNormWarning):
        got = np.stack([p.proba for p in predict.predict(alone, [comp / p for p in one["path"]])])
    np.testing.assert_allclose(got, by_population, atol=1e-4)
    assert not np.allclose(proba(x), by_speaker, atol=1e-3) and not np.allclose(by_population, by_speaker, atol=1e-3)  # not vacuous
