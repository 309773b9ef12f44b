"""The multilabel task's math (``[competition].task = "multilabel"``): labels, loss, mixup, metrics,
thresholds. :class:`ensemble.core.tasks.Multilabel` calls it; callers ask their task, not this module
(train and blend still call it directly: to wire to :mod:`ensemble.core.tasks`).

Labels are space-separated class names in one column (the Freesound / BirdCLEF convention), e.g.
``"angry strong"``. A model has one sigmoid output per class, trained with binary cross-entropy.
Importing this module does not import torch; the loss and mixup import it when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from sklearn.metrics import average_precision_score, f1_score, label_ranking_average_precision_score

if TYPE_CHECKING:
    import torch

METRICS = ("lwlrap", "map", "micro_f1", "macro_f1")


def tokens(label: str) -> list[str]:
    """The class names of one space-separated label cell (empty list for an empty cell)."""
    return label.split()


def encode(labels, classes: list[str]) -> np.ndarray:
    """Multi-hot targets ``(n, classes)`` float32 of space-separated label strings.

    Raises:
        KeyError: a name is not in ``classes`` (callers check first and name the row).
    """
    index = {c: i for i, c in enumerate(classes)}
    out = np.zeros((len(labels), len(classes)), dtype=np.float32)
    for row, label in enumerate(labels):
        out[row, [index[t] for t in tokens(label)]] = 1.0
    return out


def decode(multi_hot: np.ndarray, classes: list[str]) -> list[str]:
    """Space-separated label strings of a ``(n, classes)`` 0/1 array, in class order."""
    return [" ".join(c for c, on in zip(classes, row) if on) for row in np.asarray(multi_hot, dtype=bool)]


def smooth(target: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Binary label smoothing of multi-hot targets: 1 -> 1 - s/2, 0 -> s/2."""
    return target * (1.0 - label_smoothing) + label_smoothing / 2


def bce_loss(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Binary cross-entropy with logits ``(batch, classes)`` against :func:`smooth` targets."""
    import torch

    return torch.nn.functional.binary_cross_entropy_with_logits(logits, smooth(target, label_smoothing))


def union_mixup(batch: torch.Tensor, target: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup for multilabel audio: images mixed with ``lam ~ Beta(alpha, alpha)`` against the
    batch reversed (as timm's batch-mode ``Mixup`` pairs them, drawing ``lam`` from numpy's global
    generator, which the run seeds), targets the *union* of both clips' labels: both sounds are
    audible in the mix.

    Args:
        batch: ``(batch, channels, height, frames)``; target: ``(batch, classes)`` multi-hot.
    """
    import torch

    lam = float(np.random.beta(alpha, alpha))
    return lam * batch + (1.0 - lam) * batch.flip(0), torch.maximum(target, target.flip(0))


def lwlrap(y: np.ndarray, scores: np.ndarray) -> float:
    """Label-weighted label-ranking average precision (DCASE 2019 task 2 / Freesound Audio
    Tagging 2019). Equal to scikit-learn's LRAP with each clip weighted by its number of labels."""
    keep = y.sum(axis=1) > 0
    return float(label_ranking_average_precision_score(y[keep], scores[keep], sample_weight=y[keep].sum(axis=1)))


def bce(y: np.ndarray, proba: np.ndarray) -> float:
    """Mean binary cross-entropy (nats) over clips and classes."""
    p = np.clip(proba, 1e-7, 1 - 1e-7)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def scores(y: np.ndarray, proba: np.ndarray, thresholds: np.ndarray | float = 0.5) -> dict[str, float]:
    """Multilabel scores of ``proba`` ``(n, classes)`` against multi-hot ``y`` ``(n, classes)``.

    Returns:
        ``lwlrap``; ``map`` (macro average precision over classes with a positive, scikit-learn);
        ``micro_f1`` and ``macro_f1`` of ``proba >= thresholds``; ``log_loss`` (mean BCE, nats).
    """
    pred = proba >= thresholds
    present = y.sum(axis=0) > 0
    return {
        "lwlrap": lwlrap(y, proba),
        "map": float(average_precision_score(y[:, present], proba[:, present], average="macro")),
        "micro_f1": float(f1_score(y, pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
        "log_loss": bce(y, proba),
    }


def report(y: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict:
    """:func:`scores` plus ``per_class_ap`` (average precision of each class, None when it has no
    positive), ``classes`` and ``n``."""
    per_class = {c: (float(average_precision_score(y[:, i], proba[:, i])) if y[:, i].any() else None) for i, c in enumerate(classes)}
    return {**scores(y, proba), "n": int(len(y)), "per_class_ap": per_class, "classes": classes}


def tune_thresholds(y: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Per-class thresholds ``(classes,)`` maximising each class's F1 on OOF ``proba``.

    Candidates are the midpoints between consecutive distinct scores of the class (plus 0.5 for
    a class without positives); ties go to the threshold closest to 0.5.
    """
    out = np.full(y.shape[1], 0.5)
    for k in range(y.shape[1]):
        if not y[:, k].any():
            continue
        values = np.unique(proba[:, k])
        candidates = np.concatenate([(values[:-1] + values[1:]) / 2, [0.5]])
        f1 = [f1_score(y[:, k], proba[:, k] >= t, zero_division=0) for t in candidates]
        best = np.flatnonzero(np.isclose(f1, max(f1)))
        out[k] = candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]]
    return out


def labels(proba: np.ndarray, thresholds: np.ndarray, classes: list[str]) -> list[str]:
    """Predicted space-separated labels: every class at or above its threshold; a clip with none
    gets its single most probable class (every clip carries at least one label)."""
    on = proba >= thresholds
    on[np.arange(len(proba)), proba.argmax(axis=1)] |= ~on.any(axis=1)
    return decode(on, classes)
