"""Bad audio (issue 6): every case is either loaded correctly or refused with an AudioError that
names the file and the problem. Files are generated in ``tmp_path``; the loader is fuzzed with
hypothesis (arbitrary bytes, and arbitrary small valid files in every WAV sample format).

Handled: AIFF/FLAC content behind a ``.wav`` name, silence, clipping, a 0.1 s clip (centre-padded),
a 10-minute clip (centre-cropped), 8/16/44.1/48/96 kHz, 1/2/6 channels (averaged), 8/16/24/32-bit
int and 32/64-bit float WAV, float samples beyond ±1 (divided by the clip's peak), a WAV whose data
chunk is cut short (the frames present are read).

Refused: a missing path, a folder, a 0-byte file, a header with 0 frames, a WAV or FLAC cut inside
its header, a FLAC cut inside its stream, a FLAC header claiming 2^36 frames, random bytes, a
garbled WAV ``fmt`` chunk, a text file, a Git LFS pointer, NaN/Inf samples, a sample rate of 1 Hz,
a file the OS will not open.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ensemble.inputs import audio

SR = 16000
DURATION = 2.0
N = 32000  # round(DURATION * SR)


def tone(rate: int, seconds: float, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    """``amp * sin(2 pi freq t)`` sampled at ``rate`` Hz, float64 ``(round(seconds * rate),)``."""
    t = np.arange(int(round(seconds * rate))) / rate
    return amp * np.sin(2 * np.pi * freq * t)


def assert_clip(y: np.ndarray) -> None:
    """What every handled case must give: float32 ``(N,)``, all finite."""
    assert y.dtype == np.float32
    assert y.shape == (N,)
    assert np.isfinite(y).all()


def dominant_hz(y: np.ndarray, rate: int = SR) -> float:
    spectrum = np.abs(np.fft.rfft(y))
    return float(np.argmax(spectrum) * rate / len(y))


def wav_bytes(x: np.ndarray, rate: int = SR, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


# --- handled cases ----------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000, 96000], ids=lambda r: f"{r}Hz")
def test_every_sample_rate_loads_the_same_440hz_tone(tmp_path, rate):
    path = tmp_path / "tone.wav"
    sf.write(path, tone(rate, 3.0), rate, subtype="PCM_16")
    y = audio.load(path, SR, DURATION)
    assert_clip(y)
    assert abs(dominant_hz(y) - 440.0) <= SR / N  # within one FFT bin (0.5 Hz)
    assert 0.49 < np.abs(y).max() < 0.51  # amplitude kept by the resampler
    assert audio.read(path)[1] == rate


def test_resampling_filters_content_above_the_new_nyquist(tmp_path):
    """A 12 kHz tone at 48 kHz cannot exist at 16 kHz: it must vanish, not alias to 4 kHz."""
    path = tmp_path / "high.wav"
    sf.write(path, tone(48000, 3.0, freq=12000.0), 48000, subtype="PCM_16")
    y = audio.load(path, SR, DURATION)
    assert_clip(y)
    assert np.sqrt(np.mean(y.astype(np.float64) ** 2)) < 1e-3


@pytest.mark.parametrize("channels", [2, 6], ids=["stereo", "6-channel"])
def test_channels_are_averaged(tmp_path, channels):
    """Channels with different tones and amplitudes load as their mean."""
    x = np.stack([(0.1 + 0.15 * k) * tone(SR, DURATION, freq=220.0 * (k + 1), amp=1.0) for k in range(channels)], axis=1)
    path = tmp_path / "multi.wav"
    sf.write(path, x, SR, subtype="FLOAT")
    y = audio.load(path, SR, DURATION)
    assert_clip(y)
    np.testing.assert_allclose(y, x.mean(axis=1), atol=1e-6)
    assert np.abs(y - x[:, 0]).max() > 0.1  # not just the first channel


@pytest.mark.parametrize(
    "subtype, step",
    [("PCM_U8", 2.0**-7), ("PCM_16", 2.0**-15), ("PCM_24", 2.0**-23), ("PCM_32", 2.0**-24), ("FLOAT", 2.0**-24), ("DOUBLE", 2.0**-24)],
    ids=["uint8", "int16", "int24", "int32", "float32", "float64"],
)
def test_every_sample_format_agrees_with_the_original(tmp_path, subtype, step):
    """8/16/24/32-bit int and 32/64-bit float WAV agree with the float original within one
    quantisation step, or float32's resolution (2^-24) where that is coarser: int32 and the float
    formats, since clips load as float32."""
    x = tone(SR, DURATION, amp=0.9)
    path = tmp_path / f"{subtype}.wav"
    sf.write(path, x, SR, subtype=subtype)
    assert sf.info(path).subtype == subtype
    y = audio.load(path, SR, DURATION)
    assert_clip(y)
    assert np.abs(y - x).max() <= step
    assert np.array_equal(audio.read(path)[0], y)


@pytest.mark.parametrize("fmt", ["AIFF", "FLAC"])
def test_other_formats_behind_a_wav_name_load_like_the_correctly_named_file(tmp_path, fmt):
    """libsndfile recognises the format by its content, not the file name."""
    x = tone(SR, DURATION)
    named = tmp_path / f"clip.{fmt.lower()}"
    sf.write(named, x, SR, format=fmt, subtype="PCM_16")
    disguised = tmp_path / "clip.wav"
    disguised.write_bytes(named.read_bytes())
    y = audio.load(disguised, SR, DURATION)
    assert_clip(y)
    assert np.array_equal(y, audio.load(named, SR, DURATION))
    assert np.abs(y - x).max() <= 2.0**-15


@pytest.mark.parametrize("trim_db", [0.0, 40.0], ids=["no-trim", "trim-40dB"])
def test_silence_loads_as_zeros(tmp_path, trim_db):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(3 * SR), SR, subtype="PCM_16")
    y = audio.load(path, SR, DURATION, trim_db)
    assert_clip(y)
    assert not y.any()


def clipped_int16(rate: int) -> np.ndarray:
    """A 440 Hz tone driven 3x past full scale and hard-clipped to the int16 range (square-ish)."""
    return np.clip(np.round(3 * tone(rate, 3.0, amp=32767.0)), -32768, 32767).astype(np.int16)


def test_clipped_audio_loads_within_full_scale(tmp_path):
    path = tmp_path / "clipped.wav"
    x = clipped_int16(SR)
    sf.write(path, x, SR, subtype="PCM_16")
    y = audio.load(path, SR, DURATION)
    assert_clip(y)
    assert y.max() == 32767 / 32768 and y.min() == -1.0
    np.testing.assert_array_equal(y, audio.fix_length(x / 32768.0, N))


def test_clipped_audio_resampled_overshoots_full_scale_slightly(tmp_path):
    """Resampling a flat-topped wave rings (Gibbs) a little past ±1; the values are kept
    (:func:`audio.load_trimmed`), and the tone is intact."""
    path = tmp_path / "clipped48k.wav"
    sf.write(path, clipped_int16(48000), 48000, subtype="PCM_16")
    y = audio.load(path, SR, DURATION)
    assert_clip(y)
    assert 1.0 < np.abs(y).max() < 1.2
    assert abs(dominant_hz(y) - 440.0) <= SR / N


def test_a_0_1_second_clip_is_centre_padded(tmp_path):
    x = 0.3 + tone(SR, 0.1, amp=0.2)  # never zero, so padding is visible
    path = tmp_path / "short.wav"
    sf.write(path, x, SR, subtype="FLOAT")
    y = audio.load(path, SR, DURATION)
    assert_clip(y)
    kept = np.flatnonzero(y)  # where the loaded clip sits, measured on the output
    left, right = kept[0], N - 1 - kept[-1]
    assert left == right  # centred: as many zeros after the clip as before it (N - 1600 is even)
    np.testing.assert_allclose(y[left : N - right], x, atol=1e-7)  # the whole clip, unchanged, once


def test_a_10_minute_clip_is_centre_cropped_to_its_middle(tmp_path):
    """The signal is a sample counter (each int16 value in turn), so the crop's position is checked
    sample for sample: it must be the middle 2 s of the 10 minutes."""
    frames = 600 * SR
    x = ((np.arange(frames) % 65536) - 32768).astype(np.int16)
    path = tmp_path / "long.wav"
    sf.write(path, x, SR, subtype="PCM_16")
    y = audio.load(path, SR, DURATION)
    assert_clip(y)
    start = (frames - N) // 2
    np.testing.assert_array_equal(y, x[start : start + N] / 32768.0)


@pytest.mark.parametrize("peak", [2.0, 1e30], ids=["peak-2", "peak-1e30"])
def test_float_samples_beyond_full_scale_are_divided_by_the_clip_peak(tmp_path, peak):
    """Float WAV may hold samples past ±1 (headroom); the clip is scaled to peak 1 rather than
    clipped, so its waveform (and its peak-relative features) are unchanged."""
    x = tone(SR, DURATION, amp=peak)
    path = tmp_path / "hot.wav"
    sf.write(path, x, SR, subtype="FLOAT")
    y = audio.load(path, SR, DURATION)
    assert_clip(y)
    assert np.abs(y).max() == 1.0
    np.testing.assert_allclose(y, x / np.abs(x).max(), atol=1e-6)


@pytest.mark.parametrize("channels, cut", [(1, 0.5), (2, 0.5)], ids=["mono-cut-mid-data", "stereo-cut-mid-frame"])
def test_a_wav_with_its_data_chunk_cut_short_reads_the_frames_present(tmp_path, channels, cut):
    """libsndfile sizes the data chunk by what the file holds: the complete frames present are
    read (a partial last frame is dropped), and they are the original's first frames."""
    x = np.stack([tone(SR, DURATION, amp=0.2 * (k + 1)) for k in range(channels)], axis=1)
    data = wav_bytes(x)
    keep = 44 + int((len(data) - 44) * cut)
    keep += 1 if channels == 2 else 0  # 2 bytes into a 4-byte stereo frame
    path = tmp_path / "cut.wav"
    path.write_bytes(data[:keep])
    y, rate = audio.read(path)
    whole = (keep - 44) // (2 * channels)
    assert rate == SR and y.shape == (whole,)
    np.testing.assert_allclose(y, x[:whole].mean(axis=1), atol=2.0**-15)
    assert_clip(audio.load(path, SR, DURATION))


