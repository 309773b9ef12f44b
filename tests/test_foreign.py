"""The default recipe's kinds of settings on competition folders ens has never seen.

Each folder is derived from real RAVDESS clips (actors 1-8, one clip of each of the 8 emotions;
actors 7 and 8 are the test set) and written here with pandas and soundfile, not through ens,
so its layout is genuinely foreign: 16 kHz WAV files under ``audio/`` with shuffled ids, a
``sample_submission.csv`` with one label column, and a ``solution.csv`` holding the hidden labels
and true speakers. The folders:

- ``renamed``: columns ``file_id, wav, emotion, speaker`` (named in the recipe's
  ``[competition]``), the labels in German, the speaker given in train.csv and test.csv;
- ``short``: every clip cut to its middle 1.5 s (shorter than ``[features].duration``: padded);
- ``long``: 10 s clips, each the clips of one actor and emotion (statements 1-2, repetitions
  1-2) joined with 0.2 s of silence and cut at 10 s (longer than ``duration``: centre-cropped in
  training, windowed by ``ens predict``);
- ``nogroup``: no group column in train.csv at all: the training speakers are inferred.

``short``, ``long`` and ``nogroup`` have speakers only in the training table (or nowhere), as
ens's own RAVDESS folder has (checked too): their test speakers are inferred.

On each, with one tiny image backbone, an ``ens_basic`` logistic regression and an
``eGeMAPSv02`` SVM, speaker normalisation with ``test = "auto"`` and one pseudo round at
threshold 0.14: ``ens train --pseudo-label``, ``ens blend --pseudo-label`` and ``ens score``
run end to end; the submission holds every test id once with a valid label; the folds are
grouped by the speakers ens uses; the printed messages say what was inferred; every member's
OOF and test tables pass the blend's strict reader.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from ensemble.core import recipe as recipe_mod
from ensemble.speaker import speaker_groups, speakers
from ensemble.store import competition, runs
from ensemble.store import split as split_mod

from .conftest import BASIC_LR, EGEMAPS_SVM, TINY_SHAPE, cli_ok, ravdess_clip

RATE = 16000
ACTORS, TEST_ACTORS = tuple(range(1, 9)), (7, 8)
ENGLISH = {1: "neutral", 2: "calm", 3: "happy", 4: "sad", 5: "angry", 6: "fearful", 7: "disgust", 8: "surprised"}
GERMAN = {1: "neutral", 2: "ruhig", 3: "freude", 4: "trauer", 5: "wut", 6: "angst", 7: "ekel", 8: "ueberraschung"}
DEFAULT = {"id": "id", "path": "path", "label": "label", "group": "group"}
RENAMED = {"id": "file_id", "path": "wav", "label": "emotion", "group": "speaker"}
SHORT_S, LONG_S, GAP_S = 1.5, 10.0, 0.2

RECIPE = (
    """
name = "foreign"
backbones = ["test_resnet"]
[paths]
runs_dir = "{runs}"
submissions_dir = "{subs}"
[competition]
dir = "{comp}"
{columns}
"""
    + TINY_SHAPE
    + """pretrained = false
[speakers]
norm = "speaker"
test = "auto"
"""
    + BASIC_LR
    + EGEMAPS_SVM
    + """
