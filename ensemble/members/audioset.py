"""AudioSet-pretrained CNNs registered as timm models: ``yamnet`` and ``efficientat_mn04``.

``timm.create_model("yamnet", pretrained=True, num_classes=8)`` works once :mod:`ensemble.members.models`
(which imports this module) is imported; weights come from the local folder of
:func:`ensemble.core.weights.weights_dir` (``weights_dir=DIR``, else ``$ENS_WEIGHTS_DIR``, else
``../shared/weights``), never from a hub. ``num_classes`` equal to the AudioSet head's (521 for
YAMNet, 527 for mn04) keeps the pretrained AudioSet classifier; any other count gets a fresh,
randomly initialised head (``reset_classifier``). Both take ens's ``(batch, 1, n_mels, frames)``
spectrograms of their own frontend (:mod:`ensemble.core.frontends`, rendered by
:class:`ensemble.inputs.features.FrontendRenderer`), of any number of frames.

- ``yamnet``: YAMNet (Plakal & Ellis, tensorflow/models ``research/audioset/yamnet``, Apache-2.0;
  weights dequantized from google-coral/coralmicro ``models/yamnet_spectra_in.tflite``): timm
  ``mobilenetv1_100`` with ``in_chans=1``, ``act_layer="relu6"``, ``pad_type="same"``, 521 classes,
  loaded strictly from ``<weights_dir>/yamnet_mobilenetv1_100/model.safetensors``. It cuts its
  input into YAMNet's 0.96 s patches (every 0.48 s), each transposed to ``(1, 96, 64)``, and
  averages their pooled features (:class:`YAMNet`). The TFLite graph folded its BatchNorm into
  the convolutions, so its BN layers are identities that are right in eval mode only: with
  ``pretrained=True`` they are frozen (timm ``freeze_batch_norm_2d``) in the factory, so every
  training path keeps them (``../shared/weights/README.md``: train-mode BN dropped "Speech" from
  20/20 to 6/20 patches).
- ``efficientat_mn04``: EfficientAT mn04_as (Schmid et al. 2023, "Efficient Large-Scale Audio
  Tagging via Transformer-to-CNN Knowledge Distillation", ICASSP; fschmid56/EfficientAT, MIT),
  AudioSet mAP .432: timm ``MobileNetV3`` with the block list of
  ``../shared/weights/efficientat_mn04_as/arch.md`` (:data:`MN04_ARCH`), loaded strictly from
  ``<weights_dir>/efficientat_mn04_as/model.safetensors``, whose EfficientAT key names are mapped to
  timm's (:func:`efficientat_to_timm`: every key used once, none missing).

Each model has ``time_features(x)``: the last feature map averaged over frequency, ``(batch, C,
steps)`` (YAMNet: C = 1024, 3 steps per patch; mn04: C = 384, ceil(frames / 32) steps), from which :func:`embed` takes the frozen
embedding members' vectors (mean and max over time).
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import numpy as np
import timm
import torch
from timm.layers import freeze_batch_norm_2d
from timm.models import register_model
from timm.models._efficientnet_blocks import SqueezeExcite
from timm.models._efficientnet_builder import decode_arch_def, round_channels
from timm.models.efficientnet import EfficientNet
from timm.models.mobilenetv3 import MobileNetV3
from torch import nn

from ..core import frontends

YAMNET_FOLDER = "yamnet_mobilenetv1_100"
MN04_FOLDER = "efficientat_mn04_as"
SPEECH = 0
"""AudioSet class 0, "Speech", in both heads' class order."""

YAMNET_CLASSES, MN04_CLASSES = 521, 527

MN04_ARCH = [
    ["ds_r1_k3_s1_c8_nre"],
    ["ir_r1_k3_s2_e3_c16_nre", "ir_r1_k3_s1_e2_c16_nre"],
    ["ir_r1_k5_s2_e2_c16_se0.25_nre", "ir_r2_k5_s1_e3_c16_se0.25_nre"],
    ["ir_r1_k3_s2_e6_c32", "ir_r1_k3_s1_e2.5_c32", "ir_r2_k3_s1_e2.25_c32"],
    ["ir_r1_k3_s1_e6_c48_se0.25", "ir_r1_k3_s1_e5.67_c48_se0.25"],
    ["ir_r1_k5_s2_e5.67_c64_se0.25", "ir_r2_k5_s1_e6_c64_se0.25"],
    ["cn_r1_k1_s1_c384"],
]
"""EfficientAT mn04's blocks as timm block strings (arch.md "timm equivalence"): features.1-16."""

