"""ens bundle: a tiny trained ensemble (test_resnet + an ens_basic logistic-regression member, speaker-normalised)
bundled for ONNX Runtime, installed into a fresh virtual environment from the bundle alone (pip --no-index, in a
network namespace with no network where the machine allows one), predicting real RAVDESS clips as `ens predict`
does; windows in BirdCLEF's row ids; the budget check; which wheels a prediction needs.

The bundle's wheelhouse (torch and its CUDA libraries among them, about 2.8 GB) is downloaded once per test run
and installed once: this file takes about three minutes (tests/test_bundle.py's docstring in the report)."""

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from ensemble import bundle
from ensemble.core import recipe as recipe_mod
from ensemble.store import competition

from .conftest import BASIC_LR, cli_ok, one_backbone_recipe

NOT_NEEDED = ("albumentations", "resemblyzer", "ray", "onnx", "onnxscript", "pytest", "opensmile", "ens")
"""Training-, export- and test-only distributions (and ens, installed from its own wheel): in no requirements.txt of a recipe without openSMILE."""


CLEAN = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
"""The environment of the virtual environment's processes: without PYTHONPATH, so they import the installed ens, not this checkout."""


def _no_network() -> list[str]:
    """``unshare -n`` (a new network namespace: no interface but loopback) where this machine lets us make one, else nothing."""
    try:
        ok = subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0
    except OSError:
        ok = False
    return ["unshare", "-n"] if ok else []


@pytest.fixture(scope="module")
def built(small_source, tiny_recipe_text, tmp_path_factory):
    """The tiny ensemble trained and blended through the CLI, bundled for onnx through the CLI, and installed
    from the bundle alone into a fresh virtual environment."""
    root = tmp_path_factory.mktemp("bundle")
    seconds, started = {}, time.monotonic()
    recipe_path, comp = one_backbone_recipe(root, small_source, tiny_recipe_text, BASIC_LR + '[blend]\nmethod = "mean"\n', speaker_norm=True)
    cli_ok(["train", "--recipe", str(recipe_path), "--quiet"])
    cli_ok(["blend", "--recipe", str(recipe_path)])
    cli_ok(["export", "--recipe", str(recipe_path), "--format", "onnx"])  # ens predict --runtime onnx's own graphs, the reference
    seconds["train"], started = time.monotonic() - started, time.monotonic()
    out = root / "bundle"
    output = cli_ok(["bundle", "--recipe", str(recipe_path), "--runtime", "onnx", "--out", str(out), "--no-zip"])
    seconds["bundle"], started = time.monotonic() - started, time.monotonic()
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    isolated = _no_network()
    install = subprocess.run([*isolated, str(venv / "bin" / "python"), str(out / "predict.py"), "--install-only"], capture_output=True, text=True, env=CLEAN)
    assert install.returncode == 0, install.stdout + install.stderr
    seconds["venv and install"] = time.monotonic() - started
    print(f"test_bundle set-up seconds: {seconds}")
    r = recipe_mod.load(recipe_path)
    c = competition.load(r.competition)
    yield {
        "root": root,
        "recipe_path": recipe_path,
        "recipe": r,
        "out": out,
        "output": output,
        "venv": venv,
        "clips": c.audio_paths(c.test),
        "isolated": isolated,
    }
    shutil.rmtree(out)  # about 8 GB of wheels and installed packages: not left in pytest's kept temporary folders
    shutil.rmtree(venv)


