"""Single-label classification metrics (scikit-learn): accuracy, macro-F1, UAR, log-loss, confusion
matrix. :class:`ensemble.core.tasks.Multiclass` calls them; callers ask their task, not this module."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score, log_loss

METRICS = ("accuracy", "macro_f1", "uar")  # the fold metrics of :func:`scores`, higher is better


def _clip(proba: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Probabilities clipped to [eps, 1] and renormalised, so a log-loss stays finite."""
    proba = np.clip(proba, eps, 1.0)
    return proba / proba.sum(axis=1, keepdims=True)


def scores(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Headline scores of probabilities ``proba`` ``(n, classes)`` against integer labels ``y`` ``(n,)``.

    Returns:
        ``accuracy``; ``macro_f1`` (unweighted mean of per-class F1); ``uar`` (unweighted average
        recall, the standard SER metric, = scikit-learn's balanced accuracy); ``log_loss`` (nats).
    """
    pred = proba.argmax(axis=1)
    labels = np.arange(proba.shape[1])
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "uar": float(balanced_accuracy_score(y, pred)),
        "log_loss": float(log_loss(y, _clip(proba), labels=labels)),
    }


def nll(y: np.ndarray, proba: np.ndarray) -> float:
    """Mean negative log-probability (nats) of the true classes ``y`` ``(n,)`` under ``proba``
    ``(n, classes)``, each probability floored at 1e-15 and not renormalised (the loss blend
    selection minimises; :func:`scores`' ``log_loss`` clips and renormalises instead)."""
    return float(-np.log(np.clip(proba[np.arange(len(y)), y], 1e-15, None)).mean())


def report(y: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict:
    """:func:`scores` plus ``per_class_accuracy`` (recall of each class, by name) and
    ``confusion_matrix`` (rows = true class, columns = predicted, in ``classes`` order) and ``n``."""
    pred = proba.argmax(axis=1)
    cm = confusion_matrix(y, pred, labels=np.arange(len(classes)))
    support = cm.sum(axis=1)
    per_class = {c: (float(cm[i, i] / support[i]) if support[i] else None) for i, c in enumerate(classes)}
    return {**scores(y, proba), "n": int(len(y)), "per_class_accuracy": per_class, "classes": classes, "confusion_matrix": cm.tolist()}
