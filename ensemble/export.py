"""The trained ensemble exported for CPU inference runtimes: ONNX (run by ONNX Runtime) and OpenVINO IR.

``ens export --format onnx|openvino`` writes one graph per image member of the ensemble
:func:`ensemble.predict.load_ensemble` loads (the blended members), under
``<runs_dir>/<recipe>/export/<format>/`` (:func:`export_dir`) by default:

- ``<member>.onnx`` (ONNX) or ``<member>.xml`` + ``<member>.bin`` (OpenVINO IR):
  :class:`MemberGraph`, the member's every fold model of every seed (each backbone with its input
  normalisation, :class:`ensemble.members.models.Normalize`) and the mean of their activations (the task's
  softmax or sigmoids). Input ``image`` float32 ``(batch, channels, height, frames)`` in [0, 1]
  (the batch axis dynamic), output ``proba`` float32 ``(batch, classes)``: what
  :meth:`ensemble.predict.Ensemble.predict_waveforms` averages over a member's torch models.
- ``manifest.json``, written last (atomically): format, ens version, classes, the blend's weights
  and where they come from, and per member its kind, weight, ``[features]``, speaker
  normalisation, time-shift TTA (applied outside the graph, by :func:`ensemble.members.loop.predict`), its
  graph file, and per run (seed entry and fold) the SHA-1 of the ``model.safetensors`` exported
  (a retrained run makes the export stale: refused).

One graph per member rather than one per fold model: one call per batch instead of one per fold,
faster in ONNX Runtime than five fold graphs (``benchmarks/runtimes.py``; figures in docs/benchmarks.md). Not one graph for the
whole ensemble: its members take different inputs (feature settings, sample rates, speaker
normalisation) and its functionals members are scikit-learn pipelines. The frontend stays outside the graphs, as ens's documented preprocessing
step: reading, trimming and rendering the clip (:func:`ensemble.inputs.features.model_inputs`, float16
rounding), per-speaker normalisation (:func:`ensemble.speaker.speaker_groups.normalise_with`), windows of
long files; the three-channel images (log-Mel, chroma, log-STFT with per-clip dB references) are
not ONNX's STFT alone, and ens renders them with the exact code the models were trained on.
A fine-tuned encoder member (:mod:`ensemble.members.finetune`) is one graph as well, of its own
making (:meth:`ensemble.members.finetune.FinetuneKind.export`: inputs the encoder's features and each
clip's length; its clip length, and so Whisper's cut position table, is fixed per member).
Functionals members (:mod:`ensemble.members.tabular`, scikit-learn pipelines) are not exported: they run
from their runs' ``model.joblib``. Nor is a speech-encoder member's frozen transformer
(:mod:`ensemble.members.encoders`): it runs through torch under every runtime, because it sees each clip at
its own length with the position table cut to it (a graph exported at one length would compute
something else for the next clip), and its cost is a few hundredths of a second per clip (docs/results.md).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path

from . import __version__
from .core import atomic
from .core.recipe import Recipe
from .deploy.engines import MANIFEST, OUTPUT, check_format, export_dir, require, runtime_module
from .members import kinds
from .predict import load_ensemble
from .store import runs


def export(recipe: Recipe, fmt: str = "onnx", out: str | os.PathLike | None = None, on_model: Callable[[Path], None] | None = None) -> Path:
    """Export the recipe's trained ensemble (see the module docstring for the layout).

    Args:
        recipe: the recipe whose ensemble :func:`ensemble.predict.load_ensemble` loads (its blend
            weights, or equal weights over the finished members).
        fmt: ``onnx`` or ``openvino``.
        out: the folder to write (default :func:`export_dir`); files of an earlier export in it
            are replaced.
        on_model: called with each graph's path after it is written.

    Returns:
        the path of ``manifest.json``.

    Raises:
        ExportError: an unknown ``fmt``, or a package it needs is missing: ``onnxscript`` (torch's
            exporter) or the format's runtime. PredictError: no member is trained, or blend weights name unfinished
            members (everything :func:`ensemble.predict.load_ensemble` raises).
    """
    check_format(fmt)
    require("onnxscript", "torch's ONNX exporter")
    runtime_module(fmt)
    ensemble = load_ensemble(recipe, "cpu")
    out = Path(out) if out is not None else export_dir(recipe, fmt)
    members = []
    for member in ensemble.members:
        loaded = ensemble.loaded[member.name]
        entry = {
            "name": member.name,
            "weight": ensemble.weights[member.name],
            "features": dataclasses.asdict(loaded.made_with.features),
            "speaker_norm": loaded.population is not None,
            "tta_shifts": list(loaded.made_with.train.tta_shifts),
        }
        members.append({**entry, **kinds.of(recipe, member.entries[0]).export(loaded, member, out, fmt, on_model)})
    manifest = {
        "format": fmt,
        "ens_version": __version__,
        "recipe": recipe.name,
        "task": recipe.competition.task,
        "classes": ensemble.classes,
        "weights": ensemble.weights,
        "weights_from": ensemble.weights_from,
        "blend": _blend(recipe),
        "output": {"name": OUTPUT, "shape": ["batch", len(ensemble.classes)], "dtype": "float32", "means": "its models' activations"},
        "members": members,
    }
    atomic.write_json(out / MANIFEST, manifest)
    return out / MANIFEST


def _blend(recipe: Recipe) -> dict | None:
    """``runs/<recipe>/blend/weights.json`` as ``ens blend`` wrote it (method, weights), or None without one."""
    path = runs.blend_dir(recipe) / runs.WEIGHTS
    return json.loads(path.read_text()) if path.is_file() else None
