"""ens train --executor ray: each (backbone, fold) run of a tiny recipe on real RAVDESS clips as a Ray
task on a local 2-CPU Ray instance gives exactly the local executor's tables, also when a worker
is killed mid-run (the retried task resumes from the run's checkpoint)."""

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import ray
import torch

from ensemble import train
from ensemble.core import recipe
from ensemble.deploy import executors
from ensemble.store import runs as run_store

from .conftest import cli_ok, tiny_competition

KILLED = "test_resnet", 1  # the run whose worker the test kills after its first epoch's checkpoint
BLOCKED_FOR = 300
"""Seconds the killed run's first worker waits, after its first epoch's checkpoint, to be killed (it fails the run if it is not)."""


def _recipe_text(tiny_recipe_text, comp: Path, root: Path) -> str:
    """The tiny recipe (2 backbones x 2 folds) for 2 epochs, one torch thread (so runs compute the same bits in any process)."""
    return tiny_recipe_text(comp, root / "runs", root / "subs").replace("epochs = 1", "epochs = 2") + "[runtime]\nthreads = 1\n"


def _tables(r) -> dict[str, bytes]:
    """Every run's oof.csv and test.csv, by path under the recipe's run store."""
    root = run_store.root(r)
    return {str(p.relative_to(root)): p.read_bytes() for name in (run_store.OOF, run_store.TEST) for p in sorted(root.glob(f"*/fold*/{name}"))}


def _blocking_after_first_checkpoint(blocked: Path):
    """The Ray task function (in place of ``executors._run_loading``, shipped to the workers by value):
    the :data:`KILLED` run's first attempt, after writing its first epoch's checkpoint, writes its
    worker's pid to ``blocked`` and waits there to be killed; its retry (``blocked`` exists) and every
    other run train as ``_run_loading`` does. So the kill never races the run's second epoch."""
    run_loading = executors._run_loading

    def run(job):
        from ensemble.core import atomic
        from ensemble.members.checkpoint import Checkpoint

        if (job.entry, job.fold) == KILLED and not blocked.exists():
            save = Checkpoint.save

            def save_then_wait(self, state):
                save(self, state)
                atomic.write_text(blocked, str(os.getpid()))
                time.sleep(BLOCKED_FOR)
                raise RuntimeError(f"{job.name}: nobody killed this worker in {BLOCKED_FOR} s")

            Checkpoint.save = save_then_wait  # this worker is killed before it runs another task
        return run_loading(job)

    return run


def _kill_when_blocked(blocked: Path, run: Path, name: str, seen: dict) -> None:
    """Wait for the blocked worker's pid in ``blocked``, note the run's log and whether it is
    finished, then SIGKILL the worker (checked to be the Ray worker ``ray::<name>``)."""
    deadline = time.time() + BLOCKED_FOR
    while time.time() < deadline and not blocked.exists():
        time.sleep(0.05)
    if not blocked.exists():
        return
    pid = int(blocked.read_text())
    seen["cmdline"] = Path(f"/proc/{pid}/cmdline").read_bytes()
    seen["log"] = (run / run_store.LOG).read_text()
    seen["finished"] = run_store.is_finished(run)
    os.kill(pid, signal.SIGKILL)
    seen["pid"] = pid
    seen["name"] = name


def test_ray_tasks_give_the_local_tables_and_a_killed_run_resumes(small_source, tiny_recipe_text, tmp_path, monkeypatch):
    comp = tmp_path / "comp"
    local_path = tiny_competition(tmp_path / "local.toml", _recipe_text(tiny_recipe_text, comp, tmp_path / "local"), small_source)
    ray_path = tmp_path / "ray.toml"
    ray_path.write_text(_recipe_text(tiny_recipe_text, comp, tmp_path / "ray"))
    threads = torch.get_num_threads()
    try:
        cli_ok(["train", "--recipe", str(local_path), "--quiet"])
    finally:
        torch.set_num_threads(threads)
    local = recipe.load(local_path)
    remote = recipe.load(ray_path)

    executor = executors.Ray(num_cpus=2)  # ray.init(num_cpus=2): a local instance with 2 CPUs
    try:
        seen: dict = {}
        killed, blocked, name = run_store.run_dir(remote, *KILLED), tmp_path / "blocked.pid", f"ens {KILLED[0]} fold {KILLED[1]}"
        monkeypatch.setattr(executors, "_run_loading", _blocking_after_first_checkpoint(blocked))
        watcher = threading.Thread(target=_kill_when_blocked, args=(blocked, killed, name, seen), daemon=True)
        watcher.start()
        results = train.train(remote, progress=False, executor=executor)
        watcher.join(timeout=5)
        assert [(r.entry, r.fold, r.skipped) for r in results] == [(b, k, False) for b in local.backbones for k in (0, 1)]
        assert "pid" in seen and not seen["finished"], "the killed run's worker never reached its first checkpoint"
        assert seen["cmdline"].startswith(f"ray::{name}".encode()), seen["cmdline"]  # Ray names a worker by its task
        assert seen["log"].count("\n") == 2  # header and epoch 1: killed inside the run, after its first checkpoint
        log = (killed / run_store.LOG).read_text()
        assert log.startswith(seen["log"]) and log.count("\n") == 3, "the retried run did not resume after epoch 1"
        assert _tables(remote) == _tables(local) and len(_tables(local)) == 8

        again = cli_ok(["train", "--recipe", str(ray_path), "--executor", "ray", "--quiet"])  # finished runs are skipped
        assert again.count("[already finished, skipped]") == 4
    finally:
        ray.shutdown()


def test_executor_refusals():
    with pytest.raises(executors.ExecutorError, match="'dask' is not one of local, ray"):
        executors.get("dask")
    with pytest.raises(executors.ExecutorError, match="address='auto' is for executor='ray'"):
        executors.get("local", "auto")


def test_threads_and_ray_resources_are_machine_settings(tmp_path):
    """``[runtime]`` threads, run_cpus and run_gpus are checked, and leave a run's identity (config.json) unchanged."""
    base = recipe.Recipe()
    changed = recipe.from_dict({"runtime": {"threads": 3, "run_cpus": 2, "run_gpus": 0.5}})
    assert changed.runtime.run_gpus == 0.5
    assert run_store.run_config(changed, ["a"], "h", "test_resnet", 0) == run_store.run_config(base, ["a"], "h", "test_resnet", 0)
    path = tmp_path / "bad.toml"
    for bad, message in (("threads = -1", r"\[runtime\].threads = -1: must be >= 0"), ("run_cpus = 0", r"run_cpus = 0.0 must be > 0")):
        path.write_text(f"[runtime]\n{bad}\n")
        with pytest.raises(recipe.RecipeError, match=message):
            recipe.load(path)
