"""The ``ens`` command line: a thin layer that parses options and calls the library."""

from __future__ import annotations

import time
import warnings
from enum import Enum
from pathlib import Path
from typing import Optional

import pandas as pd
import typer

from .core import atomic, deps, tasks
from .core import recipe as recipe_mod
from .core.entry import Entry
from .core.errors import EnsError, EnsWarning, Param
from .store import competition, runs
from .store.corpora import ravdess
from .store.split import ON_ERROR, SkippedClipsWarning

app = typer.Typer(
    help="ens: ImageNet-pretrained timm ensembles for audio classification competitions.", no_args_is_help=True, add_completion=False, rich_markup_mode=None
)  # help texts name recipe keys such as [train].epochs: no markup
data_app = typer.Typer(help="Build a competition folder from a public corpus.", no_args_is_help=True)
app.add_typer(data_app, name="data")

DEFAULT_RECIPE = Path("recipes/ravdess.toml")
RecipeOption = typer.Option(DEFAULT_RECIPE, "--recipe", "-r", help="Recipe TOML file.")
REFUSED = (EnsError, OSError)
"""Printed as ``error: ...`` with exit code 2: ens's refusals and the file system's (a missing file,
a full disk). Any other exception is a bug and keeps its traceback."""


def _choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """An option's choices as typer takes them (a str Enum): typer refuses any other value before the command runs."""
    return Enum(name, {value: value for value in values}, type=str)


OnError = _choices("OnError", ON_ERROR)  # --on-error (ensemble.store.split.ON_ERROR)
CpuPrecision = _choices("CpuPrecision", recipe_mod.CPU_PRECISIONS)  # --cpu-precision
Format = _choices("Format", ("onnx", "openvino"))  # ens export --format (ensemble.export.FORMATS)
Runtime = _choices("Runtime", ("torch", "onnx", "openvino"))  # ens predict --runtime (ensemble.export.RUNTIMES)
Executor = _choices("Executor", ("local", "ray"))  # ens train --executor (ensemble.deploy.executors.EXECUTORS)
PseudoLabelOption = typer.Option(
    False,
    "--pseudo-label",
    help="Pseudo-labelling: with [pseudo].rounds = 0, one round of members retrained with the confident test clips as soft "
    "targets ([pseudo] settings; ensemble.members.pseudo): train trains them, blend, report and predict include them.",
)
OnErrorOption = typer.Option(
    OnError.fail,
    "--on-error",
    help="Clips that cannot be loaded: fail (list them and stop) or skip (leave them out, "
    "list them in runs/<recipe>/skipped.csv; skipped test clips are predicted as the training prior).",
)


FLAG_NAMES = {"speaker": "--speaker-dir", "engine": "--runtime"}
"""Library parameters whose flag is not ``--`` + the name with dashes."""


def flag(param: Param) -> str:
    """How the command line shows a library parameter a message names: its flag (``--force``, ``--no-pretrained``
    for a False switch, ``--on-error skip``, ``--speaker-dir DIR``; ``shown=""``: the flag alone)."""
    name = FLAG_NAMES.get(param.name, "--" + param.name.replace("_", "-"))
    if param.shown == "" or param.value is True and param.shown is None:
        return name
    if param.value is False and param.shown is None:
        return "--no-" + name[2:]
    return f"{name} {param.shown if param.shown is not None else param.value}"


def shown(item: BaseException | Warning | str) -> str:
    """An error's or warning's message for the terminal: its parameters as flags (:func:`flag`)."""
    return item.render(flag) if isinstance(item, (EnsError, EnsWarning)) else str(item)