_MN04_POSITION = dict(zip(range(2, 16), ["1.0", "1.1", "2.0", "2.1", "2.2", "3.0", "3.1", "3.2", "3.3", "4.0", "4.1", "5.0", "5.1", "5.2"]))
"""EfficientAT ``features.i`` -> timm ``blocks.<stage>.<block>`` for i = 2..15 (arch.md's table)."""
_FACTORY_ARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


class YAMNet(EfficientNet):
    """timm's ``mobilenetv1_100`` (an :class:`~timm.models.efficientnet.EfficientNet`) taking ens's
    ``(batch, 1, 64, frames)``, run as YAMNet runs: on patches of :attr:`PATCH` = 96 frames (0.96 s)
    every :attr:`HOP` = 48 frames (0.48 s; YAMNet ``params.py``'s ``patch_window_seconds`` /
    ``patch_hop_seconds``), each transposed to YAMNet's ``(1, 96, 64)``.

    YAMNet was trained on 96-frame patches only, and its outputs depend on the patch edges: on a
    real RAVDESS speech clip every 96-frame patch is tagged "Speech" (P 0.73-0.99) while the
    whole 351-frame clip in one pass is tagged "Music" (P(Speech) < 1e-20). So the patches go
    through the network one by one (as a batch); a clip shorter than a patch is padded at the end
    with the frontend's silence floor, and the last patch ends at the clip's last frame."""

    PATCH = 96
    HOP = 48

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, 1, 64, frames)`` (the network's input values, i.e. after :class:`ensemble.members.models.Normalize`) ->
        ``(batch * P, 1, 96, 64)`` YAMNet patches, P per clip: starts ``0, 48, ...`` and ``frames - 96``."""
        frames = x.shape[-1]
        if frames < self.PATCH:
            x = nn.functional.pad(x, (0, self.PATCH - frames), value=frontends.get("yamnet").floor)
            frames = self.PATCH
        starts = list(range(0, frames - self.PATCH + 1, self.HOP))
        if starts[-1] != frames - self.PATCH:
            starts.append(frames - self.PATCH)
        stacked = torch.stack([x[..., s : s + self.PATCH] for s in starts], dim=1)  # (batch, P, 1, 64, 96)
        return stacked.flatten(0, 1).transpose(-1, -2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, 1, 64, frames)`` -> ``(batch, 1024, 3 * P, 2)``: each patch's ``(1024, 3, 2)`` map,
        the patches one after the other along the height (time), so the global average pool of
        :meth:`forward_head` is the mean over patches of each patch's pooled features."""
        batch = x.shape[0]
        maps = super().forward_features(self.patches(x))  # (batch * P, 1024, 3, 2)
        maps = maps.unflatten(0, (batch, -1))  # (batch, P, 1024, 3, 2)
        return maps.permute(0, 2, 1, 3, 4).flatten(2, 3)

    def time_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, 1, 64, frames)`` -> ``(batch, 1024, 3 * P)``: the last feature maps (1024 channels,
        after ReLU6) of the patches in time order, averaged over frequency."""
        return self.forward_features(x).mean(dim=-1)


class EfficientAtMn(MobileNetV3):
    """timm's :class:`~timm.models.mobilenetv3.MobileNetV3` holding EfficientAT's mn models."""

    def time_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, 1, 128, frames)`` -> ``(batch, 384, ceil(frames / 32))``: the last feature map
        (``features.16``, 384 channels after Hardswish), averaged over frequency."""
        return self.forward_features(x).mean(dim=-2)


