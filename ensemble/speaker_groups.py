"""Which speaker each clip of a competition belongs to, and speaker-level normalisation of images.

Training clips: the competition's group column (``[competition].group_col``). Test clips, as
``[speakers].test`` says: the test table's group column (``given``), speakers inferred by a
pretrained speaker encoder and clustering (``inferred``, :func:`ensemble.speakers.infer`), or the
whole test set as one speaker (``pool``); ``auto`` is ``given`` when the test table has the column,
else ``inferred``. The training grid writes the test speakers next to the competition
(:func:`write`): ``test_speakers.csv`` (``id, speaker``) and ``test_speakers.json`` (how they were
found, k, silhouette, and, when ``solution.csv`` has the group column, the adjusted Rand index
against it: a quality report only, never used to choose anything).

No normalisation statistic uses a label: each speaker's mean and standard deviation come from
that speaker's own clips, and a validation fold's speakers (never in a training fold: folds are
grouped by speaker) are normalised with their own statistics, exactly as unseen test speakers are.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import atomic, speakers
from . import competition as comp_mod
from .errors import EnsError
from .recipe import FeatureConfig, SpeakersConfig

CSV, JSON = "test_speakers.csv", "test_speakers.json"
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
        ari: adjusted Rand index against ``solution.csv``'s group column, when it has one.
    """

    groups: np.ndarray
    how: str
    k: int
    silhouette: float | None = None
    ari: float | None = None

    def describe(self) -> str:
        """One line for the log: how the test speakers were found and how well."""
        extra = "" if self.silhouette is None else f", silhouette {self.silhouette:.3f}"
        extra += "" if self.ari is None else f", adjusted Rand index {self.ari:.3f} against the solution's groups"
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
            "add the column and set [competition].group_col, or set [speakers].norm = 'clip'."
        )
    return _column(competition.train, c.group_col, c.id_col, path)


def test_speakers(competition: comp_mod.Competition, config: SpeakersConfig, features: FeatureConfig, progress: bool = True) -> TestSpeakers:
    """The test clips' speakers as ``config.test`` says (see the module docstring). Inferred
    speakers embed each test clip once (loaded as ``features`` loads it: sample rate and
    silence trimming) into ``<competition>/.ens_cache/`` (:class:`ensemble.speakers.EmbeddingCache`).

    Raises:
        SpeakerGroupError: ``given`` without a group column in ``test.csv``, or an empty group.
        AudioError: a test clip cannot be loaded (``inferred``). SpeakerError: see :func:`ensemble.speakers.infer`.
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
    found.ari = _ari(competition, found.groups)
    return found


def _ari(competition: comp_mod.Competition, groups: np.ndarray) -> float | None:
    """Adjusted Rand index of ``groups`` against ``solution.csv``'s group column, or None without one."""
    path = competition.root / comp_mod.SOLUTION
    c = competition.config
    if not path.is_file():
        return None
    solution = pd.read_csv(path, dtype=str, keep_default_na=False)
    if c.group_col not in solution.columns or c.id_col not in solution.columns:
        return None
    truth = solution.set_index(c.id_col)[c.group_col].reindex(competition.test[c.id_col])
    if truth.isna().any():
        return None
    return float(speakers.adjusted_rand(truth.to_numpy(), groups))


def write(competition: comp_mod.Competition, found: TestSpeakers) -> Path:
    """Write ``test_speakers.csv`` (``id, speaker``) and ``test_speakers.json`` (how, k, silhouette,
    ARI) into the competition folder, atomically; returns the CSV's path."""
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
    speaker's clips (:class:`ensemble.speakers.SpeakerNorm` with the frame axis pooled), mapped to
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
