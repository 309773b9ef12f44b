"""Blend methods over members' probabilities, and their honest (cross-validated) OOF score.

Every method is fitted on OOF probabilities ``oof`` ``(members, n, classes)`` with the task's
encoded targets ``y`` (a :class:`ensemble.core.tasks.Task`: integer labels ``(n,)``, or multi-hot
``(n, classes)``) and returns a :class:`Blender` whose ``combine(probs)`` maps ``(members, m,
classes)`` to ``(m, classes)`` rows (summing to 1 when the task's rows do).

Methods (:data:`METHODS`):
    ``mean``: arithmetic mean of the probabilities.
    ``rank``: mean of each class column's normalised ranks (rank / rows), rows rescaled to sum 1
    (rank averaging, a Kaggle staple for metrics that only need an ordering).
    ``geometric``: normalised geometric mean, i.e. the mean of log-probabilities, soft-maxed.
    ``caruana``: ensemble selection with replacement (Caruana, Niculescu-Mizil, Crew & Ksikes
    2004, ICML), bagged as in Caruana, Munson & Niculescu-Mizil 2006 ("Getting the most out of
    ensemble selection", ICDM): each of ``bags`` runs selects from a random ``bag_fraction`` of
    the members; the weights are averaged over bags.
    ``optimize``: non-negative weights summing to 1 that minimise the OOF log-loss of the
    weighted mean (scipy ``minimize``, SLSQP).
    ``stacking``: multinomial logistic regression (scikit-learn) on the members' log-probabilities
    concatenated, ``(n, members * classes)``.

A task blends with its :attr:`~ensemble.core.tasks.Task.blend_methods` (multiclass: all of them;
multilabel: ``mean`` and ``caruana``, in probability space, rows not normalised); Caruana
selection minimises the task's :meth:`~ensemble.core.tasks.Task.blend_loss` (multilabel: mean BCE).

A method fitted on all OOF rows and scored on them is optimistic: :func:`cross_validate` fits it
on the other folds and predicts each held-out fold, the figure to trust.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..core import tasks
from ..core.errors import EnsWarning, OptionError
from ..core.tasks import Task

METHODS = tasks.MULTICLASS.blend_methods  # every method; a multiclass task takes them all
EPS = 1e-7


class BlendWarning(EnsWarning):
    """A blend was fitted, but not as asked (e.g. the weight optimiser stopped early)."""


def _normalise(scores: np.ndarray) -> np.ndarray:
    return scores / scores.sum(axis=1, keepdims=True)


def _weighted_mean(weights: np.ndarray, probs: np.ndarray) -> np.ndarray:
    return _normalise(np.tensordot(weights, probs, axes=1))


def _ranks(probs: np.ndarray) -> np.ndarray:
    """Per member and class column, each row's rank among the rows, scaled to (0, 1]."""
    from scipy.stats import rankdata

    return rankdata(probs, axis=1) / probs.shape[1]


def _geometric(probs: np.ndarray) -> np.ndarray:
    logs = np.log(np.clip(probs, EPS, None)).mean(axis=0)
    logs -= logs.max(axis=1, keepdims=True)
    return _normalise(np.exp(logs))


@dataclass
class Blender:
    """A fitted blend. ``weights``: ``(members,)`` for the weighted-mean methods, else None;
    ``combine``: ``(members, m, classes)`` -> ``(m, classes)`` probabilities."""

    method: str
    combine: Callable[[np.ndarray], np.ndarray]
    weights: np.ndarray | None = None


def caruana_weights(oof: np.ndarray, y: np.ndarray, iterations: int = 50, task: Task = tasks.MULTICLASS) -> np.ndarray:
    """Greedy ensemble selection with replacement (Caruana et al. 2004) on OOF log-loss.

    Starts from the single best member, then ``iterations`` times adds (again, if best) the member
    whose inclusion gives the lowest loss of the running average. Ties go to the lower index.

    Args:
        oof: ``(members, n, classes)`` OOF probabilities.
        y: the task's targets: ``(n,)`` integer labels, or multi-hot ``(n, classes)``.
        task: whose :meth:`~ensemble.core.tasks.Task.blend_loss` is minimised (multiclass: the mean
            negative log-probability of the truth; multilabel: mean BCE); multiclass by default.

    Returns:
        ``(members,)`` non-negative weights summing to 1 (pick counts / total picks).
    """
    loss = task.blend_loss
    counts = np.zeros(oof.shape[0])
    total = np.zeros_like(oof[0])
    for step in range(iterations + 1):
        best = int(np.argmin([loss(y, (total + member) / (step + 1)) for member in oof]))
        counts[best] += 1
        total += oof[best]
    return counts / counts.sum()


