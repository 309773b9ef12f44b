"""One image member's run: a backbone fine-tuned on every fold but one (:func:`train_fold`), the
image kind's training step (:mod:`ensemble.members.image`) and what a Ray task runs (:mod:`ensemble.deploy.executors`).

A run writes its folder in the run store (:mod:`ensemble.store.runs` has the layout), each file
atomically: ``config.json`` first, ``log.csv`` and ``checkpoint.pt`` after every epoch,
``model.safetensors`` for each new best epoch (:mod:`ensemble.members.checkpoint`), then ``oof.csv``,
``test.csv`` and last ``metrics.json`` (the task's report of the OOF predictions): a run folder
with ``metrics.json`` is finished, and training skips it unless forced.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from tqdm.auto import tqdm

from ..core import atomic
from ..core.errors import RecipeError
from ..core.recipe import Recipe
from ..inputs.augment import image_pipeline, spec_augment
from ..speaker import speakers
from ..store import runs
from ..store.split import check_fold
from . import models, runtime
from .checkpoint import Checkpoint, Selection
from .data import Data
from .loop import Updater, ahead, predict, train_one_epoch
from .pseudo import PseudoLabels


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


def run_config(recipe: Recipe, data: Data, entry: str, fold: int, pseudo: PseudoLabels | None = None) -> dict:
    """:func:`ensemble.store.runs.run_config` of ``entry``'s run of ``fold`` on ``data`` (with ``pseudo``'s labels)."""
    return runs.run_config(recipe, data.competition.classes, data.folds_hash, entry, fold, pseudo=None if pseudo is None else pseudo.identity())


def finished_run(recipe: Recipe, data: Data, entry: str, fold: int, pseudo: PseudoLabels | None = None) -> dict | None:
    """The ``metrics.json`` of the finished run of ``entry`` and ``fold``, or None if it is unfinished.

    Raises:
        RunConflictError: the finished run was made with another configuration.
    """
    return runs.finished_metrics(runs.run_dir(recipe, entry, fold), run_config(recipe, data, entry, fold, pseudo))


@dataclass
class _Run:
    """Everything one run's epochs use, built by :func:`_setup` (in the order that draws the seeded random numbers)."""

    recipe: Recipe
    data: Data
    entry: str
    fold: int
    train_idx: np.ndarray
    valid_idx: np.ndarray
    pool: np.ndarray  # what an epoch draws from: the training clips, then the pseudo-labelled test clips as rows n_train + j
    generator: torch.Generator
    device: torch.device
    precision: str
    model: torch.nn.Module
    batch_size: int
    updates_per_epoch: int
    optimizer: torch.optim.Optimizer
    scheduler: object
    images: object  # the albumentations pipeline, or None
    ema: ModelEmaV3 | None
    updater: Updater
    y: torch.Tensor
    test_rows: np.ndarray | None
    selection: Selection = field(default_factory=Selection)
    start: int = 0

    @property
    def evaluated(self) -> torch.nn.Module:
        """The model validated each epoch (the EMA's when there is one): its best weights are saved."""
        return self.model if self.ema is None else self.ema.module

    @property
    def desc(self) -> str:
        return f"{self.entry} fold {self.fold}"


