"""Fine-tune one (backbone, fold) and write its run folder.

``runs/<recipe>/<backbone>/fold<K>/`` receives, each file written atomically:

- ``config.json``: the recipe, backbone, fold, classes and a hash of the fold assignment;
- ``model.safetensors``: the selected epoch's weights (best fold metric, or last);
- ``log.csv``: one row per epoch (train loss, validation loss and scores, learning rate, seconds);
- ``oof.csv``: ``id, fold`` and one probability column per class, for the fold's validation clips;
- ``test.csv``: ``id`` and one probability column per class, for every test clip;
- ``metrics.json``: :func:`ensemble.metrics.report` of the OOF predictions. Written last: a run
  folder with ``metrics.json`` is finished, and ``ens train`` skips it unless forced.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn
from tqdm.auto import tqdm

from . import atomic, competition as comp_mod, features, metrics, models
from .recipe import Recipe


class RunConflictError(RuntimeError):
    """A finished run exists with a different configuration; it is never overwritten silently."""


@dataclass
class Data:
    """Everything a fold needs, loaded once for all folds and backbones of a recipe.

    Attributes:
        competition: the loaded competition folder.
        folds: ``id, fold`` aligned with ``competition.train``.
        x_train: float16 ``(n_train, channels, height, frames)`` images in [0, 1].
        x_test: float16 ``(n_test, channels, height, frames)``.
        y: int64 ``(n_train,)`` labels.
    """

    competition: comp_mod.Competition
    folds: pd.DataFrame
    x_train: np.ndarray
    x_test: np.ndarray
    y: np.ndarray

    @property
    def folds_hash(self) -> str:
        """SHA-1 of the fold assignment; runs of one blend must share it."""
        return hashlib.sha1(self.folds.to_csv(index=False).encode()).hexdigest()


def load_data(recipe: Recipe, progress: bool = True) -> Data:
    """Load the competition, its folds (made on first use) and the cached feature images."""
    competition = comp_mod.load(recipe.competition)
    folds = comp_mod.folds(competition, recipe.folds)
    cache = features.FeatureCache(competition.root / ".ens_cache", recipe.features)
    x_train = cache.get(competition.audio_paths(competition.train), progress=progress)
    x_test = cache.get(competition.audio_paths(competition.test), progress=progress)
    return Data(competition, folds, x_train, x_test, competition.y)


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
    """The backbone (:func:`ensemble.models.create`) wrapped with its input normalisation."""
    in_chans = len(recipe.features.channels)
    t = recipe.train
    net = models.create(backbone, num_classes, in_chans=in_chans, pretrained=t.pretrained, weights=t.weights_dir or None)
    return Normalize(net, *models.normalization(net, in_chans))


def _batches(x: np.ndarray, order: np.ndarray, batch_size: int, device: torch.device, channels_last: bool):
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = torch.from_numpy(np.asarray(x[idx], dtype=np.float32)).to(device, non_blocking=True)
        yield idx, (batch.contiguous(memory_format=torch.channels_last) if channels_last else batch)


@torch.inference_mode()
def predict(model: nn.Module, x: np.ndarray, device: torch.device, batch_size: int = 64) -> np.ndarray:
    """Softmax probabilities ``(n, classes)`` of images ``x`` ``(n, channels, height, frames)``."""
    model.eval()
    cuda = device.type == "cuda"
    out = []
    for _, batch in _batches(x, np.arange(len(x)), batch_size, device, cuda):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            out.append(model(batch).float().softmax(dim=1).cpu())
    return torch.cat(out).numpy().astype(np.float64)


def _proba_frame(ids, proba: np.ndarray, classes: list[str], **extra) -> pd.DataFrame:
    frame = pd.DataFrame(proba, columns=classes)
    frame.insert(0, "id", list(ids))
    for pos, (name, values) in enumerate(extra.items(), start=1):
        frame.insert(pos, name, values)
    return frame


def run_config(recipe: Recipe, data: Data, backbone: str, fold: int) -> dict:
    """What a run is defined by; a finished run with another config is a conflict."""
    return {
        "recipe": recipe.to_dict(),
        "backbone": backbone,
        "fold": fold,
        "classes": data.competition.classes,
        "folds_hash": data.folds_hash,
    }


def train_fold(recipe: Recipe, data: Data, backbone: str, fold: int, force: bool = False, progress: bool = True) -> dict:
    """Fine-tune ``backbone`` on every fold but ``fold``, validate on ``fold``, write the run folder.

    Recipe ``[train]``: AdamW (timm ``create_optimizer_v2``), linear warm-up + cosine decay stepped
    per update (timm ``create_scheduler_v2``), cross-entropy with label smoothing; on CUDA bf16
    autocast and channels_last. Seeded: the same recipe gives the same run on CPU.

    Returns:
        the ``metrics.json`` dict (OOF scores of the selected epoch), also when the run was
        already finished with the same config and is skipped.

    Raises:
        RunConflictError: a finished run with another config exists and ``force`` is False.
        ValueError: ``fold`` is not one of the folds.
    """
    out = recipe.run_dir(backbone, fold)
    config = run_config(recipe, data, backbone, fold)
    if (out / "metrics.json").exists() and not force:
        previous = json.loads((out / "config.json").read_text())
        if previous == json.loads(json.dumps(config)):
            return json.loads((out / "metrics.json").read_text())
        raise RunConflictError(
            f"{out} holds a finished run with a different configuration; pass --force to overwrite it, or give the recipe another name."
        )
    n_folds = recipe.folds.n_splits
    if not 0 <= fold < n_folds:
        raise ValueError(f"fold {fold} is not one of 0..{n_folds - 1} (the recipe's [folds].n_splits = {n_folds}).")
    (out / "metrics.json").unlink(missing_ok=True)
    atomic.write_json(out / "config.json", config)

    t, classes = recipe.train, data.competition.classes
    fold_of = data.folds["fold"].to_numpy()
    train_idx, valid_idx = np.flatnonzero(fold_of != fold), np.flatnonzero(fold_of == fold)
    generator = seed_everything(t.seed)
    device = resolve_device(t.device)
    cuda = device.type == "cuda"
    model = build_model(recipe, backbone, len(classes)).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)

    batch_size = min(t.batch_size, len(train_idx))
    updates_per_epoch = max(1, len(train_idx) // batch_size)
    optimizer = create_optimizer_v2(model, "adamw", lr=t.lr, weight_decay=t.weight_decay)
    scheduler, _ = create_scheduler_v2(
        optimizer, "cosine", num_epochs=t.epochs, warmup_epochs=t.warmup_epochs, warmup_lr=t.lr * 0.01,
        min_lr=t.min_lr, step_on_epochs=False, updates_per_epoch=updates_per_epoch,
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
    y = torch.as_tensor(np.array(data.y))
    log, best, best_score, best_proba = [], None, -np.inf, None
    desc = f"{backbone} fold {fold}"
    for epoch in range(t.epochs):
        model.train()
        started = time.time()
        order = torch.randperm(len(train_idx), generator=generator).numpy()[: updates_per_epoch * batch_size]
        losses = []
        bar = tqdm(_batches(data.x_train, train_idx[order], batch_size, device, cuda), total=updates_per_epoch,
                   desc=f"{desc} epoch {epoch + 1}/{t.epochs}", unit="batch", leave=False, disable=not progress)
        for idx, batch in bar:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = criterion(model(batch).float(), y[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step_update(epoch * updates_per_epoch + len(losses) + 1)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses):.3f}")
        proba = predict(model, data.x_train[valid_idx], device)
        scores = metrics.scores(data.y[valid_idx], proba)
        row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), **{f"valid_{k}": v for k, v in scores.items()},
               "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.time() - started, 2)}
        improved = t.select == "last" or scores[t.metric] > best_score
        if improved:
            best_score, best_proba = scores[t.metric], proba
            best = copy.deepcopy(model.state_dict())
            with atomic.atomic_path(out / "model.safetensors") as tmp:
                save_file({k: v.detach().cpu().contiguous() for k, v in best.items()}, str(tmp), metadata={"backbone": backbone, "epoch": str(epoch + 1)})
        row["selected"] = bool(improved)
        log.append(row)
        atomic.write_csv(out / "log.csv", pd.DataFrame(log))
        if progress:
            tqdm.write(f"{desc} epoch {epoch + 1}/{t.epochs}: loss {row['train_loss']:.3f}  valid loss {scores['log_loss']:.3f}  "
                       f"acc {scores['accuracy']:.3f}  macro-F1 {scores['macro_f1']:.3f}  UAR {scores['uar']:.3f}{'  *' if improved else ''}")

    model.load_state_dict(best)
    train_ids = data.competition.train[data.competition.config.id_col].to_numpy()
    test_ids = data.competition.test[data.competition.config.id_col].to_numpy()
    atomic.write_csv(out / "oof.csv", _proba_frame(train_ids[valid_idx], best_proba, classes, fold=fold))
    atomic.write_csv(out / "test.csv", _proba_frame(test_ids, predict(model, data.x_test, device), classes))
    report = {**metrics.report(data.y[valid_idx], best_proba, classes), "backbone": backbone, "fold": fold,
              "epoch": int(next(r["epoch"] for r in reversed(log) if r["selected"])), "device": str(device)}
    atomic.write_json(out / "metrics.json", report)
    return report
