"""competition.folds on the full RAVDESS corpus: grouped by actor, label-stratified, stable, and a leakage
warning without a group column. Bad tables and bad folds.csv files are refused in tests/test_tables.py."""

import numpy as np
import pandas as pd
import pytest

from ensemble.core.recipe import CompetitionConfig, FoldsConfig
from ensemble.store import competition
from ensemble.store.corpora import ravdess

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
    assert not (comp.root / "folds.csv").exists()  # reading writes nothing
    written = competition.write_folds(comp, FoldsConfig(n_splits=5, seed=42))
    assert written.equals(folds) and (comp.root / "folds.csv").is_file()
    again = competition.folds(comp, FoldsConfig(n_splits=5, seed=42))  # now read from folds.csv
    assert again.equals(folds)
    remade = competition.make_folds(comp, 5, 42)
    assert remade["fold"].tolist() == folds["fold"].tolist()


def test_without_group_column_folds_warn_about_leakage(full_competition):
    full_competition.config.group_col = ""
    with pytest.warns(competition.LeakageWarning, match="speaker"):
        folds = competition.make_folds(full_competition, 5, 0)
    assert np.bincount(folds["fold"]).tolist() == [240] * 5
