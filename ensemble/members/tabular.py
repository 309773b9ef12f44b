"""Functionals members: a scikit-learn model per fold on acoustic functionals, written to the run
store like any member, so ``ens blend``, ``ens report`` and ``ens score`` treat it as they treat a
backbone.

Per clip: the functionals of ``[[functionals]].set`` (:mod:`ensemble.members.functionals`, cached per clip).
With ``[speakers].norm = "speaker"`` every clip's functionals are z-normalised by its speaker's
statistics (:class:`ensemble.speaker.speakers.SpeakerNorm`: training speakers from the group column, test
speakers as :func:`ensemble.speaker.speaker_groups.test_speakers` finds them; no label used), the
classic per-speaker normalisation of the INTERSPEECH / ComParE baselines. Then per fold a
pipeline of scikit-learn's ``StandardScaler`` (fitted on the training folds) and the model:
``logreg`` (``LogisticRegression``, balanced class weights), ``svm`` (``SVC`` with an RBF
kernel and balanced class weights, probabilities Platt-scaled), both with ``C = c``, or
``lightgbm`` (LightGBM's ``LGBMClassifier``, balanced class weights).

A run folder holds ``config.json`` (the recipe's identity plus the member's settings),
``oof.csv``, ``test.csv``, ``model.joblib`` (the fitted pipeline) and ``metrics.json``, written
last, each atomically (:mod:`ensemble.store.runs` has the layout).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from lightgbm import LGBMClassifier
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, ParameterGrid, StratifiedKFold, cross_val_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from ..core import atomic
from ..core.entry import Entry
from ..core.errors import EnsError
from ..core.recipe import FunctionalsMember, Recipe, from_dict
from ..speaker import speaker_groups, speakers
from ..store import runs
from ..store.split import Split
from . import encoders, functionals
from .kind import Kind, Outcome, Section, Session, Stage, vector_stage
from .pseudo import PseudoLabels

MODEL = "model.joblib"


class TabularError(EnsError, ValueError):
    """A functionals member cannot be trained or loaded: too few speakers to tune, a missing or unloadable pipeline."""


GRIDS: dict[str, dict[str, tuple]] = {
    "logreg": {"c": (0.001, 0.01, 0.1, 1.0, 10.0)},
    "svm": {"c": (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)},
    "lightgbm": {"trees": (100, 300), "leaves": (7, 15, 31)},
}
"""What ``[[functionals]].tune`` searches per model: decades of ``C`` for the logistic regression
(wide: the best ``C`` falls with the number of functionals, 0.01 for ComParE's 6373 and 0.1 for
ens_basic's 319 on RAVDESS, ``docs/results.md``), the SVM's usual 0.1-30 range, and LightGBM's size
(rounds x leaves; the learning rate stays the member's)."""

INNER_FOLDS = 3
"""Inner folds of :func:`tune` (grouped by speaker when the competition has a group column)."""

SCORERS = {"accuracy": "accuracy", "uar": "balanced_accuracy", "macro_f1": "f1_macro"}
"""``[train].metric`` -> the scikit-learn scorer :func:`tune` maximises (UAR is balanced accuracy)."""


@dataclass
class Table:
    """A member's inputs: functionals ``(n_train, d)`` and ``(n_test, d)`` as the model sees them
    (speaker-normalised or not), in the split's training and test order, and with speaker
    normalisation the training population's statistics (for recordings of unknown speakers)."""

    x_train: np.ndarray
    x_test: np.ndarray
    population: speakers.Statistics | None = None


def load_table(recipe: Recipe, split: Split, member: FunctionalsMember, progress: bool = True) -> Table:
    """The functionals of every training and test clip of ``split`` for ``member.set`` (computed once
    per clip into ``<competition>/.ens_cache/``), speaker-normalised when ``[speakers].norm`` says so.

    Raises:
        AudioError: a clip cannot be loaded. FunctionalsError: see :mod:`ensemble.members.functionals`.
        SpeakerGroupError, SpeakerError: see :mod:`ensemble.speaker.speaker_groups`.
    """
    comp, f = split.competition, recipe.features
    cache = functionals.FunctionalsCache(comp.root / ".ens_cache", recipe.runtime.threads, recipe.paths.weights_dir)
    picked = columns(member, recipe.paths.weights_dir)
    x_train = cache.get(comp.audio_paths(comp.train), f.sample_rate, f.trim_db, member.set, progress=progress)[:, picked]
    x_test = cache.get(comp.audio_paths(comp.test), f.sample_rate, f.trim_db, member.set, progress=progress)[:, picked]
    population = None
    if recipe.speakers.norm == "speaker":
        test = speaker_groups.test_speakers(comp, recipe.speakers, f, progress=progress).groups
        train = speaker_groups.train_groups(comp)
        norm = speakers.SpeakerNorm().fit(x_train, train)
        x_train, population = norm.transform(x_train, train), norm.population_
        x_test = speakers.SpeakerNorm().fit_transform(x_test, test)
    return Table(np.asarray(x_train, dtype=np.float64), np.asarray(x_test, dtype=np.float64), population)


def columns(member: FunctionalsMember, weights_dir: str | None = None) -> np.ndarray | slice:
    """The columns of the set's cached vectors the member's model sees: an encoder set's hidden states
    chosen by ``layers`` (:func:`ensemble.members.encoders.columns`), else every column (``slice(None)``).

    Raises:
        EncoderError: see :func:`ensemble.members.encoders.columns`.
    """
    if not functionals.is_encoder(member.set) or member.layers == "all":
        return slice(None)
    return encoders.columns(member.set, member.layers, weights_dir)


def identity(recipe: Recipe) -> Recipe:
    """The recipe as far as a functionals run depends on it: the competition, the folds, how audio is
    loaded (``[features].sample_rate`` and ``trim_db``), ``[speakers]`` and ``[train].seed``; every
    image setting at its default, so changing a backbone's training leaves functionals runs valid."""
    f = recipe.features
    return from_dict(
        {
            "competition": dataclasses.asdict(recipe.competition),
            "folds": dataclasses.asdict(recipe.folds),
            "features": {"sample_rate": f.sample_rate, "trim_db": f.trim_db},
            "speakers": dataclasses.asdict(recipe.speakers),
            "train": {"seed": recipe.train.seed},
        },
        f"the functionals identity of {recipe.name!r}",
    )


def pipeline(member: FunctionalsMember, seed: int, y: np.ndarray) -> Pipeline:
    """The member's scikit-learn pipeline for training targets ``y`` ``(n,)``: ``StandardScaler`` then
    the model (see the module docstring). The SVM's probabilities are Platt-scaled
    (``CalibratedClassifierCV(method="sigmoid", ensemble=False)``, scikit-learn's replacement for
    ``SVC(probability=True)``) on up to 5 stratified internal folds, fewer when a class has fewer clips.
    LightGBM runs one thread in deterministic mode, so a run is repeatable."""
    if member.model == "svm":
        folds = int(max(2, min(5, np.bincount(y).min())))
        svm = SVC(C=member.c, kernel="rbf", class_weight="balanced", random_state=seed)
        model = CalibratedClassifierCV(svm, method="sigmoid", cv=folds, ensemble=False)
    elif member.model == "lightgbm":
        model = LGBMClassifier(
            n_estimators=member.trees,
            learning_rate=member.learning_rate,
            num_leaves=member.leaves,
            class_weight="balanced",
            random_state=seed,
            n_jobs=1,
            deterministic=True,
            verbose=-1,
        )
    else:
        model = LogisticRegression(C=member.c, class_weight="balanced", max_iter=5000)
    return make_pipeline(StandardScaler(), model)


def fit(model: Pipeline, x: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None) -> Pipeline:
    """``model.fit(x, y)``, with ``weight`` ``(n,)`` (or None) as every step's ``sample_weight``
    (the scaler's weighted mean and variance, the model's weighted loss)."""
    if weight is None:
        return model.fit(x, y)
    return model.fit(x, y, **{f"{name}__sample_weight": weight for name, _ in model.steps})


def class_proba(model: Pipeline, x: np.ndarray, n_classes: int) -> np.ndarray:
    """``predict_proba`` as ``(n, n_classes)`` in class order (a class absent from a training fold keeps 0)."""
    out = np.zeros((len(x), n_classes))
    out[:, model.classes_] = model.predict_proba(x)
    return out


def inner_folds(split: Split, rows: np.ndarray, n_folds: int = INNER_FOLDS) -> list[tuple[np.ndarray, np.ndarray]]:
    """Folds over the training clips ``rows`` (indices into ``split``'s training table), as position
    pairs into ``rows``: grouped by the group column when the competition has one (scikit-learn's
    ``GroupKFold``: no speaker on both sides), else stratified by class (``StratifiedKFold``, seed 0).
    ``n_folds`` falls to the number of groups (or to the rarest class's count) when they are fewer.

    Raises:
        TabularError: fewer than 2 groups (or a class with fewer than 2 clips) to split."""
    comp, y = split.competition, split.y[rows]
    if comp.has_groups:
        groups = comp.train[comp.config.group_col].astype(str).to_numpy()[rows]
        k = min(n_folds, len(set(groups)))
        if k < 2:
            raise TabularError(f"[[functionals]].tune needs clips of at least 2 speakers ({comp.config.group_col!r}) in each fold's training clips.")
        return list(GroupKFold(n_splits=k).split(rows, y, groups))
    k = min(n_folds, int(np.bincount(y).min(initial=0)) if len(y) else 0)
    if k < 2:
        raise TabularError("[[functionals]].tune needs at least 2 clips of every class in each fold's training clips.")
    return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=0).split(rows, y))


