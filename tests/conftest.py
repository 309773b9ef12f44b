"""Shared fixtures: a small real RAVDESS subset from ../shared and a tiny competition built from it."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may wait on the hub: set before huggingface_hub is imported (timm imports it), which reads it once
from ensemble.members import data as data_mod  # noqa: E402
from ensemble.members import loop, models, runtime  # noqa: E402
from ensemble.store import runs as run_store  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RAVDESS = ROOT.parent / "shared" / "data" / "ravdess"


def pytest_configure(config):
    if not RAVDESS.is_dir():
        raise pytest.UsageError(f"the tests read real RAVDESS clips from {RAVDESS}; put the shared folder beside the checkout.")


@pytest.fixture(autouse=True)
def _torch_threads():
    """Each test starts with the thread count the session started with: ``[runtime].threads``
    (``ens predict --threads 1``, ``ens train`` of a recipe that sets it) changes torch's for the
    whole process, and bit-for-bit tests (test_reference_run, test_resume) need torch's default."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def ravdess_clip(actor: int, emotion: int, statement: int = 1, repetition: int = 1, intensity: int = 1) -> Path:
    """Path of one real RAVDESS clip in ../shared."""
    return RAVDESS / f"Actor_{actor:02d}" / f"03-01-{emotion:02d}-{intensity:02d}-{statement:02d}-{repetition:02d}-{actor:02d}.flac"


@pytest.fixture(scope="session")
def small_source(tmp_path_factory) -> Path:
    """A RAVDESS-layout folder of 48 real clips: actors 1-6, one clip of each of the 8 emotions."""
    root = tmp_path_factory.mktemp("ravdess_small")
    for actor in range(1, 7):
        folder = root / f"Actor_{actor:02d}"
        folder.mkdir()
        for emotion in range(1, 9):
            clip = ravdess_clip(actor, emotion)
            (folder / clip.name).symlink_to(clip)
    return root


@pytest.fixture(scope="session")
def strong_source(tmp_path_factory) -> Path:
    """A RAVDESS-layout folder of 48 real clips, actors 1-6, one of each emotion, half of the
    non-neutral ones at strong intensity: the multilabel task (emotion plus ``strong``)."""
    root = tmp_path_factory.mktemp("ravdess_strong")
    for actor in range(1, 7):
        folder = root / f"Actor_{actor:02d}"
        folder.mkdir()
        for emotion in range(1, 9):
            intensity = 2 if emotion > 1 and (emotion + actor) % 2 == 0 else 1
            clip = ravdess_clip(actor, emotion, intensity=intensity)
            (folder / clip.name).symlink_to(clip)
    return root


TINY_SHAPE = """[folds]
n_splits = 2
[features]
duration = 2.0
height = 32
hop_length = 640
[train]
epochs = 1
batch_size = 8
"""
"""The small shape of every tiny test recipe: 2 folds, 2 s clips on 32-row images, 1 epoch of batches of 8
(a recipe adding ``[train]`` keys writes them right after it)."""


@pytest.fixture(scope="session")
def tiny_recipe_text():
    """Recipe TOML for a 2-fold, 1-epoch run of timm's tiny test_efficientnet on small images."""

    def make(competition_dir: Path, runs_dir: Path, submissions_dir: Path) -> str:
        return f"""
name = "tiny"
backbones = ["test_efficientnet", "test_resnet"]
[paths]
runs_dir = "{runs_dir}"
submissions_dir = "{submissions_dir}"
[competition]
dir = "{competition_dir}"
classes = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
{TINY_SHAPE}pretrained = false
"""

    return make


