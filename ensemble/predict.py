"""Predict new audio files with a recipe's trained ensemble.

The ensemble is what ``ens blend`` blends: every member (:func:`ensemble.store.runs.members`) whose
fold runs are all finished (``metrics.json`` and ``model.safetensors``) contributes the mean of its
fold models' probabilities (over every seed, as in the blend), weighted by
``runs/<recipe>/blend/weights.json`` when ``ens blend`` wrote one (equally when there is none, or
when the blend method is not a weighted mean). Each member renders and predicts as its runs were
trained (their ``config.json``): its own ``[features]`` (clip length, channels, ...) and its own
time-shift TTA (``[train].tta_shifts``), the TTA its OOF and so the blend weights used.

A file goes through the training pipeline: :func:`ensemble.inputs.audio.load_trimmed` (read, resample to
``[features].sample_rate``, trim silence: the first steps of :func:`ensemble.inputs.audio.load`), then
:func:`ensemble.inputs.features.model_inputs` with the member's ``[features]``
(:func:`ensemble.inputs.audio.fix_length` to its ``duration``, :func:`ensemble.inputs.features.render_batch`,
float16 rounding: the images the feature cache stores), and the backbone's input normalisation
(:class:`ensemble.members.models.Normalize`, inside the model). A file whose trimmed audio fits in one
window (by default: is no longer than the shortest member duration) is thus one image identical
to its cached training image. A longer file is cut into windows of ``window`` seconds every
``hop`` seconds (the last window ends at the end of the trimmed audio); each window is padded to
each member's duration like a short clip, and the file's probabilities are the mean over its windows.
The windows of consecutive files are rendered and predicted together, up to :data:`GROUP_CLIPS` at a
time, so a folder of short clips goes through the models in full batches.

Each member is loaded and predicts as its kind says (:mod:`ensemble.members.kinds`). The image members'
fold models run in torch, or as the one graph per member ``ens export`` wrote, in ONNX Runtime or
OpenVINO (``load_ensemble(engine=...)``, :mod:`ensemble.deploy.engines`); the rest is the same code.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import pandas as pd
import torch

from .core import atomic
from .core.entry import Entry
from .core.errors import EnsError, EnsWarning, Param
from .core.recipe import FeatureConfig, Recipe
from .deploy.engines import RUNTIMES, Exported, check_format
from .inputs import audio, features, plots
from .inputs.features import model_inputs
from .members import kinds, loop, runtime
from .members.kind import Loaded
from .speaker import speakers
from .store import runs
from .store.split import SkippedClipsWarning, check_on_error

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg")
GROUP_CLIPS = 256
"""Windows of files :func:`predict` renders and predicts together (several files to one batch; bounds the images in memory)."""


class PredictError(EnsError, ValueError):
    """No trained ensemble, a path that is not audio, or a window/hop that does not fit the recipe."""


class SpeakerNormWarning(EnsWarning):
    """Speaker-normalised members normalised a recording with the training population's statistics (no other recording of its speaker was given)."""


