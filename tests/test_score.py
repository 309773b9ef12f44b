"""ens score on a Kaggle-style folder with the competition's own column names (file_id, file, emotion,
speaker), Kaggle's Usage column (Public / Private / Ignored), and the refusal of a bad solution.csv."""

import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, log_loss
from typer.testing import CliRunner

from ensemble.cli import app
from ensemble.core import recipe
from ensemble.store import competition, submission
from ensemble.store.competition import CompetitionError

from .conftest import cli_ok

pytestmark = pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")  # sklearn's UAR on few rows, in _sklearn

RENAME = {"id": "file_id", "path": "file", "label": "emotion", "group": "speaker"}
TABLES = ("train.csv", "test.csv", "sample_submission.csv", "solution.csv")


@pytest.fixture(scope="module")
def renamed_source(small_source, tiny_recipe_text, tmp_path_factory):
    """``ens data ravdess`` on conftest's 48 real clips (actors 5 and 6 held out: 16 test clips), its
    four tables' columns renamed to file_id, file, emotion, speaker (train.csv keeps only those)."""
    comp = tmp_path_factory.mktemp("renamed") / "comp"
    cli_ok(["data", "ravdess", "--source", str(small_source), "--out", str(comp), "--test-actors", "5,6", "--folds", "2"])
    for name in TABLES:
        frame = pd.read_csv(comp / name, dtype=str, keep_default_na=False)
        if name == "train.csv":
            frame = frame[list(RENAME)]
        frame.rename(columns=RENAME).to_csv(comp / name, index=False)
    return comp


@pytest.fixture()
def folder(renamed_source, tiny_recipe_text, tmp_path):
    """A private copy of the renamed folder and a recipe whose [competition] names its columns.
    Returns ``(recipe path, competition folder)``."""
    comp = tmp_path / "comp"
    shutil.copytree(renamed_source, comp)
    text = tiny_recipe_text(comp, tmp_path / "runs", tmp_path / "subs").replace(
        "[competition]\n", '[competition]\nid_col = "file_id"\npath_col = "file"\nlabel_col = "emotion"\ngroup_col = "speaker"\n'
    )
    path = tmp_path / "renamed.toml"
    path.write_text(text)
    return path, comp


def _load(recipe_path):
    return competition.load(recipe.load(recipe_path).competition)


def _table(path):
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _label_submission(comp, path, seed=0):
    """A label submission in the sample's format: the true emotion of about half the rows, a random class elsewhere."""
    rng = np.random.default_rng(seed)
    truth = _table(comp / "solution.csv").set_index("file_id")["emotion"]
    sample = _table(comp / "sample_submission.csv")
    classes = sorted(set(truth))
    sample["emotion"] = [truth[i] if rng.random() < 0.5 else classes[rng.integers(len(classes))] for i in sample["file_id"]]
    sample.to_csv(path, index=False)
    return path


def _sklearn(truth: pd.Series, predicted: pd.Series, classes):
    """The headline scores computed directly with scikit-learn, for labels aligned by id."""
    predicted = predicted.loc[truth.index]
    return {
        "accuracy": accuracy_score(truth, predicted),
        "macro_f1": f1_score(truth, predicted, labels=classes, average="macro", zero_division=0),
        "uar": balanced_accuracy_score(truth, predicted),
        "n": len(truth),
    }


def _line_of(path, text):
    """1-based line number of the (only) line of ``path`` containing ``text``, as an editor shows it."""
    hits = [k for k, line in enumerate(path.read_text().splitlines(), start=1) if text in line]
    assert len(hits) == 1, hits
    return hits[0]


def test_competition_column_names_are_scored_like_sklearn(folder, tmp_path):
    recipe_path, comp = folder
    assert list(_table(comp / "solution.csv").columns[:2]) == ["file_id", "emotion"]
    comp_obj = _load(recipe_path)
    sub = _label_submission(comp, tmp_path / "sub.csv")
    expected = _sklearn(_table(comp / "solution.csv").set_index("file_id")["emotion"], _table(sub).set_index("file_id")["emotion"], comp_obj.classes)
    assert 0 < expected["accuracy"] < 1 and expected["n"] == 16
    result = submission.score_splits(comp_obj, sub)
    assert list(result) == ["all"]
    assert result["all"] == pytest.approx(expected)
    assert submission.score(comp_obj, sub) == result["all"]
    out = cli_ok(["score", str(sub), "--recipe", str(recipe_path)])
    assert f"accuracy {expected['accuracy']:.4f}" in out and "n 16" in out and "leaderboard" not in out


