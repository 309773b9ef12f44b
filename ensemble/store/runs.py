"""The run store: where runs live, what their files are called, what makes two runs the same, and
their probability tables.

Layout, under a recipe's ``<runs_dir>/<recipe name>/`` (:func:`root`):

- ``<entry>/fold<K>/``: one run (:func:`run_dir`), ``entry`` a ``backbones`` entry (``name`` or
  ``name@S``): ``config.json`` (its identity, :func:`run_config`), ``log.csv`` (one row per
  epoch), ``oof.csv`` (``id, fold`` and one probability column per class, for the fold's
  validation clips), ``test.csv`` (``id`` and one column per class, every test clip),
  ``model.safetensors`` (the selected weights), ``checkpoint.pt`` while unfinished, and
  ``metrics.json``, written last: a run is finished when it has one (:func:`is_finished`).
- ``skipped.csv``: the clips training left out because they cannot be loaded.
- ``blend/``: ``leaderboard.csv``, ``weights.json``, ``oof.csv`` (the chosen method's
  cross-validated OOF) and, for a multilabel task, ``thresholds.json``.
- ``report.html``: ``ens report``'s page.

A **member** (:class:`Member`) is anything that wrote OOF and test tables for every fold of the
same competition and folds: a backbone of this recipe (all its seeds), or of another recipe in
the same ``runs_dir`` (``"other_recipe:regnetx_002"``, :func:`members`). Its tables are read by
one strict reader (:func:`read_member`) that blend, predict and report share; reading them needs
no torch and no feature cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.entry import Entry
from ..core.errors import EnsError, Param
from ..core.recipe import Recipe, from_dict
from ..core.tasks import Task
from . import competition as comp_mod

CONFIG, METRICS, LOG, OOF, TEST, MODEL, CHECKPOINT = "config.json", "metrics.json", "log.csv", "oof.csv", "test.csv", "model.safetensors", "checkpoint.pt"
SKIPPED, REPORT = "skipped.csv", "report.html"
POPULATION = "speaker_population.npz"  # a speaker-normalised run's training population statistics (mean, std)
BLEND, LEADERBOARD, WEIGHTS, THRESHOLDS = "blend", "leaderboard.csv", "weights.json", "thresholds.json"
SKIPPED_COLUMNS = ["table", "id", "path", "error"]


class RunError(EnsError, ValueError):
    """A run's files cannot be used: missing, damaged, or made on other folds, ids or classes than the competition's."""


class RunConflictError(EnsError, RuntimeError):
    """A finished run (or a checkpoint to resume) exists with a different configuration; it is never overwritten silently."""


def root(recipe: Recipe) -> Path:
    """``<runs_dir>/<recipe name>/``: everything a recipe's training and blending writes, but the submission."""
    return Path(recipe.paths.runs_dir) / recipe.name


def run_dir(recipe: Recipe, entry: str, fold: int) -> Path:
    """``<runs_dir>/<recipe>/<entry>/fold<K>/`` for a ``backbones`` entry (``name`` or ``name@S``)."""
    return root(recipe) / entry / f"fold{fold}"


def blend_dir(recipe: Recipe) -> Path:
    """``<runs_dir>/<recipe>/blend/``: the leaderboard, weights and OOF of the last ``ens blend``."""
    return root(recipe) / BLEND


def is_finished(run: Path) -> bool:
    """A run folder is finished when it holds ``metrics.json`` (every other file is written before it)."""
    return (run / METRICS).is_file()


def folds_hash(folds: pd.DataFrame) -> str:
    """SHA-1 of a fold assignment (``id, fold``): the runs of one blend must share it."""
    return hashlib.sha1(folds.to_csv(index=False).encode()).hexdigest()


# ---------------------------------------------------------------- identity

# a functionals run keeps its own member, a round its labels, a backbone its own [by_backbone] settings (Recipe.for_backbone),
# a fine-tuned encoder's run its [finetune] settings (ensemble.members.finetune)
_NOT_TRAINING = ("name", "backbones", "blend", "runtime", "paths", "functionals", "pseudo", "by_backbone", "finetune")
_RUNTIME = {"competition": ("dir", "audio_root")}
"""Settings that place a recipe on a machine and change no number a model computes, besides the
``[runtime]`` and ``[paths]`` sections: where the competition folder and its audio are (the run
identity keeps the classes and the fold assignment's hash instead)."""


