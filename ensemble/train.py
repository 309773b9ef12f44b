"""Training: one (backbone, fold) run (:func:`train_fold`) and the grid of a recipe's members x
folds with skip / resume (:func:`train`), the function ``ens train`` and a notebook both call.

A run writes its folder in the run store (:mod:`ensemble.runs` has the layout), each file
atomically: ``config.json`` first, ``log.csv`` and ``checkpoint.pt`` after every epoch,
``model.safetensors`` for each new best epoch (:mod:`ensemble.checkpoint`), then ``oof.csv``,
``test.csv`` and last ``metrics.json`` (the task's report of the OOF predictions): a run folder
with ``metrics.json`` is finished, and training skips it unless forced.
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.utils.class_weight import compute_class_weight
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from tqdm.auto import tqdm

from . import atomic, guards, models, runs, runtime, speaker_groups, speakers, tabular
from . import competition as comp_mod
from .augment import image_pipeline, spec_augment
from .checkpoint import Checkpoint
from .data import Data, data_key, load_data
from .errors import OptionError
from .executors import Job, Local, Ray
from .loop import Updater, ahead, predict, train_one_epoch
from .pseudo import PseudoLabels, fold_labels, write_labels
from .recipe import Recipe, RecipeError, pseudo_round
from .split import Split, load_split


def class_weights(recipe: Recipe, y: np.ndarray, num_classes: int) -> torch.Tensor | None:
    """Loss weights ``(classes,)`` from ``[train].class_weights``: ``balanced`` gives
    ``n / (classes * count)`` over ``y`` (scikit-learn's ``compute_class_weight``).

    Raises:
        RecipeError: ``given`` weights of the wrong length, or a class absent from ``y`` under ``balanced``.
    """
    t = recipe.train
    if t.class_weights == "none":
        return None
    if t.class_weights == "given":
        if len(t.class_weight_values) != num_classes:
            raise RecipeError(f"[train].class_weight_values has {len(t.class_weight_values)} values for {num_classes} classes.")
        return torch.tensor(t.class_weight_values, dtype=torch.float32)
    counts = np.bincount(y, minlength=num_classes)
    if (counts == 0).any():
        raise RecipeError("[train].class_weights = 'balanced' needs every class in the training folds.")
    return torch.tensor(compute_class_weight("balanced", classes=np.arange(num_classes), y=y), dtype=torch.float32)


def _record(recipe: Recipe, data: Data, on_event) -> None:
    """Write what loading found: ``skipped.csv`` in the run store (or remove a stale one) and the test
    speakers next to the competition, each also told to ``on_event``."""
    skipped = runs.root(recipe) / runs.SKIPPED
    if len(data.skipped):
        atomic.write_csv(skipped, data.skipped)
        if on_event is not None:
            on_event("skipped", skipped)
    else:  # a list from an earlier run with clips that load now would drop them from the blend
        skipped.unlink(missing_ok=True)
    if data.test_speakers is not None:
        speaker_groups.write(data.competition, data.test_speakers)
        if on_event is not None:
            on_event("speakers", data.test_speakers.describe())


def _show_loss(bar: tqdm, loss: float) -> None:
    bar.set_postfix(loss=f"{loss:.3f}")


def _check_fold(recipe: Recipe, fold: int) -> None:
    """Raises OptionError: ``fold`` is not one of the recipe's folds."""
    n_folds = recipe.folds.n_splits
    if not 0 <= fold < n_folds:
        raise OptionError(f"fold {fold} is not one of 0..{n_folds - 1} (the recipe's [folds].n_splits = {n_folds}).")


def run_config(recipe: Recipe, data: Data, entry: str, fold: int, pseudo: PseudoLabels | None = None) -> dict:
    """:func:`ensemble.runs.run_config` of ``entry``'s run of ``fold`` on ``data`` (with ``pseudo``'s labels)."""
    return runs.run_config(recipe, data.competition.classes, data.folds_hash, entry, fold, pseudo=None if pseudo is None else pseudo.identity())


def finished_run(recipe: Recipe, data: Data, entry: str, fold: int, pseudo: PseudoLabels | None = None) -> dict | None:
    """The ``metrics.json`` of the finished run of ``entry`` and ``fold``, or None if it is unfinished.

    Raises:
        RunConflictError: the finished run was made with another configuration.
    """
    return runs.finished_metrics(runs.run_dir(recipe, entry, fold), run_config(recipe, data, entry, fold, pseudo))


def train_fold(
    recipe: Recipe, data: Data, backbone: str, fold: int, force: bool = False, progress: bool = True, resume: bool = False, pseudo: PseudoLabels | None = None
) -> dict:
    """Fine-tune ``backbone`` (a ``backbones`` entry: timm model ``name``, or ``name@S`` trained
    with ``[train].seed = S``) on every fold but ``fold``, validate on ``fold``, write the run folder.

    Recipe ``[train]``: AdamW (timm ``create_optimizer_v2``), linear warm-up + cosine decay stepped
    per update (timm ``create_scheduler_v2``), cross-entropy with label smoothing and optional
    class weights, optional EMA of the weights (validated and saved instead of the raw weights)
    and early stopping; ``[augment]``: a random clean-or-augmented rendering per clip per epoch,
    albumentations image transforms, SpecAugment / time roll, mixup. channels_last; the autocast
    of ``[train].precision`` on CUDA and of ``[train].cpu_precision`` on CPU
    (:func:`ensemble.runtime.precision_on`); ``[runtime].compile`` compiles the training forward
    pass. Seeded: the same recipe gives the same run on CPU. Validation and the saved ``oof.csv``
    / ``test.csv`` use the time-shift TTA of ``[train].tta_shifts`` (:func:`ensemble.loop.predict`);
    skipped test clips (:attr:`ensemble.split.Split.skipped`) are given the prior.

    With ``pseudo`` (a pseudo-labelling round's entry ``"<entry>+pl<r>"``, :mod:`ensemble.pseudo`)
    the kept test clips join the training clips (clean renderings, never the validation fold) and
    every target is a probability row: one-hot for the labelled clips, the pseudo probabilities for
    the others, under the same cross-entropy (PyTorch's probability targets, with the same label
    smoothing and class weights).

    After each epoch ``checkpoint.pt`` saves the model, optimizer, scheduler, EMA, gradient
    scaler, every random state, the epoch log and which epoch is the best so far; then, when the
    epoch is the new best, ``model.safetensors`` its weights (:class:`ensemble.checkpoint.Checkpoint`).
    With ``resume`` an unfinished run continues from it, and on CPU ends with the same predictions
    as an uninterrupted run; without ``resume`` (or without a checkpoint) the run starts afresh.

    With ``progress`` each epoch prints one line on stdout (train loss, validation loss and
    metrics, the epoch's seconds, ``*`` when selected), and while an epoch runs tqdm draws a bar
    of its batches when stderr is a terminal (or in a notebook); when stderr is not a terminal
    (``nohup``, CI, Slurm, ``> log``) no bar is drawn (tqdm's ``disable=None``), so a log gets
    the epoch lines and no bar fragments. Without ``progress`` nothing is printed.

    Returns:
        the ``metrics.json`` dict (OOF scores of the selected epoch), also when the run was
        already finished with the same config and is skipped.

    Raises:
        RunConflictError: a finished run with another config exists and ``force`` is False, or
            the checkpoint to resume was made with another config or does not match ``model.safetensors``.
        OptionError: ``fold`` is not one of the folds.
        RecipeError: a malformed ``backbone`` entry.
    """
    recipe = recipe.for_backbone(backbone)
    out = runs.run_dir(recipe, backbone, fold)
    config = run_config(recipe, data, backbone, fold, pseudo)
    if not force and (done := runs.finished_metrics(out, config)) is not None:
        return done
    _check_fold(recipe, fold)
    checkpoint = Checkpoint(out, config, backbone)
    state = checkpoint.load() if resume and checkpoint.exists() else None
    (out / runs.METRICS).unlink(missing_ok=True)
    atomic.write_json(out / runs.CONFIG, config)

    t, classes = recipe.train, data.competition.classes
    runtime.set_threads(recipe.runtime.threads)
    fold_of = data.folds["fold"].to_numpy()
    train_idx, valid_idx = np.flatnonzero(fold_of != fold), np.flatnonzero(fold_of == fold)
    n_train = len(data.y)
    # what an epoch draws from: the training clips, then the pseudo-labelled test clips as rows n_train + j
    pool = train_idx if pseudo is None else np.concatenate([train_idx, n_train + np.arange(len(pseudo.rows))])
    generator = runtime.seed_everything(t.seed)
    device = runtime.resolve_device(recipe.runtime.device)
    cuda = device.type == "cuda"
    precision = runtime.precision_on(t, device)
    model = runtime.to_device(models.build(recipe, backbone, len(classes)), device)

    batch_size = min(t.batch_size, len(pool))
    if recipe.augment.mixup_alpha > 0 and batch_size > 1:
        batch_size -= batch_size % 2  # mixup pairs each image with one in the flipped batch (timm's Mixup asserts an even batch)
    updates_per_epoch = max(1, len(pool) // batch_size)
    optimizer = create_optimizer_v2(model, "adamw", lr=t.lr, weight_decay=t.weight_decay, layer_decay=t.layer_decay or None)
    scheduler, _ = create_scheduler_v2(
        optimizer,
        "cosine",
        num_epochs=t.epochs,
        warmup_epochs=t.warmup_epochs,
        warmup_lr=t.lr * 0.01,
        min_lr=t.min_lr,
        step_on_epochs=False,
        updates_per_epoch=updates_per_epoch,
    )
    a, task = recipe.augment, data.competition.task
    weight = class_weights(recipe, data.y[train_idx], len(classes)) if task.takes_class_weights else None
    mix = task.mixup(a.mixup_alpha, t.label_smoothing, len(classes))
    criterion = task.loss(t.label_smoothing, None if weight is None else weight.to(device), a.mixup_alpha)
    images = image_pipeline(a.image, seed=t.seed + fold)
    copies = 0 if data.x_aug is None else len(data.x_aug)
    ema = ModelEmaV3(model, decay=t.ema_decay) if t.ema_decay > 0 else None
    updater = Updater(
        model=model,
        forward=torch.compile(model) if recipe.runtime.compile else model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler(device.type, enabled=precision == "fp16"),
        ema=ema,
        spec=spec_augment(a).to(device),
        mix=mix,
        criterion=criterion,
        device=device,
        precision=precision,
        updates_per_epoch=updates_per_epoch,
    )
    if pseudo is None:
        y = torch.as_tensor(np.array(data.y))
    else:  # probability targets: one-hot rows for the labelled clips, then the soft pseudo rows
        y = torch.as_tensor(np.concatenate([np.eye(len(classes))[data.y], pseudo.targets]), dtype=torch.float32)
    test_rows = None if pseudo is None else pseudo.rows
    evaluated = model if ema is None else ema.module  # validated each epoch; its best weights are saved

    def batch_of(idx: np.ndarray, variant: np.ndarray | None) -> tuple[np.ndarray, torch.Tensor]:
        x = data.gather(idx, variant, test_rows)
        if images is not None:
            x = np.stack([images(image=img.transpose(1, 2, 0))["image"].transpose(2, 0, 1) for img in x])
        x = torch.from_numpy(x)
        return idx, x.pin_memory() if cuda else x

    log, best_epoch, best_score, best_proba, stale, start = [], 0, -np.inf, None, 0, 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        updater.scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        runtime.set_rng_state(state["rng"], generator, images)
        log, best_score, best_proba, stale, start = (state[k] for k in ("log", "best_score", "best_proba", "stale", "epoch"))
        best_epoch = checkpoint.restore_best(state, evaluated)
    desc = f"{backbone} fold {fold}"
    for epoch in range(start, t.epochs):
        if t.patience and stale >= t.patience:
            if progress:
                tqdm.write(f"{desc}: early stop, no {t.metric} gain in {t.patience} epochs")
            break
        started = time.time()
        order = torch.randperm(len(pool), generator=generator).numpy()[: updates_per_epoch * batch_size].reshape(updates_per_epoch, batch_size)
        variants = torch.randint(0, copies + 1, (len(pool),), generator=generator).numpy() if copies else None
        jobs = [(pool[pos], None if variants is None else variants[pos]) for pos in order]
        # disable=None: no bar when stderr is not a terminal (logs get only the epoch line below)
        bar = tqdm(
            ahead(jobs, batch_of),
            total=updates_per_epoch,
            desc=f"{desc} epoch {epoch + 1}/{t.epochs}",
            unit="batch",
            leave=False,
            disable=None if progress else True,
        )
        train_loss = train_one_epoch(updater, bar, y, epoch, on_loss=functools.partial(_show_loss, bar))
        train_seconds = time.time() - started
        proba = predict(evaluated, data.x_train[valid_idx], device, task.activation, shifts=t.tta_shifts, precision=precision)
        scores = task.scores(data.y[valid_idx], proba)
        row = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            **{f"valid_{k}": v for k, v in scores.items()},
            "lr": optimizer.param_groups[0]["lr"],
            "train_img_per_s": round(updates_per_epoch * batch_size / train_seconds, 1),
            "seconds": round(time.time() - started, 2),
        }
        improved = t.select == "last" or scores[t.metric] > best_score
        stale = 0 if improved else stale + 1
        if improved:
            best_epoch, best_score, best_proba = epoch + 1, scores[t.metric], proba
        row["selected"] = bool(improved)
        log.append(row)
        atomic.write_csv(out / runs.LOG, pd.DataFrame(log))
        # the checkpoint first: stopped before the weights are written, it is resumed with them restored (Checkpoint.restore_best)
        checkpoint.save(
            {
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": updater.scaler.state_dict(),
                "ema": None if ema is None else ema.state_dict(),
                "rng": runtime.rng_state(generator, images),
                "log": log,
                "best_epoch": best_epoch,
                "best_score": best_score,
                "best_proba": best_proba,
                "stale": stale,
            }
        )
        if improved:
            checkpoint.save_best(evaluated.state_dict(), best_epoch)
        if progress:
            shown = "  ".join(f"{k} {v:.3f}" for k, v in scores.items() if k != "log_loss")
            tqdm.write(
                f"{desc} epoch {epoch + 1}/{t.epochs}: loss {row['train_loss']:.3f}  valid loss {scores['log_loss']:.3f}  "
                f"{shown}  {row['seconds']:.1f} s{'  *' if improved else ''}"
            )

    model.load_state_dict(checkpoint.best_weights())
    train_ids = data.competition.train[data.competition.config.id_col].to_numpy()
    test_ids = data.competition.test[data.competition.config.id_col].to_numpy()
    atomic.write_csv(out / runs.OOF, runs.proba_frame(train_ids[valid_idx], best_proba, classes, fold=fold))
    test_proba = data.fill_skipped(predict(model, data.x_test, device, task.activation, shifts=t.tta_shifts, precision=precision))
    atomic.write_csv(out / runs.TEST, runs.proba_frame(test_ids, test_proba, classes))
    report = {**task.report(data.y[valid_idx], best_proba, classes), "backbone": backbone, "fold": fold, "epoch": best_epoch, "device": str(device)}
    if pseudo is not None:
        report["pseudo_labelled"] = len(pseudo.rows)
    if data.speaker_population is not None:  # for recordings of unknown speakers (ensemble.predict)
        speakers.save_statistics(out / runs.POPULATION, data.speaker_population)
    atomic.write_json(out / runs.METRICS, report)
    checkpoint.finish()
    return report


@dataclass
class RunResult:
    """One run of the grid: its ``backbones`` entry, fold, folder, ``metrics.json`` dict and whether it
    was already finished (skipped) rather than trained now."""

    entry: str
    fold: int
    run: Path
    metrics: dict
    skipped: bool


def train(
    recipe: Recipe,
    backbones: Sequence[str] | None = None,
    folds: Sequence[int] | None = None,
    force: bool = False,
    resume: bool = False,
    progress: bool = True,
    on_error: str = "fail",
    on_event: Callable[[str, RunResult | str], None] | None = None,
    executor: Local | Ray | None = None,
) -> list[RunResult]:
    """Train the grid: every entry of ``backbones`` (default the recipe's backbones, then its
    ``[[functionals]]`` members) x every fold of ``folds`` (default all). Backbones train on the
    images of their feature setting (``recipe.for_backbone(entry).features``: the recipe's
    ``[features]``, or an AudioSet backbone's own frontend), each setting loaded once
    (:func:`ensemble.data.load_data`) when its first entry trains, so one recipe can mix ImageNet
    and AudioSet backbones; functionals members train on their cached functionals
    (:mod:`ensemble.tabular`). A run already finished
    with the same configuration is skipped unless ``force``; an interrupted run starts afresh
    unless ``resume``. The folds are written to the competition folder (``folds.csv``) and the
    clips left out under ``on_error="skip"`` to the run store (``skipped.csv``) before training.

    ``on_event(kind, value)``, if given, hears ``("skipped", path of skipped.csv)`` when clips were
    left out, ``("speakers", description)`` when test speakers were found for speaker normalisation
    (also written next to the competition, :func:`ensemble.speaker_groups.write`),
    ``("afresh", "<entry> fold <K>")`` before an interrupted run is started afresh,
    ``("pseudo", description)`` when a pseudo-labelling round's labels of a fold are made and
    ``("run", RunResult)`` after each run.

    ``[pseudo]`` rounds (entries ``"<entry>+pl<r>"``) train after the entries they learn from: round
    ``r``'s labels of fold ``k`` are made from round ``r - 1``'s finished fold-``k`` runs
    (:func:`ensemble.pseudo.fold_labels`) and written to the run store.

    ``executor`` trains the image runs of each round that are not finished
    (:mod:`ensemble.executors`): :class:`ensemble.executors.Local` (the default) one after another
    here, :class:`ensemble.executors.Ray` each as a Ray task; functionals members train here.

    Returns:
        one :class:`RunResult` per (entry, fold), in grid order.

    Raises:
        RecipeError: a malformed entry. OptionError: a fold outside ``0..n_splits-1``, or a bad
        ``on_error``. And everything :func:`ensemble.data.load_data`, :func:`train_fold` and
        :func:`ensemble.tabular.train_fold` raise.
    """
    entries = list(backbones) if backbones is not None else recipe.entries()
    executor = executor or Local()
    tables = [m for e in entries if (m := recipe.functionals_member(e)) is not None]
    images = [e for e in entries if recipe.functionals_member(e) is None]
    settings = {entry: data_key(recipe.for_backbone(entry)) for entry in images}  # a malformed name@seed fails before the data loads
    n_splits = recipe.folds.n_splits
    folds = list(range(n_splits)) if folds is None else list(folds)
    for k in folds:
        _check_fold(recipe, k)
    competition, inferred = speaker_groups.with_train_speakers(comp_mod.load(recipe.competition), recipe, progress)
    if inferred is not None and on_event is not None:
        on_event("speakers", inferred.describe())
    decision = guards.speaker_norm(recipe, competition)  # groups too small, or clips not speech: norm = "clip", said
    recipe = decision.recipe
    for message in filter(None, (decision.reason, decision.note)):
        warnings.warn(message, guards.SpeakerNormWarning, stacklevel=2)
    speaker_groups.check_folds(competition, comp_mod.write_folds(competition, recipe.folds))
    loaded: dict[str, Data] = {}  # data_key -> its data

    def data_of(entry: str) -> Data:
        key = settings[entry]
        if key not in loaded:
            loaded[key] = load_data(recipe.for_backbone(entry), progress=progress, on_error=on_error)
            _record(recipe, loaded[key], on_event)
        return loaded[key]

    plain: list[Split] = []

    def split_of() -> Split:
        """The split the labels and functionals members use: a loaded Data's (clips skipped under on_error='skip' left out), else the tables'."""
        if loaded:
            return next(iter(loaded.values()))
        if not plain:
            plain.append(load_split(recipe))
        return plain[0]

    results, labels = [], {}

    def done_run(entry: str, k: int, report: dict, skipped: bool) -> None:
        results.append(RunResult(entry, k, runs.run_dir(recipe, entry, k), report, skipped=skipped))
        if on_event is not None:
            on_event("run", results[-1])

    def pseudo_labels(entry: str, k: int) -> PseudoLabels | None:
        """The labels of ``entry``'s round for fold ``k`` (None for a base entry), made and written once."""
        round_ = pseudo_round(entry)[1]
        if round_ and (round_, k) not in labels:
            labels[round_, k] = made = fold_labels(recipe, split_of(), round_, k)
            path = write_labels(recipe, split_of(), made)
            if on_event is not None:
                on_event("pseudo", f"round {round_} fold {k}: {len(made.rows)} test clips pseudo-labelled at confidence >= {made.threshold:.3f} -> {path}")
        return labels.get((round_, k))

    for round_ in sorted({pseudo_round(e)[1] for e in entries}):  # each round after its teachers
        grid = []  # (entry, fold, finished metrics or None, job to run or None)
        for entry in [e for e in images if pseudo_round(e)[1] == round_]:
            data = data_of(entry)
            for k in folds:
                extra = pseudo_labels(entry, k)
                done = None if force else finished_run(recipe, data, entry, k, extra)
                if not done and not resume and (runs.run_dir(recipe, entry, k) / runs.CHECKPOINT).exists() and on_event is not None:
                    on_event("afresh", f"{entry} fold {k}")
                grid.append((entry, k, done, None if done else Job(recipe, entry, k, force, resume, progress, extra, on_error)))
        reports = executor.map([job for *_, job in grid if job is not None], data_of)
        for entry, k, done, _ in grid:
            done_run(entry, k, done or next(reports), done is not None)
        for member in [m for m in tables if pseudo_round(m.name)[1] == round_]:
            table = tabular.load_table(recipe, split_of(), member, progress=progress)
            for k in folds:
                done_run(member.name, k, *tabular.train_fold(recipe, split_of(), table, member, k, force=force, pseudo=pseudo_labels(member.name, k)))
    for message in guards.constant_members(results):
        warnings.warn(message, guards.ConstantMemberWarning, stacklevel=2)
    return results