@dataclass
class Ensemble:
    """A recipe's trained ensemble.

    Attributes:
        recipe: the recipe whose blend it is.
        classes: class names in output-column order (from the runs' ``config.json``).
        members: the finished members with a positive weight (:class:`ensemble.store.runs.Member`).
        weights: member name -> weight; the weights sum to 1.
        loaded: member name -> the member loaded by its kind (:class:`ensemble.members.kind.Loaded`: the
            recipe its runs were trained with, its fold models, its speaker statistics).
        weights_from: where the weights come from: ``runs/<recipe>/blend/weights.json`` and its
            method, or equal weights and why.
        device: where the models run.
        engine: ``torch``, or ``onnx`` / ``openvino``: then an image member's ``models`` is its one
            exported graph (:class:`ensemble.deploy.engines.ExportedModel`), which gives the mean of its
            fold models' activations itself.
    """

    recipe: Recipe
    classes: list[str]
    members: list[runs.Member]
    weights: dict[str, float]
    loaded: dict[str, Loaded]
    weights_from: str
    device: torch.device
    engine: str = "torch"

    @property
    def models(self) -> dict[str, list]:
        """Member name -> its fold models of every seed (seeds in entry order, folds in order), or its one exported graph."""
        return {name: member.models for name, member in self.loaded.items()}

    @property
    def trained_with(self) -> dict[str, Recipe]:
        """Member name -> the recipe its runs were trained with (their ``config.json``): its
        ``[features]`` render the member's input and its ``[train].tta_shifts`` are its
        test-time augmentation, as in its OOF."""
        return {name: member.made_with for name, member in self.loaded.items()}

    @property
    def populations(self) -> dict[str, speakers.Statistics]:
        """Member name -> the training population's statistics, for each member trained with
        ``[speakers].norm = "speaker"`` (its runs' ``speaker_population.npz``)."""
        return {name: member.population for name, member in self.loaded.items() if member.population is not None}

    @property
    def sample_rate(self) -> int:
        """The sample rate in Hz audio is read at: the first member's. A member trained at another
        rate (an AudioSet backbone's frontend, e.g. EfficientAT's 32 kHz) gets the clips resampled
        to its own rate (:meth:`predict_waveforms`)."""
        return self.trained_with[self.members[0].name].features.sample_rate

    def _at_rate(self, clips: Sequence[np.ndarray] | None, rate: int, done: dict) -> Sequence[np.ndarray] | None:
        """``clips`` (at :attr:`sample_rate`) resampled to ``rate`` Hz with soxr (``librosa.resample``, as
        :mod:`ensemble.inputs.audio` resamples), once per rate (``done``)."""
        if clips is None or rate == self.sample_rate:
            return clips
        if rate not in done:
            done[rate] = [librosa.resample(np.asarray(y, dtype=np.float32), orig_sr=self.sample_rate, target_sr=rate) for y in clips]
        return done[rate]

    @property
    def trim_db(self) -> float:
        """The silence-trimming threshold in dB every member reads audio with."""
        return self.trained_with[self.members[0].name].features.trim_db

    @property
    def duration(self) -> float | None:
        """The shortest clip length in seconds a member was trained on: the longest window
        (None when every member takes a whole recording, as functionals members do)."""
        durations = [self.loaded[m.name].duration for m in self.members]
        return min((d for d in durations if d is not None), default=None)

    def predict_waveforms(
        self, clips: Sequence[np.ndarray], batch_size: int = loop.PREDICT_BATCH, speaker_clips: Sequence[np.ndarray] | None = None
    ) -> np.ndarray:
        """Blended probabilities of waveforms, on ``[runtime].threads`` torch threads (restored after).

        Args:
            clips: each ``(samples,)`` at :attr:`sample_rate` Hz, silence trimmed; each member
                gets it resampled to its own ``[features].sample_rate`` when that differs and
                predicts it as its kind does (:meth:`ensemble.members.kind.Loaded.predict`: an image member
                centre-crops or pads it to its ``[features].duration`` and renders it with its own
                ``[features]``, once per distinct feature setting; a functionals member's pipelines
                predict the clips' functionals, :func:`ensemble.members.tabular.predict`).
            speaker_clips: for members trained with ``[speakers].norm = "speaker"``: waveforms of
                the same speaker as ``clips`` (they may include ``clips``) whose statistics
                normalise them; None normalises with the training population's
                (:func:`ensemble.speaker.speaker_groups.normalise_with`).

        Returns:
            float64 ``(len(clips), classes)``: sum over members of weight x the member's
            probabilities (the mean of its models' softmax, rows summing to 1, or for a multilabel
            task their sigmoids), each with the member's time-shift TTA (:func:`ensemble.members.loop.predict`,
            batches of ``batch_size``).
        """
        total = np.zeros((len(clips), len(self.classes)))
        shared: dict = {}
        resampled: dict[int, list] = {}
        resampled_speaker: dict[int, list] = {}
        with runtime.torch_threads(self.recipe.runtime.threads):
            for member in self.members:
                loaded = self.loaded[member.name]
                rate = loaded.made_with.features.sample_rate
                own, own_speaker = self._at_rate(clips, rate, resampled), self._at_rate(speaker_clips, rate, resampled_speaker)
                total += self.weights[member.name] * loaded.predict(own, own_speaker, shared, batch_size)
        return total


