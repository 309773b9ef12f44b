"""A Kaggle-style competition folder: ``train.csv``, ``test.csv``, ``sample_submission.csv``, folds.

Any folder of this layout works, not only one built by ``ens data``: the column names and the
audio root come from the recipe's ``[competition]`` section. ``folds.csv`` (id, fold) is written
once into the folder so every backbone trains on the same folds.
"""

from __future__ import annotations

import csv
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from ..core import atomic, tasks
from ..core.errors import EnsError, EnsWarning
from ..core.recipe import CompetitionConfig, FoldsConfig
from ..core.tasks import Task

TRAIN, TEST, SAMPLE, SOLUTION, FOLDS = "train.csv", "test.csv", "sample_submission.csv", "solution.csv", "folds.csv"


class CompetitionError(EnsError, ValueError):
    """A competition table is missing or inconsistent; the message names the file, row and fix."""


class LeakageWarning(EnsWarning):
    """Folds are not grouped by speaker, so validation scores may be inflated."""


def read_csv(path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """Read a CSV table (UTF-8, comma-separated, ``"``-quoted) with every cell kept as the exact
    string written: ``001`` stays ``001``, ``NA`` stays ``NA`` and an empty cell is ``""``.

    Blank lines are skipped; they and quoted line breaks still count towards line numbers.

    Returns:
        The table (one row per record, a plain 0..n-1 index) and each row's line number in the
        file (the header is line 1 unless blank lines precede it).

    Raises:
        CompetitionError: naming the file (and the line) and the fix: it is not a file, is not
            UTF-8 text or holds NUL bytes (a binary file), has no header line, repeats a column
            name, has a line with more or fewer fields than the header, or has broken quoting.
    """
    if not path.is_file():
        raise CompetitionError(f"{path} does not exist or is not a file.")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise CompetitionError(f"{path} is not UTF-8 text (byte {err.start} cannot be decoded): is it a binary file? Save the table as a UTF-8 CSV.") from err
    except OSError as err:
        raise CompetitionError(f"{path} cannot be read: {err}") from err
    if "\0" in text:
        raise CompetitionError(f"{path} holds NUL bytes: it is a binary file, not a CSV table; replace it with the CSV.")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header, rows, lines, line = None, [], [], 1
    try:
        for record in reader:
            start, line = line, reader.line_num + 1
            if not record or (len(record) == 1 and not record[0].strip()):
                continue  # a blank line
            if header is None:
                header, header_line = record, start
            elif len(record) != len(header):
                raise CompetitionError(
                    f"{path}: line {start} has {len(record)} fields but the header (line {header_line}) has {len(header)}; "
                    "every row needs one value per column (quote values that hold a comma)."
                )
            else:
                rows.append(record)
                lines.append(start)
    except csv.Error as err:
        raise CompetitionError(f"{path}: line {reader.line_num} is not valid CSV ({err}); check its quotes.") from err
    if header is None:
        raise CompetitionError(f"{path} is empty: a table needs a header line naming its columns.")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise CompetitionError(f"{path}: the header (line {header_line}) repeats column(s) {repeated}; give every column its own name.")
    return pd.DataFrame(rows, columns=header, dtype=str), np.asarray(lines, dtype=np.int64)


def _require_columns(frame: pd.DataFrame, required: list[str], path: Path, fix: str) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise CompetitionError(f"{path} has no column(s) {missing} (columns: {list(frame.columns)}); {fix}.")


def require_filled(frame: pd.DataFrame, lines: np.ndarray, column: str, path: Path, what: str, id_col: str | None = None) -> None:
    """Refuse an empty (or all-space) cell of ``column`` of a table read by :func:`read_csv`
    (``lines``: each row's line number in ``path``), naming its line (and the row's id).

    Raises:
        CompetitionError: the first empty cell, with its line and the fix.
    """
    empty = np.flatnonzero(frame[column].str.strip().to_numpy() == "")
    if len(empty):
        row = int(empty[0])
        which = f" (id {frame[id_col].iloc[row]!r})" if id_col else ""
        raise CompetitionError(f"{path}: empty {what} in line {lines[row]}{which}; fill it in or delete the row.")


def check_ids(frame: pd.DataFrame, lines: np.ndarray, id_col: str, path: Path) -> None:
    """Refuse an empty or repeated id in column ``id_col`` of a table read by :func:`read_csv`.

    Raises:
        CompetitionError: naming the line (both lines for a repeated id) and the fix.
    """
    require_filled(frame, lines, id_col, path, "id")
    ids = frame[id_col]
    dup = np.flatnonzero(ids.duplicated().to_numpy())
    if len(dup):
        row = int(dup[0])
        first = int(np.flatnonzero((ids == ids.iloc[row]).to_numpy())[0])
        raise CompetitionError(
            f"{path}: id {ids.iloc[row]!r} appears more than once (line {lines[row]}), first in line {lines[first]}; "
            "ids must be unique: delete or rename the repeat."
        )


@dataclass
class Competition:
    """A loaded competition folder.

    Attributes:
        root: the folder.
        config: its column names and audio root.
        train: ``train.csv`` rows (all columns as strings).
        test: ``test.csv`` rows.
        sample: ``sample_submission.csv`` rows; its id order and columns are the submission's.
        classes: class names, in the order of probability columns everywhere in ens.
    """

    root: Path
    config: CompetitionConfig
    train: pd.DataFrame
    test: pd.DataFrame
    sample: pd.DataFrame
    classes: list[str]

    @property
    def audio_root(self) -> Path:
        """Folder the ``path`` column is relative to."""
        return Path(self.config.audio_root) if self.config.audio_root else self.root

    def audio_paths(self, frame: pd.DataFrame) -> list[Path]:
        """Absolute-or-root-relative audio paths of the rows of ``frame`` (train or test)."""
        return [p if p.is_absolute() else self.audio_root / p for p in map(Path, frame[self.config.path_col])]

    @property
    def task(self) -> Task:
        """The task of ``[competition].task`` (:func:`ensemble.core.tasks.get`): ask it, not the task's name."""
        return tasks.get(self.config.task)

    def encode(self, labels: pd.Series) -> np.ndarray:
        """Label strings (names among :attr:`classes`, checked by the caller) as the task's targets
        (:meth:`ensemble.core.tasks.Task.encode`): integer class indices ``(n,)``, or for a multilabel
        task multi-hot float32 ``(n, classes)``."""
        return self.task.encode(labels, self.classes)

    @property
    def y(self) -> np.ndarray:
        """Labels of the training rows, encoded (:meth:`encode`)."""
        return self.encode(self.train[self.config.label_col])

    @property
    def has_groups(self) -> bool:
        """Whether ``train.csv`` has the recipe's group (speaker) column."""
        return bool(self.config.group_col) and self.config.group_col in self.train.columns


def load(config: CompetitionConfig) -> Competition:
    """Read and check a competition folder, so that a bad table stops ``ens`` before any training.

    The classes are ``[competition].classes``, else the class columns of ``sample_submission.csv``
    when it has more than one column besides the id, else the sorted labels of ``train.csv``.

    Raises:
        CompetitionError: naming the file, the line or column, and the fix, when a table is
            missing or not a readable CSV (see :func:`read_csv`); a column is missing;
            ``train.csv`` or ``test.csv`` has no rows; an id is empty or repeated; a path or a
            label is empty; the classes repeat a name, name an empty class, or do not fit the
            task (:meth:`ensemble.core.tasks.Task.class_problem`: multiclass, fewer than two;
            multilabel, a name with spaces); a label (for a multilabel task, a space-separated
            name) is not one of the classes; ``sample_submission.csv`` has neither one label
            column nor exactly the classes as columns; or the test ids differ from the sample
            submission's.
        TaskError: ``[competition].task`` is not a task (:func:`ensemble.core.tasks.get`).
    """
    root = Path(config.dir)
    c = config
    task = tasks.get(c.task)
    tables = {}
    for name, required in ((TRAIN, [c.id_col, c.path_col, c.label_col]), (TEST, [c.id_col, c.path_col]), (SAMPLE, [c.id_col])):
        path = root / name
        if not path.is_file():
            raise CompetitionError(f"{path} does not exist. A competition folder needs {TRAIN}, {TEST} and {SAMPLE}; build one with `ens data ravdess`.")
        frame, lines = read_csv(path)
        _require_columns(frame, required, path, "set the column names in the recipe's [competition] section")
        check_ids(frame, lines, c.id_col, path)
        if name != SAMPLE:
            if len(frame) == 0:
                raise CompetitionError(f"{path} has no rows; a competition needs {'training' if name == TRAIN else 'test'} clips.")
            require_filled(frame, lines, c.path_col, path, "path", c.id_col)
        tables[name] = frame, lines
    (train, train_lines), (test, _), (sample, _) = tables[TRAIN], tables[TEST], tables[SAMPLE]
    require_filled(train, train_lines, c.label_col, root / TRAIN, "label", c.id_col)

    targets = [col for col in sample.columns if col != c.id_col]
    if c.classes:
        classes, source = list(c.classes), "the recipe's [competition].classes"
    elif len(targets) > 1:
        classes, source = targets, f"the columns of {root / SAMPLE}"
    else:
        classes, source = sorted({name for label in train[c.label_col] for name in task.tokens(label)}), f"the labels of {root / TRAIN}"
    _check_classes(classes, source, task)
    _check_labels(train, train_lines, c, task, classes, root / TRAIN)

    label_submission = len(targets) == 1 and (targets[0] not in classes or len(classes) == 1)  # one column, not named after a class
    if not label_submission and set(targets) != set(classes):  # nor a probability submission: the classes, in any order
        raise CompetitionError(
            f"{root / SAMPLE}: columns {targets} besides {c.id_col!r} are neither one label column nor exactly the classes {classes} "
            f"(from {source}); fix its header or [competition].classes."
        )

    test_ids, sample_ids = set(test[c.id_col]), set(sample[c.id_col])
    if test_ids != sample_ids:
        only_test, only_sample = sorted(test_ids - sample_ids)[:3], sorted(sample_ids - test_ids)[:3]
        raise CompetitionError(
            f"{root / TEST} and {root / SAMPLE} list different ids (only in test: {only_test}, only in sample: {only_sample}); "
            "a submission must cover exactly the sample's ids."
        )
    return Competition(root=root, config=config, train=train, test=test, sample=sample, classes=classes)


def _check_classes(classes: list[str], source: str, task: Task) -> None:
    """Refuse a class list (from ``source``) that repeats or leaves empty a name, or that ``task``
    cannot use (:meth:`ensemble.core.tasks.Task.class_problem`)."""
    repeated = sorted({name for name in classes if classes.count(name) > 1})
    problems = [
        f"repeat {repeated}" if repeated else None,
        None if all(name.strip() for name in classes) else "include an empty name",
        task.class_problem(classes),
    ]
    for problem in problems:
        if problem:
            raise CompetitionError(f"the classes {classes} (from {source}) {problem}; fix them there.")


def _check_labels(train: pd.DataFrame, lines: np.ndarray, c: CompetitionConfig, task: Task, classes: list[str], path: Path) -> None:
    """Refuse a label whose name (:meth:`ensemble.core.tasks.Task.tokens`: multilabel, each
    space-separated name) is not one of ``classes``, naming its line."""
    known = set(classes)
    labels = train[c.label_col]
    for row, label in enumerate(labels):
        names = task.tokens(label)
        unknown = [name for name in names if name not in known]
        if unknown:
            which = "" if unknown == [label] else f": {unknown[0]!r}"
            raise CompetitionError(
                f"{path}: label {label!r} in line {lines[row]}{which} is not one of the classes {classes}; fix the label or the recipe's [competition].classes."
            )


def make_folds(competition: Competition, n_splits: int, seed: int) -> pd.DataFrame:
    """Assign every training row a fold in ``0 .. n_splits-1``.

    Label-stratified (multilabel: on the first label in class order) and grouped by ``group_col`` with scikit-learn's ``StratifiedGroupKFold``
    (shuffled with ``seed``), so no speaker is in two folds. Without a group column it falls back
    to ``StratifiedKFold`` and warns (:class:`LeakageWarning`).

    Returns:
        DataFrame with columns ``id`` and ``fold`` in ``train.csv`` order.

    Raises:
        CompetitionError: fewer groups than folds, or with groups every class, without groups
            some class, has fewer examples than folds.
    """
    train, c = competition.train, competition.config
    y = competition.task.strata(competition.y)  # multilabel: each clip's first label in class order
    if competition.has_groups:
        groups = train[c.group_col].to_numpy()
        if len(set(groups)) < n_splits:
            raise CompetitionError(
                f"{competition.root / TRAIN}: {len(set(groups))} groups in column {c.group_col!r} cannot fill {n_splits} folds; lower [folds].n_splits."
            )
        if np.bincount(y).max() < n_splits:
            raise CompetitionError(
                f"{competition.root / TRAIN}: every class has fewer than {n_splits} examples, too few to stratify {n_splits} folds; lower [folds].n_splits."
            )
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(y)), y, groups)
    else:
        warnings.warn(
            f"{competition.root / TRAIN} has no group column {c.group_col!r}: folds are stratified only, so one speaker can be in "
            "training and validation and OOF scores may be inflated. Add a speaker column and set [competition].group_col.",
            LeakageWarning,
            stacklevel=2,
        )
        if np.bincount(y).min() < n_splits:
            raise CompetitionError(f"{competition.root / TRAIN}: a class has fewer than {n_splits} examples; lower [folds].n_splits.")
        splits = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)
    fold = np.full(len(y), -1, dtype=np.int64)
    for k, (_, valid) in enumerate(splits):
        fold[valid] = k
    return pd.DataFrame({"id": train[c.id_col].to_numpy(), "fold": fold})


