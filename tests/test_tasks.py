"""ensemble.core.tasks: multiclass and multilabel, each in one place, chosen once from the competition.

The loss and mixup are compared with what ``image_fit.train_fold`` built before the task objects
(``nn.CrossEntropyLoss`` / ``multilabel.bce_loss``, timm's ``Mixup`` / ``multilabel.union_mixup``),
value for value, so moving a run onto its task cannot change a number.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from ensemble.blending import blenders
from ensemble.core import metrics, multilabel, recipe, tasks
from ensemble.core.errors import OptionError
from ensemble.core.recipe import CompetitionConfig
from ensemble.store import competition

ROOT = Path(__file__).resolve().parents[1]
EMOTIONS = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
ML_CLASSES = [*EMOTIONS, "strong"]


def test_get_gives_one_shared_object_per_task_and_names_the_choices_for_an_unknown_one():
    assert tasks.get("multiclass") is tasks.MULTICLASS and tasks.get("multilabel") is tasks.MULTILABEL
    assert isinstance(tasks.MULTICLASS, tasks.Multiclass) and isinstance(tasks.MULTILABEL, tasks.Multilabel)
    assert tasks.NAMES == ("multiclass", "multilabel") and [tasks.get(n).name for n in tasks.NAMES] == list(tasks.NAMES)
    with pytest.raises(tasks.TaskError, match=r"unknown task 'multi-label': \[competition\].task must be one of \('multiclass', 'multilabel'\)"):
        tasks.get("multi-label")


def _competition(folder: Path, task: str, labels: list[str]) -> competition.Competition:
    ids = [f"c{i}" for i in range(len(labels))]
    pd.DataFrame({"id": ids, "path": [f"{i}.wav" for i in ids], "label": labels}).to_csv(folder / "train.csv", index=False)
    pd.DataFrame({"id": ["t1"], "path": ["t1.wav"]}).to_csv(folder / "test.csv", index=False)
    pd.DataFrame({"id": ["t1"], "label": ["calm"]}).to_csv(folder / "sample_submission.csv", index=False)
    return competition.load(CompetitionConfig(dir=str(folder), task=task))


def test_the_competition_gives_the_task_of_its_config_and_encodes_with_it(tmp_path):
    for name in ("mc", "ml"):
        (tmp_path / name).mkdir()
    mc = _competition(tmp_path / "mc", "multiclass", ["calm", "sad", "calm", "angry strong"])
    assert mc.task is tasks.MULTICLASS
    assert mc.classes == ["angry strong", "calm", "sad"]  # a multiclass name may hold a space
    np.testing.assert_array_equal(mc.y, [1, 2, 1, 0])
    ml = _competition(tmp_path / "ml", "multilabel", ["calm", "sad strong", "calm", "angry strong"])
    assert ml.task is tasks.MULTILABEL
    assert ml.classes == ["angry", "calm", "sad", "strong"]  # the space-separated names
    np.testing.assert_array_equal(ml.y, [[0, 1, 0, 0], [0, 0, 1, 1], [0, 1, 0, 0], [1, 0, 0, 1]])


def test_multiclass_encodes_indices_and_labels_the_most_probable_class():
    task = tasks.MULTICLASS
    labels = ["happy", "sad", "neutral", "surprised", "happy"]
    y = task.encode(labels, EMOTIONS)
    assert y.dtype == np.int64 and y.tolist() == [2, 3, 0, 7, 2]
    onehot = task.indicators(y, len(EMOTIONS))
    assert onehot.shape == (5, 8) and onehot.sum() == 5 and onehot[np.arange(5), y].all()
    assert task.labels(onehot, EMOTIONS) == labels
    proba = np.full((2, 8), 0.1) + np.eye(8)[[6, 1]] * 0.2  # disgust, calm most probable
    assert task.labels(proba, EMOTIONS) == ["disgust", "calm"]
    with pytest.raises(tasks.TaskError, match="takes no thresholds"):
        task.labels(proba, EMOTIONS, thresholds=np.full(8, 0.5))
    with pytest.raises(KeyError):
        task.encode(["joyful"], EMOTIONS)
    assert task.tokens("angry strong") == ["angry strong"] and task.strata(y) is y


def test_multilabel_encodes_multi_hot_and_labels_by_threshold():
    task = tasks.MULTILABEL
    labels = ["angry strong", "calm", "sad strong", "surprised"]
    y = task.encode(labels, ML_CLASSES)
    assert y.dtype == np.float32 and y.shape == (4, 9) and y.sum(axis=1).tolist() == [2, 1, 2, 1]
    assert task.indicators(y, 9) is y
    assert task.labels(y, ML_CLASSES) == labels  # default thresholds 0.5
    proba = np.array([[0.1] * 8 + [0.7], [0.05] * 9])
    proba[1, 3] = 0.2  # below 0.5 everywhere: its most probable class alone
    assert task.labels(proba, ML_CLASSES) == ["strong", "sad"]
    assert task.labels(proba, ML_CLASSES, thresholds=np.full(9, 0.15)) == ["strong", "sad"]
    assert task.labels(proba, ML_CLASSES, thresholds=np.full(9, 0.08)) == [" ".join(ML_CLASSES), "sad"]
    assert task.tokens("angry strong") == ["angry", "strong"] and task.tokens("") == []
    assert task.strata(y).tolist() == [4, 1, 3, 7]  # the first label in class order


def test_class_lists_each_task_refuses():
    assert tasks.MULTICLASS.class_problem(["calm"]) == "are only ['calm']: a multiclass task needs at least two"
    assert tasks.MULTICLASS.class_problem(["very calm", "sad"]) is None
    assert tasks.MULTILABEL.class_problem(["calm"]) is None
    assert "name with spaces" in tasks.MULTILABEL.class_problem(["very calm", "sad"])


def test_activation_is_a_softmax_or_a_sigmoid_per_class():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 0.0, 3.0]])
    soft = tasks.MULTICLASS.activation(logits)
    assert torch.equal(soft, torch.softmax(logits, dim=1)) and torch.allclose(soft.sum(dim=1), torch.ones(2))
    assert torch.equal(tasks.MULTILABEL.activation(logits), torch.sigmoid(logits))


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=gen)
    images = torch.rand(6, 3, 8, 10, generator=gen)
    return logits, images


def test_multiclass_loss_is_trains_cross_entropy_smoothing_only_without_mixup(batch):
    logits, _ = batch
    target = torch.tensor([0, 1, 2, 3, 1, 0])
    weight = torch.tensor([0.5, 1.0, 2.0, 1.5])
    for class_weight in (None, weight):
        expected = nn.CrossEntropyLoss(weight=class_weight, label_smoothing=0.1)(logits, target)
        assert torch.equal(tasks.MULTICLASS.loss(0.1, class_weight)(logits, target), expected)
    soft = torch.softmax(torch.randn(6, 4, generator=torch.Generator().manual_seed(1)), dim=1)  # mixup's soft targets
    with_mixup = tasks.MULTICLASS.loss(0.1, weight, mixup_alpha=0.4)(logits, soft)
    assert torch.equal(with_mixup, nn.CrossEntropyLoss(weight=weight, label_smoothing=0.0)(logits, soft))
    assert not torch.equal(with_mixup, nn.CrossEntropyLoss(weight=weight, label_smoothing=0.1)(logits, soft))


def test_multilabel_loss_is_bce_against_binary_smoothed_targets_and_takes_no_weights(batch):
    logits, _ = batch
    target = (torch.arange(24).reshape(6, 4) % 3 == 0).float()
    by_hand = nn.functional.binary_cross_entropy_with_logits(logits, target * 0.9 + 0.05)
    for alpha in (0.0, 0.4):  # union mixup keeps 0/1 targets: the loss smooths either way
        loss = tasks.MULTILABEL.loss(0.1, mixup_alpha=alpha)(logits, target)
        assert torch.equal(loss, functools.partial(multilabel.bce_loss, label_smoothing=0.1)(logits, target))
        assert torch.allclose(loss, by_hand)
    with pytest.raises(tasks.TaskError, match="takes no class weights"):
        tasks.MULTILABEL.loss(0.1, torch.ones(4))


def test_multiclass_mixup_is_timms_batch_mixup_without_cutmix_for_a_seeded_batch(batch):
    from timm.data import Mixup

    _, images = batch
    target = torch.tensor([0, 1, 2, 3, 1, 0])
    np.random.seed(7)
    expected = Mixup(mixup_alpha=0.4, cutmix_alpha=0.0, label_smoothing=0.1, num_classes=4)(images.clone(), target.clone())
    np.random.seed(7)
    mixed, soft = tasks.MULTICLASS.mixup(0.4, 0.1, 4)(images.clone(), target.clone())
    assert torch.equal(mixed, expected[0]) and torch.equal(soft, expected[1])
    assert not torch.equal(mixed, images) and torch.allclose(soft.sum(dim=1), torch.ones(6))
    assert tasks.MULTICLASS.mixup(0.0, 0.1, 4) is None


def test_multilabel_mixup_is_union_mixup_for_a_seeded_batch(batch):
    _, images = batch
    target = torch.eye(6, 4)
    np.random.seed(7)
    expected = multilabel.union_mixup(images, target, alpha=0.4)
    np.random.seed(7)
    mixed, united = tasks.MULTILABEL.mixup(0.4, 0.1, 4)(images, target)
    assert torch.equal(mixed, expected[0]) and torch.equal(united, expected[1])
    assert torch.equal(united, torch.maximum(target, target.flip(0)))
    assert tasks.MULTILABEL.mixup(0.0, 0.1, 4) is None


def test_metrics_of_each_task():
    y = np.array([0, 1, 2, 1])
    proba = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    mc = tasks.MULTICLASS
    assert mc.scores(y, proba) == metrics.scores(y, proba) and mc.scores(y, proba)["uar"] == pytest.approx(2.5 / 3)
    assert mc.report(y, proba, ["a", "b", "c"])["confusion_matrix"] == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert mc.metric_names == ("accuracy", "macro_f1", "uar") and mc.headline == mc.metric_names and mc.has_confusion_matrix
    assert mc.blend_loss(y, proba) == pytest.approx(-np.log([0.8, 0.7, 0.7, 0.3]).mean())
    ym = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=np.float32)
    pm = np.array([[0.9, 0.2, 0.7], [0.1, 0.8, 0.3], [0.6, 0.7, 0.2], [0.2, 0.1, 0.9]])
    ml = tasks.MULTILABEL
    assert ml.scores(ym, pm) == multilabel.scores(ym, pm) and ml.scores(ym, pm)["lwlrap"] == 1.0
    report = ml.report(ym, pm, ["a", "b", "c"])
    assert "confusion_matrix" not in report and set(report["per_class_ap"]) == {"a", "b", "c"} and not ml.has_confusion_matrix
    assert ml.metric_names == ("lwlrap", "map", "micro_f1", "macro_f1") and ml.headline == ("lwlrap", "map", "micro_f1")
    assert ml.blend_loss(ym, pm) == multilabel.bce(ym, pm)
    for task, scores in ((mc, mc.scores(y, proba)), (ml, ml.scores(ym, pm))):
        assert set(task.metric_names) | {"log_loss"} == set(scores) and set(task.headline) <= set(task.metric_names)


def test_prior_is_the_class_frequency_or_each_class_label_rate():
    np.testing.assert_array_equal(tasks.MULTICLASS.prior(np.array([0, 0, 1, 3]), 5), [0.5, 0.25, 0, 0.25, 0])
    prior = tasks.MULTILABEL.prior(np.array([[1, 0, 1], [0, 0, 1]], dtype=np.float32), 3)
    assert prior.dtype == np.float64 and prior.tolist() == [0.5, 0.0, 1.0]


def test_thresholds_are_tuned_for_multilabel_only():
    y = np.array([[1, 0], [1, 0], [0, 1], [0, 0]], dtype=float)
    proba = np.array([[0.30, 0.1], [0.25, 0.2], [0.10, 0.9], [0.05, 0.3]])
    np.testing.assert_array_equal(tasks.MULTILABEL.tune_thresholds(y, proba), multilabel.tune_thresholds(y, proba))
    assert tasks.MULTICLASS.tune_thresholds(y.argmax(axis=1), proba) is None


def test_rows_must_sum_to_one_for_multiclass_only():
    proba = np.array([[0.5, 0.5], [0.5004, 0.5], [0.7, 0.2], [0.9, 0.9]])
    assert tasks.MULTICLASS.rows_sum_to_one and tasks.MULTICLASS.unnormalised_row(proba) == 2
    assert tasks.MULTICLASS.unnormalised_row(proba[:2]) is None  # off by 4e-4, within 1e-3
    assert tasks.MULTICLASS.unnormalised_row(proba[:2], tolerance=1e-4) == 1
    assert tasks.MULTICLASS.unnormalised_row(np.zeros((0, 2))) is None
    assert not tasks.MULTILABEL.rows_sum_to_one and tasks.MULTILABEL.unnormalised_row(proba) is None


def test_blend_methods_per_task_and_blenders_follow_the_task():
    assert tasks.MULTICLASS.blend_methods == blenders.METHODS == ("mean", "rank", "geometric", "caruana", "optimize", "stacking")
    assert tasks.MULTILABEL.blend_methods == ("mean", "caruana")
    rng = np.random.default_rng(0)
    y = (rng.random((40, 3)) < 0.4).astype(np.float32)
    oof = np.stack([np.clip(y * 0.6 + rng.random((40, 3)) * 0.4, 0, 1), rng.random((40, 3))])
    fitted = blenders.fit("caruana", oof, y, iterations=10, bags=0, task=tasks.MULTILABEL)
    assert fitted.weights[0] > 0.9  # the informative member, by mean BCE
    np.testing.assert_array_equal(fitted.combine(oof), np.tensordot(fitted.weights, oof, axes=1))  # sigmoids: not renormalised
    with pytest.raises(OptionError, match=r"blend method 'stacking' does not fit a multilabel task; choose one of \('mean', 'caruana'\)"):
        blenders.fit("stacking", oof, y, task=tasks.MULTILABEL)
    labels = y.argmax(axis=1)
    mean = blenders.fit("mean", oof, labels, task=tasks.MULTICLASS).combine(oof)
    np.testing.assert_allclose(mean.sum(axis=1), 1.0)  # softmax rows: renormalised


def test_the_recipe_takes_metric_names_and_blend_methods_from_the_task():
    multilabel_recipe = {"competition": {"task": "multilabel"}, "train": {"metric": "lwlrap"}, "blend": {"method": "mean"}}
    assert recipe.from_dict(multilabel_recipe).competition.task == "multilabel"
    refusals = [
        ({"train": {"metric": "lwlrap"}}, r"\[train\].metric = 'lwlrap': must be one of \('accuracy', 'macro_f1', 'uar'\) for a multiclass task"),
        ({**multilabel_recipe, "train": {"metric": "uar"}}, r"\[train\].metric = 'uar': must be one of \('lwlrap', 'map', 'micro_f1', 'macro_f1'\)"),
        ({**multilabel_recipe, "blend": {"method": "rank"}}, r"\[blend\].method = 'rank': must be one of \('mean', 'caruana'\) for a multilabel task"),
        ({**multilabel_recipe, "train": {"metric": "lwlrap", "class_weights": "balanced"}}, r"class_weights does not work for a multilabel task"),
        ({"competition": {"task": "regression"}}, r"unknown task 'regression': \[competition\].task must be one of"),
    ]
    for data, message in refusals:
        with pytest.raises(recipe.RecipeError, match=message):
            recipe.from_dict(data)


def test_importing_the_recipe_or_the_tasks_does_not_import_torch():
    modules = "ensemble.core.recipe, ensemble.core.tasks, ensemble.store.competition, ensemble.blending.blenders"
    code = f"import sys, {modules}; assert 'torch' not in sys.modules, 'torch imported'"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