def _weights_file(name: str, folder: str, weights_dir: str | os.PathLike | None) -> Path:
    """``<weights_dir>/<folder>/model.safetensors``.

    Raises:
        BackboneError: no weights folder is set or found, or the file is not in it.
    """
    from ..core.errors import BackboneError, Param
    from ..core.weights import WEIGHTS_ENV
    from ..core.weights import weights_dir as find

    root = find(weights_dir)
    path = None if root is None else Path(root) / folder / "model.safetensors"
    if path is None or not path.is_file():
        where = f"{path} does not exist" if path is not None else "no weights folder is set and ../shared/weights does not exist"
        raise BackboneError(
            f"no pretrained weights for {name!r}: {where}. Pass ",
            Param("weights_dir", shown="DIR"),
            f" ([paths].weights_dir) or set ${WEIGHTS_ENV} to a folder holding {folder}/model.safetensors (../shared/weights/README.md lists the "
            "sources); or set ",
            Param("pretrained", False),
            " ([train].pretrained = false) to train from scratch.",
        )
    return path


def _cfg(name: str, frontend: str, num_classes: int, licence: str) -> dict:
    """The ``pretrained_cfg``: mean ``-floor`` and std 1, so :class:`ensemble.members.models.Normalize` turns
    ens's stored values (the frontend's minus its floor) back into the frontend's own values."""
    floor = frontends.get(frontend).floor
    return {
        "architecture": name,
        "num_classes": num_classes,
        "mean": (-floor,),
        "std": (1.0,),
        "first_conv": "conv_stem",
        "classifier": "classifier",
        "license": licence,
        "frontend": frontend,
    }


def _finish(model: nn.Module, num_classes: int, audioset_classes: int, cfg: dict) -> nn.Module:
    if num_classes != audioset_classes:
        model.reset_classifier(num_classes)
    model.pretrained_cfg = {**cfg, "num_classes": num_classes}
    return model


def _check_chans(name: str, in_chans: int) -> None:
    if in_chans != 1:
        raise ValueError(f"{name} takes one channel, its frontend's log-mel (in_chans=1), not in_chans={in_chans}.")


@register_model
def yamnet(pretrained: bool = False, num_classes: int = YAMNET_CLASSES, in_chans: int = 1, weights_dir: str | os.PathLike | None = None, **kwargs) -> YAMNet:
    """YAMNet as a timm model (:class:`YAMNet`); see the module docstring.

    Args:
        pretrained: load ``<weights_dir>/yamnet_mobilenetv1_100/model.safetensors`` strictly and
            freeze every BatchNorm (``FrozenBatchNormAct2d``); False: random init, BN trainable.
        num_classes: 521 keeps the AudioSet head (``yamnet_class_map.csv`` order); others get a fresh head.
        in_chans: must be 1.
        weights_dir: the weights folder (:func:`ensemble.core.weights.weights_dir`).
        **kwargs: ``drop_rate``, ``drop_path_rate`` (timm's).

    Raises:
        BackboneError: ``pretrained`` and the weights file is absent. ValueError: ``in_chans != 1``.
        RuntimeError: the file does not match the architecture (strict loading).
    """
    _check_chans("yamnet", in_chans)
    for key in _FACTORY_ARGS:
        kwargs.pop(key, None)
    path = _weights_file("yamnet", YAMNET_FOLDER, weights_dir) if pretrained else None
    model = timm.create_model(
        "mobilenetv1_100", pretrained=False, num_classes=YAMNET_CLASSES, in_chans=1, act_layer="relu6", pad_type="same", global_pool="avg", **kwargs
    )
    model.__class__ = YAMNet  # same modules and state; only the input is cut into patches
    if path is not None:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(path), strict=True)
        model = freeze_batch_norm_2d(model)
    return _finish(model, num_classes, YAMNET_CLASSES, _cfg("yamnet", "yamnet", num_classes, "apache-2.0"))


def efficientat_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """EfficientAT mn04's state dict (its original key names) as timm's :class:`EfficientAtMn` keys,
    following arch.md's "Key mapping" (SE and head linear weights reshaped to 1x1 convolutions).

    Raises:
        KeyError: a key the mapping does not know, or two keys mapped to one name.
    """
    out: dict[str, torch.Tensor] = {}
    se_blocks = {int(m.group(1)) for key in state if (m := re.match(r"features\.(\d+)\.block\.2\.conc_se_layers", key))}
    for key, value in state.items():
        target = _map_key(key, se_blocks)
        if target is None:
            raise KeyError(f"EfficientAT key {key!r} has no timm counterpart; is this an mn04 checkpoint?")
        if target in out:
            raise KeyError(f"EfficientAT keys map twice onto {target!r}")
        if target.endswith(("se.conv_reduce.weight", "se.conv_expand.weight")) or target == "conv_head.weight":
            value = value[:, :, None, None]
        out[target] = value
    return out