[pseudo]
threshold = 0.14
"""
)


def _load(actor: int, emotion: int, statement: int = 1, repetition: int = 1) -> np.ndarray:
    y, rate = sf.read(ravdess_clip(actor, emotion, statement, repetition), dtype="float32")
    assert rate == RATE, rate
    return y


def _middle(y: np.ndarray, seconds: float) -> np.ndarray:
    n = int(seconds * RATE)
    start = (len(y) - n) // 2
    return y[start : start + n]


def _joined(actor: int, emotion: int) -> np.ndarray:
    """Clips of one actor and emotion joined with 0.2 s of silence, cut at 10 s."""
    parts, gap = [], np.zeros(int(GAP_S * RATE), np.float32)
    for statement in (1, 2):
        for repetition in (1, 2):
            parts += [_load(actor, emotion, statement, repetition), gap]
    y = np.concatenate(parts)
    assert len(y) >= LONG_S * RATE, len(y) / RATE
    return y[: int(LONG_S * RATE)]


def write_folder(root: Path, audio, columns: dict, labels: dict, train_group: bool, test_group: bool) -> pd.DataFrame:
    """Write a Kaggle-style folder: ``audio(actor, emotion)`` gives each clip's waveform. Returns
    the truth table (id, actor, emotion, label, split) for the checks."""
    rng = np.random.default_rng(7)
    rows = [(actor, emotion) for actor in ACTORS for emotion in labels]
    order = rng.permutation(len(rows))
    (root / "audio").mkdir(parents=True)
    truth = []
    for number, index in enumerate(order):
        actor, emotion = rows[index]
        clip_id = f"clip{number:03d}"
        sf.write(root / "audio" / f"{clip_id}.wav", audio(actor, emotion), RATE, subtype="PCM_16")
        truth.append({"id": clip_id, "actor": f"spk{actor:02d}", "emotion": emotion, "label": labels[emotion], "test": actor in TEST_ACTORS})
    truth = pd.DataFrame(truth)
    c = columns
    table = pd.DataFrame({c["id"]: truth["id"], c["path"]: "audio/" + truth["id"] + ".wav", c["label"]: truth["label"], c["group"]: truth["actor"]})
    train, test = table[~truth["test"]], table[truth["test"]]
    train[[c["id"], c["path"], c["label"]] + ([c["group"]] if train_group else [])].to_csv(root / "train.csv", index=False)
    test[[c["id"], c["path"]] + ([c["group"]] if test_group else [])].to_csv(root / "test.csv", index=False)
    pd.DataFrame({c["id"]: test[c["id"]], c["label"]: labels[1]}).to_csv(root / "sample_submission.csv", index=False)
    test[[c["id"], c["label"], c["group"]]].to_csv(root / "solution.csv", index=False)
    return truth


FOLDERS = {
    "renamed": (lambda a, e: _load(a, e), RENAMED, GERMAN, True, True),
    "short": (lambda a, e: _middle(_load(a, e), SHORT_S), DEFAULT, ENGLISH, True, False),
    "long": (_joined, DEFAULT, ENGLISH, True, False),
    "nogroup": (lambda a, e: _load(a, e), DEFAULT, ENGLISH, False, False),
}


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """Every derived folder, trained, blended and scored through the CLI; by name: the recipe,
    the loaded recipe (one pseudo round), the truth table and each command's output."""
    out = {}
    for name, (audio, columns, labels, train_group, test_group) in FOLDERS.items():
        root = tmp_path_factory.mktemp(f"foreign_{name}")
        comp = root / "comp"
        truth = write_folder(comp, audio, columns, labels, train_group, test_group)
        renamed = "\n".join(f'{role}_col = "{column}"' for role, column in columns.items() if column != role)
        recipe = root / "foreign.toml"
        recipe.write_text(RECIPE.format(runs=root / "runs", subs=root / "subs", comp=comp, columns=renamed))
        outputs = {"train": cli_ok(["train", "--recipe", str(recipe), "--quiet", "--pseudo-label"])}
        outputs["blend"] = cli_ok(["blend", "--recipe", str(recipe), "--method", "mean", "--pseudo-label", "--name", "sub"])
        submission = root / "subs" / "sub.csv"
        outputs["score"] = cli_ok(["score", str(submission), "--recipe", str(recipe)])
        r = recipe_mod.load(recipe, {"pseudo": {"rounds": 1}})
        out[name] = {"recipe": recipe, "r": r, "comp": comp, "truth": truth, "submission": submission, "columns": columns, "labels": labels, **outputs}
    return out


@pytest.mark.parametrize("name", list(FOLDERS))
def test_train_blend_and_score_run_end_to_end_and_the_submission_is_valid(foreign, name):
    f = foreign[name]
    c, truth = f["columns"], f["truth"]
    test_ids = truth.loc[truth["test"], "id"]
    sub = pd.read_csv(f["submission"], dtype=str)
    assert list(sub.columns) == [c["id"], c["label"]]  # the sample submission's header
    assert sorted(sub[c["id"]]) == sorted(test_ids) and not sub[c["id"]].duplicated().any()
    assert set(sub[c["label"]]) <= set(f["labels"].values())
    assert re.search(r"sub\.csv: accuracy 0\.\d{4}", f["score"]), f["score"]
    for member in ("test_resnet", "basic_lr", "egemaps_svm", "test_resnet+pl1", "basic_lr+pl1", "egemaps_svm+pl1"):
        assert re.search(rf"^{re.escape(member)} fold 1: ", f["train"], re.M), f"{member} did not train on {name}:\n{f['train']}"
    assert "test clips pseudo-labelled at confidence >= 0.140" in f["train"]


