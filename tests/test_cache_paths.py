"""The feature cache's production paths on real RAVDESS clips: builds of several chunks, loading
through the worker pool (asked for, and chosen automatically for many augmented clips), the
order of the rows, and clips that cannot be loaded in a later chunk handled by a worker.

The default recipe always takes these paths: its 1440 clean clips (1200 training, 240 test) and
4 x 1200 augmented copies are 6240 renderings in 25 chunks of ``FeatureCache.CHUNK = 256``,
loaded by one worker per core (4800 augmented clips, at least ``POOL_MIN_AUGMENTED``). Here ``CHUNK`` is monkeypatched down to 8 so a few
dozen real clips make 3 to 5 chunks, an uneven last chunk included, in seconds: the chunk loop
does not depend on the chunk's size, and more (and smaller) chunks give more boundaries, each
with the next chunk loaded while this one renders, where rows could be misplaced. A spy on
:func:`ensemble.inputs.features.render_batch` checks the chunks really are ``CHUNK`` clips each.

Every row is checked against the image of its own clip (or augmented copy) rendered alone:
:func:`ensemble.inputs.features.load_waveform` then :func:`ensemble.inputs.features.render_batch` of that one
waveform, in float16 as the cache stores it, and equal to it bit for bit (as in test_data_path).
Before the exact comparison each row is matched to its nearest reference image, so misplaced
rows are reported as such (row -> the rendering whose image it holds).
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from ensemble.core import waveform_augment
from ensemble.core.recipe import AugmentConfig, FeatureConfig
from ensemble.inputs import audio, features

from .conftest import ravdess_clip

CHUNK = 8
CONFIG = FeatureConfig(height=32)  # 3 channels x 32 rows x 176 frames
# the default waveform settings, with noise (the last transform) always on: no copy equals its clean clip
AUGMENT = AugmentConfig(copies=2, waveform=[*waveform_augment.DEFAULT[:-1], {**waveform_augment.DEFAULT[-1], "p": 1.0}])
CLEAN = [ravdess_clip(actor, emotion) for actor in (1, 2, 3, 4) for emotion in range(1, 8)]  # 28 real clips
POOLED = CLEAN[:12]  # x (clean, copy 1, copy 2) = 36 renderings: chunks of 8, 8, 8, 8, 4


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Render with one torch thread in this process: the loading workers use the other cores, and on
    a small shared machine two intra-op threads make one-clip renderings up to 30x slower. Both the
    cache and the reference images render under it, so it changes no comparison."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference() -> dict[tuple[Path, int], np.ndarray]:
    """(clip, copy) -> its image rendered alone (float16), for every rendering the tests ask for."""
    wanted = [(p, 0) for p in CLEAN] + [(p, k) for k in (1, 2) for p in POOLED]
    images = {key: features.render_batch(features.load_waveform(key[0], CONFIG, AUGMENT, key[1])[None], CONFIG)[0].astype(np.float16) for key in wanted}
    stacked = np.stack([images[key] for key in wanted]).astype(np.float32)
    for i, image in enumerate(stacked):  # every rendering is distinct, so a misplaced row cannot pass
        distance = np.abs(stacked - image).mean(axis=(1, 2, 3))
        distance[i] = np.inf
        assert distance.min() > 1e-2, f"{wanted[i]} renders like {wanted[int(distance.argmin())]}"
    return images


@pytest.fixture
def small_chunks(monkeypatch) -> list[int]:
    """``FeatureCache.CHUNK = 8``; returns the number of waveforms of each :func:`render_batch` call."""
    monkeypatch.setattr(features.FeatureCache, "CHUNK", CHUNK)
    sizes = []
    real = features.render_batch

    def spy(waveforms, *args, **kwargs):
        sizes.append(len(waveforms))
        return real(waveforms, *args, **kwargs)

    monkeypatch.setattr(features, "render_batch", spy)
    return sizes


@pytest.fixture
def pools(monkeypatch) -> list:
    """Every process pool the cache makes, each recording its worker count, the jobs of each
    ``map`` call (the function and its list of jobs) and the process ids of its workers."""
    made = []

    class SpyPool(ProcessPoolExecutor):
        def __init__(self, max_workers=None, *args, **kwargs):
            super().__init__(max_workers, *args, **kwargs)
            self.workers, self.maps, self.pids = max_workers, [], set()
            made.append(self)

        def map(self, fn, *iterables, **kwargs):
            jobs = list(iterables[0])
            self.maps.append((fn, jobs))
            results = super().map(fn, jobs, **kwargs)  # submits every job now: the workers are started
            self.pids |= set(self._processes or ())
            return results

    monkeypatch.setattr(features, "ProcessPoolExecutor", SpyPool)
    return made


def _chunks(n: int) -> list[int]:
    return [min(CHUNK, n - start) for start in range(0, n, CHUNK)]


def assert_rows(images: np.ndarray, expected: list[np.ndarray]) -> None:
    """Row i of ``images`` is ``expected[i]``: first each row's nearest expected image (to name a
    misplaced row), then bit-for-bit equality."""
    images, expected = np.asarray(images), np.stack(expected)
    assert images.shape == expected.shape and images.dtype == np.float16
    as_float = expected.astype(np.float32)
    nearest = [int(np.abs(as_float - row.astype(np.float32)).mean(axis=(1, 2, 3)).argmin()) for row in images]
    misplaced = {row: got for row, got in enumerate(nearest) if got != row}
    assert not misplaced, f"rows holding another rendering's image (row: the rendering it holds): {misplaced}"
    np.testing.assert_array_equal(images, expected)


def _pool_jobs(pool) -> list[tuple[Path, int]]:
    """(path, copy) of every job the pool's ``map`` calls loaded, in order; each through ``_load_one``."""
    assert all(fn is features._load_one for fn, _ in pool.maps)
    return [(Path(job[0]), job[3]) for _, jobs in pool.maps for job in jobs]


