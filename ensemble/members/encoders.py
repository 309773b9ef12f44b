"""Speech-pretrained transformer encoders as frozen embedding sets: Whisper, wav2vec2, HuBERT, WavLM,
and any audio encoder that transformers' ``AutoModel`` / ``AutoFeatureExtractor`` load.

An encoder set is named in a recipe's ``[[functionals]].set`` by where its weights are:

- a folder of :func:`ensemble.core.weights.weights_dir` holding transformers' ``config.json`` (e.g.
  ``"whisper_base"`` for ``../shared/weights/whisper_base``);
- a path to such a folder;
- a model hub id ``"org/name"`` (e.g. ``"openai/whisper-small"``, ``"microsoft/wavlm-base-plus"``),
  loaded as transformers does (it needs a machine that reaches the hub, or transformers' own cache).

Each clip (silence-trimmed, resampled to the encoder's rate) is run through the frozen encoder in
eval mode, with every hidden state returned (the embeddings, then each layer: ``L`` states of width
``d``), and each state is pooled over the frames that hold the clip: mean, then standard deviation.
The cached vector of a clip is ``L x 2 x d`` float32 values (Whisper base: 7 x 2 x 512 = 7168), in
the order ``state 0 mean, state 0 std, state 1 mean, ...`` (:func:`names`). A member picks its
hidden states with ``[[functionals]].layers`` (:func:`columns`), so one cache serves every choice.
Mean + std pooling of hidden states with a linear model is the frozen-SSL protocol of SUPERB (Yang
et al. 2021) and EmoBox (Ma et al. 2024); middle layers often carry more emotion than the last.

Whisper's encoder only accepts 30 s of input (3000 log-mel frames, 1500 positions). Two windows:

- ``"<encoder>"`` (the default, ``clip``): the encoder sees the clip alone: its position table is cut
  to the clip's own tokens (20 ms each) and nothing is padded: far cheaper than 30 s per short clip (docs/results.md);
- ``"<encoder>:pad30"``: the clip padded with silence to 30 s as in Whisper's pretraining, and only
  the tokens that hold the clip pooled.

``docs/results.md`` ("Speech-encoder members", ``benchmarks/encoder_members.py``) measures both and
the layer choices on cross-validated OOF. Clips longer than 30 s are cut into 30 s pieces whose tokens
are pooled together. Other encoders (wav2vec2 family) take the raw waveform as their feature
extractor normalises it, at any length, and only ``clip`` applies.

Models are loaded once per process, source and device (CUDA when available), in float32 (transformers
5 keeps a float16 checkpoint's dtype unless told). torch and transformers are imported on first use.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import numpy as np

from ..core.encoder_sets import EncoderError, layer_indices, source, split_window

VERSION = 1
"""Bumped whenever the pooled vector's definition changes, so cached vectors of the old one are not reused."""

WHISPER_CHUNK_S = 30.0
"""Whisper's input window, seconds (3000 frames of 10 ms, 1500 positions of 20 ms)."""

MIN_SAMPLES = 1600
"""Shorter clips are padded with silence to this many samples (0.1 s at 16 kHz), enough for a wav2vec2 convolutional stem (400 samples)."""

_MODELS: dict[tuple[str, str], tuple[object, object]] = {}


@functools.cache
def _config_at(where: str):
    """transformers' config of the encoder at ``where`` (a folder or hub id), read once per process:
    the vector cache asks for the set's size with every clip it computes."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(where)


def _config(set_name: str, weights_dir):
    where = source(set_name, weights_dir)
    try:
        return _config_at(where)
    except (OSError, ValueError) as err:
        raise EncoderError(f"set={set_name!r}: transformers cannot read its config ({err}); check the folder or the hub id.") from err


def shape(set_name: str, weights_dir: str | os.PathLike | None = None) -> tuple[int, int]:
    """``(states, width)``: the encoder's hidden states (embeddings + layers) and their width ``d``, from its config.

    Raises:
        EncoderError: see :func:`ensemble.core.encoder_sets.source`; a config transformers cannot read.
    """
    return dims(_config(set_name, weights_dir))


def dims(config) -> tuple[int, int]:
    """``(states, width)`` of a transformers encoder ``config``: its hidden states (the embeddings and each
    layer; Whisper's ``encoder_layers``, others' ``num_hidden_layers``) and their width (``d_model`` / ``hidden_size``)."""
    if config.model_type == "whisper":
        return config.encoder_layers + 1, config.d_model
    return config.num_hidden_layers + 1, config.hidden_size


def size(set_name: str, weights_dir: str | os.PathLike | None = None) -> int:
    """The cached vector's length: states x 2 (mean, std) x width."""
    states, width = shape(set_name, weights_dir)
    return states * 2 * width


