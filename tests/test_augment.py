import dataclasses
import hashlib

import numpy as np
import pytest
import torch

from ensemble.core import recipe as recipe_mod
from ensemble.core import tasks, waveform_augment
from ensemble.core.recipe import AugmentConfig, FeatureConfig
from ensemble.inputs import audio, augment, features
from ensemble.members import image_fit

from .conftest import ravdess_clip


def _only(name: str, p: float = 1.0) -> AugmentConfig:
    """The default waveform list with every transform off but ``name``, which has probability ``p``."""
    return AugmentConfig(waveform=[{**spec, "p": p if spec["name"] == name else 0.0} for spec in waveform_augment.DEFAULT])


@pytest.fixture(scope="module")
def clip():
    return audio.load(ravdess_clip(1, 5), 16000, 3.5, 40)


@pytest.mark.parametrize("name", ["AddGaussianSNR", "Shift", "Gain", "TimeStretch", "PitchShift"])
def test_each_waveform_transform_keeps_shape_dtype_finiteness_and_changes_the_signal(clip, name):
    config = _only(name)
    out = augment.augment_waveform(clip.copy(), 16000, config, seed=3)
    assert out.shape == clip.shape and out.dtype == np.float32 and np.isfinite(out).all()
    assert not np.allclose(out, clip, atol=1e-4)
    np.testing.assert_array_equal(out, augment.augment_waveform(clip.copy(), 16000, config, seed=3))  # reproducible


# SHA-1 (first 16 hex digits) of augment_waveform's output on RAVDESS clip (actor 1, emotion 5) at
# 16 kHz, 3.5 s, trim 40 dB, for seeds 0, 1, 2, 3, 12345, made by the code before the list form
# (commit cd7c827: audiomentations 0.43.1, the flat keys built into a Compose by waveform_pipeline):
# the default settings; seed_deep_cnn's (pitch, stretch, noise at 30-35 dB, shift and gain off); every
# transform always on with shift_max 0.2 and pitch_semitones 3. With the flat keys' old cache keys.
BEFORE_THE_LIST = [
    ({}, "766473a92871", ["7b81eb19dfb57f5f", "9a7f738763e4d467", "5a6b79a38e368589", "07da2cbbf16f4eac", "c39667ad33186669"]),
    (
        {"pitch_p": 0.5, "stretch_p": 0.5, "noise_p": 0.5, "snr_min_db": 30.0, "snr_max_db": 35.0, "shift_p": 0.0, "gain_p": 0.0},
        "0971c513406c",
        ["d237d92d06b3009d", "25d11220949dc249", "5a6b79a38e368589", "6fa7438c1958ac86", "ec3cf7f9715b8158"],
    ),
    (
        {"noise_p": 1.0, "shift_p": 1.0, "gain_p": 1.0, "stretch_p": 1.0, "pitch_p": 1.0, "shift_max": 0.2, "pitch_semitones": 3.0},
        "f181bdb7a4ad",
        ["0c04e6a4dbb6219e", "57d4e2e63e3135e6", "d086bf0d21d67311", "7ff7b29c8501f557", "713c4f1082b74008"],
    ),
]


@pytest.mark.parametrize("flat, key, hashes", BEFORE_THE_LIST, ids=["default", "seed_deep_cnn", "all-on"])
def test_the_list_reproduces_the_flat_keys_augmentation_bit_for_bit(clip, flat, key, hashes):
    config = recipe_mod.from_dict({"augment": flat}).augment  # the old keys, translated to the list
    assert config.waveform == waveform_augment.from_flat(flat) and all(spec["name"] for spec in config.waveform)
    assert config.waveform_key() == key  # the old cache key, hence the old seeds of augmented copies
    got = [hashlib.sha1(augment.augment_waveform(clip.copy(), 16000, config, seed).tobytes()).hexdigest()[:16] for seed in (0, 1, 2, 3, 12345)]
    assert got == hashes
    if not flat:
        assert AugmentConfig().waveform == config.waveform  # the default list is the old default pipeline


def test_augmented_copies_load_as_before_the_list(clip):
    """:func:`features.load_waveform` seeds each copy from the file name, the copy and the waveform key:
    SHA-1 of copies 1 and 2 of clip (1, 5) and copy 1 of clip (2, 3) under the default settings,
    made before the list form (as in BEFORE_THE_LIST)."""
    config = AugmentConfig()
    got = [
        hashlib.sha1(features.load_waveform(ravdess_clip(actor, emotion), FeatureConfig(), config, copy).tobytes()).hexdigest()[:16]
        for actor, emotion, copy in ((1, 5, 1), (1, 5, 2), (2, 3, 1))
    ]
    assert got == ["d09dc148df03201f", "a293bf9745b9b57f", "fe347f49f90dabea"]


def test_augmenting_leaves_the_callers_random_streams_unchanged(clip):
    import random

    random.seed(11)
    np.random.seed(11)
    expected = random.random(), np.random.random()
    random.seed(11)
    np.random.seed(11)
    out = augment.augment_waveform(clip.copy(), 16000, _only("AddGaussianSNR"), seed=3)  # seeds both for its own draws
    assert not np.array_equal(out, clip)  # it drew (noise on every sample)
    assert (random.random(), np.random.random()) == expected


def test_all_transforms_off_leave_the_signal_alone(clip):
    off = AugmentConfig(waveform=[{**spec, "p": 0.0} for spec in waveform_augment.DEFAULT])
    np.testing.assert_array_equal(augment.augment_waveform(clip.copy(), 16000, off, seed=0), clip)
    np.testing.assert_array_equal(augment.augment_waveform(clip.copy(), 16000, AugmentConfig(waveform=[]), seed=0), clip)


