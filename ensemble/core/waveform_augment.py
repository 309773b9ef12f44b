"""The waveform augmentation list ``[augment].waveform``: audiomentations transforms, each
``{name = "ClassName", ...params}``, applied in order to a fixed-length clip before rendering.

Only transforms on :data:`ALLOWED` are accepted: ones that keep the clip's length and its time
order and need no files outside the recipe (no background-noise or impulse-response folders). A few
others are refused by name with the reason (:data:`REFUSED`). Parameters are the audiomentations
class's own keyword arguments (omitted ones take its defaults), checked by :func:`problem`.

Before the list form, ``[augment]`` described one fixed pipeline with twelve flat keys
(:data:`FLAT_DEFAULTS`); :func:`from_flat` translates them into the list (``ensemble.core.recipe.from_dict``
does so for old recipes and stored run configurations), and :func:`to_flat` reads them back from
a list of that form (``AugmentConfig.waveform_key`` hashes them, so caches and augmented copies made
before the list form stay valid). :data:`DEFAULT` is the old default pipeline.

This module imports neither torch nor (until a list is checked or built) audiomentations, so the
recipe can import it cheaply.
"""

from __future__ import annotations

import inspect

ALLOWED = (
    "TimeStretch",
    "PitchShift",
    "Shift",
    "Gain",
    "AddGaussianSNR",
    "AddGaussianNoise",
    "AddColorNoise",
    "GainTransition",
    "LowPassFilter",
    "HighPassFilter",
    "BandPassFilter",
    "BandStopFilter",
    "PeakingFilter",
    "SevenBandParametricEQ",
    "PolarityInversion",
    "TimeMask",
)
"""audiomentations transforms ``[augment].waveform`` may list."""

_LENGTH = "it changes the clip's length, and every clip is rendered at [features].duration"
REFUSED = {
    "Reverse": "it reverses time, which changes what speech means and how a sound starts and decays",
    "Padding": _LENGTH,
    "Trim": _LENGTH,
    "AdjustDuration": _LENGTH,
    "RepeatPart": "it repeats a part of the clip, which changes its timing, " + _LENGTH,
    "Lambda": "it runs arbitrary code, which a recipe cannot check",
    "AddBackgroundNoise": "it reads sound files from outside the recipe",
    "AddShortNoises": "it reads sound files from outside the recipe",
    "ApplyImpulseResponse": "it reads impulse-response files from outside the recipe",
}
"""Transforms refused with the reason."""

FIXED = {"TimeStretch": {"leave_length_unchanged": True}}
"""Parameters a transform may only take with this value: a stretched clip keeps its length."""

FLAT_DEFAULTS = {
    "noise_p": 0.5,
    "snr_min_db": 15.0,
    "snr_max_db": 40.0,
    "shift_p": 0.5,
    "shift_max": 0.1,
    "gain_p": 0.5,
    "gain_db": 6.0,
    "stretch_p": 0.5,
    "stretch_min": 0.9,
    "stretch_max": 1.1,
    "pitch_p": 0.5,
    "pitch_semitones": 2.0,
}
"""The old flat ``[augment]`` waveform keys and their defaults (what :func:`from_flat` fills in)."""


def from_flat(flat: dict[str, float]) -> list[dict]:
    """The list the old flat keys describe, missing keys at :data:`FLAT_DEFAULTS`: time stretch
    (signalsmith, length kept) ``stretch_min``-``stretch_max`` with ``stretch_p``, pitch shift
    +-``pitch_semitones`` with ``pitch_p``, shift by up to +-``shift_max`` of the clip without
    rollover with ``shift_p``, gain +-``gain_db`` dB with ``gain_p``, then Gaussian noise at an SNR
    of ``snr_min_db``-``snr_max_db`` dB with ``noise_p``.

    Args:
        flat: some of the keys of :data:`FLAT_DEFAULTS` -> numbers (the caller checks the keys and types).
    """
    v = {**FLAT_DEFAULTS, **flat}
    return [
        {"name": "TimeStretch", "p": v["stretch_p"], "min_rate": v["stretch_min"], "max_rate": v["stretch_max"], "leave_length_unchanged": True},
        {"name": "PitchShift", "p": v["pitch_p"], "min_semitones": -v["pitch_semitones"], "max_semitones": v["pitch_semitones"]},
        {"name": "Shift", "p": v["shift_p"], "min_shift": -v["shift_max"], "max_shift": v["shift_max"], "shift_unit": "fraction", "rollover": False},
        {"name": "Gain", "p": v["gain_p"], "min_gain_db": -v["gain_db"], "max_gain_db": v["gain_db"]},
        {"name": "AddGaussianSNR", "p": v["noise_p"], "min_snr_db": v["snr_min_db"], "max_snr_db": v["snr_max_db"]},
    ]


