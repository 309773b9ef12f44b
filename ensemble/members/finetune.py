"""The fine-tune kind: a transformers audio encoder (Whisper's encoder, or a wav2vec2-family encoder:
wav2vec2, HuBERT, WavLM, ...) fine-tuned end to end on the clips, with a small head.

**How a recipe names it.** A ``backbones`` entry (``name`` or ``name@seed``) whose name is a folder
of ``[paths].weights_dir`` holding a transformers ``config.json`` (one with a ``model_type``), e.g.
``"whisper_base"`` for ``../shared/weights/whisper_base`` (:func:`encoder_folder`): the same folder
an encoder set of ``[[functionals]].set`` names, trained here instead of frozen. Its optimiser and
schedule are ``[train]`` with ``[by_backbone.<name>.train]`` like any backbone's; the kind's own
settings are ``[finetune]`` (:class:`ensemble.core.recipe.FinetuneConfig`). A hub id or a path is not
an entry (the entry names the run folder): save such an encoder into the weights folder first
(``save_pretrained``). A timm ``local-dir:`` folder holds a timm ``config.json`` without
``model_type``, so the image kind keeps those entries.

**The model** (:class:`FinetunedEncoder`): the encoder's every hidden state (the embeddings and each
layer), a learned softmax-weighted sum of them (the SUPERB recipe, Yang et al. 2021), pooled over
the clip's frames (``[finetune].pooling``: ``attention``, a learned score per frame and a softmax over
the clip's frames, or ``mean``; padding frames masked out), dropout (``[train].drop_rate``) and a
linear head. Each clip (silence-trimmed, at the encoder's sample rate) is centre-cropped to
``[finetune].seconds`` (0: ``[features].duration``) or padded with silence at its end: Whisper's
encoder sees those seconds alone, its position table cut to their tokens (20 ms each, the ``clip``
window of :mod:`ensemble.members.encoders`) and its log-mel computed by its own feature extractor; a
waveform encoder sees the waveform as its feature extractor normalises it (with an attention mask
where the extractor makes one).

**Training** (:func:`train_fold`, one fold, in the calling process): AdamW with layer-wise
learning-rate decay (``[train].layer_decay``; timm's ``create_optimizer_v2`` over the groups of
:meth:`FinetunedEncoder.group_matcher`: the stem, each layer, the head), linear warm-up and cosine
decay per optimiser step (timm ``create_scheduler_v2``), the task's loss with label smoothing and
class weights, gradient accumulation (``[finetune].accumulate``), the top ``[finetune].train_layers``
layers trained and the rest frozen, the stem frozen (``[finetune].freeze_feature_encoder``).
Augmentation: ``[augment].waveform`` on the waveform (one of ``copies + 1`` versions per clip per
epoch, the clean one included, as the image kind draws its cached copies; each copy seeded by the
clip and its number, so every epoch and every resume sees the same copy), SpecAugment
(``[augment].freq_mask`` / ``time_mask`` / ``n_masks``) on Whisper's log-mel, and a waveform
encoder's own time / feature masking as its config sets it (``mask_time_prob``, ...). On CUDA the
autocast of ``[train].precision`` (fp16 with a gradient scaler) and gradient checkpointing; on the
CPU ``[train].cpu_precision``. Not used by this kind: mixup, EMA, time-shift TTA, ``[augment].image``
and ``time_roll``, and ``[speakers].norm`` (the encoder's feature extractor normalises each clip).

A run writes the run store's files as an image run does (``config.json``, ``log.csv`` and
``checkpoint.pt`` after each epoch, ``model.safetensors`` at each new best epoch through
:class:`ensemble.members.checkpoint.Checkpoint`, ``oof.csv``, ``test.csv``, ``metrics.json`` last), plus
``encoder.json`` (:data:`ENCODER`: the encoder's transformers config, its feature extractor's settings
and the head's shape), so a run loads without the weights folder. Its identity is the recipe's
training settings plus ``[finetune]``; ``resume`` continues an interrupted run from its checkpoint, and
on the CPU ends with the same tables and weights as an uninterrupted run (tests/test_finetune.py).
Seeds (``name@seed``) and pseudo-label rounds (:meth:`ensemble.members.kind.Session.pseudo`: the kept test
clips join the training clips, clean, with soft targets) work as for every member.

**Export** (:meth:`FinetuneKind.export`): one ONNX / OpenVINO IR graph per member (its fold models of
every seed and the mean of their activations), inputs ``features`` (Whisper's log-mel ``(batch,
mel bands, frames)`` or the normalised waveform ``(batch, samples)``) and ``lengths`` (int64
``(batch,)``, the clip's samples before padding), output ``proba``. The clip length is fixed per
member, so the cut position table is a constant of the graph; the feature extractor stays outside
it, as ens's rendering does for image members.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tempfile
import time
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..core import atomic, tasks
from ..core.entry import Entry
from ..core.errors import EnsError, Message, Param
from ..core.recipe import Recipe
from ..core.weights import weights_dir as find_weights
from ..deploy.engines import OPSET, OUTPUT, SUFFIX, graph_runs, onnx_session, runtime_module
from ..inputs import audio
from ..inputs.augment import SpecAugment, augment_waveform
from ..store import runs
from ..store.split import Split, check_fold, check_on_error, load_split
from . import encoders, runtime
from .checkpoint import Checkpoint, Selection
from .image_fit import class_weights
from .kind import Kind, Outcome, Session, Stage, timed
from .pseudo import PseudoLabels

ENCODER = "encoder.json"
"""A fine-tuned run's model description: the encoder's transformers config, its feature extractor's settings, the head."""
INPUTS = ("features", "lengths")
"""The exported graph's inputs (see the module docstring)."""
PREDICT_BATCH = 16
"""Clips per forward pass when a fine-tuned model predicts (validation, tables, ``ens predict``)."""
WHISPER_TOKEN = 320
"""Samples per Whisper encoder token at 16 kHz: a 10 ms hop (160) and the second convolution's stride 2."""


