"""Work spread over threads: for per-clip work whose library releases Python's GIL while it
computes (openSMILE's C library, called through ctypes), so threads run it on every core without
the start-up and pickling of processes. ``benchmarks/functionals_threads.py`` measures openSMILE's
sets faster on two threads than on one, with the same rows, and ens_basic (librosa and NumPy, which
hold the GIL for most of a short clip) no faster, so it stays on one (docs/benchmarks.md,
"Functionals on threads")."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def resolve(threads: int) -> int:
    """``threads`` (``[runtime].threads``), or for 0 every core of this machine (``os.cpu_count()``)."""
    return threads if threads > 0 else os.cpu_count() or 1


def thread_map(fn: Callable[[T], R], items: Iterable[T], threads: int = 1) -> Iterator[R]:
    """``fn`` of each item, yielded in the items' order, computed on ``threads`` threads (1: one
    after another in the caller's thread, no pool).

    At most ``2 * threads`` items are in flight, so the caller can save results as they come; when
    ``fn`` raises, the exception reaches the caller at that item's place in the order (the items
    before it were yielded) and items not started yet are cancelled.
    """
    if threads <= 1:
        yield from map(fn, items)
        return
    pending: list[Future] = []
    with ThreadPoolExecutor(threads) as pool:
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= 2 * threads:
                    yield pending.pop(0).result()
            while pending:
                yield pending.pop(0).result()
        finally:
            for future in pending:
                future.cancel()