def bagged_caruana_weights(
    oof: np.ndarray, y: np.ndarray, iterations: int = 50, bags: int = 20, bag_fraction: float = 0.5, seed: int = 0, task: Task = tasks.MULTICLASS
) -> np.ndarray:
    """:func:`caruana_weights` (of ``task``) averaged over ``bags`` random subsets of ``ceil(bag_fraction *
    members)`` members, but at least two (Caruana et al. 2006, section 2.3); ``bags = 0`` selects
    from all members once. A bag of one member would select it whatever the data say: with two
    members and ``bag_fraction = 0.5`` every bag would, and the weights would only count the draws.

    Returns:
        ``(members,)`` non-negative weights summing to 1.
    """
    m = oof.shape[0]
    if bags == 0 or m == 1:
        return caruana_weights(oof, y, iterations, task)
    rng = np.random.default_rng(seed)
    size = max(2, int(np.ceil(bag_fraction * m)))  # m >= 2 here
    weights = np.zeros(m)
    for _ in range(bags):
        subset = np.sort(rng.choice(m, size=size, replace=False))
        weights[subset] += caruana_weights(oof[subset], y, iterations, task)
    return weights / weights.sum()


def optimized_weights(oof: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative weights summing to 1 minimising the log-loss of the weighted mean of ``oof``
    ``(members, n, classes)``; scipy's SLSQP from equal weights.

    If SLSQP stops without reporting convergence, its last feasible point is used and a
    :class:`BlendWarning` says so.
    """
    from scipy.optimize import minimize

    m = oof.shape[0]
    picked = oof[:, np.arange(len(y)), y]  # (members, n): each member's probability of the truth

    def loss(w: np.ndarray) -> float:
        return float(-np.log(np.clip(w @ picked, 1e-15, None)).mean())

    def grad(w: np.ndarray) -> np.ndarray:
        return -(picked / np.clip(w @ picked, 1e-15, None)).mean(axis=1)

    result = minimize(
        loss,
        np.full(m, 1.0 / m),
        jac=grad,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * m,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}],
        options={"maxiter": 500, "ftol": 1e-10},
    )
    if not result.success:
        warnings.warn(f"blend weight optimisation stopped early ({result.message}); using its last weights.", BlendWarning, stacklevel=2)
    w = np.clip(result.x, 0.0, None)
    return w / w.sum()


def _stacking(oof: np.ndarray, y: np.ndarray, c: float, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    from sklearn.linear_model import LogisticRegression

    def features(probs: np.ndarray) -> np.ndarray:
        return np.log(np.clip(probs, EPS, None)).transpose(1, 0, 2).reshape(probs.shape[1], -1)

    n_classes = oof.shape[2]
    model = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(features(oof), y)

    def combine(probs: np.ndarray) -> np.ndarray:
        out = np.zeros((probs.shape[1], n_classes))
        out[:, model.classes_] = model.predict_proba(features(probs))  # a class absent from y keeps 0
        return out

    return combine


def fit(
    method: str,
    oof: np.ndarray,
    y: np.ndarray,
    iterations: int = 50,
    bags: int = 20,
    bag_fraction: float = 0.5,
    stacking_c: float = 1.0,
    seed: int = 0,
    task: Task = tasks.MULTICLASS,
) -> Blender:
    """Fit blend ``method`` (one of ``task.blend_methods``) on ``oof`` ``(members, n, classes)`` and
    the task's targets ``y`` (``(n,)`` integer labels, or multi-hot ``(n, classes)``).

    Args:
        task: the competition's task (multiclass by default); its weighted means are
            renormalised when its rows sum to 1.

    Raises:
        OptionError: unknown method, or one that does not fit the task.
    """
    if method not in task.blend_methods:
        problem = f"blend method {method!r} does not fit a {task.name} task" if method in METHODS else f"unknown blend method {method!r}"
        raise OptionError(f"{problem}; choose one of {task.blend_methods}.")
    m = oof.shape[0]
    if method in ("mean", "caruana", "optimize"):
        if method == "mean":
            w = np.full(m, 1.0 / m)
        elif method == "caruana":
            w = bagged_caruana_weights(oof, y, iterations, bags, bag_fraction, seed, task)
        else:
            w = optimized_weights(oof, y)
        combine = (lambda probs: _weighted_mean(w, probs)) if task.rows_sum_to_one else (lambda probs: np.tensordot(w, probs, axes=1))
        return Blender(method, combine, w)
    if method == "rank":
        return Blender(method, lambda probs: _normalise(_ranks(probs).mean(axis=0)))
    if method == "geometric":
        return Blender(method, _geometric)
    return Blender(method, _stacking(oof, y, stacking_c, seed))


def cross_validate(method: str, oof: np.ndarray, y: np.ndarray, fold_of: np.ndarray, **options) -> np.ndarray:
    """Cross-validated blend predictions ``(n, classes)``: the rows of each fold are combined by
    ``method`` fitted on the other folds only (no label of a fold is seen when it is predicted).

    Args:
        oof: ``(members, n, classes)``; y: ``(n,)`` or multi-hot ``(n, classes)``; fold_of: ``(n,)`` fold index of each row;
        options: passed to :func:`fit` (``task`` among them).
    """
    out = np.zeros(oof.shape[1:])
    for fold in np.unique(fold_of):
        held = fold_of == fold
        out[held] = fit(method, oof[:, ~held], y[~held], **options).combine(oof[:, held])
    return out