def names(set_name: str, weights_dir: str | os.PathLike | None = None) -> list[str]:
    """Column names in vector order: ``<stem>_l<k>_mean<j>`` then ``<stem>_l<k>_std<j>`` for each state ``k``."""
    states, width = shape(set_name, weights_dir)
    stem = _stem(set_name)
    return [f"{stem}_l{k}_{stat}{j:04d}" for k in range(states) for stat in ("mean", "std") for j in range(width)]


def columns(set_name: str, layers: str, weights_dir: str | os.PathLike | None = None) -> np.ndarray:
    """The vector's column indices of the hidden states ``layers`` picks (:func:`ensemble.core.encoder_sets.layer_indices`), in order.

    Raises:
        EncoderError: see :func:`ensemble.core.encoder_sets.layer_indices` and :func:`shape`.
    """
    states, width = shape(set_name, weights_dir)
    return np.concatenate([np.arange(k * 2 * width, (k + 1) * 2 * width) for k in layer_indices(layers, states)])


def layer_of(column_names: list[str]) -> list[int]:
    """The hidden state of each column name of :func:`names` (for reports: which layers carry the weight)."""
    return [int(re.search(r"_l(\d+)_(?:mean|std)\d+$", n).group(1)) for n in column_names]


def identity(set_name: str, weights_dir: str | os.PathLike | None = None) -> str:
    """The cache identity: ``encoder-<stem>-<window>-v<VERSION>-w<weights files' bytes>`` (a hub id: ``-hub``).

    Raises:
        EncoderError: see :func:`ensemble.core.encoder_sets.source`.
    """
    _, window = split_window(set_name)
    where = Path(source(set_name, weights_dir))
    files = sorted(where.glob("*.safetensors")) + sorted(where.glob("*.bin")) if where.is_dir() else []
    fingerprint = f"w{sum(f.stat().st_size for f in files)}" if files else "hub"
    return f"encoder-{_stem(set_name)}-{window}-v{VERSION}-{fingerprint}"


def _stem(set_name: str) -> str:
    name, _ = split_window(set_name)
    return re.sub(r"[^A-Za-z0-9._+-]", "+", Path(name).name if Path(name).is_dir() else name).lstrip("+._-") or "encoder"


