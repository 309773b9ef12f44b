"""RAVDESS (Livingstone & Russo 2018, PLoS ONE 13(5): e0196391; Zenodo record 1188976) as a competition.

File names are seven 2-digit fields ``MM-VV-EE-II-SS-RR-AA``: modality, vocal channel (01 speech,
02 song), emotion, intensity, statement, repetition, actor (odd = male, even = female).
:func:`build` writes a Kaggle-style folder whose test split is whole actors, with opaque test ids
and file names so that nothing in ``test.csv`` reveals a label; the labels go to ``solution.csv``.
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
from ..competition import SAMPLE, SOLUTION, TEST, TRAIN
from . import fetch

EMOTIONS = {1: "neutral", 2: "calm", 3: "happy", 4: "sad", 5: "angry", 6: "fearful", 7: "disgust", 8: "surprised"}
CLASSES = list(EMOTIONS.values())
INTENSITIES = {1: "normal", 2: "strong"}
VOCAL_CHANNELS = {1: "speech", 2: "song"}
AUDIO_SUFFIXES = (".wav", ".flac")
ZENODO_SPEECH_URL = "https://zenodo.org/records/1188976/files/Audio_Speech_Actors_01-24.zip?download=1"
DEFAULT_TEST_ACTORS = (21, 22, 23, 24)
#: the 10-class gender x emotion task of one seed system: female/male x these five emotions.
GENDER_EMOTIONS = ("angry", "calm", "fearful", "happy", "sad")
LABEL_SCHEMES = ("emotion", "gender_emotion", "emotion_intensity")


def label_of(fields: dict, scheme: str) -> str | None:
    """The class of a parsed clip under a label scheme, or None when the scheme leaves it out.

    ``emotion``: the 8 emotions. ``gender_emotion``: ``"female_angry"`` ... ``"male_sad"``, 10
    classes; clips of other emotions are left out. ``emotion_intensity``: multilabel, the
    emotion plus ``strong`` for strong-intensity clips (``"angry strong"``), 9 classes.

    Raises:
        RavdessError: an unknown scheme.
    """
    if scheme == "emotion":
        return fields["emotion"]
    if scheme == "emotion_intensity":
        return f"{fields['emotion']} strong" if fields["intensity"] == "strong" else fields["emotion"]
    if scheme == "gender_emotion":
        return f"{fields['gender']}_{fields['emotion']}" if fields["emotion"] in GENDER_EMOTIONS else None
    raise RavdessError(f"unknown label scheme {scheme!r}; choose one of {LABEL_SCHEMES}.")


class RavdessError(EnsError, ValueError):
    """A RAVDESS file name does not follow the code, or the source folder is unusable."""


def parse_name(path: str | os.PathLike) -> dict:
    """Parse a RAVDESS file name such as ``03-01-05-02-01-02-12.wav``.

    Returns:
        dict with ``modality`` (int), ``vocal_channel`` ("speech"/"song"), ``emotion`` (one of
        :data:`CLASSES`), ``intensity`` ("normal"/"strong"), ``statement`` (1 or 2),
        ``repetition`` (1 or 2), ``actor`` (1..24) and ``gender`` ("male" for odd actors).

    Raises:
        RavdessError: the name does not have seven 2-digit fields or a field is out of range.
    """
    stem = Path(path).stem
    parts = stem.split("-")
    if len(parts) != 7 or not all(len(p) == 2 and p.isdigit() for p in parts):
        raise RavdessError(f"{path}: a RAVDESS file name has seven 2-digit fields MM-VV-EE-II-SS-RR-AA, got {stem!r}.")
    modality, channel, emotion, intensity, statement, repetition, actor = map(int, parts)
    ranges = {
        "vocal channel": (channel, VOCAL_CHANNELS),
        "emotion": (emotion, EMOTIONS),
        "intensity": (intensity, INTENSITIES),
        "statement": (statement, {1: 1, 2: 2}),
        "repetition": (repetition, {1: 1, 2: 2}),
    }
    for name, (value, allowed) in ranges.items():
        if value not in allowed:
            raise RavdessError(f"{path}: {name} code {value:02d} is not one of {sorted(allowed)}.")
    if not 1 <= actor <= 24:
        raise RavdessError(f"{path}: actor code {actor:02d} is not in 01..24.")
    return {
        "modality": modality,
        "vocal_channel": VOCAL_CHANNELS[channel],
        "emotion": EMOTIONS[emotion],
        "intensity": INTENSITIES[intensity],
        "statement": statement,
        "repetition": repetition,
        "actor": actor,
        "gender": "male" if actor % 2 else "female",
    }


def find_clips(source: str | os.PathLike) -> list[Path]:
    """All ``.wav``/``.flac`` files below ``source`` (any depth), sorted by name.

    Raises:
        RavdessError: ``source`` is not a folder or holds no audio.
    """
    source = Path(source)
    if not source.is_dir():
        raise RavdessError(
            f"RAVDESS source {source} is not a folder; pass ", Param("source", shown="DIR"), " (the folder with Actor_01 ...) or ", Param("download", True), "."
        )
    clips = sorted((p for p in source.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()), key=lambda p: p.name)
    if not clips:
        raise RavdessError(f"no .wav or .flac files below {source}; pass the folder that holds Actor_01 ... Actor_24.")
    return clips


def build(
    source: str | os.PathLike,
    out: str | os.PathLike,
    test_actors: tuple[int, ...] = DEFAULT_TEST_ACTORS,
    seed: int = 42,
    labels: str = "emotion",
    song_source: str | os.PathLike | None = None,
) -> dict[str, pd.DataFrame]:
    """Write a competition folder from the RAVDESS clips below ``source`` (and, pooled with them,
    the song set below ``song_source``; its clips have vocal channel 02 in their names).

    Layout of ``out``: ``train/<name>`` and ``test/<id><suffix>`` audio, ``train.csv`` (id, path,
    label, group, and the parsed fields), ``test.csv`` (id, path), ``sample_submission.csv``
    (id, label), ``solution.csv`` (id, label, group, gender, intensity). ``group`` is the actor.
    The test split is every clip of ``test_actors``; no training actor has a test clip. Test ids
    are ``test_0000``... in a shuffled order (``seed``), so neither id nor order reveals a label.

    ``labels`` picks the label scheme (:func:`label_of`); the ``emotion`` column always holds the emotion.

    Returns:
        the four tables by file name.

    Raises:
        RavdessError: a bad file name, no clips, a test actor with no clips, or every actor in test.
    """
    out = Path(out)
    clips = find_clips(source) + (find_clips(song_source) if song_source else [])
    rows = [{"name": p.name, "src": p, **parse_name(p)} for p in clips]
    for row in rows:
        row["label"] = label_of(row, labels)
    table = pd.DataFrame([row for row in rows if row["label"] is not None])
    actors = set(table["actor"])
    missing = sorted(set(test_actors) - actors)
    if missing:
        raise RavdessError(f"test actor(s) {missing} have no clips in {source}; choose ", Param("test_actors", shown=""), f" among {sorted(actors)}.")
    if actors <= set(test_actors):
        raise RavdessError("every actor is a test actor; leave some for training (", Param("test_actors", shown=""), ").")

    is_test = table["actor"].isin(test_actors)
    train_rows, test_rows = table[~is_test].reset_index(drop=True), table[is_test].reset_index(drop=True)
    order = list(range(len(test_rows)))
    random.Random(seed).shuffle(order)
    test_rows = test_rows.iloc[order].reset_index(drop=True)
    test_rows["id"] = [f"test_{i:04d}" for i in range(len(test_rows))]

    train_rows["id"] = train_rows["name"].map(lambda n: Path(n).stem)
    train_rows["path"] = "train/" + train_rows["name"]
    train_rows["group"] = train_rows["actor"].map(lambda a: f"actor_{a:02d}")
    test_rows["path"] = "test/" + test_rows["id"] + test_rows["src"].map(lambda p: p.suffix.lower())
    test_rows["group"] = test_rows["actor"].map(lambda a: f"actor_{a:02d}")

    for frame in (train_rows, test_rows):
        for src, rel in zip(frame["src"], frame["path"]):
            fetch.place(src, out / rel)

    fields = ["emotion", "intensity", "statement", "repetition", "actor", "gender", "vocal_channel"]
    tables = {
        TRAIN: train_rows[["id", "path", "label", "group", *fields]],
        TEST: test_rows[["id", "path"]],
        SAMPLE: pd.DataFrame({"id": test_rows["id"], "label": sorted(table["label"].unique())[0]}),
        SOLUTION: test_rows[["id", "label", "group", "gender", "intensity"]],
    }
    for name, frame in tables.items():
        atomic.write_csv(out / name, frame)
    return tables


def download(dest: str | os.PathLike, url: str = ZENODO_SPEECH_URL, timeout: float = 30.0) -> Path:
    """Download and unpack the official RAVDESS speech archive (208 MB, 48 kHz WAV) into ``dest``.

    Returns:
        ``dest``, now holding ``Actor_01`` ... ``Actor_24``.

    Raises:
        RavdessError: the archive could not be fetched (offline, or the host refused); the message
            says to pass ``--source`` with a local copy instead.
    """
    dest = Path(dest)
    with fetch.fetched(url, dest, "RAVDESS", "the speech set: the folder holding Actor_01 ... Actor_24", RavdessError, timeout) as archive:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(dest)
    return dest


def build_competition(
    source: str | os.PathLike,
    out: str | os.PathLike,
    test_actors: tuple[int, ...] = DEFAULT_TEST_ACTORS,
    seed: int = 42,
    labels: str = "emotion",
    song_source: str | os.PathLike | None = None,
    n_splits: int = 5,
) -> dict[str, pd.DataFrame]:
    """:func:`build` the competition folder ``out``, then write its ``n_splits`` speaker-grouped
    folds (``folds.csv``, :func:`ensemble.store.competition.write_folds` with ``seed``): what
    ``ens data ravdess`` does. Returns the tables :func:`build` wrote, by file name.

    Raises:
        RavdessError: see :func:`build`. CompetitionError: the folds cannot be made.
    """
    tables = build(source, out, test_actors, seed, labels, song_source)
    # folds stratified on the label strings as written (a multilabel scheme's "happy strong" is one stratum)
    competition.write_folds(competition.load(CompetitionConfig(dir=str(out))), FoldsConfig(n_splits=n_splits, seed=seed))
    return tables
