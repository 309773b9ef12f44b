"""The training data path: one memory-mapped cache pass, single-threaded loading workers,
batch prefetching, and torch.compile giving the run it would give without."""

import json
import os
import threading

import numpy as np
import pandas as pd

from ensemble.core import recipe as recipe_mod
from ensemble.core.recipe import AugmentConfig, FeatureConfig
from ensemble.inputs import features
from ensemble.members import data as data_mod
from ensemble.members import image_fit, loop, models
from ensemble.store import runs as run_store

from .conftest import ravdess_clip, tiny_competition

CLIPS = [ravdess_clip(1, 5), ravdess_clip(2, 4)]


def test_clean_and_augmented_renderings_are_cached_in_one_pass_as_one_mapped_array(tmp_path):
    config, augment = FeatureConfig(height=32), AugmentConfig(copies=1)
    cache = features.FeatureCache(tmp_path, config)
    images = cache.get(CLIPS + CLIPS, copies=[0, 0, 1, 1], augment=augment, progress=False)
    assert isinstance(images, np.memmap) and images.shape == (4, 3, 32, 176)
    assert len(list(cache.dir.glob("*.npy"))) == 1
    for row, (path, copy) in enumerate(zip(CLIPS + CLIPS, [0, 0, 1, 1])):
        expected = features.render_batch(features.load_waveform(path, config, augment, copy)[None], config)[0].astype(np.float16)
        np.testing.assert_array_equal(images[row], expected)
    assert np.abs(images[2].astype(np.float32) - images[0]).mean() > 0.01  # the augmented copy is another rendering


def _thread_settings(_):
    return os.environ.get("OPENBLAS_NUM_THREADS"), os.environ.get("OMP_NUM_THREADS")


def test_loading_workers_run_single_threaded_and_the_parent_keeps_its_settings(monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "7")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with features.worker_pool(2) as pool:
        assert set(pool.map(_thread_settings, range(4))) == {("1", "1")}
    assert os.environ["OPENBLAS_NUM_THREADS"] == "7" and "OMP_NUM_THREADS" not in os.environ


def test_ahead_prepares_the_next_batch_while_the_caller_works_in_order():
    second_started = threading.Event()

    def prepare(k):
        if k == 1:
            second_started.set()
        return k * 10

    results = []
    for value in loop.ahead([(k,) for k in range(5)], prepare):
        if value == 0:  # still busy with the first batch: the second is being prepared already
            assert second_started.wait(timeout=10)
        results.append(value)
    assert results == [0, 10, 20, 30, 40]
    assert list(loop.ahead([], prepare)) == []


def test_torch_compile_trains_the_same_run(small_source, tiny_recipe_text, tmp_path, monkeypatch):
    import torch
    from torch._dynamo.utils import counters

    text = tiny_recipe_text(tmp_path / "comp", tmp_path / "runs", tmp_path / "subs")
    r = recipe_mod.load(tiny_competition(tmp_path / "tiny.toml", text, small_source))
    data = data_mod.load_data(r, progress=False)
    assert isinstance(data.x_train, np.memmap) and isinstance(data.x_test, np.memmap)  # views of the cache, not copies
    real_compile, compiled_modules = torch.compile, []

    def spy(model, *args, **kwargs):  # torch.compile, recording what it compiled and gave back
        out = real_compile(model, *args, **kwargs)
        compiled_modules.append((model, kwargs, out))
        return out

    monkeypatch.setattr(torch, "compile", spy)
    torch._dynamo.reset()
    counters.clear()
    plain = image_fit.train_fold(r, data, "test_resnet", 0, progress=False)
    assert compiled_modules == [] and counters["frames"]["ok"] == 0  # compile is off by default
    r.runtime.compile, r.name = True, "compiled"
    compiled = image_fit.train_fold(r, data, "test_resnet", 0, progress=False)
    # the training model really was compiled, by inductor (the default backend), and the compiled
    # module is what trained: dynamo captured the forward pass into a graph and inductor compiled it
    [(model, kwargs, out)] = compiled_modules
    assert isinstance(model, models.Normalize) and kwargs.get("backend", "inductor") == "inductor"
    assert isinstance(out, torch._dynamo.eval_frame.OptimizedModule) and out._orig_mod is model
    assert counters["frames"]["ok"] >= 1 and counters["stats"]["unique_graphs"] >= 1
    assert sum(counters["inductor"].values()) > 0, dict(counters)
    assert abs(compiled["log_loss"] - plain["log_loss"]) < 1e-3  # inductor's fused kernels round differently, barely
    oof = [pd.read_csv(run_store.run_dir(r, "test_resnet", 0) / "oof.csv")]
    r.name = "tiny"
    oof.append(pd.read_csv(run_store.run_dir(r, "test_resnet", 0) / "oof.csv"))
    np.testing.assert_allclose(oof[0][data.competition.classes].to_numpy(), oof[1][data.competition.classes].to_numpy(), atol=1e-3)


def test_cpu_bf16_autocast_changes_the_arithmetic_not_the_run(small_source, tiny_recipe_text, tmp_path):
    text = tiny_recipe_text(tmp_path / "comp", tmp_path / "runs", tmp_path / "subs")
    r = recipe_mod.load(tiny_competition(tmp_path / "tiny.toml", text, small_source))
    data = data_mod.load_data(r, progress=False)
    image_fit.train_fold(r, data, "test_resnet", 0, progress=False)
    r.train.cpu_precision, r.name = "bf16", "bf16"
    image_fit.train_fold(r, data, "test_resnet", 0, progress=False)
    assert json.loads((run_store.run_dir(r, "test_resnet", 0) / "config.json").read_text())["recipe"]["train"]["cpu_precision"] == "bf16"
    half = pd.read_csv(run_store.run_dir(r, "test_resnet", 0) / "oof.csv")[data.competition.classes].to_numpy()
    r.name = "tiny"
    full = pd.read_csv(run_store.run_dir(r, "test_resnet", 0) / "oof.csv")[data.competition.classes].to_numpy()
    assert np.abs(half - full).max() > 1e-6  # bf16 autocast did run on the CPU
    np.testing.assert_allclose(half, full, atol=2e-3)  # ...and rounds the run's probabilities only slightly (1e-4 measured)
