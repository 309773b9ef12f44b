"""Blend the out-of-fold (OOF) predictions of finished members and make the submission.

Every member (:func:`ensemble.store.runs.members`: a backbone of the recipe with all its seeds, or a
member of another recipe named in ``[blend].members``) whose folds are all finished contributes
its OOF probabilities (each training clip predicted by the fold model that did not train on it)
and its test probabilities averaged over folds. The methods (mean, rank, geometric, Caruana
selection, optimised weights, stacking) live in :mod:`ensemble.blending.blenders`; a blend fitted on OOF
rows and scored on them is optimistic, so the leaderboard also gives each method's
cross-validated score.

Blending reads tables only (:func:`ensemble.store.split.load_split` and the members' CSV files): no
audio, no feature cache, no torch. :func:`blend` returns a :class:`BlendResult` and writes
nothing; :func:`write` writes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import atomic
from ..core.errors import EnsError, OptionError
from ..core.recipe import Recipe
from ..store import runs, submission
from ..store.split import Split, load_split
from . import blenders


class BlendError(EnsError, ValueError):
    """Runs cannot be blended: they disagree on folds, ids or classes, or hold invalid probabilities."""


@dataclass
class BlendResult:
    """A blend, not yet written (:func:`write`).

    Attributes:
        split: the competition and folds it was made on.
        method: the chosen method (fitted on all OOF rows for the submission): the one asked for, or
            with ``auto`` the one with the best cross-validated score.
        requested: the method asked for (``auto`` or a method's name); the submission is named after it.
        members: the blended members, in leaderboard order.
        leaderboard: one row per member and per method (in-sample and ``cv_`` columns).
        weights: the chosen method's weight per member name, or None for rank, geometric and
            stacking, which are not weighted means.
        oof: the chosen method's cross-validated OOF probabilities ``(n_train, classes)``.
        test: its test probabilities ``(n_test, classes)``, skipped test clips set to the prior.
        thresholds: a multilabel task's per-class thresholds ``(classes,)`` tuned on ``oof``, else None.
        skipped: members left out because a fold is unfinished, with the reason.
    """

    split: Split
    method: str
    requested: str
    members: list[runs.Member]
    leaderboard: pd.DataFrame
    weights: dict[str, float] | None
    oof: np.ndarray
    test: np.ndarray
    thresholds: np.ndarray | None = None
    skipped: dict[str, str] = field(default_factory=dict)


def collect(recipe: Recipe, split: Split) -> tuple[list[runs.Member], list[np.ndarray], list[np.ndarray], dict[str, str]]:
    """The finished members of ``recipe`` (:func:`ensemble.store.runs.members`) with their OOF and test
    probabilities (:func:`ensemble.store.runs.read_member`), and the unfinished ones with the reason.

    Raises:
        BlendError: no member is finished. RunError: a finished member's runs disagree with the
            competition, or a ``[blend].members`` item names nothing. RecipeError: a malformed ``backbones`` entry.
    """
    members, oofs, tests, skipped = [], [], [], {}
    for member in runs.members(recipe):
        if (reason := member.unfinished()) is not None:
            skipped[member.name] = reason
            continue
        oof, test = runs.read_member(member, split)
        members.append(member)
        oofs.append(oof)
        tests.append(test)
    if not members:
        raise BlendError(
            f"no member of recipe {recipe.name!r} has all {recipe.folds.n_splits} folds finished under {runs.root(recipe)}; run `ens train` first."
        )
    return members, oofs, tests, skipped


def method_options(recipe: Recipe, task) -> dict:
    """The keyword options of :func:`ensemble.blending.blenders.fit` and :func:`ensemble.blending.blenders.cross_validate`
    for ``recipe``'s ``[blend]`` settings and ``task`` (a :class:`ensemble.core.tasks.Task`)."""
    b = recipe.blend
    return {"iterations": b.iterations, "bags": b.bags, "bag_fraction": b.bag_fraction, "stacking_c": b.stacking_c, "seed": b.seed, "task": task}


def blend(recipe: Recipe, method: str | None = None, split: Split | None = None) -> BlendResult:
    """Blend the finished members of ``recipe`` (see the module docstring); writes nothing.

    The leaderboard has a row per member (and, when a member averages several seeds, a ``seeds``
    column listing each member's seeds, e.g. ``42, 43``) and a row per method. Every method of
    the task's :attr:`~ensemble.core.tasks.Task.blend_methods` is fitted and scored twice: in-sample (fitted and scored on all OOF
    rows) and cross-validated (``cv_`` columns: fitted on the other folds, scored on each
    held-out fold; see :func:`blenders.cross_validate`). Only ``method`` (default the recipe's) is
    fitted on all rows for the submission. For a multilabel task the per-class thresholds are
    tuned on the chosen method's cross-validated OOF (:meth:`ensemble.core.tasks.Task.tune_thresholds`).

    Args:
        split: the competition and folds (default :func:`ensemble.store.split.load_split` of the recipe).

    Raises:
        BlendError: see :func:`collect`. RunError: see :func:`ensemble.store.runs.read_member`.
        OptionError: an unknown method. CompetitionError: see :func:`ensemble.store.split.load_split`.
    """
    split = load_split(recipe) if split is None else split
    requested = method or recipe.blend.method
    task = split.competition.task
    methods, score = task.blend_methods, task.scores
    if requested not in (*methods, AUTO):
        raise OptionError(f"blend method {requested!r} is not one of {methods}, the methods for a {task.name} task, or {AUTO!r} (the best cross-validated).")
    options = method_options(recipe, task)
    members, oofs, tests, skipped = collect(recipe, split)
    oof, test = np.stack(oofs), np.stack(tests)
    fold_of = split.folds["fold"].to_numpy()
    seeds = [m.seeds() for m in members]
    seeded = any(len(s) > 1 for s in seeds)
    rows = []
    for m, m_oof, m_seeds in zip(members, oofs, seeds):  # nothing is fitted for one member: its cross-validated score is its score
        scores = score(split.y, m_oof)
        rows.append({"model": m.name, **({"seeds": ", ".join(map(str, m_seeds))} if seeded else {}), **scores, **_prefixed(scores)})
    cv_oof, fits, cv_scores = {}, {}, {}
    for candidate in methods:
        fits[candidate] = fitted = blenders.fit(candidate, oof, split.y, **options)
        cv_oof[candidate] = blenders.cross_validate(candidate, oof, split.y, fold_of, **options)
        cv_scores[candidate] = score(split.y, cv_oof[candidate])
        weights_text = "" if fitted.weights is None else " ".join(f"{m.name}={x:.2f}" for m, x in zip(members, fitted.weights))
        rows.append({"model": f"blend: {candidate}", **score(split.y, fitted.combine(oof)), **_prefixed(cv_scores[candidate]), "weights": weights_text})
    method = best_method(cv_scores, recipe.train.metric) if requested == AUTO else requested
    chosen = fits[method]
    weights = None if chosen.weights is None else {m.name: float(x) for m, x in zip(members, chosen.weights)}
    return BlendResult(
        split=split,
        method=method,
        requested=requested,
        members=members,
        leaderboard=pd.DataFrame(rows),
        weights=weights,
        oof=cv_oof[method],
        test=split.fill_skipped(chosen.combine(test)),  # skipped test clips: the prior, whatever the method made of it
        thresholds=task.tune_thresholds(split.y, cv_oof[method]),  # multilabel: F1-optimal on the honest OOF; multiclass: None
        skipped=skipped,
    )


AUTO = "auto"
"""``[blend].method`` / ``ens blend --method`` that takes the method with the best cross-validated score (:func:`best_method`)."""


def best_method(cv_scores: dict[str, dict[str, float]], metric: str) -> str:
    """The method whose cross-validated ``metric`` (``[train].metric``: the competition's metric, higher is
    better) is highest; on a tie the first in the task's order (the simpler method: mean before Caruana).

    Args:
        cv_scores: per method (in the task's order), its cross-validated scores (:meth:`ensemble.core.tasks.Task.scores`).
    """
    return max(cv_scores, key=lambda m: (cv_scores[m][metric], -list(cv_scores).index(m)))


def write(recipe: Recipe, result: BlendResult, name: str | None = None) -> Path:
    """Write a blend: ``<runs_dir>/<recipe>/blend/`` gets ``leaderboard.csv``, ``weights.json``
    (method, member names, weights), ``oof.csv`` (the cross-validated OOF, the honest one) and for
    a multilabel task ``thresholds.json``; the submission goes to ``<submissions_dir>/<name>.csv``
    (default ``<recipe>-<method>``) in the sample submission's layout. Each file atomically.

    Returns:
        the submission's path.
    """
    comp, out_dir = result.split.competition, runs.blend_dir(recipe)
    atomic.write_csv(out_dir / runs.LEADERBOARD, result.leaderboard)
    train_ids = comp.train[comp.config.id_col].to_numpy()
    atomic.write_csv(out_dir / runs.OOF, runs.proba_frame(train_ids, result.oof, comp.classes))
    atomic.write_json(
        out_dir / runs.WEIGHTS,
        {"method": result.method, "requested": result.requested, "members": [m.name for m in result.members], "weights": result.weights},
    )
    if result.thresholds is not None:
        atomic.write_json(out_dir / runs.THRESHOLDS, dict(zip(comp.classes, map(float, result.thresholds))))
    test_ids = comp.test[comp.config.id_col].to_numpy()
    stem = name or f"{recipe.name}-{result.requested}"
    return submission.write(
        comp,
        test_ids,
        result.test,
        Path(recipe.paths.submissions_dir) / f"{stem}.csv",
        result.thresholds,
    )


def _prefixed(scores: dict[str, float]) -> dict[str, float]:
    return {f"cv_{k}": v for k, v in scores.items()}
