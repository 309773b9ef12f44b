"""Backbones: timm models with ImageNet weights from a local ``local-dir:`` folder or the hub.

The AudioSet backbones (``yamnet``, ``efficientat_mn04``: :mod:`ensemble.members.audioset`) load their
own folders under the same weights folder and never reach for the hub.

Weights are looked for, in order: ``weights_dir/<backbone>/`` in timm's local-folder format
(``config.json`` + ``model.safetensors``), where ``weights_dir`` is the recipe's / ``--weights-dir``
value, else ``$ENS_WEIGHTS_DIR``, else ``../shared/weights`` when it exists; then the Hugging Face
hub, as plain ``timm.create_model(name, pretrained=True)`` does.
"""

from __future__ import annotations

import difflib
import os
import re

import timm
import torch
from torch import nn

from ..core.entry import Entry
from ..core.errors import BackboneError, Param
from ..core.recipe import Recipe
from ..core.weights import WEIGHTS_ENV, weights_dir
from . import audioset, cnns  # noqa: F401  (registers the seed CNNs and the AudioSet CNNs with timm)


def create(
    backbone: str,
    num_classes: int,
    in_chans: int = 3,
    pretrained: bool = True,
    weights: str | os.PathLike | None = None,
    **kwargs,
) -> nn.Module:
    """Create a timm backbone with a fresh ``num_classes`` head.

    Args:
        backbone: a timm model name, e.g. ``efficientnet_b0`` or ``tf_efficientnet_lite0``.
        num_classes: output logits.
        in_chans: input channels; timm adapts a pretrained 3-channel stem to other counts
            (``timm.models.adapt_input_conv``).
        pretrained: load ImageNet weights (local folder first, then the hub), or for an AudioSet
            backbone (:data:`ensemble.members.audioset.MODELS`) its AudioSet weights from the local folder only; False: random init.
        weights: folder of local weights (see :func:`weights_dir`).
        **kwargs: passed to the model, e.g. ``drop_rate``, ``drop_path_rate``.

    Returns:
        the model; it takes ``(batch, in_chans, height, frames)`` and returns ``(batch, num_classes)`` logits.

    Raises:
        BackboneError: ``backbone`` is not a timm model, or pretrained weights are in neither place.
    """
    if not timm.is_model(backbone):
        close = difflib.get_close_matches(backbone, timm.list_models(), n=3)
        raise BackboneError(f"unknown backbone {backbone!r}; did you mean {close}? `timm.list_models('*name*')` lists them.")
    kwargs.update(num_classes=num_classes, in_chans=in_chans)
    if backbone in audioset.MODELS:
        return timm.create_model(backbone, pretrained=pretrained, weights_dir=weights, **kwargs)
    if not pretrained:
        return timm.create_model(backbone, pretrained=False, **kwargs)
    folder = weights_dir(weights)
    local = folder / backbone if folder else None
    if local is not None and (local / "config.json").is_file():
        return timm.create_model(f"local-dir:{local}", pretrained=True, **kwargs)
    try:
        return timm.create_model(backbone, pretrained=True, **kwargs)
    except (OSError, RuntimeError, ValueError) as err:
        raise BackboneError(
            f"no pretrained weights for {backbone!r}: not in a local folder ({local or 'none set'}: pass ",
            Param("weights_dir", shown="DIR"),
            f" ([paths].weights_dir) or set ${WEIGHTS_ENV} to a folder with {backbone}/config.json and model.safetensors) "
            f"and not from the hub ({type(err).__name__}: {str(err)[:200]}). Set ",
            Param("pretrained", False),
            " ([train].pretrained = false) to train from scratch.",
        ) from err


def normalization(model: nn.Module, in_chans: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The backbone's pretraining mean and std as ``(1, in_chans, 1, 1)`` tensors.

    Taken from ``model.pretrained_cfg`` (ImageNet's (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225)
    for most timm models, 0.5 / 0.5 for TF ports). With ``in_chans != 3`` the three values are
    averaged, matching how timm sums a pretrained stem's RGB filters into other channel counts.
    """
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406)), dtype=torch.float32)
    std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225)), dtype=torch.float32)
    if in_chans != len(mean):
        mean, std = mean.mean().repeat(in_chans), std.mean().repeat(in_chans)
    return mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)


class Normalize(nn.Module):
    """Wraps a backbone: ``(x - mean) / std`` with the backbone's pretraining statistics, then the backbone."""

    def __init__(self, backbone: nn.Module, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(batch, channels, height, frames)`` in [0, 1] (ens's images; for an AudioSet
        backbone its frontend's values minus the silence floor) -> logits ``(batch, classes)``."""
        return self.backbone((x - self.mean) / self.std)

    def group_matcher(self, coarse: bool = False) -> dict:
        """The backbone's timm ``group_matcher`` (stem, blocks; the head is what no pattern matches)
        with every pattern under ``backbone.``, so timm's layer-wise learning-rate decay
        (``create_optimizer_v2(..., layer_decay=...)``, ``[train].layer_decay``) sees the wrapped
        model's layers. A backbone without one (the seed CNNs) is one group: no decay."""
        inner = getattr(self.backbone, "group_matcher", None)
        if inner is None:
            return {"body": r"^backbone\."}
        return {name: _under_backbone(spec) for name, spec in inner(coarse=coarse).items()}


def _under_backbone(spec):
    r"""A timm matcher spec (a regex, or a list of ``(regex, suffix)``) for names prefixed ``backbone.``:
    ``^conv_stem|bn1`` -> ``^backbone\.(?:conv_stem|bn1)`` (``re.match`` anchors every alternative)."""
    if spec is None:
        return None
    if isinstance(spec, str):
        return r"^backbone\.(?:" + re.sub(r"(^|\|)\^", r"\1", spec) + ")"
    return [(_under_backbone(pattern), suffix) for pattern, suffix in spec]


def build(recipe: Recipe, entry: str, num_classes: int) -> Normalize:
    """The backbone of a ``backbones`` entry (``name`` or ``name@seed``: both build timm model
    ``name``, :func:`create`) with the recipe's ``[train]`` dropout settings and weights, wrapped
    with its input normalisation; ``in_chans`` is the number of ``[features].channels`` of
    ``recipe.for_backbone(entry)`` (1 for an AudioSet backbone's frontend).

    Raises:
        RecipeError: a malformed entry. BackboneError: see :func:`create`.
    """
    in_chans = len(recipe.for_backbone(entry).features.channels)
    t = recipe.train
    extra = {k: v for k, v in (("drop_rate", t.drop_rate), ("drop_path_rate", t.drop_path_rate)) if v > 0}
    net = create(Entry.parse(entry).model, num_classes, in_chans=in_chans, pretrained=t.pretrained, weights=recipe.paths.weights_dir or None, **extra)
    return Normalize(net, *normalization(net, in_chans))
