"""Refusals users will hit with ens predict and ens score, each through the real CLI: exit code 2 and
an ``error:`` line naming the file, run or option and the fix. Also what a zero-weight blend member
does (it is left out), and that ens score's log-loss and multilabel scores agree with scikit-learn."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, average_precision_score, balanced_accuracy_score, f1_score, log_loss
from typer.testing import CliRunner

from ensemble.cli import app

from .conftest import cli_ok, copy_tiny_runs, ravdess_clip
from .test_multilabel import CLASSES as ML_CLASSES

CLASSES = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
CLIP = ravdess_clip(5, 3)  # a real held-out clip (actor 5, happy)


def refused(args: list[str]) -> str:
    """Run ``ens ARGS``, assert it is a refusal (exit code 2, an ``error:`` line, no traceback); return the output."""
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output + repr(result.exception)
    assert result.output.startswith("error: "), result.output
    return result.output


def assert_names(output: str, *parts: str) -> None:
    for part in parts:
        assert part in output, (part, output)


# ---------------------------------------------------------------- ens predict


@pytest.fixture()
def runs(tiny_trained, tmp_path):
    """A private copy of the session's tiny runs with their blend; returns ``(recipe path, runs/tiny folder)``."""
    recipe = copy_tiny_runs(tiny_trained, tmp_path)
    return recipe, tmp_path / "runs" / "tiny"


def equal_weights(tiny: Path) -> None:
    """Delete the blend's weights: every finished member is loaded, in the recipe's order (the
    blend may have given one of them weight 0, and such a member is not loaded)."""
    (tiny / "blend" / "weights.json").unlink()


def predict_args(recipe: Path, *paths) -> list[str]:
    return ["predict", *(str(p) for p in (paths or [CLIP])), "--recipe", str(recipe)]


@pytest.mark.parametrize(
    "content",
    ["{not json", "[1, 2]", '{"method": "caruana", "weights": {"test_resnet": "heavy"}}', '{"weights": {}}'],
    ids=["garbage", "a list", "a weight that is not a number", "no method"],
)
def test_predict_refuses_an_unreadable_weights_json_naming_it_and_the_fix(runs, content):
    recipe, tiny = runs
    path = tiny / "blend" / "weights.json"
    path.write_text(content)
    out = refused(predict_args(recipe))
    assert_names(out, f"error: {path} is not a blend's weights file", "re-run `ens blend` or delete it for equal weights")


def test_predict_refuses_a_weighted_member_with_an_unfinished_fold(runs):
    recipe, tiny = runs
    weights = json.loads((tiny / "blend" / "weights.json").read_text())["weights"]
    member = next(b for b, w in weights.items() if w > 0)  # a member the blend gave weight
    (tiny / member / "fold1" / "metrics.json").unlink()
    out = refused(predict_args(recipe))
    assert_names(
        out,
        str(tiny / "blend" / "weights.json"),
        f"weights ['{member}']",
        "2 folds are not all finished",
        str(tiny),
        f"`ens train --backbone {member}`",
        "re-run `ens blend`",
    )


def test_a_zero_weight_member_is_left_out_even_unfinished(runs, tiny_trained, tmp_path):
    """``_member_weights`` keeps only positive weights: a member weighted 0 is not loaded, need not be
    finished, and the prediction is that of the other members alone; with no positive weight, a refusal."""
    recipe, tiny = runs
    path = tiny / "blend" / "weights.json"
    path.write_text(
        json.dumps({"method": "caruana", "members": ["test_efficientnet", "test_resnet"], "weights": {"test_efficientnet": 0.0, "test_resnet": 1.0}})
    )
    (tiny / "test_efficientnet" / "fold1" / "metrics.json").unlink()  # unfinished, but weighted 0
    out = cli_ok(predict_args(recipe) + ["--out", str(tmp_path / "zero.csv")])
    ensemble_line = next(line for line in out.splitlines() if line.startswith("ensemble:"))
    assert ensemble_line.startswith("ensemble: test_resnet x2 folds (1.00); weights: ") and "test_efficientnet" not in ensemble_line

    alone = copy_tiny_runs(tiny_trained, tmp_path / "alone", blend=False)  # test_resnet by itself, no blend
    alone.write_text(alone.read_text().replace("[paths]\n", 'backbones = ["test_resnet"]\n[paths]\n'))
    cli_ok(predict_args(alone) + ["--out", str(tmp_path / "alone.csv")])
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "zero.csv"), pd.read_csv(tmp_path / "alone.csv"))

    path.write_text(json.dumps({"method": "caruana", "weights": {"test_efficientnet": 0.0, "test_resnet": 0}}))
    assert_names(refused(predict_args(recipe)), f"error: {path} gives no member a positive weight; re-run `ens blend`.")