# --- refused cases ----------------------------------------------------------------------------


def _nan_wav(path, value=np.nan, channels=1):
    x = np.tile(tone(SR, DURATION)[:, None], (1, channels))
    x[: SR // 10, 0] = value  # 1600 bad samples in the first channel
    sf.write(path, x, SR, subtype="FLOAT")


def _flac_cut(path, keep):
    data = wav_bytes(tone(SR, 3.0), fmt="FLAC")
    path.write_bytes(data[: keep if keep > 0 else len(data) // 2])


def _flac_claiming_2_36_frames(path):
    """A valid 8-channel FLAC whose STREAMINFO says it holds 2^36 - 1 frames (2 TiB as float32)."""
    data = bytearray(wav_bytes(np.zeros((1000, 8)), fmt="FLAC"))
    # STREAMINFO starts at byte 8; its bytes 10..17 pack rate (20 bits), channels - 1 (3),
    # bits per sample - 1 (5) and the total number of frames (36).
    packed = int.from_bytes(data[18:26], "big") | (2**36 - 1)
    data[18:26] = packed.to_bytes(8, "big")
    path.write_bytes(bytes(data))


def _garbled_fmt(path):
    data = bytearray(wav_bytes(tone(SR, DURATION)))
    data[20:36] = b"\xff" * 16
    path.write_bytes(bytes(data))


REFUSED = {
    "missing-file": (lambda p: None, ["does not exist", "audio_root"]),
    "folder": (lambda p: p.mkdir(), ["is a folder"]),
    "empty-0-bytes": (lambda p: p.write_bytes(b""), ["empty, 0 bytes"]),
    "header-only-0-frames": (lambda p: sf.write(p, np.zeros(0), SR), ["holds no audio", "0 frames"]),
    "wav-cut-mid-header": (lambda p: p.write_bytes(wav_bytes(tone(SR, 1.0))[:30]), ["damaged or truncated WAV header", "30 bytes"]),
    "wav-garbled-fmt-chunk": (_garbled_fmt, ["damaged or truncated WAV header"]),
    "flac-cut-mid-header": (lambda p: _flac_cut(p, 30), ["damaged or truncated FLAC header"]),
    "flac-cut-mid-stream": (lambda p: _flac_cut(p, 0), ["cut short or corrupt", "48000 frames", "re-download"]),
    "flac-header-claims-2^36-frames": (_flac_claiming_2_36_frames, ["cut short or corrupt", f"{2**36 - 1} frames"]),
    "random-bytes": (lambda p: p.write_bytes(np.random.default_rng(0).bytes(4000)), ["not in an audio format", "convert it to WAV or FLAC"]),
    "text-file": (lambda p: p.write_text("path,label\nclip1.wav,happy\n"), ["text file, not audio", "path,label"]),
    "git-lfs-pointer": (
        lambda p: p.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123abcd\nsize 94250\n"),
        ["Git LFS pointer", "git lfs pull"],
    ),
    "nan-samples": (_nan_wav, ["1600 of 32000 samples are NaN or Inf"]),
    "inf-samples": (lambda p: _nan_wav(p, -np.inf), ["1600 of 32000 samples are NaN or Inf"]),
    "nan-in-one-of-2-channels": (lambda p: _nan_wav(p, channels=2), ["1600 of 64000 samples are NaN or Inf"]),
    "sample-rate-1Hz": (lambda p: sf.write(p, np.zeros(100), 1), ["sample rate 1 Hz", "header is corrupt"]),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_with_the_path_and_the_problem(tmp_path, case):
    make, phrases = REFUSED[case]
    path = tmp_path / "bad clip.wav"
    make(path)
    for call in (lambda: audio.read(path), lambda: audio.load(path, SR, DURATION, 40.0)):
        with pytest.raises(audio.AudioError) as err:
            call()
        message = str(err.value)
        assert message.startswith(f"{path}: ")
        for phrase in phrases:
            assert phrase in message


def test_an_unreadable_file_is_refused_with_the_os_reason(tmp_path, monkeypatch):
    """When libsndfile cannot open a file and Python cannot open it either (permissions; tests
    run as root here, so the OS refusal is simulated), the OS reason is given."""
    path = tmp_path / "locked.wav"
    path.write_bytes(b"\x00" * 100)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(audio, "open", refuse, raising=False)
    with pytest.raises(audio.AudioError, match="cannot be opened \\(Permission denied\\)") as err:
        audio.read(path)
    assert str(err.value).startswith(f"{path}: ")


# --- fuzzing ----------------------------------------------------------------------------------

FORMATS = [("WAV", "PCM_16"), ("WAV", "PCM_U8"), ("WAV", "FLOAT"), ("WAV", "DOUBLE"), ("WAV", "IMA_ADPCM"), ("FLAC", "PCM_16"), ("AIFF", "PCM_24")]
PREFIXES = [b""] + [wav_bytes(np.zeros((4, 2)), subtype=s, fmt=f)[:64] for f, s in FORMATS]


@st.composite
def file_bytes(draw):
    """Arbitrary bytes, or the first bytes of a real WAV/FLAC/AIFF header (some flipped) then
    arbitrary bytes."""
    prefix = bytearray(draw(st.sampled_from(PREFIXES)))
    prefix = prefix[: draw(st.one_of(st.just(len(prefix)), st.integers(0, len(prefix))))]
    for _ in range(draw(st.integers(0, 3)) if prefix else 0):
        prefix[draw(st.integers(0, len(prefix) - 1))] = draw(st.integers(0, 255))
    return bytes(prefix) + draw(st.binary(max_size=3000))


def _load_or_refuse(path) -> str:
    """``loaded`` when :func:`audio.read` takes ``path`` (and then it loads as a valid clip),
    ``refused`` when it raises an AudioError naming the file; anything else fails."""
    try:
        y, rate = audio.read(path)
    except audio.AudioError as err:
        assert str(err).startswith(f"{path}: ")
        return "refused"
    assert y.dtype == np.float32 and y.ndim == 1 and len(y) >= 1
    assert np.isfinite(y).all() and np.abs(y).max() <= 1.0
    assert audio.MIN_RATE <= rate <= audio.MAX_RATE
    assert_clip(audio.load(path, SR, DURATION, 40.0))
    return "loaded"


def test_fuzz_any_bytes_load_or_raise_audio_error(tmp_path):
    """400 files of arbitrary bytes or damaged real headers: each loads as a valid clip or is refused
    with an AudioError. Both happen: intact headers followed by junk load (their frames are all
    there), so a loader that refused everything fails here."""
    outcomes = []

    @settings(max_examples=400, deadline=None)
    @given(data=file_bytes())
    def load_or_refuse(data):
        path = tmp_path / "fuzz.wav"
        path.write_bytes(data)
        outcomes.append(_load_or_refuse(path))

    load_or_refuse()
    loaded = outcomes.count("loaded")
    # about 30 of 400 load (7.5 %); fewer than 5 is some 5 standard deviations away
    assert len(outcomes) >= 200 and loaded >= 5 and outcomes.count("refused") >= 100, f"{loaded} of {len(outcomes)} loaded"


@pytest.mark.parametrize("junk", [0, 3000], ids=["whole", "junk-after"])
@pytest.mark.parametrize("fmt, subtype", FORMATS, ids=[f"{f}-{s}" for f, s in FORMATS])
def test_the_fuzzers_source_files_load_whole_and_with_junk_after_them(tmp_path, fmt, subtype, junk):
    """The files whose headers the any-bytes fuzz starts from, deterministically: each loads, also
    with 3000 random bytes after it, and its samples are the ones written."""
    x = np.random.default_rng(1).uniform(-0.5, 0.5, (SR // 10, 2))
    path = tmp_path / "clip.wav"
    path.write_bytes(wav_bytes(x, subtype=subtype, fmt=fmt) + np.random.default_rng(2).bytes(junk))
    assert _load_or_refuse(path) == "loaded"
    y, rate = audio.read(path)
    assert rate == SR and len(y) >= SR // 10 - 8
    if subtype != "IMA_ADPCM":  # lossy: only the length is checked
        assert len(y) == SR // 10 and np.abs(y - x.mean(axis=1)).max() <= SUBTYPE_STEP[subtype] + 2.0**-22


SUBTYPE_STEP = {"PCM_U8": 2.0**-7, "PCM_16": 2.0**-15, "PCM_24": 2.0**-23, "PCM_32": 2.0**-31, "FLOAT": 0.0, "DOUBLE": 0.0}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    frames=st.integers(1, 4000),
    channels=st.integers(1, 8),
    subtype=st.sampled_from(sorted(SUBTYPE_STEP)),
    rate=st.sampled_from([8000, 11025, 16000, 22050, 32000, 44100, 48000, 88200, 96000]),
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(["noise", "silence", "full-scale"]),
    trim_db=st.sampled_from([0.0, 40.0]),
)
def test_fuzz_any_small_valid_wav_loads_to_the_clip_shape(tmp_path, frames, channels, subtype, rate, seed, kind, trim_db):
    rng = np.random.default_rng(seed)
    x = {
        "noise": rng.uniform(-0.99, 0.99, (frames, channels)),
        "silence": np.zeros((frames, channels)),
        "full-scale": rng.choice([-1.0, 0.99], (frames, channels)),
    }[kind]
    path = tmp_path / "fuzz.wav"
    sf.write(path, x, rate, subtype=subtype)
    y, got_rate = audio.read(path)
    assert got_rate == rate and y.dtype == np.float32 and y.shape == (frames,)
    # one quantisation step (libsndfile may truncate rather than round) plus float32 rounding
    assert np.abs(y - x.mean(axis=1)).max() <= SUBTYPE_STEP[subtype] + 2.0**-22
    assert_clip(audio.load(path, SR, DURATION, trim_db))


# ---- MPEG data whose decoder complains on C stderr (issue 33) ----


def mp3_in_wav(path, y: np.ndarray, junk: bool) -> bytes:
    """Write ``y`` (16 kHz) as MPEG Layer III inside a RIFF/WAVE file (format tag 0x55), encoded by
    libsndfile's own LAME; with ``junk``, 512 foreign bytes in the middle of the MPEG stream, which
    libmpg123 (libsndfile's MP3 decoder) reports as ``Illegal Audio-MPEG-Header`` and resyncs over.
    Returns the MPEG stream."""
    import struct

    buffer = io.BytesIO()
    sf.write(buffer, y, SR, format="MP3", subtype="MPEG_LAYER_III")
    stream = buffer.getvalue()
    if junk:
        stream = stream[: len(stream) // 2] + bytes(range(256)) * 2 + stream[len(stream) // 2 :]
    fmt = struct.pack("<HHIIHHH", 0x55, 1, SR, 4000, 1, 0, 12) + struct.pack("<HIHHH", 1, 2, 417, 1, 1393)  # MPEGLAYER3WAVEFORMAT
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(stream)) + stream
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return stream


def test_mp3_inside_a_wav_reads_and_a_clean_one_says_nothing(tmp_path, capfd):
    y = tone(SR, 2.0)
    path = tmp_path / "clean.wav"
    mp3_in_wav(path, y, junk=False)
    assert sf.info(str(path)).format == "WAV" and sf.info(str(path)).subtype == "MPEG_LAYER_III"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean stream: no DecoderWarning
        z, rate = audio.read(path)
    assert rate == SR and abs(len(z) - len(y)) < SR // 10
    assert capfd.readouterr().err == ""


def test_an_mpeg_stream_with_junk_is_read_quietly_and_named_once(tmp_path, capfd):
    from ensemble.inputs import decoder_noise

    path = tmp_path / "junk.wav"
    mp3_in_wav(path, tone(SR, 2.0), junk=True)
    sf.read(str(path))  # libsndfile alone: libmpg123's notes go to file descriptor 2, past Python's sys.stderr
    raw = capfd.readouterr().err
    assert "Illegal Audio-MPEG-Header" in raw and "Trying to resync" in raw, raw
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, rate = audio.read(path)
        again, _ = audio.read(path)  # listed once per file, however often it is read
        y = audio.load(path, SR, DURATION)
    assert capfd.readouterr().err == ""  # nothing reached the log
    assert_clip(y)
    assert rate == SR and len(first) == len(again) > 0 and np.isfinite(first).all()
    named = [w for w in caught if issubclass(w.category, decoder_noise.DecoderWarning)]
    assert len(named) == 1, [str(w.message) for w in caught]
    message = str(named[0].message)
    assert message.startswith(str(path)) and "line(s)" in message and "s decoded of the" in message and "Re-encode" in message


def test_only_mpeg_files_are_captured():
    from ensemble.inputs import decoder_noise
    from tests.conftest import ravdess_clip

    assert not decoder_noise.is_mpeg(ravdess_clip(1, 1))  # FLAC
    assert not decoder_noise.is_mpeg("/nonexistent/file.wav")
