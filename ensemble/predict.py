"""Predict new audio files with a recipe's trained ensemble.

The ensemble is what ``ens blend`` blends: every backbone whose ``[folds].n_splits`` fold runs are
finished (``runs/<recipe>/<backbone>/fold<K>/model.safetensors`` + ``metrics.json``) contributes
the mean of its fold models' probabilities, weighted by ``runs/<recipe>/blend/weights.json`` when
``ens blend`` wrote one (equally when there is none, or when the blend method is not a weighted mean).
Entries ``name@S`` of one timm model are one member named ``name`` (:meth:`Recipe.members`), the
mean over the fold models of all its seeds, as in the blend. Each model's probabilities use the
time-shift TTA of the recipe's ``[train].tta_shifts`` (:func:`ensemble.train.predict`), which
must be the TTA its runs were made with.

A file goes through the training pipeline: :func:`ensemble.audio.load_trimmed` (read, resample to
``[features].sample_rate``, trim silence: the first steps of :func:`ensemble.audio.load`), then
:func:`ensemble.features.model_inputs` (:func:`ensemble.audio.fix_length` to ``[features].duration``,
:func:`ensemble.features.render_batch`, float16 rounding: the images the feature cache stores),
and the backbone's input normalisation
(:class:`ensemble.train.Normalize`, inside the model). A file whose trimmed audio fits in one
window (by default: is no longer than ``duration``) is thus one image identical to its cached
training image. A longer file is cut into windows of ``window`` seconds every ``hop`` seconds
(the last window ends at the end of the trimmed audio); each window is padded to ``duration``
like a short clip, and the file's probabilities are the mean over its windows.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from . import atomic, audio, features, plots, train
from .errors import EnsError
from .features import model_inputs
from .recipe import FeatureConfig, Recipe, from_dict

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg")


class PredictError(EnsError, ValueError):
    """No trained ensemble, a path that is not audio, or a window/hop that does not fit the recipe."""


@dataclass
class Member:
    """One backbone of the ensemble: its blend weight, its fold models for every seed (eval mode,
    on the device; seeds in ``backbones`` order, folds in order) and its seeds."""

    backbone: str
    weight: float
    models: list[nn.Module]
    seeds: list[int]


@dataclass
class Ensemble:
    """A recipe's trained ensemble.

    Attributes:
        recipe: the recipe; its ``features`` are how every run of the ensemble was trained.
        classes: class names in output-column order (from the runs' ``config.json``).
        members: backbones with weights summing to 1.
        weights_from: where the weights come from: ``runs/<recipe>/blend/weights.json`` and its
            method, or equal weights and why.
        device: where the models run.
    """

    recipe: Recipe
    classes: list[str]
    members: list[Member]
    weights_from: str
    device: torch.device

    def predict_images(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Blended probabilities of rendered images.

        Args:
            images: ``(n, channels, height, frames)`` in [0, 1] (float16 or float32).

        Returns:
            float64 ``(n, classes)``: sum over members of weight x the mean of its models' softmax
            (rows sum to 1), or for a multilabel recipe their sigmoids, each with the recipe's
            time-shift TTA (:func:`ensemble.train.predict`, batches of ``batch_size``).
        """
        total = np.zeros((len(images), len(self.classes)))
        multilabel = self.recipe.competition.task == "multilabel"
        shifts, precision = self.recipe.train.tta_shifts, train.precision_on(self.recipe.train, self.device)
        for member in self.members:
            probas = [
                train.predict(model, images, self.device, batch_size, multilabel=multilabel, shifts=shifts, precision=precision) for model in member.models
            ]
            total += member.weight * np.mean(probas, axis=0)
        return total


def finished_backbones(recipe: Recipe) -> list[str]:
    """The recipe's members (:meth:`Recipe.members`) whose ``n_splits`` fold runs of every seed
    all hold ``model.safetensors`` and ``metrics.json``."""
    return [b for b in recipe.members() if _trained(recipe, b)]


def _entries(recipe: Recipe, backbone: str) -> list[str]:
    """The ``backbones`` entries (one per seed) of member ``backbone``; a name the recipe does not list is its own entry."""
    return recipe.members().get(backbone, [backbone])


def _trained(recipe: Recipe, backbone: str) -> bool:
    runs = [recipe.run_dir(entry, k) for entry in _entries(recipe, backbone) for k in range(recipe.folds.n_splits)]
    return all((run / "model.safetensors").is_file() and (run / "metrics.json").is_file() for run in runs)


def _member_weights(recipe: Recipe) -> tuple[dict[str, float], str]:
    """Backbone -> weight (> 0, summing to 1) and where the weights come from.

    ``weights.json`` is ``{"method": ..., "weights": {backbone: w}}``; a method that is not a
    weighted mean (``"weights": null``) gives equal weights over its ``members`` (or, without
    that list, over the finished backbones), and the returned description says so.

    Raises:
        PredictError: nothing is trained; ``weights.json`` is unreadable, gives no positive weight,
            or weights a backbone whose folds (of every seed) are not all finished.
    """
    runs = Path(recipe.runs_dir) / recipe.name
    path = runs / "blend" / "weights.json"
    done = finished_backbones(recipe)
    if not path.is_file():
        if not done:
            raise PredictError(
                f"no backbone of recipe {recipe.name!r} has all {recipe.folds.n_splits} folds finished under {runs} "
                f"(model.safetensors + metrics.json); run `ens train --recipe ...` first."
            )
        return {b: 1.0 / len(done) for b in done}, "equal weights (no blend/weights.json)"
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
    unfinished = [b for b in weights if not _trained(recipe, b)]
    if unfinished:
        entries = [entry for b in unfinished for entry in _entries(recipe, b)]
        raise PredictError(
            f"{path} weights {unfinished}, whose {recipe.folds.n_splits} folds are not all finished under {runs}; "
            f"train them (`ens train --backbone {','.join(entries)}`) or re-run `ens blend`."
        )
    if not weights:
        raise PredictError(f"{path} gives no backbone a positive weight; re-run `ens blend`.")
    total = sum(weights.values())
    return {b: w / total for b, w in weights.items()}, source


def load_ensemble(recipe: Recipe, device: str = "cpu") -> Ensemble:
    """Load every fold model of every seed of the recipe's ensemble (see the module docstring for which backbones).

    Each model is :func:`ensemble.train.build_model` with ``pretrained=False`` and the run's
    ``model.safetensors`` loaded strictly.

    Args:
        device: ``cpu``, ``cuda`` or ``auto`` (:func:`ensemble.train.resolve_device`).

    Raises:
        PredictError: nothing is trained (names the runs
            folder); a run was trained with other ``[features]`` or ``[train].tta_shifts`` than the
            recipe's, or other classes (names and order) than the recipe's ``[competition].classes``
            (when it lists them) or than the other runs; or its weights do not load.
    """
    weights, source = _member_weights(recipe)
    no_download = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, pretrained=False))
    torch_device = train.resolve_device(device)
    classes, members = None, []
    for backbone, weight in weights.items():
        models = []
        for entry, fold in itertools.product(_entries(recipe, backbone), range(recipe.folds.n_splits)):
            run = recipe.run_dir(entry, fold)
            config = json.loads((run / "config.json").read_text())
            made_with = from_dict(config["recipe"], str(run / "config.json"))
            if made_with.features != recipe.features:
                raise PredictError(
                    f"{run} was trained with other [features] than {recipe.name!r} has now; "
                    f"predict with the recipe it was trained with, or re-train it with `ens train --force`."
                )
            if made_with.train.tta_shifts != recipe.train.tta_shifts:
                raise PredictError(
                    f"{run} was made with [train].tta_shifts = {made_with.train.tta_shifts}, {recipe.name!r} has "
                    f"{recipe.train.tta_shifts} now (its OOF and so the blend weights used its TTA); set tta_shifts back, "
                    f"or re-train it with `ens train --force`."
                )
            if classes is None:
                classes = list(recipe.competition.classes) or config["classes"]  # the recipe's, when it lists them
            if config["classes"] != classes:
                raise PredictError(
                    f"{run} was trained with classes {config['classes']}, "
                    + (f"{recipe.name!r} has [competition].classes = {classes}" if recipe.competition.classes else f"other runs of the ensemble with {classes}")
                    + f" (names and order); predict with the recipe it was trained with, or re-train it with "
                    f"`ens train --backbone {entry} --fold {fold} --force`."
                )
            model = train.build_model(no_download, backbone, len(classes))
            try:
                model.load_state_dict(load_file(run / "model.safetensors"))
            except (RuntimeError, SafetensorError) as err:
                raise PredictError(
                    f"{run / 'model.safetensors'} does not load into {backbone} ({str(err)[:200]}); "
                    f"re-train it with `ens train --backbone {entry} --fold {fold} --force`."
                ) from err
            models.append(train.to_device(model, torch_device).eval())
        members.append(Member(backbone, weight, models, recipe.seeds(_entries(recipe, backbone))))
    return Ensemble(recipe, classes, members, source, torch_device)


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
        raise PredictError(f"{name} {seconds}: give a positive number of seconds (at least one sample, 1/{rate} s).")
    return n


