"""Which speaker each clip of a competition belongs to, and speaker-level normalisation of images.

Training clips, as ``[speakers].train`` says (:func:`with_train_speakers`): the competition's
group column (``given``, ``[competition].group_col``), speakers inferred from the voices
(``inferred``: the encoder and clustering of inferred test speakers, written once to
``train_speakers.csv`` / ``train_speakers.json``; they group the folds, so OOF stays
speaker-independent, and are what speaker normalisation normalises over), or none (``none``:
ungrouped folds, with a :class:`ensemble.store.competition.LeakageWarning`); ``auto`` is ``given``
when ``train.csv`` has the column, else ``inferred``. Inferred speakers are a guess: ens cannot
know who really speaks, and says so, with the clustering's silhouette, when it infers them. Test clips, as
``[speakers].test`` says: the test table's group column (``given``), speakers inferred by a
pretrained speaker encoder and clustering (``inferred``, :func:`ensemble.speaker.speakers.infer`), or the
whole test set as one speaker (``pool``); ``auto`` is ``given`` when the test table has the column,
else ``inferred``. The training grid writes the test speakers next to the competition
(:func:`write`): ``test_speakers.csv`` (``id, speaker``) and ``test_speakers.json`` (how they were
found, k, silhouette). Nothing here reads the hidden ``solution.csv``: only ``ens score`` does;
how well inferred test speakers match the real ones is measured by a benchmark
(``benchmarks/inferred_speakers.py``, from the written ``test_speakers.csv``).

No normalisation statistic uses a label: each speaker's mean and standard deviation come from
that speaker's own clips, and a validation fold's speakers (never in a training fold: folds are
grouped by speaker) are normalised with their own statistics, exactly as unseen test speakers are.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import atomic
from ..core.errors import EnsError
from ..core.recipe import FeatureConfig, Recipe, SpeakersConfig
from ..store import competition as comp_mod
from . import speakers

CSV, JSON = "test_speakers.csv", "test_speakers.json"
TRAIN_CSV, TRAIN_JSON = "train_speakers.csv", "train_speakers.json"
INFERRED_COLUMN = "ens_speaker"
"""The group column inferred training speakers go in when ``[competition].group_col`` is ``""``."""
TRAIN_K_CAP = 50
"""Most training speakers :func:`train_k_range` tries: silhouette over more clusters than this
costs more than it tells (the clustering is O(n^2) per k)."""
CLIPS_PER_SPEAKER = 8
"""Fewest clips per speaker :func:`train_k_range` assumes, so it tries at most ``n // 8`` speakers
(RAVDESS has 60 per actor, IEMOCAP and CREMA-D hundreds; a corpus with fewer clips per speaker
is under-split, which keeps folds grouped, only coarser)."""
SPREAD = 3.0
"""Standard deviations either side of a speaker's mean that span the [0, 1] pixel range after
speaker-level normalisation (:func:`to_unit`): +-3 keeps 99.7 % of a normal channel unclipped."""


class SpeakerGroupError(EnsError, ValueError):
    """A clip's speaker is missing or empty, or speaker normalisation has no speakers to use."""


@dataclass
class TestSpeakers:
    """The speakers of the test clips.

    Attributes:
        groups: ``(n_test,)`` speaker names, in ``test.csv`` order.
        how: ``given``, ``inferred`` or ``pool``.
        k: the number of speakers.
        silhouette: the chosen clustering's mean cosine silhouette (``inferred`` only).
    """

    groups: np.ndarray
    how: str
    k: int
    silhouette: float | None = None

    def describe(self) -> str:
        """One line for the log: how the test speakers were found (and, inferred, the clustering's silhouette)."""
        extra = "" if self.silhouette is None else f", silhouette {self.silhouette:.3f}"
        return f"test speakers: {self.k} ({self.how}{extra})"


def _column(frame: pd.DataFrame, column: str, id_col: str, path: Path) -> np.ndarray:
    """The group column of a table as strings, refusing an empty cell (naming the row's id)."""
    values = frame[column].astype(str).str.strip()
    empty = np.flatnonzero((values == "").to_numpy())
    if len(empty):
        raise SpeakerGroupError(
            f"{path}: the row with {id_col} {frame[id_col].iloc[empty[0]]!r} has no {column!r} (speaker); "
            f"fill it in, or set [speakers].test = 'inferred' or 'pool' for test clips."
        )
    return values.to_numpy()


