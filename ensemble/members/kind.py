"""The member-kind protocol: what a kind of member does for its entries, so the grid, the plan,
``ens predict``, ``ens report`` and ``ens export`` loop over kinds and never ask which kind an entry is.

A kind (:class:`Kind`) owns the entries it recognises in a recipe (:meth:`Kind.owns`): their
input (images of a feature setting, a frontend's log-mel, a functionals set), its preparation and
cache, training one round's entries over the folds (writing the run store's files through
:mod:`ensemble.store.runs`), its time-plan stages, loading a finished member for prediction
(:class:`Loaded`), its report section and its export. :mod:`ensemble.members.kinds` holds the registry;
a new kind is one module with a :class:`Kind` subclass plus one registration line there (or
:func:`ensemble.members.kinds.register` from outside).

Torch-free: the kinds import what they need.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from ..core import atomic
from ..core.entry import Entry
from ..core.recipe import Recipe
from ..store import runs
from ..store.split import Split, load_split
from .pseudo import PseudoLabels, fold_labels, write_labels


@dataclass
class Stage:
    """One stage of the time plan and its estimated wall time (:mod:`ensemble.plan`).

    Attributes:
        name: what it is, e.g. ``"train regnetx_002 (5 folds x 15 epochs)"``.
        seconds: the estimate in seconds (0 when nothing is left to do).
        basis: how the estimate was made, e.g. ``"0.21 s per step x 37 steps x 15 epochs x 5 folds"``.
    """

    name: str
    seconds: float
    basis: str


def vector_stage(name: str, cache, paths: list, sample_rate: int, trim_db: float) -> Stage:
    """A vector cache's stage (functionals or voice embeddings): missing clips x one clip's seconds
    (:meth:`ensemble.inputs.vectors.VectorCache.seconds_per_clip`, timed on the first missing clip)."""
    missing = cache.missing(paths, sample_rate, trim_db)
    if not missing:
        return Stage(name, 0.0, f"all {len(paths)} clips cached")
    per_clip = cache.seconds_per_clip(missing[0], sample_rate, trim_db)
    return Stage(name, per_clip * len(missing), f"{per_clip:.3f} s per clip x {len(missing)} clips")


def timed(fn: Callable[[], Any]) -> float:
    """Wall seconds of one call of ``fn``."""
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


@dataclass
class Section:
    """A section a kind adds to ``ens report`` (:mod:`ensemble.report` renders it).

    Attributes:
        title: the section's heading.
        notes: paragraphs of text, in order.
        tables: ``(caption, table)`` pairs shown side by side.
    """

    title: str
    notes: list[str]
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)


@dataclass
class Outcome:
    """One finished run of a kind's round: its entry, fold, ``metrics.json`` dict and whether it was
    already finished (skipped) rather than trained now."""

    entry: str
    fold: int
    metrics: dict
    skipped: bool


@dataclass
class Session:
    """What the grid (:func:`ensemble.train.train`) hands each kind: the recipe and its options, and
    the state kinds share within one grid.

    Attributes:
        recipe, folds, force, resume, progress, on_error: as :func:`ensemble.train.train` takes them.
        on_event: the grid's listener (``(kind, value)``), or None.
        executor: where image runs train (:mod:`ensemble.deploy.executors`).
        loaded: data loaded by a kind this grid (a key of its choosing -> a :class:`ensemble.store.split.Split`
            or subclass); :meth:`split` prefers it (clips skipped under ``on_error="skip"`` left out).
    """

    recipe: Recipe
    folds: list[int]
    force: bool = False
    resume: bool = False
    progress: bool = True
    on_error: str = "fail"
    on_event: Callable[[str, Any], None] | None = None
    executor: Any = None
    loaded: dict[Any, Split] = field(default_factory=dict)
    _plain: list[Split] = field(default_factory=list)
    _labels: dict[tuple[int, int], PseudoLabels] = field(default_factory=dict)

    def event(self, kind: str, value: Any) -> None:
        """Tell the grid's listener, if there is one."""
        if self.on_event is not None:
            self.on_event(kind, value)

    def record_skipped(self, split: Split) -> None:
        """Write the clips ``split`` (a kind's freshly loaded data) skipped to the run store's ``skipped.csv``
        and tell the listener; with none, remove a stale list (one from an earlier run, with clips that load
        now, would drop them from the blend)."""
        path = runs.root(self.recipe) / runs.SKIPPED
        if len(split.skipped):
            atomic.write_csv(path, split.skipped)
            self.event("skipped", path)
        else:
            path.unlink(missing_ok=True)

    def split(self) -> Split:
        """The split labels and tables use: a kind's loaded data when there is some, else the competition's tables."""
        if self.loaded:
            return next(iter(self.loaded.values()))
        if not self._plain:
            self._plain.append(load_split(self.recipe))
        return self._plain[0]

    def pseudo(self, entry: str, fold: int) -> PseudoLabels | None:
        """The pseudo-labels of ``entry``'s round for ``fold`` (None in round 0), made from the
        teachers' fold runs and written once per round and fold (:func:`ensemble.members.pseudo.fold_labels`)."""
        round_ = Entry.parse(entry).round
        if round_ and (round_, fold) not in self._labels:
            self._labels[round_, fold] = made = fold_labels(self.recipe, self.split(), round_, fold)
            path = write_labels(self.recipe, self.split(), made)
            self.event("pseudo", f"round {round_} fold {fold}: {len(made.rows)} test clips pseudo-labelled at confidence >= {made.threshold:.3f} -> {path}")
        return self._labels.get((round_, fold))


