"""ensemble.core.threads: results in the items' order, an error at its item's place, nothing started after it."""

from __future__ import annotations

import threading
import time

import pytest

from ensemble.core.threads import resolve, thread_map


def test_results_come_in_order_and_on_several_threads():
    names = set()

    def slow_first(k: int) -> int:
        names.add(threading.current_thread().name)
        time.sleep(0.05 if k % 3 == 0 else 0.0)  # later items finish first
        return k * k

    assert list(thread_map(slow_first, range(20), threads=3)) == [k * k for k in range(20)]
    assert len(names) > 1


def test_one_thread_runs_in_the_callers_thread():
    assert list(thread_map(lambda k: threading.current_thread() is threading.main_thread(), range(3), threads=1)) == [True] * 3


def test_an_error_reaches_the_caller_after_the_items_before_it_and_later_items_are_not_started():
    started = []

    def fail_at_5(k: int) -> int:
        started.append(k)
        if k == 5:
            raise ValueError("item 5 is bad")
        return k

    got = []
    with pytest.raises(ValueError, match="item 5 is bad"):
        for value in thread_map(fail_at_5, range(1000), threads=2):
            got.append(value)
    assert got == [0, 1, 2, 3, 4]
    assert max(started) < 5 + 2 * 2 + 1  # at most 2 x threads items in flight: the rest never started


def test_zero_threads_means_every_core():
    assert resolve(0) >= 1 and resolve(3) == 3
