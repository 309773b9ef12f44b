"""``ens init``: a commented recipe written from any Kaggle-style competition folder.

:func:`inspect` reads the folder (``train.csv``, ``test.csv``, ``sample_submission.csv``,
``folds.csv`` if any; ``solution.csv`` is only noted, never opened) and decides, each decision with
the reason written beside it in the recipe:

- the id, path, label and group columns (:func:`id_column`, :func:`path_column`,
  :func:`label_column`, :func:`group_column`), the classes and the task (multilabel when labels
  hold several space-separated class names that recombine, :func:`task_of`);
- the folds (``folds.csv``'s, or 5 lowered to what the groups and classes allow);
- the sample rate and clip duration from the headers of a sample of clips (``soundfile.info``,
  no audio decoded; :data:`AUDIO_SAMPLE`);
- whether the clips are speech (:mod:`ensemble.members.speech`: YAMNet's AudioSet "Speech" tag on a
  sample of training clips), and speaker settings on only then, and only where the groups are
  large enough (:func:`ensemble.members.guards.group_problem`);
- the members: the Whisper base encoder for speech (the default RAVDESS recipe's member, chosen
  there on cross-validated OOF), EfficientAT mn04's AudioSet embedding otherwise (AudioSet mAP
  0.432, ``../shared/weights/README.md``), librosa's ``ens_basic`` when those weights are absent;
  each a logistic regression with ``tune = true`` (its ``C`` chosen per fold by an inner grouped
  CV, :data:`ensemble.members.tabular.GRIDS`), never a value tuned on another corpus. A multilabel task
  (which functionals members do not serve) gets the AudioSet CNN mn04 fine-tuned instead.

What it cannot tell (two candidate label or group columns, a speech share between
:data:`ensemble.members.speech.UNSURE`'s bounds, labels that may or may not be several names) it asks
through ``ask`` when given (``ens init`` on a terminal), else it takes the default and marks the
line ``ens init could not tell``. :func:`write` writes the recipe, checks that it loads
(:func:`ensemble.core.recipe.load`) and that its competition loads (:func:`ensemble.store.competition.load`),
and adds the time plan of training it on this machine (:func:`ensemble.plan.estimate`).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from .core import atomic, encoder_sets
from .core import recipe as recipe_mod
from .core.errors import EnsError, Param
from .core.weights import weights_dir as find_weights
from .inputs import decoder_noise
from .members import guards, speech
from .store import competition as comp_mod

Ask = Callable[[str, list[str], str], str]
"""``ask(question, choices, default) -> answer``: one of ``choices``."""

ID_HINTS = ("id", "clip_id", "file_id", "fname", "filename", "file", "row_id", "recording_id")
LABEL_HINTS = ("label", "labels", "target", "class", "category", "primary_label", "emotion", "tags")
GROUP_HINTS = (
    "group",
    "speaker",
    "speaker_id",
    "spk",
    "spk_id",
    "actor",
    "subject",
    "participant",
    "client_id",
    "session",
    "src_file",
    "source",
    "source_id",
    "recording",
    "author",
    "user",
)
"""Column names read as groups (speakers or source recordings), in order of preference: a column
of another name is never taken for one (emotion, gender, intensity columns also repeat)."""
AUDIO_SAMPLE = 200
"""Clips whose headers are read for rates and durations, spread evenly over train and test."""
FOLDS = 5
DURATION_QUANTILE = 0.9
"""The clip duration covers this share of the sampled clips whole (before silence trimming)."""
DURATION_STEP, MAX_DURATION = 0.5, 10.0
WHISPER, MN04, BASIC = "whisper_base", "mn04_embedding", "ens_basic"
MEMBER_RATES = {WHISPER: 16000, MN04: 32000, BASIC: 16000}
"""The rate each member's model hears (Whisper's and YAMNet's 16 kHz, EfficientAT's 32 kHz): the
recipe loads audio at this rate, or at the clips' own rate where that is lower."""


class InitError(EnsError, ValueError):
    """A competition folder ``ens init`` cannot read; the message names the file, the column and the fix."""


