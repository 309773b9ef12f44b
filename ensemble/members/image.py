"""The image kind: timm backbones (ImageNet-pretrained, or AudioSet-pretrained on their own
frontend's log-mel) fine-tuned on the cached feature images of their setting.

Its input is the images of a feature setting (``recipe.for_backbone(entry).features``: the recipe's
``[features]``, or an AudioSet backbone's own frontend), loaded once per setting per grid
(:func:`ensemble.members.data.load_data`) so one recipe mixes ImageNet and AudioSet backbones; a run is
:func:`ensemble.members.image_fit.train_fold`, handed to the grid's executor (:mod:`ensemble.deploy.executors`);
the plan times its rendering and a few training steps; a loaded member renders and predicts
waveforms (:class:`ImageMember`), in torch or as its exported graph (:mod:`ensemble.deploy.engines`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..core import tasks
from ..core.entry import Entry
from ..core.errors import EnsError
from ..core.recipe import Recipe
from ..deploy.engines import INPUT, SAVERS, SUFFIX, MemberGraph, graph_runs
from ..deploy.executors import Job
from ..inputs import features
from ..speaker import speaker_groups, speakers
from ..store import runs
from . import data as data_mod
from . import loop, models, runtime
from .data import Data, data_key, load_data
from .image_fit import finished_run, train_fold
from .kind import Kind, Outcome, Session, Stage, timed

SAMPLE = 8
"""Training clips timed per rendering calibration (clean, and augmented with copies 1, 2, ... in turn),
spread over the training table: augmentation draws each transform with its probability per copy,
so a few clips would time a few draws."""


class ImageMemberError(EnsError, ValueError):
    """A finished image run whose weights do not load into its backbone."""


def _record(session: Session, data: Data) -> None:
    """Write what loading found: ``skipped.csv`` in the run store (or remove a stale one) and the test
    speakers next to the competition, each also told to the grid's listener."""
    session.record_skipped(data)
    if data.test_speakers is not None:
        speaker_groups.write(data.competition, data.test_speakers)
        session.event("speakers", data.test_speakers.describe())


@dataclasses.dataclass
class ImageMember:
    """An image member loaded for prediction (:class:`ensemble.members.kind.Loaded`).

    Attributes:
        made_with: the recipe its runs were trained with (``[features]``, ``[train].tta_shifts``).
        models: its fold models of every seed in eval mode on ``device``, or its one exported graph
            (:class:`ensemble.deploy.engines.ExportedModel`, which gives the mean of its models' activations itself).
        population: the training population's statistics when it was trained speaker-normalised, else None.
        device: where the models run. activation: the task's, or None for an exported graph (already applied).
    """

    made_with: Recipe
    models: list
    population: speakers.Statistics | None
    device: torch.device
    activation: Callable[[torch.Tensor], torch.Tensor] | None

    @property
    def duration(self) -> float:
        """The clip length in seconds it was trained on (a window of a longer file at most)."""
        return self.made_with.features.duration

    def predict(self, clips: Sequence[np.ndarray], speaker_clips: Sequence[np.ndarray] | None, shared: dict, batch_size: int) -> np.ndarray:
        """The mean of its models' activations ``(len(clips), classes)`` with its time-shift TTA
        (:func:`ensemble.members.loop.predict`). Clips are rendered with its ``[features]``
        (:func:`ensemble.inputs.features.model_inputs`) once per feature setting among the members of one
        call (``shared``), and speaker-normalised as its runs were (:func:`ensemble.speaker.speaker_groups.normalise_with`)."""
        config = self.made_with.features
        rendered = shared.setdefault("rendered", {})
        if config.key() not in rendered:
            rendered[config.key()] = features.model_inputs(clips, config)
        images = rendered[config.key()]
        if self.population is not None:
            images = self._normalised(images, speaker_clips, shared.setdefault("normalised", {}))
        shifts, precision = self.made_with.train.tta_shifts, runtime.precision_on(self.made_with.train, self.device)
        activation = self.activation or _as_is
        probas = [loop.predict(model, images, self.device, activation, batch_size, shifts=shifts, precision=precision) for model in self.models]
        return np.mean(probas, axis=0)

    def _normalised(self, images: np.ndarray, speaker_clips: Sequence[np.ndarray] | None, done: dict[str, list]) -> np.ndarray:
        """``images`` speaker-normalised with the training population (the images of ``speaker_clips``
        as the speaker's reference when given), once per feature setting and population (``done``):
        members that share both share the result."""
        config, population = self.made_with.features, self.population
        for seen, out in done.setdefault(config.key(), []):
            if np.array_equal(seen.mean, population.mean) and np.array_equal(seen.std, population.std):
                return out
        reference = None if speaker_clips is None else features.model_inputs(speaker_clips, config)
        out, _ = speaker_groups.normalise_with(images, reference, population)
        done[config.key()].append((population, out))
        return out


