"""Progress output: tqdm bars on a terminal; in a log (not a terminal) one line per epoch and per stage, no bar fragments."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ensemble.members import data as data_mod
from ensemble.members import image_fit

from .conftest import cli_ok

BACKBONE = "test_efficientnet"
EPOCH_LINE = re.compile(rf"^{BACKBONE} fold (\d) epoch (\d)/2: loss \d+\.\d{{3}}  valid loss \d+\.\d{{3}}  accuracy \d\.\d{{3}}  .*  \d+\.\d s(  \*)?$")
RENDER_LINE = re.compile(r"^render features: 48 clips in \d+\.\d s$")
RESULT_LINE = re.compile(rf"^{BACKBONE} fold (\d): accuracy .* -> .*fold\1$")
CONSTANT_LINE = re.compile(r"warning: member \S+ (predicts '.+' for every clip|gives every clip the same probabilities) out of fold")


class TerminalStream(io.StringIO):
    """A stream that says it is a terminal, as sys.stderr is in an interactive shell."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def tiny(small_source, tiny_recipe_text, tmp_path) -> Path:
    """A fresh tiny competition (48 real clips, 2 folds, empty feature cache) and a recipe
    training one test backbone for 2 epochs. Returns the recipe's path."""
    comp = tmp_path / "comp"
    recipe = tmp_path / "tiny.toml"
    text = tiny_recipe_text(comp, tmp_path / "runs", tmp_path / "subs")
    text = text.replace('backbones = ["test_efficientnet", "test_resnet"]', f'backbones = ["{BACKBONE}"]').replace("epochs = 1\n", "epochs = 2\n")
    assert f'backbones = ["{BACKBONE}"]' in text and "epochs = 2\n" in text
    recipe.write_text(text)
    cli_ok(["data", "ravdess", "--source", str(small_source), "--out", str(comp), "--test-actors", "5,6", "--folds", "2"])
    return recipe


def test_log_file_gets_one_line_per_epoch_and_stage(tiny, tmp_path):
    """`ens train > log 2>&1` in a real process: stdout and stderr are a file, not a terminal."""
    log_path = tmp_path / "train.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}  # library warnings are not what this test measures
    env = {k: v for k, v in env.items() if not k.startswith("TQDM_")}
    with open(log_path, "wb") as log:
        done = subprocess.run(
            [sys.executable, "-c", "from ensemble.cli import app; app()", "train", "--recipe", str(tiny)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            timeout=600,
        )
    data = log_path.read_bytes()
    text = data.decode()
    assert done.returncode == 0, text
    assert b"\r" not in data, f"carriage returns (bar refreshes) in the log:\n{text!r}"
    for fragment in ("%|", "it/s", "batch/s", "clip/s", "s/batch", "s/clip", "\x1b["):
        assert fragment not in text, f"bar fragment {fragment!r} in the log:\n{text}"
    lines = [line for line in text.split("\n") if line.strip()]
    assert text.endswith("\n")
    # the plan first (ensemble.plan: its heading, one line per stage, the total), the time it took last
    plan = lines[: next(i for i, line in enumerate(lines) if line.startswith("  total: ")) + 1]
    assert plan[0] == "plan (estimated on this machine; work already done left out):" and len(plan) == 1 + 2 + 1, text  # render, train
    assert re.fullmatch(r"ens train finished in \d+\.\d min \(planned ~\d+\.\d min\)", lines[-1]), text
    lines = lines[len(plan) : -1]
    # a 2-epoch test backbone on 48 clips predicts one class: ens train names it after the runs (ensemble.members.guards)
    assert all(CONSTANT_LINE.match(line) for line in lines[-1:]), text
    lines = [line for line in lines if not CONSTANT_LINE.match(line)]

    epochs = [EPOCH_LINE.match(line) for line in lines if " epoch " in line]
    assert all(epochs), f"malformed epoch lines:\n{text}"
    assert sorted((m[1], m[2]) for m in epochs) == [("0", "1"), ("0", "2"), ("1", "1"), ("1", "2")], text
    assert sum(bool(RENDER_LINE.match(line)) for line in lines) == 1, text
    assert sum(bool(RESULT_LINE.match(line)) for line in lines) == 2, text
    assert len(lines) == 4 + 1 + 2, f"unexpected lines in the log:\n{text}"
    # order: the stage line first, then each fold's epochs before its result line
    kinds = ["render" if RENDER_LINE.match(line) else "epoch" if EPOCH_LINE.match(line) else "result" for line in lines]
    assert kinds == ["render", "epoch", "epoch", "result", "epoch", "epoch", "result"], text
    # 7 lines of ~110-150 characters and the plan's 5 lines; before this change the bars added ~1 kB of fragments even to this 2 x 2-batch run
    assert len(data) < 2300, f"{len(data)} bytes:\n{text}"


def test_terminal_gets_bars(tiny, monkeypatch, capsys):
    """With stderr a terminal the bars are drawn there (and the render needs no summary line);
    the epoch lines still go to stdout, once per epoch."""
    from ensemble.core import recipe

    stderr = TerminalStream()
    monkeypatch.setattr(sys, "stderr", stderr)
    r = recipe.load(tiny)
    data = data_mod.load_data(r, progress=True)
    image_fit.train_fold(r, data, BACKBONE, 0, progress=True)
    bars, out = stderr.getvalue(), capsys.readouterr().out

    assert "\r" in bars
    assert re.search(r"render features: 100%\|.*\| 48/48", bars), bars
    assert re.search(rf"{BACKBONE} fold 0 epoch 1/2: +\d+%\|.*\| \d/2 ", bars), bars
    assert re.search(rf"{BACKBONE} fold 0 epoch 2/2: +\d+%\|", bars), bars
    assert "render features:" not in out, out  # the bar reported the stage
    assert "\r" not in out
    epochs = [EPOCH_LINE.match(line) for line in out.splitlines() if " epoch " in line]
    assert all(epochs) and [(m[1], m[2]) for m in epochs] == [("0", "1"), ("0", "2")], out


def test_quiet_prints_no_progress(tiny, monkeypatch, capsys):
    """--quiet: only each run's result line; progress=False draws no bar even on a terminal."""
    output = cli_ok(["train", "--recipe", str(tiny), "--fold", "0", "--epochs", "1", "--quiet"])
    lines = [line for line in output.splitlines() if line.strip() and not CONSTANT_LINE.match(line)]  # a warning is no progress
    assert len(lines) == 1 and RESULT_LINE.match(lines[0]) and lines[0].startswith(f"{BACKBONE} fold 0:"), output

    from ensemble.core import recipe

    stderr = TerminalStream()
    monkeypatch.setattr(sys, "stderr", stderr)
    r = recipe.load(tiny)
    r.train.epochs = 1
    (Path(r.competition.dir) / ".ens_cache").rename(Path(r.competition.dir) / "old_cache")  # render again
    data = data_mod.load_data(r, progress=False)
    image_fit.train_fold(r, data, BACKBONE, 1, progress=False)
    assert stderr.getvalue() == ""
    assert capsys.readouterr().out == ""