@dataclass
class Choice:
    """One decision: its value, the reason (the recipe's comment), and whether ens could not tell."""

    value: object
    why: str
    unsure: bool = False


@dataclass
class Findings:
    """What :func:`inspect` decided about a folder; each :class:`Choice` is one recipe line."""

    folder: Path
    choices: dict[str, Choice] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    speech: speech.SpeechTags | None = None

    def value(self, key: str):
        """The decided value of ``key``."""
        return self.choices[key].value

    def set(self, key: str, value, why: str, unsure: bool = False) -> None:
        """Record a decision."""
        self.choices[key] = Choice(value, why, unsure)

    @property
    def unsure(self) -> list[str]:
        """The keys ens could not tell (asked, or marked in the recipe)."""
        return [key for key, choice in self.choices.items() if choice.unsure]


def _decide(findings: Findings, key: str, question: str, choices: list[str], default: str, why: str, ask: Ask | None) -> str:
    """Ask ``question`` when ``ask`` is given (the answer recorded as the user's), else take ``default``
    and mark it unsure; records the decision of ``key``."""
    if ask is not None:
        answer = ask(question, choices, default)
        findings.set(key, answer, f"{why}; asked: {answer}")
        return answer
    findings.set(key, default, f"ens init could not tell: {why}; took {default!r} (other choices: {[c for c in choices if c != default]})", True)
    return default


