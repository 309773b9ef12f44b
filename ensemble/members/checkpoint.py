"""The saved state of one run: ``checkpoint.pt`` while it is unfinished (resume) and
``model.safetensors``, the only copy of its best weights.

After each epoch the checkpoint is written first, then, when the epoch is the new best, the weights
(each atomically). A run stopped between the two writes resumes from a checkpoint whose best epoch
is its own last epoch; :meth:`Checkpoint.restore_best` writes those weights again.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..core import atomic
from ..core.errors import Param
from ..store import runs


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
