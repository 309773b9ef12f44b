"""A Kaggle-style competition folder: ``train.csv``, ``test.csv``, ``sample_submission.csv``, folds.

Any folder of this layout works, not only one built by ``ens data``: the column names and the
audio root come from the recipe's ``[competition]`` section. ``folds.csv`` (id, fold) is written
once into the folder so every backbone trains on the same folds.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from . import atomic, multilabel
from .recipe import CompetitionConfig, FoldsConfig

TRAIN, TEST, SAMPLE, SOLUTION, FOLDS = "train.csv", "test.csv", "sample_submission.csv", "solution.csv", "folds.csv"


class CompetitionError(ValueError):
    """A competition table is missing or inconsistent; the message names the file, row and fix."""


class LeakageWarning(UserWarning):
    """Folds are not grouped by speaker, so validation scores may be inflated."""


def _read_table(path: Path, required: list[str]) -> pd.DataFrame:
    if not path.is_file():
        raise CompetitionError(f"{path} does not exist. A competition folder needs {TRAIN}, {TEST} and {SAMPLE}; build one with `ens data ravdess`.")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise CompetitionError(f"{path} is not a readable CSV: {err}") from err
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise CompetitionError(
            f"{path} has no column(s) {missing} (columns: {list(frame.columns)}); set the column names in the recipe's [competition] section."
        )
    return frame


def _check_ids(frame: pd.DataFrame, id_col: str, path: Path) -> None:
    empty = frame.index[frame[id_col].str.strip() == ""]
    if len(empty):
        raise CompetitionError(f"{path}: empty id in row {int(empty[0]) + 2} (line numbers count the header as line 1).")
    dup = frame[id_col][frame[id_col].duplicated()]
    if len(dup):
        raise CompetitionError(f"{path}: id {dup.iloc[0]!r} appears more than once (line {int(dup.index[0]) + 2}); ids must be unique.")


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
    def multilabel(self) -> bool:
        """Whether the task is multilabel (space-separated labels, sigmoid outputs)."""
        return self.config.task == "multilabel"

    @property
    def y(self) -> np.ndarray:
        """Labels of the training rows: integer class indices ``(n_train,)``, or for a multilabel
        task multi-hot float32 ``(n_train, classes)``."""
        labels = self.train[self.config.label_col]
        if self.multilabel:
            return multilabel.encode(labels, self.classes)
        index = {c: i for i, c in enumerate(self.classes)}
        return labels.map(index).to_numpy(dtype=np.int64)

    @property
    def has_groups(self) -> bool:
        """Whether ``train.csv`` has the recipe's group (speaker) column."""
        return bool(self.config.group_col) and self.config.group_col in self.train.columns


def load(config: CompetitionConfig) -> Competition:
    """Read and check a competition folder.

    Raises:
        CompetitionError: a table is missing or unreadable, a column is missing, an id is empty or
            duplicated, a label is empty or not among the classes, or the test ids differ from the
            sample submission's.
    """
    root = Path(config.dir)
    c = config
    train = _read_table(root / TRAIN, [c.id_col, c.path_col, c.label_col])
    test = _read_table(root / TEST, [c.id_col, c.path_col])
    sample = _read_table(root / SAMPLE, [c.id_col])
    for frame, name in ((train, TRAIN), (test, TEST), (sample, SAMPLE)):
        _check_ids(frame, c.id_col, root / name)
    if len(train) == 0:
        raise CompetitionError(f"{root / TRAIN} has no rows.")

    empty = train.index[train[c.label_col].str.strip() == ""]
    if len(empty):
        raise CompetitionError(f"{root / TRAIN}: empty label in line {int(empty[0]) + 2} (id {train[c.id_col].iloc[empty[0]]!r}).")

    sample_classes = [col for col in sample.columns if col != c.id_col]
    if c.classes:
        classes = list(c.classes)
    elif len(sample_classes) > 1:
        classes = sample_classes
    elif c.task == "multilabel":
        classes = sorted({t for label in train[c.label_col] for t in multilabel.tokens(label)})
    else:
        classes = sorted(train[c.label_col].unique())
    if c.task == "multilabel":
        unknown = ~train[c.label_col].map(lambda label: set(multilabel.tokens(label)) <= set(classes))
    else:
        unknown = ~train[c.label_col].isin(classes)
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise CompetitionError(
            f"{root / TRAIN}: label {train[c.label_col].iloc[row]!r} in line {row + 2} is not one of the classes {classes}; "
            "fix the label or the recipe's [competition].classes."
        )

    test_ids, sample_ids = set(test[c.id_col]), set(sample[c.id_col])
    if test_ids != sample_ids:
        only_test, only_sample = sorted(test_ids - sample_ids)[:3], sorted(sample_ids - test_ids)[:3]
        raise CompetitionError(
            f"{root / TEST} and {root / SAMPLE} list different ids (only in test: {only_test}, only in sample: {only_sample}); "
            "a submission must cover exactly the sample's ids."
        )
    return Competition(root=root, config=config, train=train, test=test, sample=sample, classes=classes)


def make_folds(competition: Competition, n_splits: int, seed: int) -> pd.DataFrame:
    """Assign every training row a fold in ``0 .. n_splits-1``.

    Label-stratified (multilabel: on the first label in class order) and grouped by ``group_col`` with scikit-learn's ``StratifiedGroupKFold``
    (shuffled with ``seed``), so no speaker is in two folds. Without a group column it falls back
    to ``StratifiedKFold`` and warns (:class:`LeakageWarning`).

    Returns:
        DataFrame with columns ``id`` and ``fold`` in ``train.csv`` order.

    Raises:
        CompetitionError: fewer groups or fewer examples of a class than folds.
    """
    train, c = competition.train, competition.config
    y = competition.y
    if competition.multilabel:  # stratify on each clip's first label in class order
        y = y.argmax(axis=1)
    if competition.has_groups:
        groups = train[c.group_col].to_numpy()
        if len(set(groups)) < n_splits:
            raise CompetitionError(f"{competition.root / TRAIN}: {len(set(groups))} groups in column {c.group_col!r} cannot fill {n_splits} folds; lower [folds].n_splits.")
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
    """The competition's folds: read ``folds.csv``, or make and write it on first use.

    Returns:
        DataFrame ``id, fold`` aligned row by row with ``competition.train``.

    Raises:
        CompetitionError: an existing ``folds.csv`` does not match ``train.csv`` or has another
            number of folds than the recipe asks for.
    """
    path = competition.root / FOLDS
    ids = competition.train[competition.config.id_col]
    if not path.exists():
        frame = make_folds(competition, config.n_splits, config.seed)
        atomic.write_csv(path, frame)
        return frame
    frame = _read_table(path, ["id", "fold"])
    if set(frame["id"]) != set(ids) or len(frame) != len(ids):
        raise CompetitionError(f"{path} does not list exactly the ids of {competition.root / TRAIN}; delete it to re-make the folds.")
    frame = frame.set_index("id").loc[ids].reset_index()
    frame["fold"] = frame["fold"].astype(np.int64)
    found = sorted(int(k) for k in frame["fold"].unique())
    if found != list(range(config.n_splits)):
        raise CompetitionError(f"{path} has folds {found} but the recipe asks for {config.n_splits}; delete it or set [folds].n_splits.")
    return frame
