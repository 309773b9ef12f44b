"""The trained ensemble exported for CPU inference runtimes: ONNX (run by ONNX Runtime) and OpenVINO IR.

``ens export --format onnx|openvino`` writes one graph per fold model of every image member of
the ensemble :func:`ensemble.predict.load_ensemble` loads (the blended members, every seed and
fold), under ``<runs_dir>/<recipe>/export/<format>/`` (:func:`export_dir`) by default:

- ``<member>/<entry>/fold<K>.onnx`` (ONNX) or ``fold<K>.xml`` + ``fold<K>.bin`` (OpenVINO IR): the
  backbone with its input normalisation (:class:`ensemble.models.Normalize`), input ``image``
  float32 ``(batch, channels, height, frames)`` in [0, 1] (the batch axis dynamic), output
  ``logits`` float32 ``(batch, classes)``.
- ``manifest.json``, written last (atomically): format, ens version, classes, the blend's weights
  and where they come from, and per member its kind, weight, ``[features]``, speaker
  normalisation, time-shift TTA, and per fold the graph file and the SHA-1 of the
  ``model.safetensors`` it was exported from (a retrained run makes the export stale: refused).

One graph per fold model rather than one per member averaging its folds: the fold graphs keep
:func:`ensemble.loop.predict` (activation, time-shift TTA, batching) the same code for every
runtime, and in ``benchmarks/runtimes.py`` a member's averaged graph was no faster (see
docs/benchmarks.md). The frontend stays outside the graphs, as ens's documented preprocessing
step: reading, trimming and rendering the clip (:func:`ensemble.features.model_inputs`, float16
rounding), per-speaker normalisation (:func:`ensemble.speaker_groups.normalise_with`), windows of
long files; the three-channel images (log-Mel, chroma, log-STFT with per-clip dB references) are
not ONNX's STFT alone, and ens renders them with the exact code the models were trained on.
Functionals members (:mod:`ensemble.tabular`, scikit-learn pipelines) are not exported: they are
cheap and run from their runs' ``model.joblib``.

The ONNX graphs come from torch's ``torch.export``-based exporter (``torch.onnx.export(...,
dynamo=True)``, which needs ``onnxscript``): the TorchScript exporter (``dynamo=False``) also works
with torch 2.11 but is deprecated there and due for removal. OpenVINO IR is converted from the
ONNX graph (``openvino.convert_model``) and saved uncompressed (``compress_to_fp16=False``), and
compiled with ``INFERENCE_PRECISION_HINT = f32`` so CPUs with bf16 units do not lower it:
probabilities stay within 1e-4 of torch eager (tests/test_export.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import itertools
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import __version__, atomic, runs
from .errors import EnsError
from .features import model_inputs, samples
from .recipe import Recipe

FORMATS = ("onnx", "openvino")
RUNTIMES = ("torch", *FORMATS)
MANIFEST, EXPORT = "manifest.json", "export"
INPUT, OUTPUT = "image", "logits"
SUFFIX = {"onnx": ".onnx", "openvino": ".xml"}
RUNTIME_MODULE = {"onnx": "onnxruntime", "openvino": "openvino"}  # format -> the module (and pip package) that runs it
OPSET = 18


class ExportError(EnsError, ValueError):
    """An export that cannot be made or used: an unknown format, a missing package (the exporter or a runtime), or a missing or stale export."""


def check_format(fmt: str, allowed: tuple[str, ...] = FORMATS) -> None:
    """Refuse a ``fmt`` not in ``allowed`` (:data:`FORMATS`, or :data:`RUNTIMES` for a runtime).

    Raises:
        ExportError: naming the value and the choices.
    """
    if fmt not in allowed:
        raise ExportError(f"format {fmt!r} is not one of {', '.join(allowed)}; give one of them.")


def _require(module: str, why: str):
    """``module`` imported.

    Raises:
        ExportError: it is not installed; says ``why`` it is needed and names the pip command (``pip install -e '.[deploy]'``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ExportError(f"{why} needs the {module} package ({err}); install it: pip install -e '.[deploy]' (or pip install {module}).") from err


def runtime_module(fmt: str):
    """The Python module that runs ``fmt`` graphs (``onnxruntime`` or ``openvino``), imported.

    Raises:
        ExportError: it is not installed; names the pip command (``pip install -e '.[deploy]'``).
    """
    return _require(RUNTIME_MODULE[fmt], f"the {fmt} runtime")


def export_dir(recipe: Recipe, fmt: str) -> Path:
    """``<runs_dir>/<recipe>/export/<fmt>/``: where :func:`export` writes and ``ens predict --runtime`` reads by default."""
    return runs.root(recipe) / EXPORT / fmt


def sha1(path: Path) -> str:
    """SHA-1 hex digest of the file at ``path`` (a run's ``model.safetensors``: which weights a graph holds)."""
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _save_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Export ``model`` (eval mode, CPU) to ONNX at ``path`` atomically: one file (weights inside),
    input ``image`` with a dynamic batch axis, output ``logits``."""
    model = model.to(memory_format=torch.contiguous_format)
    batch = torch.export.Dim("batch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.export's own internals (pytree LeafSpec)
        program = torch.onnx.export(
            model, (example,), input_names=[INPUT], output_names=[OUTPUT], dynamic_shapes=({0: batch},), opset_version=OPSET, dynamo=True, verbose=False
        )
    with atomic.atomic_path(path) as tmp:
        program.save(str(tmp), external_data=False)


def _save_openvino(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Export ``model`` to OpenVINO IR at ``path`` (``.xml``) and its ``.bin`` beside it, converted
    from the ONNX graph (:func:`_save_onnx`) and saved in float32; the ``.bin`` is in place before
    the ``.xml`` appears."""
    ov = runtime_module("openvino")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        onnx_path = Path(scratch) / "model.onnx"
        _save_onnx(model, example, onnx_path)
        converted = ov.convert_model(onnx_path)
    with atomic.atomic_path(path) as tmp:
        ov.save_model(converted, str(tmp), compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), path.with_suffix(".bin"))


