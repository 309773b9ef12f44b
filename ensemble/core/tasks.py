"""The task of a competition, multiclass or multilabel, each in one place.

``[competition].task`` names it; :func:`get` (or :attr:`ensemble.store.competition.Competition.task`)
gives its :class:`Task` object once, and callers ask that object instead of branching on the
kind: label encoding and submission labels, the output activation, loss and mixup, metrics,
blend methods, the prior, probability-table checks, thresholds and the confusion matrix.

:class:`Multiclass`: one class name per clip, a softmax over the classes, integer targets
``(n,)``. :class:`Multilabel`: space-separated class names per clip (the Freesound / BirdCLEF
convention), one sigmoid per class, multi-hot targets ``(n, classes)`` (see
:mod:`ensemble.core.multilabel`).

Importing this module does not import torch (so neither does :mod:`ensemble.core.recipe`, which
checks metric names and blend methods here): loss, mixup and activation import it when called.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from . import metrics, multilabel
from .errors import EnsError

if TYPE_CHECKING:
    import torch

    Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, targets) -> scalar loss
    Mix = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # (images, targets) -> mixed


class TaskError(EnsError, ValueError):
    """An unknown task name, or a request the task cannot serve (class weights for a multilabel task)."""


class Task(ABC):
    """The behaviour of one kind of task. Use the shared instances from :func:`get`.

    Attributes:
        name: ``[competition].task`` value, ``"multiclass"`` or ``"multilabel"``.
        metric_names: the allowed ``[train].metric`` values (fold metrics, higher is better).
        headline: the three scores ``ens train`` prints per fold.
        blend_methods: the methods of :mod:`ensemble.blending.blenders` this task can blend with.
        rows_sum_to_one: whether each row of a probability table sums to 1 (softmax outputs), so
            blends renormalise and run tables are refused when a row does not.
        has_confusion_matrix: whether a confusion matrix applies (one true and one predicted class per clip).
        takes_class_weights: whether the loss accepts per-class weights (``[train].class_weights``).
    """

    name: str
    metric_names: tuple[str, ...]
    headline: tuple[str, str, str]
    blend_methods: tuple[str, ...]
    rows_sum_to_one: bool
    has_confusion_matrix: bool
    takes_class_weights: bool

    def __repr__(self) -> str:
        return f"<task {self.name}>"

    @abstractmethod
    def tokens(self, label: str) -> list[str]:
        """The class names of one label cell (every name in it must be a class)."""

    @abstractmethod
    def class_problem(self, classes: list[str]) -> str | None:
        """What makes the class list ``classes`` unusable for this task, worded to follow
        "the classes ...", or None when it is usable (repeats and empty names are checked by the caller)."""

    @abstractmethod
    def encode(self, labels: Sequence[str], classes: list[str]) -> np.ndarray:
        """Targets of label strings (their names checked against ``classes`` by the caller).

        Returns:
            int64 class indices ``(n,)`` (multiclass) or float32 multi-hot ``(n, classes)`` (multilabel).

        Raises:
            KeyError: a name is not in ``classes``.
        """

    @abstractmethod
    def indicators(self, y: np.ndarray, n_classes: int) -> np.ndarray:
        """Encoded targets ``y`` (from :meth:`encode`) as 0/1 columns ``(n, n_classes)``: one-hot or multi-hot."""

    @abstractmethod
    def strata(self, y: np.ndarray) -> np.ndarray:
        """Integer class ``(n,)`` of each encoded target that stratified folds balance."""

    @abstractmethod
    def labels(self, proba: np.ndarray, classes: list[str], thresholds: np.ndarray | None = None) -> list[str]:
        """Submission labels of probabilities ``proba`` ``(n, classes)``: one string per row.

        Raises:
            TaskError: ``thresholds`` given for a task that has none.
        """

    @abstractmethod
    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities ``(batch, classes)`` of a model's logits ``(batch, classes)``."""

    @abstractmethod
    def loss(self, label_smoothing: float, class_weight: torch.Tensor | None = None, mixup_alpha: float = 0.0) -> Criterion:
        """The training criterion ``(logits (batch, classes), targets) -> scalar loss``.

        Args:
            label_smoothing: ``[train].label_smoothing``, in [0, 1).
            class_weight: ``(classes,)`` loss weights on the logits' device, or None.
            mixup_alpha: ``[augment].mixup_alpha``; the targets :meth:`mixup` makes decide
                whether the criterion still smooths them.

        Raises:
            TaskError: ``class_weight`` for a task that takes none.
        """

    @abstractmethod
    def mixup(self, alpha: float, label_smoothing: float, num_classes: int) -> Mix | None:
        """Batch mixup ``(images (batch, channels, height, frames), targets) -> (images, targets)``
        with ``lam ~ Beta(alpha, alpha)`` drawn from numpy's global generator, or None when
        ``alpha`` is 0. The batch size must be even."""

    @abstractmethod
    def scores(self, y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
        """Scores of ``proba`` ``(n, classes)`` against encoded targets ``y``: every name of
        :attr:`metric_names` plus ``log_loss`` (nats)."""

    @abstractmethod
    def report(self, y: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict:
        """:meth:`scores` plus ``n``, ``classes`` and per-class figures (a run's ``metrics.json``)."""

    @abstractmethod
    def blend_loss(self, y: np.ndarray, proba: np.ndarray) -> float:
        """The loss (nats) ensemble selection minimises over blends ``proba`` ``(n, classes)``."""

    @abstractmethod
    def prior(self, y: np.ndarray, n_classes: int) -> np.ndarray:
        """Training prior ``(n_classes,)`` float64 of encoded targets ``y``: what a clip that
        cannot be loaded is predicted."""

    @abstractmethod
    def tune_thresholds(self, y: np.ndarray, proba: np.ndarray) -> np.ndarray | None:
        """Per-class decision thresholds ``(classes,)`` tuned on OOF ``proba``, or None for a
        task that decides without thresholds; pass them to :meth:`labels`."""

    def unnormalised_row(self, proba: np.ndarray, tolerance: float = 1e-3) -> int | None:
        """For a task whose rows sum to 1 (:attr:`rows_sum_to_one`), the index of the first row of
        ``proba`` ``(n, classes)`` whose sum is off 1 by more than ``tolerance``; else None."""
        if not self.rows_sum_to_one or not len(proba):
            return None
        off = np.abs(proba.sum(axis=1) - 1.0) > tolerance
        return int(np.argmax(off)) if off.any() else None


class Multiclass(Task):
    """One class per clip: softmax outputs, cross-entropy, timm mixup, accuracy / macro-F1 / UAR."""

    name = "multiclass"
    metric_names = metrics.METRICS
    headline = ("accuracy", "macro_f1", "uar")
    blend_methods = ("mean", "rank", "geometric", "caruana", "optimize", "stacking")
    rows_sum_to_one = True
    has_confusion_matrix = True
    takes_class_weights = True

    def tokens(self, label: str) -> list[str]:
        """The cell itself: a class name may hold spaces."""
        return [label]

    def class_problem(self, classes: list[str]) -> str | None:
        """Fewer than two classes leave nothing to choose between."""
        return None if len(classes) >= 2 else f"are only {classes}: a multiclass task needs at least two"

    def encode(self, labels: Sequence[str], classes: list[str]) -> np.ndarray:
        """int64 class indices ``(n,)`` (position in ``classes``). Raises KeyError: an unknown name."""
        index = {c: i for i, c in enumerate(classes)}
        return np.array([index[label] for label in labels], dtype=np.int64)

    def indicators(self, y: np.ndarray, n_classes: int) -> np.ndarray:
        """One-hot float64 ``(n, n_classes)`` of class indices ``y``."""
        return np.eye(n_classes)[y]

    def strata(self, y: np.ndarray) -> np.ndarray:
        """The class indices themselves."""
        return y

    def labels(self, proba: np.ndarray, classes: list[str], thresholds: np.ndarray | None = None) -> list[str]:
        """The most probable class of each row. Raises TaskError: ``thresholds`` given."""
        if thresholds is not None:
            raise TaskError("a multiclass task predicts the most probable class and takes no thresholds; pass thresholds=None.")
        return [classes[k] for k in proba.argmax(axis=1)]

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax over the classes (dim 1)."""
        return logits.softmax(dim=1)

    def loss(self, label_smoothing: float, class_weight: torch.Tensor | None = None, mixup_alpha: float = 0.0) -> Criterion:
        """``torch.nn.CrossEntropyLoss`` with ``class_weight`` and ``label_smoothing`` (Szegedy et
        al. 2016); with mixup (``mixup_alpha > 0``) its targets are soft probabilities that already
        carry the smoothing (timm folds it in), so the criterion smooths no more (0)."""
        from torch import nn

        return nn.CrossEntropyLoss(weight=class_weight, label_smoothing=0.0 if mixup_alpha > 0 else label_smoothing)

    def mixup(self, alpha: float, label_smoothing: float, num_classes: int) -> Mix | None:
        """timm's batch-mode ``Mixup`` (Zhang et al. 2018) without CutMix (pasting a patch of one
        spectrogram into another cuts sounds off in time and frequency), or None when ``alpha`` is 0:
        targets are soft ``(batch, classes)`` probabilities with ``label_smoothing`` folded in."""
        if alpha <= 0:
            return None
        from timm.data import Mixup

        return Mixup(mixup_alpha=alpha, cutmix_alpha=0.0, label_smoothing=label_smoothing, num_classes=num_classes)

    def scores(self, y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
        """:func:`ensemble.core.metrics.scores`; ``y`` class indices ``(n,)``."""
        return metrics.scores(y, proba)

    def report(self, y: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict:
        """:func:`ensemble.core.metrics.report`: with per-class accuracy and the confusion matrix."""
        return metrics.report(y, proba, classes)

    def blend_loss(self, y: np.ndarray, proba: np.ndarray) -> float:
        """:func:`ensemble.core.metrics.nll`, the mean negative log-probability of the true class."""
        return metrics.nll(y, proba)

    def prior(self, y: np.ndarray, n_classes: int) -> np.ndarray:
        """Class frequencies of ``y``."""
        return np.bincount(y, minlength=n_classes) / len(y)

    def tune_thresholds(self, y: np.ndarray, proba: np.ndarray) -> None:
        """None: the most probable class is predicted."""
        return None


class Multilabel(Task):
    """Any number of classes per clip: sigmoid outputs, binary cross-entropy, union mixup, lwlrap /
    mAP / F1, per-class thresholds (:mod:`ensemble.core.multilabel`)."""

    name = "multilabel"
    metric_names = multilabel.METRICS
    headline = ("lwlrap", "map", "micro_f1")
    blend_methods = ("mean", "caruana")  # weighted means of sigmoid outputs; Caruana on mean BCE
    rows_sum_to_one = False
    has_confusion_matrix = False
    takes_class_weights = False

    def tokens(self, label: str) -> list[str]:
        """:func:`ensemble.core.multilabel.tokens`: the space-separated names (none for an empty cell)."""
        return multilabel.tokens(label)

    def class_problem(self, classes: list[str]) -> str | None:
        """A name with spaces cannot be told apart in a space-separated label."""
        if all(len(name.split()) == 1 for name in classes):
            return None
        return "include a name with spaces, which a space-separated multilabel label cannot hold"

    def encode(self, labels: Sequence[str], classes: list[str]) -> np.ndarray:
        """:func:`ensemble.core.multilabel.encode`: float32 multi-hot ``(n, classes)``. Raises KeyError: an unknown name."""
        return multilabel.encode(labels, classes)

    def indicators(self, y: np.ndarray, n_classes: int) -> np.ndarray:
        """``y`` itself, already multi-hot."""
        return y

    def strata(self, y: np.ndarray) -> np.ndarray:
        """Each clip's first label in class order."""
        return y.argmax(axis=1)

    def labels(self, proba: np.ndarray, classes: list[str], thresholds: np.ndarray | None = None) -> list[str]:
        """:func:`ensemble.core.multilabel.labels`: space-separated classes at or above ``thresholds``
        ``(classes,)`` (None: 0.5 each), else the most probable class alone."""
        cut = np.full(len(classes), 0.5) if thresholds is None else thresholds
        return multilabel.labels(proba, cut, classes)

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        """A sigmoid per class."""
        return logits.sigmoid()

    def loss(self, label_smoothing: float, class_weight: torch.Tensor | None = None, mixup_alpha: float = 0.0) -> Criterion:
        """:func:`ensemble.core.multilabel.bce_loss` with binary ``label_smoothing``, with or without
        mixup (union mixup keeps the targets 0/1). Raises TaskError: ``class_weight`` given."""
        if class_weight is not None:
            raise TaskError("a multilabel task takes no class weights; set [train].class_weights = 'none'.")
        return functools.partial(multilabel.bce_loss, label_smoothing=label_smoothing)

    def mixup(self, alpha: float, label_smoothing: float, num_classes: int) -> Mix | None:
        """:func:`ensemble.core.multilabel.union_mixup`: targets the union of both clips' labels
        (``label_smoothing`` and ``num_classes`` are not needed: the loss smooths)."""
        return functools.partial(multilabel.union_mixup, alpha=alpha) if alpha > 0 else None

    def scores(self, y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
        """:func:`ensemble.core.multilabel.scores` at threshold 0.5; ``y`` multi-hot ``(n, classes)``."""
        return multilabel.scores(y, proba)

    def report(self, y: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict:
        """:func:`ensemble.core.multilabel.report`: with each class's average precision."""
        return multilabel.report(y, proba, classes)

    def blend_loss(self, y: np.ndarray, proba: np.ndarray) -> float:
        """:func:`ensemble.core.multilabel.bce`, the mean binary cross-entropy."""
        return multilabel.bce(y, proba)

    def prior(self, y: np.ndarray, n_classes: int) -> np.ndarray:
        """Each class's label rate."""
        return np.asarray(y, dtype=np.float64).mean(axis=0)

    def tune_thresholds(self, y: np.ndarray, proba: np.ndarray) -> np.ndarray:
        """:func:`ensemble.core.multilabel.tune_thresholds`: each class's F1-optimal threshold."""
        return multilabel.tune_thresholds(y, proba)


MULTICLASS, MULTILABEL = Multiclass(), Multilabel()
_TASKS = {task.name: task for task in (MULTICLASS, MULTILABEL)}
NAMES = tuple(_TASKS)  # the [competition].task values


def get(name: str) -> Task:
    """The task named ``name`` (``[competition].task``), one shared object per task.

    Raises:
        TaskError: ``name`` is not one of :data:`NAMES`, naming it and the choices.
    """
    try:
        return _TASKS[name]
    except KeyError:
        raise TaskError(f"unknown task {name!r}: [competition].task must be one of {NAMES}.") from None
