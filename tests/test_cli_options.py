"""Command-line options refused by typer before anything slow runs (data, features or models loading)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from ensemble import competition, predict
from ensemble.cli import app

from .conftest import ravdess_clip


@pytest.mark.parametrize("command", [["predict", str(ravdess_clip(1, 1))], ["train"], ["blend"]])
def test_an_unknown_on_error_policy_is_refused_before_anything_loads(command, tmp_path, monkeypatch):
    recipe = tmp_path / "untrained.toml"
    recipe.write_text(f'runs_dir = "{tmp_path / "runs"}"\n[competition]\ndir = "{tmp_path / "comp"}"\n')
    def too_early(*args, **kwargs):
        pytest.fail("the models or the competition load before --on-error is checked")

    monkeypatch.setattr(predict, "load_ensemble", too_early)
    monkeypatch.setattr(competition, "load", too_early)
    result = CliRunner().invoke(app, [*command, "--recipe", str(recipe), "--on-error", "ignore"])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.replace("│", " ").split())  # typer's error box, unwrapped
    assert "Invalid value for '--on-error'" in message and "'ignore' is not one of 'fail', 'skip'" in message
