"""Blend safety and determinism (issue 6): runs that disagree with the competition are refused, or
realigned explicitly, never mixed silently; `ens blend` writes the same bytes every time.

The run folders are fabricated, not trained: ``config.json`` from ``image_fit.run_config``, an empty
``metrics.json``, and ``oof.csv`` / ``test.csv`` of seeded random probabilities, on a competition
folder written here and read as a :class:`ensemble.store.split.Split` (blending reads no images)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ensemble.blending import blend, blenders
from ensemble.blending.blend import BlendError
from ensemble.core import recipe as recipe_mod
from ensemble.core import tasks
from ensemble.members import image_fit
from ensemble.store import competition
from ensemble.store import runs as run_store
from ensemble.store import split as split_mod
from ensemble.store.runs import RunError

CLASSES = ["calm", "happy", "sad"]
BACKBONES = ["m1", "m2"]


def make_competition(root: Path, task: str = "multiclass") -> None:
    root.mkdir(parents=True)
    n = 12
    labels = [CLASSES[i % 3] for i in range(n)] if task == "multiclass" else [" ".join(CLASSES[: 1 + i % 3]) for i in range(n)]
    pd.DataFrame(
        {"id": [f"c{i:02d}" for i in range(n)], "path": [f"{i}.wav" for i in range(n)], "label": labels, "group": [f"s{i // 2}" for i in range(n)]}
    ).to_csv(root / "train.csv", index=False)
    test_ids = ["t3", "t1", "t4", "t2", "t0"]
    pd.DataFrame({"id": test_ids, "path": [f"{i}.wav" for i in test_ids]}).to_csv(root / "test.csv", index=False)
    sample = pd.DataFrame({"id": sorted(test_ids), **{c: 1 / 3 for c in CLASSES}})
    sample.to_csv(root / "sample_submission.csv", index=False)


def make_recipe(tmp: Path, task: str = "multiclass") -> recipe_mod.Recipe:
    return recipe_mod.from_dict(
        {
            "name": "safe",
            "backbones": BACKBONES,
            "runs_dir": str(tmp / "runs"),
            "submissions_dir": str(tmp / "subs"),
            "competition": {"dir": str(tmp / "comp"), "classes": CLASSES, "task": task},
            "folds": {"n_splits": 2},
            "train": {"pretrained": False, "metric": "lwlrap" if task == "multilabel" else "uar"},
            "blend": {"method": "mean" if task == "multilabel" else "caruana", "iterations": 5, "bags": 3},
        }
    )


def make_data(recipe: recipe_mod.Recipe) -> split_mod.Split:
    """The competition and its folds, written to folds.csv as training writes them."""
    competition.write_folds(competition.load(recipe.competition), recipe.folds)
    return split_mod.load_split(recipe)


def load_runs(recipe: recipe_mod.Recipe, data: split_mod.Split, backbone: str) -> tuple[np.ndarray, np.ndarray]:
    """The OOF and fold-mean test probabilities of one backbone's runs, read by the blend's strict reader."""
    return run_store.read_member(run_store.Member(backbone, run_store.root(recipe), (backbone,), recipe.folds.n_splits), data)


def blend_and_write(recipe: recipe_mod.Recipe, data: split_mod.Split, **options) -> tuple[blend.BlendResult, Path]:
    name = options.pop("name", None)
    result = blend.blend(recipe, split=data, **options)
    return result, blend.write(recipe, result, name)


def probabilities(rng: np.random.Generator, n: int, multilabel: bool) -> np.ndarray:
    return rng.uniform(0, 1, (n, len(CLASSES))) if multilabel else rng.dirichlet(np.ones(len(CLASSES)), n)


def make_run(recipe: recipe_mod.Recipe, data: split_mod.Split, backbone: str, fold: int) -> Path:
    """A finished run folder of ``backbone`` / ``fold`` as ``ens train`` writes it, with seeded random probabilities."""
    run = run_store.run_dir(recipe, backbone, fold)
    run.mkdir(parents=True)
    rng = np.random.default_rng([BACKBONES.index(backbone), fold])
    multilabel = data.competition.task is tasks.MULTILABEL
    (run / "config.json").write_text(json.dumps(image_fit.run_config(recipe, data, backbone, fold)))
    (run / "metrics.json").write_text("{}")
    ids = data.folds["id"][data.folds["fold"] == fold].to_numpy()
    oof = pd.DataFrame(probabilities(rng, len(ids), multilabel), columns=CLASSES)
    oof.insert(0, "id", ids)
    oof.insert(1, "fold", fold)
    oof.to_csv(run / "oof.csv", index=False)
    test = pd.DataFrame(probabilities(rng, len(data.competition.test), multilabel), columns=CLASSES)
    test.insert(0, "id", data.competition.test["id"].to_numpy())
    test.to_csv(run / "test.csv", index=False)
    return run


@pytest.fixture()
def setup(tmp_path):
    """(recipe, data) with finished runs of both backbones on both folds."""
    make_competition(tmp_path / "comp")
    recipe = make_recipe(tmp_path)
    data = make_data(recipe)
    for backbone in BACKBONES:
        for fold in (0, 1):
            make_run(recipe, data, backbone, fold)
    return recipe, data


def edit_table(path: Path, change) -> pd.DataFrame:
    """Apply ``change`` to the table at ``path`` (cells as strings) and write it back."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame = change(frame)
    frame.to_csv(path, index=False)
    return frame


