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


def test_mixup_gives_soft_targets_that_sum_to_one():
    mix = augment.mixup(AugmentConfig(mixup_alpha=0.4), label_smoothing=0.1, num_classes=8)
    x, y = torch.rand(8, 3, 16, 16), torch.arange(8)
    mixed, target = mix(x.clone(), y)
    assert mixed.shape == x.shape and target.shape == (8, 8)
    torch.testing.assert_close(target.sum(1), torch.ones(8))
    assert augment.mixup(AugmentConfig(), 0.1, 8) is None


@pytest.mark.parametrize("name, reason", [
    ("HorizontalFlip", "reverses time"), ("TimeReverse", "reverses time"), ("VerticalFlip", "frequency axis"),
    ("Transpose", "mixes the time and frequency axes"), ("RandomRotate90", "mixes"), ("Rotate", "mixes"),
    ("ShiftScaleRotate", "vertical shift"), ("Affine", "vertical shift"), ("ColorJitter", "not colours"),
    ("HueSaturationValue", "not colours"), ("RandomBrightnessContrast", "not colours"),
])
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
    from ensemble import recipe as recipe_mod, train

    r = recipe_mod.from_dict({"train": {"class_weights": "balanced"}})
    w = train.class_weights(r, np.array([0, 0, 0, 1]), 2)
    torch.testing.assert_close(w, torch.tensor([4 / 6, 4 / 2]))
    with pytest.raises(ValueError, match="needs every class"):
        train.class_weights(r, np.array([0, 0]), 2)
