"""Bad competition tables (issue 6): each is a CompetitionError naming the file, the line or column
and the fix, raised by competition.load / competition.folds, before any training starts.
Hypothesis fuzzes the table readers: any text or table either loads consistently or is refused."""

from __future__ import annotations

import io
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ensemble.core import tasks
from ensemble.core.recipe import CompetitionConfig, FoldsConfig
from ensemble.store import competition
from ensemble.store.competition import CompetitionError

TRAIN = "id,path,label,group\nc1,1.wav,a,s1\nc2,2.wav,b,s2\nc3,3.wav,a,s3\nc4,4.wav,b,s4\n"
TEST = "id,path\nt1,x.wav\nt2,y.wav\n"
SAMPLE = "id,a,b\nt1,0.5,0.5\nt2,0.5,0.5\n"
FOLDS = "id,fold\nc1,0\nc2,0\nc3,1\nc4,1\n"
GOOD = {"train.csv": TRAIN, "test.csv": TEST, "sample_submission.csv": SAMPLE}


def write(root: Path, tables: dict[str, str | bytes | None]) -> Path:
    """Write each table's text (or bytes; None: no file) into ``root``; returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for name, content in tables.items():
        path = root / name
        if path.exists():
            path.unlink()
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            path.write_text(content, newline="")
    return root


def load(root: Path, **config) -> competition.Competition:
    return competition.load(CompetitionConfig(dir=str(root), **{"classes": ["a", "b"], **config}))


# (case id, tables replacing the good ones, config changes, regex the message must match)
LOAD_CASES = [
    (
        "train-missing-column",
        {"train.csv": "id,path,group\nc1,1.wav,s1\n"},
        {},
        r"train.csv has no column\(s\) \['label'\] \(columns: \['id', 'path', 'group'\]\); set the column names in the recipe's \[competition\]",
    ),
    ("test-missing-column", {"test.csv": "id,file\nt1,x.wav\nt2,y.wav\n"}, {}, r"test.csv has no column\(s\) \['path'\]"),
    ("sample-missing-column", {"sample_submission.csv": "key,a,b\nt1,0.5,0.5\nt2,0.5,0.5\n"}, {}, r"sample_submission.csv has no column\(s\) \['id'\]"),
    (
        "train-duplicate-id",
        {"train.csv": TRAIN + "c2,5.wav,a,s5\n"},
        {},
        r"train.csv: id 'c2' appears more than once \(line 6\), first in line 3; ids must be unique",
    ),
    ("test-duplicate-id", {"test.csv": TEST + "t1,z.wav\n"}, {}, r"test.csv: id 't1' appears more than once \(line 4\), first in line 2"),
    ("sample-duplicate-id", {"sample_submission.csv": SAMPLE + "t2,0.5,0.5\n"}, {}, r"sample_submission.csv: id 't2' appears more than once \(line 4\)"),
    ("train-empty-id", {"train.csv": TRAIN + " ,5.wav,a,s5\n"}, {}, r"train.csv: empty id in line 6; fill it in or delete the row"),
    ("test-empty-id", {"test.csv": "id,path\n,x.wav\nt2,y.wav\n"}, {}, r"test.csv: empty id in line 2"),
    ("sample-empty-id", {"sample_submission.csv": "id,a,b\nt1,0.5,0.5\n,0.5,0.5\n"}, {}, r"sample_submission.csv: empty id in line 3"),
    ("empty-label", {"train.csv": TRAIN + "c5,5.wav,,s5\n"}, {}, r"train.csv: empty label in line 6 \(id 'c5'\); fill it in or delete the row"),
    ("empty-path", {"test.csv": "id,path\nt1,\nt2,y.wav\n"}, {}, r"test.csv: empty path in line 2 \(id 't1'\)"),
    (
        "label-outside-classes",
        {"train.csv": TRAIN + "c5,5.wav,zebra,s5\n"},
        {},
        r"train.csv: label 'zebra' in line 6 is not one of the classes \['a', 'b'\]; fix the label or the recipe's \[competition\].classes",
    ),
    (
        "multilabel-token-outside-classes",
        {"train.csv": TRAIN + "c5,5.wav,a zebra,s5\n"},
        {"task": "multilabel"},
        r"train.csv: label 'a zebra' in line 6: 'zebra' is not one of the classes \['a', 'b'\]",
    ),
    (
        "test-ids-differ-from-sample",
        {"sample_submission.csv": "id,a,b\nt1,0.5,0.5\nt3,0.5,0.5\n"},
        {},
        r"test.csv and .*sample_submission.csv list different ids \(only in test: \['t2'\], only in sample: \['t3'\]\)",
    ),
    (
        "sample-columns-differ-from-classes",
        {"sample_submission.csv": "id,a,c\nt1,0.5,0.5\nt2,0.5,0.5\n"},
        {},
        r"sample_submission.csv: columns \['a', 'c'\] besides 'id' are neither one label column nor exactly the classes \['a', 'b'\] "
        r"\(from the recipe's \[competition\].classes\); fix its header or \[competition\].classes",
    ),
    ("sample-lacks-a-class-column", {"sample_submission.csv": "id,a\nt1,0.5\nt2,0.5\n"}, {}, r"columns \['a'\] besides 'id' are neither one label column"),
    ("sample-no-target-column", {"sample_submission.csv": "id\nt1\nt2\n"}, {}, r"columns \[\] besides 'id' are neither"),
    (
        "classes-repeat",
        {},
        {"classes": ["a", "b", "a"]},
        r"the classes \['a', 'b', 'a'\] \(from the recipe's \[competition\].classes\) repeat \['a'\]; fix them there",
    ),
    (
        "one-class",
        {"train.csv": "id,path,label\nc1,1.wav,a\n", "sample_submission.csv": "id,label\nt1,a\nt2,a\n"},
        {"classes": []},
        r"the classes \['a'\] \(from the labels of .*train.csv\) are only \['a'\]: a multiclass task needs at least two",
    ),
    ("multilabel-class-with-space", {}, {"classes": ["a", "b c"], "task": "multilabel"}, r"include a name with spaces"),
    ("train-zero-bytes", {"train.csv": ""}, {}, r"train.csv is empty: a table needs a header line"),
    ("train-header-only", {"train.csv": "id,path,label\n"}, {}, r"train.csv has no rows; a competition needs training clips"),
    ("test-header-only", {"test.csv": "id,path\n", "sample_submission.csv": "id,a,b\n"}, {}, r"test.csv has no rows; a competition needs test clips"),
    ("train-binary", {"train.csv": bytes(range(256))}, {}, r"train.csv is not UTF-8 text \(byte 128 cannot be decoded\): is it a binary file\?"),
    ("test-nul-bytes", {"test.csv": b"id,path\x00\x01\x02\n"}, {}, r"test.csv holds NUL bytes: it is a binary file, not a CSV table"),
    (
        "train-ragged-row",
        {"train.csv": TRAIN + "c5,5.wav,a,s5,extra\n"},
        {},
        r"train.csv: line 6 has 5 fields but the header \(line 1\) has 4; every row needs one value per column",
    ),
    ("train-short-row", {"train.csv": TRAIN + "c5,5.wav\n"}, {}, r"train.csv: line 6 has 2 fields but the header"),
    ("train-repeated-column", {"train.csv": "id,path,label,label\nc1,1.wav,a,b\n"}, {}, r"train.csv: the header \(line 1\) repeats column\(s\) \['label'\]"),
    ("sample-broken-quote", {"sample_submission.csv": 'id,a,b\nt1,0.5,0.5\nt2,"0.5,0.5\n'}, {}, r"sample_submission.csv: line \d+ is not valid CSV"),
    ("train-missing", {"train.csv": None}, {}, r"train.csv does not exist. A competition folder needs train.csv, test.csv and sample_submission.csv"),
    ("test-missing", {"test.csv": None}, {}, r"test.csv does not exist. A competition folder needs"),
    (
        "blank-lines-count-in-line-numbers",
        {"train.csv": TRAIN.replace("\nc3", "\n\n\nc3") + "c1,5.wav,a,s5\n"},
        {},
        r"train.csv: id 'c1' appears more than once \(line 8\), first in line 2",
    ),
]


@pytest.mark.parametrize("tables, config, message", [case[1:] for case in LOAD_CASES], ids=[case[0] for case in LOAD_CASES])
def test_bad_table_is_refused_naming_file_line_and_fix(tmp_path, tables, config, message):
    write(tmp_path, {**GOOD, **tables})
    with pytest.raises(CompetitionError, match=message) as caught:
        load(tmp_path, **config)
    assert str(tmp_path) in str(caught.value) or "the recipe's [competition].classes" in str(caught.value)  # names the file or the key


def test_good_tables_load_exactly_as_written(tmp_path):
    write(
        tmp_path,
        {
            **GOOD,
            "train.csv": "\ufeff" + TRAIN.replace("c4", "NA").replace("\n", "\r\n") + "\n\n",
            "test.csv": 'id,path\n001,"x,1.wav"\nt2,y.wav\n',
            "sample_submission.csv": "id,b,a\n001,0.5,0.5\nt2,0.5,0.5\n",
        },
    )
    comp = load(tmp_path)
    assert comp.train["id"].tolist() == ["c1", "c2", "c3", "NA"]  # a BOM, CRLF, trailing blank lines, "NA" kept as text
    assert comp.test["id"].tolist() == ["001", "t2"] and comp.test["path"].iloc[0] == "x,1.wav"
    assert comp.classes == ["a", "b"]  # the recipe's order; the sample's class columns may come in any order
    assert comp.y.tolist() == [0, 1, 0, 1]
    write(tmp_path, {"sample_submission.csv": "id,label\n001,a\nt2,b\n"})
    assert load(tmp_path).classes == ["a", "b"]  # a label submission


def test_multilabel_classes_come_from_the_tokens(tmp_path):
    write(tmp_path, {**GOOD, "train.csv": "id,path,label\nc1,1.wav,b a\nc2,2.wav,c\n", "sample_submission.csv": "id,label\nt1,a\nt2,b\n"})
    comp = load(tmp_path, classes=[], task="multilabel")
    assert comp.classes == ["a", "b", "c"] and comp.y.tolist() == [[1, 1, 0], [0, 0, 1]]


def folds_of(root: Path, n_splits: int = 2) -> pd.DataFrame:
    return competition.folds(load(root), FoldsConfig(n_splits=n_splits))


FOLD_CASES = [
    (
        "ids-differ-from-train",
        FOLDS.replace("c4", "c9"),
        2,
        r"folds.csv does not list exactly the ids of .*train.csv \(only in folds.csv: \['c9'\], only in train.csv: \['c4'\]\); "
        r"it was made for another training table: delete it to re-make the folds",
    ),
    ("fewer-ids-than-train", "id,fold\nc1,0\nc2,1\n", 2, r"only in folds.csv: \[\], only in train.csv: \['c3', 'c4'\]"),
    ("duplicate-id", FOLDS + "c1,1\n", 2, r"folds.csv: id 'c1' appears more than once \(line 6\), first in line 2"),
    ("empty-id", FOLDS + ",1\n", 2, r"folds.csv: empty id in line 6"),
    ("non-integer-fold", FOLDS.replace("c3,1", "c3,one"), 2, r"folds.csv: fold 'one' in line 4 is not an integer; delete it to re-make the folds"),
    ("fractional-fold", FOLDS.replace("c3,1", "c3,1.0"), 2, r"fold '1.0' in line 4 is not an integer"),
    ("empty-fold", FOLDS.replace("c3,1", "c3,"), 2, r"fold '' in line 4 is not an integer"),
    ("negative-fold", FOLDS.replace("c3,1", "c3,-1"), 2, r"folds.csv has folds \[-1, 0, 1\] but the recipe asks for 2: fold -1 in line 4 is outside 0..1"),
    ("out-of-range-fold", FOLDS.replace("c4,1", "c4,7"), 2, r"folds.csv has folds \[0, 1, 7\] but the recipe asks for 2: fold 7 in line 5 is outside 0..1"),
    ("fold-with-no-rows", FOLDS, 3, r"folds.csv has folds \[0, 1\] but the recipe asks for 3: fold 2 has no rows; delete it .*, or set \[folds\].n_splits"),
    ("more-folds-than-recipe", FOLDS.replace("c4,1", "c4,2"), 2, r"folds.csv has folds \[0, 1, 2\] but the recipe asks for 2"),
    ("missing-fold-column", "id,split\nc1,0\n", 2, r"folds.csv has no column\(s\) \['fold'\] .*; delete it to re-make the folds"),
    ("binary", b"\x89PNG\r\n\x1a\n\xff\xfe", 2, r"folds.csv is not UTF-8 text"),
]


@pytest.mark.parametrize("text, n_splits, message", [case[1:] for case in FOLD_CASES], ids=[case[0] for case in FOLD_CASES])
def test_bad_folds_file_is_refused(tmp_path, text, n_splits, message):
    write(tmp_path, {**GOOD, "folds.csv": text})
    with pytest.raises(CompetitionError, match=message) as caught:
        folds_of(tmp_path, n_splits)
    assert str(tmp_path / "folds.csv") in str(caught.value)


def test_folds_file_in_any_row_order_is_aligned_with_train(tmp_path):
    write(tmp_path, {**GOOD, "folds.csv": "fold,id\n1,c4\n0 ,c2\n1,c3\n0,c1\n"})
    folds = folds_of(tmp_path)
    assert folds["id"].tolist() == ["c1", "c2", "c3", "c4"] and folds["fold"].tolist() == [0, 0, 1, 1]
    assert folds["fold"].dtype == np.int64


def test_a_bad_table_stops_ens_train_before_any_training(tmp_path):
    from typer.testing import CliRunner

    from ensemble.cli import app

    comp = write(tmp_path / "comp", {**GOOD, "train.csv": TRAIN + "c5,5.wav,zebra,s5\n"})
    recipe = tmp_path / "bad.toml"
    recipe.write_text(
        f'backbones = ["test_resnet"]\nruns_dir = "{tmp_path / "runs"}"\n[competition]\ndir = "{comp}"\nclasses = ["a", "b"]\n'
        "[folds]\nn_splits = 2\n[train]\npretrained = false\n"
    )
    result = CliRunner().invoke(app, ["train", "--recipe", str(recipe), "--quiet"])
    assert result.exit_code == 2, result.output
    assert "train.csv: label 'zebra' in line 6 is not one of the classes" in result.output
    assert not (tmp_path / "runs").exists() and not (comp / "folds.csv").exists() and not (comp / ".ens_cache").exists()


# ---- fuzzing: any input loads into a consistent Competition or raises CompetitionError ----

COLUMNS = ["id", "path", "label", "group", "a", "b", "fold"]
CELLS = st.sampled_from(["", " ", "a", "b", "c", "a b", "c1", "c2", "c3", "t1", "t2", "0", "1", "2", "-1", "x", "NA", "0.5", '"', ",", "\n"])
CSV_TEXT = st.text(alphabet=st.sampled_from(list('idpathlbgroufc01,"\n\r \t\x00é;')), max_size=80)


@st.composite
def table(draw, good: str) -> str | bytes | None:
    """A table's content: often the good text; else the good table with random edits (a cell
    changed or emptied, a row repeated or dropped, a column dropped or added, rows shuffled), a
    random DataFrame of strings, random CSV-ish text, random bytes, or no file."""
    kind = draw(st.sampled_from(["good"] * 8 + ["edited"] * 4 + ["frame", "text", "bytes", "absent"]))
    if kind == "good":
        return good
    if kind == "text":
        return draw(CSV_TEXT)
    if kind == "bytes":
        return draw(st.binary(max_size=40))
    if kind == "absent":
        return None
    if kind == "frame":
        columns = draw(st.lists(st.sampled_from(COLUMNS), unique=True, max_size=5))
        rows = draw(st.lists(st.lists(CELLS, min_size=len(columns), max_size=len(columns)), max_size=6))
        return pd.DataFrame(rows, columns=columns).to_csv(index=False)
    frame = pd.read_csv(io.StringIO(good), dtype=str, keep_default_na=False)
    for _ in range(draw(st.integers(1, 3))):
        edit = draw(st.sampled_from(["cell", "cell", "repeat-row", "drop-row", "drop-column", "add-column", "shuffle"]))
        if edit == "cell" and len(frame):
            frame.iloc[draw(st.integers(0, len(frame) - 1)), draw(st.integers(0, frame.shape[1] - 1))] = draw(CELLS)
        elif edit == "repeat-row" and len(frame):
            frame = pd.concat([frame, frame.iloc[[draw(st.integers(0, len(frame) - 1))]]], ignore_index=True)
        elif edit == "drop-row" and len(frame):
            frame = frame.drop(index=frame.index[draw(st.integers(0, len(frame) - 1))])
        elif edit == "drop-column" and frame.shape[1] > 1:
            frame = frame.drop(columns=frame.columns[draw(st.integers(0, frame.shape[1] - 1))])
        elif edit == "add-column":
            frame[draw(st.sampled_from(COLUMNS + ["c"]))] = [draw(CELLS) for _ in range(len(frame))]
        elif edit == "shuffle":
            frame = frame.iloc[draw(st.permutations(range(len(frame))))]
    return frame.to_csv(index=False)


def check_consistent(comp: competition.Competition, folds: pd.DataFrame, n_splits: int) -> None:
    c = comp.config
    for frame in (comp.train, comp.test, comp.sample):
        ids = frame[c.id_col]
        assert ids.is_unique and (ids.str.strip() != "").all()
    assert len(comp.train) and len(comp.test)
    assert len(set(comp.classes)) == len(comp.classes) >= (1 if comp.task is tasks.MULTILABEL else 2)
    for label in comp.train[c.label_col]:
        assert set(comp.task.tokens(label)) <= set(comp.classes) and label.strip()
    assert set(comp.test[c.id_col]) == set(comp.sample[c.id_col])
    targets = [col for col in comp.sample.columns if col != c.id_col]
    assert len(targets) == 1 or set(targets) == set(comp.classes)
    y = comp.y
    assert len(y) == len(comp.train)
    assert folds["id"].tolist() == comp.train[c.id_col].tolist()
    assert sorted(set(folds["fold"])) == list(range(n_splits)) and folds["fold"].dtype == np.int64


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    train=table(TRAIN),
    test=table(TEST),
    sample=table(SAMPLE),
    folds_csv=table(FOLDS) | st.none(),
    classes=st.sampled_from([[], ["a", "b"], ["b", "a"], ["a", "b", "c"]]),
    task=st.sampled_from(["multiclass", "multilabel"]),
    n_splits=st.sampled_from([2, 2, 3]),
)
def test_fuzzed_tables_load_consistently_or_raise_competition_error(train, test, sample, folds_csv, classes, task, n_splits):
    with tempfile.TemporaryDirectory() as tmp:
        root = write(Path(tmp), {"train.csv": train, "test.csv": test, "sample_submission.csv": sample, "folds.csv": folds_csv})
        config = CompetitionConfig(dir=str(root), classes=classes, task=task)
        try:
            comp = competition.load(config)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # leakage and scikit-learn's small-class warnings
                folds = competition.folds(comp, FoldsConfig(n_splits=n_splits))
        except CompetitionError as err:
            assert str(root) in str(err) or "the recipe's [competition].classes" in str(err)
            event("refused")
            return
        event("loaded")
        check_consistent(comp, folds, n_splits)
        again = competition.folds(comp, FoldsConfig(n_splits=n_splits))  # a folds.csv it wrote reads back the same
        assert again.equals(folds)