def _setup(recipe: Recipe, data: Data, backbone: str, fold: int, pseudo: PseudoLabels | None) -> _Run:
    """The model, optimizer, schedule, loss, augmentations and targets of a run, seeded by ``[train].seed``."""
    t, classes = recipe.train, data.competition.classes
    fold_of = data.folds["fold"].to_numpy()
    train_idx, valid_idx = np.flatnonzero(fold_of != fold), np.flatnonzero(fold_of == fold)
    n_train = len(data.y)
    pool = train_idx if pseudo is None else np.concatenate([train_idx, n_train + np.arange(len(pseudo.rows))])
    generator = runtime.seed_everything(t.seed)
    device = runtime.resolve_device(recipe.runtime.device)
    precision = runtime.precision_on(t, device)
    model = runtime.to_device(models.build(recipe, backbone, len(classes)), device)

    batch_size = min(t.batch_size, len(pool))
    if recipe.augment.mixup_alpha > 0 and batch_size > 1:
        batch_size -= batch_size % 2  # mixup pairs each image with one in the flipped batch (timm's Mixup asserts an even batch)
    updates_per_epoch = max(1, len(pool) // batch_size)
    optimizer = create_optimizer_v2(model, "adamw", lr=t.lr, weight_decay=t.weight_decay, layer_decay=t.layer_decay or None)
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
    a, task = recipe.augment, data.competition.task
    weight = class_weights(recipe, data.y[train_idx], len(classes)) if task.takes_class_weights else None
    mix = task.mixup(a.mixup_alpha, t.label_smoothing, len(classes))
    criterion = task.loss(t.label_smoothing, None if weight is None else weight.to(device), a.mixup_alpha)
    images = image_pipeline(a.image, seed=t.seed + fold)
    ema = ModelEmaV3(model, decay=t.ema_decay) if t.ema_decay > 0 else None
    updater = Updater(
        model=model,
        forward=torch.compile(model) if recipe.runtime.compile else model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler(device.type, enabled=precision == "fp16"),
        ema=ema,
        spec=spec_augment(a).to(device),
        mix=mix,
        criterion=criterion,
        device=device,
        precision=precision,
        updates_per_epoch=updates_per_epoch,
    )
    if pseudo is None:
        y = torch.as_tensor(np.array(data.y))
    else:  # probability targets: one-hot rows for the labelled clips, then the soft pseudo rows
        y = torch.as_tensor(np.concatenate([np.eye(len(classes))[data.y], pseudo.targets]), dtype=torch.float32)
    return _Run(
        recipe, data, backbone, fold, train_idx, valid_idx, pool, generator, device, precision, model, batch_size, updates_per_epoch,
        optimizer, scheduler, images, ema, updater, y, None if pseudo is None else pseudo.rows,
    )  # fmt: skip


def _resume(run: _Run, state: dict, checkpoint: Checkpoint) -> None:
    """Restore ``state`` (a ``checkpoint.pt``): weights, optimizer, schedule, scaler, EMA, every random state and the epoch log."""
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.updater.scaler.load_state_dict(state["scaler"])
    if run.ema is not None:
        run.ema.load_state_dict(state["ema"])
    runtime.set_rng_state(state["rng"], run.generator, run.images)
    run.selection, run.start = checkpoint.resumed(state, run.evaluated), state["epoch"]


def _show_loss(bar: tqdm, loss: float) -> None:
    bar.set_postfix(loss=f"{loss:.3f}")


def _epoch(run: _Run, epoch: int, progress: bool) -> dict:
    """Train one epoch, validate on the fold (with TTA), record it in the selection; returns its scores."""
    t, data = run.recipe.train, run.data
    cuda = run.device.type == "cuda"
    copies = 0 if data.x_aug is None else len(data.x_aug)

    def batch_of(idx: np.ndarray, variant: np.ndarray | None) -> tuple[np.ndarray, torch.Tensor]:
        x = data.gather(idx, variant, run.test_rows)
        if run.images is not None:
            x = np.stack([run.images(image=img.transpose(1, 2, 0))["image"].transpose(2, 0, 1) for img in x])
        x = torch.from_numpy(x)
        return idx, x.pin_memory() if cuda else x

    started = time.time()
    order = torch.randperm(len(run.pool), generator=run.generator).numpy()[: run.updates_per_epoch * run.batch_size]
    order = order.reshape(run.updates_per_epoch, run.batch_size)
    variants = torch.randint(0, copies + 1, (len(run.pool),), generator=run.generator).numpy() if copies else None
    jobs = [(run.pool[pos], None if variants is None else variants[pos]) for pos in order]
    # disable=None: no bar when stderr is not a terminal (logs get only the epoch line)
    bar = tqdm(
        ahead(jobs, batch_of),
        total=run.updates_per_epoch,
        desc=f"{run.desc} epoch {epoch + 1}/{t.epochs}",
        unit="batch",
        leave=False,
        disable=None if progress else True,
    )
    train_loss = train_one_epoch(run.updater, bar, run.y, epoch, on_loss=functools.partial(_show_loss, bar))
    train_seconds = time.time() - started
    task = data.competition.task
    proba = predict(run.evaluated, data.x_train[run.valid_idx], run.device, task.activation, shifts=t.tta_shifts, precision=run.precision)
    scores = task.scores(data.y[run.valid_idx], proba)
    timing = {"train_img_per_s": round(run.updates_per_epoch * run.batch_size / train_seconds, 1), "seconds": round(time.time() - started, 2)}
    run.selection.record(t, epoch + 1, train_loss, scores, proba, run.optimizer.param_groups[0]["lr"], timing)
    return scores


def _state(run: _Run, epoch: int) -> dict:
    """What ``checkpoint.pt`` holds after ``epoch`` (0-based) besides the selection: the model, optimiser, schedule, scaler, EMA and every random state."""
    return {
        "epoch": epoch + 1,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.updater.scaler.state_dict(),
        "ema": None if run.ema is None else run.ema.state_dict(),
        "rng": runtime.rng_state(run.generator, run.images),
    }


def _finish(run: _Run, out, checkpoint: Checkpoint, pseudo: PseudoLabels | None) -> dict:
    """The selected weights' OOF and test tables, the speaker population, then ``metrics.json``; returns the report."""
    t, data = run.recipe.train, run.data
    task, classes = data.competition.task, data.competition.classes
    run.model.load_state_dict(checkpoint.best_weights())
    train_ids = data.competition.train[data.competition.config.id_col].to_numpy()
    test_ids = data.competition.test[data.competition.config.id_col].to_numpy()
    atomic.write_csv(out / runs.OOF, runs.proba_frame(train_ids[run.valid_idx], run.selection.best_proba, classes, fold=run.fold))
    test_proba = data.fill_skipped(predict(run.model, data.x_test, run.device, task.activation, shifts=t.tta_shifts, precision=run.precision))
    atomic.write_csv(out / runs.TEST, runs.proba_frame(test_ids, test_proba, classes))
    report = {
        **task.report(data.y[run.valid_idx], run.selection.best_proba, classes),
        "backbone": run.entry,
        "fold": run.fold,
        "epoch": run.selection.best_epoch,
        "device": str(run.device),
    }
    if pseudo is not None:
        report["pseudo_labelled"] = len(pseudo.rows)
    if data.speaker_population is not None:  # for recordings of unknown speakers (ensemble.predict)
        speakers.save_statistics(out / runs.POPULATION, data.speaker_population)
    atomic.write_json(out / runs.METRICS, report)
    checkpoint.finish()
    return report


def train_fold(
    recipe: Recipe, data: Data, backbone: str, fold: int, force: bool = False, progress: bool = True, resume: bool = False, pseudo: PseudoLabels | None = None
) -> dict:
    """Fine-tune ``backbone`` (a ``backbones`` entry: timm model ``name``, or ``name@S`` trained
    with ``[train].seed = S``) on every fold but ``fold``, validate on ``fold``, write the run folder.

    Recipe ``[train]``: AdamW (timm ``create_optimizer_v2``), linear warm-up + cosine decay stepped
    per update (timm ``create_scheduler_v2``), cross-entropy with label smoothing and optional
    class weights, optional EMA of the weights (validated and saved instead of the raw weights)
    and early stopping; ``[augment]``: a random clean-or-augmented rendering per clip per epoch,
    albumentations image transforms, SpecAugment / time roll, mixup. channels_last; the autocast
    of ``[train].precision`` on CUDA and of ``[train].cpu_precision`` on CPU
    (:func:`ensemble.members.runtime.precision_on`); ``[runtime].compile`` compiles the training forward
    pass; torch's CPU threads are ``[runtime].threads`` while the run trains (restored after).
    Seeded: the same recipe gives the same run on CPU. Validation and the saved ``oof.csv``
    / ``test.csv`` use the time-shift TTA of ``[train].tta_shifts`` (:func:`ensemble.members.loop.predict`);
    skipped test clips (:attr:`ensemble.store.split.Split.skipped`) are given the prior.

    With ``pseudo`` (a pseudo-labelling round's entry ``"<entry>+pl<r>"``, :mod:`ensemble.members.pseudo`)
    the kept test clips join the training clips (clean renderings, never the validation fold) and
    every target is a probability row: one-hot for the labelled clips, the pseudo probabilities for
    the others, under the same cross-entropy (PyTorch's probability targets, with the same label
    smoothing and class weights).

    After each epoch ``checkpoint.pt`` saves the model, optimizer, scheduler, EMA, gradient
    scaler, every random state, the epoch log and which epoch is the best so far; then, when the
    epoch is the new best, ``model.safetensors`` its weights (:class:`ensemble.members.checkpoint.Checkpoint`).
    With ``resume`` an unfinished run continues from it, and on CPU ends with the same predictions
    as an uninterrupted run; without ``resume`` (or without a checkpoint) the run starts afresh.

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
    out = runs.run_dir(recipe, backbone, fold)
    config = run_config(recipe, data, backbone, fold, pseudo)
    if not force and (done := runs.finished_metrics(out, config)) is not None:
        return done
    check_fold(recipe, fold)
    checkpoint = Checkpoint(out, config, backbone)
    state = checkpoint.load() if resume and checkpoint.exists() else None
    (out / runs.METRICS).unlink(missing_ok=True)
    atomic.write_json(out / runs.CONFIG, config)
    t = recipe.train
    with runtime.torch_threads(recipe.runtime.threads):
        run = _setup(recipe, data, backbone, fold, pseudo)
        if state is not None:
            _resume(run, state, checkpoint)
        for epoch in range(run.start, t.epochs):
            if run.selection.stops(t):
                if progress:
                    tqdm.write(f"{run.desc}: early stop, no {t.metric} gain in {t.patience} epochs")
                break
            scores = _epoch(run, epoch, progress)
            checkpoint.save_epoch(run.selection, _state(run, epoch), run.evaluated)
            if progress:
                tqdm.write(run.selection.line(run.desc, t.epochs, scores))
        return _finish(run, out, checkpoint, pseudo)