def save_tiny_whisper(folder: Path) -> Path:
    """Save a randomly initialised Whisper (2 encoder layers, width 16; torch seeded 0) and its feature
    extractor into ``folder`` as transformers saves them; returns ``folder``."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.WhisperConfig(
        d_model=16, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=24, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=24
    )
    transformers.WhisperForAudioClassification(config).save_pretrained(folder)
    transformers.WhisperFeatureExtractor().save_pretrained(folder)
    return folder


def killed_after_first_epoch(args: list[str], run: Path, timeout: float, env: dict | None = None) -> None:
    """Start ``ens ARGS`` in a subprocess, SIGKILL it as soon as ``run`` holds ``checkpoint.pt`` (its first
    epoch is saved), and assert it died by the signal before finishing (no ``metrics.json``)."""
    import signal
    import subprocess
    import sys
    import time

    process = subprocess.Popen([sys.executable, "-c", "from ensemble.cli import app; app()", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + timeout
    while not (run / run_store.CHECKPOINT).exists():  # the first epoch is done
        assert process.poll() is None, process.stderr.read().decode()
        assert time.time() < deadline, f"no checkpoint after {timeout:g} s"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not (run / run_store.METRICS).exists(), "the run finished before it was killed"


def cli_ok(args: list[str]) -> str:
    """Run ``ens ARGS`` in-process, assert it exits 0 (showing its output if not), return the output."""
    from typer.testing import CliRunner

    from ensemble.cli import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


BASIC_LR = """
[[functionals]]
name = "basic_lr"
set = "ens_basic"
model = "logreg"
c = 0.1
"""
"""A ``[[functionals]]`` member for test recipes: ens_basic functionals + logistic regression (librosa only, fast)."""

EGEMAPS_SVM = """
[[functionals]]
name = "egemaps_svm"
set = "eGeMAPSv02"
model = "svm"
c = 1.0
"""
"""A ``[[functionals]]`` member for test recipes: openSMILE eGeMAPSv02 + calibrated RBF SVM."""


def one_backbone_recipe(root: Path, source: Path, recipe_text, extra: str, speaker_norm: bool = False) -> tuple[Path, Path]:
    """Build a RAVDESS competition from ``source`` under ``root / "comp"`` (actors 5 and 6 held out,
    2 folds) and write ``root / "tiny.toml"``: ``recipe_text``'s tiny recipe with ``test_resnet`` only
    (runs and submissions under ``root``), ``[speakers] norm = "speaker"`` when asked, then ``extra``.
    Returns ``(recipe path, competition folder)``."""
    comp = root / "comp"
    cli_ok(["data", "ravdess", "--source", str(source), "--out", str(comp), "--test-actors", "5,6", "--folds", "2"])
    text = recipe_text(comp, root / "runs", root / "subs").replace('backbones = ["test_efficientnet", "test_resnet"]', 'backbones = ["test_resnet"]')
    if speaker_norm:
        text = text.replace("[paths]\n", '[speakers]\nnorm = "speaker"\n[paths]\n', 1)
    recipe = root / "tiny.toml"
    recipe.write_text(text + extra)
    return recipe, comp


def fold_mean(r, entries, images, shifts=()):
    """What ens predict should give for one blend member, computed independently: the mean over
    every ``backbones`` entry in ``entries`` (the seeds of one backbone) and each of its folds of
    ens train's own :func:`train.predict` with ``shifts`` on ``images``, from the run's saved
    weights, on the CPU. Returns ``(n_images, classes)``."""
    import numpy as np
    from safetensors.torch import load_file

    probas = []
    for entry in entries:
        for fold in range(r.folds.n_splits):
            model = models.build(r, entry, len(r.competition.classes))
            model.load_state_dict(load_file(run_store.run_dir(r, entry, fold) / "model.safetensors"))
            probas.append(loop.predict(model, images, runtime.resolve_device("cpu"), shifts=shifts))
    return np.mean(probas, axis=0)


def tiny_competition(recipe_path: Path, recipe_text: str, source: Path) -> Path:
    """Write ``recipe_text`` to ``recipe_path``, build its competition from the RAVDESS-layout
    ``source`` (actors 5 and 6 held out, 2 folds) and fill its feature cache. Returns ``recipe_path``."""
    from ensemble.core import recipe

    recipe_path.write_text(recipe_text)
    r = recipe.load(recipe_path)
    comp = Path(r.competition.dir)
    cli_ok(["data", "ravdess", "--source", str(source), "--out", str(comp), "--test-actors", "5,6", "--folds", "2"])
    data_mod.load_data(r, progress=False)
    return recipe_path


def _contents(folder: Path) -> dict[str, str]:
    """SHA-1 of every file under ``folder``, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def tiny_trained(small_source, tiny_recipe_text, tmp_path_factory):
    """The tiny recipe's pipeline through the real CLI, once per session: ``ens data ravdess`` on
    the 48 clips (actors 5 and 6 held out, 2 folds), ``ens train`` (which renders the feature
    cache and trains both backbones' 2 folds), ``ens train`` again (every run skipped), ``ens blend``.

    Shared by test_end_to_end, test_predict and test_report: read-only. A test that writes into the
    runs, the blend, the submissions or the competition works on a copy (:func:`copy_tiny_runs`,
    ``shutil.copytree``); at the end of the session the shared files are checked unchanged."""
    root = tmp_path_factory.mktemp("tiny_trained")
    comp, runs, subs = root / "comp", root / "runs", root / "subs"
    recipe = root / "tiny.toml"
    recipe.write_text(tiny_recipe_text(comp, runs, subs))
    outputs = {"data": cli_ok(["data", "ravdess", "--source", str(small_source), "--out", str(comp), "--test-actors", "5,6", "--folds", "2"])}
    outputs["train"] = cli_ok(["train", "--recipe", str(recipe), "--quiet"])
    outputs["retrain"] = cli_ok(["train", "--recipe", str(recipe), "--quiet"])
    outputs["blend"] = cli_ok(["blend", "--recipe", str(recipe)])
    shared = (comp, runs / "tiny", subs)
    before = [_contents(folder) for folder in shared]
    yield {"root": root, "comp": comp, "runs": runs / "tiny", "subs": subs, "recipe": recipe, **outputs}
    changed = [str(folder) for folder, was in zip(shared, before) if _contents(folder) != was]
    assert not changed, f"a test changed the shared tiny pipeline's files in {changed}; give it a copy (copy_tiny_runs)"


def copy_tiny_runs(trained: dict, dest: Path, *, blend: bool = True) -> Path:
    """Copy the shared runs of :func:`tiny_trained` into ``dest/runs/tiny`` (without ``blend/`` if
    not ``blend``) and write ``dest/tiny.toml``: the shared recipe with ``runs_dir`` and
    ``submissions_dir`` under ``dest`` (the competition stays the shared one). Returns the recipe's path.

    For ens blend, predict and report, which check a run's folds and classes (ens train would
    reuse them too: a run's identity leaves out ``runs_dir`` and ``submissions_dir``)."""
    source = trained["runs"]
    shutil.copytree(source, dest / "runs" / "tiny", ignore=None if blend else lambda folder, names: ["blend"] if Path(folder) == source else [])
    recipe = dest / "tiny.toml"
    recipe.write_text(f'extends = "{trained["recipe"]}"\nname = "tiny"\n[paths]\nruns_dir = "{dest / "runs"}"\nsubmissions_dir = "{dest / "subs"}"\n')
    return recipe