def tune(
    member: FunctionalsMember, x: np.ndarray, y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]], metric: str, seed: int
) -> tuple[FunctionalsMember, dict]:
    """The member with the settings of :data:`GRIDS` that score best, by ``metric``
    (:data:`SCORERS`), over the inner ``folds`` of training clips ``x`` ``(n, d)``, ``y`` ``(n,)``
    (scikit-learn's ``ParameterGrid`` and ``cross_val_score``; ties go to the first, i.e. the
    simplest, setting of the grid). Only training clips take part: the caller's validation fold never does.

    Returns:
        the tuned member and ``{"chosen": {...}, "inner_scores": {setting: mean score}}``.
    """
    scored = []
    for setting in ParameterGrid(GRIDS[member.model]):
        candidate = dataclasses.replace(member, **setting)
        score = cross_val_score(pipeline(candidate, seed, y), x, y, cv=folds, scoring=SCORERS[metric]).mean()
        scored.append((float(score), setting))
    best = max(scored, key=lambda pair: pair[0])[1]
    return dataclasses.replace(member, **best), {"chosen": best, "inner_scores": {str(s): round(v, 4) for v, s in scored}}


def train_fold(
    recipe: Recipe, split: Split, table: Table, member: FunctionalsMember, fold: int, force: bool = False, pseudo: PseudoLabels | None = None
) -> tuple[dict, bool]:
    """Fit ``member`` on every fold but ``fold`` and write its run folder (see the module docstring).

    With ``pseudo`` (a pseudo-labelling round's member, :mod:`ensemble.members.pseudo`) the kept test clips
    join the training clips as soft targets: each such clip enters once per class with sample
    weight its pseudo probability of that class (the weighted log-loss of these rows is the
    cross-entropy against the soft target; :func:`fit`). With ``tune``, the settings are chosen on
    the labelled training clips only, then the model is fitted with the pseudo rows.

    Returns:
        the ``metrics.json`` dict (the task's report of the fold's OOF predictions), and whether
        the run was already finished with the same configuration (then it is skipped).

    Raises:
        RunConflictError: a finished run with another configuration exists and ``force`` is False.
    """
    comp, task = split.competition, split.competition.task
    classes = comp.classes
    out = runs.run_dir(recipe, member.name, fold)
    settings = dataclasses.asdict(dataclasses.replace(member, name=str(Entry.parse(member.name).base)))  # a round's student: its teacher's table
    labels = None if pseudo is None else pseudo.identity()
    config = runs.run_config(identity(recipe), classes, split.folds_hash, member.name, fold, member=settings, pseudo=labels)
    if not force and (done := runs.finished_metrics(out, config)) is not None:
        return done, True
    (out / runs.METRICS).unlink(missing_ok=True)
    atomic.write_json(out / runs.CONFIG, config)
    fold_of = split.folds["fold"].to_numpy()
    train_idx, valid_idx = np.flatnonzero(fold_of != fold), np.flatnonzero(fold_of == fold)
    tuned = {}
    if member.tune:
        folds = inner_folds(split, train_idx)
        member, tuned = tune(member, table.x_train[train_idx], split.y[train_idx], folds, recipe.train.metric, recipe.train.seed)
    x, y, weight = table.x_train[train_idx], split.y[train_idx], None
    if pseudo is not None and len(pseudo.rows):
        n_classes = len(classes)
        x = np.concatenate([x, np.repeat(table.x_test[pseudo.rows], n_classes, axis=0)])
        y = np.concatenate([y, np.tile(np.arange(n_classes), len(pseudo.rows))])
        weight = np.concatenate([np.ones(len(train_idx)), pseudo.targets.ravel()])
    model = fit(pipeline(member, recipe.train.seed, y), x, y, weight)
    oof = class_proba(model, table.x_train[valid_idx], len(classes))
    test = split.fill_skipped(class_proba(model, table.x_test, len(classes)))
    ids = comp.train[comp.config.id_col].to_numpy()
    atomic.write_csv(out / runs.OOF, runs.proba_frame(ids[valid_idx], oof, classes, fold=fold))
    atomic.write_csv(out / runs.TEST, runs.proba_frame(comp.test[comp.config.id_col].to_numpy(), test, classes))
    with atomic.atomic_path(out / MODEL) as tmp:
        joblib.dump(model, tmp)
    if table.population is not None:  # for recordings of unknown speakers (ensemble.predict)
        speakers.save_statistics(out / runs.POPULATION, table.population)
    report = {**task.report(split.y[valid_idx], oof, classes), "backbone": member.name, "fold": fold, "set": member.set, "model": member.model, **tuned}
    if pseudo is not None:
        report["pseudo_labelled"] = len(pseudo.rows)
    atomic.write_json(out / runs.METRICS, report)
    return report, False


