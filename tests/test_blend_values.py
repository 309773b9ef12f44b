"""The blend's numbers against an independent computation.

Each method is blended by ``ens blend`` on a copy of the tiny trained runs; every number it writes
(the submission's labels and probabilities, ``weights.json``, ``blend/oof.csv``, the leaderboard's
row) is recomputed here with numpy, pandas and scikit-learn from the run tables on disk (each
member's ``oof.csv`` over its folds, its ``test.csv`` averaged over the fold models), following the
method's definition in docs/blending.md. The submissions are written for competitions whose
``sample_submission.csv`` lists the ids in another order than ``test.csv`` (and, for the
probability layout, the class columns in another order than the recipe's classes), so a
submission in ``test.csv`` order or class order would fail too.

Only the weights of caruana and optimize come from :func:`ensemble.blending.blenders.fit` (their search is
tested on constructed data in test_blenders.py); what is checked here is that the blend pairs
them with the right members, uses the chosen method's, and combines the test probabilities with
them (and that the checks are sensitive: swapped weights give another submission on this data).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, log_loss

from ensemble.blending import blenders
from ensemble.core import multilabel, tasks
from ensemble.core import recipe as recipe_mod

from .conftest import cli_ok, copy_tiny_runs

CLASSES = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
BACKBONES = ["test_efficientnet", "test_resnet"]  # the tiny recipe's members, in its order
TABLES = ("train.csv", "test.csv", "folds.csv", "solution.csv")


def _read(path: Path) -> pd.DataFrame:
    """A probability table (pandas parses its floats exactly as written)."""
    return pd.read_csv(path, dtype={"id": str}, keep_default_na=False)


def _member(runs: Path, backbone: str, train_ids, test_ids, classes, n_folds: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """One member's OOF ``(n_train, classes)`` in ``train_ids`` order (each row from the fold run
    that holds it) and its test probabilities ``(n_test, classes)`` in ``test_ids`` order, the mean
    over the fold models."""
    oof = pd.concat([_read(runs / backbone / f"fold{k}" / "oof.csv") for k in range(n_folds)]).set_index("id")
    assert oof.index.is_unique and sorted(oof.index) == sorted(train_ids)
    tests = [_read(runs / backbone / f"fold{k}" / "test.csv").set_index("id").loc[list(test_ids), classes].to_numpy() for k in range(n_folds)]
    return oof.loc[list(train_ids), classes].to_numpy(), np.mean(tests, axis=0)


def _rows_sum_1(p: np.ndarray) -> np.ndarray:
    return p / p.sum(axis=1, keepdims=True)


def _column_ranks(p: np.ndarray) -> np.ndarray:
    """Each row's rank within its class column among the rows (ties: the average rank), / rows."""
    return pd.DataFrame(p).rank(axis=0, method="average").to_numpy() / len(p)


def _by_hand(method: str, oof: np.ndarray, y: np.ndarray, options: dict):
    """``method`` fitted on ``oof`` ``(members, n, classes)`` and labels ``y``, as docs/blending.md
    defines it: a function of ``(members, m, classes)`` -> ``(m, classes)``, and its weights
    (None for rank, geometric and stacking)."""
    m = len(oof)
    if method in ("mean", "caruana", "optimize"):
        w = np.full(m, 1 / m) if method == "mean" else blenders.fit(method, oof, y, **options).weights
        return (lambda p: _rows_sum_1(sum(w[k] * p[k] for k in range(m)))), w
    if method == "rank":
        return (lambda p: _rows_sum_1(np.mean([_column_ranks(p[k]) for k in range(m)], axis=0))), None
    if method == "geometric":
        return (lambda p: _rows_sum_1(np.prod(p, axis=0) ** (1 / m))), None
    assert method == "stacking"

    def features(p):  # the members' log-probabilities side by side: (rows, members * classes)
        return np.concatenate([np.log(np.clip(p[k], 1e-7, None)) for k in range(m)], axis=1)

    model = LogisticRegression(C=options["stacking_c"], max_iter=2000, random_state=options["seed"]).fit(features(oof), y)

    def combine(p):
        out = np.zeros((p.shape[1], p.shape[2]))
        out[:, model.classes_] = model.predict_proba(features(p))
        return out

    return combine, None


