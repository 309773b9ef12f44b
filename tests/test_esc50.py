"""ESC-50 as a competition (ensemble.store.corpora.esc50, `ens data esc50`) on the real shared copy: its
metadata, both protocols' folders, the archive's extraction, and data -> train -> blend (-> score)
through the CLI with recipes/esc50.toml's settings on a few classes."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from ensemble.cli import app
from ensemble.core.recipe import CompetitionConfig, FoldsConfig
from ensemble.store import competition
from ensemble.store.corpora import esc50

from .conftest import ROOT, cli_ok

ESC50 = ROOT.parent / "shared" / "data" / "esc50"
CLASSES = ("dog", "hen", "rooster")  # hen and rooster share two freesound recordings across folds (134049, 234879)
runner = CliRunner()


@pytest.fixture(scope="module")
def small_source(tmp_path_factory) -> Path:
    """An ESC-50 folder in the official layout holding the real clips of :data:`CLASSES` (120 clips, 8 per class and fold)."""
    if not (ESC50 / esc50.META).is_file():
        pytest.fail(f"the ESC-50 tests read the real corpus from {ESC50}; put the shared folder beside the checkout.")
    root = tmp_path_factory.mktemp("esc50_small")
    meta = pd.read_csv(ESC50 / esc50.META, dtype=str)
    meta = meta[meta["category"].isin(CLASSES)]
    (root / "meta").mkdir()
    (root / "audio").mkdir()
    meta.to_csv(root / esc50.META, index=False)
    for name in meta["filename"]:
        (root / "audio" / name).symlink_to(ESC50 / "audio" / name)
    return root


def test_the_shared_copy_has_the_official_design():
    meta = esc50.read_meta(ESC50)
    assert len(meta) == 2000 and meta["category"].nunique() == 50
    assert (meta["category"].value_counts() == 40).all() and (meta["fold"].value_counts() == 400).all()
    assert all(p.is_file() for p in meta["src"])
    crossing = meta.groupby("src_file")["fold"].nunique()
    assert sorted(crossing[crossing > 1].index) == sorted(esc50.SPLIT_SOURCES)  # the only recordings the official folds split
    groups = pd.Series(esc50.groups(meta))
    assert (meta.groupby(groups.to_numpy())["fold"].nunique() == 1).all()


def test_cv_protocol_keeps_the_official_folds_and_has_no_hidden_labels(small_source, tmp_path):
    out = tmp_path / "cv"
    out.mkdir()
    (out / "solution.csv").write_text("id,label\nx,dog\n")  # left by an earlier --test-fold build
    tables = esc50.build_competition(small_source, out)
    train, test, folds = (pd.read_csv(out / name, dtype=str) for name in ("train.csv", "test.csv", "folds.csv"))
    meta = pd.read_csv(small_source / esc50.META, dtype=str)
    assert len(train) == 120 and set(train["label"]) == set(CLASSES) and not (out / "solution.csv").exists()
    assert list(test["id"]) == list(train["id"]) and list(test["path"]) == list(train["path"])
    official = dict(zip(meta["filename"].str.rsplit(".", n=1).str[0], meta["fold"].astype(int)))
    assert [official[i] - 1 for i in folds["id"]] == folds["fold"].astype(int).tolist()
    assert (train.groupby("group")["esc50_fold"].nunique() == 1).all()
    assert {"134049@2", "134049@3", "234879@4", "234879@5"} <= set(train["group"])
    assert all((out / p).is_file() for p in train["path"])
    loaded = competition.load(CompetitionConfig(dir=str(out)))
    assert loaded.classes == sorted(CLASSES) and list(tables["sample_submission.csv"]["id"]) == list(train["id"])


def test_test_fold_holds_one_official_fold_out_through_the_cli(small_source, tmp_path):
    out = tmp_path / "held"
    output = cli_ok(["data", "esc50", "--source", str(small_source), "--out", str(out), "--test-fold", "5"])
    assert "96 training clips in 4 official folds, 24 test clips of fold 5" in output
    train, test, solution, folds = (pd.read_csv(out / n, dtype=str) for n in ("train.csv", "test.csv", "solution.csv", "folds.csv"))
    assert set(train["esc50_fold"]) == {"1", "2", "3", "4"} and sorted(set(folds["fold"])) == ["0", "1", "2", "3"]
    assert (folds["fold"].astype(int) == train["esc50_fold"].astype(int) - 1).all()
    assert list(solution["id"]) == list(test["id"]) and all(i.startswith("test_") for i in test["id"])
    assert set(solution["esc50_fold"]) == {"5"} and not set(test["id"]) & set(train["id"])
    meta = pd.read_csv(small_source / esc50.META, dtype=str)
    held = meta[meta["fold"] == "5"]
    assert sorted(solution["label"]) == sorted(held["category"])  # every fold-5 clip, its label in the solution only
    assert list(test.columns) == ["id", "path"]
    competition.folds(competition.load(CompetitionConfig(dir=str(out))), FoldsConfig(n_splits=4))


def test_refusals_name_the_file_and_the_fix(small_source, tmp_path):
    with pytest.raises(esc50.Esc50Error, match=r"test_fold=6 is not an official ESC-50 fold"):
        esc50.build(small_source, tmp_path / "x", test_fold=6)
    with pytest.raises(esc50.Esc50Error, match=r"meta/esc50.csv does not exist"):
        esc50.read_meta(tmp_path)
    broken = tmp_path / "broken"
    (broken / "meta").mkdir(parents=True)
    (broken / "audio").mkdir()
    meta = pd.read_csv(small_source / esc50.META, dtype=str).head(3)
    meta.to_csv(broken / esc50.META, index=False)
    with pytest.raises(esc50.Esc50Error, match=r"3 clip\(s\) .* have no audio file .*" + meta["filename"].iloc[0]):
        esc50.read_meta(broken)
    meta.assign(fold=["1", "6", "2"]).to_csv(broken / esc50.META, index=False)
    with pytest.raises(esc50.Esc50Error, match=r"fold '6' in line 3 is not one of"):
        esc50.read_meta(broken)
    result = runner.invoke(app, ["data", "esc50", "--source", str(tmp_path / "nowhere"), "--out", str(tmp_path / "y")])
    assert result.exit_code == 2 and "is not a folder; pass --source DIR (the folder holding meta/ and audio/) or --download" in result.output


def test_the_archive_unpacks_to_a_source_with_wav_names(small_source, tmp_path):
    meta = pd.read_csv(small_source / esc50.META, dtype=str).head(2)
    archive = tmp_path / "ESC-50-master.zip"
    with zipfile.ZipFile(archive, "w") as zf:  # the official layout: .wav names in the metadata, here .ogg audio
        zf.writestr("ESC-50-master/meta/esc50.csv", meta.assign(filename=meta["filename"].str.replace(".ogg", ".wav")).to_csv(index=False))
        for name in meta["filename"]:
            zf.write(small_source / "audio" / name, f"ESC-50-master/audio/{name}")
        zf.writestr("ESC-50-master/README.md", "ESC-50")
    source = esc50.extract(archive, tmp_path / "unpacked")
    assert source == tmp_path / "unpacked" / "ESC-50-master"
    read = esc50.read_meta(source)
    assert [p.name for p in read["src"]] == list(meta["filename"]) and list(read["id"]) == list(meta["filename"].str[:-4])
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("data/readme.txt", "not ESC-50")
    with pytest.raises(esc50.Esc50Error, match="holds no meta/esc50.csv: it is not the ESC-50 archive"):
        esc50.extract(other, tmp_path / "o")
    (tmp_path / "bad.zip").write_text("not a zip")
    with pytest.raises(esc50.Esc50Error, match="is not a zip file"):
        esc50.extract(tmp_path / "bad.zip", tmp_path / "b")


def test_download_offline_says_so(tmp_path):
    with pytest.raises(esc50.Esc50Error, match="could not download ESC-50 .*source=DIR"):
        esc50.download(tmp_path, url="http://127.0.0.1:9/esc50.zip", timeout=2)
    result = runner.invoke(app, ["data", "esc50", "--download", "--out", str(tmp_path / "d")], env={"no_proxy": "*"})
    assert result.exit_code == 2 and "could not download ESC-50" in result.output and "--source DIR" in result.output


def _recipe(tmp_path: Path, comp: Path, base: str) -> Path:
    """recipes/<base>.toml on the folder ``comp``, with the cheap ens_basic member in place of its members."""
    path = tmp_path / f"{base}_small.toml"
    path.write_text(
        f'extends = "{ROOT / "recipes" / (base + ".toml")}"\nname = "{base}_small"\n'
        f'[competition]\ndir = "{comp}"\n[paths]\nruns_dir = "{tmp_path / "runs"}"\nsubmissions_dir = "{tmp_path / "subs"}"\n'
        '[[functionals]]\nname = "basic_lr"\nset = "ens_basic"\nmodel = "logreg"\nc = 0.1\n'
    )
    return path


def test_both_protocols_train_blend_and_score_through_the_cli(small_source, tmp_path):
    cv, held = tmp_path / "cv", tmp_path / "held"
    cli_ok(["data", "esc50", "--source", str(small_source), "--out", str(cv)])
    cli_ok(["data", "esc50", "--source", str(small_source), "--out", str(held), "--test-fold", "5"])
    recipe = _recipe(tmp_path, cv, "esc50")
    cli_ok(["train", "--recipe", str(recipe), "--quiet"])
    blended = cli_ok(["blend", "--recipe", str(recipe)])
    board = pd.read_csv(tmp_path / "runs" / "esc50_small" / "blend" / "leaderboard.csv").set_index("model")
    assert 1 / 3 < board.loc["basic_lr", "cv_accuracy"] <= 1 and "basic_lr" in blended  # better than chance on 3 classes
    assert not (cv / "test_speakers.csv").exists() and not (cv / "train_speakers.csv").exists()  # no speaker inference on non-speech
    refused = runner.invoke(app, ["score", str(tmp_path / "subs" / "esc50_small-auto.csv"), "--recipe", str(recipe)])
    assert refused.exit_code == 2 and "solution.csv does not exist: this competition has no hidden labels" in refused.output

    recipe = _recipe(tmp_path, held, "esc50_holdout")
    cli_ok(["train", "--recipe", str(recipe), "--quiet"])
    cli_ok(["blend", "--recipe", str(recipe)])
    submission = tmp_path / "subs" / "esc50_holdout_small-auto.csv"
    scored = cli_ok(["score", str(submission), "--recipe", str(recipe)])
    truth = pd.read_csv(held / "solution.csv", dtype=str).set_index("id")["label"]
    predicted = pd.read_csv(submission, dtype=str).set_index("id")["label"]
    assert f"accuracy {(predicted.loc[truth.index] == truth).mean():.4f}" in scored and "n 24" in scored