def test_predict_renders_each_member_with_the_features_its_runs_were_trained_with(runs, tmp_path):
    """A recipe whose [features] changed since training still predicts as its runs were trained (their config.json)."""
    recipe, tiny = runs
    equal_weights(tiny)
    cli_ok(predict_args(recipe) + ["--out", str(tmp_path / "before.csv")])
    recipe.write_text(recipe.read_text() + "[features]\nheight = 48\n")
    cli_ok(predict_args(recipe) + ["--out", str(tmp_path / "after.csv")])
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "before.csv"), pd.read_csv(tmp_path / "after.csv"))


OTHER = [*CLASSES[:-1], "surprise"]


@pytest.mark.parametrize("case", ["the recipe lists other classes", "one member's runs have other classes", "runs disagree, the recipe lists none"])
def test_predict_refuses_runs_trained_with_other_classes(runs, case):
    recipe, tiny = runs
    equal_weights(tiny)
    if case == "the recipe lists other classes":
        recipe.write_text(recipe.read_text() + f"[competition]\nclasses = {json.dumps(OTHER)}\n")
        run, trained, other = tiny / "test_efficientnet" / "fold0", CLASSES, f"'tiny' has [competition].classes = {OTHER}"
    else:
        if case == "runs disagree, the recipe lists none":
            recipe.write_text(recipe.read_text() + "[competition]\nclasses = []\n")
        for fold in (0, 1):
            config_path = tiny / "test_resnet" / f"fold{fold}" / "config.json"
            config = json.loads(config_path.read_text())
            config["classes"] = OTHER
            config_path.write_text(json.dumps(config))
        run, trained = tiny / "test_resnet" / "fold0", OTHER
        other = f"'tiny' has [competition].classes = {CLASSES}" if case.startswith("one") else f"other runs of the ensemble with {CLASSES}"
    out = refused(predict_args(recipe))
    assert_names(
        out,
        f"error: {run} was trained with classes {trained}, {other} (names and order)",
        "predict with the recipe it was trained with",
        f"`ens train --backbone {run.parent.name} --fold 0 --force`",
    )


def test_predict_refuses_weights_that_do_not_load(runs):
    recipe, tiny = runs
    equal_weights(tiny)
    weights = tiny / "test_resnet" / "fold1" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated mid-copy
    out = refused(predict_args(recipe))
    assert_names(out, f"error: {weights} does not load into test_resnet", "re-train it with `ens train --backbone test_resnet --fold 1 --force`")


def test_predict_refuses_a_folder_without_audio(runs, tmp_path):
    recipe, _ = runs
    folder = tmp_path / "recordings"
    (folder / "day1").mkdir(parents=True)
    (folder / "notes.txt").write_text("clips to come")
    (folder / "day1" / "clip.m4a").write_bytes(b"\0" * 64)
    out = refused(predict_args(recipe, folder))
    assert_names(
        out,
        f"error: {folder}: folder holds no audio file (.wav, .flac, .mp3, .ogg, searched recursively)",
        "give the folder that holds the clips, or the audio files themselves",
    )
    assert "ensemble:" not in out  # refused before the models load


# ---------------------------------------------------------------- ens score


@pytest.fixture()
def competition_copy(tiny_trained, tmp_path):
    """A private copy of the tiny competition (16 test clips) and a recipe pointing at it."""
    comp = tmp_path / "comp"
    shutil.copytree(tiny_trained["comp"], comp, symlinks=True, ignore=shutil.ignore_patterns(".ens_cache"))
    recipe = tmp_path / "score.toml"
    recipe.write_text(f'extends = "{tiny_trained["recipe"]}"\nname = "tiny"\n[competition]\ndir = "{comp}"\n')
    return recipe, comp


