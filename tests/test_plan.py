"""The time plan ``ens train`` prints before it starts (ensemble.plan), on real RAVDESS clips: every
stage of a mixed recipe is estimated from timings taken here, work already done costs nothing,
``force`` counts finished runs again, and the CLI prints the plan and the time it took."""

from __future__ import annotations

import re

from ensemble import plan
from ensemble.core import recipe as recipe_mod

from .conftest import BASIC_LR, cli_ok, one_backbone_recipe


def _by_name(stages: list[plan.Stage]) -> dict[str, plan.Stage]:
    return {s.name.split(" (")[0]: s for s in stages}


def test_every_stage_is_estimated_and_done_work_costs_nothing(small_source, tiny_recipe_text, tmp_path):
    path, _ = one_backbone_recipe(tmp_path, small_source, tiny_recipe_text, "[augment]\ncopies = 1\n" + BASIC_LR, speaker_norm=True)
    r = recipe_mod.load(path)
    before = _by_name(plan.estimate(r))
    assert list(before) == ["embed voices at 16000 Hz", "render images for test_resnet", "train test_resnet", "functionals ens_basic"]
    assert all(s.seconds > 0 for s in before.values()), before
    # 2 folds over the 32 training clips of actors 1-4 (16 a fold), 8 a batch: 2 steps per epoch, 1 epoch
    assert re.fullmatch(r"\d+\.\d\d s per step x 2 steps x 1 epochs \+ \d+ evaluation batches x \d+\.\d\d s, per fold", before["train test_resnet"].basis)
    assert before["render images for test_resnet"].basis.startswith("48 clean x ") and " + 32 augmented x " in before["render images for test_resnet"].basis
    assert before["functionals ens_basic"].basis.endswith("x 48 clips") and before["embed voices at 16000 Hz"].basis.endswith("x 16 clips")

    out = cli_ok(["train", "--recipe", str(path)])
    assert "plan (estimated on this machine; work already done left out):" in out and "  total: ~" in out
    assert re.search(r"ens train finished in \d+\.\d min \(planned ~\d+\.\d min\)", out)

    assert plan.estimate(r) == []  # every run finished: nothing to embed, render, train or extract
    assert plan.describe([]).endswith("  total: ~0 s")
    again = _by_name(plan.estimate(r, ["test_resnet", "basic_lr"], [0], force=True))  # --force re-trains: counted again, from the caches
    assert again["train test_resnet"].seconds > 0 and again["train test_resnet"].name == "train test_resnet (1 folds x 1 epochs)"
    assert again["render images for test_resnet"].basis == "all 80 images cached" and again["functionals ens_basic"].basis == "all 48 clips cached"
    assert again["embed voices at 16000 Hz"].basis == "all 16 clips cached"
