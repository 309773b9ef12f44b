"""Acoustic functionals (ensemble.members.functionals) and the vector cache under them (ensemble.inputs.vectors), on
real RAVDESS clips: sizes and names of the three sets, ens_basic against hand computations and known
pitches, openSMILE's numbers against its own process_file, the cache, and the refusals.

opensmile is imported here without a skip: CI installs the extra (.[test,opensmile]), so these
tests fail, not skip, where it is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import librosa
import numpy as np
import opensmile
import pytest
import soundfile as sf

from ensemble.inputs import audio
from ensemble.inputs.vectors import VectorCache, VectorError
from ensemble.members import functionals
from ensemble.members.functionals import SETS, FunctionalsCache, FunctionalsError

from .conftest import ravdess_clip

RATE = 16000
MALE, FEMALE = (1, 3), (2, 4)  # RAVDESS: odd actors are male, even ones female


def _load(clip: Path, trim_db: float = 0.0) -> np.ndarray:
    return audio.load_trimmed(clip, RATE, trim_db)[0]


def _column(set_name: str, name: str) -> int:
    return functionals.names(set_name).index(name)


def _hz(semitones: np.ndarray) -> np.ndarray:
    return functionals.F0_REFERENCE * 2 ** (np.asarray(semitones) / 12)


def _copies(tmp_path: Path, clips: list[Path]) -> list[Path]:
    folder = tmp_path / "audio"
    folder.mkdir(exist_ok=True)
    return [Path(shutil.copy2(c, folder / c.name)) for c in clips]


@pytest.fixture(scope="module")
def waves() -> list[np.ndarray]:
    """Neutral clips of actors 1 and 2 (a man, a woman) and an angry clip of actor 3."""
    return [_load(ravdess_clip(1, 1)), _load(ravdess_clip(2, 1)), _load(ravdess_clip(3, 5, intensity=2))]


# ---- the sets ----


@pytest.mark.parametrize(("set_name", "size"), [("ComParE_2016", 6373), ("eGeMAPSv02", 88), ("ens_basic", 319)])
def test_each_set_has_its_size_names_and_finite_values(waves, set_name, size):
    names = functionals.names(set_name)
    assert SETS[set_name].size == size and len(names) == size and len(set(names)) == size
    x = functionals.extract(waves, RATE, set_name)
    assert x.shape == (3, size) and x.dtype == np.float32 and np.isfinite(x).all()
    assert not np.array_equal(x[0], x[1])  # two speakers, two rows


def test_the_opensmile_sets_name_their_columns_as_opensmile_does():
    assert functionals.names("eGeMAPSv02")[:2] == ["F0semitoneFrom27.5Hz_sma3nz_amean", "F0semitoneFrom27.5Hz_sma3nz_stddevNorm"]
    assert functionals.names("ComParE_2016")[0] == "audspec_lengthL1norm_sma_range"


def test_ens_basic_names_are_descriptor_by_statistic():
    names = functionals.names("ens_basic")
    assert names[:6] == ["rms_db_mean", "rms_db_std", "rms_db_p10", "rms_db_p50", "rms_db_p90", "rms_db_slope"]
    assert names[-1] == "voiced_fraction" and "mfcc_delta19_slope" in names and "spectral_contrast4_p90" in names
    assert len(functionals.DESCRIPTORS) * len(functionals.STATISTICS) + 1 == len(names)


# ---- ens_basic against hand computations ----


def test_rms_functionals_match_numpy_by_hand(waves):
    """RMS of 32 ms frames every 10 ms, centred with zero padding, in dB; mean, p90 and slope per second."""
    y = waves[1].astype(np.float64)
    frame, hop = 512, 160
    padded = np.pad(y, frame // 2)
    rms = np.array([np.sqrt(np.mean(padded[k * hop : k * hop + frame] ** 2)) for k in range(1 + len(y) // hop)])
    db = 20 * np.log10(np.maximum(rms, 1e-5))
    slope = np.polyfit(np.arange(len(db)) * hop / RATE, db, 1)[0]
    got = functionals.extract([waves[1]], RATE, "ens_basic")[0]
    assert got[_column("ens_basic", "rms_db_mean")] == pytest.approx(db.mean(), abs=1e-3)
    assert got[_column("ens_basic", "rms_db_p90")] == pytest.approx(np.percentile(db, 90), abs=1e-3)
    assert got[_column("ens_basic", "rms_db_slope")] == pytest.approx(slope, rel=1e-4)
    assert -100 < db.mean() < -20  # a real recording: quiet pauses, speech well under full scale


def test_women_speak_higher_than_men():
    """Median F0 of the neutral statements of two men and two women (RAVDESS actors 1-4)."""
    clips = {actor: [_load(ravdess_clip(actor, 1, statement=s)) for s in (1, 2)] for actor in MALE + FEMALE}
    column = _column("ens_basic", "f0_semitones_p50")
    median = {actor: _hz(functionals.extract(w, RATE, "ens_basic")[:, column]) for actor, w in clips.items()}
    men, women = np.concatenate([median[a] for a in MALE]), np.concatenate([median[a] for a in FEMALE])
    assert ((80 < men) & (men < 180)).all() and ((170 < women) & (women < 270)).all()
    assert women.min() > men.max()


def test_a_tone_has_its_pitch_and_noise_and_silence_have_none():
    t = np.arange(3 * RATE) / RATE
    tone = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    noise = np.random.default_rng(0).normal(0, 0.1, 3 * RATE).astype(np.float32)
    silence = np.zeros(RATE, np.float32)
    x = functionals.extract([tone, noise, silence], RATE, "ens_basic")
    assert np.isfinite(x).all()
    f0 = [_column("ens_basic", f"f0_semitones_{s}") for s in functionals.STATISTICS]
    voiced, level = _column("ens_basic", "voiced_fraction"), _column("ens_basic", "rms_db_mean")
    assert _hz(x[0, _column("ens_basic", "f0_semitones_p50")]) == pytest.approx(220, rel=0.01)
    assert x[0, voiced] > 0.95 and x[0, level] == pytest.approx(20 * np.log10(0.3 / np.sqrt(2)), abs=0.1)
    assert x[1, voiced] < 0.05
    assert x[2, voiced] == 0 and (x[2, f0] == 0).all() and x[2, level] == pytest.approx(-100)  # no voiced frame: F0 functionals 0


def test_a_clip_shorter_than_a_hop_has_one_frame_and_finite_functionals():
    """100 samples (6 ms) are one zero-padded frame: finite levels, no spread, slopes 0."""
    x = functionals.extract([np.full(100, 0.1, np.float32)], RATE, "ens_basic")[0]
    assert np.isfinite(x).all()
    frame_rms = np.sqrt(100 * 0.1**2 / 512)
    assert x[_column("ens_basic", "rms_db_mean")] == pytest.approx(20 * np.log10(frame_rms), abs=1e-3)
    assert x[_column("ens_basic", "rms_db_std")] == 0 and x[_column("ens_basic", "mfcc03_slope")] == 0


def test_a_mains_hum_is_not_a_voice():
    """60 Hz hum (and harmonics) sits at the edge of the F0 range: periodic, yet not voiced."""
    t = np.arange(2 * RATE) / RATE
    hum = (0.05 * np.sin(2 * np.pi * 60 * t) + 0.02 * np.sin(2 * np.pi * 120 * t)).astype(np.float32)
    x = functionals.extract([hum], RATE, "ens_basic")[0]
    assert x[_column("ens_basic", "periodicity_p50")] > 0.9
    assert x[_column("ens_basic", "voiced_fraction")] == 0


def test_ens_basic_is_fast(waves):
    import time

    functionals.extract(waves[:1], RATE, "ens_basic")
    started = time.perf_counter()
    functionals.extract(waves, RATE, "ens_basic")
    per_second_of_audio = (time.perf_counter() - started) / (sum(len(w) for w in waves) / RATE)
    assert per_second_of_audio < 0.05  # measured about 0.006 s per second of audio; generous for a shared CPU


# ---- openSMILE ----


def test_compare_values_are_opensmiles_own_on_the_trimmed_clip(tmp_path):
    """The cache's ComParE row of a trimmed clip equals openSMILE's process_file of that trimmed waveform."""
    (clip,) = _copies(tmp_path, [ravdess_clip(22, 3)])
    y = _load(clip, trim_db=30)
    wav = tmp_path / "trimmed.wav"
    sf.write(wav, y, RATE, subtype="FLOAT")
    smile = opensmile.Smile(feature_set=opensmile.FeatureSet.ComParE_2016, feature_level=opensmile.FeatureLevel.Functionals)
    expected = smile.process_file(wav)
    got = FunctionalsCache(tmp_path / "functionals").get([clip], RATE, trim_db=30, set_name="ComParE_2016", progress=False)
    assert list(expected.columns) == functionals.names("ComParE_2016")
    np.testing.assert_array_equal(got[0], expected.to_numpy(dtype=np.float32)[0])


def test_a_clip_too_short_for_opensmile_is_refused_by_index(waves):
    with pytest.raises(FunctionalsError, match=r"waveform 1: 800 samples \(50 ms\) are too short for openSMILE's eGeMAPSv02"):
        functionals.extract([waves[0], waves[0][:800]], RATE, "eGeMAPSv02")


def test_without_opensmile_its_sets_say_how_to_install_it_and_its_licence(monkeypatch, waves):
    monkeypatch.setitem(sys.modules, "opensmile", None)  # import opensmile now raises ImportError
    monkeypatch.setattr(functionals, "_SMILES", {})
    for call in (
        lambda: functionals.names("ComParE_2016"),
        lambda: functionals.extract(waves[:1], RATE, "eGeMAPSv02"),
        lambda: FunctionalsCache("unused").get([ravdess_clip(1, 1)], RATE, set_name="eGeMAPSv02"),
    ):
        with pytest.raises(FunctionalsError, match=r'pip install "ens\[opensmile\]"') as caught:
            call()
        assert "research and education, not for commercial use" in str(caught.value)
    assert functionals.extract(waves[:1], RATE, "ens_basic").shape == (1, 319)  # the permissive set needs none of it


def test_importing_functionals_imports_neither_opensmile_nor_torch():
    code = "import sys, ensemble.members.functionals; print(sorted({'opensmile', 'torch'} & set(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "[]"


# ---- refusals ----


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (
            ([np.ones(800, np.float32)], RATE, "GeMAPS"),
            r"set_name='GeMAPS' is not a set of functionals; choose one of \['ComParE_2016', 'eGeMAPSv02', 'ens_basic'",
        ),
        (([np.ones(800, np.float32)], 0, "ens_basic"), r"sample_rate=0 is not a positive integer"),
        (([np.ones(800, np.float32)], 4000, "ens_basic"), r"sample_rate=4000: ens_basic needs at least 8000 Hz"),
        (([np.ones(800, np.float32), np.ones((2, 8), np.float32)], RATE, "ens_basic"), r"waveform 1: expected a non-empty 1-D array of samples, got \(2, 8\)"),
        (([np.zeros(0, np.float32)], RATE, "eGeMAPSv02"), r"waveform 0: expected a non-empty 1-D array"),
        (([np.array([0.1, np.inf] * 400, np.float32)], RATE, "ens_basic"), r"waveform 0: holds NaN or Inf"),
    ],
)
def test_bad_input_is_refused_with_the_value(args, match):
    with pytest.raises(FunctionalsError, match=match):
        functionals.extract(*args)


# ---- the cache ----


@pytest.fixture
def basic_calls(monkeypatch) -> list[int]:
    """Counts ens_basic computations: one entry (the clip's length) per clip."""
    original = functionals._basic
    made: list[int] = []

    def counted(y, sample_rate):
        made.append(len(y))
        return original(y, sample_rate)

    monkeypatch.setattr(functionals, "_basic", counted)
    return made


def test_cache_computes_each_clip_once_and_a_changed_file_again(tmp_path, basic_calls, capsys):
    a, b = _copies(tmp_path, [ravdess_clip(5, 2), ravdess_clip(6, 7)])
    root = tmp_path / "functionals"
    first = FunctionalsCache(root).get([a, b], RATE)
    assert len(basic_calls) == 2
    assert capsys.readouterr().out.startswith("functionals ens_basic: 2 clips in ")
    np.testing.assert_array_equal(first, functionals.extract([_load(a), _load(b)], RATE, "ens_basic"))
    assert len(basic_calls) == 4  # (the reference above)

    again = FunctionalsCache(root).get([b, a, b], RATE)
    assert len(basic_calls) == 4 and capsys.readouterr().out == ""  # nothing computed, nothing reported
    np.testing.assert_array_equal(again, first[[1, 0, 1]])
    assert [p.name for p in root.iterdir()] == [f"{functionals.identity('ens_basic')}-16000hz-trim0.npz"]
    assert functionals.identity("ens_basic").startswith("ens_basic-1-librosa-")

    os.utime(a, ns=(a.stat().st_atime_ns, a.stat().st_mtime_ns + 10**9))  # a changed file is computed again
    FunctionalsCache(root).get([a, b], RATE, progress=False)
    assert len(basic_calls) == 5
    FunctionalsCache(root).get([a], RATE, trim_db=30, progress=False)  # another loading setting, another file
    assert len(basic_calls) == 6 and len(list(root.iterdir())) == 2


def test_each_set_has_its_own_cache_file(tmp_path):
    (clip,) = _copies(tmp_path, [ravdess_clip(7, 4)])
    cache = FunctionalsCache(tmp_path / "functionals")
    assert cache.get([clip], RATE, set_name="eGeMAPSv02", progress=False).shape == (1, 88)
    assert cache.get([clip], RATE, set_name="ens_basic", progress=False).shape == (1, 319)
    assert sorted(p.name for p in cache.root.iterdir()) == [
        f"ens_basic-1-librosa-{librosa.__version__}-16000hz-trim0.npz",
        f"opensmile-{opensmile.__version__}-eGeMAPSv02-16000hz-trim0.npz",
    ]


def test_cache_refuses_missing_files_first_and_names_unloadable_ones_after_caching_the_rest(tmp_path, basic_calls):
    (good,) = _copies(tmp_path, [ravdess_clip(8, 8)])
    text = tmp_path / "audio" / "notes.flac"
    text.write_text("not audio at all\n")
    cache = FunctionalsCache(tmp_path / "functionals")
    with pytest.raises(audio.AudioError, match=r"missing\.flac: audio file does not exist"):
        cache.get([good, tmp_path / "missing.flac"], RATE, progress=False)
    assert not basic_calls  # refused before anything is computed
    with pytest.raises(audio.AudioError, match=r"notes\.flac: is a text file, not audio"):
        cache.get([text, good], RATE, progress=False)
    assert len(basic_calls) == 1
    cache.get([good], RATE, progress=False)
    assert len(basic_calls) == 1  # the good clip was cached before the refusal


def test_what_was_computed_before_an_extractor_error_is_kept(tmp_path):
    a, b, c = _copies(tmp_path, [ravdess_clip(9, 1), ravdess_clip(9, 2), ravdess_clip(9, 3)])
    seen: list[int] = []

    def compute(y, sample_rate):
        seen.append(len(y))
        if len(seen) == 2:
            raise FunctionalsError("the second clip cannot be described")
        return np.full(3, len(y), np.float32)

    cache = VectorCache(tmp_path / "vectors", "test-1", 3, compute, label="test vectors")
    with pytest.raises(FunctionalsError, match="second clip"):
        cache.get([a, b, c], RATE, progress=False)
    seen.clear()
    assert cache.get([a], RATE, progress=False)[0, 0] == len(_load(a)) and not seen  # a was saved on the way out


def test_an_extractor_returning_the_wrong_vector_is_refused(tmp_path):
    (clip,) = _copies(tmp_path, [ravdess_clip(10, 1)])
    with pytest.raises(VectorError, match=r"the short-1 extractor returned shape \(2,\), expected \(3,\)"):
        VectorCache(tmp_path / "v", "short-1", 3, lambda y, sr: np.zeros(2)).get([clip], RATE, progress=False)
    with pytest.raises(VectorError, match=r"the nan-1 extractor returned NaN or Inf"):
        VectorCache(tmp_path / "v", "nan-1", 3, lambda y, sr: np.full(3, np.nan)).get([clip], RATE, progress=False)


@pytest.mark.parametrize(("name", "size", "match"), [("a/b", 3, r"name='a/b' cannot name a cache file"), ("ok", 0, r"size=0 is not a vector length")])
def test_a_vector_cache_refuses_a_bad_name_or_size(name, size, match):
    with pytest.raises(VectorError, match=match):
        VectorCache("unused", name, size, lambda y, sr: np.zeros(size))


def test_an_unreadable_cache_file_is_computed_again_with_a_warning(tmp_path, basic_calls):
    (clip,) = _copies(tmp_path, [ravdess_clip(11, 6)])
    cache = FunctionalsCache(tmp_path / "functionals")
    first = cache.get([clip], RATE, progress=False)
    cache.cache("ens_basic").file(RATE, 0.0).write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="cache is unreadable"):
        again = cache.get([clip], RATE, progress=False)
    assert len(basic_calls) == 2
    np.testing.assert_array_equal(first, again)