def _table(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _label_submission(comp: Path, path: Path) -> Path:
    """The sample submission with the true label in every other row and 'calm' elsewhere."""
    truth = _table(comp / "solution.csv").set_index("id")["label"]
    sub = _table(comp / "sample_submission.csv")
    sub["label"] = [truth[i] if k % 2 else "calm" for k, i in enumerate(sub["id"])]
    sub.to_csv(path, index=False)
    return path


def test_score_without_solution_csv_is_refused_naming_it(competition_copy, tmp_path):
    recipe, comp = competition_copy
    sub = _label_submission(comp, tmp_path / "sub.csv")
    (comp / "solution.csv").unlink()
    out = refused(["score", str(sub), "--recipe", str(recipe)])
    assert_names(out, f"error: {comp / 'solution.csv'} does not exist: this competition has no hidden labels to score against")


def _replace_id(sub: pd.DataFrame) -> pd.DataFrame:
    sub.loc[3, "id"] = "test_9999"
    return sub


def _set_label(sub: pd.DataFrame) -> pd.DataFrame:
    sub.loc[2, "label"] = "joyful"
    return sub


BAD_SUBMISSIONS = [
    ("an id not in the solution", _replace_id, ["ids must be exactly the 16 ids of {solution}, once each"]),
    ("a test id without a row", lambda s: s.drop(index=5), ["ids must be exactly the 16 ids of {solution}, once each"]),
    ("a repeated id", lambda s: pd.concat([s, s.iloc[[7]]]), ["ids must be exactly the 16 ids of {solution}, once each"]),
    ("no id column", lambda s: s.rename(columns={"id": "clip"}), ["ids must be exactly the 16 ids of {solution}, once each"]),
    ("an unknown label", _set_label, ["labels ['joyful'] are not among the classes", str(CLASSES)]),
    ("a probability that is text", None, ["a class column holds a value that is not a number", "write probabilities"]),
]


@pytest.mark.parametrize("broken, change, parts", BAD_SUBMISSIONS, ids=[b[0] for b in BAD_SUBMISSIONS])
def test_score_refuses_a_bad_submission_naming_it(competition_copy, tmp_path, broken, change, parts):
    recipe, comp = competition_copy
    sub = _label_submission(comp, tmp_path / "sub.csv")
    if change is None:  # a probability submission with one cell that is not a number
        frame = _table(comp / "sample_submission.csv")[["id"]]
        for name in CLASSES:
            frame[name] = "0.125"
        frame.loc[4, "sad"] = "high"
    else:
        frame = change(_table(sub))
    frame.to_csv(sub, index=False)
    out = refused(["score", str(sub), "--recipe", str(recipe)])
    assert_names(out, f"error: {sub}", *(part.format(solution=comp / "solution.csv") for part in parts))


def _negative(frame: pd.DataFrame) -> pd.DataFrame:
    frame.loc[4, "sad"] = "-0.1"
    return frame


BAD_PROBABILITIES = [
    (
        "a class column missing",
        lambda f: f.drop(columns=["surprised"]),
        ["has probability columns for 7 classes but lacks ['surprised']", "write one column per class"],
    ),
    ("a negative probability", _negative, ["class columns must hold finite probabilities >= 0"]),
    ("an infinite probability", lambda f: f.assign(calm="inf"), ["class columns must hold finite probabilities >= 0"]),
]


@pytest.mark.parametrize("broken, change, parts", BAD_PROBABILITIES, ids=[b[0] for b in BAD_PROBABILITIES])
def test_score_refuses_bad_probability_columns_naming_them(competition_copy, tmp_path, broken, change, parts):
    recipe, comp = competition_copy
    frame = _table(comp / "sample_submission.csv")[["id"]]
    for name in CLASSES:
        frame[name] = "0.125"
    change(frame).to_csv(tmp_path / "p.csv", index=False)
    out = refused(["score", str(tmp_path / "p.csv"), "--recipe", str(recipe)])
    assert_names(out, f"error: {tmp_path / 'p.csv'}", *parts)


def test_a_probability_submission_prints_log_loss_equal_to_scikit_learn(competition_copy, tmp_path):
    recipe, comp = competition_copy
    truth = _table(comp / "solution.csv").set_index("id")["label"]
    sample = _table(comp / "sample_submission.csv")
    proba = pd.DataFrame(np.random.default_rng(3).dirichlet(np.ones(8) * 0.7, size=len(sample)), columns=CLASSES, index=sample["id"])
    proba[list(reversed(CLASSES))].rename_axis("id").reset_index().sample(frac=1, random_state=0).to_csv(tmp_path / "p.csv", index=False)
    out = cli_ok(["score", str(tmp_path / "p.csv"), "--recipe", str(recipe)])
    proba = proba.loc[truth.index]
    predicted = proba.idxmax(axis=1)
    expected = {
        "accuracy": accuracy_score(truth, predicted),
        "macro_f1": f1_score(truth, predicted, labels=CLASSES, average="macro", zero_division=0),
        "uar": balanced_accuracy_score(truth, predicted),
        "log_loss": log_loss(truth, proba[sorted(CLASSES)].to_numpy(), labels=sorted(CLASSES)),  # sklearn's column order
    }
    assert 0 < expected["accuracy"] < 1 and 1 < expected["log_loss"] < 10
    line = out.strip().splitlines()[-1]
    assert line == f"{tmp_path / 'p.csv'}: " + "  ".join(f"{k} {v:.4f}" for k, v in expected.items()) + "  n 16"


def _lwlrap_by_hand(y: np.ndarray, s: np.ndarray) -> float:
    """Label-weighted LRAP from its definition: over every (clip, true label), the share of true labels
    among the labels scored at least as high as it."""
    precisions = [(y[i] * (s[i] >= s[i, j])).sum() / (s[i] >= s[i, j]).sum() for i in range(len(y)) for j in np.flatnonzero(y[i])]
    return float(np.mean(precisions))


def test_multilabel_probability_columns_are_scored_like_scikit_learn(strong_source, tiny_recipe_text, tmp_path):
    comp = tmp_path / "comp"
    cli_ok(["data", "ravdess", "--source", str(strong_source), "--out", str(comp), "--test-actors", "5,6", "--folds", "2", "--labels", "emotion_intensity"])
    text = tiny_recipe_text(comp, tmp_path / "runs", tmp_path / "subs").replace("[competition]\n", '[competition]\ntask = "multilabel"\n')
    recipe = tmp_path / "ml.toml"
    recipe.write_text(text.replace('"surprised"]', '"surprised", "strong"]') + 'metric = "lwlrap"\n')
    truth = _table(comp / "solution.csv").set_index("id")["label"]
    y = np.array([[name in label.split() for name in ML_CLASSES] for label in truth], dtype=float)
    assert y[:, -1].sum() > 2 and (y.sum(axis=1) == 2).any()  # some clips carry two labels (emotion + strong)
    rng = np.random.default_rng(4)
    scores = np.clip(0.45 * y + rng.random(y.shape) * 0.6, 0.01, 0.99)  # informative but imperfect sigmoids
    frame = pd.DataFrame(scores, columns=ML_CLASSES, index=truth.index)
    frame.rename_axis("id").reset_index().iloc[::-1].to_csv(tmp_path / "p.csv", index=False)

    out = cli_ok(["score", str(tmp_path / "p.csv"), "--recipe", str(recipe)])
    expected = {
        "lwlrap": _lwlrap_by_hand(y, scores),
        "map": average_precision_score(y, scores, average="macro"),
        "micro_f1": f1_score(y, scores >= 0.5, average="micro"),
        "macro_f1": f1_score(y, scores >= 0.5, average="macro", zero_division=0),
        "log_loss": log_loss(y.ravel(), scores.ravel()),  # the mean binary cross-entropy over clips and classes
    }
    assert y.sum(axis=0).all() and 0.3 < expected["lwlrap"] < 1 and 0 < expected["micro_f1"] < 1
    line = out.strip().splitlines()[-1]
    assert line == f"{tmp_path / 'p.csv'}: " + "  ".join(f"{k} {v:.4f}" for k, v in expected.items()) + "  n 16"


# ---------------------------------------------------------------- what docs/reliability.md quotes


def _wav(x, rate=16000, fmt="WAV") -> bytes:
    import io

    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, x, rate, format=fmt, subtype="PCM_16")
    return buf.getvalue()