def importance(models: list[Pipeline], names: list[str]) -> pd.Series | None:
    """How much a member leans on each functional, over its fold pipelines ``models`` (one per fold),
    highest first, as a share of the total (sums to 1; all 0 for a fold without a split or a
    non-zero coefficient); None for a member without per-feature
    weights (the RBF SVM).

    A logistic regression's importance of a functional is the mean absolute coefficient over the
    classes (its inputs are standardised, so coefficients are comparable); LightGBM's is the total
    gain of the splits on it (``feature_importance("gain")``). Each fold's importances are made
    shares before the mean over folds.

    Args:
        names: the functionals' names in column order (:func:`ensemble.members.functionals.names`).
    """
    shares = []
    for model in models:
        last = model.steps[-1][1]
        if isinstance(last, LogisticRegression):
            raw = np.abs(last.coef_).mean(axis=0)
        elif isinstance(last, LGBMClassifier):
            raw = last.booster_.feature_importance(importance_type="gain").astype(np.float64)
        else:
            return None
        shares.append(raw / raw.sum() if raw.sum() > 0 else raw)
    return pd.Series(np.mean(shares, axis=0), index=names).sort_values(ascending=False)


def predict(
    models: list[Pipeline],
    member: FunctionalsMember,
    clips: list[np.ndarray],
    sample_rate: int,
    n_classes: int,
    population: speakers.Statistics | None = None,
    speaker_clips: list[np.ndarray] | None = None,
    threads: int = 0,
    weights_dir: str | None = None,
) -> np.ndarray:
    """Probabilities ``(len(clips), n_classes)`` of waveforms (each ``(samples,)`` at ``sample_rate``
    Hz, silence trimmed): the mean over a member's fold pipelines ``models`` of their
    ``predict_proba`` on the clips' functionals. A speaker-normalised member (``population`` given)
    normalises them with the functionals of ``speaker_clips`` (other clips of the same speaker) when
    given, else with the training ``population``'s statistics. ``threads``: ``[runtime].threads``,
    the threads an openSMILE set is extracted on (:func:`ensemble.members.functionals.workers`);
    ``weights_dir``: ``[paths].weights_dir``, an embedding set's weights folder.

    Raises:
        FunctionalsError: see :func:`ensemble.members.functionals.extract`.
    """
    picked = columns(member, weights_dir)
    x = functionals.extract(clips, sample_rate, member.set, threads, weights_dir)[:, picked]
    if population is not None:
        reference = None if speaker_clips is None else functionals.extract(speaker_clips, sample_rate, member.set, threads, weights_dir)[:, picked]
        x = speakers.standardise_one(x, reference, population)
    x = np.asarray(x, dtype=np.float64)
    return np.mean([class_proba(model, x, n_classes) for model in models], axis=0)