def _training_settings(recipe: Recipe) -> dict:
    """The recipe's settings that shape a run's numbers: not its name, backbone list, blend, or its
    machine settings (``[runtime]``, ``[paths]``, :data:`_RUNTIME`)."""
    settings = recipe.to_dict()
    for key in _NOT_TRAINING:
        settings.pop(key)
    for section, keys in _RUNTIME.items():
        for key in keys:
            settings[section].pop(key)
    return settings


def run_config(recipe: Recipe, classes: list[str], folds_digest: str, entry: str, fold: int, member: dict | None = None, pseudo: dict | None = None) -> dict:
    """What a run is defined by (``config.json``); a finished run with another config is a conflict.
    ``entry`` is a ``backbones`` entry: the settings are :meth:`Recipe.for_backbone`'s (its seed for
    ``name@S``); ``folds_digest`` is :func:`folds_hash` of the folds it trains on.

    Renaming a recipe, editing its backbone list, its output folders or its ``[blend]``, moving the
    competition folder, or training on another device or from another weights folder leaves finished
    runs valid; every other setting (features, augmentation, training, precision, seed) is part of it.
    A functionals member's run adds its ``member`` settings (its ``[[functionals]]`` table); the
    other members of that list are part of no run's identity. A pseudo-labelling round's run adds
    its labels' ``pseudo`` identity (:meth:`ensemble.members.pseudo.PseudoLabels.identity`: round, threshold,
    count, digest, teachers), so new labels make it a run of another configuration.
    The result is as ``config.json`` holds it (lists, not tuples).
    """
    config = {"recipe": _training_settings(recipe.for_backbone(entry)), "backbone": entry, "fold": fold, "classes": classes, "folds_hash": folds_digest}
    if member is not None:
        config["member"] = member
    if pseudo is not None:
        config["pseudo"] = pseudo
    return json.loads(json.dumps(config))


def as_today(stored: dict, source: Path) -> dict:
    """A run configuration ``stored`` by an earlier ens (in ``config.json`` or ``checkpoint.pt``,
    named by ``source``) as :func:`run_config` makes it today: its recipe is re-read through
    today's :class:`Recipe` (and a functionals run's member through today's
    :class:`~ensemble.core.recipe.FunctionalsMember`), so settings added since take their defaults and
    settings no longer part of a run's identity drop out."""
    today = {**stored, "recipe": _training_settings(from_dict(stored["recipe"], str(source)))}
    if "member" in stored:  # a functionals run: its member read through today's FunctionalsMember too
        today["member"] = dataclasses.asdict(from_dict({"functionals": [stored["member"]]}, str(source)).functionals[0])
    return today


def finished_metrics(run: Path, config: dict) -> dict | None:
    """The ``metrics.json`` of the finished run in folder ``run`` whose configuration must be
    ``config`` (:func:`run_config`), or None when it is unfinished.

    Raises:
        RunConflictError: the finished run was made with another configuration.
    """
    if not is_finished(run):
        return None
    if as_today(json.loads((run / CONFIG).read_text()), run / CONFIG) != config:
        raise RunConflictError(
            f"{run} holds a finished run with a different configuration; pass ", Param("force", True), " to overwrite it, or give the recipe another name."
        )
    return json.loads((run / METRICS).read_text())


