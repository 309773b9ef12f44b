"""ESC-50 (Piczak 2015, "ESC: Dataset for Environmental Sound Classification", Proc. ACM Multimedia,
doi:10.1145/2733373.2806390; github.com/karolpiczak/ESC-50) as a competition.

2000 clips of 5 s, 50 classes x 40 clips, in 5 official folds of 400; the clips cut from one
freesound recording (``src_file``) are all in one fold. The official layout is ``meta/esc50.csv``
(filename, fold, target, category, esc10, src_file, take) and ``audio/<fold>-<src_file>-<take>-<target>.wav``
(44.1 kHz WAV; ``../shared/data/esc50`` holds a 16 kHz Ogg Vorbis copy with ``.ogg`` names, read the same way).

Two protocols (:func:`build`):

- the literature's (default): 5-fold cross-validation over all 2000 clips on the official folds,
  reported as the mean fold accuracy. ``folds.csv`` holds the official folds (fold ``k`` of the
  metadata is ens's fold ``k - 1``). There is no hidden test: ens's format needs test rows, so
  ``test.csv`` lists the same 2000 clips under the same ids and paths (the submission is the fold
  models' mean on every clip, in-sample for four of the five; no figure should be read from it), and
  no ``solution.csv`` is written, so ``ens score`` refuses. The protocol's figure is the pooled
  cross-validated OOF accuracy ``ens blend`` prints (``cv_accuracy``): with five folds of 400 clips
  each it equals the mean of the five fold accuracies. Pseudo-labelling must stay off here: its
  "test" clips are the training clips.
- a competition-style hidden test (``test_fold = K``): the clips of official fold ``K`` are the test
  set, with opaque ids ``test_0000`` ... in a shuffled order and their labels in ``solution.csv``;
  the other four folds, renumbered ``0..3`` in their official order, are ``folds.csv`` (a recipe with
  ``[folds] n_splits = 4``, e.g. ``recipes/esc50_holdout.toml``).

The official folds keep every recording in one fold but four: ``src_file`` 131943 and 209698 are
cut into a ``clock_tick`` clip and a ``clock_alarm`` clip in two folds, 134049 and 234879 into ``hen``
and ``rooster`` clips in two folds (:data:`SPLIT_SOURCES`, counted by ``tests/test_esc50.py``). The
protocol is the official folds, so those four stay split; their groups are ``<src_file>@<fold>``.

Every training row keeps the metadata (``esc50_fold``: the official fold 1..5, ``target``, ``esc10``,
``src_file``, ``take``); ``group`` is the ``src_file`` (``<src_file>@<fold>`` for those four), so
nothing that groups by it, such as tuning's inner folds, splits one recording within the official folds.
"""

from __future__ import annotations

import os
import random
import zipfile
from pathlib import Path

import pandas as pd

from ...core import atomic
from ...core.errors import EnsError, Param
from ...core.recipe import CompetitionConfig, FoldsConfig
from .. import competition
from ..competition import FOLDS, SAMPLE, SOLUTION, TEST, TRAIN
from . import fetch

GITHUB_URL = "https://github.com/karolpiczak/ESC-50/archive/refs/heads/master.zip"
"""The official repository's archive (about 600 MB: 44.1 kHz WAV, ``ESC-50-master/meta``, ``/audio``)."""
META = Path("meta") / "esc50.csv"
META_COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")
OFFICIAL_FOLDS = (1, 2, 3, 4, 5)
SPLIT_SOURCES = ("131943", "134049", "209698", "234879")
"""The ``src_file`` values the official metadata puts in two folds (each under two classes)."""
AUDIO_SUFFIXES = (".wav", ".ogg", ".flac")
"""The extensions a clip of ``meta/esc50.csv`` may have on disk: the official ``.wav``, or a converted copy."""


class Esc50Error(EnsError, ValueError):
    """The ESC-50 source folder, its metadata or an archive is unusable; the message names the file and the fix."""