def test_a_build_of_several_chunks_keeps_every_row_in_place_and_grows_across_chunks(tmp_path, small_chunks, pools, reference):
    cache = features.FeatureCache(tmp_path, CONFIG)
    first = CLEAN[:21]  # chunks of 8, 8, 5
    images = cache.get(first, progress=False)
    assert_rows(images, [reference[p, 0] for p in first])
    assert small_chunks == _chunks(21) == [8, 8, 5]
    assert isinstance(images, np.memmap)  # a fresh cache in request order: a view of the one array
    assert not pools  # clean clips load in this process by default

    # 7 new clips: the 21 old rows are copied into the new array chunk by chunk, the new ones rendered after them
    small_chunks.clear()
    order = CLEAN[::-1]  # all 28, reversed: old and new rows interleaved across chunk boundaries
    grown = cache.get(order, progress=False)
    assert small_chunks == [7]
    assert_rows(grown, [reference[p, 0] for p in order])
    index = json.loads((cache.dir / "index.json").read_text())
    assert len(index["keys"]) == 28 and index["errors"] == {}
    assert len(list(cache.dir.glob("*.npy"))) == 1
    # a fresh cache object reads the same rows back, in any order
    shuffled = [CLEAN[i] for i in np.random.default_rng(0).permutation(28)]
    assert_rows(features.FeatureCache(tmp_path, CONFIG).get(shuffled, progress=False), [reference[p, 0] for p in shuffled])
    assert small_chunks == [7]  # nothing rendered again


def _pooled_request() -> tuple[list[Path], list[int]]:
    """The layout train.load_data asks for: the clean clips, then each augmented copy of them."""
    return POOLED * 3, [0] * 12 + [1] * 12 + [2] * 12