def _trained(recipe: Recipe, member: runs.Member) -> bool:
    """Whether every fold of every seed of ``member`` is finished and holds what its kind loads
    (a backbone's ``model.safetensors``, a functionals member's ``model.joblib``)."""
    if member.unfinished() is not None:
        return False
    kind = kinds.of(recipe, member.entries[0])
    return all(kind.trained(run) for e in member.entries for run in member.runs(e))


def _member_weights(recipe: Recipe) -> tuple[list[runs.Member], dict[str, float], str]:
    """The members to load, member name -> weight (> 0, summing to 1), and where the weights come from.

    ``weights.json`` is ``{"method": ..., "members": [...], "weights": {member: w}}``; a method
    that is not a weighted mean (``"weights": null``) gives equal weights over its ``members``
    (or, without that list, over the finished members), and the returned description says so.
    Without ``weights.json`` every finished member has an equal weight.

    Raises:
        PredictError: nothing is trained; ``weights.json`` is unreadable, gives no positive weight,
            or weights a member whose folds (of every seed) are not all finished or that the
            recipe does not have.
    """
    path = runs.blend_dir(recipe) / runs.WEIGHTS
    known = {m.name: m for m in runs.members(recipe)}
    done = [name for name, m in known.items() if _trained(recipe, m)]
    if not path.is_file():
        if not done:
            raise PredictError(
                f"no member of recipe {recipe.name!r} has all {recipe.folds.n_splits} folds finished under {runs.root(recipe)} "
                f"(model.safetensors + metrics.json); run `ens train --recipe ...` first."
            )
        return [known[n] for n in done], {n: 1.0 / len(done) for n in done}, "equal weights (no blend/weights.json)"
    try:
        blend = json.loads(path.read_text())
        method = blend["method"]
        if blend["weights"] is None:
            weights = {b: 1.0 for b in blend.get("members", done)}
            source = f"equal weights over the members of {path}: its method {method!r} is not a weighted mean"
        else:
            weights = {b: float(w) for b, w in blend["weights"].items() if float(w) > 0}
            source = f"{path} ({method})"
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise PredictError(f"{path} is not a blend's weights file ({err!r}); re-run `ens blend` or delete it for equal weights.") from err
    unknown = [b for b in weights if b not in known]
    if unknown:
        rounds = " (pseudo-labelling students: set [pseudo].rounds, or pass --pseudo-label)" if any(Entry.parse(b).round for b in unknown) else ""
        raise PredictError(f"{path} weights {unknown}, which are not members of recipe {recipe.name!r} ({list(known)}){rounds}; re-run `ens blend`.")
    unfinished = [b for b in weights if b not in done]
    if unfinished:
        entries = [entry for b in unfinished for entry in known[b].entries]
        raise PredictError(
            f"{path} weights {unfinished}, whose {recipe.folds.n_splits} folds are not all finished under {runs.root(recipe)}; "
            f"train them (`ens train --backbone {','.join(entries)}`) or re-run `ens blend`."
        )
    if not weights:
        raise PredictError(f"{path} gives no member a positive weight; re-run `ens blend`.")
    total = sum(weights.values())
    return [known[b] for b in weights], {b: w / total for b, w in weights.items()}, source