class FinetuneError(EnsError, ValueError):
    """A fine-tuned member that cannot be built, trained, loaded or exported as asked."""


def encoder_folder(recipe: Recipe, model: str) -> Path | None:
    """The folder ``<weights_dir>/<model>`` when it holds a transformers encoder's ``config.json``
    (a JSON object with ``model_type``), else None. Torch-free; reads one small file."""
    root = find_weights(recipe.paths.weights_dir)
    if root is None or not model or model != Path(model).name:
        return None
    path = root / model / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return root / model if isinstance(config, dict) and "model_type" in config else None


def seconds_of(recipe: Recipe) -> float:
    """The clip length in seconds the encoder sees: ``[finetune].seconds``, or ``[features].duration`` when 0."""
    return recipe.finetune.seconds or recipe.features.duration


def clip_samples(recipe: Recipe, rate: int, whisper: bool) -> int:
    """The clip length in samples at ``rate`` Hz (:func:`seconds_of`), for Whisper rounded up to whole tokens (:data:`WHISPER_TOKEN`)."""
    samples = max(1, round(seconds_of(recipe) * rate))
    return -(-samples // WHISPER_TOKEN) * WHISPER_TOKEN if whisper else samples


def _folder_settings(folder: Path) -> tuple[int | None, bool]:
    """``(sample rate in Hz or None, is Whisper)`` from an encoder folder's ``preprocessor_config.json`` and ``config.json``."""
    pre = folder / "preprocessor_config.json"
    rate = json.loads(pre.read_text()).get("sampling_rate") if pre.is_file() else None
    return (None if rate is None else int(rate)), json.loads((folder / "config.json").read_text())["model_type"] == "whisper"


# ---------------------------------------------------------------- the model


class FinetunedEncoder(nn.Module):
    """An encoder with a weighted sum of its hidden states, masked pooling and a linear head.

    Args:
        encoder: Whisper's encoder (``WhisperEncoder``) or a wav2vec2-family model (``Wav2Vec2Model``, ...).
        whisper: which of the two it is.
        samples: the fixed clip length in samples at the encoder's rate (a multiple of
            :data:`WHISPER_TOKEN` for Whisper).
        classes: output columns. pooling: ``attention`` or ``mean``. drop_rate: dropout before the head.

    ``forward(features, lengths)``: ``features`` Whisper's log-mel ``(batch, mel bands, samples / 160)``
    or the waveform ``(batch, samples)``; ``lengths`` int64 ``(batch,)`` samples of each clip before
    padding -> logits ``(batch, classes)``.
    """

    def __init__(self, encoder: nn.Module, whisper: bool, samples: int, classes: int, pooling: str = "attention", drop_rate: float = 0.0):
        super().__init__()
        config = encoder.config
        self.encoder, self.whisper, self.samples = encoder, whisper, samples
        states, width = encoders.dims(config)
        self.layer_weights = nn.Parameter(torch.zeros(states))
        self.score = nn.Linear(width, 1) if pooling == "attention" else None
        self.dropout = nn.Dropout(drop_rate)
        self.head = nn.Linear(width, classes)
        self.tokens = samples // WHISPER_TOKEN if whisper else int(encoder._get_feat_extract_output_lengths(torch.tensor(samples)))

    @property
    def layers(self) -> nn.ModuleList:
        """The encoder's transformer layers, bottom first."""
        return self.encoder.layers if self.whisper else self.encoder.encoder.layers

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's parameter groups for layer-wise learning-rate decay (``create_optimizer_v2(layer_decay=...)``):
        the stem (Whisper's convolutions and position table; a waveform encoder's feature encoder,
        projection, masking vector, positional convolution and first layer norm), then each
        transformer layer; the rest (Whisper's last layer norm, the hidden-state weights, pooling, head) is the top group."""
        stem = r"^encoder\.(?:conv1|conv2|embed_positions|feature_extractor|feature_projection|masked_spec_embed|encoder\.pos_conv_embed|encoder\.layer_norm)"
        return {"stem": stem, "blocks": r"^encoder\.(?:encoder\.)?layers\.(\d+)"}

    def token_mask(self, lengths: torch.Tensor) -> torch.Tensor:
        """float ``(batch, tokens)``: 1 for the encoder frames that hold the clip, 0 for padding."""
        if self.whisper:
            valid = torch.div(lengths + WHISPER_TOKEN - 1, WHISPER_TOKEN, rounding_mode="floor")
        else:
            valid = self.encoder._get_feat_extract_output_lengths(lengths)
        return (torch.arange(self.tokens, device=lengths.device)[None, :] < valid[:, None]).float()

    def states(self, features: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
        """Every hidden state ``(batch, tokens, width)``: the embeddings, then each layer's output (the last after the final layer norm)."""
        if not self.whisper:
            mask = None
            if getattr(self.encoder.config, "feat_extract_norm", "group") == "layer":  # encoders whose extractors make an attention mask use it
                mask = (torch.arange(features.shape[-1], device=lengths.device)[None, :] < lengths[:, None]).long()
            return list(self.encoder(features, attention_mask=mask, output_hidden_states=True).hidden_states)
        e = self.encoder
        h = nn.functional.gelu(e.conv1(features))
        h = nn.functional.gelu(e.conv2(h)).permute(0, 2, 1)
        h = h + e.embed_positions.weight[: self.tokens]  # the position table cut to the clip's tokens
        h = nn.functional.dropout(h, p=e.dropout, training=self.training)
        out = [h]
        for layer in e.layers:
            h = layer(h, None)
            h = h[0] if isinstance(h, tuple) else h
            out.append(h)
        out[-1] = e.layer_norm(h)
        return out

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.layer_weights, dim=0)
        hidden = torch.stack(self.states(features, lengths), dim=0)
        h = (weights[:, None, None, None] * hidden).sum(0)
        mask = self.token_mask(lengths)
        if self.score is None:
            pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
        else:
            scores = self.score(h).squeeze(-1).float().masked_fill(mask == 0, -1e9)
            pooled = (torch.softmax(scores, dim=1).to(h.dtype)[..., None] * h).sum(1)
        return self.head(self.dropout(pooled))


@dataclass
class Spec:
    """What builds a fine-tuned model without its weights folder (``encoder.json``).

    Attributes:
        config: the encoder's transformers config (``to_dict``). extractor: its feature extractor's settings.
        whisper: Whisper's encoder or a waveform encoder. samples: the clip length in samples.
        classes: output columns. pooling, drop_rate: the head's.
    """

    config: dict
    extractor: dict
    whisper: bool
    samples: int
    classes: int
    pooling: str
    drop_rate: float

    @property
    def rate(self) -> int:
        """The encoder's sample rate in Hz."""
        return int(self.extractor["sampling_rate"])

    def feature_extractor(self):
        """The transformers feature extractor these settings describe."""
        import transformers

        return getattr(transformers, self.extractor["feature_extractor_type"]).from_dict(self.extractor)

    def build(self) -> FinetunedEncoder:
        """The model with random weights (to load a run's ``model.safetensors`` into)."""
        import transformers

        values = {k: v for k, v in self.config.items() if k != "model_type"}
        config = transformers.AutoConfig.for_model(self.config["model_type"], **values)
        if self.whisper:
            encoder = transformers.models.whisper.modeling_whisper.WhisperEncoder(config)
        else:
            encoder = transformers.AutoModel.from_config(config)
        return FinetunedEncoder(encoder, self.whisper, self.samples, self.classes, self.pooling, self.drop_rate)


def pretrained(recipe: Recipe, entry: str, classes: int) -> tuple[FinetunedEncoder, Spec]:
    """The entry's encoder loaded from its weights folder in float32 (Whisper: the encoder of
    ``WhisperForAudioClassification``, as :func:`ensemble.members.encoders.load`; others ``AutoModel``), frozen
    as ``[finetune]`` says, with a new head (initialised from torch's generator: seed first); and its :class:`Spec`.

    Raises:
        FinetuneError: the entry names no encoder folder, or transformers cannot load it.
    """
    model = Entry.parse(entry).model
    where = encoder_folder(recipe, model)
    if where is None:
        raise FinetuneError(f"backbones entry {entry!r}: no transformers encoder folder {model!r} in [paths].weights_dir; check the name.")
    try:
        encoder, extractor = encoders.pretrained(where)
    except (OSError, ValueError) as err:
        raise FinetuneError(f"backbones entry {entry!r}: transformers cannot load {where} ({err}); check the folder.") from err
    config = encoder.config
    whisper = config.model_type == "whisper"
    rate = int(extractor.sampling_rate)
    samples = clip_samples(recipe, rate, whisper)
    if whisper:
        if samples // WHISPER_TOKEN > config.max_source_positions:
            raise FinetuneError(f"[finetune].seconds: {samples / rate:.1f} s is longer than Whisper's 30 s input; give at most 30.")
    spec = Spec(json.loads(encoder.config.to_json_string()), json.loads(extractor.to_json_string()), whisper, samples, classes,
                recipe.finetune.pooling, recipe.train.drop_rate)  # fmt: skip
    net = FinetunedEncoder(encoder, whisper, samples, classes, recipe.finetune.pooling, recipe.train.drop_rate)
    _freeze(net, recipe)
    return net, spec


def _freeze(net: FinetunedEncoder, recipe: Recipe) -> None:
    """Freeze the encoder below its top ``[finetune].train_layers`` layers (0: none) with its whole stem,
    and with ``[finetune].freeze_feature_encoder`` the feature encoder (Whisper's two convolutions, a
    waveform encoder's convolutional feature encoder: transformers' ``freeze_feature_encoder``)."""
    ft = recipe.finetune
    layers = net.layers
    frozen = len(layers) - ft.train_layers if 0 < ft.train_layers < len(layers) else 0
    if frozen:
        stem = re.compile(net.group_matcher()["stem"])
        for name, param in net.named_parameters():
            if stem.match(name):
                param.requires_grad_(False)
        for layer in layers[:frozen]:
            layer.requires_grad_(False)
    if ft.freeze_feature_encoder:
        if net.whisper:
            net.encoder.conv1.requires_grad_(False)
            net.encoder.conv2.requires_grad_(False)
        else:
            net.encoder.freeze_feature_encoder()
    if net.whisper:
        net.encoder.embed_positions.requires_grad_(False)  # Whisper's sinusoidal table is never trained


def inputs(spec: Spec, extractor, clips: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's inputs for ``clips`` (each ``(samples,)`` at the encoder's rate, at most
    ``spec.samples`` long): ``features`` (Whisper's log-mel of each clip padded with silence at its end
    to ``spec.samples``, or the waveform normalised by the extractor over the clip and padded) and ``lengths``."""
    lengths = torch.tensor([len(c) for c in clips], dtype=torch.int64)
    padded = [np.asarray(c, dtype=np.float32) for c in clips]
    if spec.whisper:
        x = extractor(padded, sampling_rate=spec.rate, padding="max_length", max_length=spec.samples, return_tensors="np").input_features
    else:
        x = extractor(padded, sampling_rate=spec.rate, padding="max_length", max_length=spec.samples, return_tensors="np").input_values
    return torch.from_numpy(np.asarray(x, dtype=np.float32)), lengths


def fit(y: np.ndarray, samples: int) -> np.ndarray:
    """A trimmed clip as the encoder sees it: centre-cropped to ``samples`` when longer (:func:`ensemble.inputs.audio.fix_length`), else as it is."""
    return audio.fix_length(y, samples) if len(y) > samples else y


# ---------------------------------------------------------------- data


@dataclass
class Clips(Split):
    """A :class:`Split` with every clip's waveform as the encoder sees it (silence trimmed, at the encoder's
    rate, centre-cropped to the clip length; float32 ``(samples,)`` each), loaded once per grid.

    Attributes:
        train, test: the waveforms in the training and test tables' order. rate: their sample rate in Hz.
    """

    train: list = None
    test: list = None
    rate: int = 16000


def load_clips(recipe: Recipe, split: Split, rate: int, samples: int, progress: bool, on_error: str = "fail") -> Clips:
    """The clips of ``split`` read at ``rate`` Hz, trimmed at ``[features].trim_db`` and fitted to ``samples`` (:func:`fit`).

    With ``on_error="skip"`` a clip that cannot be read is left out as the image kind leaves it out
    (:meth:`ensemble.store.split.Split.skipping`: a training row dropped, a test clip predicted as the
    training prior), so the kind trains on a corpus with bad files whether or not another kind read it first.

    Raises:
        AudioError: with ``on_error="fail"``, clips that cannot be read, every one listed with its problem.
        CompetitionError: with ``skip``, no training clip or an empty fold would be left (:meth:`Split.without`).
        OptionError: ``on_error`` is not ``fail`` or ``skip``.
    """
    check_on_error(on_error)
    comp, trim, n = split.competition, recipe.features.trim_db, len(split.competition.train)
    paths = comp.audio_paths(comp.train) + comp.audio_paths(comp.test)
    bar = tqdm(paths, desc=f"read clips at {rate} Hz", unit="clip", leave=False, disable=None if progress else True)
    waves, failed = [], {}
    for i, path in enumerate(bar):
        try:
            waves.append(fit(audio.load_trimmed(path, rate, trim)[0], samples))
        except audio.AudioError as err:
            failed["train" if i < n else "test", i if i < n else i - n] = (path, str(err))
            waves.append(np.zeros(samples, dtype=np.float32))  # a skipped test clip's rows become the prior
    if failed and on_error == "fail":
        fix = Message("fix or remove these files, or pass ", Param("on_error", "skip"))
        raise audio.AudioError(audio.error_list(dict(failed.values()), fix))
    bad = {row for table, row in failed if table == "train"}
    kept = split.skipping(failed) if failed else split
    train = [w for row, w in enumerate(waves[:n]) if row not in bad]
    return Clips(kept.competition, kept.folds, kept.skipped, train=train, test=waves[n:], rate=rate)


# ---------------------------------------------------------------- one run


def run_config(recipe: Recipe, split: Split, entry: str, fold: int, pseudo: PseudoLabels | None) -> dict:
    """A fine-tuned run's identity: :func:`ensemble.store.runs.run_config` plus ``[finetune]``."""
    config = runs.run_config(recipe, split.competition.classes, split.folds_hash, entry, fold, pseudo=None if pseudo is None else pseudo.identity())
    return {**config, "finetune": dataclasses.asdict(recipe.finetune)}


def _predict(net: FinetunedEncoder, spec: Spec, extractor, clips: Sequence[np.ndarray], device, activation, precision: str) -> np.ndarray:
    """Probabilities ``(len(clips), classes)`` float64 of one model, :data:`PREDICT_BATCH` clips a pass."""
    net.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(clips), PREDICT_BATCH):
            x, lengths = inputs(spec, extractor, clips[start : start + PREDICT_BATCH])
            with runtime.autocast(device, precision):
                logits = net(x.to(device), lengths.to(device)).float()
            out.append(activation(logits).cpu())
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros((0, spec.classes))