def load_pipeline(run: Path) -> Pipeline:
    """A functionals run's fitted pipeline (``model.joblib``, written by :func:`train_fold`).

    Raises:
        TabularError: the file is missing or does not load.
    """
    try:
        return joblib.load(run / MODEL)
    except (OSError, EOFError, ValueError, AttributeError, ImportError) as err:
        raise TabularError(f"{run / MODEL} does not load ({err!r}); re-train the run with `ens train --force`.") from err


TOP_FUNCTIONALS = 15
"""Functionals listed per member in the report."""


@dataclass
class TabularMember:
    """A functionals member loaded for prediction (:class:`ensemble.members.kind.Loaded`).

    Attributes:
        made_with: the recipe its runs were trained with. models: its fold pipelines of every seed.
        population: the training population's statistics when it was speaker-normalised, else None.
        spec: its ``[[functionals]]`` settings. n_classes: output columns.
    """

    made_with: Recipe
    models: list[Pipeline]
    population: speakers.Statistics | None
    spec: FunctionalsMember
    n_classes: int
    duration = None
    """It takes a whole recording."""

    def predict(self, clips, speaker_clips, shared: dict, batch_size: int) -> np.ndarray:
        """:func:`predict` with its pipelines, on ``made_with``'s ``[runtime].threads`` and ``[paths].weights_dir``."""
        r = self.made_with
        return predict(
            self.models, self.spec, clips, r.features.sample_rate, self.n_classes, self.population, speaker_clips, r.runtime.threads, r.paths.weights_dir
        )


