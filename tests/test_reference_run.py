"""A fixed-seed tiny run gives bit-identical OOF and test probabilities to a stored reference.

The reference (``tests/reference/tiny_run.npz``) was made by the commit that added this file
(2026-11-29), on this project's CPU machine. Refactors that claim "behaviour unchanged"
must keep it passing; a change that is meant to change the numbers regenerates it, says so in its
commit, and re-measures the results tables:

    ENS_WRITE_REFERENCE=1 .venv/bin/python -m pytest tests/test_reference_run.py

The run exercises every part of training that draws random numbers or changes the arithmetic:
waveform augmentation (cached copies), SpecAugment masks and time roll, mixup, EMA of the
weights, label smoothing, time-shift TTA, two backbones x two folds, 2 epochs on CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from .conftest import cli_ok, tiny_competition

REFERENCE = Path(__file__).parent / "reference" / "tiny_run.npz"
EXTRA = """
[train]
epochs = 2
ema_decay = 0.9
tta_shifts = [0.1]
[augment]
copies = 1
freq_mask = 4
time_mask = 8
time_roll = 0.1
mixup_alpha = 0.4
"""


def _tables(runs: Path) -> dict[str, np.ndarray]:
    """Every run's ``oof.csv`` and ``test.csv`` probabilities, float64, by ``<backbone>/fold<K>/<table>``."""
    out = {}
    for table in sorted(runs.glob("*/fold*/*.csv")):
        if table.name in ("oof.csv", "test.csv"):
            frame = pd.read_csv(table, dtype={"id": str})
            classes = [c for c in frame.columns if c not in ("id", "fold")]
            out[f"{table.parent.parent.name}/{table.parent.name}/{table.stem}"] = frame[classes].to_numpy(np.float64)
            out[f"{table.parent.parent.name}/{table.parent.name}/{table.stem}_ids"] = frame["id"].to_numpy(str)
    return out


def test_a_fixed_seed_run_matches_the_stored_reference_bit_for_bit(small_source, tiny_recipe_text, tmp_path):
    text = tiny_recipe_text(tmp_path / "comp", tmp_path / "runs", tmp_path / "subs")
    text = text.replace("[train]\nepochs = 1\n", "[train]\n")  # EXTRA sets the [train] keys
    head, train_section = text.split("[train]\n")
    recipe_text = head + EXTRA.replace("[train]\n", "[train]\n" + train_section)
    recipe = tiny_competition(tmp_path / "tiny.toml", recipe_text, small_source)
    cli_ok(["train", "--recipe", str(recipe), "--quiet", "--device", "cpu"])
    got = _tables(tmp_path / "runs" / "tiny")
    assert len(got) == 2 * 2 * 2 * 2  # backbones x folds x (oof, test) x (probabilities, ids)
    if os.environ.get("ENS_WRITE_REFERENCE"):
        REFERENCE.parent.mkdir(exist_ok=True)
        np.savez_compressed(REFERENCE, **got)
    stored = np.load(REFERENCE)
    assert sorted(stored.files) == sorted(got)
    for key, values in got.items():
        np.testing.assert_array_equal(values, stored[key], err_msg=f"{key} differs from {REFERENCE}")