def _as_is(proba: torch.Tensor) -> torch.Tensor:
    """An exported member graph's output as it is: it already holds the mean of the activations (:class:`ensemble.deploy.engines.MemberGraph`)."""
    return proba


class ImageKind(Kind):
    """Entries of ``backbones``: every entry no other kind owns."""

    name = "image"

    def owns(self, recipe: Recipe, entry: Entry) -> bool:
        return recipe.functionals_member(str(entry)) is None

    def reads_at(self, recipe: Recipe, entry: str) -> tuple[int, float]:
        f = recipe.for_backbone(entry).features
        return f.sample_rate, f.trim_db

    def train(self, session: Session, entries: list[str]) -> Iterator[Outcome]:
        """Each entry's runs of ``session.folds`` on its feature setting's data (loaded once per grid,
        its skipped clips and test speakers recorded), the unfinished ones by ``session.executor``."""
        recipe = session.recipe
        settings = {entry: data_key(recipe.for_backbone(entry)) for entry in entries}

        def data_of(entry: str) -> Data:
            key = settings[entry]
            if key not in session.loaded:
                session.loaded[key] = load_data(recipe.for_backbone(entry), progress=session.progress, on_error=session.on_error)
                _record(session, session.loaded[key])
            return session.loaded[key]

        grid = []  # (entry, fold, finished metrics or None, job to run or None)
        for entry in entries:
            data = data_of(entry)
            for k in session.folds:
                extra = session.pseudo(entry, k)
                done = None if session.force else finished_run(recipe, data, entry, k, extra)
                if not done and not session.resume and (runs.run_dir(recipe, entry, k) / runs.CHECKPOINT).exists():
                    session.event("afresh", f"{entry} fold {k}")
                job = None if done else Job(recipe, entry, k, session.force, session.resume, session.progress, extra, session.on_error, train_fold, load_data)
                grid.append((entry, k, done, job))
        reports = session.executor.map([job for *_, job in grid if job is not None], data_of)
        for entry, k, done, _ in grid:
            yield Outcome(entry, k, done or next(reports), done is not None)

    def stages(self, recipe: Recipe, competition, todo: dict[str, list[int]]) -> list[Stage]:
        """Rendering per feature setting (each once, as the grid loads it), then training per entry."""
        train_paths, test_paths = competition.audio_paths(competition.train), competition.audio_paths(competition.test)
        entries = [e for e, folds in todo.items() if folds]
        rendered = {}  # data_key -> the first entry that renders it
        for entry in entries:
            rendered.setdefault(data_key(recipe.for_backbone(entry)), entry)
        stages = [_rendering(recipe.for_backbone(entry), entry, competition.root, train_paths, test_paths) for entry in rendered.values()]
        timed_steps = {}
        for entry in entries:
            stages.append(
                _training(recipe.for_backbone(entry), entry, len(todo[entry]), len(competition.train), len(test_paths), len(competition.classes), timed_steps)
            )
        return stages

    def detail(self, metrics: dict) -> str:
        return f"epoch {metrics['epoch']}"

    def trained(self, run: Path) -> bool:
        return (run / runs.MODEL).is_file()

    def load(
        self, recipe: Recipe, member: runs.Member, made_with: Recipe, trained: list[tuple[str, int, Path]], classes: list[str], device, exported
    ) -> ImageMember:
        """Its fold models (:func:`ensemble.members.models.build` with ``pretrained=False``, ``model.safetensors``
        loaded strictly), or with ``exported`` its one graph.

        Raises:
            ImageMemberError: a run's weights or speaker statistics do not load. ExportError: the export
                has no graph of it, or a stale one.
        """
        entry, fold, run = trained[0]
        population = _population(run, member.fix(entry, fold)) if made_with.speakers.norm == "speaker" else None
        if exported is not None:
            return ImageMember(made_with, [exported.member(member.name, trained)], population, device, None)
        fold_models = []
        for entry, fold, run in trained:
            model = models.build(made_with, entry, len(classes))
            try:
                model.load_state_dict(load_file(run / runs.MODEL))
            except (RuntimeError, SafetensorError) as err:
                raise ImageMemberError(f"{run / runs.MODEL} does not load into {entry} ({str(err)[:200]}); {member.fix(entry, fold)}.") from err
            fold_models.append(runtime.to_device(model, device).eval())
        return ImageMember(made_with, fold_models, population, device, tasks.get(recipe.competition.task).activation)

    def export(self, loaded: ImageMember, member: runs.Member, out: Path, fmt: str, on_model) -> dict:
        """One graph of the member's models (:class:`ensemble.deploy.engines.MemberGraph`) with its input shape and the SHA-1 of each run's weights."""
        f = loaded.made_with.features
        silence = np.zeros(features.samples(f), dtype=np.float32)
        example = torch.from_numpy(np.repeat(features.model_inputs([silence], f), 2, axis=0).astype(np.float32))
        path = out / f"{member.name}{SUFFIX[fmt]}"
        task = tasks.get(loaded.made_with.competition.task)
        SAVERS[fmt](MemberGraph(loaded.models, task.activation).eval(), example, path)
        if on_model is not None:
            on_model(path)
        graph_input = {"name": INPUT, "shape": ["batch", *example.shape[1:]], "dtype": "float32"}
        return {"kind": self.name, "file": path.name, "input": graph_input, "runs": graph_runs(member)}