@pytest.mark.parametrize("name", list(FOLDERS))
def test_every_member_passes_the_strict_reader(foreign, name):
    r = foreign[name]["r"]
    split = split_mod.load_split(r)
    members = runs.members(r)
    assert {m.name for m in members} >= {"test_resnet", "basic_lr", "egemaps_svm", "test_resnet+pl1", "basic_lr+pl1", "egemaps_svm+pl1"}
    for member in members:
        oof, test = runs.read_member(member, split)
        assert oof.shape == (len(split.competition.train), 8) and test.shape == (len(split.competition.test), 8)
        np.testing.assert_allclose(oof.sum(axis=1), 1.0, atol=1e-4)


@pytest.mark.parametrize("name", ["renamed", "short", "long"])
def test_folds_are_grouped_by_the_given_speakers_and_test_speakers_are_said(foreign, name):
    f = foreign[name]
    c = f["columns"]
    train = pd.read_csv(f["comp"] / "train.csv", dtype=str)
    folds = pd.read_csv(f["comp"] / "folds.csv", dtype=str).set_index("id")["fold"]
    per_speaker = folds.reindex(train[c["id"]]).groupby(train[c["group"]].to_numpy()).nunique()
    assert (per_speaker == 1).all() and len(per_speaker) == 6
    assert not (f["comp"] / speaker_groups.TRAIN_CSV).exists()  # given speakers are not inferred
    assert "training speakers" not in f["train"]
    if name == "renamed":  # the test table names its speakers
        assert "test speakers: 2 (given)" in f["train"]
    else:
        assert re.search(r"test speakers: \d+ \(inferred, silhouette [0-9.]+\)", f["train"])
    assert "adjusted Rand" not in f["train"] and "solution" not in f["train"]  # training never reads the hidden labels


def test_without_a_group_column_the_training_speakers_are_inferred_said_written_and_group_the_folds(foreign):
    f = foreign["nogroup"]
    comp, truth = f["comp"], f["truth"].set_index("id")
    inferred = pd.read_csv(comp / speaker_groups.TRAIN_CSV, dtype=str)
    train = pd.read_csv(comp / "train.csv", dtype=str)
    assert list(inferred["id"]) == list(train["id"])
    match = re.search(r"training speakers: (\d+) inferred from the voices \(k 2\.\.6 tried, silhouette ([0-9.]+)\) -> (\S+)\. ens cannot know", f["train"])
    assert match, f["train"]
    assert int(match.group(1)) == inferred["speaker"].nunique() and Path(match.group(3)) == comp / speaker_groups.TRAIN_CSV
    # the folds are grouped by the inferred speakers: no inferred speaker in both folds
    folds = pd.read_csv(comp / "folds.csv", dtype=str).set_index("id")["fold"].reindex(inferred["id"])
    assert (folds.groupby(inferred["speaker"].to_numpy()).nunique() == 1).all()
    assert folds.nunique() == 2
    # the voices, not chance: the inferred speakers follow the 6 real actors (kept hidden from ens).
    # Measured on these 48 clips: the silhouette picks k = 2, the split by gender (ARI 0.31; at k = 6
    # it would be 0.75), which under-splits: coarser folds, but every real actor stays in one fold.
    ari = speakers.adjusted_rand(truth.loc[inferred["id"], "actor"], inferred["speaker"])
    assert ari > 0.2, ari
    by_actor = folds.groupby(truth.loc[inferred["id"], "actor"].to_numpy()).nunique()
    assert (by_actor == 1).all(), by_actor  # no real speaker leaks from training into validation
    # speaker normalisation used them: every member trained with [speakers].norm = "speaker"
    assert "test speakers:" in f["train"] and "LeakageWarning" not in f["train"]


def test_inferred_training_speakers_are_read_back_not_inferred_again(foreign, monkeypatch):
    r = foreign["nogroup"]["r"]
    written = pd.read_csv(foreign["nogroup"]["comp"] / speaker_groups.TRAIN_CSV, dtype=str)

    def refuse(*args, **kwargs):
        raise AssertionError("train_speakers.csv exists: nothing is inferred again")

    monkeypatch.setattr(speaker_groups, "infer_train_speakers", refuse)
    comp = speaker_groups.load_competition(r)
    assert comp.has_groups and comp.config.group_col == "group"
    assert list(comp.train["group"]) == list(written["speaker"])
    assert r.competition.group_col == "group"  # the recipe itself is not changed