def read_meta(source: str | os.PathLike) -> pd.DataFrame:
    """The rows of ``<source>/meta/esc50.csv``, each with its audio file.

    A row's file is ``<source>/audio/<filename>``, or, when that does not exist, the same name with
    another extension of :data:`AUDIO_SUFFIXES` (the official ``.wav`` metadata beside ``.ogg`` audio).

    Returns:
        the metadata (columns :data:`META_COLUMNS` as strings, ``fold`` as int) in file order, plus
        ``id`` (the file name's stem, e.g. ``1-100032-A-0``) and ``src`` (the audio file's :class:`~pathlib.Path`).

    Raises:
        Esc50Error: ``source`` is not a folder or has no ``meta/esc50.csv``; the table lacks a
            column, has an empty or repeated file name, or a fold outside 1..5 (naming the line);
            a ``src_file`` is in two folds; audio files are missing (listing up to three).
        CompetitionError: the metadata is not a readable CSV (:func:`ensemble.store.competition.read_csv`).
    """
    source = Path(source)
    if not source.is_dir():
        raise Esc50Error(
            f"ESC-50 source {source} is not a folder; pass ",
            Param("source", shown="DIR"),
            " (the folder holding meta/ and audio/) or ",
            Param("download", True),
            ".",
        )
    meta_path = source / META
    if not meta_path.is_file():
        raise Esc50Error(
            f"{meta_path} does not exist; ", Param("source", shown="DIR"), " must be the ESC-50 folder holding meta/esc50.csv and audio/ (the official layout)."
        )
    frame, lines = competition.read_csv(meta_path)
    missing = [c for c in META_COLUMNS if c not in frame.columns]
    if missing:
        raise Esc50Error(f"{meta_path} has no column(s) {missing} (columns: {list(frame.columns)}); it is not ESC-50's metadata.")
    competition.check_ids(frame, lines, "filename", meta_path)
    folds = frame["fold"].str.strip()
    bad = [row for row, value in enumerate(folds) if value not in {str(k) for k in OFFICIAL_FOLDS}]
    if bad:
        raise Esc50Error(f"{meta_path}: fold {frame['fold'].iloc[bad[0]]!r} in line {lines[bad[0]]} is not one of {list(OFFICIAL_FOLDS)}.")
    frame["fold"] = folds.astype(int)
    frame["id"] = frame["filename"].map(lambda name: Path(name).stem)
    frame["src"] = [_audio_file(source / "audio", name) for name in frame["filename"]]
    absent = [name for name, src in zip(frame["filename"], frame["src"]) if src is None]
    if absent:
        raise Esc50Error(
            f"{len(absent)} clip(s) of {meta_path} have no audio file in {source / 'audio'} (e.g. {absent[:3]}, "
            f"tried the extensions {list(AUDIO_SUFFIXES)}); pass the complete ESC-50 folder."
        )
    return frame


def groups(meta: pd.DataFrame) -> list[str]:
    """Each clip's group: its ``src_file``, or ``<src_file>@<fold>`` for a recording the official folds
    split (see :data:`SPLIT_SOURCES`), so that no group of ``train.csv`` is in two folds.

    Args:
        meta: rows with ``src_file`` and ``fold`` (:func:`read_meta`).

    Returns:
        one group name per row, in order.
    """
    split = meta.groupby("src_file")["fold"].transform("nunique") > 1
    return [f"{src}@{fold}" if crossed else src for src, fold, crossed in zip(meta["src_file"], meta["fold"], split)]


def _audio_file(folder: Path, name: str) -> Path | None:
    """``folder/name``, else that stem with another extension of :data:`AUDIO_SUFFIXES`, else None."""
    exact = folder / name
    if exact.is_file():
        return exact
    return next((p for p in (folder / (Path(name).stem + s) for s in AUDIO_SUFFIXES) if p.is_file()), None)


