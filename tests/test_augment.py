import dataclasses

import numpy as np
import pytest
import torch

from ensemble import audio, augment
from ensemble.recipe import AugmentConfig

from .conftest import ravdess_clip

OFF = dict(noise_p=0.0, shift_p=0.0, gain_p=0.0, stretch_p=0.0, pitch_p=0.0)


@pytest.fixture(scope="module")
def clip():
    return audio.load(ravdess_clip(1, 5), 16000, 3.5, 40)


@pytest.mark.parametrize("only", ["noise_p", "shift_p", "gain_p", "stretch_p", "pitch_p"])
def test_each_waveform_transform_keeps_shape_dtype_finiteness_and_changes_the_signal(clip, only):
    config = AugmentConfig(**{**OFF, only: 1.0})
    out = augment.augment_waveform(clip.copy(), 16000, config, seed=3)
    assert out.shape == clip.shape and out.dtype == np.float32 and np.isfinite(out).all()
    assert not np.allclose(out, clip, atol=1e-4)
    np.testing.assert_array_equal(out, augment.augment_waveform(clip.copy(), 16000, config, seed=3))  # reproducible


def test_augmenting_leaves_the_callers_random_streams_unchanged(clip):
    import random

    random.seed(11)
    np.random.seed(11)
    expected = random.random(), np.random.random()
    random.seed(11)
    np.random.seed(11)
    augment.augment_waveform(clip.copy(), 16000, AugmentConfig(), seed=3)  # seeds both for its own draws
    assert (random.random(), np.random.random()) == expected


def test_all_transforms_off_leave_the_signal_alone(clip):
    np.testing.assert_array_equal(augment.augment_waveform(clip.copy(), 16000, AugmentConfig(**OFF), seed=0), clip)


def test_specaugment_masks_and_rolls_in_training_only():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 128, 176) + 0.1
    spec = augment.SpecAugment(freq_mask=16, time_mask=20, n_masks=2, time_roll=0.1)
    out = spec.train()(x)
    assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()
    zero = out == 0
    assert zero.any() and not torch.equal(out, x)
    assert torch.equal(zero[:, 0], zero[:, 1]) and torch.equal(zero[:, 0], zero[:, 2])  # same mask on every channel
    assert torch.equal(spec.eval()(x), x)
    assert torch.equal(augment.SpecAugment().train()(x), x)  # nothing configured: the batch passes unchanged


def test_mixup_mixes_each_image_with_its_partner_in_the_flipped_batch_as_its_targets_say():
    """timm's batch mixup: image i becomes ``lam * x[i] + (1 - lam) * x[n-1-i]`` and its target
    ``lam * smoothed(y[i]) + (1 - lam) * smoothed(y[n-1-i])``, one ``lam ~ Beta(alpha, alpha)`` per
    batch. ``lam`` is read back from the targets and the images are checked against it."""
    classes, smoothing = 8, 0.1
    off, on = smoothing / classes, 1 - smoothing + smoothing / classes
    mix = augment.mixup(AugmentConfig(mixup_alpha=0.4), label_smoothing=smoothing, num_classes=classes)
    y = torch.tensor([3, 0, 5, 1, 7, 2, 6, 4])  # every partner (the flipped batch) has another class
    lams = []
    saved = np.random.get_state()
    try:
        for seed in range(10):
            np.random.seed(seed)  # timm draws lam from NumPy's global generator (put back below)
            x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
            mixed, target = mix(x.clone(), y)
            assert mixed.shape == x.shape and target.shape == (8, classes)
            torch.testing.assert_close(target.sum(1), torch.ones(8))
            lam = float((target[0, y[0]] - off) / (on - off))  # the share of image 0's own class
            lams.append(lam)
            partner = y.flip(0)
            expected_target = torch.full((8, classes), off)
            expected_target[torch.arange(8), y] = lam * on + (1 - lam) * off
            expected_target[torch.arange(8), partner] = (1 - lam) * on + lam * off
            torch.testing.assert_close(target, expected_target)
            torch.testing.assert_close(mixed, lam * x + (1 - lam) * x.flip(0), rtol=0, atol=1e-6)
    finally:
        np.random.set_state(saved)
    # a mix every time (lam near 0 or 1 too: timm only skips mixing at lam == 1), a new lam per
    # batch, and most of them far from both images and from an even mix (where a swapped lam shows)
    assert len({round(lam, 6) for lam in lams}) == len(lams), lams
    assert sum(0.05 < lam < 0.95 and abs(lam - 0.5) > 0.05 for lam in lams) >= 3, lams
    assert augment.mixup(AugmentConfig(), 0.1, 8) is None


@pytest.mark.parametrize(
    "name, reason",
    [
        ("HorizontalFlip", "reverses time"),
        ("TimeReverse", "reverses time"),
        ("VerticalFlip", "frequency axis"),
        ("Transpose", "mixes the time and frequency axes"),
        ("RandomRotate90", "mixes"),
        ("Rotate", "mixes"),
        ("ShiftScaleRotate", "vertical shift"),
        ("Affine", "vertical shift"),
        ("ColorJitter", "not colours"),
        ("HueSaturationValue", "not colours"),
        ("RandomBrightnessContrast", "not colours"),
    ],
)
def test_unsafe_image_transforms_are_refused_with_the_reason(name, reason):
    with pytest.raises(augment.UnsafeAugmentationError, match=rf"{name} is refused for spectrograms: .*{reason}"):
        augment.image_pipeline([{"name": name}])


def test_unknown_transform_is_refused_and_safe_ones_run():
    with pytest.raises(augment.UnsafeAugmentationError, match="'Blur' is not on the audio-safe allowlist"):
        augment.image_pipeline([{"name": "Blur"}])
    specs = [{"name": "XYMasking", "num_masks_x": 2, "mask_x_length": 10, "mask_y_length": 128, "p": 1.0}]
    image = np.random.default_rng(0).random((128, 176, 3), dtype=np.float32) + 0.1
    outs = [augment.image_pipeline(specs, seed=7)(image=image)["image"] for _ in range(2)]
    pipeline = augment.image_pipeline(specs, seed=7)
    draws = [pipeline(image=image)["image"] for _ in range(20)]
    np.testing.assert_array_equal(outs[0], outs[1])  # seeded: the same draw every time
    assert all(out.shape == image.shape and out.dtype == image.dtype for out in draws)
    masked = [bool((out == 0).all(axis=(0, 2)).any()) for out in draws]  # whole time columns zeroed
    assert 5 <= sum(masked) < 20  # lengths are drawn from [0, 10], so some draws mask nothing
    assert augment.image_pipeline([]) is None


def test_waveform_key_ignores_batch_settings():
    base = AugmentConfig()
    assert dataclasses.replace(base, freq_mask=30, mixup_alpha=0.2, copies=8).waveform_key() == base.waveform_key()
    assert dataclasses.replace(base, pitch_semitones=3.0).waveform_key() != base.waveform_key()


def test_balanced_class_weights_follow_inverse_frequency():
    from ensemble import recipe as recipe_mod
    from ensemble import train

    r = recipe_mod.from_dict({"train": {"class_weights": "balanced"}})
    w = train.class_weights(r, np.array([0, 0, 0, 1]), 2)
    torch.testing.assert_close(w, torch.tensor([4 / 6, 4 / 2]))
    with pytest.raises(ValueError, match="needs every class"):
        train.class_weights(r, np.array([0, 0]), 2)
