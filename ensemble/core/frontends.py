"""The pretrained audio frontends: how the AudioSet backbones were fed, by name (torch-free).

An audio-pretrained network only recognises sounds through the spectrogram it was trained on, so
its member renders that spectrogram, not ens's 3-channel image (:mod:`ensemble.inputs.features` renders
both). Two frontends, :data:`FRONTENDS`:

- ``yamnet``: YAMNet (Google, ``models/research/audioset/yamnet``: ``params.py``, ``features.py``;
  Apache-2.0): 16 kHz; 25 ms periodic Hann window (400 samples) in a 512-point FFT, 10 ms hop;
  STFT *magnitude*; 64 mel bands 125-7500 Hz from ``tf.signal.linear_to_mel_weight_matrix`` (HTK
  mel scale 2595 log10(1 + f/700), triangles in mel, peak 1, no area normalisation, DC bin 0);
  ``log(mel + 0.001)``; no mean / std normalisation.
- ``efficientat``: EfficientAT's ``AugmentMelSTFT`` in eval mode (fschmid56/EfficientAT
  ``models/preprocess.py``, MIT; Schmid et al. 2023): 32 kHz; pre-emphasis ``y[n] = x[n+1] - 0.97 x[n]``;
  25 ms symmetric Hann (800 samples) zero-padded to a 1024-point FFT, 10 ms hop (320), centred with
  reflect padding; power; 128 Kaldi mel bins 0-15000 Hz (``torchaudio.compliance.kaldi.get_mel_banks``,
  mel 1127 ln(1 + f/700), the Nyquist bin 0); ``(log(mel + 1e-5) + 4.5) / 5``.

What ens stores (the feature cache, ``ens predict``) is the frontend's value minus its
:attr:`Frontend.floor`, the value of digital silence, so that 0 is silence as in ens's [0, 1]
images: SpecAugment's masks (which multiply by 0), the zero image of an unloadable clip and
zero-padding all mean silence. The registered models' ``pretrained_cfg`` mean is ``-floor``
(std 1), so :class:`ensemble.members.models.Normalize` hands the network exactly the frontend's values.

Layout: ens's ``(batch, 1, n_mels, frames)``, mel rows (lowest first) by time columns, for every
consumer (SpecAugment, TTA shifts, speaker normalisation, plots); the YAMNet model transposes to
its ``(batch, 1, frames, 64)`` itself (:mod:`ensemble.members.audioset`).

A timm model name selects its frontend (:data:`MODELS`, :func:`for_model`): ``Recipe.for_backbone``
gives such an entry the ``[features]`` of :func:`feature_settings`, keeping the recipe's
``duration`` and ``trim_db``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

IMAGE = "image"
"""``[features].frontend`` of ens's own images (channels in [0, 1], :class:`ensemble.inputs.features.Renderer`)."""


@dataclass(frozen=True)
class Frontend:
    """The facts of one pretrained frontend.

    Attributes:
        name: its name in :data:`FRONTENDS` (``[features].frontend``).
        sample_rate: Hz.
        win_length: window length in samples (``window`` Hann, ``periodic`` or symmetric), centred in
            an ``n_fft``-point FFT.
        n_fft, hop_length: FFT size and hop, samples.
        periodic: periodic (``True``, as ``tf.signal.hann_window``) or symmetric Hann window.
        pad_mode: the centred STFT's padding of the waveform ends (``n_fft // 2`` samples):
            ``constant`` (zeros) or ``reflect``.
        preemphasis: ``c`` of ``y[n] = x[n+1] - c x[n]`` before the STFT (one sample shorter), 0 for none.
        power: 1 for the STFT magnitude, 2 for the power spectrum.
        n_mels, fmin, fmax: mel bands and their edges, Hz.
        mel: the filterbank: ``tf`` (``tf.signal.linear_to_mel_weight_matrix``, HTK scale) or ``kaldi``
            (``torchaudio.compliance.kaldi.get_mel_banks``, natural-log scale).
        log_offset: ``log(mel + log_offset)`` (natural log).
        shift, scale: then ``(log + shift) / scale``.
        source: where the facts come from.
    """

    name: str
    sample_rate: int
    win_length: int
    n_fft: int
    hop_length: int
    periodic: bool
    pad_mode: str
    preemphasis: float
    power: int
    n_mels: int
    fmin: float
    fmax: float
    mel: str
    log_offset: float
    shift: float
    scale: float
    source: str

    @property
    def floor(self) -> float:
        """The frontend's value of digital silence (mel 0): ``(log(log_offset) + shift) / scale``.
        ens stores values minus this floor (0 = silence); -6.9078 for YAMNet, -1.4026 for EfficientAT."""
        return (math.log(self.log_offset) + self.shift) / self.scale

    def frames(self, n_samples: int) -> int:
        """Frames of ``n_samples`` samples: ``1 + n // hop_length`` for the centred STFT, with ``n``
        one less after pre-emphasis (112000 samples at 32 kHz, 3.5 s, give 350 EfficientAT frames)."""
        return 1 + (n_samples - (1 if self.preemphasis else 0)) // self.hop_length