def _map_key(key: str, se_blocks: set[int]) -> str | None:
    """One EfficientAT key's timm name, or None."""
    if m := re.fullmatch(r"features\.0\.([01])\.(\w+)", key):
        return f"{'conv_stem' if m.group(1) == '0' else 'bn1'}.{m.group(2)}"
    if m := re.fullmatch(r"features\.1\.block\.([01])\.([01])\.(\w+)", key):
        part = {("0", "0"): "conv_dw", ("0", "1"): "bn1", ("1", "0"): "conv_pw", ("1", "1"): "bn2"}[m.group(1), m.group(2)]
        return f"blocks.0.0.{part}.{m.group(3)}"
    if m := re.fullmatch(r"features\.(\d+)\.block\.(\d)\.(.+)", key):
        i, sub, rest = int(m.group(1)), m.group(2), m.group(3)
        if i not in _MN04_POSITION:
            return None
        prefix = f"blocks.{_MN04_POSITION[i]}"
        if se := re.fullmatch(r"conc_se_layers\.0\.fc([12])\.(weight|bias)", rest):
            return f"{prefix}.se.{'conv_reduce' if se.group(1) == '1' else 'conv_expand'}.{se.group(2)}" if sub == "2" else None
        projection = "3" if i in se_blocks else "2"
        layer = re.fullmatch(r"([01])\.(\w+)", rest)
        if layer is None:
            return None
        names = {"0": ("conv_pw", "bn1"), "1": ("conv_dw", "bn2"), projection: ("conv_pwl", "bn3")}
        if sub not in names:
            return None
        return f"{prefix}.{names[sub][int(layer.group(1))]}.{layer.group(2)}"
    if m := re.fullmatch(r"features\.16\.([01])\.(\w+)", key):
        return f"blocks.6.0.{'conv' if m.group(1) == '0' else 'bn1'}.{m.group(2)}"
    if m := re.fullmatch(r"classifier\.([25])\.(weight|bias)", key):
        return f"{'conv_head' if m.group(1) == '2' else 'classifier'}.{m.group(2)}"
    return None


@register_model
def efficientat_mn04(
    pretrained: bool = False, num_classes: int = MN04_CLASSES, in_chans: int = 1, weights_dir: str | os.PathLike | None = None, **kwargs
) -> EfficientAtMn:
    """EfficientAT mn04_as as a timm model (:class:`EfficientAtMn`); see the module docstring.

    Built as arch.md says: stem 8, head 512 (``conv_head`` with bias after pooling, Hardswish),
    BatchNorm eps 1e-3 and momentum 0.01 (EfficientAT's), SE with a plain sigmoid gate and ReLU,
    symmetric padding, Hardswish except the ``_nre`` (ReLU) blocks.

    Args:
        pretrained: load ``<weights_dir>/efficientat_mn04_as/model.safetensors`` (EfficientAT key
            names, :func:`efficientat_to_timm`) strictly; False: random init.
        num_classes: 527 keeps the AudioSet head (AudioSet ``class_labels_indices.csv`` order); others get a fresh head.
        in_chans: must be 1.
        weights_dir: the weights folder (:func:`ensemble.core.weights.weights_dir`).
        **kwargs: ``drop_rate``, ``drop_path_rate`` (timm's).

    Raises:
        BackboneError: ``pretrained`` and the weights file is absent. ValueError: ``in_chans != 1``.
        KeyError, RuntimeError: the file does not match the architecture (strict loading).
    """
    _check_chans("efficientat_mn04", in_chans)
    for key in _FACTORY_ARGS:
        kwargs.pop(key, None)
    path = _weights_file("efficientat_mn04", MN04_FOLDER, weights_dir) if pretrained else None
    model = EfficientAtMn(
        block_args=decode_arch_def(MN04_ARCH),
        num_classes=MN04_CLASSES,
        in_chans=1,
        stem_size=8,
        num_features=512,
        head_bias=True,
        pad_type="",
        act_layer=nn.Hardswish,
        norm_layer=functools.partial(nn.BatchNorm2d, eps=1e-3, momentum=0.01),
        se_layer=functools.partial(SqueezeExcite, gate_layer="sigmoid", force_act_layer=nn.ReLU, rd_round_fn=round_channels),
        **kwargs,
    )
    if path is not None:
        from safetensors.torch import load_file

        model.load_state_dict(efficientat_to_timm(load_file(path)), strict=True)
    return _finish(model, num_classes, MN04_CLASSES, _cfg("efficientat_mn04", "efficientat", num_classes, "mit"))


