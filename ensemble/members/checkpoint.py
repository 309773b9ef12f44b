"""The saved state of one run: ``checkpoint.pt`` while it is unfinished (resume) and
``model.safetensors``, the only copy of its best weights.

After each epoch (:meth:`Checkpoint.save_epoch`) ``log.csv`` is written, then the checkpoint, then, when
the epoch is the new best, the weights (each atomically). A run stopped between the last two writes
resumes from a checkpoint whose best epoch is its own last epoch; :meth:`Checkpoint.restore_best`
writes those weights again. Which epoch is the best is :class:`Selection`'s, the part of the state
every trained kind's run carries (the image kind's and the fine-tune kind's).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..core import atomic
from ..core.errors import Param
from ..core.recipe import TrainConfig
from ..store import runs


@dataclass
class Selection:
    """A run's epochs so far and the one it keeps (``[train].select``, ``metric``, ``patience``).

    Attributes:
        log: one row per finished epoch (``log.csv``), each with ``selected``.
        best_epoch: the kept epoch (1-based; 0 before the first). best_score: its ``[train].metric`` on the fold.
        best_proba: its validation probabilities ``(fold clips, classes)`` (the OOF table's). stale: epochs since the metric last rose.
    """

    log: list = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = -np.inf
    best_proba: np.ndarray | None = None
    stale: int = 0

    KEYS = ("log", "best_epoch", "best_score", "best_proba", "stale")
    """Its entries in ``checkpoint.pt``."""

    def record(self, train: TrainConfig, epoch: int, train_loss: float, scores: dict, proba: np.ndarray, lr: float, timing: dict) -> bool:
        """Log epoch ``epoch`` (1-based) with its fold ``scores`` and ``proba``: its ``log.csv`` row is ``epoch``,
        ``train_loss``, ``valid_<score>`` for each score, ``lr``, then ``timing`` (e.g. ``seconds``), then ``selected``.
        The epoch is kept when ``[train].select`` is ``last`` or its ``[train].metric`` beats the best so far.
        Returns whether it was kept."""
        kept = train.select == "last" or scores[train.metric] > self.best_score
        self.stale = 0 if kept else self.stale + 1
        if kept:
            self.best_epoch, self.best_score, self.best_proba = epoch, scores[train.metric], proba
        row = {"epoch": epoch, "train_loss": train_loss, **{f"valid_{k}": v for k, v in scores.items()}, "lr": lr, **timing}
        self.log.append({**row, "selected": bool(kept)})
        return kept

    def stops(self, train: TrainConfig) -> bool:
        """Whether early stopping ends the run: ``[train].patience`` epochs (0: never) without a better metric."""
        return bool(train.patience) and self.stale >= train.patience

    def line(self, desc: str, epochs: int, scores: dict) -> str:
        """The progress line of the last logged epoch, e.g. ``"resnet18 fold 0 epoch 2/5: loss 1.2  valid loss ... *"`` (``*``: kept)."""
        row = self.log[-1]
        shown = "  ".join(f"{k} {v:.3f}" for k, v in scores.items() if k != "log_loss")
        return (
            f"{desc} epoch {row['epoch']}/{epochs}: loss {row['train_loss']:.3f}  valid loss {scores['log_loss']:.3f}  "
            f"{shown}  {row['seconds']:.1f} s{'  *' if row['selected'] else ''}"
        )


class Checkpoint:
    """The files of one run folder that hold model state.

    Args:
        run: the run folder (:func:`ensemble.store.runs.run_dir`).
        config: the run's identity (:func:`ensemble.store.runs.run_config`); a checkpoint saved with
            another is refused.
        entry: the ``backbones`` entry, stored in the weights' metadata.
    """

    def __init__(self, run: Path, config: dict, entry: str):
        self.run, self.config, self.entry = run, config, entry
        self.path, self.weights = run / runs.CHECKPOINT, run / runs.MODEL

    def exists(self) -> bool:
        """Whether an unfinished run left ``checkpoint.pt``."""
        return self.path.exists()

    def load(self) -> dict:
        """The state :meth:`save` wrote.

        Raises:
            RunConflictError: it was saved by a run with another configuration.
        """
        state = torch.load(self.path, map_location="cpu", weights_only=False)  # written by save()
        if runs.as_today(json.loads(json.dumps(state["config"])), self.path) != self.config:
            raise runs.RunConflictError(
                f"{self.path} was saved by a run with a different configuration; train again without ", Param("resume", True), " to start afresh."
            )
        return state

    def save(self, state: dict) -> None:
        """Write ``state`` (everything needed to continue after its epoch but the best weights) atomically, with the run's config."""
        with atomic.atomic_path(self.path) as tmp:
            torch.save({"config": self.config, **state}, tmp)

    def save_epoch(self, selection: Selection, state: dict, evaluated: nn.Module) -> None:
        """After an epoch: ``log.csv``, then ``checkpoint.pt`` (``state``: the kind's model, optimiser, schedule,
        random states and ``epoch``, with ``selection``), then, when the epoch was kept, ``evaluated``'s weights."""
        atomic.write_csv(self.run / runs.LOG, pd.DataFrame(selection.log))
        self.save({**state, **{k: getattr(selection, k) for k in Selection.KEYS}})
        if selection.log[-1]["selected"]:
            self.save_best(evaluated.state_dict(), selection.best_epoch)

    def resumed(self, state: dict, evaluated: nn.Module) -> Selection:
        """The :class:`Selection` of a loaded ``state``, ``model.safetensors`` made to hold its best epoch (:meth:`restore_best`)."""
        selection = Selection(**{k: state[k] for k in Selection.KEYS if k != "best_epoch"})
        selection.best_epoch = self.restore_best(state, evaluated)
        return selection

    def save_best(self, state_dict: dict[str, torch.Tensor], epoch: int) -> None:
        """Write ``model.safetensors`` atomically, with the entry and ``epoch`` (1-based) in its metadata."""
        with atomic.atomic_path(self.weights) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, str(tmp), metadata={"backbone": self.entry, "epoch": str(epoch)})

    def saved_epoch(self) -> int | None:
        """The epoch whose weights ``model.safetensors`` holds (its metadata), or None without the file."""
        if not self.weights.exists():
            return None
        with safe_open(self.weights, "pt") as f:
            return int(f.metadata()["epoch"])

    def best_weights(self) -> dict[str, torch.Tensor]:
        """The state dict in ``model.safetensors``."""
        return load_file(self.weights)

    def restore_best(self, state: dict, evaluated: nn.Module) -> int:
        """Make ``model.safetensors`` hold the best epoch of the loaded ``state`` before a resumed run
        goes on, and return that epoch.

        A run stopped between the checkpoint and the weights write resumes from a checkpoint whose
        best epoch is its own last: those weights are ``evaluated``'s (the model, or its EMA,
        restored from the checkpoint) and are written again. A checkpoint saved by an earlier ens
        carries its own copy of the best weights (``best``), which is written likewise.

        Raises:
            RunConflictError: ``model.safetensors`` holds another epoch than the checkpoint's best, or is missing.
        """
        if "best" in state:
            epoch = max(row["epoch"] for row in state["log"] if row["selected"])
            self.save_best(state["best"], epoch)
        elif (epoch := state["best_epoch"]) == state["epoch"]:
            self.save_best(evaluated.state_dict(), epoch)
        elif (saved := self.saved_epoch()) != epoch:
            raise runs.RunConflictError(
                f"{self.weights} holds {'no weights' if saved is None else f'epoch {saved}'}, not epoch {epoch}, the best "
                f"epoch {self.path} was saved with; train again without ",
                Param("resume", True),
                " to start afresh.",
            )
        return epoch

    def finish(self) -> None:
        """Delete ``checkpoint.pt``: the run is finished."""
        self.path.unlink(missing_ok=True)