def folds(competition: Competition, config: FoldsConfig) -> pd.DataFrame:
    """The competition's folds: ``folds.csv`` when it exists, else :func:`make_folds` (not written:
    reading writes nothing; :func:`write_folds` writes them, and training does before it starts).

    Returns:
        DataFrame ``id, fold`` (int64) aligned row by row with ``competition.train``.

    Raises:
        CompetitionError: an existing ``folds.csv`` is not a readable CSV or lacks the ``id`` or
            ``fold`` column, has an empty or repeated id, does not list exactly the ids of
            ``train.csv``, has a fold that is not an integer, or does not have exactly the folds
            ``0 .. n_splits-1`` of the recipe, each with rows (naming the line and the fix);
            see :func:`make_folds` for a new one.
    """
    path = competition.root / FOLDS
    ids = competition.train[competition.config.id_col]
    if not path.exists():
        return make_folds(competition, config.n_splits, config.seed)
    remake = "delete it to re-make the folds (runs trained on the old folds must then be re-trained)"
    frame, lines = read_csv(path)
    _require_columns(frame, ["id", "fold"], path, remake)
    check_ids(frame, lines, "id", path)
    only_folds, only_train = sorted(set(frame["id"]) - set(ids)), sorted(set(ids) - set(frame["id"]))
    if only_folds or only_train:
        raise CompetitionError(
            f"{path} does not list exactly the ids of {competition.root / TRAIN} (only in {FOLDS}: {only_folds[:3]}, "
            f"only in {TRAIN}: {only_train[:3]}); it was made for another training table: {remake}."
        )
    values = frame["fold"].str.strip()
    bad = np.flatnonzero(~values.str.fullmatch(r"-?[0-9]+").to_numpy(dtype=bool))
    if len(bad):
        row = int(bad[0])
        raise CompetitionError(f"{path}: fold {frame['fold'].iloc[row]!r} in line {lines[row]} is not an integer; {remake}.")
    numbers = [int(v) for v in values]
    expected = list(range(config.n_splits))
    found = sorted(set(numbers))
    if found != expected:
        outside = [row for row, k in enumerate(numbers) if not 0 <= k < config.n_splits]
        detail = (
            f"fold {numbers[outside[0]]} in line {lines[outside[0]]} is outside 0..{config.n_splits - 1}"
            if outside
            else f"fold {min(set(expected) - set(found))} has no rows"
        )
        raise CompetitionError(f"{path} has folds {found} but the recipe asks for {config.n_splits}: {detail}; {remake}, or set [folds].n_splits.")
    fold_of = dict(zip(frame["id"], numbers))
    return pd.DataFrame({"id": ids.to_numpy(), "fold": np.array([fold_of[i] for i in ids], dtype=np.int64)})


def write_folds(competition: Competition, config: FoldsConfig) -> pd.DataFrame:
    """:func:`folds`, written to ``folds.csv`` (atomically) when the folder has none yet, so every
    later run and blend uses this one assignment.

    Raises:
        CompetitionError: see :func:`folds`.
    """
    frame = folds(competition, config)
    if not (competition.root / FOLDS).exists():
        atomic.write_csv(competition.root / FOLDS, frame)
    return frame