class TabularKind(Kind):
    """Entries that are ``[[functionals]]`` members (and their pseudo rounds)."""

    name = "functionals"

    def owns(self, recipe: Recipe, entry: Entry) -> bool:
        return recipe.functionals_member(str(entry)) is not None

    def train(self, session: Session, entries: list[str]) -> Iterator[Outcome]:
        """Each member's table (:func:`load_table`), then :func:`train_fold` per fold, in this process."""
        recipe = session.recipe
        for name in entries:
            member = recipe.functionals_member(name)
            table = load_table(recipe, session.split(), member, progress=session.progress)
            for k in session.folds:
                report, skipped = train_fold(recipe, session.split(), table, member, k, force=session.force, pseudo=session.pseudo(name, k))
                yield Outcome(name, k, report, skipped)

    def stages(self, recipe: Recipe, competition, todo: dict[str, list[int]]) -> list[Stage]:
        """Extracting each functionals set the entries use (the fits are not estimated: seconds each
        with logistic regression or an SVM on RAVDESS; a LightGBM ``tune`` grid can take many minutes)."""
        sets = dict.fromkeys(recipe.functionals_member(e).set for e, folds in todo.items() if folds)
        cache = functionals.FunctionalsCache(competition.root / ".ens_cache", recipe.runtime.threads, recipe.paths.weights_dir)
        paths = competition.audio_paths(competition.train) + competition.audio_paths(competition.test)
        f = recipe.features
        return [vector_stage(f"functionals {name}", cache.cache(name), paths, f.sample_rate, f.trim_db) for name in sets]

    def detail(self, metrics: dict) -> str:
        return f"{metrics['set']}, {metrics['model']}"

    def trained(self, run: Path) -> bool:
        return (run / MODEL).is_file()

    def load(self, recipe: Recipe, member: runs.Member, made_with: Recipe, trained, classes: list[str], device, exported) -> TabularMember:
        """Its fold pipelines (``model.joblib``); ``exported`` changes nothing: pipelines are not exported.

        Raises:
            TabularError: a pipeline or the speaker statistics do not load.
        """
        entry, fold, run = trained[0]
        config = runs.read_config(run, member.fix(entry, fold))
        population = None
        if made_with.speakers.norm == "speaker":
            try:
                population = speakers.load_statistics(run / runs.POPULATION)
            except (OSError, KeyError, ValueError) as err:
                raise TabularError(
                    f"{run / runs.POPULATION} cannot be read ({err}); the speaker-normalised run is damaged: {member.fix(entry, fold)}."
                ) from err
        pipelines = [load_pipeline(run) for _, _, run in trained]
        return TabularMember(made_with, pipelines, population, FunctionalsMember(**config["member"]), len(classes))

    def report(self, recipe: Recipe, entries: list[str]) -> list[Section]:
        """ "Top functionals": the :data:`TOP_FUNCTIONALS` functionals of each finished member with per-feature
        weights (:func:`importance` over its fold pipelines; an encoder set's shares summed per hidden
        state), one table per member side by side; a note for the others."""
        tables, notes = [], []
        weights_dir = recipe.paths.weights_dir
        for name in entries:
            member = recipe.functionals_member(name)
            folds = [runs.run_dir(recipe, name, k) for k in range(recipe.folds.n_splits)]
            if not all(runs.is_finished(run) for run in folds):
                continue
            column_names = list(np.asarray(functionals.names(member.set, weights_dir))[columns(member, weights_dir)])
            shares = importance([load_pipeline(run) for run in folds], column_names)
            if shares is None:
                notes.append(f"{name} ({member.model}): an RBF SVM has no per-feature weights.")
                continue
            if functionals.is_encoder(member.set):  # single dimensions mean nothing: which hidden states carry the weight
                by_state = shares.groupby(encoders.layer_of(list(shares.index))).sum().sort_values(ascending=False)
                frame = pd.DataFrame({"hidden state": by_state.index, "share": by_state.to_numpy()})
            else:
                head = shares.head(TOP_FUNCTIONALS)
                frame = pd.DataFrame({"functional": head.index, "share": head.to_numpy()})
            tables.append((f"{name} ({member.set}, {member.model})", frame))
        if not tables and not notes:
            return [Section("Top functionals", ["No finished functionals member."])]
        lead = (
            "Share of each member's total importance (logistic regression: mean |coefficient| over classes on standardised "
            "functionals; LightGBM: split gain), averaged over its folds."
        )
        return [Section("Top functionals", [lead, *notes], tables)]