def _fail(err: Exception) -> None:
    typer.secho(f"error: {shown(err)}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@app.callback()
def _startup() -> None:
    """Before any command: refuse a torchaudio that does not work with the installed torch, in one line."""
    try:
        deps.check_torchaudio()
    except deps.DependencyError as err:
        _fail(err)


def _warnings_shown(categories: tuple[type[Warning], ...], call, *args, **kwargs):
    """``call(*args, **kwargs)``, each warning of ``categories`` it raises shown as a plain ``warning:`` line
    (parameters named as flags, :func:`shown`); other warnings pass on unchanged."""
    with warnings.catch_warnings(record=True) as caught:
        for category in categories:
            warnings.simplefilter("always", category)
        result = call(*args, **kwargs)
    for warning in caught:
        if issubclass(warning.category, categories):
            typer.secho(f"warning: {shown(warning.message)}", fg=typer.colors.YELLOW, err=True)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return result


def _load_recipe(path: Path, overrides: dict | None = None) -> recipe_mod.Recipe:
    """:func:`ensemble.core.recipe.load` with the command line's ``overrides`` (sections as dicts, None values dropped)."""
    changes = {}
    for key, value in (overrides or {}).items():
        value = {k: v for k, v in value.items() if v is not None} if isinstance(value, dict) else value
        if value not in (None, {}):
            changes[key] = value
    try:
        return recipe_mod.load(path, changes)
    except recipe_mod.RecipeError as err:
        _fail(err)


def _listed(names: str | None) -> list[str] | None:
    """A comma-separated option as a list (None, or ``all``: not given)."""
    return None if names in (None, "all") else [name.strip() for name in names.split(",")]


def _selected(path: Path, backbone: str | None, overrides: dict, pseudo_label: bool = False) -> tuple[recipe_mod.Recipe, list[str] | None]:
    """The recipe with ``--backbone`` and ``--pseudo-label`` applied, and the listed names (None: all).
    A name of a ``[[functionals]]`` member selects that member; the other names (``name``,
    ``name@seed``, or a pseudo round's ``name+pl1``) replace ``backbones`` (with the round's own entry).
    ``--pseudo-label`` makes ``[pseudo].rounds`` at least 1."""
    listed = _listed(backbone)
    r = _load_recipe(path, overrides)
    if pseudo_label and r.pseudo.rounds < 1:
        overrides = {**overrides, "pseudo": {"rounds": 1}}
        r = _load_recipe(path, overrides)
    if listed is None:
        return r, None
    try:
        backbones = r.backbone_entries(listed)
    except recipe_mod.RecipeError as err:
        _fail(err)
    return _load_recipe(path, {**overrides, "backbones": backbones}), listed


@data_app.command("ravdess")
def data_ravdess(
    source: Optional[Path] = typer.Option(None, help="Folder holding Actor_01 ... Actor_24 (.wav or .flac). Default: ../shared/data/ravdess when it exists."),
    out: Path = typer.Option(Path("data/ravdess"), help="Competition folder to write."),
    download: bool = typer.Option(False, "--download", help="Fetch the official speech archive from Zenodo (needs internet)."),
    test_actors: str = typer.Option("21,22,23,24", help="Comma-separated actors held out as the hidden test set."),
    n_splits: int = typer.Option(5, "--folds", help="Number of speaker-grouped folds written to folds.csv."),
    seed: int = typer.Option(42, help="Seed of the folds and of the test ids' order."),
    labels: str = typer.Option(
        "emotion",
        help="Label scheme: emotion (8 classes), gender_emotion (10: female/male x angry, calm, fearful, happy, sad) "
        'or emotion_intensity (multilabel: the emotion plus "strong").',
    ),
    song_source: Optional[Path] = typer.Option(None, help="Folder of the RAVDESS song set, pooled with the speech clips."),
) -> None:
    """Write a Kaggle-style RAVDESS competition folder (train/test/sample_submission/solution/folds)."""
    try:
        if download:
            source = ravdess.download(out / "source")
        elif source is None:
            source = Path("../shared/data/ravdess")
            if not source.is_dir():
                raise ravdess.RavdessError("no RAVDESS source: ../shared/data/ravdess does not exist; pass --source DIR or --download.")
        actors = _parse_actors(test_actors)
        tables = ravdess.build_competition(source, out, actors, seed, labels, song_source, n_splits)
    except REFUSED as err:
        _fail(err)
    typer.echo(
        f"{out}: {len(tables[competition.TRAIN])} training clips in {n_splits} speaker-grouped folds, "
        f"{len(tables[competition.TEST])} test clips of actors {list(actors)} (labels in {competition.SOLUTION})."
    )


def _parse_actors(test_actors: str) -> tuple[int, ...]:
    try:
        return tuple(int(a) for a in test_actors.split(",") if a.strip())
    except ValueError:
        _fail(ValueError(f"--test-actors {test_actors!r}: give comma-separated actor numbers, such as 21,22,23,24."))


def _parse_folds(fold: str, n_splits: int) -> list[int]:
    if fold == "all":
        return list(range(n_splits))
    try:
        return [int(f) for f in fold.split(",")]
    except ValueError:
        _fail(ValueError(f"--fold {fold!r}: give a fold number 0..{n_splits - 1}, a comma-separated list, or 'all'."))


@app.command()
def train(
    backbone: str = typer.Option(
        "all",
        "--backbone",
        "-b",
        help="timm model name (name@seed: with that [train].seed) or [[functionals]] member name, comma-separated, or 'all' (every member of the recipe).",
    ),
    fold: str = typer.Option("all", "--fold", "-f", help="Fold number, comma-separated folds, or 'all'."),
    recipe: Path = RecipeOption,
    epochs: Optional[int] = typer.Option(None, help="Override [train].epochs."),
    weights_dir: Optional[str] = typer.Option(
        None, help="Folder of timm local-dir weights (one sub-folder per backbone); overrides [paths].weights_dir and $ENS_WEIGHTS_DIR."
    ),
    no_pretrained: bool = typer.Option(False, "--no-pretrained", help="Train from random initialisation."),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda; overrides [runtime].device."),
    cpu_precision: Optional[CpuPrecision] = typer.Option(
        None, help="fp32 or bf16 (autocast; pays on CPUs with AVX512-BF16 or AMX); overrides [train].cpu_precision."
    ),
    force: bool = typer.Option(False, "--force", help="Re-train runs that are already finished."),
    resume: bool = typer.Option(False, "--resume", help="Continue unfinished runs from their last epoch's checkpoint.pt instead of starting afresh."),
    on_error: OnError = OnErrorOption,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars and no per-epoch or per-stage lines; only each run's result line."),
    pseudo_label: bool = PseudoLabelOption,
    executor: Executor = typer.Option(
        Executor.local, help="local: one run after another here; ray: each (backbone, fold) run as one Ray task (ensemble.deploy.executors)."
    ),
    address: Optional[str] = typer.Option(
        None, help="With --executor ray: an existing Ray cluster (auto, ray://HOST:10001); default a local Ray instance on this machine."
    ),
    run_cpus: Optional[float] = typer.Option(None, help="CPUs each Ray task asks for; overrides [runtime].run_cpus."),
    run_gpus: Optional[float] = typer.Option(None, help="GPUs each Ray task asks for; overrides [runtime].run_gpus."),
) -> None:
    """Fine-tune backbone(s) on fold(s); finished runs with the same config are skipped.

    Progress: bars when stderr is a terminal; otherwise (a log, a pipe) one line per epoch and
    per rendering stage; each finished run prints one result line."""
    from . import plan
    from . import train as train_mod
    from .deploy import executors

    r, listed = _selected(
        recipe,
        backbone,
        {
            "train": {
                "epochs": epochs,
                "pretrained": False if no_pretrained else None,
                "cpu_precision": None if cpu_precision is None else cpu_precision.value,
            },
            "runtime": {"device": device, "run_cpus": run_cpus, "run_gpus": run_gpus},
            "paths": {"weights_dir": weights_dir},
        },
        pseudo_label,
    )

    def show(kind: str, value) -> None:
        if kind == "skipped":
            typer.secho(f"the clips that cannot be loaded are listed in {value}", fg=typer.colors.YELLOW, err=True)
            return
        if kind in ("speakers", "pseudo"):
            typer.echo(value, err=True)
            return
        if kind == "afresh":
            typer.secho(f"{value}: starting afresh; pass --resume to continue the interrupted run from its checkpoint.", fg=typer.colors.YELLOW, err=True)
            return
        headline = "  ".join(f"{key} {value.metrics[key]:.4f}" for key in tasks.get(r.competition.task).headline)
        done = "  [already finished, skipped]" if value.skipped else ""
        detail = f"  ({value.detail})" if value.detail else ""
        typer.echo(f"{value.entry} fold {value.fold}: {headline}{detail} -> {value.run}{done}")

    try:
        folds = _parse_folds(fold, r.folds.n_splits)
        runner = executors.get(executor.value, address)
        started = time.monotonic()
        planned = None
        if not quiet:
            stages = plan.estimate(r, listed, folds, force=force)
            planned = sum(s.seconds for s in stages)
            typer.echo(plan.describe(stages), err=True)
        _warnings_shown(
            (SkippedClipsWarning,),
            train_mod.train,
            r,
            listed,
            folds=folds,
            force=force,
            resume=resume,
            progress=not quiet,
            on_error=on_error.value,
            on_event=show,
            executor=runner,
        )
        if planned is not None:
            typer.echo(f"ens train finished in {(time.monotonic() - started) / 60:.1f} min (planned ~{planned / 60:.1f} min)", err=True)
    except REFUSED as err:
        _fail(err)


@app.command()
def blend(
    recipe: Path = RecipeOption,
    method: Optional[str] = typer.Option(
        None, help="mean, rank, geometric, caruana, optimize, stacking, or auto (the best cv_ score of [train].metric); overrides [blend].method."
    ),
    name: Optional[str] = typer.Option(None, help="Submission file name without .csv (default <recipe>-<method>)."),
    backbone: Optional[str] = typer.Option(
        None,
        "--backbone",
        "-b",
        help="Comma-separated members to blend: backbones (name or name@seed; a name's seeds are averaged), [[functionals]] members, "
        "pseudo rounds' members (name+pl1) (default: all).",
    ),
    pseudo_label: bool = PseudoLabelOption,
) -> None:
    """Blend the finished runs' OOF predictions, print the leaderboard, write submissions/<name>.csv.
    Reads the runs' tables only (no audio, no feature cache)."""
    from .blending import blend as blend_mod

    r, listed = _selected(recipe, backbone, {}, pseudo_label)
    if listed is not None:  # blend exactly the listed members (a model's listed seeds averaged)
        members = list(dict.fromkeys(Entry.parse(n).member for n in listed))
        r = _load_recipe(recipe, {"backbones": r.backbones, "pseudo": {"rounds": r.pseudo.rounds}, "blend": {"members": members}})
    try:
        result = blend_mod.blend(r, method)
        path = blend_mod.write(r, result, name)
    except REFUSED as err:
        _fail(err)
    for member, reason in result.skipped.items():
        typer.secho(f"skipped {member}: {reason}", fg=typer.colors.YELLOW, err=True)
    left_out = result.split.skipped["table"].value_counts()
    if len(left_out):
        typer.secho(
            f"training left out {left_out.get('train', 0)} training and {left_out.get('test', 0)} test clip(s) that cannot be loaded "
            f"({runs.root(r) / runs.SKIPPED}); the test clips are predicted as the training prior.",
            fg=typer.colors.YELLOW,
            err=True,
        )
    with pd.option_context("display.width", 200, "display.max_colwidth", 120):
        typer.echo(result.leaderboard.to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep=""))
    weights = "" if result.weights is None else f"  (weights: {', '.join(f'{k}={v:.2f}' for k, v in result.weights.items())})"
    if result.requested == blend_mod.AUTO:
        typer.echo(f"\nauto: {result.method} has the best cross-validated {r.train.metric} (cv_{r.train.metric} column)")
    typer.echo(f"\nwrote {path}{weights}\ncv_ columns: each blend fitted on the other folds and scored on the held-out fold (the honest figure).")
    if (result.split.competition.root / competition.SOLUTION).exists():
        typer.echo(f"score it against the hidden labels: ens score {path}")