def test_the_train_setting_given_none_and_inferred_on_a_folder_with_and_without_groups(foreign, tmp_path):
    nogroup, renamed = foreign["nogroup"]["r"], foreign["renamed"]["r"]
    with pytest.raises(speaker_groups.SpeakerGroupError, match=r"train.csv has no group column 'group' for \[speakers\]\.train = 'given'"):
        speaker_groups.load_competition(recipe_mod.from_dict({**nogroup.to_dict(), "speakers": {"train": "given"}}, "given"))
    none = recipe_mod.from_dict({**nogroup.to_dict(), "speakers": {"norm": "speaker", "train": "none"}}, "none")
    comp = speaker_groups.load_competition(none)
    assert not comp.has_groups
    with pytest.warns(competition.LeakageWarning, match="stratified only"):
        competition.make_folds(comp, 2, 0)
    with pytest.raises(speaker_groups.SpeakerGroupError, match=r"set \[speakers\]\.train = 'auto' or 'inferred'"):
        speaker_groups.train_groups(comp)
    # a folder with the group column: "none" drops it, "inferred" compares its guess with the real speakers
    renamed_none = speaker_groups.load_competition(recipe_mod.from_dict({**renamed.to_dict(), "speakers": {"train": "none"}}, "none"))
    assert "speaker" not in renamed_none.train.columns
    comp = competition.load(renamed.competition)
    inferred = recipe_mod.from_dict({**renamed.to_dict(), "speakers": {"train": "inferred"}}, "inferred")
    found = speaker_groups.infer_train_speakers(comp, inferred, progress=False)
    assert found.ari is not None and found.ari > 0.2 and f"adjusted Rand index {found.ari:.3f} against train.csv's own groups" in found.describe()
    assert not (foreign["renamed"]["comp"] / speaker_groups.TRAIN_CSV).exists()  # inferring alone writes nothing


def test_a_folds_csv_that_splits_a_speaker_is_warned_about_and_the_written_one_is_not(foreign):
    r = foreign["nogroup"]["r"]
    comp = speaker_groups.load_competition(r)
    split = pd.DataFrame({"id": comp.train["id"], "fold": np.arange(len(comp.train)) % 2})  # every other clip: speakers split
    with pytest.warns(competition.LeakageWarning, match=r"puts \d+ speaker\(s\) .* in more than one fold"):
        speaker_groups.check_folds(comp, split)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        speaker_groups.check_folds(comp, competition.folds(comp, r.folds))


def test_train_k_range_follows_the_clips_and_folds_and_refuses_too_few():
    assert speaker_groups.train_k_range(48, 2) == (2, 6)
    assert speaker_groups.train_k_range(1440, 5) == (5, 50)
    assert speaker_groups.train_k_range(20, 5) == (5, 5)
    assert speaker_groups.train_k_range(4, 2) == (2, 2)  # n // 8 = 0: the smallest k alone
    with pytest.raises(speaker_groups.SpeakerGroupError, match="at least 6 training clips, got 5"):
        speaker_groups.train_k_range(5, 5)


def test_ens_predict_windows_a_10_s_file(foreign, tmp_path):
    f = foreign["long"]
    clip = f["comp"] / "audio" / "clip000.wav"
    assert sf.info(clip).duration == pytest.approx(LONG_S)
    out = tmp_path / "p.csv"
    output = cli_ok(["predict", str(clip), "--recipe", str(f["recipe"]), "--pseudo-label", "--timeline", "--out", str(out)])
    assert "test_resnet+pl1" in output and "basic_lr+pl1" in output  # the students of the pseudo round predict too
    frame = pd.read_csv(out)
    assert len(frame) > 1, frame  # one row for the file and one per window
    proba = frame[list(ENGLISH.values())].to_numpy()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-4)


def test_ens_s_own_ravdess_folder_names_speakers_only_in_the_training_table(small_source, tmp_path):
    cli_ok(["data", "ravdess", "--source", str(small_source), "--out", str(tmp_path / "comp"), "--test-actors", "5,6", "--folds", "2"])
    assert "group" in pd.read_csv(tmp_path / "comp" / "train.csv", nrows=1).columns
    assert list(pd.read_csv(tmp_path / "comp" / "test.csv", nrows=1).columns) == ["id", "path"]
