"""Command-line options refused by typer before anything slow runs (data, features or models loading)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from ensemble import predict
from ensemble.cli import app
from ensemble.store import competition
from ensemble.store import split as split_mod

from .conftest import ravdess_clip


def _unwrapped(output: str) -> str:
    """The command's output on one line, without the frame of typer's error box."""
    return " ".join(output.replace("│", " ").split())


@pytest.mark.parametrize("command", [["predict", str(ravdess_clip(1, 1))], ["train"]])  # ens blend reads no audio: no --on-error
def test_an_unknown_on_error_policy_is_refused_before_anything_loads(command, tmp_path, monkeypatch):
    recipe = tmp_path / "untrained.toml"
    recipe.write_text(f'runs_dir = "{tmp_path / "runs"}"\n[competition]\ndir = "{tmp_path / "comp"}"\n')

    def too_early(*args, **kwargs):
        pytest.fail("the models or the competition load before --on-error is checked")

    monkeypatch.setattr(predict, "load_ensemble", too_early)
    monkeypatch.setattr(competition, "load", too_early)
    result = CliRunner().invoke(app, [*command, "--recipe", str(recipe), "--on-error", "ignore"])
    assert result.exit_code == 2, result.output
    message = _unwrapped(result.output)
    assert "Invalid value for '--on-error'" in message and "'ignore' is not one of 'fail', 'skip'" in message


def test_help_names_recipe_keys_with_their_section():
    result = CliRunner().invoke(app, ["train", "--help"])
    assert result.exit_code == 0, result.output
    help_text = _unwrapped(result.output)
    for key in ("[train].epochs", "[runtime].device", "[paths].weights_dir", "[train].cpu_precision"):  # not eaten as markup tags
        assert f"overrides {key}" in help_text or f"Override {key}" in help_text
    assert "<fp32|bf16>" in help_text and "<fail|skip>" in help_text


def test_an_unknown_cpu_precision_is_refused_by_typer():
    result = CliRunner().invoke(app, ["train", "--cpu-precision", "fp16"])
    message = _unwrapped(result.output)
    assert result.exit_code == 2 and "'fp16' is not one of 'fp32', 'bf16'" in message


def test_every_refusal_is_an_ens_error():
    """One ``except EnsError`` catches every error class ens raises on purpose."""
    from ensemble import EnsError, report
    from ensemble.blending import blend
    from ensemble.core import deps, errors, recipe
    from ensemble.inputs import audio, augment
    from ensemble.members import models
    from ensemble.store import runs as run_store
    from ensemble.store.corpora import ravdess

    refusals = [
        recipe.RecipeError,
        competition.CompetitionError,
        audio.AudioError,
        augment.UnsafeAugmentationError,
        models.BackboneError,
        run_store.RunError,
        run_store.RunConflictError,
        blend.BlendError,
        predict.PredictError,
        report.ReportError,
        ravdess.RavdessError,
        deps.DependencyError,
        errors.OptionError,
    ]
    assert all(issubclass(cls, EnsError) for cls in refusals)
    with pytest.raises(EnsError, match="on_error='ignore': use one of"):  # a bad argument to a library function
        split_mod.check_on_error("ignore")


def test_the_cli_prints_ens_errors_and_keeps_the_traceback_of_anything_else(tmp_path, monkeypatch):
    from ensemble.core import recipe

    (tmp_path / "r.toml").write_text("")
    for raised, code in ((recipe.RecipeError("bad setting; fix it"), 2), (ValueError("a bug"), 1)):

        def load(path, overrides=None, raised=raised):
            raise raised

        monkeypatch.setattr(recipe, "load", load)
        result = CliRunner().invoke(app, ["report", "--recipe", str(tmp_path / "r.toml")])
        assert result.exit_code == code
        if code == 2:
            assert "error: bad setting; fix it" in result.output
        else:  # not swallowed as "error: ...": the exception (and its traceback) reaches the caller
            assert isinstance(result.exception, ValueError) and "error:" not in result.output
