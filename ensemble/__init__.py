"""ens: ImageNet-pretrained timm backbones, k-fold fine-tuned on audio rendered as images, blended.

The library API mirrors the command line (``ens data``, ``ens train``, ``ens blend``, ``ens score``):
:mod:`ensemble.corpora.ravdess` builds a competition folder, :mod:`ensemble.competition` reads one,
:mod:`ensemble.features` renders clips to images, :mod:`ensemble.train` fine-tunes one (backbone, fold),
:mod:`ensemble.blend` combines out-of-fold (OOF) predictions and :mod:`ensemble.submission` writes
and scores the CSV. Every refusal is an :class:`EnsError` (:mod:`ensemble.errors`).
"""

from .errors import EnsError

__all__ = ["EnsError", "__version__"]
__version__ = "0.1.0"