def build(source: str | os.PathLike, out: str | os.PathLike, test_fold: int | None = None, seed: int = 42) -> dict[str, pd.DataFrame]:
    """Write a competition folder from the ESC-50 folder ``source`` (official layout, :func:`read_meta`).

    Layout of ``out``: ``train/<filename>`` audio (and, with ``test_fold``, ``test/<id><suffix>``),
    ``train.csv`` (id, path, label = the category, group = the src_file (:func:`groups`), esc50_fold, target, esc10,
    src_file, take), ``test.csv`` (id, path), ``sample_submission.csv`` (id, label) and ``folds.csv``
    (id, fold), and with ``test_fold`` ``solution.csv`` (id, label, esc50_fold, esc10). See the module
    docstring for the two protocols. Without ``test_fold`` a ``solution.csv`` left by an earlier build
    in ``out`` is deleted (this protocol has no hidden labels).

    Args:
        test_fold: None for 5-fold cross-validation over every clip; 1..5 to hold that official fold out as the hidden test.
        seed: the shuffle of the hidden test's ids.

    Returns:
        the tables written, by file name.

    Raises:
        Esc50Error: see :func:`read_meta`; ``test_fold`` not in 1..5.
    """
    if test_fold is not None and test_fold not in OFFICIAL_FOLDS:
        raise Esc50Error(
            Param("test_fold", test_fold), f" is not an official ESC-50 fold; choose one of {list(OFFICIAL_FOLDS)}, or none for 5-fold cross-validation."
        )
    out = Path(out)
    meta = read_meta(source)
    meta["group"] = groups(meta)
    is_test = meta["fold"] == test_fold
    train_rows = meta[~is_test].reset_index(drop=True)
    train_rows["path"] = "train/" + train_rows["src"].map(lambda p: p.name)
    train_rows["label"] = train_rows["category"]
    train_rows["esc50_fold"] = train_rows["fold"]
    kept = sorted(set(train_rows["fold"]))
    fold_table = pd.DataFrame({"id": train_rows["id"], "fold": train_rows["fold"].map(kept.index)})
    for src, rel in zip(train_rows["src"], train_rows["path"]):
        fetch.place(src, out / rel)
    classes = sorted(meta["category"].unique())
    columns = ["id", "path", "label", "group", "esc50_fold", "target", "esc10", "src_file", "take"]
    tables = {TRAIN: train_rows[columns]}
    if test_fold is None:
        tables[TEST] = train_rows[["id", "path"]]
        (out / SOLUTION).unlink(missing_ok=True)
    else:
        test_rows = meta[is_test].reset_index(drop=True)
        order = list(range(len(test_rows)))
        random.Random(seed).shuffle(order)
        test_rows = test_rows.iloc[order].reset_index(drop=True)
        test_rows["id"] = [f"test_{i:04d}" for i in range(len(test_rows))]
        test_rows["path"] = "test/" + test_rows["id"] + test_rows["src"].map(lambda p: p.suffix.lower())
        for src, rel in zip(test_rows["src"], test_rows["path"]):
            fetch.place(src, out / rel)
        tables[TEST] = test_rows[["id", "path"]]
        tables[SOLUTION] = test_rows.rename(columns={"category": "label", "fold": "esc50_fold"})[["id", "label", "esc50_fold", "esc10"]]
    tables[SAMPLE] = pd.DataFrame({"id": tables[TEST]["id"], "label": classes[0]})
    tables[FOLDS] = fold_table
    for name, frame in tables.items():
        atomic.write_csv(out / name, frame)
    return tables


def extract(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Unpack an ESC-50 zip archive (the official ``ESC-50-master/`` one, or any zip holding
    ``meta/esc50.csv`` and ``audio/``) into ``dest``.

    Returns:
        the unpacked folder that holds ``meta/esc50.csv`` (the ``source`` of :func:`build`).

    Raises:
        Esc50Error: ``archive`` is not a zip file, or holds no ``meta/esc50.csv``.
    """
    dest = Path(dest)
    try:
        with zipfile.ZipFile(archive) as zf:
            metas = [name for name in zf.namelist() if name == META.as_posix() or name.endswith("/" + META.as_posix())]
            if not metas:
                raise Esc50Error(
                    f"{archive} holds no {META.as_posix()}: it is not the ESC-50 archive; download it again or pass ", Param("source", shown="DIR"), "."
                )
            zf.extractall(dest)  # zipfile drops absolute paths and '..' from member names
    except zipfile.BadZipFile as err:
        raise Esc50Error(f"{archive} is not a zip file ({err}); download it again or pass ", Param("source", shown="DIR"), ".") from err
    root = min(metas, key=len)[: -len(META.as_posix())]
    return dest / root if root else dest


def download(dest: str | os.PathLike, url: str = GITHUB_URL, timeout: float = 30.0) -> Path:
    """Download the official ESC-50 archive (:data:`GITHUB_URL`, 44.1 kHz WAV) and unpack it into ``dest`` (:func:`extract`).

    Returns:
        the unpacked folder holding ``meta/esc50.csv`` and ``audio/``.

    Raises:
        Esc50Error: the archive could not be fetched (offline, or the host refused; the message says
            to pass ``--source`` with a local copy instead), or it is not the ESC-50 archive.
    """
    dest = Path(dest)
    with fetch.fetched(url, dest, "ESC-50", "the folder holding meta/esc50.csv and audio/", Esc50Error, timeout) as archive:
        return extract(archive, dest)


def build_competition(source: str | os.PathLike, out: str | os.PathLike, test_fold: int | None = None, seed: int = 42) -> dict[str, pd.DataFrame]:
    """:func:`build` the competition folder ``out``, then load it and its ``folds.csv`` as ens will
    (:func:`ensemble.store.competition.load`, :func:`ensemble.store.competition.folds`): what ``ens data esc50`` does.

    Returns:
        the tables :func:`build` wrote, by file name.

    Raises:
        Esc50Error: see :func:`build`. CompetitionError: the folder written is not a valid competition.
    """
    tables = build(source, out, test_fold, seed)
    n_splits = len(OFFICIAL_FOLDS) - (test_fold is not None)
    competition.folds(competition.load(CompetitionConfig(dir=str(out))), FoldsConfig(n_splits=n_splits))
    return tables
