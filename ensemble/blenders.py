"""Blend methods over members' probabilities, and their honest (cross-validated) OOF score.

Every method is fitted on OOF probabilities ``oof`` ``(members, n, classes)`` with integer labels
``y`` ``(n,)`` and returns a :class:`Blender` whose ``combine(probs)`` maps ``(members, m,
classes)`` to ``(m, classes)`` rows that sum to 1.

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

For a multilabel task (``y`` multi-hot ``(n, classes)``, rows not normalised) the methods of
:data:`MULTILABEL_METHODS` blend in probability space, Caruana selection minimising mean BCE.

A method fitted on all OOF rows and scored on them is optimistic: :func:`cross_validate` fits it
on the other folds and predicts each held-out fold, the figure to trust.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import multilabel
from .errors import OptionError

METHODS = ("mean", "rank", "geometric", "caruana", "optimize", "stacking")
MULTILABEL_METHODS = ("mean", "caruana")  # weighted means of sigmoid outputs; Caruana on mean BCE
EPS = 1e-7


class BlendWarning(UserWarning):
    """A blend was fitted, but not as asked (e.g. the weight optimiser stopped early)."""


def _log_loss(proba: np.ndarray, y: np.ndarray) -> float:
    if y.ndim == 2:  # multi-hot: mean binary cross-entropy, as the leaderboard reports it
        return multilabel.bce(y, proba)
    return float(-np.log(np.clip(proba[np.arange(len(y)), y], 1e-15, None)).mean())


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


def caruana_weights(oof: np.ndarray, y: np.ndarray, iterations: int = 50) -> np.ndarray:
    """Greedy ensemble selection with replacement (Caruana et al. 2004) on OOF log-loss.

    Starts from the single best member, then ``iterations`` times adds (again, if best) the member
    whose inclusion gives the lowest log-loss of the running average. Ties go to the lower index.

    Args:
        oof: ``(members, n, classes)`` OOF probabilities.
        y: ``(n,)`` integer labels, or multi-hot ``(n, classes)`` (then the loss is mean BCE).

    Returns:
        ``(members,)`` non-negative weights summing to 1 (pick counts / total picks).
    """
    counts = np.zeros(oof.shape[0])
    total = np.zeros_like(oof[0])
    for step in range(iterations + 1):
        best = int(np.argmin([_log_loss((total + member) / (step + 1), y) for member in oof]))
        counts[best] += 1
        total += oof[best]
    return counts / counts.sum()


def bagged_caruana_weights(oof: np.ndarray, y: np.ndarray, iterations: int = 50, bags: int = 20, bag_fraction: float = 0.5, seed: int = 0) -> np.ndarray:
    """:func:`caruana_weights` averaged over ``bags`` random subsets of ``ceil(bag_fraction *
    members)`` members, but at least two (Caruana et al. 2006, section 2.3); ``bags = 0`` selects
    from all members once. A bag of one member would select it whatever the data say: with two
    members and ``bag_fraction = 0.5`` every bag would, and the weights would only count the draws.

    Returns:
        ``(members,)`` non-negative weights summing to 1.
    """
    m = oof.shape[0]
    if bags == 0 or m == 1:
        return caruana_weights(oof, y, iterations)
    rng = np.random.default_rng(seed)
    size = max(2, int(np.ceil(bag_fraction * m)))  # m >= 2 here
    weights = np.zeros(m)
    for _ in range(bags):
        subset = np.sort(rng.choice(m, size=size, replace=False))
        weights[subset] += caruana_weights(oof[subset], y, iterations)
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
    method: str, oof: np.ndarray, y: np.ndarray, iterations: int = 50, bags: int = 20, bag_fraction: float = 0.5, stacking_c: float = 1.0, seed: int = 0
) -> Blender:
    """Fit blend ``method`` (one of :data:`METHODS`) on ``oof`` ``(members, n, classes)`` and ``y``
    ``(n,)`` (multilabel: multi-hot ``(n, classes)``, methods of :data:`MULTILABEL_METHODS`).

    Raises:
        OptionError: unknown method, or one that does not fit the task.
    """
    m = oof.shape[0]
    multilabel = y.ndim == 2
    if multilabel and method not in MULTILABEL_METHODS:
        raise OptionError(f"blend method {method!r} is for single-label tasks; a multilabel task takes one of {MULTILABEL_METHODS}.")
    if method in ("mean", "caruana", "optimize"):
        if method == "mean":
            w = np.full(m, 1.0 / m)
        elif method == "caruana":
            w = bagged_caruana_weights(oof, y, iterations, bags, bag_fraction, seed)
        else:
            w = optimized_weights(oof, y)
        combine = (lambda probs: np.tensordot(w, probs, axes=1)) if multilabel else (lambda probs: _weighted_mean(w, probs))
        return Blender(method, combine, w)
    if method == "rank":
        return Blender(method, lambda probs: _normalise(_ranks(probs).mean(axis=0)))
    if method == "geometric":
        return Blender(method, _geometric)
    if method == "stacking":
        return Blender(method, _stacking(oof, y, stacking_c, seed))
    raise OptionError(f"unknown blend method {method!r}; choose one of {METHODS}.")


def cross_validate(method: str, oof: np.ndarray, y: np.ndarray, fold_of: np.ndarray, **options) -> np.ndarray:
    """Cross-validated blend predictions ``(n, classes)``: the rows of each fold are combined by
    ``method`` fitted on the other folds only (no label of a fold is seen when it is predicted).

    Args:
        oof: ``(members, n, classes)``; y: ``(n,)`` or multi-hot ``(n, classes)``; fold_of: ``(n,)`` fold index of each row;
        options: passed to :func:`fit`.
    """
    out = np.zeros(oof.shape[1:])
    for fold in np.unique(fold_of):
        held = fold_of == fold
        out[held] = fit(method, oof[:, ~held], y[~held], **options).combine(oof[:, held])
    return out
