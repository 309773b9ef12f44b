"""Speaker inference and per-speaker normalisation (ensemble.speaker.speakers): voice embeddings of real
RAVDESS clips, their clustering into speakers, the embedding cache, and SpeakerNorm checked against
NumPy by hand."""

from __future__ import annotations

import inspect
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone

from ensemble.inputs import audio
from ensemble.speaker import speakers
from ensemble.speaker.speakers import EPS, EmbeddingCache, SpeakerError, SpeakerNorm

from .conftest import ravdess_clip

ACTORS = (21, 22, 23, 24)


def _clips(actor: int) -> list[Path]:
    """10 clips of one actor: each of the 8 emotions (normal intensity), strong happy and strong angry."""
    return [ravdess_clip(actor, e) for e in range(1, 9)] + [
        ravdess_clip(actor, 3, statement=2, repetition=2, intensity=2),
        ravdess_clip(actor, 5, statement=2, intensity=2),
    ]


@pytest.fixture(scope="module")
def voices() -> tuple[np.ndarray, np.ndarray]:
    """Embeddings ``(40, 256)`` of 10 clips of each of actors 21-24, and each clip's actor."""
    paths = [p for actor in ACTORS for p in _clips(actor)]
    waves = [audio.load_trimmed(p, 16000)[0] for p in paths]
    return speakers.embed(waves, 16000), np.repeat(ACTORS, 10)


@pytest.fixture
def calls(monkeypatch) -> list[int]:
    """Counts the encoder's utterance embeddings: one entry per call."""
    model = speakers.encoder()
    original = model.embed_utterance
    made: list[int] = []

    def counted(wav, *args, **kwargs):
        made.append(len(wav))
        return original(wav, *args, **kwargs)

    monkeypatch.setattr(model, "embed_utterance", counted)
    return made


# ---- embedding ----


