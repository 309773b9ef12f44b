"""Only ``ens score`` opens the hidden labels: ``ens train``, ``ens blend``, ``ens predict``, ``ens report``
and ``ens export`` never open the competition's ``solution.csv``.

Every file Python opens (``open``, ``io.open``, ``Path.open`` / ``read_text``, ``os.open``, so pandas'
and NumPy's readers too) raises the ``open`` audit event (PEP 578); a hook records each opened path
named ``solution.csv`` while a command runs. The recipe is the one where a leak would pay: speaker
normalisation with ``[speakers].test = "auto"`` (RAVDESS's test.csv has no speaker column, so the test
speakers are inferred) and a functionals member, on a tiny real RAVDESS competition, each command
through the real CLI in this process. ``ens score`` is the control: it must open the file, so the hook
is shown to see what it is meant to see.
"""

from __future__ import annotations

import contextlib
import os
import sys

from ensemble.core.recipe import CompetitionConfig
from ensemble.store import competition

from .conftest import BASIC_LR, cli_ok, one_backbone_recipe

_seen: list[str] | None = None
"""While :func:`_watching` runs: every opened path whose file name is ``solution.csv``."""


def _hook(event: str, args: tuple) -> None:
    if _seen is not None and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.fsdecode(args[0])
        if os.path.basename(path) == competition.SOLUTION:
            _seen.append(path)


sys.addaudithook(_hook)  # audit hooks cannot be removed: it records nothing outside _watching


@contextlib.contextmanager
def _watching():
    global _seen
    _seen = []
    try:
        yield _seen
    finally:
        _seen = None


def test_no_command_but_score_opens_solution_csv(small_source, tiny_recipe_text, tmp_path):
    recipe, comp = one_backbone_recipe(tmp_path, small_source, tiny_recipe_text, BASIC_LR, speaker_norm=True)
    tables = competition.load(CompetitionConfig(dir=str(comp)))
    assert (comp / competition.SOLUTION).is_file() and "group" not in tables.test.columns  # [speakers].test = "auto" infers them
    clips = [str(p) for p in tables.audio_paths(tables.test)[:2]]
    commands = {
        "train": ["train", "--recipe", str(recipe), "--quiet"],
        "blend": ["blend", "--recipe", str(recipe)],
        "predict": ["predict", *clips, "--recipe", str(recipe), "--same-speaker", "--out", str(tmp_path / "p.csv")],
        "report": ["report", "--recipe", str(recipe)],
        "export": ["export", "--recipe", str(recipe), "--format", "onnx"],
    }
    for name, args in commands.items():
        with _watching() as opened:
            output = cli_ok(args)
        assert not opened, f"ens {name} opened the hidden labels {opened}: only ens score may"
        if name == "train":  # the path a leak would take: test speakers inferred, no score against the truth printed
            assert "test speakers: " in output and "(inferred, silhouette" in output and "adjusted Rand" not in output
    submission = next((tmp_path / "subs").glob("*.csv"))
    with _watching() as opened:
        output = cli_ok(["score", str(submission), "--recipe", str(recipe)])
    assert opened and "accuracy" in output  # the control: scoring reads it, and the hook sees that