def _copy_seed(key: str, row: int, copy: int) -> int:
    """The seed of augmented copy ``copy`` of training row ``row`` (CRC-32 of the waveform settings' key and both numbers)."""
    return zlib.crc32(f"{key}:{row}:{copy}".encode())


@dataclass
class _Run:
    """One run's model, optimiser, schedule, data and training state (what ``checkpoint.pt`` holds)."""

    recipe: Recipe
    clips: Clips
    entry: str
    fold: int
    net: FinetunedEncoder
    spec: Spec
    extractor: object
    device: torch.device
    precision: str
    generator: torch.Generator
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    criterion: Callable
    spec_augment: nn.Module | None
    pool: np.ndarray
    valid_idx: np.ndarray
    y: torch.Tensor
    test_rows: np.ndarray | None
    batch_size: int
    steps: int
    updates: int
    selection: Selection = dataclasses.field(default_factory=Selection)
    start: int = 0


def _setup(recipe: Recipe, clips: Clips, entry: str, fold: int, pseudo: PseudoLabels | None) -> _Run:
    """Seed, build the model (pretrained encoder, new head), optimiser, schedule, loss and targets of a run."""
    t, ft, task, classes = recipe.train, recipe.finetune, clips.competition.task, clips.competition.classes
    fold_of = clips.folds["fold"].to_numpy()
    train_idx, valid_idx = np.flatnonzero(fold_of != fold), np.flatnonzero(fold_of == fold)
    n_train = len(clips.train)
    pool = train_idx if pseudo is None else np.concatenate([train_idx, n_train + np.arange(len(pseudo.rows))])
    generator = runtime.seed_everything(t.seed)
    device = runtime.resolve_device(recipe.runtime.device)
    precision = runtime.precision_on(t, device)
    net, spec = pretrained(recipe, entry, len(classes))
    net = net.to(device)
    if device.type == "cuda":
        net.encoder.gradient_checkpointing_enable()
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    batch_size = min(t.batch_size, len(pool))
    steps = max(1, len(pool) // batch_size)
    updates = math.ceil(steps / ft.accumulate)
    optimizer = create_optimizer_v2(net, "adamw", lr=t.lr, weight_decay=t.weight_decay, layer_decay=t.layer_decay or None)
    scheduler, _ = create_scheduler_v2(
        optimizer, "cosine", num_epochs=t.epochs, warmup_epochs=t.warmup_epochs, warmup_lr=t.lr * 0.01, min_lr=t.min_lr,
        step_on_epochs=False, updates_per_epoch=updates,
    )  # fmt: skip
    weight = class_weights(recipe, clips.y[train_idx], len(classes)) if task.takes_class_weights else None
    criterion = task.loss(t.label_smoothing, None if weight is None else weight.to(device))
    a = recipe.augment
    masking = SpecAugment(a.freq_mask, a.time_mask, a.n_masks).to(device) if spec.whisper and (a.freq_mask or a.time_mask) else None
    if pseudo is None:
        y = torch.as_tensor(np.array(clips.y))
    else:
        y = torch.as_tensor(np.concatenate([np.eye(len(classes))[clips.y], pseudo.targets]), dtype=torch.float32)
    return _Run(
        recipe, clips, entry, fold, net, spec, spec.feature_extractor(), device, precision, generator, optimizer, scheduler,
        torch.amp.GradScaler(device.type, enabled=precision == "fp16"), criterion, masking, pool, valid_idx, y,
        None if pseudo is None else pseudo.rows, batch_size, steps, updates,
    )  # fmt: skip


def _wave(run: _Run, row: int, copy: int) -> np.ndarray:
    """Pool row ``row``'s waveform: a training clip (augmented copy ``copy``, 0 = clean) or a pseudo-labelled test clip, clean."""
    n_train = len(run.clips.train)
    if row >= n_train:
        return run.clips.test[run.test_rows[row - n_train]]
    y = run.clips.train[row]
    if not copy:
        return y
    a = run.recipe.augment
    return augment_waveform(y, run.clips.rate, a, _copy_seed(a.waveform_key(), int(row), int(copy)))


def _step(run: _Run, rows: np.ndarray, copies: np.ndarray | None) -> torch.Tensor:
    """Forward and backward of one micro-batch; returns its (unscaled) loss."""
    waves = [_wave(run, int(r), 0 if copies is None else int(c)) for r, c in zip(rows, copies if copies is not None else rows)]
    x, lengths = inputs(run.spec, run.extractor, waves)
    x, lengths = x.to(run.device), lengths.to(run.device)
    if run.spec_augment is not None:
        x = run.spec_augment(x[:, None])[:, 0]
    with runtime.autocast(run.device, run.precision):
        loss = run.criterion(run.net(x, lengths).float(), run.y[rows].to(run.device))
    run.scaler.scale(loss / run.recipe.finetune.accumulate).backward()
    return loss.detach()


def _epoch(run: _Run, epoch: int, progress: bool) -> dict:
    """Train one epoch, validate on the fold, record it in the selection; returns its scores."""
    t, a, task = run.recipe.train, run.recipe.augment, run.clips.competition.task
    started = time.time()
    order = torch.randperm(len(run.pool), generator=run.generator).numpy()[: run.steps * run.batch_size].reshape(run.steps, run.batch_size)
    copies = torch.randint(0, a.copies + 1, (len(run.pool),), generator=run.generator).numpy() if a.copies else None
    run.net.train()
    if run.spec_augment is not None:
        run.spec_augment.train()
    losses = []
    bar = tqdm(order, desc=f"{run.entry} fold {run.fold} epoch {epoch + 1}/{t.epochs}", unit="batch", leave=False, disable=None if progress else True)
    run.optimizer.zero_grad(set_to_none=True)
    for step, positions in enumerate(bar):
        losses.append(_step(run, run.pool[positions], None if copies is None else copies[positions]))
        if (step + 1) % run.recipe.finetune.accumulate == 0 or step + 1 == run.steps:
            run.scaler.step(run.optimizer)
            run.scaler.update()
            run.optimizer.zero_grad(set_to_none=True)
            run.scheduler.step_update(epoch * run.updates + step // run.recipe.finetune.accumulate + 1)
    train_seconds = time.time() - started
    valid = [run.clips.train[i] for i in run.valid_idx]
    proba = _predict(run.net, run.spec, run.extractor, valid, run.device, task.activation, run.precision)
    scores = task.scores(run.clips.y[run.valid_idx], proba)
    timing = {"train_seconds": round(train_seconds, 2), "seconds": round(time.time() - started, 2)}
    run.selection.record(t, epoch + 1, torch.stack(losses).mean().item(), scores, proba, run.optimizer.param_groups[-1]["lr"], timing)
    return scores


def _state(run: _Run, epoch: int) -> dict:
    """What ``checkpoint.pt`` holds after ``epoch`` (0-based) besides the selection: weights, optimiser, schedule, scaler, random states."""
    return {
        "epoch": epoch + 1,
        "model": run.net.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "rng": runtime.rng_state(run.generator, None),
    }


def _resume(run: _Run, state: dict, checkpoint: Checkpoint) -> None:
    """Restore a ``checkpoint.pt``: weights, optimiser, schedule, scaler, every random state, the log and the selection."""
    run.net.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    runtime.set_rng_state(state["rng"], run.generator, None)
    run.selection, run.start = checkpoint.resumed(state, run.net), state["epoch"]


def train_fold(
    recipe: Recipe, clips: Clips, entry: str, fold: int, force: bool = False, progress: bool = True, resume: bool = False, pseudo: PseudoLabels | None = None
) -> tuple[dict, bool]:
    """Fine-tune ``entry``'s encoder on every fold but ``fold``, validate on ``fold``, write the run folder
    (see the module docstring). With ``progress`` each epoch prints one line (and tqdm a bar of its
    batches when stderr is a terminal).

    Returns:
        the ``metrics.json`` dict, and whether the run was already finished with the same configuration (then skipped).

    Raises:
        RunConflictError: a finished run (or the checkpoint to resume) of another configuration.
        OptionError: ``fold`` is not one of the folds. FinetuneError: see :func:`pretrained`.
    """
    recipe = recipe.for_backbone(entry)
    out = runs.run_dir(recipe, entry, fold)
    config = run_config(recipe, clips, entry, fold, pseudo)
    if not force and (done := runs.finished_metrics(out, config)) is not None:
        return done, True
    check_fold(recipe, fold)
    checkpoint = Checkpoint(out, config, entry)
    state = checkpoint.load() if resume and checkpoint.exists() else None
    (out / runs.METRICS).unlink(missing_ok=True)
    atomic.write_json(out / runs.CONFIG, config)
    t, task, classes = recipe.train, clips.competition.task, clips.competition.classes
    with runtime.torch_threads(recipe.runtime.threads):
        run = _setup(recipe, clips, entry, fold, pseudo)
        atomic.write_json(out / ENCODER, dataclasses.asdict(run.spec))
        if state is not None:
            _resume(run, state, checkpoint)
        for epoch in range(run.start, t.epochs):
            if run.selection.stops(t):
                if progress:
                    tqdm.write(f"{entry} fold {fold}: early stop, no {t.metric} gain in {t.patience} epochs")
                break
            scores = _epoch(run, epoch, progress)
            checkpoint.save_epoch(run.selection, _state(run, epoch), run.net)
            if progress:
                tqdm.write(run.selection.line(f"{entry} fold {fold}", t.epochs, scores))
        run.net.load_state_dict(checkpoint.best_weights())
        ids = clips.competition.train[clips.competition.config.id_col].to_numpy()
        atomic.write_csv(out / runs.OOF, runs.proba_frame(ids[run.valid_idx], run.selection.best_proba, classes, fold=fold))
        test = clips.fill_skipped(_predict(run.net, run.spec, run.extractor, clips.test, run.device, task.activation, run.precision))
        atomic.write_csv(out / runs.TEST, runs.proba_frame(clips.competition.test[clips.competition.config.id_col].to_numpy(), test, classes))
    report = {**task.report(clips.y[run.valid_idx], run.selection.best_proba, classes), "backbone": entry, "fold": fold, "epoch": run.selection.best_epoch}
    report.update(
        {"device": str(run.device), "encoder": run.spec.config["model_type"], "trainable": sum(p.numel() for p in run.net.parameters() if p.requires_grad)}
    )
    if pseudo is not None:
        report["pseudo_labelled"] = len(pseudo.rows)
    atomic.write_json(out / runs.METRICS, report)
    checkpoint.finish()
    return report, False


# ---------------------------------------------------------------- loaded for prediction, exported


class FoldsGraph(nn.Module):
    """A member's fold models as one graph: ``(features, lengths)`` -> the mean of their activations ``(batch, classes)``."""

    def __init__(self, models: list[FinetunedEncoder], activation: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.models, self.activation = nn.ModuleList(models), activation

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.activation(m(features, lengths)) for m in self.models]).mean(0)


@dataclass
class FinetunedMember:
    """A fine-tuned member loaded for prediction (:class:`ensemble.members.kind.Loaded`).

    Attributes:
        made_with: its runs' recipe, ``[features].sample_rate`` set to the encoder's (clips are given at it).
        models: its fold models of every seed (eval mode, on ``device``), or its exported graph's runner.
        spec: the models' :class:`Spec`. device: where they run. activation: the task's (None for an exported graph).
    """

    made_with: Recipe
    models: list
    spec: Spec
    device: torch.device
    activation: Callable | None
    population = None
    """Not speaker-normalised."""

    @property
    def duration(self) -> float:
        """The clip length in seconds the encoder sees."""
        return self.spec.samples / self.spec.rate

    def predict(self, clips, speaker_clips, shared: dict, batch_size: int) -> np.ndarray:
        """The mean of its models' activations ``(len(clips), classes)`` of trimmed clips at the encoder's rate (centre-cropped to its length)."""
        extractor = self.spec.feature_extractor()
        fitted = [fit(np.asarray(c, dtype=np.float32), self.spec.samples) for c in clips]
        if self.activation is None:
            out = [self.models[0](*inputs(self.spec, extractor, fitted[s : s + PREDICT_BATCH])) for s in range(0, len(fitted), PREDICT_BATCH)]
            return np.concatenate(out).astype(np.float64) if out else np.zeros((0, self.spec.classes))
        precision = runtime.precision_on(self.made_with.train, self.device)
        return np.mean([_predict(m, self.spec, extractor, fitted, self.device, self.activation, precision) for m in self.models], axis=0)


def _runner(fmt: str, path: Path, threads: int) -> Callable[[torch.Tensor, torch.Tensor], np.ndarray]:
    """The exported graph at ``path`` in ONNX Runtime (:func:`ensemble.deploy.engines.onnx_session`) or OpenVINO
    (CPU, float32) as ``(features, lengths) -> proba``."""
    if fmt == "onnx":
        session = onnx_session(path, threads)
        return lambda x, n: session.run([OUTPUT], {INPUTS[0]: x.numpy(), INPUTS[1]: n.numpy()})[0]
    ov = runtime_module("openvino")
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"})
    return lambda x, n: np.asarray(compiled({0: x.numpy(), 1: n.numpy()})[0])


class FinetuneKind(Kind):
    """Entries of ``backbones`` that name a transformers encoder folder of ``[paths].weights_dir`` (:func:`encoder_folder`)."""

    name = "finetune"

    def owns(self, recipe: Recipe, entry: Entry) -> bool:
        return recipe.functionals_member(str(entry)) is None and encoder_folder(recipe, entry.model) is not None

    def reads_at(self, recipe: Recipe, entry: str) -> tuple[int, float]:
        """The encoder's sample rate (its feature extractor's ``sampling_rate``) and ``[features].trim_db``."""
        rate, _ = _folder_settings(encoder_folder(recipe, Entry.parse(entry).model))
        return rate or recipe.features.sample_rate, recipe.features.trim_db

    def _clips(self, session: Session, entry: str) -> Clips:
        """The clips at the entry's rate and length, loaded once per grid."""
        recipe = session.recipe.for_backbone(entry)
        rate, whisper = _folder_settings(encoder_folder(recipe, Entry.parse(entry).model))
        rate = rate or recipe.features.sample_rate
        samples = clip_samples(recipe, rate, whisper)
        key = ("finetune", rate, recipe.features.trim_db, samples)
        if key not in session.loaded:
            first = not session.loaded  # else another kind read the corpus first and recorded what it skipped
            base = load_split(session.recipe, skipped=False) if first else session.split()
            loaded = load_clips(recipe, base, rate, samples, session.progress, session.on_error)
            if first:  # what this kind skips now, the blend leaves out too (an earlier run's stale list goes)
                session.record_skipped(loaded)
            session.loaded[key] = loaded
        return session.loaded[key]

    def train(self, session: Session, entries: list[str]) -> Iterator[Outcome]:
        """Each entry's folds in this process, on its clips (loaded once per rate and length)."""
        for entry in entries:
            clips = self._clips(session, entry)
            for k in session.folds:
                if not session.resume and (runs.run_dir(session.recipe, entry, k) / runs.CHECKPOINT).exists():
                    session.event("afresh", f"{entry} fold {k}")
                report, skipped = train_fold(session.recipe, clips, entry, k, session.force, session.progress, session.resume, session.pseudo(entry, k))
                yield Outcome(entry, k, report, skipped)

    def stages(self, recipe: Recipe, competition, todo: dict[str, list[int]]) -> list[Stage]:
        """Per entry: a few real training steps timed on real training clips, times the steps its folds take.
        The basis names the seconds per epoch of one fold, so a user can size the schedule."""
        stages = []
        for entry, folds in todo.items():
            if not folds:
                continue
            r = recipe.for_backbone(entry)
            t = r.train
            step, forward = _step_seconds(r, entry, competition)
            k = r.folds.n_splits
            n_train = len(competition.train) * (k - 1) // k
            steps = max(1, n_train // min(t.batch_size, n_train))
            evaluations = math.ceil((len(competition.train) - n_train) / PREDICT_BATCH)
            per_epoch = steps * step + evaluations * forward
            per_fold = per_epoch * t.epochs + math.ceil(len(competition.test) / PREDICT_BATCH) * forward
            stages.append(
                Stage(
                    f"fine-tune {entry} ({len(folds)} folds x {t.epochs} epochs)",
                    per_fold * len(folds),
                    f"{per_epoch:.0f} s per epoch per fold: {step:.2f} s per step x {steps} steps + {evaluations} evaluation batches x {forward:.2f} s",
                )
            )
        return stages

    def detail(self, metrics: dict) -> str:
        return f"epoch {metrics['epoch']}, {metrics.get('encoder', '')} fine-tuned"

    def trained(self, run: Path) -> bool:
        return (run / runs.MODEL).is_file() and (run / ENCODER).is_file()

    def load(self, recipe: Recipe, member: runs.Member, made_with: Recipe, trained, classes: list[str], device, exported) -> FinetunedMember:
        """Its fold models (built from ``encoder.json``, ``model.safetensors`` loaded strictly), or with ``exported`` its one graph.

        Raises:
            FinetuneError: a run's ``encoder.json`` or weights do not load. ExportError: no graph of it, or a stale one.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        entry, fold, run = trained[0]
        try:
            spec = Spec(**json.loads((run / ENCODER).read_text()))
        except (OSError, ValueError, TypeError) as err:
            raise FinetuneError(f"{run / ENCODER} cannot be read ({err}); {member.fix(entry, fold)}.") from err
        made_with = dataclasses.replace(made_with, features=dataclasses.replace(made_with.features, sample_rate=spec.rate))
        if exported is not None:
            return FinetunedMember(made_with, [_runner(exported.fmt, exported.graph(member.name, self.name, trained), exported.threads)], spec, device, None)
        models = []
        for entry, fold, run in trained:
            net = spec.build()
            try:
                net.load_state_dict(load_file(run / runs.MODEL))
            except (RuntimeError, SafetensorError) as err:
                raise FinetuneError(f"{run / runs.MODEL} does not load into {entry}'s encoder ({str(err)[:200]}); {member.fix(entry, fold)}.") from err
            models.append(net.to(device).eval())
        return FinetunedMember(made_with, models, spec, device, tasks.get(recipe.competition.task).activation)

    def export(self, loaded: FinetunedMember, member: runs.Member, out: Path, fmt: str, on_model) -> dict:
        """One graph of the member's fold models (:class:`FoldsGraph`) with inputs :data:`INPUTS`, saved as
        ONNX (torch's exporter) or OpenVINO IR (converted from it, float32), and the SHA-1 of each run's weights."""
        spec = loaded.spec
        extractor = spec.feature_extractor()
        silence = [np.zeros(spec.samples, dtype=np.float32), np.zeros(spec.samples // 2, dtype=np.float32)]
        example = inputs(spec, extractor, silence)
        graph = FoldsGraph(loaded.models, tasks.get(loaded.made_with.competition.task).activation).eval()
        path = out / f"{member.name}{SUFFIX[fmt]}"
        _save_graph(graph, example, path, fmt)
        if on_model is not None:
            on_model(path)
        shapes = [{"name": INPUTS[0], "shape": ["batch", *example[0].shape[1:]], "dtype": "float32"}, {"name": INPUTS[1], "shape": ["batch"], "dtype": "int64"}]
        return {"kind": self.name, "file": path.name, "inputs": shapes, "samples": spec.samples, "sample_rate": spec.rate, "runs": graph_runs(member)}


def _save_graph(graph: nn.Module, example: tuple[torch.Tensor, torch.Tensor], path: Path, fmt: str) -> None:
    """Export ``graph`` to ONNX at ``path`` (torch's ``torch.export``-based exporter, dynamic batch), or to
    OpenVINO IR converted from that ONNX graph (float32), atomically."""

    def onnx_to(target: Path) -> None:
        batch = torch.export.Dim("batch")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                graph, example, input_names=list(INPUTS), output_names=[OUTPUT], dynamic_shapes=({0: batch}, {0: batch}),
                opset_version=OPSET, dynamo=True, verbose=False,
            )  # fmt: skip
        with atomic.atomic_path(target) as tmp:
            program.save(str(tmp), external_data=False)

    if fmt == "onnx":
        onnx_to(path)
        return
    ov = runtime_module("openvino")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        onnx_path = Path(scratch) / "model.onnx"
        onnx_to(onnx_path)
        converted = ov.convert_model(onnx_path)
    with atomic.atomic_path(path) as tmp:
        ov.save_model(converted, str(tmp), compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), path.with_suffix(".bin"))


def _step_seconds(recipe: Recipe, entry: str, competition) -> tuple[float, float]:
    """Seconds of one training step (forward, backward, AdamW) of a ``[train].batch_size`` batch of real
    training clips, the fastest of two after a warm-up, and of one evaluation pass of :data:`PREDICT_BATCH` clips."""
    t = recipe.train
    device = runtime.resolve_device(recipe.runtime.device)
    with runtime.torch_threads(recipe.runtime.threads):
        torch.manual_seed(0)
        net, spec = pretrained(recipe, entry, len(competition.classes))
        net = net.to(device)
        extractor = spec.feature_extractor()
        paths = competition.audio_paths(competition.train)
        n = max(t.batch_size, PREDICT_BATCH)
        waves = [fit(audio.load_trimmed(p, spec.rate, recipe.features.trim_db)[0], spec.samples) for p in paths[:: max(1, len(paths) // n)][:n]]
        while len(waves) < n:
            waves += waves[: n - len(waves)]
        x, lengths = inputs(spec, extractor, waves[: t.batch_size])
        y = torch.randint(0, len(competition.classes), (len(x),))
        optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=t.lr)
        precision = runtime.precision_on(t, device)
        net.train()

        def step():
            optimizer.zero_grad(set_to_none=True)
            with runtime.autocast(device, precision):
                loss = nn.functional.cross_entropy(net(x.to(device), lengths.to(device)).float(), y.to(device))
            loss.backward()
            optimizer.step()

        times = [timed(step) for _ in range(3)][1:]
        activation = tasks.get(recipe.competition.task).activation
        forward = timed(lambda: _predict(net, spec, extractor, waves[:PREDICT_BATCH], device, activation, precision))
    return min(times), forward