def test_the_weights_ship_in_the_wheel_and_load_without_network(monkeypatch):
    path = speakers.weights_path()
    assert path.is_file() and path.parent == Path(speakers._resemblyzer().__file__).resolve().parent
    assert path.stat().st_size > 10_000_000  # the 17 MB GE2E checkpoint, not a pointer

    def refuse(*args, **kwargs):
        raise AssertionError("the voice encoder tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(speakers, "_ENCODER", None)  # load it again, here, offline
    y, _ = audio.load_trimmed(ravdess_clip(21, 1), 16000)
    e = speakers.embed([y], 16000)
    assert speakers._ENCODER is not None
    assert e.shape == (1, 256) and e.dtype == np.float32
    assert np.linalg.norm(e[0]) == pytest.approx(1.0, abs=1e-5)
    assert speakers.encoder_id().startswith("resemblyzer-0.1.4-")


def test_embeddings_are_unit_vectors_closer_within_a_speaker(voices):
    e, actors = voices
    assert e.shape == (40, 256) and e.dtype == np.float32 and np.isfinite(e).all()
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    similarity = e @ e.T
    same = actors[:, None] == actors[None, :]
    off_diagonal = ~np.eye(len(e), dtype=bool)
    assert similarity[same & off_diagonal].mean() > similarity[~same].mean() + 0.1


def test_embedding_is_deterministic_and_follows_the_sample_rate():
    y, _ = audio.load_trimmed(ravdess_clip(22, 4), 16000)
    y22, _ = audio.load_trimmed(ravdess_clip(22, 4), 22050)
    a, b = speakers.embed([y, y], 16000)
    np.testing.assert_array_equal(a, b)
    (c,) = speakers.embed([y22], 22050)
    assert float(a @ c) > 0.98  # the same clip at another rate: resampled to 16 kHz by the preprocessing


def test_a_clip_without_a_voiced_window_is_embedded_unprocessed_not_as_silence():
    """20 ms cuts are shorter than one 30 ms VAD window, so resemblyzer's preprocessing empties
    both; embedded as they are, two different cuts give two different embeddings."""
    y, _ = audio.load_trimmed(ravdess_clip(23, 5), 16000)
    cuts = [y[16000 : 16000 + 320], y[24000 : 24000 + 320]]
    assert all(len(speakers._resemblyzer().preprocess_wav(c, source_sr=16000)) == 0 for c in cuts)
    e = speakers.embed(cuts, 16000)
    assert np.isfinite(e).all()
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert float(e[0] @ e[1]) < 0.999


@pytest.mark.parametrize(
    ("wave", "match"),
    [
        (np.zeros(16000, np.float32), r"waveform 1: all 16000 samples are zero"),
        (np.zeros(0, np.float32), r"waveform 1: expected a non-empty 1-D array"),
        (np.ones((2, 800), np.float32), r"waveform 1: expected a non-empty 1-D array of samples, got shape \(2, 800\)"),
        (np.array([0.1, np.nan] * 800, np.float32), r"waveform 1: holds NaN or Inf"),
    ],
)
def test_unusable_waveforms_are_refused_by_index(wave, match):
    y, _ = audio.load_trimmed(ravdess_clip(21, 2), 16000)
    with pytest.raises(SpeakerError, match=match):
        speakers.embed([y, wave], 16000)


def test_a_bad_sample_rate_is_refused():
    with pytest.raises(SpeakerError, match=r"sample_rate=0 is not a positive integer"):
        speakers.embed([np.ones(100, np.float32)], 0)


# ---- the embedding cache ----


def _copies(tmp_path: Path, clips: list[Path]) -> list[Path]:
    folder = tmp_path / "audio"
    folder.mkdir()
    return [Path(shutil.copy2(c, folder / c.name)) for c in clips]


def test_cache_embeds_each_clip_once(tmp_path, calls):
    a, b, c = _copies(tmp_path, [ravdess_clip(24, 1), ravdess_clip(24, 3), ravdess_clip(22, 6)])
    root = tmp_path / "voices"
    first = EmbeddingCache(root).get([a, b, c], 16000, progress=False)
    assert len(calls) == 3
    expected = speakers.embed([audio.load_trimmed(p, 16000)[0] for p in (a, b, c)], 16000)
    np.testing.assert_array_equal(first, expected)
    assert len(calls) == 6  # (the reference above)

    again = EmbeddingCache(root).get([c, a, a, b], 16000, progress=False)
    assert len(calls) == 6  # nothing embedded: every clip is cached
    np.testing.assert_array_equal(again, expected[[2, 0, 0, 1]])
    assert [p.name for p in root.iterdir()] == [f"{speakers.encoder_id()}-16000hz-trim0.npz"]  # no temporary left

    os.utime(b, ns=(b.stat().st_atime_ns, b.stat().st_mtime_ns + 10**9))  # a changed file is embedded again
    EmbeddingCache(root).get([a, b, c], 16000, progress=False)
    assert len(calls) == 7
    trimmed = EmbeddingCache(root).get([a, b], 16000, trim_db=30, progress=False)  # another setting, another file
    assert len(calls) == 9 and len(list(root.iterdir())) == 2
    assert not np.array_equal(trimmed, expected[:2])


def test_cache_names_missing_and_unreadable_files_and_keeps_the_good_clips(tmp_path, calls):
    (good,) = _copies(tmp_path, [ravdess_clip(21, 8)])
    text = tmp_path / "audio" / "notes.flac"
    text.write_text("not audio at all\n")
    cache = EmbeddingCache(tmp_path / "voices")
    with pytest.raises(audio.AudioError, match=r"missing\.flac: audio file does not exist"):
        cache.get([good, tmp_path / "missing.flac"], 16000, progress=False)
    assert not calls  # refused before anything is embedded
    with pytest.raises(audio.AudioError, match=r"notes\.flac: is a text file, not audio"):
        cache.get([good, text], 16000, progress=False)
    assert len(calls) == 1
    cache.get([good], 16000, progress=False)
    assert len(calls) == 1  # the good clip was cached before the refusal


def test_an_unreadable_cache_file_is_embedded_again_with_a_warning(tmp_path, calls):
    (clip,) = _copies(tmp_path, [ravdess_clip(23, 2)])
    cache = EmbeddingCache(tmp_path / "voices")
    first = cache.get([clip], 16000, progress=False)
    cache.file(16000, 0.0).write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="cache is unreadable"):
        again = cache.get([clip], 16000, progress=False)
    assert len(calls) == 2
    np.testing.assert_array_equal(first, again)


