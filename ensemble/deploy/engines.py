"""The exported graphs' engines: saving a member's models as one ONNX / OpenVINO IR graph
(:class:`MemberGraph`, :data:`SAVERS`) and opening an export for prediction (:class:`Exported`,
:class:`ExportedModel`: an ONNX Runtime session or an OpenVINO compiled model, called like a torch
model). :mod:`ensemble.export` writes exports with them; :mod:`ensemble.predict` and the image kind
run them.

The ONNX graphs come from torch's ``torch.export``-based exporter (``torch.onnx.export(...,
dynamo=True)``, which needs ``onnxscript``): the TorchScript exporter (``dynamo=False``) also works
with torch 2.11 but is deprecated there and due for removal. OpenVINO IR is converted from the
ONNX graph (``openvino.convert_model``) and saved uncompressed (``compress_to_fp16=False``), and
compiled with ``INFERENCE_PRECISION_HINT = f32`` so CPUs with bf16 units do not lower it:
probabilities stay within 1e-4 of torch eager (tests/test_export.py). OpenVINO runs in its
throughput mode (``PERFORMANCE_HINT = THROUGHPUT``: parallel streams on the cores, fed
:data:`CHUNK`-image slices of a batch by an ``AsyncInferQueue``), which beat its latency mode on
every member of the default ensemble (docs/benchmarks.md).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core import atomic
from ..core.errors import EnsError
from ..core.recipe import Recipe
from ..store import runs

FORMATS = ("onnx", "openvino")
RUNTIMES = ("torch", *FORMATS)
MANIFEST, EXPORT = "manifest.json", "export"
INPUT, OUTPUT = "image", "proba"
SUFFIX = {"onnx": ".onnx", "openvino": ".xml"}
RUNTIME_MODULE = {"onnx": "onnxruntime", "openvino": "openvino"}  # format -> the module (and pip package) that runs it
OPSET = 18
CHUNK = 16
"""Images per OpenVINO inference request: a batch is cut into slices of this many, run on its parallel streams."""


class ExportError(EnsError, ValueError):
    """An export that cannot be made or used: an unknown format, a missing package (the exporter or a runtime), or a missing or stale export."""


def check_format(fmt: str, allowed: tuple[str, ...] = FORMATS) -> None:
    """Refuse a ``fmt`` not in ``allowed`` (:data:`FORMATS`, or :data:`RUNTIMES` for a runtime).

    Raises:
        ExportError: naming the value and the choices.
    """
    if fmt not in allowed:
        raise ExportError(f"format {fmt!r} is not one of {', '.join(allowed)}; give one of them.")


def require(module: str, why: str):
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
    return require(RUNTIME_MODULE[fmt], f"the {fmt} runtime")


def export_dir(recipe: Recipe, fmt: str) -> Path:
    """``<runs_dir>/<recipe>/export/<fmt>/``: where :func:`export` writes and ``ens predict --runtime`` reads by default."""
    return runs.root(recipe) / EXPORT / fmt


def sha1(path: Path) -> str:
    """SHA-1 hex digest of the file at ``path`` (a run's ``model.safetensors``: which weights a graph holds)."""
    return hashlib.sha1(path.read_bytes()).hexdigest()


def graph_runs(member: runs.Member) -> list[dict]:
    """The manifest's record of the runs a member's graph holds: each seed's folds in order, with the
    path and SHA-1 of its ``model.safetensors`` (:meth:`Exported.graph` checks them when the graph is loaded)."""
    return [
        {"entry": name, "fold": fold, "weights": str(run / runs.MODEL), "sha1": sha1(run / runs.MODEL)}
        for name in member.entries
        for fold, run in enumerate(member.runs(name))
    ]


class MemberGraph(nn.Module):
    """A member's models as one graph: images ``(batch, channels, height, frames)`` -> the mean over
    ``models`` (its fold models of every seed, eval mode) of ``activation`` of their logits,
    ``(batch, classes)``.

    Args:
        models: the member's torch models (:attr:`ensemble.predict.Ensemble.models`).
        activation: the task's (:meth:`ensemble.core.tasks.Task.activation`): softmax or sigmoid.
    """

    def __init__(self, models: list[nn.Module], activation: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.models, self.activation = nn.ModuleList(models), activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.activation(model(x)) for model in self.models]).mean(0)