def _cross_validated(method: str, oof: np.ndarray, y: np.ndarray, fold_of: np.ndarray, options: dict) -> np.ndarray:
    """Each fold's rows combined by ``method`` fitted on the other folds' rows and labels only."""
    out = np.full(oof.shape[1:], np.nan)
    for fold in np.unique(fold_of):
        held = fold_of == fold
        combine, _ = _by_hand(method, oof[:, ~held], y[~held], options)
        out[held] = combine(oof[:, held])
    assert not np.isnan(out).any()
    return out


def _sklearn_scores(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    pred = proba.argmax(axis=1)
    labels = np.arange(proba.shape[1])
    return {
        "accuracy": accuracy_score(y, pred),
        "macro_f1": f1_score(y, pred, labels=labels, average="macro", zero_division=0),
        "uar": balanced_accuracy_score(y, pred),
        "log_loss": log_loss(y, proba, labels=labels),
    }


def _assert_labels_are_argmax(labels, proba: np.ndarray, classes: list[str]) -> None:
    """``labels[i]`` is the most probable class of ``proba[i]`` (within 1e-12: an exact tie, as
    rank averaging makes, may go to any of the tied classes)."""
    index = {c: i for i, c in enumerate(classes)}
    picked = proba[np.arange(len(proba)), [index[label] for label in labels]]
    wrong = np.flatnonzero(picked < proba.max(axis=1) - 1e-12)
    assert not len(wrong), f"rows {wrong.tolist()}: the submitted label is not the most probable class"


def _competition_copy(shared: Path, dest: Path, sample: pd.DataFrame) -> Path:
    """A competition folder ``dest`` with ``shared``'s tables and feature cache (its audio stays in
    ``shared``: the recipe sets ``audio_root``, so the cache's keys still match) and ``sample`` as
    its ``sample_submission.csv``."""
    dest.mkdir(parents=True)
    for name in TABLES:
        shutil.copy2(shared / name, dest / name)
    shutil.copytree(shared / ".ens_cache", dest / ".ens_cache")
    sample.to_csv(dest / "sample_submission.csv", index=False)
    return dest


@pytest.fixture(scope="module")
def competitions(tiny_trained, tmp_path_factory):
    """Two copies of the shared tiny competition: ``labels``, whose sample submission (id, label)
    lists the test ids in a shuffled order, and ``probs``, whose sample has one column per class,
    in a shuffled order, and the ids shuffled another way."""
    shared = tiny_trained["comp"]
    test_ids = pd.read_csv(shared / "test.csv", dtype=str)["id"].to_numpy()
    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("blend_values_comps")
    label_ids, proba_ids = rng.permutation(test_ids), rng.permutation(test_ids)
    columns = list(rng.permutation(CLASSES))
    assert list(label_ids) != list(test_ids) and list(proba_ids) != list(test_ids) and columns != CLASSES
    labels = _competition_copy(shared, root / "labels", pd.DataFrame({"id": label_ids, "label": "neutral"}))
    probs = _competition_copy(shared, root / "probs", pd.DataFrame({"id": proba_ids, **{c: 1 / len(CLASSES) for c in columns}}))
    return {"labels": labels, "probs": probs, "shared": shared}


def _recipe(tiny_trained, tmp_path: Path, comp: Path, subs: str, blend: dict) -> Path:
    """A recipe for the runs copied under ``tmp_path`` that blends for competition ``comp`` with the ``[blend]`` settings ``blend``."""
    path = tmp_path / f"{subs}.toml"
    path.write_text(
        f'extends = "{tiny_trained["recipe"]}"\nname = "tiny"\nruns_dir = "{tmp_path / "runs"}"\n'
        f'submissions_dir = "{tmp_path / subs}"\n[competition]\ndir = "{comp}"\naudio_root = "{tiny_trained["comp"]}"\n'
        "[blend]\n" + "".join(f"{key} = {value}\n" for key, value in blend.items())
    )
    return path


# With the tiny recipe's two members and the default bag_fraction 0.5, each Caruana bag holds one
# member, so the bagged weights are the seed's draw and do not depend on the OOF (the same for
# every fold): only unbagged Caruana (bags = 0) shows that the blend fits it fold by fold.
CASES = {**{m: (m, {}) for m in blenders.METHODS}, "caruana-unbagged": ("caruana", {"bags": 0})}


@pytest.mark.parametrize("case", list(CASES))
def test_blend_values_match_an_independent_computation(tiny_trained, competitions, tmp_path, case):
    method, settings = CASES[case]
    copy_tiny_runs(tiny_trained, tmp_path, blend=False)
    runs = tmp_path / "runs" / "tiny"
    cli_ok(["blend", "--recipe", str(_recipe(tiny_trained, tmp_path, competitions["probs"], "subs_probs", settings)), "--method", method])
    cli_ok(["blend", "--recipe", str(_recipe(tiny_trained, tmp_path, competitions["labels"], "subs_labels", settings)), "--method", method])

    shared = competitions["shared"]
    train = pd.read_csv(shared / "train.csv", dtype=str)
    train_ids, test_ids = train["id"].to_numpy(), pd.read_csv(shared / "test.csv", dtype=str)["id"].to_numpy()
    y = train["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    fold_of = pd.read_csv(shared / "folds.csv", dtype=str).set_index("id").loc[train_ids, "fold"].astype(int).to_numpy()
    members = [_member(runs, b, train_ids, test_ids, CLASSES) for b in BACKBONES]
    oof, test = np.stack([o for o, _ in members]), np.stack([t for _, t in members])
    b = recipe_mod.load(tmp_path / "subs_labels.toml").blend
    assert b.bags == settings.get("bags", 20)
    options = {"iterations": b.iterations, "bags": b.bags, "bag_fraction": b.bag_fraction, "stacking_c": b.stacking_c, "seed": b.seed}

    combine, weights = _by_hand(method, oof, y, options)
    expected_test = pd.DataFrame(combine(test), index=test_ids, columns=CLASSES)
    in_sample = combine(oof)
    cv = _cross_validated(method, oof, y, fold_of, options)
    if method == "mean":  # the plain mean of the members' OOF (their rows sum to 1 up to float32 rounding)
        np.testing.assert_allclose(cv, oof.mean(axis=0), rtol=1e-6)
    close = {"rtol": 1e-9, "atol": 1e-12}

    # the submissions: probabilities in the sample's id and column order; labels the argmax, in the sample's id order
    sample = pd.read_csv(competitions["probs"] / "sample_submission.csv", dtype={"id": str})
    sub = _read(tmp_path / "subs_probs" / f"tiny-{method}.csv")
    assert list(sub.columns) == list(sample.columns) and list(sub["id"]) == list(sample["id"])
    sample_order = list(sample["id"])
    np.testing.assert_allclose(sub[sample.columns[1:]].to_numpy(), expected_test.loc[sample_order, sample.columns[1:]].to_numpy(), **close)
    label_sample = pd.read_csv(competitions["labels"] / "sample_submission.csv", dtype=str)
    label_sub = pd.read_csv(tmp_path / "subs_labels" / f"tiny-{method}.csv", dtype=str)
    assert list(label_sub.columns) == ["id", "label"] and list(label_sub["id"]) == list(label_sample["id"])
    _assert_labels_are_argmax(label_sub["label"], expected_test.loc[list(label_sample["id"])].to_numpy(), CLASSES)

    # weights.json: the method, the members in recipe order, each member's own weight
    written = json.loads((runs / "blend" / "weights.json").read_text())
    assert written["method"] == method and written["members"] == BACKBONES
    if weights is None:
        assert written["weights"] is None
    else:
        assert list(written["weights"]) == BACKBONES
        np.testing.assert_allclose([written["weights"][name] for name in BACKBONES], weights, rtol=1e-12)
    if method in ("caruana", "optimize"):  # the submission is the weighted mean with weights.json's weights, by name
        w = np.array([written["weights"][name] for name in BACKBONES])
        assert abs(w[0] - w[1]) > 1e-3, f"equal weights {w}: the pairing check below would be blind on this data"
        by_name = pd.DataFrame(_rows_sum_1(w[0] * test[0] + w[1] * test[1]), index=test_ids, columns=CLASSES)
        swapped = pd.DataFrame(_rows_sum_1(w[1] * test[0] + w[0] * test[1]), index=test_ids, columns=CLASSES)
        submitted = sub.set_index("id")[CLASSES]
        np.testing.assert_allclose(submitted.to_numpy(), by_name.loc[submitted.index].to_numpy(), **close)
        assert np.abs(submitted.to_numpy() - swapped.loc[submitted.index].to_numpy()).max() > 1e-6  # the check above is sensitive

    # blend/oof.csv: the method's cross-validated OOF, in train.csv order
    blend_oof = _read(runs / "blend" / "oof.csv")
    assert list(blend_oof.columns) == ["id", *CLASSES] and list(blend_oof["id"]) == list(train_ids)
    np.testing.assert_allclose(blend_oof[CLASSES].to_numpy(), cv, **close)

    # the leaderboard's row of the method: in-sample and cross-validated scores with scikit-learn
    board = pd.read_csv(runs / "blend" / "leaderboard.csv", keep_default_na=False).set_index("model")
    row = board.loc[f"blend: {method}"]
    for name, value in _sklearn_scores(y, in_sample).items():
        assert row[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
    for name, value in _sklearn_scores(y, cv).items():
        assert row[f"cv_{name}"] == pytest.approx(value, rel=1e-9, abs=1e-12), f"cv_{name}"
    assert row["weights"] == ("" if weights is None else " ".join(f"{n}={x:.2f}" for n, x in zip(BACKBONES, weights)))


ML_CLASSES = [*CLASSES, "strong"]


def test_multilabel_blend_values_match_numpy_and_rows_are_not_renormalised(strong_source, tiny_recipe_text, tmp_path):
    comp, runs_dir, subs = tmp_path / "comp", tmp_path / "runs", tmp_path / "subs"
    text = tiny_recipe_text(comp, runs_dir, subs).replace("[competition]\n", '[competition]\ntask = "multilabel"\n')
    text = text.replace('"surprised"]', '"surprised", "strong"]') + 'metric = "lwlrap"\n'
    recipe = tmp_path / "tiny_ml.toml"
    recipe.write_text(text)
    r = recipe_mod.load(recipe)
    cli_ok(["data", "ravdess", "--source", str(strong_source), "--out", str(comp), "--test-actors", "5,6", "--folds", "2", "--labels", "emotion_intensity"])
    cli_ok(["train", "--recipe", str(recipe), "--quiet"])
    runs = runs_dir / "tiny"

    train = pd.read_csv(comp / "train.csv", dtype=str)
    train_ids, test_ids = train["id"].to_numpy(), pd.read_csv(comp / "test.csv", dtype=str)["id"].to_numpy()
    y = np.array([[float(c in label.split()) for c in ML_CLASSES] for label in train["label"]])
    assert (y.sum(axis=1) == 2).any() and (y.sum(axis=1) == 1).any()
    fold_of = pd.read_csv(comp / "folds.csv", dtype=str).set_index("id").loc[train_ids, "fold"].astype(int).to_numpy()
    members = [_member(runs, b, train_ids, test_ids, ML_CLASSES) for b in BACKBONES]
    oof, test = np.stack([o for o, _ in members]), np.stack([t for _, t in members])
    options = {"iterations": r.blend.iterations, "bags": r.blend.bags, "bag_fraction": r.blend.bag_fraction, "seed": r.blend.seed, "task": tasks.MULTILABEL}
    label_sample = pd.read_csv(comp / "sample_submission.csv", dtype=str)
    assert list(label_sample.columns) == ["id", "label"]

    for method in ("mean", "caruana"):

        def weights_on(rows, method=method):  # the method's member weights fitted on the OOF rows ``rows``
            return np.full(len(oof), 0.5) if method == "mean" else blenders.fit(method, oof[:, rows], y[rows], **options).weights

        def weighted(w, p):  # a weighted mean of sigmoid outputs: no renormalisation
            return w[0] * p[0] + w[1] * p[1]

        label_sample.to_csv(comp / "sample_submission.csv", index=False)
        cli_ok(["blend", "--recipe", str(recipe), "--method", method])
        w = weights_on(np.ones(len(y), dtype=bool))
        expected = pd.DataFrame(weighted(w, test), index=test_ids, columns=ML_CLASSES)
        written = json.loads((runs / "blend" / "weights.json").read_text())
        assert written["method"] == method and written["members"] == BACKBONES
        np.testing.assert_allclose([written["weights"][n] for n in BACKBONES], w, rtol=1e-12)

        cv = np.full(oof.shape[1:], np.nan)
        for fold in (0, 1):
            held = fold_of == fold
            cv[held] = weighted(weights_on(~held), oof[:, held])
        blend_oof = _read(runs / "blend" / "oof.csv")
        assert list(blend_oof["id"]) == list(train_ids)
        np.testing.assert_allclose(blend_oof[ML_CLASSES].to_numpy(), cv, rtol=1e-9, atol=1e-12)
        cuts = json.loads((runs / "blend" / "thresholds.json").read_text())
        assert list(cuts) == ML_CLASSES
        thresholds = np.array([cuts[c] for c in ML_CLASSES])
        # tuned on the honest OOF (on this data the CV OOF equals the in-sample blend: mean reads no
        # labels, and two members' bagged Caruana weights are the seed's draw, see CASES above)
        np.testing.assert_allclose(thresholds, multilabel.tune_thresholds(y, cv), rtol=1e-12)

        # labels: every class at or above its cut, else the single most probable class
        sub = pd.read_csv(subs / f"tiny-{method}.csv", dtype=str, keep_default_na=False)
        assert list(sub["id"]) == list(label_sample["id"])
        p = expected.loc[list(sub["id"])].to_numpy()
        for row, label in zip(p, sub["label"]):
            on = [c for c, v, t in zip(ML_CLASSES, row, thresholds) if v >= t]
            assert sorted(label.split()) == sorted(on or [ML_CLASSES[int(row.argmax())]])

        # probabilities: a sample with class columns (shuffled) and the ids reversed
        columns = ML_CLASSES[::-1]
        pd.DataFrame({"id": label_sample["id"][::-1].to_numpy(), **{c: 0.5 for c in columns}}).to_csv(comp / "sample_submission.csv", index=False)
        cli_ok(["blend", "--recipe", str(recipe), "--method", method, "--name", f"probs-{method}"])
        sub = _read(subs / f"probs-{method}.csv")
        assert list(sub.columns) == ["id", *columns] and list(sub["id"]) == list(label_sample["id"][::-1])
        values = sub[columns].to_numpy()
        np.testing.assert_allclose(values, expected.loc[list(sub["id"]), columns].to_numpy(), rtol=1e-9, atol=1e-12)
        assert (np.abs(values.sum(axis=1) - 1) > 0.05).all()  # sigmoid outputs: no row rescaled to sum 1
    label_sample.to_csv(comp / "sample_submission.csv", index=False)
