"""What an image member trains and validates on: a :class:`ensemble.store.split.Split` with the cached
feature images of every clip (:class:`Data`, :func:`load_data`). Reading writes nothing: the
clips that cannot be loaded are returned (:attr:`ensemble.store.split.Split.skipped`) and the training
grid writes their list to the run store.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np

from ..core.recipe import Recipe
from ..inputs import features
from ..speaker import speaker_groups, speakers
from ..store import competition as comp_mod
from ..store.split import Split, check_on_error
from . import runtime


@dataclass
class Data(Split):
    """A :class:`Split` with its feature images, loaded once for all folds and backbones of a recipe.

    Attributes:
        x_train: float16 ``(n_train, channels, height, frames)`` images in [0, 1].
        x_test: float16 ``(n_test, channels, height, frames)``.
        x_aug: float16 ``(copies, n_train, channels, height, frames)`` augmented renderings of the
            training clips (``[augment].copies``), or None.
        test_speakers: with ``[speakers].norm = "speaker"``, the test clips' speakers the test
            images were normalised with (:func:`ensemble.speaker.speaker_groups.test_speakers`), else None.
        speaker_population: with ``[speakers].norm = "speaker"``, the training population's
            statistics (saved with each run for recordings of unknown speakers), else None.
    """

    x_train: np.ndarray = None
    x_test: np.ndarray = None
    x_aug: np.ndarray | None = None
    test_speakers: speaker_groups.TestSpeakers | None = None
    speaker_population: speakers.Statistics | None = None

    def gather(self, idx: np.ndarray, variant: np.ndarray | None, test_rows: np.ndarray | None = None) -> np.ndarray:
        """Training images ``(len(idx), channels, height, frames)`` float32: for each row the clean
        rendering (variant 0, or ``variant`` None) or augmented copy ``variant`` (1..copies), each row
        read once from the (memory-mapped) cache. With ``test_rows`` (pseudo-labelled test clips), a
        row ``n_train + j`` is the clean test image ``test_rows[j]`` whatever its variant."""
        n_train = len(self.x_train)
        if test_rows is not None and (extra := idx >= n_train).any():
            out = np.empty((len(idx), *self.x_train.shape[1:]), dtype=np.float32)
            out[extra] = self.x_test[test_rows[idx[extra] - n_train]]
            own = ~extra
            if own.any():
                out[own] = self.gather(idx[own], None if variant is None else variant[own])
            return out
        if variant is None:
            return np.asarray(self.x_train[idx], dtype=np.float32)
        out = np.empty((len(idx), *self.x_train.shape[1:]), dtype=np.float32)
        for k in range(len(self.x_aug) + 1):
            chosen = variant == k
            if chosen.any():
                out[chosen] = (self.x_train if k == 0 else self.x_aug[k - 1])[idx[chosen]]
        return out


def data_key(recipe: Recipe) -> str:
    """What decides the images an entry trains on (:func:`load_data`): its feature setting and its
    cached waveform-augmented copies (``[augment]`` copies and waveform list, which a
    ``[by_backbone.*.augment]`` table may change); entries with one key share one loaded :class:`Data`."""
    a = recipe.augment
    return json.dumps([recipe.features.key(), a.copies, a.waveform], sort_keys=True)


def cache_rows(train_paths: list, test_paths: list, copies: int) -> tuple[list, list[int]]:
    """The rows :func:`load_data` asks the feature cache for, in order: every training clip, every
    test clip, then each augmented copy ``1..copies`` of the training clips; and each row's copy
    number (0: the clean rendering)."""
    paths = train_paths + test_paths + train_paths * copies
    variant = [0] * (len(train_paths) + len(test_paths)) + [k for k in range(1, copies + 1) for _ in train_paths]
    return paths, variant


def load_data(recipe: Recipe, progress: bool = True, on_error: str = "fail") -> Data:
    """Load the competition, its folds and the cached feature images.

    Every image comes from one :meth:`ensemble.inputs.features.FeatureCache.get` call (training clips,
    test clips, then each augmented copy of the training clips), so a fresh cache is built in one
    pass and the arrays are views of its memory map, not copies in RAM. Rendering runs on
    ``[runtime].device``, with ``[runtime].workers`` decoding audio.

    Args:
        progress: report a render of missing images: a bar on a terminal, else one line when it
            is done (see :meth:`ensemble.inputs.features.FeatureCache.get`); False reports nothing.
        on_error: ``fail`` (default) refuses clips that do not exist or cannot be loaded, listing
            each file and its problem; ``skip`` leaves them out (see :attr:`Split.skipped`) and
            warns (:class:`SkippedClipsWarning`); the training grid writes their list.

    Raises:
        CompetitionError: a bad table (see :func:`ensemble.store.competition.load`), or under ``skip`` a
            fold or the training set left empty. AudioError: under ``fail``, clips that cannot be loaded.
        OptionError: ``on_error`` is not ``fail`` or ``skip``.
    """
    check_on_error(on_error)
    competition = speaker_groups.load_competition(recipe, progress)
    folds = comp_mod.folds(competition, recipe.folds)
    cache = features.FeatureCache(competition.root / ".ens_cache", recipe.features)
    train_paths = competition.audio_paths(competition.train)
    test_paths = competition.audio_paths(competition.test)
    n_train, n_test, copies = len(train_paths), len(test_paths), recipe.augment.copies
    paths, variant = cache_rows(train_paths, test_paths, copies)
    device, workers = runtime.resolve_device(recipe.runtime.device), recipe.runtime.workers or None
    options = {"copies": variant, "augment": recipe.augment, "progress": progress, "device": device, "workers": workers}
    images, failed = cache.get_skipping(paths, **options) if on_error == "skip" else (cache.get(paths, **options), {})
    x_aug = images[n_train + n_test :].reshape(copies, n_train, *images.shape[1:]) if copies else None
    data = Data(competition, folds, x_train=images[:n_train], x_test=images[n_train : n_train + n_test], x_aug=x_aug)
    data = _skip(data, failed, paths) if failed else data
    return _speaker_normalised(recipe, data, progress) if recipe.speakers.norm == "speaker" else data


def _speaker_normalised(recipe: Recipe, data: Data, progress: bool) -> Data:
    """``data`` with every image normalised per speaker (:func:`ensemble.speaker.speaker_groups.normalise_images`):
    training speakers as ``[speakers].train`` says (:func:`ensemble.speaker.speaker_groups.with_train_speakers`),
    test speakers as ``[speakers].test`` says."""
    found = speaker_groups.test_speakers(data.competition, recipe.speakers, recipe.features, progress=progress)
    train = speaker_groups.train_groups(data.competition)
    x_train, x_test, x_aug, population = speaker_groups.normalise_images(data.x_train, train, data.x_test, found.groups, data.x_aug)
    return dataclasses.replace(data, x_train=x_train, x_test=x_test, x_aug=x_aug, test_speakers=found, speaker_population=population)


def _skip(data: Data, failed: dict[int, str], paths: list) -> Data:
    """``data`` without the training rows whose clean or augmented clip failed (``failed``: position
    in ``paths`` -> problem; ``paths`` as :func:`load_data` lays them out: train, test, then each
    augmented copy of train), the failures listed in :attr:`Split.skipped`."""
    comp = data.competition
    n_train, n_test = len(comp.train), len(comp.test)
    problems: dict[tuple[str, int], str] = {}
    for i, message in sorted(failed.items()):  # one entry per clip, its first problem: clean renderings come first
        clip = ("train", i) if i < n_train else ("test", i - n_train) if i < n_train + n_test else ("train", (i - n_train - n_test) % n_train)
        problems.setdefault(clip, message)
    located = {(table, row): (paths[row if table == "train" else n_train + row], message) for (table, row), message in problems.items()}
    split = Split(comp, data.folds).skipping(located)
    train_bad = sorted(row for table, row in problems if table == "train")
    keep = np.setdiff1d(np.arange(n_train), train_bad)
    x_aug = None if data.x_aug is None else data.x_aug[:, keep]
    return Data(split.competition, split.folds, split.skipped, x_train=data.x_train[keep], x_test=data.x_test, x_aug=x_aug)
