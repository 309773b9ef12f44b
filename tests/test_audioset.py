"""The AudioSet backbones (YAMNet, EfficientAT mn04) on real RAVDESS clips: strict loading, "Speech"
before any fine-tuning through ens's own frontends, frontend parity with independent NumPy /
librosa references, training through the grid (mixed with an ImageNet backbone), ens predict,
missing weights, the frozen-embedding functionals sets and the recipe checks."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import librosa
import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file
from timm.layers import FrozenBatchNormAct2d
from timm.optim import create_optimizer_v2

from ensemble import predict, train
from ensemble.core import frontends, recipe
from ensemble.inputs import audio, features
from ensemble.members import audioset, functionals, image_fit, models
from ensemble.members.data import load_data
from ensemble.store import runs as run_store

from .conftest import TINY_SHAPE, ravdess_clip, tiny_competition

WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights"
SPEECH_CLIPS = [ravdess_clip(1, 1), ravdess_clip(2, 5), ravdess_clip(7, 6, intensity=2)]  # neutral, angry, fearful
CLASSES = '["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]'


def _config(frontend: str) -> recipe.FeatureConfig:
    return recipe.FeatureConfig(**frontends.feature_settings(frontend), duration=3.5)


def _waveform(path: Path, frontend: str) -> np.ndarray:
    return audio.load(path, frontends.get(frontend).sample_rate, 3.5, 40.0)


# ---- loading ----


def test_yamnet_loads_strictly_and_freezes_its_batch_norm():
    state = load_file(WEIGHTS / audioset.YAMNET_FOLDER / "model.safetensors")
    bare = timm.create_model("yamnet", pretrained=False, num_classes=521)
    assert set(bare.state_dict()) == set(state)  # every key used, none missing (the factory loads with strict=True)
    model = timm.create_model("yamnet", pretrained=True, num_classes=521, weights_dir=WEIGHTS)
    frozen = [m for m in model.modules() if isinstance(m, FrozenBatchNormAct2d)]
    assert len(frozen) == 27 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(model.conv_stem.weight, state["conv_stem.weight"], rtol=0, atol=0)
    head = timm.create_model("yamnet", pretrained=True, num_classes=8, weights_dir=WEIGHTS)
    assert head.classifier.out_features == 8 and head.pretrained_cfg["mean"] == (-frontends.get("yamnet").floor,)


def test_efficientat_mn04_loads_strictly_every_original_key_used_once():
    state = load_file(WEIGHTS / audioset.MN04_FOLDER / "model.safetensors")
    mapped = audioset.efficientat_to_timm(state)
    assert len(state) == len(mapped) == 312
    bare = timm.create_model("efficientat_mn04", pretrained=False)
    assert set(bare.state_dict()) == set(mapped)
    assert all(bare.state_dict()[k].shape == v.shape for k, v in mapped.items())
    model = timm.create_model("efficientat_mn04", pretrained=True, weights_dir=WEIGHTS)
    torch.testing.assert_close(model.classifier.weight, state["classifier.5.weight"], rtol=0, atol=0)
    assert timm.create_model("efficientat_mn04", pretrained=True, num_classes=8, weights_dir=WEIGHTS).classifier.out_features == 8


@pytest.mark.parametrize("name", ["yamnet", "efficientat_mn04"])
def test_missing_weights_raise_backbone_error_naming_the_folder(name, tmp_path, monkeypatch):
    monkeypatch.delenv(models.WEIGHTS_ENV, raising=False)
    with pytest.raises(models.BackboneError, match=r"weights_dir=DIR.*ENS_WEIGHTS_DIR") as err:
        models.create(name, 8, in_chans=1, weights=tmp_path)
    assert str(tmp_path) in str(err.value)
    monkeypatch.setenv(models.WEIGHTS_ENV, str(tmp_path))
    with pytest.raises(models.BackboneError, match="model.safetensors"):
        timm.create_model(name, pretrained=True, num_classes=8)
    assert models.create(name, 8, in_chans=1, pretrained=False) is not None  # from scratch needs no weights


# ---- "Speech" before fine-tuning, through ens's own frontend ----


@pytest.mark.parametrize("name,classes", [("yamnet", 521), ("efficientat_mn04", 527)])
def test_a_real_speech_clip_is_tagged_speech_before_fine_tuning(name, classes):
    frontend = frontends.for_model(name)
    config = _config(frontend)
    images = features.model_inputs([_waveform(p, frontend) for p in SPEECH_CLIPS], config)  # what the cache stores (float16)
    net = models.create(name, classes, in_chans=1, weights=WEIGHTS)
    model = models.Normalize(net, *models.normalization(net, 1)).eval()
    with torch.no_grad():
        proba = torch.sigmoid(model(torch.from_numpy(images.astype(np.float32))))
    assert (proba.argmax(dim=1) == audioset.SPEECH).all(), proba.argmax(dim=1)
    assert (proba[:, audioset.SPEECH] > 0.4).all()  # measured: YAMNet 0.45-0.81, mn04 0.6-0.9 on these three clips


# ---- frontend parity with independent references ----


def _tf_mel_numpy(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """tf.signal.linear_to_mel_weight_matrix as its documentation defines it, in NumPy: (n_mels, bins)."""
    hz = np.linspace(0.0, sr / 2, n_fft // 2 + 1)[1:]
    mel = 1127.0 * np.log(1.0 + hz / 700.0)
    edges = np.linspace(1127.0 * np.log(1 + fmin / 700.0), 1127.0 * np.log(1 + fmax / 700.0), n_mels + 2)
    rows = []
    for k in range(n_mels):
        lo, mid, hi = edges[k : k + 3]
        rows.append(np.maximum(0.0, np.minimum((mel - lo) / (mid - lo), (hi - mel) / (hi - mid))))
    return np.hstack([np.zeros((n_mels, 1)), np.array(rows)])


def _kaldi_mel_numpy(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Kaldi's mel banks (mel-banks.cc: triangles on 1127 ln(1 + f/700) over the first n_fft/2 bins), plus the zero Nyquist column."""
    mel = 1127.0 * np.log(1.0 + np.arange(n_fft // 2) * (sr / n_fft) / 700.0)
    low, high = 1127.0 * np.log(1 + fmin / 700.0), 1127.0 * np.log(1 + fmax / 700.0)
    delta = (high - low) / (n_mels + 1)
    rows = []
    for k in range(n_mels):
        left, center, right = low + k * delta, low + (k + 1) * delta, low + (k + 2) * delta
        rows.append(np.maximum(0.0, np.minimum((mel - left) / (center - left), (right - mel) / (right - center))))
    return np.hstack([np.array(rows), np.zeros((n_mels, 1))])


def _yamnet_reference(y: np.ndarray) -> np.ndarray:
    """YAMNet's log-mel in NumPy / librosa (float64): 25 ms periodic Hann in a 512-point FFT, 10 ms hop
    (centred, zero padding, ens's framing), magnitude, 64 TF-HTK bands 125-7500 Hz, log(mel + 0.001)."""
    spectrum = librosa.stft(y.astype(np.float64), n_fft=512, hop_length=160, win_length=400, window="hann", center=True, pad_mode="constant")
    return np.log(_tf_mel_numpy(16000, 512, 64, 125.0, 7500.0) @ np.abs(spectrum) + 0.001)


def _efficientat_reference(y: np.ndarray) -> np.ndarray:
    """EfficientAT's preprocessing (arch.md) in NumPy (float64): pre-emphasis, reflect-padded centred
    frames, symmetric Hann 800 centred in 1024, power, Kaldi mel 0-15 kHz, (log(mel + 1e-5) + 4.5) / 5."""
    y = y.astype(np.float64)
    y = y[1:] - 0.97 * y[:-1]
    padded = np.pad(y, 512, mode="reflect")
    n_frames = 1 + (len(padded) - 1024) // 320
    window = np.zeros(1024)
    window[112 : 112 + 800] = np.hanning(800)  # np.hanning is the symmetric window
    frames = np.stack([padded[k * 320 : k * 320 + 1024] * window for k in range(n_frames)], axis=1)
    power = np.abs(np.fft.rfft(frames, axis=0)) ** 2
    return (np.log(_kaldi_mel_numpy(32000, 1024, 128, 0.0, 15000.0) @ power + 1e-5) + 4.5) / 5


@pytest.mark.parametrize("frontend,reference", [("yamnet", _yamnet_reference), ("efficientat", _efficientat_reference)])
def test_frontend_matches_an_independent_reference_on_real_clips(frontend, reference):
    """Tolerance: 5e-4 absolute on the log values of the float32 rendering against the float64
    reference (measured on these clips: max 4.9e-5 for YAMNet, 3.5e-5 for EfficientAT, values up to
    about 3 and 10 above the floor), and the float16 the cache stores within its rounding
    (half a step, 2 ** -11 of the value: measured max 3.9e-3 for YAMNet, 9.8e-4 for EfficientAT)."""
    config = _config(frontend)
    floor = frontends.get(frontend).floor
    waves = [_waveform(p, frontend) for p in SPEECH_CLIPS]
    rendered = features.render_batch(np.stack(waves), config) + floor
    cached = features.model_inputs(waves, config).astype(np.float32) + floor
    for k, y in enumerate(waves):
        expected = reference(y)
        assert rendered[k, 0].shape == expected.shape == (config.n_mels, features.frames(config))
        np.testing.assert_allclose(rendered[k, 0], expected, atol=5e-4, rtol=0)
        np.testing.assert_allclose(cached[k, 0], rendered[k, 0], atol=2**-11 * np.abs(rendered[k, 0] - floor).max() + 1e-5, rtol=0)
    silence = features.render_batch(np.zeros((1, features.samples(config)), np.float32), config)
    np.testing.assert_allclose(silence, 0.0, atol=1e-6)  # 0 is silence: SpecAugment's masks and padding mean silence


# ---- training, the grid, predict ----


def _recipe_text(comp: Path, runs: Path, subs: Path) -> str:
    return f"""
name = "audioset_tiny"
backbones = ["tf_mobilenetv3_small_100", "yamnet", "efficientat_mn04"]
[paths]
runs_dir = "{runs}"
submissions_dir = "{subs}"
weights_dir = "{WEIGHTS}"
[competition]
dir = "{comp}"
classes = {CLASSES}
{TINY_SHAPE}layer_decay = 0.7
[augment]
freq_mask = 8
time_mask = 16
"""


@pytest.fixture(scope="module")
def trained(small_source, tmp_path_factory):
    """One ``train.train`` call over an ImageNet backbone and both AudioSet backbones: 2 folds, 1 epoch, 48 clips."""
    root = tmp_path_factory.mktemp("audioset")
    path = tiny_competition(root / "audioset_tiny.toml", _recipe_text(root / "comp", root / "runs", root / "subs"), small_source)
    r = recipe.load(path)
    results = train.train(r, progress=False)
    return {"recipe": r, "results": results, "root": root}


def test_a_recipe_mixing_imagenet_and_audioset_backbones_trains_in_one_call(trained):
    r, results = trained["recipe"], trained["results"]
    assert [(x.entry, x.fold) for x in results] == [(e, k) for e in r.backbones for k in (0, 1)]
    made = {}
    for x in results:
        assert not x.skipped and (x.run / "metrics.json").is_file() and (x.run / "model.safetensors").is_file()
        made[x.entry] = json.loads((x.run / "config.json").read_text())["recipe"]["features"]
    assert made["tf_mobilenetv3_small_100"]["frontend"] == "image" and made["tf_mobilenetv3_small_100"]["n_mels"] == 128
    assert made["yamnet"]["frontend"] == "yamnet" and made["yamnet"]["sample_rate"] == 16000 and made["yamnet"]["duration"] == 2.0
    assert made["efficientat_mn04"]["frontend"] == "efficientat" and made["efficientat_mn04"]["sample_rate"] == 32000
    cache = Path(r.competition.dir) / ".ens_cache"
    assert {r.for_backbone(e).features.key() for e in r.backbones} <= {p.name for p in cache.iterdir()}  # one cache per setting
    again = train.train(r, progress=False)  # finished runs are recognised: the same identities
    assert all(x.skipped for x in again)


def test_one_training_step_of_each_audioset_backbone_through_train_fold(trained, tmp_path):
    r = trained["recipe"]
    for name in ("yamnet", "efficientat_mn04"):
        data = load_data(r.for_backbone(name), progress=False)
        assert data.x_train.shape[1:] == (1, frontends.get(frontends.for_model(name)).n_mels, features.frames(r.for_backbone(name).features))
        report = image_fit.train_fold(r, data, name, 0, force=True, progress=False)
        assert report["epoch"] == 1 and 0.0 <= report["accuracy"] <= 1.0
        weights = load_file(run_store.run_dir(r, name, 0) / "model.safetensors")
        start = timm.create_model(name, pretrained=True, num_classes=8, weights_dir=WEIGHTS).state_dict()
        convs = [k for k in start if k.startswith("blocks.") and k.endswith("conv_pw.weight")]
        assert any(not torch.equal(weights[f"backbone.{k}"], start[k]) for k in convs)  # the pretrained body trained, not only the head
        if name == "yamnet":  # frozen BN: its statistics and affine terms are the pretrained ones
            torch.testing.assert_close(weights["backbone.bn1.running_var"], start["bn1.running_var"], rtol=0, atol=0)
            torch.testing.assert_close(weights["backbone.bn1.bias"], start["bn1.bias"], rtol=0, atol=0)


def test_layer_decay_gives_the_head_the_full_rate_and_the_stem_the_least():
    r = recipe.from_dict({"backbones": ["efficientat_mn04"], "paths": {"weights_dir": str(WEIGHTS)}})
    model = models.build(r, "efficientat_mn04", 8)
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.01, layer_decay=0.5)
    scale = {name: group["lr_scale"] for group in optimizer.param_groups for name in [id(p) for p in group["params"]]}
    named = dict(model.named_parameters())
    assert scale[id(named["backbone.classifier.weight"])] == 1.0
    assert scale[id(named["backbone.conv_stem.weight"])] < scale[id(named["backbone.blocks.5.2.conv_pw.weight"])] < 1.0


def test_ens_predict_renders_an_audioset_member_as_it_was_trained(trained):
    r = trained["recipe"]
    ensemble = predict.load_ensemble(r)
    assert ensemble.sample_rate == 16000  # the first member's; mn04 gets its clips resampled to 32 kHz
    clip = ravdess_clip(5, 3)
    y = audio.load_trimmed(clip, 16000, r.features.trim_db)[0]
    got = ensemble.predict_waveforms([y])
    assert got.shape == (1, 8) and np.isclose(got.sum(), 1.0)
    for name in ("yamnet", "efficientat_mn04"):
        made = ensemble.trained_with[name].features
        own = y if made.sample_rate == 16000 else librosa.resample(y, orig_sr=16000, target_sr=made.sample_rate)
        images = features.model_inputs([own], made)
        member = [m for m in ensemble.members if m.name == name][0]
        expected = np.mean([torch.softmax(m(torch.from_numpy(images.astype(np.float32))), 1).detach().numpy() for m in ensemble.models[member.name]], 0)
        first = ensemble.members[0]  # the 16 kHz ImageNet member sets the rate audio is read at; weight 0
        one = dataclasses.replace(ensemble, members=[first, member], weights={first.name: 0.0, name: 1.0})
        np.testing.assert_allclose(one.predict_waveforms([y]), expected, atol=1e-5)


# ---- frozen embeddings as functionals members ----


def test_embedding_sets_have_their_shapes_and_a_tabular_member_trains_on_one(trained, tmp_path):
    clips = [ravdess_clip(1, 1), ravdess_clip(3, 4)]
    cache = functionals.FunctionalsCache(tmp_path / "cache")
    for name, size in (("yamnet_embedding", 2048), ("mn04_embedding", 768)):
        vectors = cache.get(clips, 16000, 40.0, name, progress=False)
        assert vectors.shape == (2, size) == (2, functionals.SETS[name].size) and np.isfinite(vectors).all()
        assert len(functionals.names(name)) == size
        np.testing.assert_array_equal(cache.get(clips, 16000, 40.0, name, progress=False), vectors)  # cached per clip
    base = trained["recipe"]
    r = recipe.from_dict(
        {
            **{k: v for k, v in base.to_dict().items() if k not in ("functionals", "backbones")},
            "backbones": [],
            "functionals": [{"name": "mn04_lr", "set": "mn04_embedding", "model": "logreg", "c": 0.1}],
        }
    )
    results = train.train(r, progress=False)
    assert [(x.entry, x.fold) for x in results] == [("mn04_lr", 0), ("mn04_lr", 1)]
    assert all((x.run / "metrics.json").is_file() for x in results)


# ---- recipe checks ----


def test_image_feature_keys_and_recipes_are_unchanged_by_the_frontend_field():
    assert recipe.FeatureConfig().key() == "8365d1d00ac5"  # the key before [features].frontend existed
    r = recipe.from_dict({"backbones": ["yamnet@7", "regnetx_002"], "features": {"duration": 3.0, "trim_db": 30.0}})
    assert r.for_backbone("regnetx_002").features == r.features
    f = r.for_backbone("yamnet@7").features
    assert (f.frontend, f.sample_rate, f.n_mels, f.height, f.channels, f.duration, f.trim_db) == ("yamnet", 16000, 64, 64, ["mel"], 3.0, 30.0)
    assert r.for_backbone("yamnet@7").train.seed == 7 and r.for_backbone("yamnet@7").for_backbone("yamnet@7") == r.for_backbone("yamnet@7")


def test_recipe_refuses_inconsistent_frontend_settings():
    with pytest.raises(recipe.RecipeError, match=r"\[features\].frontend = 'yamnet'.*n_mels = 128.*'n_mels': 64"):
        recipe.from_dict({"features": {**frontends.feature_settings("yamnet"), "n_mels": 128}})
    with pytest.raises(recipe.RecipeError, match=r"\[features\].frontend = 'vggish': must be one of"):
        recipe.from_dict({"features": {"frontend": "vggish"}})
    with pytest.raises(recipe.RecipeError, match=r"\[augment\].freq_mask = 80 is wider than the 64 mel bands of backbone 'yamnet'"):
        recipe.from_dict({"backbones": ["yamnet"], "augment": {"freq_mask": 80}})
    with pytest.raises(recipe.RecipeError, match=r"\[train\].layer_decay = 1.5"):
        recipe.from_dict({"train": {"layer_decay": 1.5}})
    assert recipe.from_dict({"features": frontends.feature_settings("efficientat")}).features.frontend == "efficientat"


def test_the_audioset_recipe_loads():
    r = recipe.load(Path(__file__).resolve().parents[1] / "recipes" / "ravdess_audioset.toml")
    assert r.backbones == ["yamnet", "efficientat_mn04"]
    assert {m.set for m in r.functionals} >= {"yamnet_embedding", "mn04_embedding"}


def test_embedding_sets_read_the_recipes_weights_folder(tmp_path, monkeypatch):
    """[paths].weights_dir reaches the embedding sets (extract, the cache, its identity): an empty
    folder is refused by name rather than falling back to ../shared/weights, and a folder holding the
    same weights gives the same vectors."""
    monkeypatch.delenv(models.WEIGHTS_ENV, raising=False)
    clip = audio.load_trimmed(ravdess_clip(2, 3), 16000, 40.0)[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(models.BackboneError, match=rf"{empty}/efficientat_mn04_as/model.safetensors does not exist"):
        functionals.extract([clip], 16000, "mn04_embedding", weights_dir=str(empty))
    with pytest.raises(models.BackboneError, match=str(empty)):
        functionals.FunctionalsCache(tmp_path / "cache", weights_dir=str(empty)).get([ravdess_clip(2, 3)], 16000, 40.0, "mn04_embedding", progress=False)
    assert functionals.identity("mn04_embedding", str(empty)).endswith("-wnone-none")
    own = tmp_path / "own"
    (own / "efficientat_mn04_as").mkdir(parents=True)
    (own / "efficientat_mn04_as" / "model.safetensors").symlink_to((models.weights_dir(None) / "efficientat_mn04_as" / "model.safetensors").resolve())
    np.testing.assert_array_equal(
        functionals.extract([clip], 16000, "mn04_embedding", weights_dir=str(own)), functionals.extract([clip], 16000, "mn04_embedding")
    )


EMBEDDINGS = [("mn04_embedding", "efficientat_mn04", _efficientat_reference), ("yamnet_embedding", "yamnet", _yamnet_reference)]


@pytest.mark.parametrize("set_name,model_name,reference", EMBEDDINGS)
def test_an_embedding_is_the_pretrained_models_time_features_of_its_frontend_mean_then_max(set_name, model_name, reference):
    """One real clip's embedding recomputed independently: read at 16 kHz as the functionals cache reads
    it, resampled to the frontend's rate (soxr, as ensemble.inputs.audio), the frontend's own log-mel from the
    NumPy reference above (its documented steps: no floor removed, no normalisation), the pretrained
    model's time_features, then the mean over time followed by the max over time."""
    y = audio.load_trimmed(ravdess_clip(2, 5), 16000, 40.0)[0]
    got = functionals.extract([y], 16000, set_name, weights_dir=str(WEIGHTS))
    rate = frontends.get(frontends.for_model(model_name)).sample_rate
    own = y if rate == 16000 else librosa.resample(y, orig_sr=16000, target_sr=rate)
    logmel = torch.from_numpy(reference(own).astype(np.float32))[None, None]
    model = timm.create_model(model_name, pretrained=True, weights_dir=WEIGHTS).eval()
    with torch.inference_mode():
        frames = model.time_features(logmel)[0].numpy()
    expected = np.concatenate([frames.mean(axis=-1), frames.max(axis=-1)])
    assert got.shape == (1, functionals.SETS[set_name].size) == (1, len(expected))
    np.testing.assert_allclose(got[0], expected, rtol=0, atol=1e-4)  # measured max 5.0e-6 (mn04), 2.0e-6 (YAMNet), values up to 3