def test_cache_reports_one_line_when_not_on_a_terminal(tmp_path, capsys):
    (clip,) = _copies(tmp_path, [ravdess_clip(22, 2)])
    EmbeddingCache(tmp_path / "voices").get([clip], 16000)
    assert capsys.readouterr().out.startswith("embed voices: 1 clips in ")
    EmbeddingCache(tmp_path / "voices").get([clip], 16000)
    assert capsys.readouterr().out == ""  # nothing to embed, nothing reported


# ---- inferring speakers ----


def test_four_actors_are_found_by_silhouette(voices):
    e, actors = voices
    found = speakers.infer(e)
    # measured on this CPU: k = 4, ARI 1.0 (silhouette 0.371 at k = 4; 0.348 at k = 5, whose ARI is 0.97)
    assert found.k == 4
    assert speakers.adjusted_rand(actors, found.labels) >= 0.95
    assert found.labels.shape == (40,) and found.labels.dtype == np.int64
    assert sorted(found.silhouette) == list(range(2, 9))
    assert found.score == found.silhouette[4] == max(found.silhouette.values())


def test_a_given_k_is_used_as_it_is(voices):
    e, actors = voices
    two = speakers.infer(e, k=2)
    assert two.k == 2 and set(two.labels.tolist()) == {0, 1} and list(two.silhouette) == [2]
    one = speakers.infer(e, k=1)
    assert one.k == 1 and not one.labels.any() and one.silhouette == {} and np.isnan(one.score)


