"""The training loop of one image model: one epoch of updates (:func:`train_one_epoch`) and
probabilities with time-shift TTA (:func:`predict`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..core.tasks import MULTICLASS
from .runtime import autocast, batch_to, channels_last


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


PREDICT_BATCH = 64
"""Images per forward pass when :func:`predict` evaluates (training's OOF and test predictions, ``ens predict``); the time plan counts these batches."""


@torch.inference_mode()
def predict(
    model: nn.Module,
    x: np.ndarray,
    device: torch.device,
    activation: Callable[[torch.Tensor], torch.Tensor] = MULTICLASS.activation,
    batch_size: int = PREDICT_BATCH,
    shifts: Sequence[float] = (),
    precision: str = "fp32",
) -> np.ndarray:
    """Probabilities ``(n, classes)`` of images ``x`` ``(n, channels, height, frames)``: the task's
    ``activation`` of the logits (:meth:`ensemble.core.tasks.Task.activation`: a softmax, or one sigmoid
    per class), in batches of ``batch_size`` images, under the
    :func:`ensemble.members.runtime.autocast` of ``precision`` (a run's is :func:`ensemble.members.runtime.precision_on`).

    With ``shifts`` (``[train].tta_shifts``: fractions of the frame axis) this is time-shift
    test-time augmentation: the mean of the probabilities of each image and of the image rolled
    circularly along time (the last axis, ``torch.roll``) by ``round(shift * frames)`` frames for
    each shift, ``1 + len(shifts)`` forward passes per image.
    """
    model.eval()
    rolls = [0, *(round(s * x.shape[-1]) for s in shifts)]
    out = []
    for start in range(0, len(x), batch_size):
        batch = batch_to(x[start : start + batch_size], device)
        total = 0
        for frames in rolls:
            shifted = channels_last(torch.roll(batch, frames, dims=-1)) if frames else batch
            with autocast(device, precision):
                logits = model(shifted).float()
            total = total + activation(logits)
        out.append((total / len(rolls)).cpu())
    return torch.cat(out).numpy().astype(np.float64)


@dataclass
class Updater:
    """What one optimisation step needs.

    Attributes:
        model: the model being trained; ``forward`` calls it (or its ``torch.compile`` wrapper).
        optimizer, scheduler, scaler: AdamW, timm's per-update scheduler, the fp16 gradient scaler.
        ema: timm ``ModelEmaV3`` of the weights, or None.
        spec: SpecAugment / time roll on the device batch (:class:`ensemble.inputs.augment.SpecAugment`).
        mix: mixup ``(batch, target) -> (batch, target)``, or None.
        criterion: ``(logits (batch, classes) float32, target) -> loss``.
        device, precision: where and under which autocast (:func:`ensemble.members.runtime.autocast`).
        updates_per_epoch: optimisation steps per epoch (the scheduler counts updates).
    """

    model: nn.Module
    forward: Callable
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    ema: nn.Module | None
    spec: nn.Module
    mix: Callable | None
    criterion: Callable
    device: torch.device
    precision: str
    updates_per_epoch: int


def train_one_epoch(u: Updater, batches: Iterable[tuple[np.ndarray, torch.Tensor]], y: torch.Tensor, epoch: int, on_loss: Callable | None = None) -> float:
    """Train ``u.model`` for one epoch (0-based ``epoch``) on ``batches`` of ``(row indices, images
    (batch, channels, height, frames) float32 in [0, 1])``, targets ``y[rows]``; returns the
    epoch's mean training loss. ``on_loss`` receives the running mean loss every 10 steps (reading
    the loss waits for the device, so it is not read every step)."""
    u.model.train()
    u.spec.train()
    losses = []
    for step, (idx, x) in enumerate(batches):
        batch, target = u.spec(batch_to(x, u.device)), y[idx].to(u.device, non_blocking=True)
        if u.mix is not None:
            batch, target = u.mix(batch, target)
        with autocast(u.device, u.precision):
            loss = u.criterion(u.forward(batch).float(), target)
        u.optimizer.zero_grad(set_to_none=True)
        u.scaler.scale(loss).backward()
        u.scaler.step(u.optimizer)
        u.scaler.update()
        num_updates = epoch * u.updates_per_epoch + step + 1
        u.scheduler.step_update(num_updates)
        if u.ema is not None:
            u.ema.update(u.model, step=num_updates)
        losses.append(loss.detach())
        if on_loss is not None and step % 10 == 9:
            on_loss(torch.stack(losses).mean().item())
    return torch.stack(losses).mean().item()
