"""The installed dependencies are the lock's, torchaudio's compiled ops work with the installed
torch, and ``ens`` refuses a broken torch / torchaudio pair in one line that names both and the fix."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ensemble.core import deps

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"


def _locked() -> dict[str, str]:
    """``requirements.lock`` as {canonical name: version}, for the lines whose marker holds here."""
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate():
            (spec,) = req.specifier
            assert spec.operator == "==", f"requirements.lock: {line!r} is not an exact pin"
            pins[canonicalize_name(req.name)] = spec.version
    return pins


def _requirement_tree(name: str, extras: set[str]) -> set[str]:
    """Canonical names of every installed distribution ``name`` (with ``extras``) depends on, recursively."""
    seen: set[str] = set()
    todo = [(name, frozenset(extras))]
    while todo:
        dist_name, dist_extras = todo.pop()
        for text in metadata.requires(dist_name) or []:
            req = Requirement(text)
            env = [{**default_environment(), "extra": e} for e in (dist_extras or {""})]
            if req.marker is not None and not any(req.marker.evaluate(e) for e in env):
                continue
            key = canonicalize_name(req.name)
            if key not in seen:
                seen.add(key)
                todo.append((req.name, frozenset(req.extras)))
    return seen


def test_every_dependency_is_installed_at_its_locked_version():
    pins = _locked()
    assert {"torch", "torchvision", "torchaudio"} <= set(pins)
    needed = _requirement_tree("ens", {"test", "opensmile", "deploy"})  # what .ci/run installs
    unlocked = sorted(needed - set(pins))
    assert not unlocked, f"dependencies missing from requirements.lock: {unlocked}; regenerate it (README, 'Updating the lock')"
    drift = {n: (metadata.version(n), pins[n]) for n in needed if metadata.version(n) != pins[n]}
    assert not drift, f"installed != locked (installed, locked): {drift}; install with -c requirements.lock"


def test_the_locked_trio_matches_pyproject():
    """pyproject's torch / torchvision / torchaudio ranges admit the locked trio (the lock is a resolution of them)."""
    pins = _locked()
    declared = {canonicalize_name(Requirement(r).name): Requirement(r) for r in metadata.requires("ens") if "extra ==" not in r}
    for name in ("torch", "torchvision", "torchaudio"):
        assert declared[name].specifier.contains(pins[name]), (name, str(declared[name].specifier), pins[name])
    assert not declared["torchaudio"].specifier.contains("2.11.1"), "torchaudio 2.11.1 does not load against torch 2.11.0"


def test_torchaudio_ops_ens_uses_work_with_this_torch():
    """The ops themselves, with values checked, so a broken trio fails here naming the versions."""
    versions = f"torch {torch.__version__}, torchaudio {deps.installed('torchaudio')}"
    import torchaudio.functional as F
    import torchaudio.transforms as T

    x = torch.sin(2 * torch.pi * 1000 * torch.arange(1024) / 16000)  # 1 kHz at 16 kHz
    power = T.Spectrogram(n_fft=256, hop_length=64, power=2.0)(x)
    assert power.shape == (129, 17), versions
    assert int(power.mean(dim=1).argmax()) == 16, versions  # bin 16 = 1000 Hz / (16000 / 256)
    fb = F.melscale_fbanks(129, 0.0, 8000.0, 40, 16000, norm="slaney", mel_scale="slaney")
    assert fb.shape == (129, 40) and bool((fb >= 0).all()) and bool((fb.sum(dim=0) > 0).all()), versions
    dct = F.create_dct(13, 40, "ortho")
    assert torch.allclose(dct.T @ dct, torch.eye(13), atol=1e-5), versions  # orthonormal rows
    torch.manual_seed(0)
    masked = T.FrequencyMasking(20, iid_masks=True)(torch.ones(8, 1, 40, 50))
    assert masked.shape == (8, 1, 40, 50) and bool((masked == 0).any()) and bool((masked == 1).any()), versions
    deps.check_torchaudio()  # the start-up check passes on a working install


def test_ens_refuses_a_torchaudio_that_does_not_load_in_one_line(tmp_path):
    """A stand-in torchaudio that fails to load as 2.11.1 did against torch 2.11.0."""
    fake = tmp_path / "site"
    (fake / "torchaudio").mkdir(parents=True)
    (fake / "torchaudio" / "__init__.py").write_text('raise OSError("libtorchaudio.so: undefined symbol: torch_exception_get_what_without_backtrace")\n')
    info = fake / "torchaudio-2.11.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torchaudio\nVersion: 2.11.1\n")
    ens = Path(sys.executable).parent / "ens"
    result = subprocess.run(
        [str(ens), "score", "whatever.csv"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(fake), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert re.search(rf"torchaudio 2\.11\.1 does not work with torch {re.escape(metadata.version('torch'))}", lines[0]), lines[0]
    assert "undefined symbol" in lines[0] and "-c requirements.lock" in lines[0], lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["score", "blend"])
def test_a_working_install_passes_the_startup_check(command, tmp_path):
    """The check runs before every command and lets a working install through (the command's own error follows)."""
    from typer.testing import CliRunner

    from ensemble.cli import app

    result = CliRunner().invoke(app, [command, "--recipe", str(tmp_path / "missing.toml"), *(["x.csv"] if command == "score" else [])])
    assert result.exit_code == 2
    assert "torchaudio" not in result.output and "missing.toml" in result.output