def _three_speakers(n: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    centres = np.eye(16)[:3] * 10
    truth = np.repeat([0, 1, 2], n)
    return centres[truth] + rng.normal(size=(3 * n, 16)), truth


def test_silhouette_chooses_k_within_its_range():
    x, truth = _three_speakers()
    found = speakers.infer(x)
    assert found.k == 3 and speakers.adjusted_rand(truth, found.labels) == 1.0
    narrow = speakers.infer(x, k_min=4, k_max=5)
    assert sorted(narrow.silhouette) == [4, 5]
    assert sorted(speakers.infer(x[:4], k_max=8).silhouette) == [2, 3]  # k stops at n - 1


@pytest.mark.parametrize(
    ("embeddings", "kwargs", "match"),
    [
        (np.ones((1, 4)), {}, r"at least 2 clips, got 1"),
        (np.ones(4), {}, r"must be 2-D"),
        (np.eye(3), {"k": 4}, r"k=4 is not a number of speakers for 3 clips"),
        (np.eye(3), {"k": -1}, r"k=-1"),
        (np.eye(2), {}, r"at least k_min \+ 1 = 3 clips, got 2; pass k"),
        (np.eye(4), {"k_min": 1}, r"k_min=1, k_max=8"),
        (np.eye(4), {"k_min": 3, "k_max": 2}, r"k_min=3, k_max=2"),
        (np.array([[1.0, 0], [0, 0], [0, 1]]), {}, r"rows \[1\] hold NaN / Inf or only zeros"),
        (np.array([[1.0, 0], [np.nan, 1], [0, 1]]), {}, r"rows \[1\]"),
    ],
)
def test_infer_refuses_with_the_values(embeddings, kwargs, match):
    with pytest.raises(SpeakerError, match=match):
        speakers.infer(embeddings, **kwargs)


def test_adjusted_rand_ignores_label_names():
    assert speakers.adjusted_rand(["a", "a", "b", "b"], [7, 7, 3, 3]) == 1.0
    assert speakers.adjusted_rand([1, 1, 2, 2], [0, 1, 0, 1]) < 0


# ---- per-speaker normalisation ----


def _rows(seed: int = 0, shape=(5,), n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows of 3 speakers (4 each, interleaved) with their own offsets and scales."""
    rng = np.random.default_rng(seed)
    groups = np.array(["ann", "bob", "cy"] * (n // 3))
    offset = {"ann": 5.0, "bob": -3.0, "cy": 0.5}
    scale = {"ann": 2.0, "bob": 0.5, "cy": 1.0}
    x = np.stack([offset[g] + scale[g] * rng.normal(size=shape) for g in groups])
    return x, groups


def test_statistics_per_speaker_match_numpy():
    x, groups = _rows()
    norm = SpeakerNorm().fit(x, groups)
    assert norm.groups_.tolist() == ["ann", "bob", "cy"] and norm.counts_.tolist() == [4, 4, 4]
    for i, g in enumerate(["ann", "bob", "cy"]):
        np.testing.assert_allclose(norm.mean_[i], x[groups == g].mean(axis=0))
        np.testing.assert_allclose(norm.std_[i], x[groups == g].std(axis=0))
    out = norm.transform(x, groups)
    assert out.dtype == np.float64 and out.shape == x.shape
    for g in ["ann", "bob", "cy"]:
        np.testing.assert_allclose(out[groups == g], (x[groups == g] - x[groups == g].mean(axis=0)) / x[groups == g].std(axis=0))
        np.testing.assert_allclose(out[groups == g].mean(axis=0), 0, atol=1e-12)
        np.testing.assert_allclose(out[groups == g].std(axis=0), 1)
    np.testing.assert_array_equal(SpeakerNorm().fit_transform(x, groups), out)


def test_pooled_time_axis_gives_speaker_level_cmvn_of_images():
    x, groups = _rows(shape=(2, 3, 7))
    x = x.astype(np.float32)
    norm = SpeakerNorm(pooled_axes=(-1,)).fit(x, groups)
    assert norm.mean_.shape == norm.std_.shape == (3, 2, 3, 1)
    for i, g in enumerate(["ann", "bob", "cy"]):
        rows = x[groups == g].astype(np.float64)
        np.testing.assert_allclose(norm.mean_[i, ..., 0], rows.mean(axis=(0, 3)), rtol=1e-12)
        np.testing.assert_allclose(norm.std_[i, ..., 0], rows.std(axis=(0, 3)), rtol=1e-12)
    out = norm.transform(x[:, :, :, :5], groups)  # a pooled axis may have another length
    assert out.dtype == np.float32 and out.shape == (12, 2, 3, 5)
    ann = x[groups == "ann"].astype(np.float64)
    expected = (ann[..., :5] - ann.mean(axis=(0, 3), keepdims=True)) / ann.std(axis=(0, 3), keepdims=True)
    np.testing.assert_allclose(out[groups == "ann"], expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(SpeakerError, match=r"X has shape \(12, 2, 4, 7\) but SpeakerNorm was fitted on rows of shape \(2, 3, 1\)"):
        norm.transform(np.zeros((12, 2, 4, 7), np.float32), groups)


def test_several_pooled_axes_per_speaker():
    x, groups = _rows(shape=(2, 3, 4))
    norm = SpeakerNorm(pooled_axes=(3, 1)).fit(x, groups)
    assert norm.mean_.shape == (3, 1, 3, 1)
    np.testing.assert_allclose(norm.std_[1, 0, :, 0], x[groups == "bob"].std(axis=(0, 1, 3)))


@pytest.mark.parametrize("axes", [(0,), (-4,), (4,), (1, -3), (1.0,)])
def test_bad_pooled_axes_are_refused(axes):
    x, groups = _rows(shape=(2, 3, 4))
    with pytest.raises(SpeakerError, match=r"pooled_axes="):
        SpeakerNorm(pooled_axes=axes).fit(x, groups)


def test_a_speaker_not_fitted_is_refused_by_name():
    x, groups = _rows()
    norm = SpeakerNorm().fit(x[groups != "cy"], groups[groups != "cy"])
    with pytest.raises(SpeakerError, match=r"speaker\(s\) \['cy'\] were not seen in fit .*transform_population"):
        norm.transform(x, groups)


def test_a_constant_feature_becomes_zero_not_nan():
    x, groups = _rows()
    x[:, 2] = 4.25  # constant everywhere
    x[groups == "bob", 3] = -1.0  # constant within one speaker only
    norm = SpeakerNorm().fit(x, groups)
    out = norm.transform(x, groups)
    assert np.isfinite(out).all()
    assert not out[:, 2].any() and not out[groups == "bob", 3].any()
    assert (norm.std_[:, 2] == EPS).all() and norm.population_.std[2] == EPS
    assert not norm.transform_population(x)[:, 2].any()


def test_population_statistics_cover_every_fitted_row():
    x, groups = _rows(shape=(3, 6))
    norm = SpeakerNorm(pooled_axes=(-1,)).fit(x, groups)
    mean, std = x.mean(axis=(0, 2), keepdims=True)[0], x.std(axis=(0, 2), keepdims=True)[0]
    np.testing.assert_allclose(norm.population_.mean, mean)
    np.testing.assert_allclose(norm.population_.std, std)
    new_speaker = _rows(seed=1, shape=(3, 6), n=3)[0] + 7.0
    np.testing.assert_allclose(norm.transform_population(new_speaker), (new_speaker - mean) / std)


def test_unequal_speakers_weigh_by_their_rows_in_the_population():
    x, groups = _rows()
    keep = np.r_[np.flatnonzero(groups == "ann"), np.flatnonzero(groups == "bob")[:1]]  # 4 rows and 1 row
    norm = SpeakerNorm().fit(x[keep], groups[keep])
    np.testing.assert_allclose(norm.population_.mean, x[keep].mean(axis=0))
    np.testing.assert_allclose(norm.population_.std, x[keep].std(axis=0))


def test_float16_images_give_float32():
    x, groups = _rows(shape=(2, 4, 5))
    half = (x / 10).astype(np.float16)
    out = SpeakerNorm(pooled_axes=(-1,)).fit_transform(half, groups)
    assert out.dtype == np.float32
    exact = SpeakerNorm(pooled_axes=(-1,)).fit_transform(half.astype(np.float64), groups)
    np.testing.assert_allclose(out, exact, rtol=1e-5, atol=1e-5)
    assert SpeakerNorm().fit(half.reshape(12, -1), groups).transform_population(half.reshape(12, -1)).dtype == np.float32


def test_no_labels_reach_a_speakers_output():
    """There is no y anywhere; and a speaker's output depends on its own rows only: other speakers'
    rows (of any emotion), their number and the order of rows change nothing."""
    for method in (SpeakerNorm.fit, SpeakerNorm.transform, SpeakerNorm.fit_transform, SpeakerNorm.transform_population):
        assert "y" not in inspect.signature(method).parameters
    x, groups = _rows()
    with pytest.raises(TypeError):
        SpeakerNorm().fit(x, groups, np.arange(12))
    alone = SpeakerNorm().fit_transform(x[groups == "ann"], groups[groups == "ann"])
    others = _rows(seed=5, n=30)[0]  # more rows of other speakers
    mixed_x = np.concatenate([others, x])
    mixed_groups = np.concatenate([np.array(["bob", "cy", "dee"] * 10), groups])
    order = np.random.default_rng(3).permutation(len(mixed_x))
    mixed = np.empty_like(mixed_x)
    mixed[order] = SpeakerNorm().fit_transform(mixed_x[order], mixed_groups[order])  # shuffled, then put back
    np.testing.assert_allclose(mixed[30:][groups == "ann"], alone, rtol=1e-12)


def test_bad_input_is_refused():
    x, groups = _rows()
    with pytest.raises(SpeakerError, match=r"not fitted yet"):
        SpeakerNorm().transform(x, groups)
    with pytest.raises(SpeakerError, match=r"groups must name the speaker of each of the 12 rows, shape \(12,\), got shape \(11,\)"):
        SpeakerNorm().fit(x, groups[:11])
    with pytest.raises(SpeakerError, match=r"NaN or Inf"):
        SpeakerNorm().fit(np.where(x > 6, np.inf, x), groups)
    with pytest.raises(SpeakerError, match=r"eps=0"):
        SpeakerNorm(eps=0).fit(x, groups)
    with pytest.raises(SpeakerError, match=r"real numeric array"):
        SpeakerNorm().fit(np.array([["a"]] * 12), groups)


def test_it_is_a_scikit_learn_estimator():
    norm = SpeakerNorm(pooled_axes=(-1,), eps=1e-4)
    assert clone(norm).get_params() == {"pooled_axes": (-1,), "eps": 1e-4}


def test_importing_speakers_imports_no_torch():
    """Inferring and normalising need no torch; only embedding loads the encoder (and torch)."""
    code = "import sys, ensemble.speaker.speakers; assert 'torch' not in sys.modules and 'resemblyzer' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
