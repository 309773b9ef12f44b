"""Audio-safe augmentation: waveform transforms before rendering (``[augment].waveform``, an
allowlisted list of audiomentations transforms: :mod:`ensemble.core.waveform_augment`), SpecAugment /
roll / mixup on the batch, and albumentations image pipelines restricted to an allowlist.

A spectrogram image is not a photo: moving content along the frequency axis changes what a sound
is (pitch, formants), reversing or transposing the time axis changes what it means, and colour
channels are different features, not colours. So flips, rotations, transposes, vertical shifts,
``TimeReverse`` and colour jitter are refused by name with the reason, and any transform not on
the allowlist is refused too.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn

from ..core import waveform_augment
from ..core.errors import EnsError
from ..core.recipe import AugmentConfig


class UnsafeAugmentationError(EnsError, ValueError):
    """An image transform that is not audio-safe, or not on the allowlist."""


_MOVES_FREQUENCY = "it moves energy along the frequency axis, which changes pitch and formants: what the sound is"
_REVERSES_TIME = "it reverses time, which changes what speech means and how a sound starts and decays"
_MIXES_AXES = "it mixes the time and frequency axes, which have different meanings in a spectrogram"
_COLOUR = "image channels are different audio features (log-Mel, chroma, STFT), not colours; jittering them scrambles the features"

#: transforms refused with the reason (albumentations class names).
UNSAFE_IMAGE_TRANSFORMS = {
    "HorizontalFlip": _REVERSES_TIME,
    "TimeReverse": _REVERSES_TIME,
    "VerticalFlip": _MOVES_FREQUENCY,
    "Transpose": _MIXES_AXES,
    "D4": _MIXES_AXES,
    "RandomRotate90": _MIXES_AXES,
    "Rotate": _MIXES_AXES,
    "SafeRotate": _MIXES_AXES,
    "Affine": _MIXES_AXES + ", and its vertical shift " + _MOVES_FREQUENCY,
    "ShiftScaleRotate": _MIXES_AXES + ", and its vertical shift " + _MOVES_FREQUENCY,
    "Perspective": _MIXES_AXES,
    "ElasticTransform": _MOVES_FREQUENCY,
    "GridDistortion": _MOVES_FREQUENCY,
    "OpticalDistortion": _MOVES_FREQUENCY,
    "ColorJitter": _COLOUR,
    "HueSaturationValue": _COLOUR,
    "RGBShift": _COLOUR,
    "ChannelShuffle": _COLOUR,
    "ToGray": _COLOUR,
    "ToSepia": _COLOUR,
    "RandomBrightnessContrast": _COLOUR,
}

#: albumentations transforms that keep a spectrogram's axes: masking and additive noise.
SAFE_IMAGE_TRANSFORMS = ("XYMasking", "FrequencyMasking", "TimeMasking", "CoarseDropout", "GridDropout", "GaussNoise")


def image_pipeline(specs: list[dict], seed: int | None = None):
    """An ``albumentations.Compose`` of ``specs`` (each ``{"name": ClassName, **params}``), or None if empty.

    ``seed`` seeds the Compose's own random generator (albumentations >= 2), so a run's image
    augmentations repeat exactly.

    Raises:
        UnsafeAugmentationError: a transform is unsafe for spectrograms (the message says why) or
            not on :data:`SAFE_IMAGE_TRANSFORMS`.
    """
    if not specs:
        return None
    import albumentations as A

    transforms = []
    for spec in specs:
        params = dict(spec)
        name = params.pop("name", None)
        if name in UNSAFE_IMAGE_TRANSFORMS:
            raise UnsafeAugmentationError(f"[augment].image: {name} is refused for spectrograms: {UNSAFE_IMAGE_TRANSFORMS[name]}.")
        if name not in SAFE_IMAGE_TRANSFORMS:
            raise UnsafeAugmentationError(
                f"[augment].image: {name!r} is not on the audio-safe allowlist {SAFE_IMAGE_TRANSFORMS}; use one of those "
                "or SpecAugment / mixup / waveform augmentation in [augment]."
            )
        transforms.append(getattr(A, name)(**params))
    return A.Compose(transforms, seed=seed)


def waveform_pipeline(config: AugmentConfig):
    """The audiomentations ``Compose`` of ``config.waveform``, its transforms in order
    (:func:`ensemble.core.waveform_augment.transforms`; the recipe has checked the list)."""
    import audiomentations as am

    return am.Compose(waveform_augment.transforms(config.waveform))


def augment_waveform(y: np.ndarray, sample_rate: int, config: AugmentConfig, seed: int) -> np.ndarray:
    """One augmented copy of ``y`` ``(samples,)`` float32, the same for the same ``seed``; shape and dtype kept.

    audiomentations draws from Python's ``random`` and NumPy's global generator, so both are seeded
    with ``seed`` for the call and put back as they were afterwards: a caller's random streams
    are left unchanged.
    """
    saved = random.getstate(), np.random.get_state()
    try:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        out = waveform_pipeline(config)(samples=y, sample_rate=sample_rate)
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32, copy=False)


class SpecAugment(nn.Module):
    """Batch augmentation of images ``(batch, channels, height, frames)`` in training mode.

    Applies, per image: ``n_masks`` frequency masks of up to ``freq_mask`` rows and ``n_masks``
    time masks of up to ``time_mask`` frames (torchaudio's ``FrequencyMasking`` / ``TimeMasking``
    with independent masks per example, filled with 0 = the silence floor; Park et al. 2019),
    and a random circular shift along time of up to ``time_roll`` of the frames. The same masks
    cover every channel, since channels share the time axis.
    """

    def __init__(self, freq_mask: int = 0, time_mask: int = 0, n_masks: int = 2, time_roll: float = 0.0):
        super().__init__()
        import torchaudio.transforms as T

        self.masks = nn.ModuleList()
        for _ in range(n_masks):
            if freq_mask:
                self.masks.append(T.FrequencyMasking(freq_mask, iid_masks=True))
            if time_mask:
                self.masks.append(T.TimeMasking(time_mask, iid_masks=True))
        self.time_roll = time_roll

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Masked / rolled copy of ``x``; unchanged in eval mode."""
        if not self.training:
            return x
        if self.time_roll > 0:
            frames = x.shape[-1]
            limit = int(self.time_roll * frames)
            shifts = torch.randint(-limit, limit + 1, (x.shape[0],))
            x = torch.stack([torch.roll(img, int(s), dims=-1) for img, s in zip(x, shifts)])
        if len(self.masks):
            b, _, h, w = x.shape
            mask = torch.ones(b, 1, h, w, dtype=x.dtype, device=x.device)
            for transform in self.masks:
                mask = transform(mask)
            x = x * mask  # one mask per image, broadcast over its channels
        return x


def spec_augment(config: AugmentConfig) -> SpecAugment:
    """The :class:`SpecAugment` of a recipe's ``[augment]`` section."""
    return SpecAugment(config.freq_mask, config.time_mask, config.n_masks, config.time_roll)