TONE = 0.5 * np.sin(2 * np.pi * 440 * np.arange(48000) / 16000)


def _garbled_fmt(path):
    data = bytearray(_wav(TONE))
    data[20:36] = b"\xff" * 16
    path.write_bytes(bytes(data))


def _one_hz(path):
    import soundfile as sf

    sf.write(path, np.zeros(100), 1)


AUDIO_FIXES = {  # the file, then the problem and the fix as docs/reliability.md quotes them
    "0-byte file": (lambda p: p.write_bytes(b""), ["the file is empty, 0 bytes", "re-copy it or drop it from the table"]),
    "missing file": (lambda p: None, ["audio file does not exist; check the path column and [competition].audio_root"]),
    "a folder": (lambda p: p.mkdir(), ["is a folder, not an audio file; check the path column"]),
    "WAV cut mid-header": (
        lambda p: p.write_bytes(_wav(TONE)[:30]),
        ["has a damaged or truncated WAV header (30 bytes; libsndfile: ", "re-export or re-download the file"],
    ),
    "garbled fmt chunk": (_garbled_fmt, ["has a damaged or truncated WAV header (", "libsndfile: ", "re-export or re-download the file"]),
    "FLAC cut mid-stream": (
        lambda p: p.write_bytes(_wav(TONE, fmt="FLAC")[: len(_wav(TONE, fmt="FLAC")) // 2]),
        ["the audio stream is cut short or corrupt (libsndfile: ", "the header lists 48000 frames)", "re-export or re-download the file"],
    ),
    "sample rate 1 Hz": (_one_hz, ["sample rate 1 Hz is outside 1000-768000 Hz, so the header is corrupt; re-export the file"]),
    "0 frames": (lambda p: p.write_bytes(_wav(np.zeros(0))), ["the file holds no audio (a header with 0 frames); re-export it or drop it from the table"]),
}


@pytest.mark.parametrize("case", list(AUDIO_FIXES))
def test_audio_refusals_name_the_file_the_problem_and_the_fix(tmp_path, case):
    from ensemble.inputs import audio

    make, parts = AUDIO_FIXES[case]
    path = tmp_path / "clip 1.wav"
    make(path)
    with pytest.raises(audio.AudioError) as caught:
        audio.load(path, 16000, 2.0)
    assert_names(str(caught.value), f"{path}: ", *parts)


def _tables(root: Path, train: str) -> Path:
    root.mkdir()
    (root / "train.csv").write_text(train)
    (root / "test.csv").write_text("id,path\nt1,x.wav\nt2,y.wav\n")
    (root / "sample_submission.csv").write_text("id,label\nt1,a\nt2,a\n")
    return root


def test_table_refusals_name_the_fix(tmp_path):
    from ensemble.core.recipe import CompetitionConfig, FoldsConfig
    from ensemble.store import competition

    root = _tables(tmp_path / "comp", "id,path,label,group\nc1,1.wav,a,s1\nc2,2.wav,b,s2\nc3,3.wav,c,s3\nc4,4.wav,d,s4\n")
    (root / "train.csv").rename(root / "train.old")
    with pytest.raises(competition.CompetitionError) as caught:
        competition.load(CompetitionConfig(dir=str(root)))
    assert_names(str(caught.value), f"{root / 'train.csv'} does not exist", "build one with `ens data ravdess`")
    (root / "train.old").rename(root / "train.csv")
    comp = competition.load(CompetitionConfig(dir=str(root)))  # 4 speakers, each class once: too few to stratify 2 folds
    with pytest.raises(competition.CompetitionError) as caught:  # was scikit-learn's bare ValueError
        competition.folds(comp, FoldsConfig(n_splits=2))
    assert_names(str(caught.value), f"{root / 'train.csv'}: every class has fewer than 2 examples", "lower [folds].n_splits")
    assert not (root / "folds.csv").exists()


def test_ens_blend_prints_a_skipped_backbone_with_the_reason_and_refuses_when_none_is_finished(tiny_trained, tmp_path):
    recipe = copy_tiny_runs(tiny_trained, tmp_path, blend=False)
    tiny = tmp_path / "runs" / "tiny"
    (tiny / "test_resnet" / "fold1" / "metrics.json").unlink()
    out = cli_ok(["blend", "--recipe", str(recipe), "--method", "mean"])
    assert f"skipped test_resnet: {tiny / 'test_resnet' / 'fold1'} is not finished; run `ens train --backbone test_resnet --fold 1`" in out
    (tiny / "test_efficientnet" / "fold0" / "metrics.json").unlink()
    assert_names(refused(["blend", "--recipe", str(recipe)]), "no member of recipe 'tiny' has all 2 folds finished", "ens train")