def load_ensemble(recipe: Recipe, device: str = "cpu", engine: str = "torch", export_dir: str | os.PathLike | None = None) -> Ensemble:
    """Load every member of the recipe's ensemble (see the module docstring for which members), each
    by its kind (:meth:`ensemble.members.kind.Kind.load`, :func:`ensemble.members.kinds.of`).

    With ``engine="torch"`` an image member's models are :func:`ensemble.members.models.build` of the recipe
    its runs were trained with (their ``config.json``) with ``pretrained=False``, and each run's
    ``model.safetensors`` loaded strictly. With ``onnx`` or ``openvino`` an image member is the one
    graph of its models that ``ens export`` wrote (:class:`ensemble.deploy.engines.ExportedModel`, called
    like a torch model), run on the CPU by ONNX Runtime or OpenVINO; rendering, speaker
    normalisation, TTA, functionals members and blending are the same. ``[runtime].threads`` sets
    each runtime's CPU threads (torch's while :meth:`Ensemble.predict_waveforms` runs).

    Args:
        device: ``cpu``, ``cuda`` or ``auto`` (:func:`ensemble.members.runtime.resolve_device`); ``cpu`` for exported graphs.
        engine: ``torch``, ``onnx`` or ``openvino`` (``ens predict --runtime``).
        export_dir: the export's folder (default ``runs/<recipe>/export/<format>/``).

    Raises:
        PredictError: nothing is trained (names the runs folder); members read audio at other
            trimming thresholds; a run was trained with other classes (names and order) than the
            recipe's ``[competition].classes`` (when it lists them) or than the other runs.
        RunError: a run's ``config.json`` cannot be read. ImageMemberError, TabularError: a run's
            weights or pipeline do not load. ExportError: an unknown ``engine``, its package
            missing, or no export / a stale one for it.
    """
    check_format(engine, RUNTIMES)
    members, weights, source = _member_weights(recipe)
    torch_device = runtime.resolve_device(device)
    if engine != "torch" and torch_device.type != "cpu":
        raise PredictError(
            "exported graphs run on the CPU (",
            Param("engine", engine),
            "); predict with ",
            Param("device", "cpu"),
            ", or ",
            Param("engine", "torch"),
            f" on {torch_device}.",
        )
    exported = None if engine == "torch" else Exported(recipe, engine, export_dir, recipe.runtime.threads)
    classes, loaded = None, {}
    for member in members:
        trained, made_with = [], None
        for entry, fold in itertools.product(member.entries, range(member.n_splits)):
            run = member.runs(entry)[fold]
            fix = member.fix(entry, fold)
            config = runs.read_config(run, fix)
            if made_with is None:
                made_with = dataclasses.replace(runs.stored_recipe(run, fix), name=recipe.name)
                made_with.train.pretrained = False
            if classes is None:
                classes = list(recipe.competition.classes) or config["classes"]  # the recipe's, when it lists them
            if config["classes"] != classes:
                raise PredictError(
                    f"{run} was trained with classes {config['classes']}, "
                    + (f"{recipe.name!r} has [competition].classes = {classes}" if recipe.competition.classes else f"other runs of the ensemble with {classes}")
                    + f" (names and order); predict with the recipe it was trained with, or {fix}."
                )
            trained.append((entry, fold, run))
        kind = kinds.of(recipe, member.entries[0])
        loaded[member.name] = kind.load(recipe, member, made_with, trained, classes, torch_device, exported)
    reading = {m.made_with.features.trim_db for m in loaded.values()}
    if len(reading) > 1:
        raise PredictError(
            f"the members of {recipe.name!r} trim silence at different [features].trim_db {sorted(reading)}; "
            "blend members that read audio alike to predict new files."
        )
    return Ensemble(recipe, classes, members, weights, loaded, source, torch_device, engine)


def audio_files(paths: list[str | os.PathLike]) -> list[Path]:
    """Expand ``paths``: files as given, folders searched recursively for ``AUDIO_EXTENSIONS`` (sorted).

    Raises:
        PredictError: a path does not exist, or a folder holds no audio file.
    """
    found = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            inside = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS)
            if not inside:
                raise PredictError(
                    f"{p}: folder holds no audio file ({', '.join(AUDIO_EXTENSIONS)}, searched recursively); "
                    f"give the folder that holds the clips, or the audio files themselves."
                )
            found += inside
        else:
            raise PredictError(f"{p}: no such file or folder; give audio files or folders of them.")
    return found


def windows(n: int, window: int, hop: int) -> list[tuple[int, int]]:
    """``(start, end)`` sample spans covering ``n`` samples: ``[(0, n)]`` when ``n <= window``, else
    windows of ``window`` samples every ``hop`` samples plus, when the last one falls short of the
    end, one more ending at ``n``."""
    if n <= window:
        return [(0, n)]
    spans = [(s, s + window) for s in range(0, n - window + 1, hop)]
    if spans[-1][1] < n:
        spans.append((n - window, n))
    return spans


