import json

import librosa
import numpy as np
import pytest
import torch

from ensemble.core.recipe import FeatureConfig
from ensemble.inputs import audio, features, reference

from .conftest import ravdess_clip

CLIPS = [ravdess_clip(1, 5), ravdess_clip(2, 4), ravdess_clip(3, 3)]


def test_load_gives_fixed_length_mono_at_target_rate():
    for rate in (16000, 22050):
        y = audio.load(CLIPS[0], rate, 3.5, trim_db=40)
        assert y.shape == (int(round(3.5 * rate)),) and y.dtype == np.float32
        assert np.isfinite(y).all() and np.abs(y).max() > 0.01


def test_fix_length_centres_crop_and_pad():
    y = np.arange(10, dtype=np.float32)
    assert audio.fix_length(y, 4).tolist() == [3, 4, 5, 6]
    assert audio.fix_length(y[:2], 6).tolist() == [0, 0, 0, 1, 0, 0]


def test_render_shape_range_and_channel_order_on_real_clip():
    config = FeatureConfig()
    y = audio.load(CLIPS[0], config.sample_rate, config.duration, config.trim_db)
    image = reference.render(y, config)
    assert image.shape == (3, 128, features.frames(config)) == (3, 128, 176)
    assert image.dtype == np.float32 and image.min() >= 0 and image.max() <= 1

    # channel 0 is the log-Mel: librosa computed directly, mapped from [-80, 0] dB to [0, 1]
    mel = librosa.feature.melspectrogram(y=y, sr=16000, n_fft=1024, hop_length=320, n_mels=128, fmin=20)
    expected = (librosa.power_to_db(mel, ref=np.max, top_db=80) + 80) / 80
    np.testing.assert_allclose(image[0], expected, atol=1e-4)
    # channel 1 is the chromagram: 12 pitch-class bands repeated to 128 rows
    chroma = librosa.feature.chroma_stft(y=y, sr=16000, n_fft=1024, hop_length=320, tuning=0.0)
    rows = np.floor(np.arange(128) * 12 / 128).astype(int)
    np.testing.assert_allclose(image[1], chroma[rows], atol=1e-5)
    # channel 2 is the log-STFT magnitude, 513 bins shrunk to 128: its top row is the highest band
    stft_db = (librosa.amplitude_to_db(np.abs(librosa.stft(y, n_fft=1024, hop_length=320)), ref=np.max, top_db=80) + 80) / 80
    assert abs(image[2].mean() - stft_db.mean()) < 0.02

    swapped = reference.render(y, FeatureConfig(channels=["stft", "mel"]))
    np.testing.assert_array_equal(swapped[1], image[0])
    np.testing.assert_array_equal(swapped[0], image[2])
    mfcc = reference.render(y, FeatureConfig(channels=["mfcc"], height=40))
    assert mfcc.shape == (1, 40, 176) and mfcc.min() == 0 and mfcc.max() == 1


PARITY_ATOL = 1e-4  # on [0, 1] images; measured max 1.7e-5 on RAVDESS, the float16 cache step near 1 is 5e-4


@pytest.mark.parametrize(
    "config",
    [
        FeatureConfig(),
        FeatureConfig(channels=["mfcc", "mel", "chroma", "stft"], n_mfcc=20, height=64),
        FeatureConfig(sample_rate=22050, n_fft=2048, hop_length=512, n_mels=64, fmin=50.0, fmax=8000.0, top_db=60.0, height=96, duration=2.0),
    ],
    ids=["default", "all-channels", "other-stft"],
)
def test_torch_renderer_matches_librosa_reference_on_real_clips(config):
    clips = [audio.load(p, config.sample_rate, config.duration, config.trim_db) for p in CLIPS]
    clips.append(np.zeros_like(clips[0]))  # silence: every dB channel sits at its floor
    expected = np.stack([reference.render(y, config) for y in clips])
    batched = features.render_batch(np.stack(clips), config, batch_size=3)  # batches of 3 and 1
    assert batched.shape == expected.shape == (4, len(config.channels), config.height, features.frames(config))
    np.testing.assert_allclose(batched, expected, rtol=0, atol=PARITY_ATOL)
    assert np.abs(batched - expected).max() > 0  # two implementations, not one called twice


@pytest.mark.parametrize("config", [FeatureConfig(), FeatureConfig(sample_rate=22050, n_fft=2048, n_mels=64, fmin=50.0, fmax=8000.0)])
def test_banded_mel_product_equals_dense_product_with_fewer_terms(config):
    renderer = features.Renderer(config)
    power = torch.from_numpy(
        np.stack(
            [
                np.abs(librosa.stft(audio.load(p, config.sample_rate, config.duration, config.trim_db), n_fft=config.n_fft, hop_length=config.hop_length)) ** 2
                for p in CLIPS
            ]
        )
    )
    dense = torch.matmul(renderer.mel_fb, power)
    torch.testing.assert_close(renderer._mel(power), dense, rtol=1e-5, atol=1e-7 * float(dense.max()))
    touched = sum((r1 - r0) * (hi - lo) for r0, r1, lo, hi in renderer.mel_bands)
    assert touched * 4 < renderer.mel_fb.numel()  # the point of the bands
    assert [b[:2] for b in renderer.mel_bands] == [(r, min(r + 16, config.n_mels)) for r in range(0, config.n_mels, 16)]