# ---- threads ----


def test_opensmile_on_two_threads_gives_the_rows_of_one_in_order(waves):
    """ComParE and eGeMAPS of real clips on two threads (openSMILE releases the GIL) are the very rows of one thread, clip by clip."""
    clips = waves * 2
    for set_name in ("ComParE_2016", "eGeMAPSv02"):
        one = functionals.extract(clips, RATE, set_name, threads=1)
        two = functionals.extract(clips, RATE, set_name, threads=2)
        np.testing.assert_array_equal(two, one)
        assert not np.array_equal(one[0], one[1])  # distinct clips: an order mix-up would show


def test_threads_go_to_opensmile_only():
    assert functionals.workers("ComParE_2016", 2) == functionals.workers("eGeMAPSv02", 2) == 2
    assert functionals.workers("eGeMAPSv02", 0) == (os.cpu_count() or 1)  # [runtime].threads 0: every core
    assert functionals.workers("ens_basic", 2) == functionals.workers("yamnet_embedding", 2) == 1
    assert FunctionalsCache("unused", threads=2).cache("eGeMAPSv02").threads == 2
    assert FunctionalsCache("unused", threads=2).cache("ens_basic").threads == 1


def test_a_clip_too_short_for_opensmile_on_threads_is_refused_by_its_index(waves):
    with pytest.raises(FunctionalsError, match=r"waveform 2: 800 samples"):
        functionals.extract([waves[0], waves[1], waves[0][:800], waves[2]], RATE, "eGeMAPSv02", threads=2)


def test_a_threaded_cache_stores_what_one_thread_does_and_names_unloadable_files(tmp_path):
    clips = _copies(tmp_path, [ravdess_clip(11, k) for k in (1, 2, 3, 4, 5)])
    text = tmp_path / "audio" / "notes.flac"
    text.write_text("not audio at all\n")
    one = FunctionalsCache(tmp_path / "one", threads=1).get(clips, RATE, set_name="eGeMAPSv02", progress=False)
    threaded = FunctionalsCache(tmp_path / "two", threads=2)
    with pytest.raises(audio.AudioError, match=r"notes\.flac: is a text file, not audio"):
        threaded.get([*clips[:2], text, *clips[2:]], RATE, set_name="eGeMAPSv02", progress=False)
    assert not threaded.cache("eGeMAPSv02").missing(clips, RATE)  # every good clip was cached before the refusal
    np.testing.assert_array_equal(threaded.get(clips, RATE, set_name="eGeMAPSv02", progress=False), one)
