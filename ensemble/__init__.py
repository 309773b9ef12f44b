"""ens: ImageNet-pretrained timm backbones, k-fold fine-tuned on audio rendered as images, blended.

The Python API is what the ``ens`` command calls, for a notebook (``import ensemble as ens``;
``docs/api.md`` has a complete example):

- ``load_recipe`` (with overrides), ``build_ravdess`` (a competition folder from the
  RAVDESS corpus), ``load_competition``;
- ``train_runs``: the grid of a recipe's backbones x folds, skipping finished runs;
- ``blend_runs`` returns a ``BlendResult``; ``write_blend`` writes it (submission,
  leaderboard, weights); ``score`` scores a submission against ``solution.csv``;
- ``export_ensemble``: the fold models as ONNX / OpenVINO graphs for ``load_ensemble(engine=...)``;
- ``load_ensemble`` then ``predict_files`` (files) or ``Ensemble.predict_waveforms``;
- ``write_report``: the HTML report.

The API names differ from the modules that hold them (:mod:`ensemble.train`, :mod:`ensemble.blending.blend`,
:mod:`ensemble.predict`, :mod:`ensemble.report`), so ``ensemble.train`` stays the module.

Every refusal is an :class:`EnsError`. Names are imported on first use, so ``import ensemble``
(and ``import ensemble.core.recipe``) does not import torch.
"""

from __future__ import annotations

import importlib

from .core.errors import EnsError

__version__ = "0.1.0"

_API = {
    "load_recipe": ("core.recipe", "load"),
    "Recipe": ("core.recipe", "Recipe"),
    "build_ravdess": ("store.corpora.ravdess", "build_competition"),
    "load_competition": ("store.competition", "load"),
    "train_runs": ("train", "train"),
    "RunResult": ("train", "RunResult"),
    "blend_runs": ("blending.blend", "blend"),
    "write_blend": ("blending.blend", "write"),
    "BlendResult": ("blending.blend", "BlendResult"),
    "score": ("store.submission", "score_splits"),
    "export_ensemble": ("export", "export"),
    "load_ensemble": ("predict", "load_ensemble"),
    "predict_files": ("predict", "predict"),
    "Ensemble": ("predict", "Ensemble"),
    "write_report": ("report", "build"),
}
__all__ = ["EnsError", "__version__", *_API]


def __getattr__(name: str):
    """The API names of :data:`__all__`, imported from their module on first use (PEP 562)."""
    if name not in _API:
        raise AttributeError(f"module 'ensemble' has no attribute {name!r}")
    module, attribute = _API[name]
    value = getattr(importlib.import_module(f".{module}", __name__), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