DEFAULT = from_flat({})
"""The default ``[augment].waveform``: the old default pipeline, each transform with p = 0.5."""

# old flat key -> (position in from_flat's list, the parameter that holds its value)
_FLAT_SOURCE = {
    "stretch_p": (0, "p"),
    "stretch_min": (0, "min_rate"),
    "stretch_max": (0, "max_rate"),
    "pitch_p": (1, "p"),
    "pitch_semitones": (1, "max_semitones"),
    "shift_p": (2, "p"),
    "shift_max": (2, "max_shift"),
    "gain_p": (3, "p"),
    "gain_db": (3, "max_gain_db"),
    "noise_p": (4, "p"),
    "snr_min_db": (4, "min_snr_db"),
    "snr_max_db": (4, "max_snr_db"),
}


def to_flat(waveform: list) -> dict[str, float] | None:
    """The old flat keys (all of :data:`FLAT_DEFAULTS`, as floats) whose :func:`from_flat` list equals
    ``waveform``, or None when no flat keys describe it (other transforms, order or parameters)."""
    try:
        flat = {key: float(waveform[i][param]) for key, (i, param) in _FLAT_SOURCE.items()}
    except (IndexError, KeyError, TypeError, ValueError):
        return None
    return flat if from_flat(flat) == waveform else None


def _build(spec: dict):
    """The audiomentations transform of one entry ``{"name": ..., **params}`` (checked by :func:`problem`)."""
    import audiomentations

    params = dict(spec)
    return getattr(audiomentations, params.pop("name"))(**params)


def transforms(waveform: list[dict]) -> list:
    """The audiomentations transforms of a checked ``[augment].waveform`` list, in order."""
    return [_build(spec) for spec in waveform]


def problem(waveform: list) -> str | None:
    """What is wrong with an ``[augment].waveform`` list, or None when every entry is fine.

    Each entry must be a table with a ``name`` on :data:`ALLOWED`, parameters that the
    audiomentations class takes (its keyword arguments), the values :data:`FIXED` requires, and
    values the class accepts (it is built once to see: a range like min > max is refused there).
    The message names the entry (``[augment].waveform[i]``) and what is allowed.
    """
    import audiomentations

    for i, spec in enumerate(waveform):
        where = f"[augment].waveform[{i}]"
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            return f"{where} = {spec!r}: each entry is a table naming an audiomentations transform, such as {DEFAULT[-1]}"
        name = spec["name"]
        if name in REFUSED:
            return f"{where}: {name} is refused for waveform augmentation: {REFUSED[name]}. Use one of {ALLOWED}"
        if name not in ALLOWED:
            return f"{where}: {name!r} is not on the audio-safe waveform allowlist; use one of {ALLOWED}"
        accepted = [
            p.name
            for p in inspect.signature(getattr(audiomentations, name)).parameters.values()
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        ]
        unknown = sorted(set(spec) - {"name", *accepted})
        if unknown:
            return f"{where}: {name} has no parameter(s) {unknown}; its parameters are {accepted}"
        wrong = {key: value for key, value in FIXED.get(name, {}).items() if spec.get(key, value) != value}
        if wrong:
            return f"{where}: {name} needs {', '.join(f'{k} = {v!r}' for k, v in wrong.items())} (or leave it out): every clip keeps its length"
        try:
            _build(spec)
        except (ValueError, TypeError, AssertionError) as err:
            return f"{where}: {name} refuses these values ({type(err).__name__}: {err or 'a value is out of range'}); see audiomentations' {name}"
    return None