def train_groups(competition: comp_mod.Competition) -> np.ndarray:
    """The training clips' speakers ``(n_train,)`` from the group column.

    Raises:
        SpeakerGroupError: ``train.csv`` has no group column, or a row's group is empty.
    """
    c = competition.config
    path = competition.root / comp_mod.TRAIN
    if not competition.has_groups:
        raise SpeakerGroupError(
            f"{path} has no group column {c.group_col!r}: [speakers].norm = 'speaker' needs each training clip's speaker; "
            "add the column and set [competition].group_col, set [speakers].train = 'auto' or 'inferred' (speakers inferred "
            "from the voices), or set [speakers].norm = 'clip'."
        )
    return _column(competition.train, c.group_col, c.id_col, path)


@dataclass
class TrainSpeakers(TestSpeakers):
    """The training clips' speakers, inferred (:func:`infer_train_speakers`). Attributes as
    :class:`TestSpeakers` (``groups`` in ``train.csv`` order), and:

    Attributes:
        ari: adjusted Rand index against ``train.csv``'s own group column, when it has one and
            ``[speakers].train = "inferred"`` was asked for anyway (training metadata, not the hidden labels).
        k_range: the smallest and largest k tried (:func:`train_k_range`).
        path: the ``train_speakers.csv`` they are written to.
    """

    ari: float | None = None
    k_range: tuple[int, int] = (0, 0)
    path: Path | None = None

    def describe(self) -> str:
        """What ``ens train`` says: that the speakers are inferred, what that means, and how sure the clustering is."""
        extra = "" if self.ari is None else f", adjusted Rand index {self.ari:.3f} against train.csv's own groups"
        return (
            f"training speakers: {self.k} inferred from the voices (k {self.k_range[0]}..{self.k_range[1]} tried, silhouette "
            f"{self.silhouette:.3f}{extra}) -> {self.path}. ens cannot know who really speaks in train.csv: folds are grouped "
            "by these inferred speakers and speaker normalisation uses them, but inferred speakers split and merge real ones "
            f"(on {MEASURED}), so OOF scores may still be optimistic. Add a speaker column and set [competition].group_col "
            "to use the real speakers."
        )


MEASURED = "1200 RAVDESS clips of 20 actors: k 47, ARI 0.54, each actor in 3.1 of 5 folds on average, against 5 ungrouped"
"""How well inferred training speakers group folds where the truth is known (measured at this
module's introduction and re-measured by ``benchmarks/inferred_speakers.py``: actors 1-20,
``train_k_range(1200, 5)``, the recipe's ``StratifiedGroupKFold`` (seed 42);
on 48 clips of 6 actors the silhouette picks k = 2, the speakers' gender, ARI 0.31, which keeps
every actor in one of 2 folds). Said in :meth:`TrainSpeakers.describe`."""


