"""Where and how a model runs: the device, the memory order and autocast precision, seeding, and
every random state a training run draws from (saved in checkpoints so a resumed run continues
exactly)."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from ..core.recipe import TrainConfig


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu`` / ``cuda`` as given."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op CPU threads set to ``threads`` (``[runtime].threads``) for the block, and
    restored after it (also when it raises); 0 keeps the count the process has (torch's default:
    every core)."""
    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def precision_on(t: TrainConfig, device: torch.device) -> str:
    """The autocast precision of a run on ``device``: ``[train].precision`` on CUDA,
    ``[train].cpu_precision`` on CPU."""
    return t.precision if device.type == "cuda" else t.cpu_precision


def autocast(device: torch.device, precision: str = "fp32") -> torch.autocast:
    """bf16 or fp16 autocast on ``device`` (:func:`precision_on` gives a run's); disabled for fp32."""
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=precision != "fp32")


def to_device(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` on ``device`` in channels_last memory order, the order :func:`batch_to` gives
    the images: the ImageNet backbones train faster channels_last than in the default order on this
    project's CPU (``benchmarks/train_step.py``; figures in docs/benchmarks.md)."""
    return model.to(device, memory_format=torch.channels_last)


def channels_last(batch: torch.Tensor) -> torch.Tensor:
    """``batch`` ``(batch, channels, height, frames)`` in channels_last memory order (the models' order, :func:`to_device`)."""
    return batch.contiguous(memory_format=torch.channels_last)


def batch_to(x: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """float32 images ``x`` ``(batch, channels, height, frames)`` on ``device`` in channels_last
    order; on CUDA copied from pinned memory without blocking."""
    batch = torch.from_numpy(np.asarray(x, dtype=np.float32)) if isinstance(x, np.ndarray) else x
    if device.type == "cuda" and not batch.is_pinned():
        batch = batch.pin_memory()
    return channels_last(batch.to(device, non_blocking=True))


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator for shuffling."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _random_parts(images) -> list:
    """The albumentations pipeline and its transforms: each holds its own generators (albumentations 2)."""
    return [] if images is None else [images, *images.transforms]


def rng_state(generator: torch.Generator, images) -> dict:
    """Every random state training draws from: Python, NumPy, torch (CPU and CUDA), the shuffling
    ``generator`` and the generators of the albumentations pipeline ``images`` (or None) and of
    each of its transforms."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "generator": generator.get_state(),
        "albumentations": [(part.random_generator.bit_generator.state, part.py_random.getstate()) for part in _random_parts(images)],
    }


def set_rng_state(state: dict, generator: torch.Generator, images) -> None:
    """Restore :func:`rng_state`'s ``state`` into the global generators, ``generator`` and ``images``."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator.set_state(state["generator"])
    for part, (bit_state, py_state) in zip(_random_parts(images), state["albumentations"], strict=True):
        part.random_generator.bit_generator.state = bit_state
        part.py_random.setstate(py_state)