def _bundle_predict(built, *args) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [*built["isolated"], str(built["venv"] / "bin" / "python"), str(built["out"] / "predict.py"), "--no-install", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=built["root"],
        env=CLEAN,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_the_bundle_holds_the_runs_graphs_wheels_and_a_manifest_of_them(built):
    out, r = built["out"], built["recipe"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["runtime"] == "onnx" and manifest["recipe"] == "tiny" and len(manifest["ens_commit"]) == 40
    assert {m["name"]: m["kind"] for m in manifest["members"]} == {"test_resnet": "image", "basic_lr": "functionals"}
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == files
    for name in ("predict.py", "requirements.txt", "recipe.json", "README.md", "runs/tiny/blend/weights.json", "export/onnx/test_resnet.onnx"):
        assert name in files
    for fold in range(r.folds.n_splits):  # what predict reads of each run, and nothing else
        held = {Path(f).name for f in files if f.startswith(f"runs/tiny/test_resnet/fold{fold}/")}
        assert held == {"config.json", "metrics.json", "model.safetensors", "speaker_population.npz"}
        held = {Path(f).name for f in files if f.startswith(f"runs/tiny/basic_lr/fold{fold}/")}
        assert held == {"config.json", "metrics.json", "model.joblib", "speaker_population.npz"}
    some = sorted(files)[::7]
    assert all(bundle.sha256(out / f) == manifest["files"][f]["sha256"] for f in some)
    pins = dict(line.split("==") for line in (out / "requirements.txt").read_text().split())
    assert {"torch", "timm", "librosa", "onnxruntime", "scikit-learn"} <= set(pins) and not set(NOT_NEEDED) & set(pins)
    assert pins == bundle.requirements(r, "onnx", Path(bundle.__file__).parents[1] / "requirements.lock")
    wheels = {bundle._wheel_key(w) for w in (out / "wheels").glob("*.whl")}
    assert wheels == {(n, v) for n, v in pins.items()} | {("ens", "0.1.0")}
    assert "opensmile" not in manifest["licences"]
    assert not out.with_name("bundle.zip").exists()  # --no-zip
    assert "wrote" in built["output"] and " MB" in built["output"]


def test_the_zip_holds_the_folder_under_its_name_weights_stored(built, tmp_path):
    runs = built["out"] / "runs"
    archive = bundle.write_zip(runs, tmp_path / "runs.zip")
    with zipfile.ZipFile(archive) as z:
        names = {i.filename: i.compress_type for i in z.infolist()}
        assert set(names) == {f"runs/{p.relative_to(runs)}" for p in runs.rglob("*") if p.is_file()}
        assert all((t == zipfile.ZIP_STORED) == name.endswith((".safetensors", ".joblib", ".npz")) for name, t in names.items())
        assert z.read("runs/tiny/blend/weights.json") == (runs / "tiny" / "blend" / "weights.json").read_bytes()


def test_the_installed_environment_holds_exactly_the_locked_wheels(built):
    listed = subprocess.run([str(built["venv"] / "bin" / "python"), "-m", "pip", "list", "--format", "json"], capture_output=True, text=True, check=True)
    got = {bundle._canonical(d["name"]): d["version"] for d in json.loads(listed.stdout) if d["name"] not in ("pip", "setuptools")}
    pins = dict(line.split("==") for line in (built["out"] / "requirements.txt").read_text().split())
    pins = {k: v for k, v in pins.items() if k != "setuptools"}
    assert got == {**pins, "ens": "0.1.0"}
    where = subprocess.run(
        [str(built["venv"] / "bin" / "python"), "-c", "import ensemble; print(ensemble.__file__)"],
        capture_output=True,
        text=True,
        env=CLEAN,
        cwd=built["root"],  # not this checkout's folder: `python -c` imports from its working directory first
    )
    assert where.stdout.startswith(str(built["venv"])), where.stdout + where.stderr  # the bundle's ens wheel, not this checkout


def test_the_bundle_predicts_as_ens_predict_on_real_clips(built, tmp_path):
    clips, recipe = built["clips"], str(built["recipe_path"])
    expected_csv = tmp_path / "ens.csv"
    cli_ok(["predict", *map(str, clips), "--recipe", recipe, "--runtime", "onnx", "--out", str(expected_csv)])
    expected = pd.read_csv(expected_csv)
    test_dir = Path(clips[0]).parent
    _bundle_predict(built, test_dir, "--out", tmp_path / "submission.csv", "--verify")
    got = pd.read_csv(tmp_path / "submission.csv")
    classes = built["recipe"].competition.classes
    assert list(got.columns) == ["id", *classes]
    assert got["id"].tolist() == [Path(p).stem for p in expected["path"]]  # RAVDESS's test files are named by their id
    diff = np.abs(got[classes].to_numpy() - expected[classes].to_numpy()).max()
    assert diff < 1e-5, f"bundle vs ens predict: max abs difference {diff}"


def test_windows_are_rows_named_by_their_end_second(built, tmp_path):
    clips = built["clips"][:3]
    waves = [sf.read(c)[0] for c in clips]
    rate = sf.info(clips[0]).samplerate
    long = tmp_path / "soundscape_01.wav"
    sf.write(long, np.concatenate(waves), rate)  # three real clips, one after another (about 10 s)
    _bundle_predict(built, long, "--window", 2, "--hop", 2, "--out", tmp_path / "windows.csv")
    got = pd.read_csv(tmp_path / "windows.csv")
    cli_ok(
        [
            "predict",
            str(long),
            "--recipe",
            str(built["recipe_path"]),
            "--runtime",
            "onnx",
            "--window",
            "2",
            "--hop",
            "2",
            "--timeline",
            "--out",
            str(tmp_path / "ens.csv"),
        ]
    )
    timeline = pd.read_csv(tmp_path / "ens.csv").dropna(subset=["start_s"])
    assert got.columns[0] == "row_id" and len(got) == len(timeline) > 3
    assert got["row_id"].tolist() == [f"soundscape_01_{int(round(end))}" for end in timeline["end_s"]]
    classes = built["recipe"].competition.classes
    np.testing.assert_allclose(got[classes].to_numpy(), timeline[classes].to_numpy(), atol=1e-5)


def test_the_budget_check_times_the_installed_bundle(built):
    b = bundle.measure_budget(built["out"], built["clips"][:4], clips=700, minutes=90, venv=built["venv"])
    assert b.sample == 4 and b.predict_s > 0 and b.install_s > 0 and b.fixed_s > 0
    assert b.estimate_s == pytest.approx(b.install_s + b.fixed_s + 700 * b.predict_s / 4)
    assert b.fits == (b.estimate_s <= 90 * 60) and b.margin_s == pytest.approx(90 * 60 - b.estimate_s)
    assert ("fits" if b.fits else "does NOT fit") in b.describe() and "files/s" in b.describe()
    tight = bundle.Budget.of(10**7, 1, b.install_s, b.fixed_s, b.sample, b.predict_s)  # the same measure, far more clips
    assert not tight.fits and tight.margin_s < 0 and "does NOT fit" in tight.describe()


def test_refusals_name_the_fix(built, tmp_path):
    from typer.testing import CliRunner

    from ensemble.cli import app

    alone = CliRunner().invoke(app, ["bundle", "--recipe", str(built["recipe_path"]), "--budget-clips", "10"])
    assert alone.exit_code == 2 and "--budget-clips and --budget-minutes together" in alone.output
    with pytest.raises(bundle.BundleError, match="not one of openvino, onnx, torch"):
        bundle.roots(built["recipe"], "tflite")
    with pytest.raises(bundle.BundleError, match="give the folder `ens bundle` wrote"):
        bundle.read_manifest(tmp_path)
    with pytest.raises(bundle.BundleError, match="positive number"):
        bundle.measure_budget(built["out"], built["clips"][:1], clips=0, minutes=1)
    lock = tmp_path / "requirements.lock"
    lock.write_text((Path(bundle.__file__).parents[1] / "requirements.lock").read_text().replace("\ntimm==", "\ntimm==0.0.1\n#"))
    with pytest.raises(bundle.BundleError, match=r"timm \S+ \(lock: 0\.0\.1\).*pip install -c requirements.lock"):
        bundle.requirements(built["recipe"], "torch", lock)


def test_the_needed_wheels_cover_what_a_prediction_imports():
    """What ``import ensemble.predict`` (and the members' modules) loads, in a fresh interpreter, is within the torch bundle's wheels."""
    probe = (
        "import sys, json, importlib.metadata as md\n"
        "import ensemble.predict, ensemble.members.tabular, ensemble.members.functionals, ensemble.members.encoders, ensemble.export\n"
        "names = md.packages_distributions()\n"
        "print(json.dumps(sorted({d for m in list(sys.modules) for d in names.get(m.split('.')[0], [])})))\n"
    )
    root = Path(bundle.__file__).parents[1]
    imported = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=root).stdout)
    recipe = recipe_mod.load(root / "recipes" / "ravdess.toml")
    needed = bundle.requirements(recipe, "torch", root / "requirements.lock")
    # pandas imports pyarrow when it finds it (optional: not among its requirements); "typing" is the stdlib module,
    # which the installed `typing` backport (a resemblyzer requirement) claims
    assert {bundle._canonical(d) for d in imported} - {"ens", "pyarrow", "typing"} <= set(needed)
    assert not set(NOT_NEEDED) & set(needed)