def test_fabricated_runs_load_exactly(setup):
    recipe, data = setup
    oof, test = load_runs(recipe, data, "m1")
    for fold in (0, 1):
        run = run_store.run_dir(recipe, "m1", fold)
        frame = pd.read_csv(run / "oof.csv", dtype={"id": str}).set_index("id")
        rows = data.folds["fold"].to_numpy() == fold
        np.testing.assert_array_equal(oof[rows], frame.loc[data.folds["id"][rows], CLASSES].to_numpy())
    tests = [pd.read_csv(run_store.run_dir(recipe, "m1", k) / "test.csv")[CLASSES].to_numpy() for k in (0, 1)]
    np.testing.assert_array_equal(test, (np.zeros_like(tests[0]) + tests[0] + tests[1]) / 2)


def test_the_folds_hash_is_computed_once(setup, monkeypatch):
    recipe, _ = setup
    data = make_data(recipe)
    first = data.folds_hash
    monkeypatch.setattr(pd.DataFrame, "to_csv", lambda *a, **k: pytest.fail("folds_hash re-hashed the folds"))
    assert data.folds_hash == first
    load_runs(recipe, data, "m1")  # checks every fold's run against the hash


def test_a_run_trained_on_another_fold_assignment_is_refused(setup):
    recipe, data = setup
    folds_path = data.competition.root / "folds.csv"
    edit_table(folds_path, lambda f: f.assign(fold=(1 - f["fold"].astype(int)).astype(str)))  # the folds.csv changed since training
    with pytest.raises(
        RunError,
        match=rf"{run_store.run_dir(recipe, 'm1', 0)} was trained on another fold assignment than {folds_path}; "
        r"re-train it with `ens train --backbone m1 --fold 0 --force`, or restore the folds.csv it was trained on",
    ):
        blend.blend(recipe, split=make_data(recipe))


def test_a_missing_fold_skips_the_backbone_with_the_reason(setup):
    recipe, data = setup
    (run_store.run_dir(recipe, "m2", 1) / "metrics.json").unlink()
    members, _, _, skipped = blend.collect(recipe, data)
    assert [m.name for m in members] == ["m1"]
    assert skipped == {"m2": f"{run_store.run_dir(recipe, 'm2', 1)} is not finished; run `ens train --backbone m2 --fold 1`"}
    result = blend.blend(recipe, split=data)
    assert result.skipped == skipped and list(result.weights) == ["m1"]
    shutil.rmtree(run_store.run_dir(recipe, "m1", 0))
    with pytest.raises(BlendError, match=r"no member of recipe 'safe' has all 2 folds finished under .*runs/safe; run `ens train` first"):
        blend.collect(recipe, data)


