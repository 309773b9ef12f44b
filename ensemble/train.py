"""Training: the grid of a recipe's members x folds with skip / resume (:func:`train`), the
function ``ens train`` and a notebook both call. Each member kind (:mod:`ensemble.members.kinds`) trains
its own entries: an image member's run is :func:`ensemble.members.image_fit.train_fold`, a functionals
member's :func:`ensemble.members.tabular.train_fold`; every run writes its folder in the run store
(:mod:`ensemble.store.runs`), and a folder with ``metrics.json`` is finished.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .core.entry import Entry
from .core.recipe import Recipe
from .deploy.executors import Local, Ray
from .members import guards, kinds
from .members.kind import Session
from .speaker import speaker_groups
from .store import competition as comp_mod
from .store import runs
from .store.split import check_fold


@dataclass
class RunResult:
    """One run of the grid: its entry, fold, folder, ``metrics.json`` dict, whether it was already
    finished (skipped) rather than trained now, and what its kind says of it (:meth:`ensemble.members.kind.Kind.detail`:
    a backbone's kept epoch, a functionals member's set and model)."""

    entry: str
    fold: int
    run: Path
    metrics: dict
    skipped: bool
    detail: str = ""


def train(
    recipe: Recipe,
    backbones: Sequence[str] | None = None,
    folds: Sequence[int] | None = None,
    force: bool = False,
    resume: bool = False,
    progress: bool = True,
    on_error: str = "fail",
    on_event: Callable[[str, RunResult | str], None] | None = None,
    executor: Local | Ray | None = None,
) -> list[RunResult]:
    """Train the grid: every entry of ``backbones`` (default the recipe's backbones, then its
    ``[[functionals]]`` members) x every fold of ``folds`` (default all), each round's entries by
    their kind (:func:`ensemble.members.kinds.of`), the kinds in :data:`ensemble.members.kinds.KINDS` order. Backbones train on the
    images of their feature setting (``recipe.for_backbone(entry).features``: the recipe's
    ``[features]``, or an AudioSet backbone's own frontend), each setting loaded once
    (:func:`ensemble.members.data.load_data`) when its first entry trains, so one recipe can mix ImageNet
    and AudioSet backbones; functionals members train on their cached functionals
    (:mod:`ensemble.members.tabular`). A run already finished
    with the same configuration is skipped unless ``force``; an interrupted run starts afresh
    unless ``resume``. The folds are written to the competition folder (``folds.csv``) and the
    clips left out under ``on_error="skip"`` to the run store (``skipped.csv``) before training.

    ``on_event(kind, value)``, if given, hears ``("skipped", path of skipped.csv)`` when clips were
    left out, ``("speakers", description)`` when test speakers were found for speaker normalisation
    (also written next to the competition, :func:`ensemble.speaker.speaker_groups.write`),
    ``("afresh", "<entry> fold <K>")`` before an interrupted run is started afresh,
    ``("pseudo", description)`` when a pseudo-labelling round's labels of a fold are made and
    ``("run", RunResult)`` after each run.

    ``[pseudo]`` rounds (entries ``"<entry>+pl<r>"``) train after the entries they learn from: round
    ``r``'s labels of fold ``k`` are made from round ``r - 1``'s finished fold-``k`` runs
    (:func:`ensemble.members.pseudo.fold_labels`) and written to the run store.

    ``executor`` trains the image runs of each round that are not finished
    (:mod:`ensemble.deploy.executors`): :class:`ensemble.deploy.executors.Local` (the default) one after another
    here, :class:`ensemble.deploy.executors.Ray` each as a Ray task; functionals members train here.

    Returns:
        one :class:`RunResult` per (entry, fold), in grid order.

    Raises:
        RecipeError: a malformed entry. OptionError: a fold outside ``0..n_splits-1``, or a bad
        ``on_error``. And everything :func:`ensemble.members.data.load_data`, :func:`ensemble.members.image_fit.train_fold` and
        :func:`ensemble.members.tabular.train_fold` raise.
    """
    entries = list(backbones) if backbones is not None else recipe.entries()
    by_kind = kinds.split(recipe, entries)  # a malformed name@seed fails before any data loads
    folds = list(range(recipe.folds.n_splits)) if folds is None else list(folds)
    for k in folds:
        check_fold(recipe, k)
    competition, inferred = speaker_groups.with_train_speakers(comp_mod.load(recipe.competition), recipe, progress)
    if inferred is not None and on_event is not None:
        on_event("speakers", inferred.describe())
    decision = guards.speaker_norm(recipe, competition)  # groups too small, or clips not speech: norm = "clip", said
    recipe = decision.recipe
    for message in filter(None, (decision.reason, decision.note)):
        warnings.warn(message, guards.SpeakerNormWarning, stacklevel=2)
    speaker_groups.check_folds(competition, comp_mod.write_folds(competition, recipe.folds))
    session = Session(recipe, folds, force, resume, progress, on_error, on_event, executor or Local())
    results = []
    for round_ in sorted({Entry.parse(e).round for e in entries}):  # each round after its teachers
        for kind, listed in by_kind.items():
            for outcome in kind.train(session, [e for e in listed if Entry.parse(e).round == round_]):
                run = runs.run_dir(recipe, outcome.entry, outcome.fold)
                results.append(RunResult(outcome.entry, outcome.fold, run, outcome.metrics, outcome.skipped, kind.detail(outcome.metrics)))
                session.event("run", results[-1])
    for message in guards.constant_members(results):
        warnings.warn(message, guards.ConstantMemberWarning, stacklevel=2)
    return results
