"""`ens train --force`, the fix every refusal of a finished run names: it re-trains the run with the
recipe's present configuration and replaces every file of the old run, and only the forced runs."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

from ensemble.cli import app
from ensemble.core import metrics
from ensemble.core import recipe as recipe_mod
from ensemble.members import data as data_mod
from ensemble.members import loop, models, runtime
from ensemble.store import runs as run_store

from .conftest import cli_ok, copy_tiny_runs

BACKBONE, FOLD = "test_efficientnet", 0
RUN = ["--backbone", BACKBONE, "--fold", str(FOLD), "--quiet"]
FILES = ("model.safetensors", "oof.csv", "test.csv", "metrics.json", "config.json", "log.csv")


def _hashes(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def forced(tiny_trained, tmp_path_factory):
    """A copy of the session's finished 1-epoch runs, and the recipe edited to train with another
    seed (``edited.toml``, same name and runs folder): ``ens train --epochs 2`` of the edited recipe on
    one of the runs without --force (refused), then with --force. Returns what each step left.

    The seed changes too because a second epoch alone may leave the weights as they were: the
    warm-up spans epoch 1 whatever the number of epochs, so a 2-epoch run's epoch 1 is the 1-epoch
    run, and it stays the saved one unless epoch 2 beats it."""
    root = tmp_path_factory.mktemp("force")
    original = copy_tiny_runs(tiny_trained, root, blend=False)
    recipe_path = root / "edited.toml"
    recipe_path.write_text(f'extends = "{original}"\nname = "tiny"\n[train]\nseed = 7\n')
    runs = root / "runs" / "tiny"
    run = runs / BACKBONE / f"fold{FOLD}"
    before = _hashes(runs)
    old = {name: (run / name).read_bytes() for name in FILES}

    refused = CliRunner().invoke(app, ["train", "--recipe", str(recipe_path), *RUN, "--epochs", "2"])
    after_refusal = _hashes(runs)
    output = cli_ok(["train", "--recipe", str(recipe_path), *RUN, "--epochs", "2", "--force"])
    return {
        "root": root,
        "original": original,
        "recipe_path": recipe_path,
        "runs": runs,
        "run": run,
        "before": before,
        "old": old,
        "refused": refused,
        "after_refusal": after_refusal,
        "output": output,
        "after": _hashes(runs),
    }


def test_without_force_a_finished_run_of_another_configuration_is_refused_and_kept(forced):
    refused = forced["refused"]
    assert refused.exit_code == 2
    assert f"{forced['run']} holds a finished run with a different configuration; pass --force to overwrite it" in refused.output
    assert forced["after_refusal"] == forced["before"]  # not a byte of any run changed


def test_force_replaces_every_file_of_the_run_with_the_new_configurations(forced):
    run, old = forced["run"], forced["old"]
    for name in FILES:
        assert (run / name).read_bytes() != old[name], f"{name} was not replaced"
    assert not (run / run_store.CHECKPOINT).exists()

    config, old_config = json.loads((run / "config.json").read_text()), json.loads(old["config.json"])
    assert (old_config["recipe"]["train"]["epochs"], config["recipe"]["train"]["epochs"]) == (1, 2)
    assert (old_config["recipe"]["train"]["seed"], config["recipe"]["train"]["seed"]) == (42, 7)
    old_config["recipe"]["train"].update(epochs=2, seed=7)
    assert old_config == config  # nothing else of the run's identity changed

    log = pd.read_csv(run / "log.csv")
    assert log["epoch"].tolist() == [1, 2] and log["selected"].any()
    best_epoch = int(log.loc[log["selected"], "epoch"].max())
    with safe_open(run / "model.safetensors", "pt") as f:
        assert f.metadata() == {"backbone": BACKBONE, "epoch": str(best_epoch)}
    report = json.loads((run / "metrics.json").read_text())
    assert report["epoch"] == best_epoch and f"(epoch {best_epoch})" in forced["output"]
    assert "already finished" not in forced["output"]


def test_the_replaced_tables_and_metrics_are_the_new_models(forced):
    """oof.csv, test.csv and metrics.json are those of the weights now in model.safetensors, not left
    over from the old run."""
    r = recipe_mod.load(forced["recipe_path"])
    r.train.epochs = 2
    data = data_mod.load_data(r, progress=False)
    run, classes = forced["run"], data.competition.classes
    model = models.build(r, BACKBONE, len(classes))
    model.load_state_dict(load_file(run / "model.safetensors"))
    cpu = runtime.resolve_device("cpu")
    valid = np.flatnonzero(data.folds["fold"].to_numpy() == FOLD)

    oof, test = pd.read_csv(run / "oof.csv"), pd.read_csv(run / "test.csv")
    ids = data.competition.train[data.competition.config.id_col].to_numpy()
    assert oof["id"].astype(str).tolist() == ids[valid].astype(str).tolist() and (oof["fold"] == FOLD).all()
    np.testing.assert_allclose(oof[classes].to_numpy(), loop.predict(model, data.x_train[valid], cpu), atol=1e-6)
    np.testing.assert_allclose(test[classes].to_numpy(), loop.predict(model, data.x_test, cpu), atol=1e-6)

    report = json.loads((run / "metrics.json").read_text())
    expected = metrics.report(data.y[valid], oof[classes].to_numpy(), classes)
    for key in ("accuracy", "macro_f1", "uar", "log_loss"):
        assert report[key] == pytest.approx(expected[key], abs=1e-9)
    assert report["confusion_matrix"] == expected["confusion_matrix"]


def test_force_touches_only_the_runs_it_trains_and_the_new_run_is_then_the_finished_one(forced):
    changed = {path for path in forced["before"] if forced["after"].get(path) != forced["before"][path]}
    assert changed and all(path.startswith(f"{BACKBONE}/fold{FOLD}/") for path in changed)
    assert set(forced["after"]) == set(forced["before"])

    # the forced run is now the finished run of the 2-epoch configuration: skipped without --force ...
    recipe_path = str(forced["recipe_path"])
    output = cli_ok(["train", "--recipe", recipe_path, *RUN, "--epochs", "2"])
    assert "already finished, skipped" in output and _hashes(forced["runs"]) == forced["after"]
    # ... and the original configuration is the one refused now
    refused = CliRunner().invoke(app, ["train", "--recipe", str(forced["original"]), *RUN])
    assert refused.exit_code == 2 and "pass --force to overwrite it" in refused.output
    assert _hashes(forced["runs"]) == forced["after"]