def predict(
    ensemble: Ensemble, paths: list[str | os.PathLike], window: float | None = None, hop: float | None = None, on_error: str = "fail"
) -> list[FilePrediction]:
    """Predict audio files (see the module docstring for the preprocessing and windowing).

    Args:
        paths: audio files or folders (:func:`audio_files`).
        window: seconds per window, at most ``[features].duration`` (the default).
        hop: seconds between window starts, in (0, window]; default half the window.
        on_error: ``fail`` (default): the first file that cannot be read as audio stops the run;
            ``skip``: such files are left out and listed in one
            :class:`ensemble.train.SkippedClipsWarning` (file and problem each).

    Returns:
        one :class:`FilePrediction` per file that was read, in :func:`audio_files` order.

    Raises:
        PredictError: a bad path, a window longer than ``duration`` or a hop outside (0, window],
            or, under ``skip``, no file that can be read.
        AudioError: under ``fail``, a file cannot be read as audio.
        ValueError: ``on_error`` is not ``fail`` or ``skip``.
    """
    train.check_on_error(on_error)
    config = ensemble.recipe.features
    rate = config.sample_rate
    window_n = _samples(window, config.duration, "--window", rate)
    if window_n > features.samples(config):
        raise PredictError(
            f"--window {window} s is longer than the recipe's [features].duration = {config.duration} s, the clip "
            f"length the models were trained on (each window would be cropped); give at most {config.duration}."
        )
    hop_n = _samples(hop, window_n / 2 / rate, "--hop", rate)
    if hop_n > window_n:
        raise PredictError(f"--hop {hop} s is longer than the window ({window_n / rate} s): audio between windows would be skipped.")
    results, skipped = [], {}
    for path in audio_files(paths):
        try:
            y, start = audio.load_trimmed(path, config.sample_rate, config.trim_db)
        except audio.AudioError as err:
            if on_error == "fail":
                raise
            skipped[path] = str(err)
            continue
        spans = windows(len(y), window_n, hop_n)
        images = model_inputs([y[a:b] for a, b in spans], config)
        proba = ensemble.predict_images(images)
        seconds = (np.array(spans, dtype=np.float64) + start) / rate
        results.append(FilePrediction(path, proba.mean(axis=0), seconds, proba))
    if skipped and not results:
        raise PredictError(audio.error_list(skipped, "no file left to predict; fix or replace them"))
    if skipped:
        warnings.warn(audio.error_list(skipped, "skipped: they have no prediction"), train.SkippedClipsWarning, stacklevel=2)
    return results


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

    One panel per ``config.channels`` entry with time in seconds (:func:`ensemble.plots.clip_figure`:
    log-Mel and log-STFT in dB under the clip peak, chroma 0-1 with pitch-class ticks, MFCC scaled
    0-1). A file that fits in ``duration`` is drawn as the model's input
    (:func:`ensemble.features.model_inputs`: trimmed and centre-padded); a longer one whole
    (trimmed, :func:`ensemble.features.render_batch`), on one time axis.

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
