"""``ens init`` (issue 33): a recipe written from a competition folder trains and scores without an
edit, and the guards that make a copied recipe safe.

Folders, all of real audio:

- RAVDESS, built by ``ens data ravdess`` from 48 clips (actors 1-4 train, 5-6 test, 2 folds): speech,
  a group column of 8 clips per actor;
- the derived foreign folders of ``tests/test_foreign.py`` (renamed columns and German labels,
  1.5 s clips, 10 s clips, no group column);
- an ESC-50-derived folder (``../shared/data/esc50``, 16 kHz Ogg Vorbis): 4 classes, 3 official folds
  of 3 clips per class for training (``folds.csv``), 2 clips per class of fold 5 for the test, and a
  ``group`` column of one clip per group (as the issue's animal-sound folder had).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ensemble import scaffold
from ensemble.core import recipe as recipe_mod
from ensemble.members import guards, speech
from ensemble.train import RunResult

from .conftest import ROOT, cli_ok
from .test_foreign import FOLDERS, write_folder

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ESC50 = ROOT.parent / "shared" / "data" / "esc50"
WEIGHTS = ROOT.parent / "shared" / "weights"
ESC_CLASSES = ("dog", "rain", "clock_tick", "church_bells")


def _init(folder: Path, out: Path, *extra: str) -> tuple[str, dict]:
    output = cli_ok(["init", str(folder), "--out", str(out), *extra])
    return output, tomllib.loads(out.read_text())


@pytest.fixture(scope="module")
def tagger_only(tmp_path_factory) -> Path:
    """A weights folder holding YAMNet alone (linked from ../shared/weights): ens init still tags speech,
    and falls back to librosa's ens_basic member (the Whisper and mn04 weights are absent), so that
    these recipes train in seconds; the members chosen with every weight present are checked on
    the recipes themselves (and the Whisper recipe trained on all of RAVDESS: the report's figures)."""
    root = tmp_path_factory.mktemp("weights")
    (root / "yamnet_mobilenetv1_100").symlink_to(WEIGHTS / "yamnet_mobilenetv1_100")
    return root


def _train_blend_score(recipe: Path, root: Path) -> dict:
    """ens train (quiet), ens blend and ens score, with the runs and submissions under ``root``."""
    paths = f'runs_dir = "{root / "runs"}"\nsubmissions_dir = "{root / "subs"}"\n'
    text = recipe.read_text()
    recipe.write_text(text.replace("[paths]\n", "[paths]\n" + paths) if "[paths]\n" in text else text + "\n[paths]\n" + paths)
    out = {"train": cli_ok(["train", "--recipe", str(recipe), "--quiet"])}
    out["blend"] = cli_ok(["blend", "--recipe", str(recipe), "--name", "sub"])
    out["score"] = cli_ok(["score", str(root / "subs" / "sub.csv"), "--recipe", str(recipe)])
    return out


@pytest.fixture(scope="module")
def esc50(tmp_path_factory) -> Path:
    """The ESC-50-derived competition folder (module docstring); audio linked from ../shared."""
    root = tmp_path_factory.mktemp("esc50") / "comp"
    (root / "audio").mkdir(parents=True)
    meta = pd.read_csv(ESC50 / "meta" / "esc50.csv")
    meta = meta[meta["category"].isin(ESC_CLASSES)]
    train = pd.concat([meta[meta["fold"] == f].groupby("category").head(3) for f in (1, 2, 3)])
    test = meta[meta["fold"] == 5].groupby("category").head(2)
    for name in pd.concat([train, test])["filename"]:
        (root / "audio" / name).symlink_to(ESC50 / "audio" / name)
    table = lambda m: pd.DataFrame({"id": m["filename"].str.removesuffix(".ogg"), "path": "audio/" + m["filename"]})  # noqa: E731
    tr, te = table(train), table(test)
    tr["category"] = train["category"].to_numpy()
    tr["group"] = "g" + tr["id"]  # one clip per group
    tr["batch"] = "b" + train["fold"].astype(str).to_numpy()  # 12 clips per group: large enough, but not speakers
    tr.to_csv(root / "train.csv", index=False)
    te.to_csv(root / "test.csv", index=False)
    pd.DataFrame({"id": te["id"], "category": ESC_CLASSES[0]}).to_csv(root / "sample_submission.csv", index=False)
    pd.DataFrame({"id": te["id"], "category": test["category"].to_numpy()}).to_csv(root / "solution.csv", index=False)
    pd.DataFrame({"id": tr["id"], "fold": train["fold"].to_numpy() - 1}).to_csv(root / "folds.csv", index=False)
    return root


def test_ravdess_speech_recipe_with_its_plan_trains_and_scores(small_source, tmp_path, tagger_only):
    comp = tmp_path / "comp"
    cli_ok(["data", "ravdess", "--source", str(small_source), "--out", str(comp), "--test-actors", "5,6", "--folds", "2"])
    output, data = _init(comp, tmp_path / "whisper.toml", "--no-plan")  # every weight present: the Whisper member
    c = data["competition"]
    assert (c["id_col"], c["path_col"], c["label_col"], c["group_col"]) == ("id", "path", "label", "group")
    assert c["task"] == "multiclass" and sorted(c["classes"]) == sorted(["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"])
    assert data["folds"]["n_splits"] == 2  # folds.csv's
    assert data["speakers"]["norm"] == "speaker" and data["features"]["sample_rate"] == 16000
    assert data["functionals"] == [{"name": "whisper_lr", "set": "whisper_base", "model": "logreg", "tune": True}]
    assert data["backbones"] == [] and "could not tell" not in output
    assert "(ens init does not open it)" in (tmp_path / "whisper.toml").read_text()  # solution.csv is noted, never read
    recipe_mod.load(tmp_path / "whisper.toml")
    output, data = _init(comp, tmp_path / "r.toml", "--weights-dir", str(tagger_only))  # with the plan, trained below
    assert data["functionals"][0]["set"] == "ens_basic" and data["paths"]["weights_dir"] == str(tagger_only)
    text = (tmp_path / "r.toml").read_text()
    assert re.search(r"# ens train's plan on this machine .*total: ~[\d.]+ (s|min)", text) and "functionals ens_basic" in text
    out = _train_blend_score(tmp_path / "r.toml", tmp_path)
    assert re.search(r"^basic_lr fold 1: ", out["train"], re.M) and "switched off" not in out["train"]
    assert re.search(r"sub\.csv: accuracy 0\.\d{4}", out["score"])
    metrics = [pd.read_json(p, typ="series") for p in sorted((tmp_path / "runs" / "r" / "basic_lr").glob("fold*/metrics.json"))]
    assert len(metrics) == 2 and all("chosen" in m for m in metrics)  # tune = true: C chosen per fold


@pytest.mark.parametrize("name", list(FOLDERS))
def test_the_foreign_folders_recipes_train_and_score_without_an_edit(name, tmp_path, tagger_only):
    audio, columns, labels, train_group, test_group = FOLDERS[name]
    comp = tmp_path / "comp"
    write_folder(comp, audio, columns, labels, train_group, test_group)
    _, data = _init(comp, tmp_path / "r.toml", "--no-plan", "--weights-dir", str(tagger_only))
    c = data["competition"]
    assert (c["id_col"], c["path_col"], c["label_col"]) == (columns["id"], columns["path"], columns["label"])
    assert c["group_col"] == (columns["group"] if train_group else "")
    assert sorted(c["classes"]) == sorted(labels.values())
    assert data["speakers"]["norm"] == "speaker" and data["speakers"]["train"] == "auto"
    expected = {"short": 1.5, "long": 10.0}.get(name)
    if expected:
        assert data["features"]["duration"] == expected
    out = _train_blend_score(tmp_path / "r.toml", tmp_path)
    assert re.search(r"sub\.csv: accuracy 0\.\d{4}", out["score"]), out
    sub = pd.read_csv(tmp_path / "subs" / "sub.csv", dtype=str)
    assert set(sub[columns["label"]]) <= set(labels.values())


def test_esc50_folder_is_not_speech_and_trains_without_speaker_normalisation(esc50, tmp_path, tagger_only):
    output, data = _init(esc50, tmp_path / "mn04.toml", "--no-plan")  # every weight present: the AudioSet embedding
    c = data["competition"]
    assert (c["label_col"], c["group_col"], c["task"]) == ("category", "group", "multiclass")
    assert data["folds"]["n_splits"] == 3  # the official folds kept
    assert data["speakers"] == {"norm": "clip", "train": "given", "test": "auto"}
    assert data["functionals"][0]["set"] == "mn04_embedding" and data["functionals"][0]["tune"] is True
    assert data["features"]["sample_rate"] == 16000  # mn04 hears 32 kHz, these clips are 16 kHz
    assert re.search(r"YAMNet \(AudioSet\) tags 0 of \d+ sampled training clips as Speech", output)
    _, data = _init(esc50, tmp_path / "r.toml", "--no-plan", "--weights-dir", str(tagger_only))
    assert data["speakers"]["norm"] == "clip" and data["functionals"][0]["set"] == "ens_basic"
    out = _train_blend_score(tmp_path / "r.toml", tmp_path)
    assert "switched off" not in out["train"] and "test speakers: " not in out["train"]  # nothing normalised, no speakers inferred
    assert "out of fold (" not in out["train"]  # no member named constant
    oof = pd.concat(pd.read_csv(p) for p in (tmp_path / "runs" / "r" / "basic_lr").glob("fold*/oof.csv"))
    assert oof[list(ESC_CLASSES)].to_numpy().argmax(axis=1).tolist().count(0) < len(oof)  # more than one class predicted


@pytest.mark.parametrize("group,why", [("group", r"median of 1 clip\(s\) per group \(36 groups, 36 of a single clip\)"), ("batch", "not speech")])
def test_a_copied_speaker_recipe_on_esc50_is_switched_off_and_says_why(esc50, tmp_path, group, why):
    recipe = tmp_path / "copied.toml"
    recipe.write_text(
        f"""name = "copied"
backbones = []
[competition]
dir = "{esc50}"
label_col = "category"
group_col = "{group}"
[folds]
n_splits = 3
[speakers]
norm = "speaker"
[[functionals]]
name = "basic_lr"
set = "ens_basic"
model = "logreg"
c = 0.1
"""
    )
    out = _train_blend_score(recipe, tmp_path)
    assert re.search(rf"warning: speaker normalisation switched off: .*{why}", out["train"]), out["train"]
    assert "test speakers: " not in out["train"] and "out of fold (" not in out["train"]  # none inferred, no constant member
    config = pd.read_json(tmp_path / "runs" / "copied" / "basic_lr" / "fold0" / "config.json", typ="series")
    assert config["recipe"]["speakers"]["norm"] == "clip"  # what it trained with is what it records
    oof = pd.concat(pd.read_csv(p) for p in (tmp_path / "runs" / "copied" / "basic_lr").glob("fold*/oof.csv"))
    assert len(set(oof[list(ESC_CLASSES)].to_numpy().argmax(axis=1))) > 1


def test_speaker_statistics_over_groups_of_one_clip_make_a_constant_member_which_is_named(esc50, tmp_path):
    """What the guard prevents, shown: per-group z-normalisation over groups of one clip turns every
    functional into 0, and the member's out-of-fold predictions are constant; the check names it."""
    from ensemble.store import competition

    comp = competition.load(recipe_mod.CompetitionConfig(dir=str(esc50), label_col="category"))
    assert guards.group_problem(comp) is not None  # median 1 clip
    x = np.random.default_rng(0).normal(size=(len(comp.train), 5))
    from ensemble.speaker.speakers import SpeakerNorm

    assert not SpeakerNorm().fit_transform(x, comp.train["group"].to_numpy()).any()  # all zeros
    run = tmp_path / "m" / "fold0"
    run.mkdir(parents=True)
    pd.DataFrame({"id": ["a", "b", "c"], "fold": 0, "dog": 0.4, "rain": 0.3, "clock_tick": 0.2, "church_bells": 0.1}).to_csv(run / "oof.csv", index=False)
    messages = guards.constant_members([RunResult("m", 0, run, {}, False)])
    assert len(messages) == 1 and "member m gives every clip the same probabilities" in messages[0]
    pd.DataFrame({"id": ["a", "b"], "fold": 0, "dog": [0.5, 0.9], "rain": [0.3, 0.1], "clock_tick": 0.1, "church_bells": 0.1}).to_csv(
        run / "oof.csv", index=False
    )
    assert "predicts 'dog' for every clip" in guards.constant_members([RunResult("m", 0, run, {}, False)])[0]


def test_speech_tags_are_cached_and_sampled_over_the_labels(esc50):
    from ensemble.store import competition

    comp = competition.load(recipe_mod.CompetitionConfig(dir=str(esc50), label_col="category"))
    rows = speech.sample_rows(comp.train["category"], 8)
    assert len(rows) == 8 and comp.train["category"].iloc[rows].value_counts().tolist() == [2, 2, 2, 2]
    first = speech.of_competition(comp)
    assert (esc50 / ".ens_cache" / speech.CACHE).is_file() and not first.is_speech
    assert speech.of_competition(comp) == first  # read back, not tagged again


def test_ambiguities_are_asked_on_a_terminal_and_marked_otherwise(esc50, tmp_path):
    table = pd.read_csv(esc50 / "train.csv", dtype=str)
    table["speaker"] = table["batch"]  # a second group-like column that splits the clips differently
    folder = tmp_path / "comp"
    folder.mkdir()
    for name in ("test.csv", "sample_submission.csv", "folds.csv"):
        (folder / name).write_text((esc50 / name).read_text())
    (folder / "audio").symlink_to(esc50 / "audio")
    table.to_csv(folder / "train.csv", index=False)
    asked = []

    def ask(question, choices, default):
        asked.append((question, choices, default))
        return "speaker"

    found = scaffold.inspect(folder, ask=ask)
    assert asked == [("Which column groups the clips (speaker or source recording)?", ["group", "speaker"], "group")]
    assert found.value("group_col") == "speaker" and not found.unsure
    marked = scaffold.inspect(folder)
    assert marked.value("group_col") == "group" and marked.unsure == ["group_col"]
    assert "could not tell" in scaffold.render(marked, "x")


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda f: (f / "train.csv").unlink(), r"train\.csv does not exist"),
        (lambda f: (f / "test.csv").write_text("clip,file\nx,y.ogg\n"), r"sample_submission\.csv: none of its columns \['id', 'category'\]"),
        (
            lambda f: (f / "audio").rename(f / "elsewhere"),
            r"train\.csv: no column names audio files that exist \(tried \['path', 'id'\]; e\.g\. column 'path'",
        ),
        (lambda f: (f / "train.csv").write_text((f / "train.csv").read_text().replace(",dog,", ",dog,cat,", 1)), r"train\.csv: line 2 has 6 fields"),
    ],
)
def test_a_folder_it_cannot_read_is_refused_naming_the_file_and_column(esc50, tmp_path, edit, match):
    import shutil

    folder = tmp_path / "comp"
    shutil.copytree(esc50, folder, symlinks=True, ignore=shutil.ignore_patterns(".ens_cache"))
    edit(folder)
    from typer.testing import CliRunner

    from ensemble.cli import app

    result = CliRunner().invoke(app, ["init", str(folder), "--out", str(tmp_path / "r.toml"), "--no-plan"])
    assert result.exit_code == 2 and re.search(match, result.output), result.output
    assert not (tmp_path / "r.toml").exists()