SAVERS: dict[str, Callable[[nn.Module, torch.Tensor, Path], None]] = {"onnx": _save_onnx, "openvino": _save_openvino}


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
    from .predict import load_ensemble

    check_format(fmt)
    _require("onnxscript", "torch's ONNX exporter")
    runtime_module(fmt)
    ensemble = load_ensemble(recipe, "cpu")
    out = Path(out) if out is not None else export_dir(recipe, fmt)
    members = []
    for member in ensemble.members:
        made_with = ensemble.trained_with[member.name]
        entry = {
            "name": member.name,
            "weight": ensemble.weights[member.name],
            "features": dataclasses.asdict(made_with.features),
            "speaker_norm": member.name in ensemble.populations,
            "tta_shifts": list(made_with.train.tta_shifts),
        }
        if member.name in ensemble.functionals:
            members.append({**entry, "kind": "functionals", "runs": [str(run) for e in member.entries for run in member.runs(e)]})
            continue
        silence = np.zeros(samples(made_with.features), dtype=np.float32)
        example = torch.from_numpy(np.repeat(model_inputs([silence], made_with.features), 2, axis=0).astype(np.float32))
        folds = []
        for (name, fold), model in zip(itertools.product(member.entries, range(member.n_splits)), ensemble.models[member.name]):
            run = member.runs(name)[fold]
            path = out / member.name / name / f"fold{fold}{SUFFIX[fmt]}"
            SAVERS[fmt](model, example, path)
            if on_model is not None:
                on_model(path)
            folds.append({"entry": name, "fold": fold, "file": str(path.relative_to(out)), "weights": str(run / runs.MODEL), "sha1": sha1(run / runs.MODEL)})
        members.append({**entry, "kind": "image", "input": {"name": INPUT, "shape": ["batch", *example.shape[1:]], "dtype": "float32"}, "folds": folds})
    manifest = {
        "format": fmt,
        "ens_version": __version__,
        "recipe": recipe.name,
        "task": recipe.competition.task,
        "classes": ensemble.classes,
        "weights": ensemble.weights,
        "weights_from": ensemble.weights_from,
        "blend": _blend(recipe),
        "output": {"name": OUTPUT, "shape": ["batch", len(ensemble.classes)], "dtype": "float32", "activation": "the task's (softmax or sigmoid)"},
        "members": members,
    }
    atomic.write_json(out / MANIFEST, manifest)
    return out / MANIFEST