def read_config(run: Path, fix: str) -> dict:
    """The ``config.json`` of a run.

    Raises:
        RunError: it is missing or not a JSON object with ``folds_hash``, ``classes`` and ``recipe``;
            the message ends with ``fix``.
    """
    try:
        config = json.loads((run / CONFIG).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunError(f"{run / CONFIG} cannot be read ({err}); the run is damaged: {fix}.") from err
    if not isinstance(config, dict) or not {"folds_hash", "classes", "recipe"} <= set(config):
        raise RunError(f"{run / CONFIG} has no folds_hash, classes and recipe; the run is damaged: {fix}.")
    return config


def stored_recipe(run: Path, fix: str) -> Recipe:
    """The recipe a run was trained with, as its ``config.json`` records it (its training settings;
    name, folders and blend take their defaults).

    Raises:
        RunError: see :func:`read_config`.
    """
    return from_dict(read_config(run, fix)["recipe"], str(run / CONFIG))


# ---------------------------------------------------------------- tables


def proba_frame(ids, proba: np.ndarray, classes: list[str], **extra) -> pd.DataFrame:
    """A probability table as runs and blends write it: ``id``, then the ``extra`` columns, then
    one column per class of ``proba`` ``(rows, classes)``."""
    frame = pd.DataFrame(proba, columns=classes)
    frame.insert(0, "id", list(ids))
    for pos, (name, values) in enumerate(extra.items(), start=1):
        frame.insert(pos, name, values)
    return frame


def _table(path: Path, keys: list[str], classes: list[str], fix: str) -> tuple[pd.DataFrame, np.ndarray]:
    """A run's ``oof.csv`` or ``test.csv``, every cell a string (:func:`ensemble.store.competition.read_csv`), and each row's line number.

    Raises:
        RunError: the file is missing or not a readable CSV, or its columns are not the ``keys``
            and exactly the ``classes`` (in any order: columns are matched by name).
    """
    try:
        frame, lines = comp_mod.read_csv(path)
    except comp_mod.CompetitionError as err:
        raise RunError(f"{err} The run is damaged; {fix}.") from err
    missing = [c for c in [*keys, *classes] if c not in frame.columns]
    extra = [c for c in frame.columns if c not in keys and c not in classes]
    if missing or extra:
        raise RunError(
            f"{path} has columns {list(frame.columns)}: it lacks {missing} and has unknown {extra}, where a run table holds "
            f"{keys} and one column per class of the competition, {classes}; {fix}."
        )
    return frame, lines


def _number(cell: str) -> float:
    """``float(cell)``, or NaN for a cell that is not a number (refused by :func:`_probabilities`)."""
    try:
        return float(cell)
    except ValueError:
        return np.nan


def _probabilities(frame: pd.DataFrame, lines: np.ndarray, classes: list[str], task: Task, path: Path, fix: str) -> np.ndarray:
    """The ``classes`` columns of a run table as float64 ``(rows, classes)``, in ``classes`` order
    whatever the file's column order (the realignment is by column name, exact).

    Raises:
        RunError: naming the file, line and class, a cell that is not a number, is NaN or
            infinite, or lies outside [0, 1]; for a task whose rows sum to 1 (multiclass), a row
            whose probabilities do not, within 1e-3 (:meth:`ensemble.core.tasks.Task.unnormalised_row`).
    """
    cells = frame[classes].to_numpy(dtype=object)
    try:
        values = cells.astype(np.float64)
    except ValueError:
        values = np.array([[_number(cell) for cell in row] for row in cells], dtype=np.float64).reshape(cells.shape)
    problems = ~np.isfinite(values) | (values < 0) | (values > 1)
    if problems.any():
        row, col = (int(k) for k in np.argwhere(problems)[0])
        raise RunError(f"{path}: line {lines[row]}, class {classes[col]!r} holds {cells[row, col]!r}, not a probability in [0, 1]; {fix}.")
    if (row := task.unnormalised_row(values)) is not None:
        raise RunError(
            f"{path}: the probabilities in line {lines[row]} sum to {values[row].sum():.6g}, not 1 (a multiclass run writes softmax outputs); {fix}."
        )
    return values


def _rows(frame: pd.DataFrame, lines: np.ndarray, expected: np.ndarray, where: str, path: Path, fix: str) -> np.ndarray:
    """Positions in ``expected`` of the ``id`` column of a run table, which must list exactly the
    ids ``expected`` (those of ``where``), each once.

    Raises:
        RunError: naming the file and line, an id that repeats or is not one of ``where``'s, or ids of ``where`` it lacks.
    """
    ids = frame["id"]
    rows = pd.Index(expected).get_indexer(ids)
    repeated, unknown = np.flatnonzero(ids.duplicated().to_numpy()), np.flatnonzero(rows < 0)
    if len(repeated):
        raise RunError(f"{path}: id {ids.iloc[repeated[0]]!r} in line {lines[repeated[0]]} appears more than once; {fix}.")
    if len(unknown):
        raise RunError(f"{path}: id {ids.iloc[unknown[0]]!r} in line {lines[unknown[0]]} is not one of the ids of {where}; {fix}.")
    if len(rows) != len(expected):
        lacking = sorted(set(expected) - set(ids))
        raise RunError(f"{path} lacks {len(lacking)} id(s) of {where}, e.g. {lacking[:3]}; {fix}.")
    return rows


def read_oof(path: Path, split, fold: int | None, fix: str) -> tuple[np.ndarray, np.ndarray]:
    """The rows (positions in ``split``'s training table) and probabilities ``(rows, classes)`` of an
    OOF table: a run's ``oof.csv`` (``fold`` given: exactly the ids of that fold, each row marked
    with it) or a blend's (``fold`` None: exactly every training id).

    ``split`` is a :class:`ensemble.store.split.Split` (competition, folds, training rows).

    Raises:
        RunError: see :func:`_table`, :func:`_rows` and :func:`_probabilities`; a row of another fold.
    """
    comp = split.competition
    classes, train_ids = comp.classes, comp.train[comp.config.id_col].to_numpy()
    folds_path = comp.root / comp_mod.FOLDS
    frame, lines = _table(path, ["id"] if fold is None else ["id", "fold"], classes, fix)
    if fold is None:
        rows = _rows(frame, lines, train_ids, comp.root / comp_mod.TRAIN, path, fix)
    else:
        fold_rows = np.flatnonzero(split.folds["fold"].to_numpy() == fold)
        rows = fold_rows[_rows(frame, lines, train_ids[fold_rows], f"fold {fold} in {folds_path}", path, fix)]
        other = np.flatnonzero((frame["fold"].str.strip() != str(fold)).to_numpy())
        if len(other):
            raise RunError(f"{path}: line {lines[other[0]]} is of fold {frame['fold'].iloc[other[0]]!r}, the run of fold {fold}; {fix}.")
    return rows, _probabilities(frame, lines, classes, comp.task, path, fix)


def read_test(path: Path, split, fix: str) -> np.ndarray:
    """A run's ``test.csv`` as ``(n_test, classes)`` in ``test.csv`` order (rows matched by id).

    Raises:
        RunError: see :func:`_table`, :func:`_rows` and :func:`_probabilities`.
    """
    comp = split.competition
    test_ids = comp.test[comp.config.id_col].to_numpy()
    frame, lines = _table(path, ["id"], comp.classes, fix)
    order = np.argsort(_rows(frame, lines, test_ids, comp.root / comp_mod.TEST, path, fix))
    return _probabilities(frame, lines, comp.classes, comp.task, path, fix)[order]


# ---------------------------------------------------------------- members


@dataclass(frozen=True)
class Member:
    """One blend member: the runs of one model name in one recipe's run store, the mean over its seeds.

    Attributes:
        name: the member's name in the leaderboard and ``weights.json``: the timm model name for
            a backbone of the blending recipe, ``"<recipe>:<name>"`` for one of another recipe.
        store: the run store it lives in (``<runs_dir>/<recipe>``).
        entries: its run folders' names in ``store``, one per seed (``name``, ``name@S``).
        n_splits: its folds.
    """

    name: str
    store: Path
    entries: tuple[str, ...]
    n_splits: int

    def runs(self, entry: str) -> list[Path]:
        """The run folders of ``entry``, fold by fold."""
        return [self.store / entry / f"fold{k}" for k in range(self.n_splits)]

    def fix(self, entry: str, fold: int) -> str:
        """How to re-make one of its runs (for error messages)."""
        recipe = "" if ":" not in self.name else f" --recipe <the recipe of {self.store}>"
        return f"re-train it with `ens train{recipe} --backbone {entry} --fold {fold} --force`"

    def unfinished(self) -> str | None:
        """Why the member cannot be blended yet (its first unfinished run), or None when every fold of every seed is finished."""
        for entry in self.entries:
            for fold, run in enumerate(self.runs(entry)):
                if not is_finished(run):
                    return f"{run} is not finished; run `ens train --backbone {entry} --fold {fold}`" + (
                        "" if ":" not in self.name else f" with the recipe of {self.store}"
                    )
        return None

    def seeds(self) -> list[int]:
        """The ``[train].seed`` of each entry, from its first run's ``config.json``.

        Raises:
            RunError: an unreadable ``config.json``.
        """
        return [int(read_config(self.runs(e)[0], self.fix(e, 0))["recipe"]["train"]["seed"]) for e in self.entries]


def members(recipe: Recipe) -> list[Member]:
    """The blend members of ``recipe``: ``[blend].members`` when it lists any, else every model of
    ``backbones`` (:meth:`Recipe.members`: the entries of one model name, one per seed, are one member).

    A ``[blend].members`` item is a model name of this recipe's ``backbones`` (all its seeds), or
    ``"<recipe>:<name>"``: the runs of model ``name`` (folders ``name`` and ``name@S``) of the
    recipe named ``<recipe>`` in the same ``runs_dir``, whatever its features, clip length or kind.

    Raises:
        RunError: an item that names no model of ``backbones``, or another recipe's model with no run folder.
        RecipeError: a malformed ``backbones`` entry.
    """
    own = recipe.members()
    n_splits, out = recipe.folds.n_splits, []
    for item in recipe.blend.members or list(own):
        other, colon, name = item.rpartition(":")
        if not colon:
            if item not in own:
                raise RunError(
                    f"[blend].members item {item!r} is no model of backbones {recipe.backbones}; name one of them, or <recipe>:<model> for another recipe's."
                )
            out.append(Member(item, root(recipe), tuple(own[item]), n_splits))
            continue
        store = Path(recipe.paths.runs_dir) / other
        entries = sorted(p.name for p in store.glob(f"{name}*") if p.is_dir() and Entry.parse(p.name).member == name) if store.is_dir() else []
        if not entries:
            raise RunError(f"[blend].members item {item!r}: {store} has no run folder of {name!r}; train it with that recipe first.")
        out.append(Member(item, store, tuple(entries), n_splits))
    return out


def read_member(member: Member, split) -> tuple[np.ndarray, np.ndarray]:
    """A finished member's OOF ``(n_train, classes)`` (each training clip from the fold model that
    did not train on it) and test probabilities ``(n_test, classes)`` (the mean over folds), each
    the mean over its seeds. ``split`` is a :class:`ensemble.store.split.Split`.

    Rows are matched by id and class columns by name, so a run table in another row or column
    order is realigned exactly; anything else that does not fit the competition is refused.

    Raises:
        RunError: naming the run (file, line) and the fix: a fold is unfinished; its ``config.json``
            is unreadable or records another fold assignment (``folds_hash``) or other classes
            than ``split``; its ``oof.csv`` / ``test.csv`` is missing or unreadable, has missing or
            extra class columns, invalid probabilities, repeated, unknown or missing ids, or an
            ``oof.csv`` row of another fold.
    """
    comp = split.competition
    if (reason := member.unfinished()) is not None:
        raise RunError(reason)
    oofs, tests = [], []
    for entry in member.entries:
        oof = np.full((len(comp.train), len(comp.classes)), np.nan)
        test = np.zeros((len(comp.test), len(comp.classes)))
        for fold in range(member.n_splits):
            rows, proba, fold_test = read_fold(member, split, entry, fold)
            oof[rows] = proba
            test += fold_test
        oofs.append(oof)
        tests.append(test / member.n_splits)
    return np.mean(oofs, axis=0), np.mean(tests, axis=0)


def read_fold(member: Member, split, entry: str, fold: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One finished run of ``member`` (``entry``, ``fold``): the positions of its OOF rows in the
    training table ``(n_fold,)``, their probabilities ``(n_fold, classes)`` and its test probabilities
    ``(n_test, classes)``, after the checks :func:`read_member` lists.

    Raises:
        RunError: see :func:`read_member`.
    """
    comp = split.competition
    run, fix = member.runs(entry)[fold], member.fix(entry, fold)
    if not is_finished(run):
        raise RunError(f"{run} is not finished; {fix}")
    config = read_config(run, fix)
    if config["folds_hash"] != split.folds_hash:
        raise RunError(f"{run} was trained on another fold assignment than {comp.root / comp_mod.FOLDS}; {fix}, or restore the folds.csv it was trained on.")
    if config["classes"] != comp.classes:
        raise RunError(f"{run} was trained with classes {config['classes']}, the competition has {comp.classes} (names and order); {fix}.")
    rows, proba = read_oof(run / OOF, split, fold, fix)
    return rows, proba, read_test(run / TEST, split, fix)


def read_skipped(recipe: Recipe) -> pd.DataFrame:
    """The clips the recipe's training left out (``skipped.csv``: ``table, id, path, error``), empty when there is none."""
    path = root(recipe) / SKIPPED
    return pd.read_csv(path, dtype=str, keep_default_na=False) if path.is_file() else pd.DataFrame(columns=SKIPPED_COLUMNS)