def device() -> str:
    """``cuda`` when torch sees a GPU, else ``cpu``: where the encoder runs."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load(set_name: str, weights_dir: str | os.PathLike | None = None):
    """``(model, feature_extractor)`` of ``set_name``, frozen, in eval mode and float32 on :func:`device`,
    made once per process, source and device. Whisper: the encoder of ``WhisperForAudioClassification``
    (it loads an encoder-only checkpoint strictly; the classifier it adds is dropped); others: ``AutoModel``.

    Raises:
        EncoderError: see :func:`ensemble.core.encoder_sets.source`; weights transformers cannot load.
    """

    where, on = source(set_name, weights_dir), device()
    key = (where, on)
    if key not in _MODELS:
        try:
            model, extractor = pretrained(where)
        except (OSError, ValueError) as err:
            raise EncoderError(f"set={set_name!r}: transformers cannot load {where} ({err}); check the folder or the hub id.") from err
        model.requires_grad_(False)
        _MODELS[key] = (model.eval().to(on), extractor)
    return _MODELS[key]


def pretrained(where: str | os.PathLike):
    """A fresh ``(model, feature_extractor)`` of the encoder at ``where`` (a folder or hub id) in float32, in
    eval mode as transformers loads it, every parameter trainable: Whisper's the encoder of ``WhisperForAudioClassification`` (it loads an encoder-only
    checkpoint strictly; the classifier it adds is dropped), others ``AutoModel``'s. transformers' notes on
    the dropped head and its progress bars are silenced for the load.

    Raises:
        OSError, ValueError: transformers cannot read the folder (callers name their own option in the message).
    """
    import torch
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "newly initialized: classifier..." is about the head we drop
    transformers.utils.logging.disable_progress_bar()  # a bar per load; ens reports its own progress
    try:
        if transformers.AutoConfig.from_pretrained(where).model_type == "whisper":
            model = transformers.WhisperForAudioClassification.from_pretrained(where, num_labels=2, dtype=torch.float32).encoder
        else:
            model = transformers.AutoModel.from_pretrained(where, dtype=torch.float32)
        return model, transformers.AutoFeatureExtractor.from_pretrained(where)
    finally:
        transformers.logging.set_verbosity(verbosity)
        transformers.utils.logging.enable_progress_bar()


def embed(waveforms, sample_rate: int, set_name: str, weights_dir: str | os.PathLike | None = None) -> np.ndarray:
    """The pooled hidden states of each waveform (see the module docstring).

    Args:
        waveforms: float waveforms ``(samples,)`` at ``sample_rate`` Hz (resampled to the encoder's rate with soxr).
        sample_rate: Hz.
        set_name: an encoder set (:func:`ensemble.core.encoder_sets.source`), optionally ``:pad30`` for Whisper.
        weights_dir: ``[paths].weights_dir`` (:func:`ensemble.core.weights.weights_dir`).

    Returns:
        float32 ``(len(waveforms), states * 2 * width)``, columns named by :func:`names`.

    Raises:
        EncoderError: see :func:`load`; ``:pad30`` for an encoder that is not Whisper.
    """
    import librosa
    import torch

    model, extractor = load(set_name, weights_dir)
    _, window = split_window(set_name)
    whisper = model.__class__.__name__ == "WhisperEncoder"
    if window == "pad30" and not whisper:
        raise EncoderError(f"set={set_name!r}: the pad30 window is Whisper's 30 s input; {model.__class__.__name__} takes any length: drop ':pad30'.")
    rate = int(extractor.sampling_rate)
    out = []
    with torch.inference_mode():
        for y in waveforms:
            y = np.asarray(y, dtype=np.float32)
            if sample_rate != rate:
                y = librosa.resample(y, orig_sr=sample_rate, target_sr=rate)
            y = np.pad(y, (0, max(0, MIN_SAMPLES - len(y))))
            chunk = int(WHISPER_CHUNK_S * rate)
            pieces = [y[start : start + chunk] for start in range(0, len(y), chunk)]
            states = [(_whisper_states if whisper else _states)(model, extractor, piece, rate, window) for piece in pieces]
            tokens = [torch.cat(layer, dim=0) for layer in zip(*states)]  # per hidden state: (tokens of every piece, width)
            out.append(torch.cat([torch.cat([t.mean(0), t.std(0, unbiased=False)]) for t in tokens]).float().cpu().numpy())
    return np.stack(out) if out else np.zeros((0, size(set_name, weights_dir)), np.float32)


def _whisper_states(model, extractor, y: np.ndarray, rate: int, window: str) -> list:
    """Whisper's hidden states ``[(tokens, width)] * states`` of one piece of at most 30 s, over the tokens that hold it."""
    import torch

    hop = int(extractor.hop_length)
    tokens = -(-len(y) // (2 * hop))  # 20 ms per token: two 10 ms frames, the conv stem's stride 2
    full = model.embed_positions.weight
    if window == "clip":
        samples = tokens * 2 * hop
        x = extractor(np.pad(y, (0, samples - len(y))), sampling_rate=rate, padding="max_length", max_length=samples, return_tensors="pt").input_features
        cut = torch.nn.Embedding.from_pretrained(full[:tokens], freeze=True)
        original, positions = model.embed_positions, model.config.max_source_positions
        model.embed_positions, model.config.max_source_positions = cut, tokens
        try:
            hidden = model(x.to(full.device), output_hidden_states=True).hidden_states
        finally:
            model.embed_positions, model.config.max_source_positions = original, positions
    else:
        x = extractor(y, sampling_rate=rate, return_tensors="pt").input_features
        hidden = model(x.to(full.device), output_hidden_states=True).hidden_states
    return [h[0, :tokens] for h in hidden]


def _states(model, extractor, y: np.ndarray, rate: int, window: str) -> list:
    """A waveform encoder's hidden states ``[(frames, width)] * states`` of one piece (every frame holds the clip)."""
    inputs = extractor(y, sampling_rate=rate, return_tensors="pt")
    device_of = next(model.parameters()).device
    hidden = model(**{k: v.to(device_of) for k, v in inputs.items()}, output_hidden_states=True).hidden_states
    return [h[0] for h in hidden]