def test_bands_cover_every_nonzero_and_handle_an_empty_block():
    matrix = torch.zeros(6, 10)
    matrix[0, 1], matrix[1, 3], matrix[4, 9], matrix[5, 7] = 1.0, 2.0, 3.0, 4.0  # rows 2-3: no filter at all
    assert features._bands(matrix, 2) == [(0, 2, 1, 4), (2, 4, 0, 0), (4, 6, 7, 10)]
    x = torch.rand(2, 10, 5)
    banded = torch.cat([torch.matmul(matrix[r0:r1, lo:hi], x[:, lo:hi]) for r0, r1, lo, hi in features._bands(matrix, 2)], dim=1)
    torch.testing.assert_close(banded, torch.matmul(matrix, x))


def test_model_inputs_fix_the_length_render_and_round_like_the_cache(tmp_path):
    config = FeatureConfig(height=32)
    n = features.samples(config)
    clips = [audio.load(p, config.sample_rate, config.duration, config.trim_db) for p in CLIPS]
    long, short = np.concatenate([clips[0], clips[1]]), clips[2][n // 4 : n // 2]  # 7 s and 0.875 s
    images = features.model_inputs([clips[0], long, short], config, batch_size=2)
    assert images.shape == (3, 3, 32, features.frames(config)) and images.dtype == np.float16
    fixed = np.stack([clips[0], audio.fix_length(long, n), audio.fix_length(short, n)])
    np.testing.assert_array_equal(images, features.render_batch(fixed, config).astype(np.float16))
    assert not np.array_equal(images[0], images[1])  # the long clip is centre-cropped, not its first 3.5 s
    cached = features.FeatureCache(tmp_path, config).get(CLIPS, progress=False)  # the cache stores these images
    np.testing.assert_array_equal(cached, features.model_inputs(clips, config))


def test_cache_renders_each_clip_once(tmp_path, monkeypatch):
    config = FeatureConfig(height=32)
    cache = features.FeatureCache(tmp_path, config)
    first = cache.get(CLIPS[:2], progress=False)
    assert first.shape == (2, 3, 32, 176) and first.dtype == np.float16

    calls = []
    real = features.load_waveform
    monkeypatch.setattr(features, "load_waveform", lambda path, *rest: calls.append(path) or real(path, *rest))
    again = features.FeatureCache(tmp_path, config).get(CLIPS[:2], progress=False)
    assert calls == [] and np.array_equal(again, first)
    grown = cache.get(CLIPS[::-1], progress=False)  # one new clip, order of the request kept
    assert calls == [CLIPS[2]]
    np.testing.assert_array_equal(grown[1], first[1])
    np.testing.assert_array_equal(grown[2], first[0])
    assert len(list(cache.dir.glob("*.npy"))) == 1  # the superseded array was removed
    assert isinstance(again, np.memmap)  # rows stored in request order: a view of the memory map, not a copy
    assert not isinstance(grown, np.memmap)  # reordered rows: a copy

    other = features.FeatureCache(tmp_path, FeatureConfig(height=16))
    assert other.dir != cache.dir and other.get(CLIPS[:1], progress=False).shape == (1, 3, 16, 176)


def test_missing_and_unreadable_audio_name_the_file_and_keep_the_good_clips(tmp_path):
    cache = features.FeatureCache(tmp_path / "cache", FeatureConfig())
    with pytest.raises(audio.AudioError, match=r"1 audio file\(s\) cannot be used .*\n.*nope.wav: audio file does not exist"):
        cache.get([CLIPS[0], tmp_path / "nope.wav"], progress=False)
    assert not (cache.dir / "index.json").exists()  # a missing file fails before anything is rendered
    fake = tmp_path / "text.wav"
    fake.write_text("this is not audio")
    with pytest.raises(audio.AudioError, match=r"text.wav: .*not audio.*\n?.*") as caught:
        cache.get([CLIPS[0], fake], progress=False)
    assert "on_error='skip'" in str(caught.value)  # the library names its parameter; ens shows --on-error skip
    index = json.loads((cache.dir / "index.json").read_text())
    assert len(index["keys"]) == 2 and list(index["errors"]) == [index["keys"][1]]  # the good clip is kept, the error remembered
    images, failed = cache.get_skipping([CLIPS[0], fake, tmp_path / "nope.wav"], progress=False)
    assert images.shape[0] == 3 and images[0].any() and not images[1].any() and not images[2].any()
    assert sorted(failed) == [1, 2] and "not audio" in failed[1] and failed[2] == "audio file does not exist"
    np.testing.assert_array_equal(images[0], features.FeatureCache(tmp_path / "fresh", FeatureConfig()).get(CLIPS[:1], progress=False)[0])


def test_stereo_wav_at_44100_hz_loads_like_the_mono_flac(tmp_path):
    import soundfile as sf

    mono, rate = audio.read(CLIPS[0])
    stereo44 = librosa.resample(mono, orig_sr=rate, target_sr=44100)
    sf.write(tmp_path / "clip.wav", np.stack([stereo44, stereo44], axis=1), 44100, subtype="PCM_24")
    a = audio.load(CLIPS[0], 16000, 3.5, 40)
    b = audio.load(tmp_path / "clip.wav", 16000, 3.5, 40)
    assert b.shape == a.shape
    assert np.corrcoef(a, b)[0, 1] > 0.99