def test_usage_column_scores_public_and_private_separately(folder, tmp_path):
    recipe_path, comp = folder
    sub = _label_submission(comp, tmp_path / "sub.csv", seed=5)
    solution = _table(comp / "solution.csv")
    usage = np.array(["Public", "Private", "Private", "Ignored"] * 4)
    solution.insert(2, "Usage", usage)
    solution.loc[usage == "Ignored", "emotion"] = ""  # an Ignored row's label is neither checked nor scored
    solution.to_csv(comp / "solution.csv", index=False)
    comp_obj = _load(recipe_path)
    predicted = _table(sub).set_index("file_id")["emotion"]
    truth = solution.set_index("file_id")["emotion"]
    expected = {
        "all": _sklearn(truth[usage != "Ignored"], predicted, comp_obj.classes),
        "public": _sklearn(truth[usage == "Public"], predicted, comp_obj.classes),
        "private": _sklearn(truth[usage == "Private"], predicted, comp_obj.classes),
    }
    assert expected["public"]["accuracy"] != expected["private"]["accuracy"]
    assert (expected["all"]["n"], expected["public"]["n"], expected["private"]["n"]) == (12, 4, 8)
    result = submission.score_splits(comp_obj, sub)
    assert set(result) == {"all", "public", "private"}
    for split, scores in expected.items():
        assert result[split] == pytest.approx(scores), split
    assert submission.score(comp_obj, sub) == result["all"]
    lines = cli_ok(["score", str(sub), "--recipe", str(recipe_path)]).splitlines()
    assert lines[0].startswith(f"{sub}: accuracy {expected['all']['accuracy']:.4f}") and lines[0].endswith("n 12")
    public = next(line for line in lines if "public leaderboard:" in line)
    private = next(line for line in lines if "private leaderboard:" in line)
    assert f"accuracy {expected['public']['accuracy']:.4f}" in public and public.endswith("n 4")
    assert f"accuracy {expected['private']['accuracy']:.4f}" in private and private.endswith("n 8")


def test_target_falls_back_to_the_sample_label_column(folder, tmp_path):
    """solution.csv without [competition].label_col: the sample submission's label column (here ``Predicted``)."""
    recipe_path, comp = folder
    _table(comp / "sample_submission.csv").rename(columns={"emotion": "Predicted"}).to_csv(comp / "sample_submission.csv", index=False)
    solution = _table(comp / "solution.csv").rename(columns={"emotion": "Predicted"})
    assert len(solution.columns) > 3  # speaker, gender, intensity too: only the sample's column tells the target
    solution.to_csv(comp / "solution.csv", index=False)
    comp_obj = _load(recipe_path)
    assert submission.solution_columns(comp_obj, list(solution.columns), "solution.csv") == ("file_id", "Predicted")
    predicted = solution.set_index("file_id")["Predicted"].copy()
    predicted.iloc[::3] = "calm"
    predicted.rename_axis("file_id").reset_index().to_csv(tmp_path / "sub.csv", index=False)
    expected = _sklearn(solution.set_index("file_id")["Predicted"], predicted, comp_obj.classes)
    assert 0 < expected["accuracy"] < 1
    assert submission.score(comp_obj, tmp_path / "sub.csv") == pytest.approx(expected)


def test_probability_sample_takes_the_single_other_solution_column(folder, tmp_path):
    """A probability sample (one column per class): the target is the solution's only column besides the id and Usage."""
    recipe_path, comp = folder
    sample = _table(comp / "sample_submission.csv")[["file_id"]]
    classes = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
    for name in reversed(classes):
        sample[name] = "0.125"
    sample.to_csv(comp / "sample_submission.csv", index=False)
    solution = _table(comp / "solution.csv")[["file_id", "emotion"]].rename(columns={"emotion": "truth"})
    solution["Usage"] = ["Public", "Private"] * 8
    solution.to_csv(comp / "solution.csv", index=False)
    comp_obj = _load(recipe_path)
    test_ids = list(comp_obj.test["file_id"])
    proba = np.random.default_rng(1).dirichlet(np.ones(8), size=len(test_ids))
    sub = submission.write(comp_obj, test_ids, proba, tmp_path / "p.csv")
    assert list(_table(sub).columns) == list(sample.columns)
    truth = solution.set_index("file_id")["truth"]
    frame = pd.DataFrame(proba, index=test_ids, columns=classes).loc[truth.index]
    result = submission.score_splits(comp_obj, sub)
    for split, rows in (
        ("all", np.ones(16, bool)),
        ("public", solution["Usage"].eq("Public").to_numpy()),
        ("private", solution["Usage"].eq("Private").to_numpy()),
    ):
        argmax = frame[rows].idxmax(axis=1)
        expected = _sklearn(truth[rows], argmax, classes)
        expected["log_loss"] = log_loss(truth[rows], frame[rows][sorted(classes)].to_numpy(), labels=sorted(classes))
        assert result[split] == pytest.approx(expected), split


