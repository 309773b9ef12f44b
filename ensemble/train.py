"""Fine-tune one (backbone, fold) and write its run folder.

``runs/<recipe>/<backbone>/fold<K>/`` receives, each file written atomically:

- ``config.json``: the recipe, backbone, fold, classes and a hash of the fold assignment;
- ``model.safetensors``: the selected epoch's weights (best fold metric, or last);
- ``log.csv``: one row per epoch (train loss, validation loss and scores, learning rate, training
  images per second with augmentation included, seconds);
- ``oof.csv``: ``id, fold`` and one probability column per class, for the fold's validation clips;
- ``test.csv``: ``id`` and one probability column per class, for every test clip;
- ``checkpoint.pt``: while the run is unfinished, everything needed to continue it after the
  last finished epoch (``ens train --resume``) but the best weights, which ``model.safetensors``
  holds; deleted when the run finishes;
- ``metrics.json``: the task's report of the OOF predictions (:func:`ensemble.metrics.for_task`). Written last: a run
  folder with ``metrics.json`` is finished, and ``ens train`` skips it unless forced.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import random
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from sklearn.utils.class_weight import compute_class_weight
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import nn
from tqdm.auto import tqdm

from . import atomic, features, metrics, models, multilabel
from . import competition as comp_mod
from .augment import image_pipeline, mixup, spec_augment
from .errors import EnsError, OptionError
from .recipe import Recipe, RecipeError, TrainConfig, from_dict, split_backbone

ON_ERROR = ("fail", "skip")  # what load_data and predict.predict do with clips that cannot be loaded (--on-error)


def check_on_error(on_error: str) -> None:
    """Refuse an unknown policy for clips that cannot be loaded (``--on-error``).

    Raises:
        OptionError: ``on_error`` is not one of :data:`ON_ERROR` (``fail``, ``skip``).
    """
    if on_error not in ON_ERROR:
        raise OptionError(f"on_error={on_error!r}: use one of {ON_ERROR}.")


class RunConflictError(EnsError, RuntimeError):
    """A finished run (or a checkpoint to resume) exists with a different configuration; it is never overwritten silently."""


class SkippedClipsWarning(UserWarning):
    """Clips that cannot be loaded were skipped (``on_error="skip"``); the list is in ``skipped.csv``."""


@dataclass
class Data:
    """Everything a fold needs, loaded once for all folds and backbones of a recipe.

    Attributes:
        competition: the loaded competition folder.
        folds: ``id, fold`` aligned with ``competition.train``.
        x_train: float16 ``(n_train, channels, height, frames)`` images in [0, 1].
        x_test: float16 ``(n_test, channels, height, frames)``.
        y: int64 ``(n_train,)`` labels.
        x_aug: float16 ``(copies, n_train, channels, height, frames)`` augmented renderings of the
            training clips (``[augment].copies``), or None.
        skipped: the clips left out because they cannot be loaded (``on_error="skip"``): columns
            ``table`` (train or test), ``id``, ``path``, ``error``. Skipped training rows are not
            in ``competition.train``, ``folds`` or ``y``; skipped test rows stay (a submission
            needs every id) and are predicted as :attr:`prior`, see :meth:`fill_skipped`.
    """

    competition: comp_mod.Competition
    folds: pd.DataFrame
    x_train: np.ndarray
    x_test: np.ndarray
    y: np.ndarray
    x_aug: np.ndarray | None = None
    skipped: pd.DataFrame = dataclasses.field(default_factory=lambda: pd.DataFrame(columns=["table", "id", "path", "error"]))

    @functools.cached_property
    def folds_hash(self) -> str:
        """SHA-1 of the fold assignment; runs of one blend must share it. Computed on first use and
        kept (``folds`` is not changed after loading: :func:`_skip` makes a new :class:`Data`)."""
        return hashlib.sha1(self.folds.to_csv(index=False).encode()).hexdigest()

    @property
    def prior(self) -> np.ndarray:
        """Class frequencies of the training labels ``(classes,)``: what a skipped test clip is predicted
        (multilabel: each class's label rate)."""
        if self.competition.multilabel:
            return np.asarray(self.y, dtype=np.float64).mean(axis=0)
        return np.bincount(self.y, minlength=len(self.competition.classes)) / len(self.y)

    def fill_skipped(self, proba: np.ndarray) -> np.ndarray:
        """``proba`` ``(n_test, classes)`` with the rows of skipped test clips set to :attr:`prior`."""
        ids = self.skipped.loc[self.skipped["table"] == "test", "id"]
        if len(ids):
            proba = proba.copy()
            proba[self.competition.test[self.competition.config.id_col].isin(ids).to_numpy()] = self.prior
        return proba


def load_data(recipe: Recipe, progress: bool = True, on_error: str = "fail") -> Data:
    """Load the competition, its folds (made on first use) and the cached feature images.

    Every image comes from one :meth:`ensemble.features.FeatureCache.get` call (training clips,
    test clips, then each augmented copy of the training clips), so a fresh cache is built in one
    pass and the arrays are views of its memory map, not copies in RAM. Rendering runs on
    ``[train].device``.

    Args:
        progress: report a render of missing images: a bar on a terminal, else one line when it
            is done (see :meth:`ensemble.features.FeatureCache.get`); False reports nothing.
        on_error: ``fail`` (default) refuses clips that do not exist or cannot be loaded, listing
            each file and its problem; ``skip`` leaves them out (see :attr:`Data.skipped`), writes
            their list to ``<runs_dir>/<recipe>/skipped.csv`` and warns (:class:`SkippedClipsWarning`).

    Raises:
        CompetitionError: a bad table (see :func:`ensemble.competition.load`), or under ``skip`` a
            fold or the training set left empty. AudioError: under ``fail``, clips that cannot be loaded.
        OptionError: ``on_error`` is not ``fail`` or ``skip``.
    """
    check_on_error(on_error)
    competition = comp_mod.load(recipe.competition)
    folds = comp_mod.folds(competition, recipe.folds)
    cache = features.FeatureCache(competition.root / ".ens_cache", recipe.features)
    train_paths = competition.audio_paths(competition.train)
    test_paths = competition.audio_paths(competition.test)
    n_train, n_test, copies = len(train_paths), len(test_paths), recipe.augment.copies
    paths = train_paths + test_paths + train_paths * copies
    variant = [0] * (n_train + n_test) + [k for k in range(1, copies + 1) for _ in range(n_train)]
    options = {"copies": variant, "augment": recipe.augment, "progress": progress, "device": resolve_device(recipe.train.device)}
    images, failed = cache.get_skipping(paths, **options) if on_error == "skip" else (cache.get(paths, **options), {})
    x_aug = images[n_train + n_test :].reshape(copies, n_train, *images.shape[1:]) if copies else None
    data = Data(competition, folds, images[:n_train], images[n_train : n_train + n_test], competition.y, x_aug)
    return _skip(recipe, data, failed, paths) if failed else data


def _skip(recipe: Recipe, data: Data, failed: dict[int, str], paths: list) -> Data:
    """``data`` without the training rows whose clean or augmented clip failed (``failed``: position
    in ``paths`` -> problem; ``paths`` as :func:`load_data` lays them out: train, test, then each
    augmented copy of train), the failures listed in :attr:`Data.skipped` and ``skipped.csv``."""
    comp = data.competition
    n_train, n_test, id_col = len(comp.train), len(comp.test), comp.config.id_col
    problems: dict[tuple[str, int], str] = {}
    for i, message in sorted(failed.items()):  # one entry per clip, its first problem: clean renderings come first
        clip = ("train", i) if i < n_train else ("test", i - n_train) if i < n_train + n_test else ("train", (i - n_train - n_test) % n_train)
        problems.setdefault(clip, message)
    train_bad = sorted(row for table, row in problems if table == "train")
    test_bad = sorted(row for table, row in problems if table == "test")
    skipped = pd.DataFrame(
        [{"table": "train", "id": comp.train[id_col].iloc[i], "path": str(paths[i]), "error": problems["train", i]} for i in train_bad]
        + [{"table": "test", "id": comp.test[id_col].iloc[i], "path": str(paths[n_train + i]), "error": problems["test", i]} for i in test_bad],
        columns=["table", "id", "path", "error"],
    )
    keep = np.setdiff1d(np.arange(n_train), train_bad)
    if not len(keep):
        raise comp_mod.CompetitionError(
            f"none of the {n_train} training clips of {comp.root / comp_mod.TRAIN} can be loaded; see the errors with --on-error fail."
        )
    folds = data.folds.iloc[keep].reset_index(drop=True)
    empty = sorted(set(range(recipe.folds.n_splits)) - set(folds["fold"]))
    if empty:
        raise comp_mod.CompetitionError(
            f"skipping {len(train_bad)} unloadable training clips leaves fold(s) {empty} empty; fix the files or lower [folds].n_splits."
        )
    kept = dataclasses.replace(comp, train=comp.train.iloc[keep].reset_index(drop=True))
    out = Path(recipe.runs_dir) / recipe.name / "skipped.csv"
    atomic.write_csv(out, skipped)
    warnings.warn(
        f"skipped {len(train_bad)} training and {len(test_bad)} test clip(s) that cannot be loaded (listed in {out}); "
        "the test clips are predicted as the training prior.",
        SkippedClipsWarning,
        stacklevel=3,
    )
    x_aug = None if data.x_aug is None else data.x_aug[:, keep]
    return Data(kept, folds, data.x_train[keep], data.x_test, kept.y, x_aug, skipped)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator for shuffling."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


class Normalize(nn.Module):
    """Wraps a backbone: ``(x - mean) / std`` with the backbone's pretraining statistics, then the backbone."""

    def __init__(self, backbone: nn.Module, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(batch, channels, height, frames)`` in [0, 1] -> logits ``(batch, classes)``."""
        return self.backbone((x - self.mean) / self.std)


def build_model(recipe: Recipe, backbone: str, num_classes: int) -> Normalize:
    """The backbone (:func:`ensemble.models.create`) wrapped with its input normalisation;
    ``backbone`` is a ``backbones`` entry, ``name`` or ``name@seed`` (both build timm model ``name``).

    Raises:
        RecipeError: a malformed entry. BackboneError: see :func:`ensemble.models.create`.
    """
    in_chans = len(recipe.features.channels)
    t = recipe.train
    extra = {k: v for k, v in (("drop_rate", t.drop_rate), ("drop_path_rate", t.drop_path_rate)) if v > 0}
    net = models.create(split_backbone(backbone)[0], num_classes, in_chans=in_chans, pretrained=t.pretrained, weights=t.weights_dir or None, **extra)
    return Normalize(net, *models.normalization(net, in_chans))


def to_device(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` on ``device`` in channels_last memory order, the order :func:`_to_device` gives
    the images. On this project's 2-core CPU the five ImageNet backbones trained 1.3x to 1.6x
    faster channels_last than in the default order (``benchmarks/train_step.py``, docs/benchmarks.md)."""
    return model.to(device, memory_format=torch.channels_last)


def _to_device(x: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """float32 ``x`` on ``device`` in channels_last order; on CUDA copied from pinned memory without blocking."""
    batch = torch.from_numpy(np.asarray(x, dtype=np.float32)) if isinstance(x, np.ndarray) else x
    if device.type == "cuda" and not batch.is_pinned():
        batch = batch.pin_memory()
    return channels_last(batch.to(device, non_blocking=True))


def channels_last(batch: torch.Tensor) -> torch.Tensor:
    """``batch`` ``(batch, channels, height, frames)`` in channels_last memory order (the models' order, :func:`to_device`)."""
    return batch.contiguous(memory_format=torch.channels_last)


def precision_on(t: TrainConfig, device: torch.device) -> str:
    """The autocast precision of a run on ``device``: ``[train].precision`` on CUDA,
    ``[train].cpu_precision`` on CPU."""
    return t.precision if device.type == "cuda" else t.cpu_precision


def autocast(device: torch.device, precision: str = "fp32") -> torch.autocast:
    """bf16 or fp16 autocast on ``device`` (:func:`precision_on` gives a run's); disabled for fp32."""
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=precision != "fp32")


def ahead(jobs: Sequence[tuple], fn) -> Iterator:
    """``fn(*job)`` for each job, in order, each computed in a background thread while the caller
    works on the previous result: the next training batch is gathered, augmented and pinned
    while the model trains on this one. One thread, so results are made in the jobs' order and a
    seeded augmentation draws the same numbers as without prefetching."""
    if not jobs:
        return
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(fn, *jobs[0])
        for job in jobs[1:]:
            result = pending.result()
            pending = pool.submit(fn, *job)
            yield result
        yield pending.result()


@torch.inference_mode()
def predict(
    model: nn.Module, x: np.ndarray, device: torch.device, batch_size: int = 64, multilabel: bool = False, shifts: Sequence[float] = (), precision: str = "fp32"
) -> np.ndarray:
    """Probabilities ``(n, classes)`` of images ``x`` ``(n, channels, height, frames)``: softmax,
    or with ``multilabel`` one sigmoid per class, in batches of ``batch_size`` images, under the
    :func:`autocast` of ``precision`` (a run's is :func:`precision_on`).

    With ``shifts`` (``[train].tta_shifts``: fractions of the frame axis) this is time-shift
    test-time augmentation: the mean of the probabilities of each image and of the image rolled
    circularly along time (the last axis, ``torch.roll``) by ``round(shift * frames)`` frames for
    each shift, ``1 + len(shifts)`` forward passes per image.
    """
    model.eval()
    rolls = [0, *(round(s * x.shape[-1]) for s in shifts)]
    out = []
    for start in range(0, len(x), batch_size):
        batch = _to_device(x[start : start + batch_size], device)
        total = 0
        for frames in rolls:
            shifted = channels_last(torch.roll(batch, frames, dims=-1)) if frames else batch
            with autocast(device, precision):
                logits = model(shifted).float()
            total = total + (logits.sigmoid() if multilabel else logits.softmax(dim=1))
        out.append((total / len(rolls)).cpu())
    return torch.cat(out).numpy().astype(np.float64)


def gather(data: Data, idx: np.ndarray, variant: np.ndarray | None) -> np.ndarray:
    """Training images ``(len(idx), channels, height, frames)`` float32: for each row the clean
    rendering (variant 0, or ``variant`` None) or augmented copy ``variant`` (1..copies), each row
    read once from the (memory-mapped) cache."""
    if variant is None:
        return np.asarray(data.x_train[idx], dtype=np.float32)
    out = np.empty((len(idx), *data.x_train.shape[1:]), dtype=np.float32)
    for k in range(len(data.x_aug) + 1):
        chosen = variant == k
        if chosen.any():
            out[chosen] = (data.x_train if k == 0 else data.x_aug[k - 1])[idx[chosen]]
    return out


def class_weights(recipe: Recipe, y: np.ndarray, num_classes: int) -> torch.Tensor | None:
    """Loss weights ``(classes,)`` from ``[train].class_weights``: ``balanced`` gives
    ``n / (classes * count)`` over ``y`` (scikit-learn's ``compute_class_weight``).

    Raises:
        RecipeError: ``given`` weights of the wrong length, or a class absent from ``y`` under ``balanced``.
    """
    t = recipe.train
    if t.class_weights == "none":
        return None
    if t.class_weights == "given":
        if len(t.class_weight_values) != num_classes:
            raise RecipeError(f"[train].class_weight_values has {len(t.class_weight_values)} values for {num_classes} classes.")
        return torch.tensor(t.class_weight_values, dtype=torch.float32)
    counts = np.bincount(y, minlength=num_classes)
    if (counts == 0).any():
        raise RecipeError("[train].class_weights = 'balanced' needs every class in the training folds.")
    return torch.tensor(compute_class_weight("balanced", classes=np.arange(num_classes), y=y), dtype=torch.float32)


def proba_frame(ids, proba: np.ndarray, classes: list[str], **extra) -> pd.DataFrame:
    """A probability table as runs and blends write it: ``id``, then the ``extra`` columns, then
    one column per class of ``proba`` ``(rows, classes)``."""
    frame = pd.DataFrame(proba, columns=classes)
    frame.insert(0, "id", list(ids))
    for pos, (name, values) in enumerate(extra.items(), start=1):
        frame.insert(pos, name, values)
    return frame


_NOT_TRAINING = ("name", "backbones", "runs_dir", "submissions_dir", "blend")
_RUNTIME = {"competition": ("dir", "audio_root"), "train": ("device", "weights_dir")}
"""Settings that place or run a recipe on a machine and change no number a model computes: where
the competition folder and its audio are (the run identity keeps the classes and the fold
assignment's hash instead), the device and the weights folder."""


def _training_settings(recipe: Recipe) -> dict:
    """The recipe's settings that shape a run's numbers: not its name, backbone list, output folders,
    blend, or its machine settings (:data:`_RUNTIME`)."""
    settings = recipe.to_dict()
    for key in _NOT_TRAINING:
        settings.pop(key)
    for section, keys in _RUNTIME.items():
        for key in keys:
            settings[section].pop(key)
    return settings


def run_config(recipe: Recipe, data: Data, backbone: str, fold: int) -> dict:
    """What a run is defined by; a finished run with another config is a conflict. ``backbone``
    is a ``backbones`` entry: the settings are :meth:`Recipe.for_backbone`'s (its seed for ``name@S``).

    Renaming a recipe, editing its backbone list, its output folders or its ``[blend]``, moving the
    competition folder, or training on another device or from another weights folder leaves finished
    runs valid; every other setting (features, augmentation, training, precision, seed) is part of it.
    """
    return {
        "recipe": _training_settings(recipe.for_backbone(backbone)),
        "backbone": backbone,
        "fold": fold,
        "classes": data.competition.classes,
        "folds_hash": data.folds_hash,
    }


def finished_run(recipe: Recipe, data: Data, backbone: str, fold: int) -> dict | None:
    """The ``metrics.json`` of the finished run in ``recipe.run_dir(backbone, fold)``, or None if
    there is none (a run without ``metrics.json`` is unfinished).

    Raises:
        RunConflictError: the finished run was made with another configuration.
    """
    return _finished(recipe.run_dir(backbone, fold), _as_stored(run_config(recipe, data, backbone, fold)))


def _as_stored(config: dict) -> dict:
    """``config`` as ``config.json`` holds it: lists, not tuples."""
    return json.loads(json.dumps(config))


def _as_today(stored: dict, source: Path) -> dict:
    """A run configuration ``stored`` by an earlier ens (in ``config.json`` or ``checkpoint.pt``,
    named by ``source``) as :func:`run_config` makes it today: its recipe is re-read through
    today's :class:`Recipe`, so settings added since take their defaults and settings no longer
    part of a run's identity (:data:`_NOT_TRAINING`) drop out."""
    return {**stored, "recipe": _training_settings(from_dict(stored["recipe"], str(source)))}


def _finished(out: Path, config: dict) -> dict | None:
    """:func:`finished_run` of the run folder ``out`` whose configuration is ``config`` (:func:`run_config`, :func:`_as_stored`)."""
    if not (out / "metrics.json").exists():
        return None
    if _as_today(json.loads((out / "config.json").read_text()), out / "config.json") != config:
        raise RunConflictError(f"{out} holds a finished run with a different configuration; pass --force to overwrite it, or give the recipe another name.")
    return json.loads((out / "metrics.json").read_text())


CHECKPOINT = "checkpoint.pt"


def _rng_state(generator: torch.Generator, images) -> dict:
    """Every random state training draws from: Python, NumPy, torch (CPU and CUDA), the shuffling
    generator and the generators of the albumentations pipeline and of each of its transforms."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "generator": generator.get_state(),
        "albumentations": [(part.random_generator.bit_generator.state, part.py_random.getstate()) for part in _random_parts(images)],
    }


def _random_parts(images) -> list:
    """The albumentations pipeline and its transforms: each holds its own generators (albumentations 2)."""
    return [] if images is None else [images, *images.transforms]


def _set_rng_state(state: dict, generator: torch.Generator, images) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator.set_state(state["generator"])
    for part, (bit_state, py_state) in zip(_random_parts(images), state["albumentations"], strict=True):
        part.random_generator.bit_generator.state = bit_state
        part.py_random.setstate(py_state)


def _save_weights(out: Path, state: dict[str, torch.Tensor], backbone: str, epoch: int) -> None:
    """Write the state dict ``state`` to ``out/model.safetensors`` atomically, with ``backbone`` and
    ``epoch`` (1-based, the epoch the weights are of) in its metadata."""
    with atomic.atomic_path(out / "model.safetensors") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp), metadata={"backbone": backbone, "epoch": str(epoch)})


def _saved_epoch(out: Path) -> int | None:
    """The epoch whose weights ``out/model.safetensors`` holds (its metadata), or None without the file."""
    if not (out / "model.safetensors").exists():
        return None
    with safe_open(out / "model.safetensors", "pt") as f:
        return int(f.metadata()["epoch"])


def _restore_best(out: Path, checkpoint: dict, evaluated: nn.Module, backbone: str) -> int:
    """Make ``out/model.safetensors`` hold the best epoch of ``checkpoint`` before a resumed run goes
    on, and return that epoch.

    ``checkpoint.pt`` is written before the weights of an improved epoch, so a run stopped between
    the two writes resumes from a checkpoint whose best epoch is its own last epoch: those weights
    are ``evaluated``'s (the model, or its EMA, restored from the checkpoint) and are written again.
    A checkpoint saved by an earlier ens carries its own copy of the best weights (``best``), which
    is written likewise.

    Raises:
        RunConflictError: ``model.safetensors`` holds another epoch than the checkpoint's best, or is missing.
    """
    if "best" in checkpoint:
        epoch = max(row["epoch"] for row in checkpoint["log"] if row["selected"])
        _save_weights(out, checkpoint["best"], backbone, epoch)
    elif (epoch := checkpoint["best_epoch"]) == checkpoint["epoch"]:
        _save_weights(out, evaluated.state_dict(), backbone, epoch)
    elif (saved := _saved_epoch(out)) != epoch:
        raise RunConflictError(
            f"{out / 'model.safetensors'} holds {'no weights' if saved is None else f'epoch {saved}'}, not epoch {epoch}, the best "
            f"epoch {out / CHECKPOINT} was saved with; train without --resume to start afresh."
        )
    return epoch


def train_fold(recipe: Recipe, data: Data, backbone: str, fold: int, force: bool = False, progress: bool = True, resume: bool = False) -> dict:
    """Fine-tune ``backbone`` (a ``backbones`` entry: timm model ``name``, or ``name@S`` trained
    with ``[train].seed = S``) on every fold but ``fold``, validate on ``fold``, write the run folder.

    Recipe ``[train]``: AdamW (timm ``create_optimizer_v2``), linear warm-up + cosine decay stepped
    per update (timm ``create_scheduler_v2``), cross-entropy with label smoothing and optional
    class weights, optional EMA of the weights (validated and saved instead of the raw weights)
    and early stopping; ``[augment]``: a random clean-or-augmented rendering per clip per epoch,
    albumentations image transforms, SpecAugment / time roll, mixup. channels_last; the autocast
    of ``[train].precision`` on CUDA and of ``[train].cpu_precision`` on CPU (:func:`precision_on`);
    ``[train].compile`` compiles the training forward pass. Seeded: the same recipe gives the same run on CPU. Validation and the saved
    ``oof.csv`` / ``test.csv`` use the time-shift TTA of ``[train].tta_shifts`` (:func:`predict`);
    skipped test clips (:attr:`Data.skipped`) are given the prior.

    After each epoch ``checkpoint.pt`` saves the model, optimizer, scheduler, EMA, gradient
    scaler, every random state, the epoch log and which epoch is the best so far (atomically);
    then, when the epoch is the new best, ``model.safetensors`` its weights (atomically, the only
    copy of them). With ``resume`` an unfinished run continues from it (see :func:`_restore_best`),
    and on CPU ends with the same predictions as an uninterrupted run; without ``resume`` (or
    without a checkpoint) the run starts afresh.

    With ``progress`` each epoch prints one line on stdout (train loss, validation loss and
    metrics, the epoch's seconds, ``*`` when selected), and while an epoch runs tqdm draws a bar
    of its batches when stderr is a terminal (or in a notebook); when stderr is not a terminal
    (``nohup``, CI, Slurm, ``> log``) no bar is drawn (tqdm's ``disable=None``), so a log gets
    the epoch lines and no bar fragments. Without ``progress`` nothing is printed.

    Returns:
        the ``metrics.json`` dict (OOF scores of the selected epoch), also when the run was
        already finished with the same config and is skipped.

    Raises:
        RunConflictError: a finished run with another config exists and ``force`` is False, or
            the checkpoint to resume was made with another config or does not match ``model.safetensors``.
        OptionError: ``fold`` is not one of the folds.
        RecipeError: a malformed ``backbone`` entry.
    """
    recipe = recipe.for_backbone(backbone)
    out = recipe.run_dir(backbone, fold)
    config = _as_stored(run_config(recipe, data, backbone, fold))
    if not force and (done := _finished(out, config)) is not None:
        return done
    n_folds = recipe.folds.n_splits
    if not 0 <= fold < n_folds:
        raise OptionError(f"fold {fold} is not one of 0..{n_folds - 1} (the recipe's [folds].n_splits = {n_folds}).")
    checkpoint = None
    if resume and (out / CHECKPOINT).exists():
        checkpoint = torch.load(out / CHECKPOINT, map_location="cpu", weights_only=False)  # written by this function
        if _as_today(checkpoint["config"], out / CHECKPOINT) != config:
            raise RunConflictError(f"{out / CHECKPOINT} was saved by a run with a different configuration; train without --resume to start afresh.")
    (out / "metrics.json").unlink(missing_ok=True)
    atomic.write_json(out / "config.json", config)

    t, classes = recipe.train, data.competition.classes
    fold_of = data.folds["fold"].to_numpy()
    train_idx, valid_idx = np.flatnonzero(fold_of != fold), np.flatnonzero(fold_of == fold)
    generator = seed_everything(t.seed)
    device = resolve_device(t.device)
    cuda = device.type == "cuda"
    precision = precision_on(t, device)
    model = to_device(build_model(recipe, backbone, len(classes)), device)

    batch_size = min(t.batch_size, len(train_idx))
    if recipe.augment.mixup_alpha > 0 and batch_size > 1:
        batch_size -= batch_size % 2  # mixup pairs each image with one in the flipped batch (timm's Mixup asserts an even batch)
    updates_per_epoch = max(1, len(train_idx) // batch_size)
    optimizer = create_optimizer_v2(model, "adamw", lr=t.lr, weight_decay=t.weight_decay)
    scheduler, _ = create_scheduler_v2(
        optimizer,
        "cosine",
        num_epochs=t.epochs,
        warmup_epochs=t.warmup_epochs,
        warmup_lr=t.lr * 0.01,
        min_lr=t.min_lr,
        step_on_epochs=False,
        updates_per_epoch=updates_per_epoch,
    )
    a = recipe.augment
    ml = data.competition.multilabel
    task_metrics = metrics.for_task(ml)
    if ml:  # one sigmoid per class; mixup takes the union of the labels
        mix = functools.partial(multilabel.union_mixup, alpha=a.mixup_alpha) if a.mixup_alpha > 0 else None
        criterion = functools.partial(multilabel.bce_loss, label_smoothing=t.label_smoothing)
    else:
        mix = mixup(a, t.label_smoothing, len(classes))
        weight = class_weights(recipe, data.y[train_idx], len(classes))
        # with mixup the targets are soft and already smoothed; CrossEntropyLoss takes them as probabilities
        criterion = nn.CrossEntropyLoss(weight=None if weight is None else weight.to(device), label_smoothing=0.0 if mix else t.label_smoothing)
    spec = spec_augment(a).to(device)
    images = image_pipeline(a.image, seed=t.seed + fold)
    copies = 0 if data.x_aug is None else len(data.x_aug)
    ema = ModelEmaV3(model, decay=t.ema_decay) if t.ema_decay > 0 else None
    y = torch.as_tensor(np.array(data.y))
    forward = torch.compile(model) if t.compile else model
    evaluated = model if ema is None else ema.module  # validated each epoch; its best weights are saved
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def batch_of(idx: np.ndarray, variant: np.ndarray | None) -> tuple[np.ndarray, torch.Tensor]:
        x = gather(data, idx, variant)
        if images is not None:
            x = np.stack([images(image=img.transpose(1, 2, 0))["image"].transpose(2, 0, 1) for img in x])
        x = torch.from_numpy(x)
        return idx, x.pin_memory() if cuda else x

    log, best_epoch, best_score, best_proba, stale, start = [], 0, -np.inf, None, 0, 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        if ema is not None:
            ema.load_state_dict(checkpoint["ema"])
        _set_rng_state(checkpoint["rng"], generator, images)
        log, best_score, best_proba, stale, start = (checkpoint[k] for k in ("log", "best_score", "best_proba", "stale", "epoch"))
        best_epoch = _restore_best(out, checkpoint, evaluated, backbone)
    desc = f"{backbone} fold {fold}"
    for epoch in range(start, t.epochs):
        if t.patience and stale >= t.patience:
            if progress:
                tqdm.write(f"{desc}: early stop, no {t.metric} gain in {t.patience} epochs")
            break
        model.train()
        spec.train()
        started = time.time()
        order = torch.randperm(len(train_idx), generator=generator).numpy()[: updates_per_epoch * batch_size].reshape(updates_per_epoch, batch_size)
        variants = torch.randint(0, copies + 1, (len(train_idx),), generator=generator).numpy() if copies else None
        jobs = [(train_idx[pos], None if variants is None else variants[pos]) for pos in order]
        losses = []
        # disable=None: no bar when stderr is not a terminal (logs get only the epoch line below)
        bar = tqdm(
            ahead(jobs, batch_of),
            total=updates_per_epoch,
            desc=f"{desc} epoch {epoch + 1}/{t.epochs}",
            unit="batch",
            leave=False,
            disable=None if progress else True,
        )
        for step, (idx, x) in enumerate(bar):
            batch, target = spec(_to_device(x, device)), y[idx].to(device, non_blocking=True)
            if mix is not None:
                batch, target = mix(batch, target)
            with autocast(device, precision):
                loss = criterion(forward(batch).float(), target)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            num_updates = epoch * updates_per_epoch + step + 1
            scheduler.step_update(num_updates)
            if ema is not None:
                ema.update(model, step=num_updates)
            losses.append(loss.detach())
            if step % 10 == 9:  # .item() waits for the device: read the loss now and then, not every step
                bar.set_postfix(loss=f"{torch.stack(losses).mean().item():.3f}")
        train_seconds = time.time() - started
        proba = predict(evaluated, data.x_train[valid_idx], device, multilabel=ml, shifts=t.tta_shifts, precision=precision)
        scores = task_metrics.scores(data.y[valid_idx], proba)
        row = {
            "epoch": epoch + 1,
            "train_loss": torch.stack(losses).mean().item(),
            **{f"valid_{k}": v for k, v in scores.items()},
            "lr": optimizer.param_groups[0]["lr"],
            "train_img_per_s": round(updates_per_epoch * batch_size / train_seconds, 1),
            "seconds": round(time.time() - started, 2),
        }
        improved = t.select == "last" or scores[t.metric] > best_score
        stale = 0 if improved else stale + 1
        if improved:
            best_epoch, best_score, best_proba = epoch + 1, scores[t.metric], proba
        row["selected"] = bool(improved)
        log.append(row)
        atomic.write_csv(out / "log.csv", pd.DataFrame(log))
        # the checkpoint first: stopped before the weights are written, it is resumed with them restored (_restore_best)
        with atomic.atomic_path(out / CHECKPOINT) as tmp:
            torch.save(
                {
                    "config": config,
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "ema": None if ema is None else ema.state_dict(),
                    "rng": _rng_state(generator, images),
                    "log": log,
                    "best_epoch": best_epoch,
                    "best_score": best_score,
                    "best_proba": best_proba,
                    "stale": stale,
                },
                tmp,
            )
        if improved:
            _save_weights(out, evaluated.state_dict(), backbone, best_epoch)
        if progress:
            shown = "  ".join(f"{k} {v:.3f}" for k, v in scores.items() if k != "log_loss")
            tqdm.write(
                f"{desc} epoch {epoch + 1}/{t.epochs}: loss {row['train_loss']:.3f}  valid loss {scores['log_loss']:.3f}  "
                f"{shown}  {row['seconds']:.1f} s{'  *' if improved else ''}"
            )

    model.load_state_dict(load_file(out / "model.safetensors"))
    train_ids = data.competition.train[data.competition.config.id_col].to_numpy()
    test_ids = data.competition.test[data.competition.config.id_col].to_numpy()
    atomic.write_csv(out / "oof.csv", proba_frame(train_ids[valid_idx], best_proba, classes, fold=fold))
    test_proba = data.fill_skipped(predict(model, data.x_test, device, multilabel=ml, shifts=t.tta_shifts, precision=precision))
    atomic.write_csv(out / "test.csv", proba_frame(test_ids, test_proba, classes))
    report = {**task_metrics.report(data.y[valid_idx], best_proba, classes), "backbone": backbone, "fold": fold, "epoch": best_epoch, "device": str(device)}
    atomic.write_json(out / "metrics.json", report)
    (out / CHECKPOINT).unlink(missing_ok=True)
    return report