BAD_PROBABILITIES = [
    ("nan", "nan", "'nan', not a probability in [0, 1]"),
    ("inf", "inf", "'inf', not a probability in [0, 1]"),
    ("negative", "-0.25", "'-0.25', not a probability in [0, 1]"),
    ("above-one", "1.5", "'1.5', not a probability in [0, 1]"),
    ("text", "high", "'high', not a probability in [0, 1]"),
    ("empty", "", "'', not a probability in [0, 1]"),
]


@pytest.mark.parametrize("table", ["oof.csv", "test.csv"])
@pytest.mark.parametrize("cell, message", [case[1:] for case in BAD_PROBABILITIES], ids=[case[0] for case in BAD_PROBABILITIES])
def test_invalid_probabilities_are_refused_naming_file_line_and_class(setup, table, cell, message):
    recipe, data = setup
    path = run_store.run_dir(recipe, "m2", 1) / table

    def change(frame):
        frame.loc[2, "happy"] = cell
        return frame

    edit_table(path, change)
    expected = rf"{path}: line 4, class 'happy' holds {message}; re-train it with `ens train --backbone m2 --fold 1 --force`"
    with pytest.raises(RunError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        blend.collect(recipe, data)


@pytest.mark.parametrize("table", ["oof.csv", "test.csv"])
def test_multiclass_rows_must_sum_to_one(setup, table):
    recipe, data = setup
    path = run_store.run_dir(recipe, "m1", 0) / table

    def scale(row: int, factor: float):
        def change(frame):
            values = frame.loc[row, CLASSES].astype(float).to_numpy()
            frame.loc[row, CLASSES] = [repr(float(v)) for v in values * factor]
            return frame

        return change

    edit_table(path, scale(0, 1 + 5e-4))  # within the 1e-3 tolerance: accepted
    load_runs(recipe, data, "m1")
    edit_table(path, scale(1, 0.9))
    with pytest.raises(RunError, match=rf"{path}: the probabilities in line 3 sum to 0.9, not 1 \(a multiclass run writes softmax outputs\)"):
        load_runs(recipe, data, "m1")


def test_shuffled_class_columns_and_rows_are_realigned_exactly(setup, tmp_path):
    recipe, data = setup
    before = [load_runs(recipe, data, b) for b in BACKBONES]
    submission = blend_and_write(recipe, data, name="plain")[1].read_bytes()
    rng = np.random.default_rng(0)
    for backbone in BACKBONES:
        for fold in (0, 1):
            for table in ("oof.csv", "test.csv"):
                path = run_store.run_dir(recipe, backbone, fold) / table
                frame = pd.read_csv(path, dtype=str, keep_default_na=False)
                columns = list(rng.permutation(frame.columns))
                assert columns != list(frame.columns)
                frame.iloc[rng.permutation(len(frame))][columns].to_csv(path, index=False)
    after = [load_runs(recipe, data, b) for b in BACKBONES]
    for (oof, test), (oof2, test2) in zip(before, after):
        np.testing.assert_array_equal(oof, oof2)
        np.testing.assert_array_equal(test, test2)
    assert blend_and_write(recipe, data, name="shuffled")[1].read_bytes() == submission


COLUMN_CASES = [
    ("extra-class", lambda f: f.assign(angry="0.0"), r"lacks \[\] and has unknown \['angry'\]"),
    ("missing-class", lambda f: f.drop(columns=["sad"]), r"lacks \['sad'\] and has unknown \[\]"),
    ("renamed-class", lambda f: f.rename(columns={"sad": "Sad"}), r"lacks \['sad'\] and has unknown \['Sad'\]"),
    ("missing-id-column", lambda f: f.rename(columns={"id": "key"}), r"lacks \['id'\] and has unknown \['key'\]"),
]


@pytest.mark.parametrize("table", ["oof.csv", "test.csv"])
@pytest.mark.parametrize("change, message", [case[1:] for case in COLUMN_CASES], ids=[case[0] for case in COLUMN_CASES])
def test_other_class_columns_are_refused(setup, table, change, message):
    recipe, data = setup
    path = run_store.run_dir(recipe, "m1", 1) / table
    edit_table(path, change)
    keys = r"\['id', 'fold'\]" if table == "oof.csv" else r"\['id'\]"
    with pytest.raises(
        RunError,
        match=rf"{path} has columns \[.*\]: it {message}, where a run table holds {keys} and one column per class "
        r"of the competition, \['calm', 'happy', 'sad'\]; re-train it with `ens train --backbone m1 --fold 1 --force`",
    ):
        load_runs(recipe, data, "m1")


ID_CASES = [
    ("oof.csv", "duplicate", lambda f: pd.concat([f, f.iloc[[0]]]), r"oof.csv: id '{first}' in line {last} appears more than once"),
    ("oof.csv", "missing", lambda f: f.iloc[1:], r"oof.csv lacks 1 id\(s\) of fold 0 in .*folds.csv, e.g. \['{first}'\]"),
    (
        "oof.csv",
        "of-another-fold",
        lambda f: f.assign(id=f["id"].where(f.index != 0, "c99")),
        r"oof.csv: id 'c99' in line 2 is not one of the ids of fold 0 in .*comp/folds.csv",
    ),
    ("oof.csv", "wrong-fold-column", lambda f: f.assign(fold=f["fold"].where(f.index != 1, "1")), r"oof.csv: line 3 is of fold '1', the run of fold 0"),
    ("test.csv", "duplicate", lambda f: pd.concat([f, f.iloc[[0]]]), r"test.csv: id '{first}' in line {last} appears more than once"),
    ("test.csv", "missing", lambda f: f.iloc[1:], r"test.csv lacks 1 id\(s\) of .*comp/test.csv, e.g. \['{first}'\]"),
    ("test.csv", "unknown", lambda f: f.assign(id=f["id"].where(f.index != 2, "")), r"test.csv: id '' in line 4 is not one of the ids of .*comp/test.csv"),
]


@pytest.mark.parametrize("table, change, message", [(c[0], *c[2:]) for c in ID_CASES], ids=[f"{c[0]}-{c[1]}" for c in ID_CASES])
def test_duplicate_missing_or_unknown_ids_are_refused(setup, table, change, message):
    recipe, data = setup
    path = run_store.run_dir(recipe, "m1", 0) / table
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    edit_table(path, change)
    expected = message.format(first=frame["id"].iloc[0], last=len(frame) + 2) + r"; re-train it with `ens train --backbone m1 --fold 0 --force`"
    with pytest.raises(RunError, match=expected):
        load_runs(recipe, data, "m1")


def test_a_run_with_other_classes_in_config_is_refused(setup):
    recipe, data = setup
    path = run_store.run_dir(recipe, "m2", 0) / "config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "classes": ["sad", "happy", "calm"]}))
    with pytest.raises(
        RunError,
        match=rf"{run_store.run_dir(recipe, 'm2', 0)} was trained with classes \['sad', 'happy', 'calm'\], "
        r"the competition has \['calm', 'happy', 'sad'\] \(names and order\); re-train it",
    ):
        blend.collect(recipe, data)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda run: (run / "oof.csv").unlink(), r"oof.csv does not exist or is not a file. The run is damaged; re-train it"),
        (lambda run: (run / "test.csv").write_bytes(b"\x00\xff\xfe"), r"test.csv is not UTF-8 text .* The run is damaged; re-train it"),
        (lambda run: (run / "config.json").write_text("{"), r"config.json cannot be read .*; the run is damaged: re-train it"),
        (lambda run: (run / "config.json").write_text("[]"), r"config.json has no folds_hash, classes and recipe; the run is damaged: re-train it"),
    ],
    ids=["no-oof", "binary-test", "bad-json", "config-not-a-run-config"],
)
def test_a_damaged_finished_run_is_refused(setup, damage, message):
    recipe, data = setup
    damage(run_store.run_dir(recipe, "m1", 1))
    with pytest.raises(RunError, match=message):
        blend.collect(recipe, data)