MODELS = tuple(frontends.MODELS)
"""The timm names this module registers."""

EMBEDDINGS = {"yamnet_embedding": "yamnet", "mn04_embedding": "efficientat_mn04"}
"""Frozen-embedding functionals sets (:mod:`ensemble.members.functionals`) -> the model they come from."""

EMBEDDING_SIZES = {"yamnet_embedding": 2 * 1024, "mn04_embedding": 2 * 384}
"""Their lengths: mean and max over time of the frequency-averaged last feature map."""

_EMBEDDERS: dict[tuple[str, str], nn.Module] = {}


def embedder(model_name: str, weights_dir: str | os.PathLike | None = None) -> nn.Module:
    """The pretrained ``model_name`` (``yamnet`` or ``efficientat_mn04``) in eval mode, made once per
    process and weights folder (:func:`ensemble.core.weights.weights_dir` of ``weights_dir``).

    Raises:
        BackboneError: its weights are absent.
    """
    from ..core.weights import weights_dir as find

    key = (model_name, str(find(weights_dir)))
    if key not in _EMBEDDERS:
        model = timm.create_model(model_name, pretrained=True, weights_dir=weights_dir)
        _EMBEDDERS[key] = model.eval()
    return _EMBEDDERS[key]


def embed(waveforms, sample_rate: int, set_name: str, weights_dir: str | os.PathLike | None = None) -> np.ndarray:
    """The frozen pretrained embedding of each waveform: the model of ``set_name`` (:data:`EMBEDDINGS`)
    in eval mode on its own frontend's spectrogram of the whole waveform (resampled to the
    frontend's rate with soxr, as :mod:`ensemble.inputs.audio` resamples), its :meth:`time_features`
    ``(C, frames / 32)``, then the mean over time followed by the max over time.

    Args:
        waveforms: float waveforms ``(samples,)`` at ``sample_rate`` Hz, each at least 0.1 s.
        sample_rate: Hz.
        set_name: ``yamnet_embedding`` (2048 values) or ``mn04_embedding`` (768).
        weights_dir: the weights folder (:func:`ensemble.core.weights.weights_dir`).

    Returns:
        float32 ``(len(waveforms), EMBEDDING_SIZES[set_name])``.

    Raises:
        KeyError: an unknown set. BackboneError: the weights are absent.
    """
    import librosa

    from ..core.recipe import FeatureConfig
    from ..inputs.features import FrontendRenderer

    model_name = EMBEDDINGS[set_name]
    frontend = frontends.for_model(model_name)
    settings = frontends.feature_settings(frontend)
    model = embedder(model_name, weights_dir)
    render = FrontendRenderer(FeatureConfig(**settings))
    mean = float(model.pretrained_cfg["mean"][0])
    out = np.empty((len(waveforms), EMBEDDING_SIZES[set_name]), np.float32)
    with torch.inference_mode():
        for k, y in enumerate(waveforms):
            y = np.asarray(y, dtype=np.float32)
            if sample_rate != settings["sample_rate"]:
                y = librosa.resample(y, orig_sr=sample_rate, target_sr=settings["sample_rate"])
            x = render(torch.from_numpy(np.ascontiguousarray(y))[None]) - mean  # the frontend's own values (Normalize's arithmetic)
            frames = model.time_features(x)[0]
            out[k] = torch.cat([frames.mean(dim=-1), frames.amax(dim=-1)]).numpy()
    return out
