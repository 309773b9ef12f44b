"""Messages are built once, with the parameters they name as data (ensemble.core.errors.Param); the
library reads ``force=True``, the ens command shows the flag that sets it, from the same message and
with no text rewritten. Every parameter any message of ensemble/ names is run through the CLI's
renderer and must come out as a flag the CLI really has."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest
from typer.main import get_command

import ensemble
from ensemble import cli
from ensemble.core.errors import EnsError, Message, Param
from ensemble.predict import SpeakerNormWarning

PACKAGE = Path(ensemble.__file__).parent


def _params_in_code() -> list[tuple[str, Param]]:
    """Every ``Param(...)`` a module of ensemble/ builds, with a literal or placeholder value (a value known only at run time: 1.5)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Param":
                args = [a.value if isinstance(a, ast.Constant) else 1.5 for a in node.args]
                kwargs = {k.arg: k.value.value if isinstance(k.value, ast.Constant) else 1.5 for k in node.keywords}
                name = args[0] if isinstance(args[0], str) else "window"  # predict's _samples names window or hop
                found.append((f"{path.relative_to(PACKAGE)}:{node.lineno}", Param(name, *args[1:], **kwargs)))
    return found


def _cli_flags() -> set[str]:
    flags = set()
    for command in get_command(cli.app).commands.values():
        for sub in getattr(command, "commands", {command.name: command}).values():
            for option in sub.params:
                flags |= set(option.opts) | set(getattr(option, "secondary_opts", []))
    return flags


PARAMS = _params_in_code()


def test_the_code_names_parameters_as_data():
    assert len(PARAMS) >= 20  # the messages that name force, resume, on_error, weights_dir, window, speaker, ...


@pytest.mark.parametrize("where, param", PARAMS, ids=[w for w, _ in PARAMS])
def test_every_parameter_a_message_names_is_shown_as_a_real_flag(where, param):
    shown = cli.flag(param)
    assert shown.split()[0] in _cli_flags(), f"{where}: {param} is shown as {shown!r}, which no ens command takes"
    assert str(param).startswith(f"{param.name}="), where  # the library's own words


def test_a_parameter_inside_another_is_not_garbled():
    """The old rewrite replaced 'speaker=' inside 'same_speaker=True' ('same_--speaker-dir True')."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parts = ("no other recording of the speaker (", Param("speaker", shown="DIR"), ") and no ", Param("same_speaker", True), ".")
        warnings.warn(SpeakerNormWarning(*parts), stacklevel=1)
    (warning,) = caught
    assert str(warning.message) == "no other recording of the speaker (speaker=DIR) and no same_speaker=True."
    assert cli.shown(warning.message) == "no other recording of the speaker (--speaker-dir DIR) and no --same-speaker."


def test_errors_keep_their_parts_and_pickle_as_their_library_text():
    import pickle

    err = EnsError("run x: pass ", Param("force", True), " or ", Message("set ", Param("on_error", "skip")), ".")
    assert str(err) == "run x: pass force=True or set on_error='skip'." and cli.shown(err) == "run x: pass --force or set --on-error skip."
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is EnsError and str(again) == str(err)