def _tables(root: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    if not root.is_dir():
        raise InitError(f"{root} is not a folder; give the competition folder (train.csv, test.csv, sample_submission.csv and the audio).")
    frames = []
    for name in (comp_mod.TRAIN, comp_mod.TEST, comp_mod.SAMPLE):
        if not (root / name).is_file():
            raise InitError(f"{root / name} does not exist: ens init reads a Kaggle-style folder of {comp_mod.TRAIN}, {comp_mod.TEST} and {comp_mod.SAMPLE}.")
        frame, _ = comp_mod.read_csv(root / name)
        if name != comp_mod.SAMPLE and not len(frame):
            raise InitError(f"{root / name} has no rows; a competition needs clips in it.")
        frames.append(frame)
    return frames[0], frames[1], frames[2]


def id_column(train: pd.DataFrame, test: pd.DataFrame, sample: pd.DataFrame, root: Path) -> Choice:
    """The id column: ``sample_submission.csv``'s first column when ``train.csv`` and ``test.csv``
    have it, else a column of all three whose test values are the sample's ids.

    Raises:
        InitError: no such column, naming the tables' columns.
    """
    first = sample.columns[0]
    if first in train.columns and first in test.columns:
        return Choice(first, f"the first column of {comp_mod.SAMPLE}, also in {comp_mod.TRAIN} and {comp_mod.TEST}")
    shared = [c for c in sample.columns if c in train.columns and c in test.columns and set(test[c]) == set(sample[c])]
    if shared:
        return Choice(shared[0], f"in all three tables, with the same ids in {comp_mod.TEST} and {comp_mod.SAMPLE}")
    raise InitError(
        f"{root / comp_mod.SAMPLE}: none of its columns {list(sample.columns)} is a column of {comp_mod.TRAIN} ({list(train.columns)}) "
        f"and {comp_mod.TEST} ({list(test.columns)}) holding the test ids; give the three tables one id column of one name."
    )


def _resolves(values: pd.Series, base: Path) -> bool:
    picked = [v for v in values if v.strip()][:5]
    return bool(picked) and all((Path(v) if Path(v).is_absolute() else base / v).is_file() for v in picked)


def path_column(train: pd.DataFrame, test: pd.DataFrame, root: Path, id_col: str) -> tuple[Choice, str]:
    """The column of ``train.csv`` and ``test.csv`` naming audio files that exist (its first five
    values in each), relative to the folder, or else to one folder under it found by the first
    file's name (then returned as the audio root); another column before the id column.

    Returns:
        the path column's choice and the audio root (``""``: the folder itself).

    Raises:
        InitError: no column names existing files under one root, naming a column, a value and where it was looked for.
    """
    columns = [c for c in train.columns if c in test.columns and c != id_col] + [id_col]
    for column in columns:
        if _resolves(train[column], root) and _resolves(test[column], root):
            return Choice(column, f"names files that exist under {root} (checked the first 5 of {comp_mod.TRAIN} and {comp_mod.TEST})"), ""
    for column in columns:
        value = next((v for v in train[column] if v.strip()), "")
        if not value or Path(value).is_absolute() or not Path(value).suffix:
            continue
        found = next(root.rglob(Path(value).name), None)
        if found is None or not str(found).endswith(value):
            continue
        base = Path(str(found)[: -len(value)].rstrip(os.sep) or os.sep)
        if _resolves(train[column], base) and _resolves(test[column], base):
            return Choice(column, f"names files that exist under {base} ([competition].audio_root)"), str(base)
    column = columns[0]
    value = next((v for v in train[column] if v.strip()), "")
    raise InitError(
        f"{root / comp_mod.TRAIN}: no column names audio files that exist (tried {columns}; e.g. column {column!r} holds {value!r}, "
        f"which is not a file under {root}, nor under one folder of it for both {comp_mod.TRAIN} and {comp_mod.TEST}). Give both tables "
        "a column of file paths relative to the folder (such as audio/clip001.wav)."
    )


def _tokens(values) -> list[list[str]]:
    return [str(v).split() for v in values]


def label_column(train: pd.DataFrame, test: pd.DataFrame, sample: pd.DataFrame, used: tuple[str, str], root: Path, findings: Findings, ask: Ask | None) -> str:
    """The label column (recorded in ``findings``): the sample submission's one label column; or, with
    one probability column per class, a training column whose names are those classes; else the one
    column of ``train.csv`` that ``test.csv`` lacks, a hinted name (:data:`LABEL_HINTS`) among several (asked).

    Raises:
        InitError: ``train.csv`` has no column that ``test.csv`` lacks.
    """
    id_col = used[0]
    targets = [c for c in sample.columns if c != id_col]
    pool = [c for c in train.columns if c not in used and c not in test.columns]
    if len(targets) == 1 and targets[0] in train.columns:
        findings.set("label_col", targets[0], f"the label column of {comp_mod.SAMPLE}")
        return targets[0]
    if len(targets) > 1:
        for column in pool:
            if all(set(t) <= set(targets) for t in _tokens(train[column])):
                findings.set("label_col", column, f"its names are the class columns of {comp_mod.SAMPLE}")
                return column
    if not pool:
        raise InitError(
            f"{root / comp_mod.TRAIN}: no label column: every column besides {list(used)} is also in {comp_mod.TEST} "
            f"(columns {list(train.columns)}); the labels are the column only the training table has."
        )
    if len(pool) == 1:
        findings.set("label_col", pool[0], f"the only column of {comp_mod.TRAIN} that {comp_mod.TEST} lacks")
        return pool[0]
    hinted = [c for c in pool if c.lower() in LABEL_HINTS]
    default = hinted[0] if hinted else pool[0]
    return _decide(
        findings,
        "label_col",
        f"Which column of {comp_mod.TRAIN} holds the labels?",
        pool,
        default,
        f"{len(pool)} columns of {comp_mod.TRAIN} are not in {comp_mod.TEST}",
        ask,
    )


def task_of(labels: pd.Series, findings: Findings, ask: Ask | None, path: Path, column: str) -> str:
    """``multiclass`` or ``multilabel`` (recorded in ``findings``): multilabel when some labels hold
    several space-separated names and every such name also appears in another label (names that
    recombine), multiclass when no label has a space; in between, asked.

    Raises:
        InitError: labels separated by commas (ens reads several labels of a clip as space-separated names).
    """
    values = labels.astype(str).str.strip()
    distinct = sorted(set(values))
    multi = [v for v in distinct if len(v.split()) > 1]
    commas = [v for v in distinct if "," in v]
    if commas and not multi:
        raise InitError(
            f"{path}: column {column!r} holds comma-separated labels such as {commas[0]!r}; ens reads the labels of a clip as "
            "space-separated class names: rewrite them with spaces (and no spaces inside a name)."
        )
    if not multi:
        findings.set("task", "multiclass", "one name per clip")
        return "multiclass"
    seen = Counter(name for v in distinct for name in v.split())
    recombine = [v for v in multi if all(seen[name] > 1 for name in v.split())]
    if len(recombine) == len(multi):
        findings.set("task", "multilabel", f"{len(multi)} distinct labels hold several names (e.g. {multi[0]!r}) that recombine")
        return "multilabel"
    return _decide(
        findings,
        "task",
        f"Do labels such as {multi[0]!r} name several classes (multilabel) or one (multiclass)?",
        ["multiclass", "multilabel"],
        "multiclass",
        f"{len(multi)} labels hold spaces but only {len(recombine)} of them recombine names of other labels",
        ask,
    )


def group_column(train: pd.DataFrame, used: tuple[str, ...], findings: Findings, ask: Ask | None) -> str:
    """The group column (recorded in ``findings``): a column named like a speaker or source
    recording (:data:`GROUP_HINTS`) without empty cells; among several that split the clips
    differently, asked; ``""`` when there is none."""
    named = {c.lower(): c for c in train.columns if c not in used}
    candidates = [named[h] for h in GROUP_HINTS if h in named and (train[named[h]].str.strip() != "").all()]
    if not candidates:
        findings.set("group_col", "", f"no column named like a speaker or source recording ({', '.join(GROUP_HINTS[:8])}, ...)")
        return ""
    first = candidates[0]
    codes = pd.factorize(train[first])[0]
    same = [c for c in candidates[1:] if (pd.factorize(train[c])[0] == codes).all()]
    other = [c for c in candidates[1:] if c not in same]
    sizes = train[first].value_counts()
    detail = f"{len(sizes)} groups, median {sizes.median():g} clips each" + (f"; {same} split the clips the same way" if same else "")
    if not other:
        findings.set("group_col", first, f"named like a speaker or source: {detail}; folds never split a group")
        return first
    return _decide(
        findings,
        "group_col",
        "Which column groups the clips (speaker or source recording)?",
        [first, *other],
        first,
        f"{[first, *other]} group the clips differently",
        ask,
    )


def _folds(root: Path, train: pd.DataFrame, group_col: str, y_first: list[str], findings: Findings) -> None:
    path = root / comp_mod.FOLDS
    if path.is_file():
        frame, _ = comp_mod.read_csv(path)
        if "fold" not in frame.columns:
            raise InitError(f"{path} has no column 'fold' (columns {list(frame.columns)}); give it columns id, fold or delete it.")
        try:
            folds = sorted({int(v) for v in frame["fold"]})
        except ValueError as err:
            raise InitError(f"{path}: column 'fold' holds a value that is not an integer ({err}); fix it or delete the file.") from err
        findings.set("n_splits", len(folds), f"{comp_mod.FOLDS} holds folds {folds[0]}..{folds[-1]}: kept, and every member trains on them")
        return
    counts = Counter(y_first)
    limits = {"groups": train[group_col].nunique()} if group_col else {}
    limits["clips of the " + ("largest" if group_col else "smallest") + " class"] = max(counts.values()) if group_col else min(counts.values())
    k = min(FOLDS, *limits.values())
    if k < 2:
        raise InitError(f"{root / comp_mod.TRAIN}: {limits} leave fewer than 2 folds for cross-validation; a competition needs more training clips.")
    why = f"no {comp_mod.FOLDS}: {'grouped' if group_col else 'stratified'} folds, written by the first ens train"
    findings.set("n_splits", k, why + ("" if k == FOLDS else f" ({FOLDS} lowered to {k}: {limits})"))


def _clips(paths: list[Path]) -> tuple[list[int], list[float], dict[str, str]]:
    """Sample rates (Hz) and durations (s) from the headers of up to :data:`AUDIO_SAMPLE` of ``paths``
    (evenly spread), and the files whose header does not read (path -> problem)."""
    step = max(1, len(paths) // AUDIO_SAMPLE)
    rates, durations, bad = [], [], {}
    for path in paths[::step][:AUDIO_SAMPLE]:
        try:
            with decoder_noise.quiet(path):
                info = sf.info(str(path))
        except (sf.LibsndfileError, RuntimeError, OSError) as err:
            bad[str(path)] = str(err)
            continue
        if info.samplerate > 0 and info.frames > 0:
            rates.append(int(info.samplerate))
            durations.append(info.frames / info.samplerate)
    return rates, durations, bad


def _weights_file(folder: str, weights_dir) -> bool:
    root = find_weights(weights_dir)
    return root is not None and (Path(root) / folder / "model.safetensors").is_file()


def inspect(folder: str | os.PathLike, ask: Ask | None = None, weights_dir: str | os.PathLike | None = None) -> Findings:
    """Read the competition folder and decide every recipe line (module docstring).

    Args:
        ask: asks what the folder leaves open (:data:`Ask`); None marks those lines instead.
        weights_dir: the folder of pretrained weights (:func:`ensemble.core.weights.weights_dir`).

    Raises:
        InitError: the folder or a table is missing, or no id, path or label column is found (naming
            the file, the column and the fix). CompetitionError: a table is not a readable CSV, or the
            folder does not load with the columns found (:func:`ensemble.store.competition.load`).
    """
    root = Path(folder)
    findings = Findings(root)
    train, test, sample = _tables(root)
    ids = id_column(train, test, sample, root)
    findings.choices["id_col"] = ids
    paths, audio_root = path_column(train, test, root, ids.value)
    findings.choices["path_col"] = paths
    findings.set("audio_root", audio_root, "the path column is relative to it" if audio_root else "paths are relative to dir")
    label = label_column(train, test, sample, (ids.value, paths.value), root, findings, ask)
    task = task_of(train[label], findings, ask, root / comp_mod.TRAIN, label)
    targets = [c for c in sample.columns if c != ids.value]
    tokens = _tokens(train[label]) if task == "multilabel" else [[v] for v in train[label].astype(str).str.strip()]
    if len(targets) > 1:
        findings.set("classes", targets, f"the class columns of {comp_mod.SAMPLE}, in its order")
    else:
        names = sorted({name for t in tokens for name in t})
        findings.set("classes", names, f"the sorted {'names' if task == 'multilabel' else 'labels'} of {comp_mod.TRAIN} ({len(names)})")
    group = group_column(train, (ids.value, paths.value, label), findings, ask)
    _folds(root, train, group, [t[0] if t else "" for t in tokens], findings)
    findings.notes.append(
        f"{comp_mod.SOLUTION} is there: `ens score` scores a submission against it (ens init does not open it)"
        if (root / comp_mod.SOLUTION).is_file()
        else f"no {comp_mod.SOLUTION}: submissions cannot be scored here"
    )

    config = recipe_mod.CompetitionConfig(
        dir=str(root),
        id_col=ids.value,
        path_col=paths.value,
        label_col=label,
        group_col=group,
        audio_root=audio_root,
        classes=findings.value("classes"),
        task=task,
    )
    competition = comp_mod.load(config)  # every table checked with the columns found: errors name the file, line and column
    rates, durations, bad = _clips(competition.audio_paths(competition.train) + competition.audio_paths(competition.test))
    if bad:
        first = next(iter(bad.items()))
        findings.notes.append(f"{len(bad)} sampled clip(s) have no readable header (e.g. {first[0]}: {first[1]}); ens train will name every such clip")
    if not rates:
        example = next(iter(bad.items()), ("", "every header says 0 frames"))
        raise InitError(
            f"{root}: none of the sampled clips has a readable audio header (e.g. {example[0]}: {example[1]}); check the path column {paths.value!r}."
        )

    tags = speech.of_competition(competition, weights_dir)
    findings.speech = tags
    if tags is None:
        is_speech = _decide(
            findings, "speech", "Are the clips speech?", ["no", "yes"], "no", "the clips could not be tagged (no YAMNet weights in the weights folder)", ask
        )
    elif tags.unsure:
        is_speech = _decide(
            findings, "speech", f"{tags.describe()}. Are the clips speech?", ["no", "yes"], "yes" if tags.is_speech else "no", tags.describe(), ask
        )
    else:
        is_speech = "yes" if tags.is_speech else "no"
        findings.set("speech", is_speech, tags.describe())
    speech_clips = is_speech == "yes"

    if task == "multilabel":
        backbone = "efficientat_mn04" if _weights_file("efficientat_mn04_as", weights_dir) else "tf_mobilenetv3_small_100"
        findings.set("backbones", [backbone], "functionals members serve multiclass tasks only: one pretrained CNN fine-tuned, one sigmoid per class")
        findings.set("member", None, "none (multilabel)")
        rate_of = 32000 if backbone == "efficientat_mn04" else 16000
    else:
        if speech_clips and encoder_sets.check(WHISPER, weights_dir) is None:
            member, why = WHISPER, "speech: the frozen Whisper base encoder, the member ens's RAVDESS default chose on cross-validated OOF"
        elif not speech_clips and _weights_file("efficientat_mn04_as", weights_dir):
            member, why = MN04, "not speech: EfficientAT mn04's frozen AudioSet embedding (AudioSet mAP 0.432)"
        else:
            member, why = BASIC, "librosa descriptors (the pretrained weights this folder would use are absent)"
        findings.set("backbones", [], "no image member: add ImageNet or AudioSet CNNs here (each costs far more CPU time than the encoder member)")
        findings.set("member", member, why)
        rate_of = MEMBER_RATES[member]
    native = Counter(rates).most_common(1)[0][0]
    rate = min(rate_of, native)
    rate_text = ", ".join(f"{r} Hz x {n}" for r, n in sorted(Counter(rates).items()))
    findings.set("sample_rate", rate, f"the members hear {rate_of} Hz; sampled clips: {rate_text}" + (" (kept at their own rate)" if rate < rate_of else ""))
    d = np.asarray(durations)
    cover = float(np.quantile(d, DURATION_QUANTILE))
    duration = float(min(MAX_DURATION, max(DURATION_STEP, np.ceil(cover / DURATION_STEP) * DURATION_STEP)))
    findings.set(
        "duration",
        duration,
        f"{len(d)} sampled clips last {d.min():.2f} / {np.median(d):.2f} / {cover:.2f} / {d.max():.2f} s (min / median / "
        f"{DURATION_QUANTILE:.0%} / max, before trimming): {DURATION_QUANTILE:.0%} fit whole"
        + (f" (capped at {MAX_DURATION:g} s; ens predict windows longer files)" if cover > MAX_DURATION else ""),
    )

    problem = guards.group_problem(competition) if group else None
    if not speech_clips:
        findings.set("norm", "clip", "not speech: no per-speaker statistics (ensemble.members.guards)")
        findings.set(
            "train_speakers",
            "given" if group else "none",
            "the group column groups the folds" if group else "no group column: stratified folds, nothing inferred",
        )
    elif problem:
        findings.set("norm", "clip", f"speech, but {problem.split(', and per-speaker')[0]}: too few clips per group for statistics (ensemble.members.guards)")
        findings.set("train_speakers", "given", "the group column groups the folds")
    else:
        findings.set("norm", "speaker", "speech: each clip standardised by its speaker's statistics (training: the group column; test: its own or inferred)")
        findings.set(
            "train_speakers", "auto", "the group column" if group else "no group column: speakers inferred from the voices, written to train_speakers.csv"
        )
    return findings


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


def render(findings: Findings, name: str, plan_lines: list[str] | None = None) -> str:
    """The recipe text of ``findings``: every line commented with its reason."""
    c = findings.choices

    def line(key: str, value, why: str | None = None) -> str:
        return f"{key} = {_toml(value)}" + (f"  # {why}" if why else "")

    def chosen(key: str, toml_key: str | None = None) -> str:
        return line(toml_key or key, c[key].value, c[key].why)

    task, member = c["task"].value, c["member"].value
    out = [
        f"# Written by `ens init {findings.folder}` on {date.today().isoformat()} (ensemble.scaffold): every value read from the folder",
        "# or chosen by the rule in its comment; nothing here was tuned on another corpus. Lines marked",
        "# 'ens init could not tell' took a default: check them. Then: ens train --recipe THIS; ens blend --recipe THIS.",
        *[f"# {note}." for note in findings.notes],
    ]
    if findings.unsure:
        out.append(f"# ens init could not tell: {', '.join(findings.unsure)} (marked below).")
    if plan_lines:
        out += ["#", *[f"# {text}" for text in plan_lines]]
    out += ["", line("name", name), chosen("backbones"), "", "[competition]", line("dir", str(findings.folder))]
    out += [chosen(key) for key in ("id_col", "path_col", "label_col", "group_col")]
    if c["audio_root"].value:
        out.append(chosen("audio_root"))
    out += [chosen("classes"), line("task", task, c["task"].why)]
    out += ["", "[folds]", chosen("n_splits"), line("seed", 42)]
    out += [
        "",
        "[features]",
        chosen("sample_rate"),
        chosen("duration"),
        line("trim_db", 40.0, "leading and trailing audio 40 dB under the clip's peak is cut before the duration applies"),
    ]
    metric = "lwlrap" if task == "multilabel" else "uar"
    out += ["", "[train]", line("metric", metric, "what folds select epochs by and the blend is chosen by")]
    out += [
        "",
        "[speakers]",
        line("norm", c["norm"].value, f"{c['speech'].why}; {c['norm'].why}"),
        line("train", c["train_speakers"].value, c["train_speakers"].why),
        line("test", "auto", "test.csv's group column when it has one, else speakers inferred from the voices (used only with norm = 'speaker')"),
    ]
    out += ["", "[blend]", line("method", "auto", "the method with the best cross-validated score")]
    if member is not None:
        out += [
            "",
            "[[functionals]]",
            line("name", {WHISPER: "whisper_lr", MN04: "mn04_lr", BASIC: "basic_lr"}[member]),
            line("set", member, c["member"].why),
            line("model", "logreg", "logistic regression, balanced class weights"),
            line("tune", True, "C chosen in each fold by an inner grouped cross-validation on its training clips (ensemble.members.tabular.GRIDS)"),
        ]
    return "\n".join(out) + "\n"


@dataclass
class Written:
    """What :func:`write` wrote: the recipe file, its findings and the plan lines (empty when not estimated)."""

    path: Path
    findings: Findings
    plan: list[str]


def write(
    folder: str | os.PathLike,
    out: str | os.PathLike | None = None,
    ask: Ask | None = None,
    weights_dir: str | os.PathLike | None = None,
    force: bool = False,
    plan: bool = True,
) -> Written:
    """Inspect ``folder`` (:func:`inspect`) and write its recipe to ``out`` (default
    ``recipes/<folder name>.toml``) atomically, checked to load (:func:`ensemble.core.recipe.load`); with
    ``plan``, the time plan of training it on this machine (:func:`ensemble.plan.estimate`) is added
    as comments (``plan: ...`` and one line per stage).

    Raises:
        InitError: ``out`` exists and ``force`` is False; see :func:`inspect`. RecipeError: the
            written recipe does not load (a bug: the message names it).
    """
    findings = inspect(folder, ask, weights_dir)
    path = Path(out) if out is not None else Path("recipes") / f"{Path(folder).resolve().name}.toml"
    if path.exists() and not force:
        raise InitError(f"{path} exists; pass ", Param("force", True), " to overwrite it, or write the recipe elsewhere with ", Param("out", shown="FILE"), ".")
    name = path.stem
    text = render(findings, name)
    if weights_dir:
        text += f'\n[paths]\nweights_dir = "{weights_dir}"\n'
    atomic.write_text(path, text)
    recipe = recipe_mod.load(path)
    lines: list[str] = []
    if plan:
        from . import plan as plan_mod

        try:
            stages = plan_mod.estimate(recipe)
            lines = [f"ens train's plan on this machine when ens init ran (ensemble.plan): {plan_mod.describe(stages).splitlines()[-1].strip()}"]
            lines += [line.rstrip() for line in plan_mod.describe(stages).splitlines()[1:-1]]
        except EnsError as err:
            lines = [f"ens train's plan could not be estimated: {err}"]
        text = render(findings, name, lines) + (f'\n[paths]\nweights_dir = "{weights_dir}"\n' if weights_dir else "")
        atomic.write_text(path, text)
        recipe_mod.load(path)
    return Written(path, findings, lines)