def _break(comp, change):
    """Rewrite solution.csv with ``change(frame)`` applied; returns its path."""
    path = comp / "solution.csv"
    frame = _table(path)
    frame["Usage"] = "Public"
    frame = change(frame)
    frame.to_csv(path, index=False)
    return path


def _set(frame, row, column, value):
    frame.loc[row, column] = value
    return frame


# (what is broken, how, the text of the line to find in the broken file or None, the message's other parts)
REFUSALS = [
    ("missing id", lambda f: _set(f, 5, "file_id", ""), None, ["empty id in line 7", "fill it in or delete the row"]),
    ("duplicate id", lambda f: _set(f, 9, "file_id", f.loc[2, "file_id"]), None, ["appears more than once (line 11), first in line 4", "delete or rename"]),
    ("unknown id", lambda f: _set(f, 4, "file_id", "test_9999"), "test_9999", ["'test_9999'", "is not a test id", "delete the row or fix its id"]),
    ("test id without a row", lambda f: f.drop(index=6), None, ["has no row for 1 of the 16 test ids", "add a row"]),
    ("no target column", lambda f: f.drop(columns="emotion"), None, ["has no target column", "'emotion'", "'speaker'", "name its label column 'emotion'"]),
    (
        "label not a class",
        lambda f: _set(f, 3, "emotion", "joyful"),
        "joyful",
        ["label 'joyful'", "(column 'emotion')", "is not one of the classes", "fix the label or the recipe's [competition].classes"],
    ),
    ("empty label", lambda f: _set(f, 8, "emotion", ""), None, ["empty label (column 'emotion') in line 10", "fill it in"]),
    ("bad Usage", lambda f: _set(f, 0, "Usage", "public"), None, ["Usage 'public' in line 2", "Public", "Private", "Ignored"]),
    ("nothing scored", lambda f: f.assign(Usage="Ignored"), None, ["every row's Usage is 'Ignored'", "mark rows Public or Private"]),
]


@pytest.mark.parametrize("broken, change, line_text, parts", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_a_bad_solution_is_refused_naming_file_line_or_column(folder, tmp_path, broken, change, line_text, parts):
    recipe_path, comp = folder
    sub = _label_submission(comp, tmp_path / "sub.csv")
    path = _break(comp, change)
    if line_text is not None:
        parts = [*parts, f"in line {_line_of(path, line_text)}"]
    with pytest.raises(CompetitionError) as err:
        submission.score_splits(_load(recipe_path), sub)
    message = str(err.value)
    assert str(path) in message, message
    for part in parts:
        assert part in message, (part, message)


def test_cli_refuses_a_bad_solution_with_exit_code_2(folder, tmp_path):
    recipe_path, comp = folder
    sub = _label_submission(comp, tmp_path / "sub.csv")
    path = _break(comp, lambda f: _set(f, 3, "emotion", "joyful"))
    result = CliRunner().invoke(app, ["score", str(sub), "--recipe", str(recipe_path)])
    assert result.exit_code == 2, result.output
    assert f"error: {path}: label 'joyful'" in result.output and f"in line {_line_of(path, 'joyful')}" in result.output


BAD_SUBMISSIONS = [
    ("no id column", lambda s: s.rename(columns={"file_id": "id"}), "ids must be exactly the 16 ids"),
    ("repeated id", lambda s: pd.concat([s, s.iloc[:1]]), "once each"),
    ("missing id", lambda s: s.iloc[1:], "ids must be exactly the 16 ids"),
    ("unknown label", lambda s: _set(s, 2, "emotion", "joyful"), "labels ['joyful'] are not among the classes"),
]


@pytest.mark.parametrize("broken, change, fragment", BAD_SUBMISSIONS, ids=[b[0] for b in BAD_SUBMISSIONS])
def test_a_bad_submission_is_still_refused(folder, tmp_path, broken, change, fragment):
    recipe_path, comp = folder
    sub = tmp_path / "sub.csv"
    change(_table(_label_submission(comp, sub))).to_csv(sub, index=False)
    with pytest.raises(CompetitionError) as err:
        submission.score(_load(recipe_path), sub)
    assert str(sub) in str(err.value) and fragment in str(err.value)
