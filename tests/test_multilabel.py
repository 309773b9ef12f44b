"""The multilabel head: metrics against scikit-learn and by hand, thresholds, union mixup, and
the whole data -> train -> blend -> score path on real RAVDESS clips labelled emotion (+ strong)."""

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, label_ranking_average_precision_score
from typer.testing import CliRunner

from ensemble.cli import app
from ensemble.core import multilabel

from .conftest import cli_ok

CLASSES = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised", "strong"]


def test_lwlrap_by_hand_and_against_scikit_learn():
    y = np.array([[1, 0, 1], [0, 1, 0]], dtype=float)
    scores = np.array([[0.9, 0.8, 0.1], [0.3, 0.2, 0.6]])
    # clip 0: label 0 ranked 1st -> precision 1; label 2 ranked 3rd with 2 true labels at or above -> 2/3.
    # clip 1: label 1 ranked 3rd, 1 true label at or above -> 1/3.  lwlrap = (1 + 2/3 + 1/3) / 3 labels.
    assert multilabel.lwlrap(y, scores) == pytest.approx(2 / 3)
    # LRAP averages per clip instead: ((1 + 2/3) / 2 + 1/3) / 2; equal to lwlrap once each clip has one label
    assert label_ranking_average_precision_score(y, scores) == pytest.approx((5 / 6 + 1 / 3) / 2)
    rng = np.random.default_rng(0)
    single = np.eye(4)[rng.integers(0, 4, 50)]
    s = rng.random((50, 4))
    assert multilabel.lwlrap(single, s) == pytest.approx(label_ranking_average_precision_score(single, s))


def test_scores_match_scikit_learn():
    rng = np.random.default_rng(1)
    y = (rng.random((200, 5)) < 0.3).astype(float)
    proba = np.clip(y * 0.5 + rng.random((200, 5)) * 0.6, 0, 1)
    s = multilabel.scores(y, proba, thresholds=0.5)
    assert s["map"] == pytest.approx(average_precision_score(y, proba, average="macro"))
    assert s["micro_f1"] == pytest.approx(f1_score(y, proba >= 0.5, average="micro"))
    assert s["macro_f1"] == pytest.approx(f1_score(y, proba >= 0.5, average="macro"))
    p = np.clip(proba, 1e-7, 1 - 1e-7)
    assert s["log_loss"] == pytest.approx(float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()))


def test_thresholds_separate_a_separable_class_and_every_clip_gets_a_label():
    y = np.array([[1, 0], [1, 0], [0, 1], [0, 0]], dtype=float)
    proba = np.array([[0.30, 0.1], [0.25, 0.2], [0.10, 0.9], [0.05, 0.3]])
    t = multilabel.tune_thresholds(y, proba)
    assert 0.10 < t[0] <= 0.25 and 0.3 < t[1] <= 0.9  # both classes perfectly separated, not at 0.5
    assert multilabel.labels(proba, t, ["a", "b"]) == ["a", "a", "b", "b"]  # the last clip falls back to its argmax
    assert multilabel.decode(multilabel.encode(["a b", "b", ""], ["a", "b"]), ["a", "b"]) == ["a b", "b", ""]


def test_union_mixup_mixes_images_and_unites_labels():
    np.random.seed(0)
    batch = torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)])
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mixed, united = multilabel.union_mixup(batch, target, alpha=0.4)
    lam = 1 - float(mixed[0].mean())  # row 0 = lam * 0 + (1 - lam) * 1
    assert 0 < lam < 1 and torch.allclose(mixed[1], torch.full((1, 2, 2), lam))
    assert torch.equal(united, torch.ones(2, 2))
    smoothed = multilabel.smooth(target, 0.1)
    assert torch.allclose(smoothed, torch.tensor([[0.95, 0.05], [0.05, 0.95]]))


def test_multilabel_end_to_end_on_real_clips(strong_source, tiny_recipe_text, tmp_path):
    comp, runs, subs = tmp_path / "comp", tmp_path / "runs", tmp_path / "subs"
    recipe = tmp_path / "tiny_ml.toml"
    text = tiny_recipe_text(comp, runs, subs).replace("[competition]\n", '[competition]\ntask = "multilabel"\n')
    text = text.replace('"surprised"]', '"surprised", "strong"]') + 'metric = "lwlrap"\n[augment]\nmixup_alpha = 0.4\n'
    recipe.write_text(text)
    cli_ok(["data", "ravdess", "--source", str(strong_source), "--out", str(comp), "--test-actors", "5,6", "--folds", "2", "--labels", "emotion_intensity"])
    cli_ok(["train", "--recipe", str(recipe), "--quiet"])
    out = cli_ok(["blend", "--recipe", str(recipe)])
    assert "blend: caruana" in out and "cv_lwlrap" in out and "blend: stacking" not in out
    train = pd.read_csv(comp / "train.csv", dtype=str)
    assert train["label"].str.endswith(" strong").sum() > 5
    oof = pd.read_csv(runs / "tiny" / "test_resnet" / "fold0" / "oof.csv")
    proba = oof[CLASSES].to_numpy()
    assert ((proba > 0) & (proba < 1)).all() and not np.allclose(proba.sum(axis=1), 1.0)  # sigmoids, not a softmax
    thresholds = pd.read_json(runs / "tiny" / "blend" / "thresholds.json", typ="series")
    assert list(thresholds.index) == CLASSES and ((thresholds > 0) & (thresholds < 1)).all()
    sub = pd.read_csv(subs / "tiny-caruana.csv", dtype=str, keep_default_na=False)
    assert len(sub) == 16 and all(label and set(label.split()) <= set(CLASSES) for label in sub["label"])
    score = cli_ok(["score", str(subs / "tiny-caruana.csv"), "--recipe", str(recipe)])
    assert "lwlrap" in score and "micro_f1" in score
    clip = next(strong_source.glob("Actor_05/*-02-*.flac"))  # a strong-intensity test clip
    cli_ok(["predict", str(clip), "--recipe", str(recipe), "--out", str(tmp_path / "p.csv")])
    row = pd.read_csv(tmp_path / "p.csv")[CLASSES].to_numpy()[0]
    assert ((row > 0) & (row < 1)).all() and abs(row.sum() - 1) > 1e-3  # one sigmoid per class
    cli_ok(["report", "--recipe", str(recipe)])
    page = (runs / "tiny" / "report.html").read_text()
    assert "no confusion matrix" in page and "average precision" in page and page.count("<img") >= 5
    bad = CliRunner().invoke(app, ["blend", "--recipe", str(recipe), "--method", "stacking"])
    assert bad.exit_code == 2 and "'stacking' is not one of ('mean', 'caruana'), the methods for a multilabel task" in bad.output.replace("\n", " ")
