import numpy as np
import pandas as pd
import pytest

from ensemble.core.recipe import CompetitionConfig
from ensemble.store import competition, submission


def _competition(tmp_path, sample_columns, task="multiclass"):
    classes = ["a", "b", "c"]
    labels = ["a", "b"] if task == "multiclass" else ["a c", "b"]
    pd.DataFrame({"id": ["x1", "x2"], "path": ["1.wav", "2.wav"], "label": labels}).to_csv(tmp_path / "train.csv", index=False)
    ids = ["t3", "t1", "t2"]
    pd.DataFrame({"id": ids, "path": ["3.wav", "1.wav", "2.wav"]}).to_csv(tmp_path / "test.csv", index=False)
    sample = pd.DataFrame({"id": ["t2", "t3", "t1"]})
    for col in sample_columns:
        sample[col] = "a" if col == "label" else 0.0
    sample.to_csv(tmp_path / "sample_submission.csv", index=False)
    pd.DataFrame({"id": ["t1", "t2", "t3"], "label": ["b", "c", "a"]}).to_csv(tmp_path / "solution.csv", index=False)
    return competition.load(CompetitionConfig(dir=str(tmp_path), classes=classes, task=task))


def test_label_submission_matches_sample_exactly_and_scores(tmp_path):
    comp = _competition(tmp_path, ["label"])
    proba = np.array([[0.8, 0.1, 0.1], [0.1, 0.7, 0.2], [0.2, 0.2, 0.6]])  # rows: t3, t1, t2
    path = submission.write(comp, ["t3", "t1", "t2"], proba, tmp_path / "sub" / "s.csv")
    written = pd.read_csv(path, dtype=str)
    sample = pd.read_csv(tmp_path / "sample_submission.csv", dtype=str)
    assert list(written.columns) == list(sample.columns)
    assert list(written["id"]) == list(sample["id"]) == ["t2", "t3", "t1"]
    assert list(written["label"]) == ["c", "a", "b"]
    assert submission.score(comp, path) == {"accuracy": 1.0, "macro_f1": 1.0, "uar": 1.0, "n": 3}


def test_probability_submission_keeps_sample_column_order(tmp_path):
    comp = _competition(tmp_path, ["c", "a", "b"])
    proba = np.array([[0.8, 0.1, 0.1], [0.1, 0.7, 0.2], [0.2, 0.2, 0.6]])
    written = pd.read_csv(submission.write(comp, ["t3", "t1", "t2"], proba, tmp_path / "p.csv"), dtype={"id": str})
    assert list(written.columns) == ["id", "c", "a", "b"]
    assert written.iloc[0].tolist() == ["t2", 0.6, 0.2, 0.2]
    with pytest.raises(competition.CompetitionError, match="ids differ"):
        submission.write(comp, ["t3", "t1", "zz"], proba, tmp_path / "bad.csv")
    assert not (tmp_path / "bad.csv").exists()


def test_space_separated_submission_round_trips_thresholded_labels(tmp_path):
    comp = _competition(tmp_path, ["label"], task="multilabel")
    np.testing.assert_array_equal(comp.y, [[1, 0, 1], [0, 1, 0]])
    proba = np.array([[0.9, 0.1, 0.7], [0.2, 0.3, 0.1], [0.1, 0.6, 0.65]])  # rows: t3, t1, t2
    thresholds = np.array([0.5, 0.5, 0.6])
    written = pd.read_csv(submission.write(comp, ["t3", "t1", "t2"], proba, tmp_path / "m.csv", thresholds), dtype=str, keep_default_na=False)
    assert list(written.columns) == ["id", "label"] and list(written["id"]) == ["t2", "t3", "t1"]
    # t2: b and c over their thresholds; t3: a and c; t1: nothing over -> its most probable class alone
    assert list(written["label"]) == ["b c", "a c", "b"]
    decoded = comp.task.encode(written["label"], comp.classes)
    np.testing.assert_array_equal(decoded, [[0, 1, 1], [1, 0, 1], [0, 1, 0]])
    pd.DataFrame({"id": ["t1", "t2", "t3"], "label": ["b", "b c", "a"]}).to_csv(tmp_path / "solution.csv", index=False)
    scores = submission.score(comp, tmp_path / "m.csv")
    assert scores["n"] == 3 and scores["micro_f1"] == pytest.approx(2 * 4 / (2 * 4 + 1))  # 4 hits, 1 false positive