def _save_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Export ``model`` (eval mode, CPU) to ONNX at ``path`` atomically: one file (weights inside),
    input ``image`` with a dynamic batch axis, output ``proba``."""
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


class ExportedModel(nn.Module):
    """One member's exported graph (:class:`MemberGraph`) in its inference runtime, called like a
    torch model (so :func:`ensemble.members.loop.predict` runs it, with the identity as activation): float32
    images ``(batch, channels, height, frames)`` (a CPU tensor, any memory order) -> float32
    probabilities ``(batch, classes)``, the mean of the member's models' activations (a CPU tensor).

    Attributes:
        path: the graph file.
    """

    def __init__(self, infer: Callable[[np.ndarray], np.ndarray], path: Path):
        super().__init__()
        self.infer, self.path = infer, path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.infer(np.ascontiguousarray(x.detach().float().cpu().numpy())))


def onnx_session(path: Path, threads: int):
    """An ONNX Runtime CPU ``InferenceSession`` of ``path``: ``threads`` intra-op threads (0: ONNX Runtime's
    default, one per physical core), idle threads not spinning (the sessions of an ensemble take turns;
    spinning threads of one would slow the next). Every kind's exported graph runs in one of these."""
    ort = runtime_module("onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _onnx_runner(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """An image graph's :func:`onnx_session` as a function ``images -> proba``."""
    session = onnx_session(path, threads)
    return lambda x: session.run([OUTPUT], {INPUT: x})[0]


def _openvino_runner(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """An OpenVINO CPU compiled model of ``path`` as a function ``images -> proba``, in
    throughput mode: ``INFERENCE_NUM_THREADS = threads`` (0: OpenVINO's default, every core) shared
    by its parallel streams, float32 inference (``INFERENCE_PRECISION_HINT``: not lowered to bf16
    on CPUs that have it); a batch is cut into :data:`CHUNK`-image requests that an
    ``AsyncInferQueue`` runs on the streams, and put back in order."""
    ov = runtime_module("openvino")
    config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "THROUGHPUT"}
    queue = ov.AsyncInferQueue(ov.Core().compile_model(str(path), "CPU", config))

    def infer(x: np.ndarray) -> np.ndarray:
        out: dict[int, np.ndarray] = {}
        queue.set_callback(lambda request, start: out.__setitem__(start, request.get_output_tensor(0).data.copy()))
        for start in range(0, len(x), CHUNK):
            queue.start_async({0: x[start : start + CHUNK]}, start)
        queue.wait_all()
        return np.concatenate([out[start] for start in sorted(out)]).astype(np.float32, copy=False)

    return infer


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

    def graph(self, name: str, kind: str, trained: list[tuple[str, int, Path]]) -> Path:
        """The graph file of member ``name`` of ``kind`` (``image``, ``finetune``), checked against its runs.

        Args:
            trained: the member's runs as the ensemble loads them: ``(entry, fold, run folder)`` of
                every fold of every seed, in :attr:`ensemble.predict.Ensemble.models` order.

        Raises:
            ExportError: the export has no graph of the member, its graph holds other runs, or a
                run's ``model.safetensors`` is not the one exported (retrained since): re-run ``ens export``.
        """
        fix = f"re-run `ens export --format {self.fmt}`"
        found = [m for m in self.manifest["members"] if m["name"] == name and m["kind"] == kind]
        if not found:
            raise ExportError(f"{self.folder / MANIFEST} has no graph of member {name!r}, which the ensemble uses; {fix}.")
        path = self.folder / found[0]["file"]
        held = [(r["entry"], r["fold"]) for r in found[0]["runs"]]
        if held != [(entry, fold) for entry, fold, _ in trained]:
            raise ExportError(f"{path} holds the runs {held}, the ensemble uses {[(e, f) for e, f, _ in trained]}; {fix}.")
        for (_, _, run), exported in zip(trained, found[0]["runs"]):
            if sha1(run / runs.MODEL) != exported["sha1"]:
                raise ExportError(f"{path} was exported from other weights than {run / runs.MODEL} (retrained since); {fix}.")
        return path

    def member(self, name: str, trained: list[tuple[str, int, Path]]) -> ExportedModel:
        """The image graph of member ``name``, loaded in the runtime (:meth:`graph` checks it).

        Raises:
            ExportError: see :meth:`graph`.
        """
        path = self.graph(name, "image", trained)
        return ExportedModel(RUNNERS[self.fmt](path, self.threads), path)