def test_multilabel_rows_need_not_sum_to_one_but_stay_in_0_1(tmp_path):
    make_competition(tmp_path / "comp", task="multilabel")
    recipe = make_recipe(tmp_path, task="multilabel")
    data = make_data(recipe)
    for fold in (0, 1):
        make_run(recipe, data, "m1", fold)
    oof, _ = load_runs(recipe, data, "m1")
    assert np.abs(oof.sum(axis=1) - 1).max() > 0.1  # independent sigmoids are accepted
    path = run_store.run_dir(recipe, "m1", 0) / "oof.csv"
    edit_table(path, lambda f: f.assign(sad=f["sad"].where(f.index != 0, "1.01")))
    with pytest.raises(RunError, match=r"oof.csv: line 2, class 'sad' holds '1.01', not a probability in \[0, 1\]"):
        load_runs(recipe, data, "m1")


def blend_outputs(recipe: recipe_mod.Recipe, data: split_mod.Split, method: str) -> dict[str, bytes]:
    _, path = blend_and_write(recipe, data, method=method)
    out = run_store.blend_dir(recipe)
    return {"submission": path.read_bytes(), **{name: (out / name).read_bytes() for name in ("leaderboard.csv", "weights.json", "oof.csv")}}


@pytest.mark.parametrize("method", blenders.METHODS)
def test_blend_is_deterministic(setup, method):
    recipe, data = setup
    first = blend_outputs(recipe, data, method)
    second = blend_outputs(recipe, make_data(recipe), method)  # the competition re-read, as a second `ens blend` does
    for name in first:
        assert first[name] == second[name], f"{name} differs between two blends with {method}"


