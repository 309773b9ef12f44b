"""metrics: the blend-selection loss by hand; for_task, the old way to ask a task's metrics, kept
working for the callers not yet asking :mod:`ensemble.tasks` (see tests/test_tasks.py)."""

from __future__ import annotations

import numpy as np
import pytest

from ensemble import metrics, multilabel


def test_for_task_gives_multilabel_metrics_for_a_multilabel_task():
    y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=np.float32)
    proba = np.array([[0.9, 0.2, 0.7], [0.1, 0.8, 0.3], [0.6, 0.7, 0.2], [0.2, 0.1, 0.9]])
    chosen = metrics.for_task(True)
    assert (chosen.scores, chosen.report) == (multilabel.scores, multilabel.report)
    assert set(chosen.scores(y, proba)) == {"lwlrap", "map", "micro_f1", "macro_f1", "log_loss"}
    assert chosen.scores(y, proba)["lwlrap"] == 1.0
    assert set(chosen.report(y, proba, ["a", "b", "c"])["per_class_ap"]) == {"a", "b", "c"}


def test_for_task_gives_multiclass_metrics_otherwise():
    y = np.array([0, 1, 2, 1])
    proba = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    scores, report = metrics.for_task(False)
    assert (scores, report) == (metrics.scores, metrics.report)
    assert set(scores(y, proba)) == {"accuracy", "macro_f1", "uar", "log_loss"}
    assert scores(y, proba)["uar"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert report(y, proba, ["a", "b", "c"])["confusion_matrix"] == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]


def test_nll_is_the_mean_negative_log_probability_of_the_truth_floored_at_1e_15():
    y = np.array([0, 2, 1])
    proba = np.array([[0.5, 0.25, 0.25], [0.2, 0.2, 0.6], [1.0, 0.0, 0.0]])  # the last row gives its truth 0
    assert metrics.nll(y, proba) == pytest.approx(-(np.log(0.5) + np.log(0.6) + np.log(1e-15)) / 3)