def test_enough_augmented_clips_choose_the_pool_and_it_loads_every_chunk_each_row_its_own_clip_and_copy(tmp_path, monkeypatch, small_chunks, pools, reference):
    """One pool build (workers cost seconds to start): chosen by itself, and checked row by row.
    An explicit ``workers=2`` is the pool of the bad-file test below."""
    monkeypatch.setattr(features.os, "cpu_count", lambda: 2)  # the automatic choice is one worker per core
    few = POOLED[:10] * 2, [0] * 10 + [1] * 10  # 20 renderings, 10 augmented: what counts is the augmented ones
    monkeypatch.setattr(features.FeatureCache, "POOL_MIN_AUGMENTED", 11)
    images = features.FeatureCache(tmp_path / "below", CONFIG).get(few[0], copies=few[1], augment=AUGMENT, progress=False)
    assert pools == []
    assert_rows(images, [reference[p, k] for p, k in zip(*few)])

    paths, copies = _pooled_request()  # 36 renderings, 24 of them augmented
    monkeypatch.setattr(features.FeatureCache, "POOL_MIN_AUGMENTED", 24)
    small_chunks.clear()
    images = features.FeatureCache(tmp_path / "at", CONFIG).get(paths, copies=copies, augment=AUGMENT, progress=False)
    assert_rows(images, [reference[p, k] for p, k in zip(paths, copies)])
    assert isinstance(images, np.memmap)
    assert len(pools) == 1 and pools[0].workers == 2
    pool = pools[0]
    assert 1 <= len(pool.pids) <= 2  # worker processes really ran
    assert [len(jobs) for _, jobs in pool.maps] == _chunks(36) == [8, 8, 8, 8, 4]  # one map per chunk
    assert _pool_jobs(pool) == list(zip(paths, copies))  # every clip loaded by the workers, none in this process
    assert small_chunks == [8, 8, 8, 8, 4]


def _with_bad_file(tmp_path) -> tuple[list[Path], list[int], Path, int]:
    """12 clean clips, then their first augmented copies with an empty file among them at
    position 21: in the third of four chunks (8, 8, 8, 1), loaded by a worker."""
    bad = tmp_path / "empty.flac"
    bad.write_bytes(b"")
    paths = POOLED + POOLED[:9] + [bad] + POOLED[9:]
    copies = [0] * 12 + [1] * 9 + [0] + [1] * 3
    return paths, copies, bad, 21


def test_a_bad_file_in_a_later_chunk_loaded_by_a_worker_is_named_and_the_other_rows_are_right(tmp_path, small_chunks, pools, reference):
    paths, copies, bad, at = _with_bad_file(tmp_path)
    failing = features.FeatureCache(tmp_path / "get", CONFIG)
    with pytest.raises(audio.AudioError, match=r"^1 audio file\(s\) cannot be used") as caught:
        failing.get(paths, copies=copies, augment=AUGMENT, progress=False, workers=2)
    message = str(caught.value)
    assert f"{bad}: the file is empty" in message and "on_error='skip'" in message
    assert sum(str(p) in message for p in set(paths)) == 1  # only the bad file is named
    assert len(pools) == 1 and pools[0].pids and _pool_jobs(pools[0]) == list(zip(paths, copies))  # a worker met it
    assert small_chunks == [8, 8, 8, 1]
    index = json.loads((failing.dir / "index.json").read_text())  # the good clips are cached, the error remembered for its own key
    assert len(index["keys"]) == 25 and list(index["errors"]) == [index["keys"][at]] and str(bad.resolve()) in index["keys"][at]

    # get_skipping: the rows the workers loaded, a zero row for the bad file, and exactly its position
    images, failed = failing.get_skipping(paths, copies=copies, augment=AUGMENT, progress=False, workers=2)
    assert len(pools) == 1 and small_chunks == [8, 8, 8, 1]  # read from the cache the failing build wrote: nothing loaded again
    assert list(failed) == [at] and failed[at].startswith(f"{bad}: the file is empty")
    assert_rows(images, [np.zeros_like(reference[POOLED[0], 0]) if i == at else reference[p, k] for i, (p, k) in enumerate(zip(paths, copies))])
    # a request in another order, the bad file first: its position follows it
    moved = [at, *range(at), *range(at + 1, len(paths))]
    _, failed = failing.get_skipping([paths[i] for i in moved], copies=[copies[i] for i in moved], augment=AUGMENT, progress=False)
    assert list(failed) == [0]