class Loaded(Protocol):
    """A finished member loaded for prediction (:func:`ensemble.predict.load_ensemble`).

    Attributes:
        made_with: the recipe its runs were trained with (their ``config.json``): its ``[features]``
            sample rate and ``trim_db`` say how audio is read for it.
        models: its fold models of every seed (kind-specific objects), in entry then fold order.
        population: the training population's speaker statistics when it was speaker-normalised, else None.
        duration: the clip length in seconds it predicts on (None: a whole recording).
    """

    made_with: Recipe
    models: list
    population: Any
    duration: float | None

    def predict(self, clips: Sequence[np.ndarray], speaker_clips: Sequence[np.ndarray] | None, shared: dict, batch_size: int) -> np.ndarray:
        """Probabilities ``(len(clips), classes)`` of waveforms at ``made_with.features.sample_rate`` Hz
        (silence trimmed); ``speaker_clips``: the speaker's other recordings or None; ``shared``: a dict
        members of one call share (e.g. rendered images by feature setting)."""
        ...


class Kind:
    """A kind of member (see the module docstring). Subclasses override what they do; the
    defaults are a kind without an export and without a report section."""

    name: str = ""
    """How the kind is named in manifests and messages, e.g. ``"image"``."""

    def owns(self, recipe: Recipe, entry: Entry) -> bool:
        """Whether ``entry`` of ``recipe`` is a member of this kind."""
        raise NotImplementedError

    def reads_at(self, recipe: Recipe, entry: str) -> tuple[int, float]:
        """``(sample rate in Hz, trim_db in dB)`` the entry reads audio at (the plan's voice embeddings use it)."""
        return recipe.features.sample_rate, recipe.features.trim_db

    def train(self, session: Session, entries: list[str]) -> Iterator[Outcome]:
        """Train ``entries`` (one pseudo round's entries of this kind) on every fold of ``session.folds``,
        skipping finished runs unless ``session.force``; yields one :class:`Outcome` per (entry, fold)."""
        raise NotImplementedError

    def stages(self, recipe: Recipe, competition, todo: dict[str, list[int]]) -> list[Stage]:
        """The time plan's stages for ``todo`` (entry -> folds still to train) on ``competition``
        (:class:`ensemble.store.competition.Competition`)."""
        raise NotImplementedError

    def detail(self, metrics: dict) -> str:
        """A few words on a finished run from its ``metrics.json`` dict, for the run's line of ``ens train`` ("" by default)."""
        return ""

    def trained(self, run: Path) -> bool:
        """Whether a finished run folder holds what :meth:`load` reads."""
        raise NotImplementedError

    def load(
        self, recipe: Recipe, member: runs.Member, made_with: Recipe, trained: list[tuple[str, int, Path]], classes: list[str], device, exported
    ) -> Loaded:
        """``member`` for prediction from its runs ``trained`` (``(entry, fold, run folder)`` of every
        fold of every seed), trained with ``made_with`` for ``classes``; ``device``: a ``torch.device``;
        ``exported``: an :class:`ensemble.deploy.engines.Exported` when predicting with exported graphs, else None."""
        raise NotImplementedError

    def export(self, loaded: Loaded, member: runs.Member, out: Path, fmt: str, on_model: Callable[[Path], None] | None) -> dict:
        """The member's manifest fields for ``ens export`` to ``fmt`` (``onnx`` / ``openvino``): ``"kind"``
        and what it wrote to ``out`` (``on_model`` is called with each graph written). By default the
        member has no graph: its run folders are listed, and ``ens predict --runtime`` runs it as it is."""
        return {"kind": self.name, "runs": [str(run) for e in member.entries for run in member.runs(e)]}

    def report(self, recipe: Recipe, entries: list[str]) -> list[Section]:
        """The kind's own sections of ``ens report`` about its ``entries`` (none by default)."""
        return []