@dataclass
class FilePrediction:
    """One file's prediction.

    Attributes:
        path: the audio file.
        proba: float64 ``(classes,)``, the mean of ``window_proba`` over windows.
        spans: float64 ``(windows, 2)`` start and end of each window in seconds of the file
            (trimmed silence counted, so times match the original recording).
        window_proba: float64 ``(windows, classes)``.
    """

    path: Path
    proba: np.ndarray
    spans: np.ndarray
    window_proba: np.ndarray


def _samples(value: float | None, default: float, name: str, rate: int) -> int:
    """``value`` (or ``default``) seconds as a whole number of samples at ``rate`` Hz, at least one."""
    seconds = default if value is None else value
    n = int(round(seconds * rate))
    if n < 1:
        raise PredictError(Param(name, seconds), f": give a positive number of seconds (at least one sample, 1/{rate} s).")
    return n


def predict(
    ensemble: Ensemble,
    paths: list[str | os.PathLike],
    window: float | None = None,
    hop: float | None = None,
    on_error: str = "fail",
    speaker: list[str | os.PathLike] | None = None,
    same_speaker: bool = False,
) -> list[FilePrediction]:
    """Predict audio files (see the module docstring for the preprocessing and windowing).

    Members trained with ``[speakers].norm = "speaker"`` normalise each file's images with one
    speaker's statistics: those of the recordings ``speaker`` (audio files or folders of the same
    speaker as every file of ``paths``), or with ``same_speaker`` those of every window of the
    files given together (one speaker); otherwise the training population's, with a
    :class:`SpeakerNormWarning` that says so.

    Args:
        paths: audio files or folders (:func:`audio_files`).
        window: seconds per window, at most ``[features].duration`` (the default).
        hop: seconds between window starts, in (0, window]; default half the window.
        on_error: ``fail`` (default): the first file that cannot be read as audio stops the run;
            ``skip``: such files are left out and listed in one
            :class:`ensemble.SkippedClipsWarning` (file and problem each).
        speaker: other recordings of the files' speaker, for speaker normalisation.
        same_speaker: the files given are one speaker; their windows give its statistics.

    Returns:
        one :class:`FilePrediction` per file that was read, in :func:`audio_files` order.

    Raises:
        PredictError: a bad path, a window longer than ``duration`` or a hop outside (0, window],
            ``speaker`` together with ``same_speaker``, or, under ``skip``, no file that can be read.
        AudioError: under ``fail``, a file cannot be read as audio.
        ValueError: ``on_error`` is not ``fail`` or ``skip``.
    """
    check_on_error(on_error)
    rate, duration = ensemble.sample_rate, ensemble.duration
    whole = duration is None and window is None  # functionals members only: each recording whole
    window_n = sys.maxsize if whole else _samples(window, duration, "window", rate)
    if duration is not None and window_n > int(round(duration * rate)):
        raise PredictError(
            Param("window", window),
            f" s is longer than {duration} s, the shortest clip length ([features].duration) the models were "
            f"trained on (each window would be cropped); give at most {duration}.",
        )
    hop_n = window_n if whole else _samples(hop, window_n / 2 / rate, "hop", rate)
    if hop_n > window_n:
        raise PredictError(Param("hop", hop), f" s is longer than the window ({window_n / rate} s): audio between windows would be skipped.")
    if speaker is not None and same_speaker:
        raise PredictError(
            "give either ",
            Param("speaker", shown=""),
            " (other recordings of the speaker) or ",
            Param("same_speaker", True),
            " (the files are one speaker), not both.",
        )
    loaded, skipped = [], {}
    for path in audio_files(paths):
        try:
            y, start = audio.load_trimmed(path, rate, ensemble.trim_db)
        except audio.AudioError as err:
            if on_error == "fail":
                raise
            skipped[path] = str(err)
            continue
        spans = windows(len(y), window_n, hop_n)
        loaded.append((path, start, spans, [y[a:b] for a, b in spans]))
    reference = None
    if speaker is not None:
        reference = [audio.load_trimmed(path, rate, ensemble.trim_db)[0] for path in audio_files(speaker)]
    elif same_speaker:
        reference = [clip for *_, clips in loaded for clip in clips]
    if ensemble.populations and reference is None and loaded:
        warnings.warn(
            SpeakerNormWarning(
                f"members {sorted(ensemble.populations)} were trained on speaker-normalised images; with no other recording of the speaker (",
                Param("speaker", shown="DIR"),
                ") and no ",
                Param("same_speaker", True),
                ", each file is normalised with the training population's statistics.",
            ),
            stacklevel=2,
        )
    results = []
    for group in _groups(loaded, GROUP_CLIPS):  # files predicted together, for batches of many clips
        proba = ensemble.predict_waveforms([clip for *_, clips in group for clip in clips], speaker_clips=reference)
        ends = np.cumsum([len(clips) for *_, clips in group])[:-1]
        for (path, start, spans, _), rows in zip(group, np.split(proba, ends)):
            seconds = (np.array(spans, dtype=np.float64) + start) / rate
            results.append(FilePrediction(path, rows.mean(axis=0), seconds, rows))
    if skipped and not results:
        raise PredictError(audio.error_list(skipped, "no file left to predict; fix or replace them"))
    if skipped:
        warnings.warn(audio.error_list(skipped, "skipped: they have no prediction"), SkippedClipsWarning, stacklevel=2)
    return results