def _blend(recipe: Recipe) -> dict | None:
    """``runs/<recipe>/blend/weights.json`` as ``ens blend`` wrote it (method, weights), or None without one."""
    path = runs.blend_dir(recipe) / runs.WEIGHTS
    return json.loads(path.read_text()) if path.is_file() else None


class ExportedModel(nn.Module):
    """One exported fold graph in its inference runtime, called like the torch model it was
    exported from (so :func:`ensemble.loop.predict` runs either): float32 images ``(batch,
    channels, height, frames)`` (a CPU tensor, any memory order) -> float32 logits ``(batch,
    classes)`` (a CPU tensor).

    Attributes:
        path: the graph file.
    """

    def __init__(self, infer: Callable[[np.ndarray], np.ndarray], path: Path):
        super().__init__()
        self.infer, self.path = infer, path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.infer(np.ascontiguousarray(x.detach().float().cpu().numpy())))


def _onnx_runner(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """An ONNX Runtime CPU session of ``path`` as a function ``images -> logits``: ``threads``
    intra-op threads (0: ONNX Runtime's default, one per physical core), idle threads not spinning
    (the sessions of an ensemble take turns; spinning threads of one would slow the next)."""
    ort = runtime_module("onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run([OUTPUT], {INPUT: x})[0]


def _openvino_runner(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """An OpenVINO CPU compiled model of ``path`` as a function ``images -> logits``:
    ``INFERENCE_NUM_THREADS = threads`` (0: OpenVINO's default, every core) and float32 inference
    (``INFERENCE_PRECISION_HINT``: not lowered to bf16 on CPUs that have it)."""
    ov = runtime_module("openvino")
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    return lambda x: np.array(request.infer({0: x})[0], dtype=np.float32)


RUNNERS: dict[str, Callable[[Path, int], Callable[[np.ndarray], np.ndarray]]] = {"onnx": _onnx_runner, "openvino": _openvino_runner}


class Exported:
    """An export folder opened for prediction (``ens predict --runtime onnx|openvino``).

    Args:
        recipe: the recipe whose export it is (its default folder, :func:`export_dir`).
        fmt: ``onnx`` or ``openvino``.
        folder: the folder :func:`export` wrote (default :func:`export_dir`).
        threads: each graph's CPU threads (``[runtime].threads``; 0: the runtime's default).

    Raises:
        ExportError: an unknown ``fmt``; its runtime package is missing; no ``manifest.json`` in
            ``folder`` (run ``ens export``), or one of another format.
    """

    def __init__(self, recipe: Recipe, fmt: str, folder: str | os.PathLike | None = None, threads: int = 0):
        check_format(fmt)
        runtime_module(fmt)
        self.fmt, self.threads = fmt, threads
        self.folder = Path(folder) if folder is not None else export_dir(recipe, fmt)
        path = self.folder / MANIFEST
        if not path.is_file():
            raise ExportError(f"{path} does not exist: no {fmt} export of the ensemble there; run `ens export --format {fmt}` first (or give its folder).")
        self.manifest = json.loads(path.read_text())
        if self.manifest.get("format") != fmt:
            raise ExportError(f"{path} is an export of format {self.manifest.get('format')!r}, not {fmt!r}; give the {fmt} export's folder.")

    def model(self, member: str, entry: str, fold: int, run: Path) -> ExportedModel:
        """The graph of ``member``'s ``entry`` fold ``fold`` (trained in ``run``), loaded in the runtime.

        Raises:
            ExportError: the export has no such graph, or the run's ``model.safetensors`` is not
                the one exported (retrained since): re-run ``ens export``.
        """
        fix = f"re-run `ens export --format {self.fmt}`"
        found = [f for m in self.manifest["members"] if m["name"] == member for f in m.get("folds", []) if (f["entry"], f["fold"]) == (entry, fold)]
        if not found:
            raise ExportError(f"{self.folder / MANIFEST} has no graph of member {member!r} ({entry} fold {fold}), which the ensemble uses; {fix}.")
        if sha1(run / runs.MODEL) != found[0]["sha1"]:
            raise ExportError(f"{self.folder / found[0]['file']} was exported from other weights than {run / runs.MODEL} (retrained since); {fix}.")
        path = self.folder / found[0]["file"]
        return ExportedModel(RUNNERS[self.fmt](path, self.threads), path)