def _population(run: Path, fix: str) -> speakers.Statistics:
    """The training population's statistics a speaker-normalised run saved (``speaker_population.npz``).

    Raises:
        ImageMemberError: the file is missing or unreadable.
    """
    try:
        return speakers.load_statistics(run / runs.POPULATION)
    except (OSError, KeyError, ValueError) as err:
        raise ImageMemberError(f"{run / runs.POPULATION} cannot be read ({err}); the speaker-normalised run is damaged: {fix}.") from err


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
    clean = timed(lambda: [features.load_waveform(p, f) for p in sample]) / len(sample)
    augmented = timed(lambda: [features.load_waveform(p, f, a, 1 + i % a.copies) for i, p in enumerate(sample)]) / len(sample) if n_aug else 0.0
    waveforms = [features.load_waveform(p, f) for p in sample]
    features.model_inputs(waveforms, f)  # warm-up: filter banks, first allocation
    render = timed(lambda: features.model_inputs(waveforms, f)) / len(sample)
    pool = n_aug >= features.FeatureCache.POOL_MIN_AUGMENTED and not recipe.runtime.workers
    workers = recipe.runtime.workers or ((os.cpu_count() or 1) if pool else 1)
    seconds = (len(missing) - n_aug) * (clean + render) + n_aug * (augmented / workers + render)
    return Stage(
        name,
        seconds,
        f"{len(missing) - n_aug} clean x {clean + render:.3f} s + {n_aug} augmented x ({augmented:.3f} s / {workers} worker(s) + {render:.3f} s)",
    )


def _training(recipe: Recipe, entry: str, n_folds: int, n_train: int, n_test: int, n_classes: int, timed_steps: dict) -> Stage:
    """Training ``n_folds`` folds of one image entry: timed steps x the steps its folds take.
    ``timed_steps`` holds the step timings already taken, by model and input: the seeds and pseudo
    rounds of one model are timed once."""
    t = recipe.train
    parsed = Entry.parse(entry)
    name = f"train {entry} ({n_folds} {'students' if parsed.round else 'folds'} x {t.epochs} epochs)"
    key = (parsed.model, recipe.features.key(), t.batch_size)
    if key not in timed_steps:
        timed_steps[key] = _step_seconds(recipe, entry, n_classes)
    step, forward = timed_steps[key]
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
    warm-up, and of one evaluation forward pass of :data:`ensemble.members.loop.PREDICT_BATCH` images, on the recipe's device."""
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

    times = [timed(step) for _ in range(3)][1:]
    model.eval()
    batch = runtime.batch_to(np.random.default_rng(1).random((loop.PREDICT_BATCH, *shape), dtype=np.float32), device)
    with torch.inference_mode():
        model(batch)
        forward = timed(lambda: model(batch))
    return min(times), forward