@app.command()
def score(
    submission_csv: Path = typer.Argument(..., help="Submission CSV to score."),
    recipe: Path = RecipeOption,
) -> None:
    """Score a submission against the competition's hidden solution.csv (with a Usage column: also its
    Public and Private leaderboards, Ignored rows left out)."""
    from .store import submission

    r = _load_recipe(recipe)
    try:
        result = submission.score_splits(competition.load(r.competition), submission_csv)
    except REFUSED as err:
        _fail(err)
    for split, scores in result.items():
        head = f"{submission_csv}:" if split == "all" else f"  {split + ' leaderboard:':21}"
        typer.echo(head + " " + "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in scores.items()))


@app.command()
def report(
    recipe: Path = RecipeOption,
    out: Optional[Path] = typer.Option(None, help="HTML file to write (default runs/<recipe>/report.html)."),
    pseudo_label: bool = PseudoLabelOption,
) -> None:
    """Write one self-contained HTML report of the recipe's runs and blend (figures embedded)."""
    from . import report as report_mod

    r = _selected(recipe, None, {}, pseudo_label)[0]
    try:
        path = report_mod.build(r, out)
    except REFUSED as err:
        _fail(err)
    typer.echo(f"wrote {path}")


@app.command("export")
def export_cmd(
    fmt: Format = typer.Option(..., "--format", help="onnx (for ONNX Runtime) or openvino (OpenVINO IR)."),
    recipe: Path = RecipeOption,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder to write (default runs/<recipe>/export/<format>)."),
    pseudo_label: bool = PseudoLabelOption,
) -> None:
    """Export every fold model of the ensemble's image members (blend weights, or equal weights) as one graph each,
    with manifest.json (members, weights, classes, feature settings); `ens predict --runtime FORMAT` runs them."""
    from . import export as export_mod

    r = _selected(recipe, None, {}, pseudo_label)[0]
    try:
        manifest = export_mod.export(r, fmt.value, out, on_model=lambda path: typer.echo(f"wrote {path}", err=True))
    except REFUSED as err:
        _fail(err)
    typer.echo(f"wrote {manifest}")


def _member_text(ensemble, member) -> str:
    """``name xN folds (weight)``, with the seeds when the member averages several."""
    seeds = member.seeds()
    shown = f" of seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else ""
    return f"{member.name} x{len(member.entries) * member.n_splits} folds{shown} ({ensemble.weights[member.name]:.2f})"


@app.command()
def predict(
    paths: list[Path] = typer.Argument(..., help="Audio files, or folders searched recursively for .wav .flac .mp3 .ogg."),
    recipe: Path = RecipeOption,
    window: Optional[float] = typer.Option(
        None, help="Seconds per window for files longer than it; at most (and by default) the duration set in the recipe's features section."
    ),
    hop: Optional[float] = typer.Option(None, help="Seconds between window starts (default half the window)."),
    timeline: bool = typer.Option(False, "--timeline", help="Also give one row per window (start_s, end_s in the file)."),
    save_image: Optional[Path] = typer.Option(None, "--save-image", help="Folder to write each file's rendered image to (<name>.png, one panel per channel)."),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="CSV to write: path (then start_s, end_s with --timeline) and one probability column per class."
    ),
    device: str = typer.Option("cpu", help="cpu, cuda or auto."),
    runtime: Runtime = typer.Option(
        Runtime.torch, help="What runs the image members' fold models: torch (eager), or the graphs `ens export` wrote, run by onnx (ONNX Runtime) or openvino."
    ),
    export_dir: Optional[Path] = typer.Option(None, help="The export folder for --runtime onnx/openvino (default runs/<recipe>/export/<format>)."),
    threads: Optional[int] = typer.Option(None, help="CPU threads of the runtime (0: every core); overrides [runtime].threads."),
    on_error: OnError = typer.Option(
        OnError.fail,
        "--on-error",
        help="Files that cannot be read as audio: fail (stop at the first) or skip (leave them out and list them, each with its problem).",
    ),
    speaker_dir: Optional[Path] = typer.Option(
        None, "--speaker-dir", help="Other recordings of the same speaker: members trained with [speakers].norm = speaker normalise with their statistics."
    ),
    same_speaker: bool = typer.Option(
        False, "--same-speaker", help="The files given are one speaker: their windows give the statistics of speaker-normalised members."
    ),
    pseudo_label: bool = PseudoLabelOption,
) -> None:
    """Predict audio files with the recipe's trained ensemble (every backbone with all folds finished, blend weights).
    Speaker-normalised members use --speaker-dir or --same-speaker, else the training population's statistics (with a warning)."""
    from . import predict as predict_mod

    r = _selected(recipe, None, {"runtime": {"threads": threads}}, pseudo_label)[0]
    try:
        files = predict_mod.audio_files(paths)  # a bad path fails before the models load
        ensemble = predict_mod.load_ensemble(r, device, runtime.value, export_dir)
        tta = sorted({str(list(made.train.tta_shifts)) for made in ensemble.trained_with.values() if made.train.tta_shifts})
        shifts = f"; time-shift TTA {', '.join(tta)}" if tta else ""
        members = ", ".join(_member_text(ensemble, m) for m in ensemble.members)
        typer.echo(f"ensemble: {members}; weights: {ensemble.weights_from}{shifts}", err=True)
        speaker = None if speaker_dir is None else [speaker_dir]
        shown = (SkippedClipsWarning, predict_mod.SpeakerNormWarning)
        predictions = _warnings_shown(shown, predict_mod.predict, ensemble, files, window, hop, on_error.value, speaker, same_speaker)
        frame = predict_mod.table(predictions, ensemble.classes, timeline)
        if out is not None:
            atomic.write_csv(out, frame)
        if save_image is not None:
            for p, name in zip(predictions, predict_mod.image_names([p.path for p in predictions])):
                predict_mod.save_image(p.path, r.features, save_image / name)
    except REFUSED as err:
        _fail(err)
    proba = frame[ensemble.classes]
    shown = pd.DataFrame({"file": frame["path"], "class": proba.idxmax(axis=1), "probability": proba.max(axis=1)})
    if timeline:
        shown.insert(1, "seconds", [f"{a:.2f}-{b:.2f}" if pd.notna(a) else "whole file" for a, b in zip(frame["start_s"], frame["end_s"])])
    typer.echo(shown.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if out is not None:
        typer.echo(f"wrote {out}")
    if save_image is not None:
        typer.echo(f"wrote {len(predictions)} image(s) to {save_image}")
