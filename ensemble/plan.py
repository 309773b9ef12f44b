"""The time plan of a training grid: how long each stage of ``ens train`` should take on this
machine, said before it starts (:func:`estimate`, :func:`describe`).

Every estimate is calibrated where it runs, in a few seconds, never read from a table of another
machine: rendering times the loading (and waveform augmentation) and rendering of a few real
training clips; functionals and voice embeddings time their extractor on one real clip; a
backbone times three training steps and one evaluation batch of its real input shape on the
recipe's device, then counts the steps its folds take. Work already done costs nothing: cached
images, functionals and embeddings, and finished runs (a ``metrics.json``), are left out. Not
estimated: fitting the functionals members (seconds each with logistic regression or an SVM on
RAVDESS; a LightGBM ``tune`` grid can take many minutes), inferring the training speakers of a
table without a group column (once per competition) and building the competition folder.
The estimates leave out the data pipeline of training (gathering, SpecAugment, EMA), so they tend
to be low; ``benchmarks/main_job.py`` prints each stage's estimate beside its measured time.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import numpy as np

from . import competition as comp_mod
from . import data as data_mod
from . import features, functionals, guards, loop, models, runs, runtime, speakers
from .recipe import Recipe, pseudo_round, split_backbone

SAMPLE = 8
"""Training clips timed per rendering calibration (clean, and augmented with copies 1, 2, ... in turn),
spread over the training table: augmentation draws each transform with its probability per copy,
so a few clips would time a few draws."""


@dataclass
class Stage:
    """One stage of the grid and its estimated wall time.

    Attributes:
        name: what it is, e.g. ``"train regnetx_002 (5 folds x 15 epochs)"``.
        seconds: the estimate in seconds (0 when nothing is left to do).
        basis: how the estimate was made, e.g. ``"0.21 s per step x 37 steps x 15 epochs x 5 folds"``.
    """

    name: str
    seconds: float
    basis: str


def estimate(recipe: Recipe, entries: list[str] | None = None, folds: list[int] | None = None, force: bool = False) -> list[Stage]:
    """The stages the grid :func:`ensemble.train.train` runs for ``entries`` (default: every entry
    of the recipe) x ``folds`` (default: all), each with its calibrated estimate (module docstring);
    with ``force`` finished runs count as to do, as the grid then re-trains them.

    Stages, in the order the grid runs them: voice embeddings (speaker normalisation's inferred
    test speakers), rendering per feature setting, training per image entry, functionals per set.

    Raises:
        CompetitionError, AudioError, BackboneError, RecipeError: as loading the competition, a clip
            or a backbone raises them (the grid would raise the same).
    """
    entries = recipe.entries() if entries is None else entries
    folds = list(range(recipe.folds.n_splits)) if folds is None else folds
    competition = comp_mod.load(recipe.competition)
    recipe = guards.speaker_norm(recipe, competition).recipe  # as the grid will train it (said there)
    train_paths, test_paths = competition.audio_paths(competition.train), competition.audio_paths(competition.test)
    todo = {e: [k for k in folds if force or not (runs.run_dir(recipe, e, k) / runs.METRICS).exists()] for e in entries}
    images = [e for e in entries if recipe.functionals_member(e) is None and todo[e]]
    tables = [recipe.functionals_member(e) for e in entries if recipe.functionals_member(e) is not None and todo[e]]
    stages = []
    given = recipe.speakers.test == "given" or (recipe.speakers.test == "auto" and competition.config.group_col in competition.test.columns)
    if recipe.speakers.norm == "speaker" and recipe.speakers.test != "pool" and not given:
        settings = {(r.features.sample_rate, r.features.trim_db) for r in [recipe.for_backbone(e) for e in images] + ([recipe] if tables else [])}
        cache = speakers.EmbeddingCache(competition.root / ".ens_cache").vectors()
        stages += [_vectors(f"embed voices at {rate} Hz", cache, test_paths, rate, trim) for rate, trim in sorted(settings)]
    rendered = {}  # data_key -> the first entry that renders it, as the grid loads each setting once
    for entry in images:
        rendered.setdefault(data_mod.data_key(recipe.for_backbone(entry)), entry)
    stages += [_rendering(recipe.for_backbone(entry), entry, competition.root, train_paths, test_paths) for entry in rendered.values()]
    n_train, timed = len(competition.train), {}
    for entry in images:
        stages.append(_training(recipe.for_backbone(entry), entry, len(todo[entry]), n_train, len(test_paths), len(competition.classes), timed))
    sets = dict.fromkeys(m.set for m in tables)
    cache = functionals.FunctionalsCache(competition.root / ".ens_cache", recipe.runtime.threads, recipe.paths.weights_dir)
    f = recipe.features
    stages += [_vectors(f"functionals {name}", cache.cache(name), train_paths + test_paths, f.sample_rate, f.trim_db) for name in sets]
    return stages


def describe(stages: list[Stage]) -> str:
    """The plan as lines for a terminal: each stage with its estimate and basis, then the total."""
    lines = [f"  {s.name}: {_minutes(s.seconds)} ({s.basis})" for s in stages]
    total = sum(s.seconds for s in stages)
    return "\n".join(["plan (estimated on this machine; work already done left out):", *lines, f"  total: {_minutes(total)}"])


def _minutes(seconds: float) -> str:
    return f"~{seconds / 60:.1f} min" if seconds >= 60 else f"~{seconds:.0f} s"


def _vectors(name: str, cache, paths: list, sample_rate: int, trim_db: float) -> Stage:
    """A vector cache's stage (functionals or voice embeddings): missing clips x one clip's seconds."""
    missing = cache.missing(paths, sample_rate, trim_db)
    if not missing:
        return Stage(name, 0.0, f"all {len(paths)} clips cached")
    per_clip = cache.seconds_per_clip(missing[0], sample_rate, trim_db)
    return Stage(name, per_clip * len(missing), f"{per_clip:.3f} s per clip x {len(missing)} clips")


def _rendering(recipe: Recipe, entry: str, root, train_paths: list, test_paths: list) -> Stage:
    """Rendering one feature setting (clean clips and augmented copies) into the feature cache."""
    f, a = recipe.features, recipe.augment
    name = f"render {'images' if f.frontend == 'image' else f.frontend + ' log-mel'} for {entry} ({1 + a.copies} versions of each training clip)"
    cache = features.FeatureCache(root / ".ens_cache", f)
    paths, copies = data_mod.cache_rows(train_paths, test_paths, a.copies)
    missing = cache.missing(paths, copies, a)
    if not missing:
        return Stage(name, 0.0, f"all {len(paths)} images cached")
    n_aug = sum(1 for i in missing if copies[i])
    sample = train_paths[:: max(1, len(train_paths) // SAMPLE)][:SAMPLE]
    clean = _timed(lambda: [features.load_waveform(p, f) for p in sample]) / len(sample)
    augmented = _timed(lambda: [features.load_waveform(p, f, a, 1 + i % a.copies) for i, p in enumerate(sample)]) / len(sample) if n_aug else 0.0
    waveforms = [features.load_waveform(p, f) for p in sample]
    features.model_inputs(waveforms, f)  # warm-up: filter banks, first allocation
    render = _timed(lambda: features.model_inputs(waveforms, f)) / len(sample)
    pool = n_aug >= features.FeatureCache.POOL_MIN_AUGMENTED and not recipe.runtime.workers
    workers = recipe.runtime.workers or ((os.cpu_count() or 1) if pool else 1)
    seconds = (len(missing) - n_aug) * (clean + render) + n_aug * (augmented / workers + render)
    return Stage(
        name,
        seconds,
        f"{len(missing) - n_aug} clean x {clean + render:.3f} s + {n_aug} augmented x ({augmented:.3f} s / {workers} worker(s) + {render:.3f} s)",
    )


def _training(recipe: Recipe, entry: str, n_folds: int, n_train: int, n_test: int, n_classes: int, timed: dict) -> Stage:
    """Training ``n_folds`` folds of one image entry: timed steps x the steps its folds take.
    ``timed`` holds the step timings already taken, by model and input: the seeds and pseudo
    rounds of one model are timed once."""
    t = recipe.train
    kind = "students" if pseudo_round(entry)[1] else "folds"
    name = f"train {entry} ({n_folds} {kind} x {t.epochs} epochs)"
    key = (split_backbone(entry)[0], recipe.features.key(), t.batch_size)
    if key not in timed:
        timed[key] = _step_seconds(recipe, entry, n_classes)
    step, forward = timed[key]
    k = recipe.folds.n_splits
    per_fold_train = n_train * (k - 1) // k
    steps = max(1, per_fold_train // min(t.batch_size, per_fold_train))
    passes = 1 + len(t.tta_shifts)
    evaluations = math.ceil((n_train - per_fold_train) / loop.PREDICT_BATCH) * t.epochs + math.ceil(n_test / loop.PREDICT_BATCH)
    per_fold = steps * t.epochs * step + evaluations * passes * forward
    return Stage(
        name,
        per_fold * n_folds,
        f"{step:.2f} s per step x {steps} steps x {t.epochs} epochs + {evaluations * passes} evaluation batches x {forward:.2f} s, per fold",
    )


def _step_seconds(recipe: Recipe, entry: str, n_classes: int) -> tuple[float, float]:
    """Seconds of one training step (forward, backward, AdamW) of a ``[train].batch_size`` batch of
    the entry's input shape ``(batch, channels, height, frames)``, the fastest of two after a
    warm-up, and of one evaluation forward pass of :data:`ensemble.loop.PREDICT_BATCH` images, on the recipe's device."""
    import torch

    f, t = recipe.features, recipe.train
    device = runtime.resolve_device(recipe.runtime.device)
    model = runtime.to_device(models.build(recipe, entry, n_classes), device)
    shape = (len(f.channels), f.height, features.frames(f))
    x = runtime.batch_to(np.random.default_rng(0).random((t.batch_size, *shape), dtype=np.float32), device)
    y = torch.randint(0, n_classes, (t.batch_size,), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr)
    model.train()

    def step():
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    times = [_timed(step) for _ in range(3)][1:]
    model.eval()
    batch = runtime.batch_to(np.random.default_rng(1).random((loop.PREDICT_BATCH, *shape), dtype=np.float32), device)
    with torch.inference_mode():
        model(batch)
        forward = _timed(lambda: model(batch))
    return min(times), forward


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started