@pytest.mark.parametrize("name", waveform_augment.ALLOWED)
def test_every_allowed_transform_keeps_the_clips_length_and_changes_it(name):
    speech = audio.load(ravdess_clip(1, 5), 16000, 1.5, 40)  # 1.5 s of trimmed speech: no silent padding for TimeMask to hit
    config = recipe_mod.from_dict({"augment": {"waveform": [{"name": name, "p": 1.0}]}}).augment
    out = augment.augment_waveform(speech.copy(), 16000, config, seed=5)
    assert out.shape == speech.shape and out.dtype == np.float32 and np.isfinite(out).all()
    assert not np.array_equal(out, speech)


def test_a_list_in_toml_loads_and_other_lists_get_their_own_key(tmp_path):
    path = tmp_path / "wave.toml"
    path.write_text('[augment]\ncopies = 2\nwaveform = [{name = "LowPassFilter", p = 0.3, min_cutoff_freq = 2000.0}, {name = "Gain"}]\n')
    config = recipe_mod.load(path).augment
    assert config.waveform == [{"name": "LowPassFilter", "p": 0.3, "min_cutoff_freq": 2000.0}, {"name": "Gain"}]
    assert [type(t).__name__ for t in augment.waveform_pipeline(config).transforms] == ["LowPassFilter", "Gain"]
    assert config.waveform_key() not in (AugmentConfig().waveform_key(), AugmentConfig(waveform=config.waveform[:1]).waveform_key())
    reordered = AugmentConfig(waveform=waveform_augment.DEFAULT[::-1])
    assert waveform_augment.to_flat(reordered.waveform) is None and reordered.waveform_key() != AugmentConfig().waveform_key()


@pytest.mark.parametrize(
    "section, message",
    [
        ({"waveform": [{"name": "Reverse"}]}, r"\[augment\].waveform\[0\]: Reverse is refused for waveform augmentation: it reverses time.*TimeStretch"),
        (
            {"waveform": [{"name": "Gain"}, {"name": "Blur", "p": 0.5}]},
            r"\[augment\].waveform\[1\]: 'Blur' is not on the audio-safe waveform allowlist; "
            r"use one of \('TimeStretch'",
        ),
        (
            {"waveform": [{"name": "Gain", "gain": 3.0}]},
            r"\[augment\].waveform\[0\]: Gain has no parameter\(s\) \['gain'\]; "
            r"its parameters are \['min_gain_db', 'max_gain_db', 'p'\]",
        ),
        ({"waveform": [{"name": "TimeStretch", "leave_length_unchanged": False}]}, r"waveform\[0\]: TimeStretch needs leave_length_unchanged = True"),
        ({"waveform": [{"name": "Gain", "min_gain_db": 6.0, "max_gain_db": -6.0}]}, r"waveform\[0\]: Gain refuses these values \(ValueError: .*"),
        ({"waveform": [{"name": "Gain", "p": 2.0}]}, r"waveform\[0\]: Gain refuses these values"),
        ({"waveform": ["Gain"]}, r"\[augment\].waveform\[0\] = 'Gain': each entry is a table naming an audiomentations transform"),
        ({"waveform": [{"p": 0.5}]}, r"\[augment\].waveform\[0\] = \{'p': 0.5\}: each entry is a table naming"),
        ({"waveform": {"name": "Gain"}}, r"\[augment\].waveform = \{'name': 'Gain'\} should be of type list"),
        (
            {"noise_p": 0.5, "waveform": []},
            r"\[augment\] gives both waveform and the old flat waveform key\(s\) \['noise_p'\]; "
            r"write every transform in waveform",
        ),
        ({"snr_max_db": "loud"}, r"\[augment\].snr_max_db = 'loud' should be of type float"),
        (
            {"stretch_min": 1.2, "stretch_max": 1.1},
            r"waveform\[0\]: TimeStretch refuses these values "
            r"\(ValueError: min_rate must not be greater than max_rate\)",
        ),
    ],
)
def test_bad_waveform_lists_and_old_keys_are_refused_naming_the_entry(section, message):
    with pytest.raises(recipe_mod.RecipeError, match=message):
        recipe_mod.from_dict({"augment": section})


def test_a_stored_run_config_in_the_flat_form_reads_as_todays_list():
    """A run's ``config.json`` holds ``Recipe.to_dict()``: one written before the list form has the
    flat keys, and re-read (as ens train does to check a finished run) it equals today's recipe."""
    today = recipe_mod.from_dict({"augment": {"copies": 2}})
    stored = today.to_dict()
    stored["augment"] = {**{k: v for k, v in stored["augment"].items() if k != "waveform"}, **waveform_augment.FLAT_DEFAULTS}
    assert recipe_mod.from_dict(stored) == today
    assert recipe_mod.from_dict(recipe_mod.from_dict(stored).to_dict()) == today  # and today's form reads back


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
    mix = tasks.MULTICLASS.mixup(0.4, label_smoothing=smoothing, num_classes=classes)
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
    assert tasks.MULTICLASS.mixup(0.0, 0.1, 8) is None


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
    assert recipe_mod.from_dict({"augment": {"pitch_semitones": 3.0}}).augment.waveform_key() != base.waveform_key()


def test_balanced_class_weights_follow_inverse_frequency():

    r = recipe_mod.from_dict({"train": {"class_weights": "balanced"}})
    w = image_fit.class_weights(r, np.array([0, 0, 0, 1]), 2)
    torch.testing.assert_close(w, torch.tensor([4 / 6, 4 / 2]))
    with pytest.raises(ValueError, match="needs every class"):
        image_fit.class_weights(r, np.array([0, 0]), 2)