# ---- fuzzing: any oof.csv text is blended as written or refused with RunError ----

OOF_CELLS = st.sampled_from(["0", "1", "0.5", "0.25", "0.75", "1e-3", "nan", "-0", "2", "x", "", " 0.5", "c00", "c02", "c04", "0,5", '"'])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data_draw=st.data())
def test_fuzzed_oof_tables_blend_or_raise_run_error(data_draw):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_competition(tmp / "comp")
        recipe = make_recipe(tmp)
        data = make_data(recipe)
        make_run(recipe, data, "m1", 0)
        run = make_run(recipe, data, "m1", 1)
        frame = pd.read_csv(run / "oof.csv", dtype=str, keep_default_na=False)
        for _ in range(data_draw.draw(st.integers(0, 3))):
            row, col = data_draw.draw(st.integers(0, len(frame) - 1)), data_draw.draw(st.integers(0, frame.shape[1] - 1))
            frame.iloc[row, col] = data_draw.draw(OOF_CELLS)
        if data_draw.draw(st.booleans()):
            frame = frame[data_draw.draw(st.permutations(list(frame.columns)))]
        if data_draw.draw(st.booleans()):
            frame = frame.iloc[data_draw.draw(st.permutations(range(len(frame))))]
        text = frame.to_csv(index=False)
        if data_draw.draw(st.integers(0, 3)) == 0:
            at = data_draw.draw(st.integers(0, len(text)))
            text = text[:at] + data_draw.draw(st.text(alphabet=st.sampled_from(list('0.5,"\nx\x00')), max_size=5)) + text[at:]
        (run / "oof.csv").write_text(text, newline="")
        try:
            oof, test = load_runs(recipe, data, "m1")
        except RunError as err:
            assert str(run) in str(err)
            event("refused")
            return
        event("blended")
        assert np.isfinite(oof).all() and (oof >= 0).all() and (oof <= 1).all()
        np.testing.assert_allclose(oof.sum(axis=1), 1, atol=1e-3)
