import numpy as np
import pandas as pd
import pytest

from ensemble import competition
from ensemble.corpora import ravdess
from ensemble.recipe import CompetitionConfig, FoldsConfig

from .conftest import RAVDESS


@pytest.fixture()
def full_competition(tmp_path):
    ravdess.build(RAVDESS, tmp_path / "comp")
    return competition.load(CompetitionConfig(dir=str(tmp_path / "comp"), classes=ravdess.CLASSES))


def test_folds_group_by_actor_stratify_and_are_stable(full_competition):
    comp = full_competition
    folds = competition.folds(comp, FoldsConfig(n_splits=5, seed=42))
    actors = comp.train["group"].to_numpy()
    for actor in set(actors):
        assert folds["fold"][actors == actor].nunique() == 1, f"{actor} is in two folds"
    assert sorted(folds["fold"].unique()) == [0, 1, 2, 3, 4]
    share = pd.crosstab(folds["fold"], comp.train["label"], normalize="index")
    overall = comp.train["label"].value_counts(normalize=True)
    assert (share.sub(overall, axis=1).abs() < 0.02).all().all()  # every fold has the corpus's class mix
    assert (comp.root / "folds.csv").is_file()
    again = competition.folds(comp, FoldsConfig(n_splits=5, seed=42))
    assert again.equals(folds)
    remade = competition.make_folds(comp, 5, 42)
    assert remade["fold"].tolist() == folds["fold"].tolist()


def test_folds_file_with_other_fold_count_is_refused(full_competition):
    competition.folds(full_competition, FoldsConfig(n_splits=5))
    with pytest.raises(competition.CompetitionError, match=r"folds.csv has folds \[0, 1, 2, 3, 4\] but the recipe asks for 4"):
        competition.folds(full_competition, FoldsConfig(n_splits=4))


def test_without_group_column_folds_warn_about_leakage(full_competition):
    full_competition.config.group_col = ""
    with pytest.warns(competition.LeakageWarning, match="speaker"):
        folds = competition.make_folds(full_competition, 5, 0)
    assert np.bincount(folds["fold"]).tolist() == [240] * 5


def _write(comp_dir, train_rows, test_ids=("t1",), sample_ids=("t1",)):
    comp_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(train_rows).to_csv(comp_dir / "train.csv", index=False)
    pd.DataFrame({"id": list(test_ids), "path": ["x.wav"] * len(test_ids)}).to_csv(comp_dir / "test.csv", index=False)
    pd.DataFrame({"id": list(sample_ids), "label": ["a"] * len(sample_ids)}).to_csv(comp_dir / "sample_submission.csv", index=False)


GOOD = {"id": ["c1", "c2"], "path": ["a.wav", "b.wav"], "label": ["a", "b"], "group": ["s1", "s2"]}


@pytest.mark.parametrize("change, message", [
    ({"label": ["a", ""]}, r"train.csv: empty label in line 3 \(id 'c2'\)"),
    ({"id": ["c1", "c1"]}, r"train.csv: id 'c1' appears more than once \(line 3\)"),
    ({"label": ["a", "zebra"]}, r"label 'zebra' in line 3 is not one of the classes \['a', 'b'\]"),
])
def test_bad_training_table_is_refused_naming_the_row(tmp_path, change, message):
    _write(tmp_path, {**GOOD, **change})
    with pytest.raises(competition.CompetitionError, match=message):
        competition.load(CompetitionConfig(dir=str(tmp_path), classes=["a", "b"]))


def test_missing_column_and_missing_file_and_id_mismatch(tmp_path):
    _write(tmp_path, {k: v for k, v in GOOD.items() if k != "label"})
    with pytest.raises(competition.CompetitionError, match=r"has no column\(s\) \['label'\]"):
        competition.load(CompetitionConfig(dir=str(tmp_path)))
    _write(tmp_path, GOOD, test_ids=("t1", "t2"), sample_ids=("t1", "t3"))
    with pytest.raises(competition.CompetitionError, match=r"only in test: \['t2'\], only in sample: \['t3'\]"):
        competition.load(CompetitionConfig(dir=str(tmp_path)))
    (tmp_path / "test.csv").unlink()
    with pytest.raises(competition.CompetitionError, match="test.csv does not exist"):
        competition.load(CompetitionConfig(dir=str(tmp_path)))