def _groups(loaded: list[tuple], size: int) -> list[list[tuple]]:
    """Consecutive files of ``loaded`` (``(path, start, spans, clips)`` each) in groups of at most
    ``size`` clips (windows), a file with more in a group of its own: each group is rendered and
    predicted in one :meth:`Ensemble.predict_waveforms` call."""
    groups: list[list[tuple]] = []
    count = 0
    for item in loaded:
        if not groups or count + len(item[3]) > size:
            groups.append([])
            count = 0
        groups[-1].append(item)
        count += len(item[3])
    return groups


def table(predictions: list[FilePrediction], classes: list[str], timeline: bool = False) -> pd.DataFrame:
    """Predictions as a table: ``path`` and one probability column per class, a row per file.

    With ``timeline``, ``start_s, end_s`` columns follow ``path``: each file's row (empty start and
    end) is followed by one row per window.
    """
    rows = []
    for p in predictions:
        rows.append({"path": str(p.path), **({"start_s": np.nan, "end_s": np.nan} if timeline else {}), **dict(zip(classes, p.proba))})
        if timeline:
            rows += [{"path": str(p.path), "start_s": a, "end_s": b, **dict(zip(classes, w))} for (a, b), w in zip(p.spans, p.window_proba)]
    return pd.DataFrame(rows, columns=["path", *(["start_s", "end_s"] if timeline else []), *classes])


def save_image(path: str | os.PathLike, config: FeatureConfig, out: str | os.PathLike) -> Path:
    """Render ``path``'s feature image and write it as a PNG (matplotlib, Agg) atomically to ``out``.

    One panel per ``config.channels`` entry with time in seconds (:func:`ensemble.inputs.plots.clip_figure`:
    log-Mel and log-STFT in dB under the clip peak, chroma 0-1 with pitch-class ticks, MFCC scaled
    0-1). A file that fits in ``duration`` is drawn as the model's input
    (:func:`ensemble.inputs.features.model_inputs`: trimmed and centre-padded); a longer one whole
    (trimmed, :func:`ensemble.inputs.features.render_batch`), on one time axis.

    Raises:
        AudioError: the file cannot be read as audio.
    """
    y, start = audio.load_trimmed(path, config.sample_rate, config.trim_db)
    fits = len(y) <= features.samples(config)
    image = (model_inputs([y], config) if fits else features.render_batch(y[None], config))[0]
    how = f"trimmed ({start / config.sample_rate:.2f}-{(start + len(y)) / config.sample_rate:.2f} s of the file), " + (
        f"centre-padded to {config.duration} s" if fits else "whole"
    )
    fig = plots.clip_figure(image, config, f"{Path(path).name}\n{how}")
    out = Path(out)
    with atomic.atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100)
    return out


def image_names(paths: list[Path]) -> list[str]:
    """PNG file names for ``paths``: ``<stem>.png``, with ``-2``, ``-3``... for repeated stems."""
    names: list[str] = []
    for p in paths:
        name, k = f"{p.stem}.png", 1
        while name in names:
            k += 1
            name = f"{p.stem}-{k}.png"
        names.append(name)
    return names
