"""metrics: the blend-selection loss by hand (the task objects' metrics are tested in tests/test_tasks.py)."""

from __future__ import annotations

import numpy as np
import pytest

from ensemble.core import metrics


def test_nll_is_the_mean_negative_log_probability_of_the_truth_floored_at_1e_15():
    y = np.array([0, 2, 1])
    proba = np.array([[0.5, 0.25, 0.25], [0.2, 0.2, 0.6], [1.0, 0.0, 0.0]])  # the last row gives its truth 0
    assert metrics.nll(y, proba) == pytest.approx(-(np.log(0.5) + np.log(0.6) + np.log(1e-15)) / 3)