FRONTENDS: dict[str, Frontend] = {
    "yamnet": Frontend(
        "yamnet",
        sample_rate=16000,
        win_length=400,
        n_fft=512,
        hop_length=160,
        periodic=True,
        pad_mode="constant",
        preemphasis=0.0,
        power=1,
        n_mels=64,
        fmin=125.0,
        fmax=7500.0,
        mel="tf",
        log_offset=0.001,
        shift=0.0,
        scale=1.0,
        source="YAMNet, tensorflow/models research/audioset/yamnet params.py + features.py (Apache-2.0)",
    ),
    "efficientat": Frontend(
        "efficientat",
        sample_rate=32000,
        win_length=800,
        n_fft=1024,
        hop_length=320,
        periodic=False,
        pad_mode="reflect",
        preemphasis=0.97,
        power=2,
        n_mels=128,
        fmin=0.0,
        fmax=15000.0,
        mel="kaldi",
        log_offset=1e-5,
        shift=4.5,
        scale=5.0,
        source="EfficientAT AugmentMelSTFT (eval), fschmid56/EfficientAT models/preprocess.py (MIT), Schmid et al. 2023",
    ),
}
"""Every pretrained frontend by name."""

MODELS: dict[str, str] = {"yamnet": "yamnet", "efficientat_mn04": "efficientat"}
"""timm model name (registered by :mod:`ensemble.members.audioset`) -> the frontend it was pretrained on."""

NAMES = (IMAGE, *FRONTENDS)
"""The values ``[features].frontend`` may take."""


def get(name: str) -> Frontend:
    """The frontend called ``name``.

    Raises:
        KeyError: naming the known frontends.
    """
    if name not in FRONTENDS:
        raise KeyError(f"frontend {name!r} is not one of {sorted(FRONTENDS)}")
    return FRONTENDS[name]


def for_model(model: str) -> str | None:
    """The frontend timm model ``model`` was pretrained on, or None for an image backbone."""
    return MODELS.get(model)


def feature_settings(name: str) -> dict:
    """The ``[features]`` keys frontend ``name`` fixes, as :class:`ensemble.core.recipe.FeatureConfig`
    takes them: ``frontend``, ``sample_rate``, ``n_fft``, ``hop_length``, ``n_mels``, ``fmin``,
    ``fmax``, ``height = n_mels``, ``channels = ["mel"]``; every other image setting (``top_db``,
    ``n_mfcc``) stays at its default, since the frontend does not use it. ``duration`` and
    ``trim_db`` are the recipe's.

    Raises:
        KeyError: an unknown frontend.
    """
    f = get(name)
    return {
        "frontend": f.name,
        "sample_rate": f.sample_rate,
        "n_fft": f.n_fft,
        "hop_length": f.hop_length,
        "n_mels": f.n_mels,
        "fmin": f.fmin,
        "fmax": f.fmax,
        "height": f.n_mels,
        "channels": ["mel"],
    }