def train_k_range(n_clips: int, n_splits: int) -> tuple[int, int]:
    """The numbers of training speakers :func:`infer_train_speakers` tries for ``n_clips`` clips
    and ``n_splits`` folds: from ``max(2, n_splits)`` (fewer groups could not fill the folds) to
    ``min(TRAIN_K_CAP, n_clips // CLIPS_PER_SPEAKER)`` (50; 8 clips a speaker), never below the
    smallest nor above ``n_clips - 1`` (silhouette needs a cluster with two clips).

    Raises:
        SpeakerGroupError: fewer than ``max(2, n_splits) + 1`` clips.
    """
    low = max(2, n_splits)
    if n_clips < low + 1:
        raise SpeakerGroupError(
            f"inferring the training speakers for {n_splits} folds needs at least {low + 1} training clips, got {n_clips}; "
            "add a speaker column to train.csv, or set [speakers].train = 'none' (ungrouped folds)."
        )
    return low, min(n_clips - 1, max(low, min(TRAIN_K_CAP, n_clips // CLIPS_PER_SPEAKER)))


def train_source(competition: comp_mod.Competition, config: SpeakersConfig) -> str:
    """``[speakers].train`` resolved: ``given``, ``inferred`` or ``none`` (``auto``: ``given`` when
    ``train.csv`` has the group column, else ``inferred``)."""
    if config.train == "auto":
        return "given" if competition.has_groups else "inferred"
    return config.train


def infer_train_speakers(competition: comp_mod.Competition, recipe: Recipe, progress: bool = True) -> TrainSpeakers:
    """Infer the training clips' speakers: each clip embedded (loaded as ``[features]`` loads it;
    cached in ``<competition>/.ens_cache/``, :class:`ensemble.speaker.speakers.EmbeddingCache`) and
    clustered (:func:`ensemble.speaker.speakers.infer`), k by the best silhouette over :func:`train_k_range`.
    No label is used. ``ari`` compares them with ``train.csv``'s group column when it has one.

    Raises:
        SpeakerGroupError: too few clips (:func:`train_k_range`). AudioError: a clip cannot be loaded.
        SpeakerError: a clip is all zeros (:func:`ensemble.speaker.speakers.embed`).
    """
    c, f = competition.config, recipe.features
    low, high = train_k_range(len(competition.train), recipe.folds.n_splits)
    cache = speakers.EmbeddingCache(competition.root / ".ens_cache")
    embeddings = cache.get(competition.audio_paths(competition.train), f.sample_rate, f.trim_db, progress=progress)
    inferred = speakers.infer(embeddings, k_min=low, k_max=high)
    groups = np.array([f"speaker{label}" for label in inferred.labels], dtype=object)
    ari = None
    if competition.has_groups:
        ari = speakers.adjusted_rand(_column(competition.train, c.group_col, c.id_col, competition.root / comp_mod.TRAIN), groups)
    return TrainSpeakers(groups, "inferred", inferred.k, float(inferred.score), ari, (low, high), competition.root / TRAIN_CSV)


def _read_train_speakers(competition: comp_mod.Competition) -> TrainSpeakers:
    """The training speakers :func:`write_train_speakers` wrote, in ``train.csv`` order.

    Raises:
        CompetitionError: ``train_speakers.csv`` is not a readable CSV, lacks ``id`` / ``speaker``,
            has an empty speaker, or does not list exactly the ids of ``train.csv``.
    """
    path = competition.root / TRAIN_CSV
    remake = "delete it (and folds.csv, which was grouped by it) to infer the training speakers again"
    frame, lines = comp_mod.read_csv(path)
    if "id" not in frame.columns or "speaker" not in frame.columns:
        raise comp_mod.CompetitionError(f"{path} has columns {list(frame.columns)}, not id and speaker; {remake}.")
    comp_mod.check_ids(frame, lines, "id", path)
    comp_mod.require_filled(frame, lines, "speaker", path, "speaker", "id")
    ids = competition.train[competition.config.id_col]
    if set(frame["id"]) != set(ids):
        raise comp_mod.CompetitionError(
            f"{path} does not list exactly the ids of {competition.root / comp_mod.TRAIN}: it was made for another training table; {remake}."
        )
    speaker_of = dict(zip(frame["id"], frame["speaker"]))
    info = {}
    try:
        info = json.loads((competition.root / TRAIN_JSON).read_text())
    except (OSError, ValueError):
        pass  # the CSV is what counts; the JSON only reports
    groups = np.array([speaker_of[i] for i in ids], dtype=object)
    return TrainSpeakers(
        groups,
        "inferred",
        len(set(groups)),
        info.get("silhouette", float("nan")),
        info.get("ari"),
        tuple(info.get("k_range", (0, 0))),
        path,
    )


def write_train_speakers(competition: comp_mod.Competition, found: TrainSpeakers) -> Path:
    """Write ``train_speakers.csv`` (``id, speaker``) and ``train_speakers.json`` (how, k,
    silhouette, ARI, k range) into the competition folder, atomically; returns the CSV's path."""
    atomic.write_csv(found.path, pd.DataFrame({"id": competition.train[competition.config.id_col].to_numpy(), "speaker": found.groups}))
    report = {"how": found.how, "k": found.k, "silhouette": found.silhouette, "ari": found.ari, "k_range": list(found.k_range)}
    atomic.write_json(competition.root / TRAIN_JSON, report)
    return found.path


def with_train_speakers(competition: comp_mod.Competition, recipe: Recipe, progress: bool = True) -> tuple[comp_mod.Competition, TrainSpeakers | None]:
    """``competition`` with its training speakers as ``[speakers].train`` says (see the module
    docstring), so that folds (:func:`ensemble.store.competition.make_folds`), speaker normalisation
    (:func:`train_groups`) and tuning's inner folds all use them:

    - ``given``: unchanged (refused without the group column).
    - ``none``: the group column dropped from the training table: ungrouped folds.
    - ``inferred``: the group column (``[competition].group_col``, or :data:`INFERRED_COLUMN`
      when that is ``""``) filled with the inferred speakers ``speaker0``, ``speaker1``, ...
      They are inferred once (:func:`infer_train_speakers`) and written next to the competition
      (``train_speakers.csv``, ``train_speakers.json``); later calls read that file, as
      ``folds.csv`` is read, so every run and blend uses one assignment.

    Returns:
        the competition (a copy where changed) and the inferred speakers, or None when not inferred.

    Raises:
        SpeakerGroupError: ``given`` without the group column; too few clips to infer.
        CompetitionError: a bad ``train_speakers.csv`` (:func:`_read_train_speakers`).
        AudioError, SpeakerError: see :func:`infer_train_speakers`.
    """
    c = competition.config
    how = train_source(competition, recipe.speakers)
    if how == "given":
        if not competition.has_groups:
            raise SpeakerGroupError(
                f"{competition.root / comp_mod.TRAIN} has no group column {c.group_col!r} for [speakers].train = 'given'; "
                "add it, or set [speakers].train = 'auto' or 'inferred' (speakers inferred from the voices) or 'none'."
            )
        return competition, None
    if how == "none":
        train = competition.train.drop(columns=[c.group_col]) if competition.has_groups else competition.train
        return dataclasses.replace(competition, train=train), None
    if (competition.root / TRAIN_CSV).exists():
        found = _read_train_speakers(competition)
    else:
        found = infer_train_speakers(competition, recipe, progress)
        write_train_speakers(competition, found)
    column = c.group_col or INFERRED_COLUMN
    train = competition.train.copy()
    train[column] = found.groups
    return dataclasses.replace(competition, train=train, config=dataclasses.replace(c, group_col=column)), found


def load_competition(recipe: Recipe, progress: bool = True) -> comp_mod.Competition:
    """:func:`ensemble.store.competition.load` of the recipe's competition, with its training speakers
    (:func:`with_train_speakers`): what every part of ens that uses folds or speakers loads."""
    return with_train_speakers(comp_mod.load(recipe.competition), recipe, progress)[0]


def check_folds(competition: comp_mod.Competition, folds: pd.DataFrame) -> None:
    """Warn (:class:`ensemble.store.competition.LeakageWarning`) when a speaker of ``competition``'s
    training clips is in more than one fold of ``folds`` (``id, fold`` in ``train.csv`` order): a
    ``folds.csv`` made before the speakers were known (e.g. by an older ens without a group column)."""
    if not competition.has_groups:
        return
    groups = competition.train[competition.config.group_col].to_numpy()
    spread = pd.Series(folds["fold"].to_numpy()).groupby(groups).nunique()
    split = spread[spread > 1]
    if len(split):
        warnings.warn(
            f"{competition.root / comp_mod.FOLDS} puts {len(split)} speaker(s) (e.g. {split.index[0]!r}) in more than one fold, so OOF "
            "scores may be inflated; delete it to re-make the folds grouped by speaker (runs trained on it must then be re-trained).",
            comp_mod.LeakageWarning,
            stacklevel=2,
        )


def test_speakers(competition: comp_mod.Competition, config: SpeakersConfig, features: FeatureConfig, progress: bool = True) -> TestSpeakers:
    """The test clips' speakers as ``config.test`` says (see the module docstring). Inferred
    speakers embed each test clip once (loaded as ``features`` loads it: sample rate and
    silence trimming) into ``<competition>/.ens_cache/`` (:class:`ensemble.speaker.speakers.EmbeddingCache`).
    It reads the test table (its group column only for ``given``, or ``auto`` when ``test.csv``
    has one) and the test audio, never ``solution.csv``.

    Raises:
        SpeakerGroupError: ``given`` without a group column in ``test.csv``, or an empty group.
        AudioError: a test clip cannot be loaded (``inferred``). SpeakerError: see :func:`ensemble.speaker.speakers.infer`.
    """
    c, test = competition.config, competition.test
    how = config.test
    if how == "auto":
        how = "given" if c.group_col in test.columns else "inferred"
    if how == "given":
        if c.group_col not in test.columns:
            raise SpeakerGroupError(
                f"{competition.root / comp_mod.TEST} has no group column {c.group_col!r} for [speakers].test = 'given'; "
                "use 'inferred' (a speaker encoder) or 'pool' (the test set as one speaker)."
            )
        groups = _column(test, c.group_col, c.id_col, competition.root / comp_mod.TEST)
        found = TestSpeakers(groups, "given", len(set(groups)))
    elif how == "pool":
        found = TestSpeakers(np.full(len(test), "pool", dtype=object), "pool", 1)
    else:
        cache = speakers.EmbeddingCache(competition.root / ".ens_cache")
        embeddings = cache.get(competition.audio_paths(test), features.sample_rate, features.trim_db, progress=progress)
        inferred = speakers.infer(embeddings, k=config.k, k_min=config.k_min, k_max=config.k_max)
        groups = np.array([f"speaker{label}" for label in inferred.labels], dtype=object)
        found = TestSpeakers(groups, "inferred", inferred.k, silhouette=float(inferred.score))
    return found


def write(competition: comp_mod.Competition, found: TestSpeakers) -> Path:
    """Write ``test_speakers.csv`` (``id, speaker``) and ``test_speakers.json`` (how, k, silhouette)
    into the competition folder, atomically; returns the CSV's path."""
    path = competition.root / CSV
    atomic.write_csv(path, pd.DataFrame({"id": competition.test[competition.config.id_col].to_numpy(), "speaker": found.groups}))
    atomic.write_json(competition.root / JSON, {k: v for k, v in asdict(found).items() if k != "groups"})
    return path


def to_unit(z: np.ndarray) -> np.ndarray:
    """Speaker-normalised values ``z`` (standard deviations from the speaker's mean) as float16
    pixels in [0, 1]: ``0.5 + z / (2 * SPREAD)``, clipped (:data:`SPREAD`)."""
    return np.clip(0.5 + z / (2 * SPREAD), 0.0, 1.0).astype(np.float16)


def normalise_images(
    x_train: np.ndarray, train: np.ndarray, x_test: np.ndarray, test: np.ndarray, x_aug: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, speakers.Statistics]:
    """Speaker-level CMVN of images ``(n, channels, height, frames)``: each channel and frequency
    row standardised by its speaker's mean and standard deviation over all frames of the
    speaker's clips (:class:`ensemble.speaker.speakers.SpeakerNorm` with the frame axis pooled), mapped to
    [0, 1] by :func:`to_unit`. Training speakers ``train`` ``(n_train,)`` are fitted on the clean
    training images; the augmented copies ``x_aug`` ``(copies, n_train, ...)`` use their clean
    clips' speaker statistics; test speakers ``test`` ``(n_test,)`` are fitted on the test images.

    Returns:
        float16 ``x_train``, ``x_test`` and ``x_aug`` (or None), and the training population's
        statistics (``(channels, height, 1)`` mean and std: what a recording of an unknown
        speaker is normalised with, :func:`normalise_with`).
    """
    norm = speakers.SpeakerNorm(pooled_axes=(-1,)).fit(x_train, train)
    out_train = to_unit(norm.transform(x_train, train))
    out_aug = None if x_aug is None else np.stack([to_unit(norm.transform(copy, train)) for copy in x_aug])
    out_test = to_unit(speakers.SpeakerNorm(pooled_axes=(-1,)).fit_transform(x_test, test))
    return out_train, out_test, out_aug, norm.population_


def normalise_with(images: np.ndarray, reference: np.ndarray | None, population: speakers.Statistics) -> tuple[np.ndarray, str]:
    """Images ``(n, channels, height, frames)`` of one speaker normalised as training normalised its
    speakers: with the statistics of ``reference`` (other images of the same speaker, e.g. every
    window of the recordings given together) when given, else with the training ``population``'s.

    Returns:
        float16 images in [0, 1] and ``speaker`` or ``population``, the statistics used.
    """
    z = speakers.standardise_one(images, reference, population, pooled_axes=(-1,))
    return to_unit(z), "population" if reference is None else "speaker"
