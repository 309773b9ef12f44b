"""A self-contained offline inference bundle of a recipe's trained ensemble (``ens bundle``), for Kaggle code competitions.

A code competition runs the submission as a notebook with no internet, on its own CPUs, within a
time limit; wheels and weights come as attached datasets. :func:`build` writes one folder (and a
zip of it beside, which Kaggle unpacks on upload) that holds everything ``ens predict`` reads:

- ``wheels/``: a wheelhouse of exactly the versions of ``requirements.lock`` that predicting needs
  (:func:`requirements`: the distributions :data:`PREDICT_NEEDS` and the recipe's members and runtime
  add, with everything they require, as this interpreter's installed metadata resolves it; no
  training-only package), downloaded from the package index by ``pip wheel --no-deps``, and ens
  itself as a wheel (``pip wheel --no-deps`` of its source checkout). ``requirements.txt`` pins each.
  torch is among them for every runtime: ens renders every image with its torch renderer
  (:mod:`ensemble.inputs.features`) and runs the speech encoders in torch; PyPI's torch for Linux is the CUDA
  build, which does not import without its ``nvidia-*`` libraries, so they come too (about 2.5 GB).
- ``runs/``: the subset of the run store :func:`ensemble.predict.load_ensemble` reads: the blend's
  ``weights.json`` and, for every fold of every seed of each weighted member, ``config.json``
  (its features, TTA and recipe), ``metrics.json`` (finished), the fold model (``model.safetensors``,
  or a functionals member's fitted pipeline ``model.joblib``) and ``speaker_population.npz`` (the
  training population's speaker-normalisation statistics). No OOF or test tables, logs or checkpoints.
- ``export/<format>/``: for ``--runtime onnx|openvino``, the graphs ``ens export`` writes (:func:`ensemble.export.export`).
  The fold weights stay too: the export's stale check compares their SHA-1.
- ``weights/``: the pretrained weights folders a member computes its inputs with (a speech encoder's,
  the AudioSet CNNs' of an embedding set), read offline.
- ``recipe.json``: the recipe as loaded (sections resolved), its folders replaced at prediction time.
- ``predict.py``: installs the wheelhouse into the running Python (``pip install --no-index --no-deps
  --find-links wheels``) and calls :func:`main`; ``README.md``; ``manifest.json``: every file's SHA-256
  and size, the ens version and git commit, the Python and platform the wheels are for, the members,
  the licences to heed (openSMILE's only where a member uses it).

:func:`main` is ``ens predict`` on a folder, writing ``submission.csv``: one row per file (its stem as
the id) or, with ``--window`` / ``--hop``, one row per window with the id ``<file stem>_<end second>``
(BirdCLEF's ``row_id``), using :func:`ensemble.predict.predict`'s own windows. :func:`measure_budget`
installs a bundle into a fresh virtual environment and times its ``predict.py`` on real clips, for
``ens bundle --budget-clips N --budget-minutes M``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .core import atomic
from .core.errors import EnsError

RUNTIMES = ("openvino", "onnx", "torch")
PREDICT_NEEDS = (
    "torch",
    "torchaudio",
    "timm",
    "librosa",
    "soundfile",
    "numpy",
    "pandas",
    "scipy",
    "scikit-learn",
    "joblib",
    "lightgbm",
    "safetensors",
    "tqdm",
    "matplotlib",
    "audiomentations",
)
"""The distributions ``import ensemble.predict`` and a prediction import, besides ens: torch (the renderer,
the models, the encoders), torchaudio (the image renderer's mel and MFCC transforms,
:class:`ensemble.inputs.features.Renderer`), timm (the backbones; torchvision through it), librosa and soundfile (reading,
resampling, filterbanks, functionals), numpy / pandas / scipy, scikit-learn and joblib (functionals
members' pipelines), lightgbm (:mod:`ensemble.members.tabular` imports it), safetensors (fold weights), tqdm
(:mod:`ensemble.inputs.features`' progress), matplotlib (:mod:`ensemble.inputs.plots`, which :mod:`ensemble.predict`
imports for ``--save-image``) and audiomentations (loading any recipe, a run's stored one included, checks its
``[augment].waveform`` list by building the transforms: :func:`ensemble.core.waveform_augment.problem`). Not: albumentations, resemblyzer
(test speakers are inferred in training only), ray, onnx / onnxscript (exporting), pytest."""
RUNTIME_NEEDS = {"torch": (), "onnx": ("onnxruntime",), "openvino": ("openvino",)}
ENCODER_NEEDS = ("transformers",)
OPENSMILE_NEEDS = ("opensmile",)
RUN_FILES = ("config.json", "metrics.json", "model.safetensors", "model.joblib", "speaker_population.npz")
"""What :func:`ensemble.predict.load_ensemble` reads in a run folder (``runs.CONFIG``, ``METRICS``, ``MODEL``,
``tabular.MODEL``, ``runs.POPULATION``); those a run has are copied."""
WHEELS, RUNS, EXPORT, WEIGHTS = "wheels", "runs", "export", "weights"
MANIFEST, RECIPE, REQUIREMENTS, SCRIPT, README = "manifest.json", "recipe.json", "requirements.txt", "predict.py", "README.md"
STORED = (".whl", ".zip", ".safetensors", ".onnx", ".bin", ".npz", ".joblib")
"""Suffixes zipped without compression (already compressed, or float weights that barely compress): the zip of
a 3 GB wheelhouse is written at disk speed."""
WEIGHT_LICENCES = {
    "whisper_base": "MIT (OpenAI Whisper base, its encoder)",
    "yamnet_mobilenetv1_100": "Apache-2.0 (YAMNet, Google; google-coral/coralmicro)",
    "efficientat_mn04_as": "MIT (EfficientAT mn04_as, (c) 2022 Florian Schmid)",
}
"""Licences of the weights folders ens knows (README, "Licences"); any other folder's licence is its source's."""


class BundleError(EnsError, ValueError):
    """A bundle that cannot be built or used: no trained ensemble, a package not at its locked version, no source
    checkout to build ens's wheel from, weights that are not in a local folder, a bad bundle folder or option."""


# ---------------------------------------------------------------- which wheels


def _canonical(name: str) -> str:
    from packaging.utils import canonicalize_name

    return str(canonicalize_name(name))


def closure(roots: Iterable[str]) -> dict[str, str]:
    """The installed distributions ``roots`` need, with everything they require (extras followed), as
    this interpreter's metadata and environment markers say: canonical name -> installed version.

    Raises:
        BundleError: a root or requirement is not installed (names it and the install command).
    """
    from packaging.requirements import Requirement

    found: dict[str, str] = {}
    done: set[tuple[str, frozenset[str]]] = set()
    todo = [(name, frozenset()) for name in roots]
    while todo:
        name, extras = todo.pop()
        key = (_canonical(name), extras)
        if key in done:
            continue
        done.add(key)
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError as err:
            raise BundleError(
                f"{name} is not installed, and predicting needs it; install ens with the lock: pip install -c requirements.lock -e '.[deploy]'."
            ) from err
        found[key[0]] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate({"extra": extra}) for extra in (extras or {""})):
                todo.append((req.name, frozenset(req.extras)))
    return found


def locked(lock: str | os.PathLike) -> dict[str, str]:
    """The pins of ``requirements.lock`` (uv's universal lock) that apply to this interpreter: canonical name -> version.

    Raises:
        BundleError: the file does not exist.
    """
    from packaging.markers import Marker

    path = Path(lock)
    if not path.is_file():
        raise BundleError(f"{path}: no lock file; give the lock of ens's checkout (lock=PATH) that ens was installed with.")
    pins = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line[0] in " #-":
            continue
        spec, _, marker = line.partition(";")
        name, _, version = spec.strip().partition("==")
        if version and (not marker.strip() or Marker(marker.strip()).evaluate()):
            pins[_canonical(name)] = version.strip()
    return pins


def uses_opensmile(recipe) -> bool:
    """Whether a ``[[functionals]]`` member of ``recipe`` extracts an openSMILE set (ComParE_2016, eGeMAPSv02)."""
    from .members import functionals

    return any(m.set in functionals.SETS and functionals.SETS[m.set].licence == functionals.OPENSMILE_LICENCE for m in recipe.functionals)


def roots(recipe, runtime: str) -> list[str]:
    """The distributions a prediction of ``recipe`` with ``runtime`` imports (:data:`PREDICT_NEEDS`, the
    runtime's, transformers for a speech-encoder member, opensmile for an openSMILE member).

    Raises:
        BundleError: an unknown ``runtime``.
    """
    from .members import functionals

    if runtime not in RUNTIMES:
        raise BundleError(f"runtime={runtime!r} is not one of {', '.join(RUNTIMES)}; give one of them.")
    extra = list(RUNTIME_NEEDS[runtime])
    if any(functionals.is_encoder(m.set) for m in recipe.functionals):
        extra += ENCODER_NEEDS
    if uses_opensmile(recipe):
        extra += OPENSMILE_NEEDS
    return [*PREDICT_NEEDS, *extra]


def requirements(recipe, runtime: str, lock: str | os.PathLike) -> dict[str, str]:
    """The exact wheels a prediction needs: :func:`closure` of :func:`roots`, each at its ``lock`` pin.

    Returns:
        canonical name -> version, sorted by name.

    Raises:
        BundleError: a needed distribution is not in the lock, or installed at another version than
            the lock's (names both and the reinstall command).
    """
    pins, needed = locked(lock), closure(roots(recipe, runtime))
    missing = sorted(name for name in needed if name not in pins)
    if missing:
        raise BundleError(f"{missing} are needed to predict but not pinned in {lock}; regenerate the lock (README, 'The lock').")
    off = {name: (version, pins[name]) for name, version in needed.items() if version != pins[name]}
    if off:
        shown = ", ".join(f"{name} {have} (lock: {want})" for name, (have, want) in sorted(off.items()))
        raise BundleError(f"installed versions differ from {lock}: {shown}; reinstall with the lock: pip install -c requirements.lock -e '.[deploy]'.")
    return {name: pins[name] for name in sorted(needed)}


# ---------------------------------------------------------------- building


@dataclass
class Bundle:
    """A built bundle.

    Attributes:
        folder: the bundle folder.
        zip: its zip beside it, or None when not written.
        manifest: ``manifest.json`` as written.
        sizes: part -> bytes: ``wheels`` (every wheel but ens's), ``ens`` (its wheel), ``runs``,
            ``export``, ``weights``, ``total`` (the folder) and ``zip``.
    """

    folder: Path
    zip: Path | None
    manifest: dict
    sizes: dict[str, int]


def source_root() -> Path:
    """The checkout ens is imported from (the folder holding ``pyproject.toml`` and ``ensemble/``).

    Raises:
        BundleError: ens is not imported from a source checkout (an installed wheel has none to build from).
    """
    root = Path(__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file():
        raise BundleError(f"{root} holds no pyproject.toml: ens bundle builds ens's wheel from its source checkout; run it from a clone (pip install -e .).")
    return root


def git_commit(root: Path) -> tuple[str, bool]:
    """``(commit, dirty)`` of the git checkout at ``root``: ``HEAD``'s hash and whether tracked files
    differ from it (``git status --porcelain --untracked-files=no``); ``("unknown", False)`` outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False
    return head, bool(status.strip())


def _pip(args: list[str], what: str) -> None:
    """``python -m pip ARGS`` with this interpreter, quiet.

    Raises:
        BundleError: pip failed; names ``what`` and shows the end of pip's output.
    """
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise BundleError(f"{what} failed (pip exit {done.returncode}): {(done.stdout + done.stderr)[-1500:]}")


def _wheel_key(path: Path) -> tuple[str, str] | None:
    """``(canonical name, version)`` of a wheel file, or None for a file that is no wheel."""
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename

    try:
        name, version, _, _ = parse_wheel_filename(path.name)
    except InvalidWheelFilename:
        return None
    return str(name), str(version)


def _same_version(a: str, b: str) -> bool:
    from packaging.version import Version

    return Version(a) == Version(b)


def wheelhouse(pins: dict[str, str], folder: Path, reuse: Path | None = None) -> None:
    """Fill ``folder`` with one wheel per pin (``pip wheel --no-deps``: the index's wheel, or one built
    from its sdist), taking the wheels already in ``reuse`` (an earlier bundle's wheelhouse, hard-linked or
    copied) instead of downloading them again; wheels of no pin are left out.

    Raises:
        BundleError: pip failed, or a pin has no wheel afterwards.
    """
    folder.mkdir(parents=True, exist_ok=True)
    have: dict[str, Path] = {}
    for wheel in sorted(reuse.glob("*.whl")) if reuse is not None and reuse.is_dir() else []:
        key = _wheel_key(wheel)
        if key and key[0] in pins and _same_version(key[1], pins[key[0]]) and key[0] not in have:
            target = folder / wheel.name
            try:
                os.link(wheel, target)
            except OSError:
                shutil.copy2(wheel, target)
            have[key[0]] = target
    wanted = [f"{name}=={version}" for name, version in pins.items() if name not in have]
    if wanted:
        _pip(["wheel", "--no-deps", "--quiet", "-w", str(folder), *wanted], f"downloading {len(wanted)} wheels")
    found = {key[0] for key in map(_wheel_key, folder.glob("*.whl")) if key and key[0] in pins and _same_version(key[1], pins[key[0]])}
    absent = sorted(set(pins) - found)
    if absent:
        raise BundleError(f"no wheel of {absent} in {folder} after pip wheel; check the package index is reachable.")


def ens_wheel(folder: Path) -> Path:
    """Build ens's wheel (``pip wheel --no-deps``) from a copy of its source checkout (so no ``build/`` is
    left in the checkout) into ``folder``. Returns the wheel's path.

    Raises:
        BundleError: no source checkout (:func:`source_root`), or the build failed.
    """
    root = source_root()
    with tempfile.TemporaryDirectory() as scratch:
        src = Path(scratch) / "ens"
        shutil.copytree(root / "ensemble", src / "ensemble", ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(root / name, src / name)
        try:
            import setuptools  # noqa: F401  (build with the installed one: no index needed)

            isolation = ["--no-build-isolation"]
        except ImportError:
            isolation = []
        _pip(["wheel", "--no-deps", "--quiet", *isolation, "-w", str(folder), str(src)], "building ens's wheel")
    built = sorted(folder.glob("ens-*.whl"))
    if not built:
        raise BundleError(f"pip wheel wrote no ens wheel into {folder}.")
    return built[-1]


def _copy_runs(ensemble, recipe, dest: Path) -> list[str]:
    """Copy what :func:`ensemble.predict.load_ensemble` reads of ``ensemble``'s members and the blend's
    ``weights.json`` into ``dest`` (the bundle's ``runs/``, with each member's run store by name). Returns
    the copied run folders relative to ``dest``."""
    from .store import runs

    copied = []
    for member in ensemble.members:
        for entry in member.entries:
            for run in member.runs(entry):
                target = dest / member.store.name / entry / run.name
                target.mkdir(parents=True)
                for name in RUN_FILES:
                    if (run / name).is_file():
                        shutil.copy2(run / name, target / name)
                copied.append(str(target.relative_to(dest)))
    weights = runs.blend_dir(recipe) / runs.WEIGHTS
    if weights.is_file():
        (dest / recipe.name / runs.BLEND).mkdir(parents=True, exist_ok=True)
        shutil.copy2(weights, dest / recipe.name / runs.BLEND / runs.WEIGHTS)
    return copied


def _weight_folders(ensemble, recipe) -> dict[str, Path]:
    """The weights folders the ensemble's members read when predicting: folder name -> path (a speech
    encoder's, ``<weights_dir>/<name>``; the AudioSet CNNs' of an embedding set).

    Raises:
        BundleError: an encoder set that is not a folder of ``[paths].weights_dir`` (a path or a hub id:
            the bundle's recipe could not find it offline).
    """
    from .core.encoder_sets import split_window
    from .core.weights import weights_dir
    from .members import audioset, functionals, tabular

    root = weights_dir(recipe.paths.weights_dir)
    folders = {}
    for spec in [m.spec for m in ensemble.loaded.values() if isinstance(m, tabular.TabularMember)]:
        if functionals.is_encoder(spec.set):
            name = split_window(spec.set)[0]
            if root is None or not (root / name / "config.json").is_file():
                raise BundleError(
                    f"member set={spec.set!r} is not a folder of the weights folder ({root}): a bundle carries "
                    f"<weights_dir>/<name> only; put the encoder there (weights_dir=DIR) and retrain, or leave the member out."
                )
            folders[name] = root / name
        elif spec.set in ("yamnet_embedding", "mn04_embedding"):
            name = audioset.YAMNET_FOLDER if spec.set == "yamnet_embedding" else audioset.MN04_FOLDER
            if root is not None and (root / name).is_dir():
                folders[name] = root / name
    return folders


def sha256(path: Path) -> str:
    """SHA-256 hex digest of the file at ``path``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _size(path: Path) -> int:
    """Bytes of a file, or of every file under a folder (0 when absent)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def write_zip(folder: Path, out: Path) -> Path:
    """Zip ``folder`` (its files under its own name) atomically to ``out``: :data:`STORED` suffixes without
    compression, the rest deflated; ZIP64 for large members. Returns ``out``."""
    with atomic.atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", allowZip64=True) as archive:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            compress = zipfile.ZIP_STORED if path.suffix in STORED else zipfile.ZIP_DEFLATED
            archive.write(path, f"{folder.name}/{path.relative_to(folder)}", compress_type=compress)
    return out


def default_folder(recipe, runtime: str) -> Path:
    """``<runs_dir>/<recipe>/bundle-<runtime>/``: where :func:`build` writes by default (beside ``export/``)."""
    from .store import runs

    return runs.root(recipe) / f"bundle-{runtime}"


def build(
    recipe,
    runtime: str = "openvino",
    out: str | os.PathLike | None = None,
    lock: str | os.PathLike | None = None,
    make_zip: bool = True,
    on_step: Callable[[str], None] | None = None,
) -> Bundle:
    """Build the offline inference bundle of ``recipe``'s trained ensemble (see the module docstring for its layout).

    The folder is written beside ``out`` and moved into place when complete; the wheels of an earlier
    bundle in ``out`` are reused, not downloaded again.

    Args:
        recipe: the recipe whose ensemble :func:`ensemble.predict.load_ensemble` loads (its blend weights).
        runtime: ``openvino``, ``onnx`` (the image members' graphs, :func:`ensemble.export.export`) or ``torch`` (fold weights).
        out: the bundle folder (default :func:`default_folder`); the zip is ``<out>.zip``.
        lock: ``requirements.lock`` (default: the checkout's, :func:`source_root`).
        make_zip: write the zip.
        on_step: called with a line for each step done (what the CLI prints).

    Returns:
        the :class:`Bundle`.

    Raises:
        BundleError: an unknown runtime, a package not at its lock version, no source checkout, pip
            failed, weights not in a local folder. PredictError: no trained ensemble (what ``ens predict`` raises).
            ExportError: the runtime's package is missing.
    """
    from . import export, predict
    from .members import kinds

    say = on_step or (lambda line: None)
    pins = requirements(recipe, runtime, lock if lock is not None else source_root() / "requirements.lock")
    ensemble = predict.load_ensemble(recipe, "cpu")
    folders = _weight_folders(ensemble, recipe)
    final = Path(out) if out is not None else default_folder(recipe, runtime)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    try:
        started = time.monotonic()
        wheelhouse(pins, tmp / WHEELS, final / WHEELS)
        say(f"wheels: {len(pins)} locked distributions ({_size(tmp / WHEELS) / 1e6:.0f} MB, {time.monotonic() - started:.0f} s)")
        ens = ens_wheel(tmp / WHEELS)
        say(f"ens wheel: {ens.name}")
        runs_copied = _copy_runs(ensemble, recipe, tmp / RUNS)
        say(f"runs: {len(runs_copied)} run folders of {len(ensemble.members)} members")
        if runtime != "torch":
            export.export(recipe, runtime, tmp / EXPORT / runtime)
            say(f"export: {runtime} graphs of the members that have one ({len(ensemble.members)} members)")
        for name, folder in folders.items():
            shutil.copytree(folder, tmp / WEIGHTS / name)
        data = recipe.to_dict()
        atomic.write_json(tmp / RECIPE, data)
        atomic.write_text(tmp / REQUIREMENTS, "".join(f"{name}=={version}\n" for name, version in pins.items()))
        atomic.write_text(tmp / SCRIPT, _script(ens.name))
        commit, dirty = git_commit(source_root())
        licences = _licences(recipe, folders)
        atomic.write_text(tmp / README, _readme(recipe, runtime, licences))
        files = {str(p.relative_to(tmp)): {"sha256": sha256(p), "bytes": p.stat().st_size} for p in sorted(tmp.rglob("*")) if p.is_file()}
        sizes = {
            "wheels": _size(tmp / WHEELS) - ens.stat().st_size,
            "ens": ens.stat().st_size,
            "runs": _size(tmp / RUNS),
            "export": _size(tmp / EXPORT),
            "weights": _size(tmp / WEIGHTS),
        }
        manifest = {
            "format": "ens-bundle",
            "ens_version": __version__,
            "ens_commit": commit,
            "ens_dirty": dirty,
            "recipe": recipe.name,
            "runtime": runtime,
            "python": f"{sys.version_info.major}.{sys.version_info.minor}",
            "platform": sysconfig.get_platform(),
            "ens_wheel": f"{WHEELS}/{ens.name}",
            "classes": ensemble.classes,
            "weights": ensemble.weights,
            "weights_from": ensemble.weights_from,
            "members": [{"name": m.name, "kind": kinds.of(recipe, m.entries[0]).name, "entries": list(m.entries)} for m in ensemble.members],
            "licences": licences,
            "sizes": sizes,
            "files": files,
        }
        atomic.write_json(tmp / MANIFEST, manifest)
        sizes["total"] = _size(tmp)
        _replace_folder(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    archive = None
    if make_zip:
        started = time.monotonic()
        archive = write_zip(final, final.with_name(final.name + ".zip"))
        say(f"zip: {archive} ({time.monotonic() - started:.0f} s)")
    sizes["zip"] = _size(archive) if archive is not None else 0
    return Bundle(final, archive, manifest, sizes)


def _replace_folder(new: Path, final: Path) -> None:
    """Move the complete folder ``new`` to ``final``, replacing an earlier one (moved aside first, then deleted)."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(new, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _licences(recipe, folders: dict[str, Path]) -> dict[str, str]:
    """What the bundle's user must heed beyond ens's permissive licences: openSMILE's when a member uses
    it, each weights folder's (:data:`WEIGHT_LICENCES`)."""
    from .members import functionals

    out = {"ens and its wheels": "each wheel's licence is in its .dist-info; ens's own code and its default dependencies are permissive (README, 'Licences')"}
    if uses_opensmile(recipe):
        out["opensmile"] = functionals.OPENSMILE_LICENCE
    for name in folders:
        out[f"weights/{name}"] = WEIGHT_LICENCES.get(name, "not known to ens: see the weights' source")
    return out


def _script(ens_wheel_name: str) -> str:
    """The bundle's ``predict.py``: install the wheelhouse offline, then :func:`main`."""
    return f'''"""ens inference bundle: installs its wheels offline into this Python, then predicts a folder into submission.csv.

    python predict.py TEST_DIR [--out submission.csv] [--window 5 --hop 5] [--no-install] [--install-only]

(python predict.py --help lists every option.) The install is pip install --no-index --no-deps --find-links wheels:
nothing is fetched; the machine's pip configuration and PIP_* variables are ignored.
"""

import importlib
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ENS_WHEEL = HERE / "wheels" / "{ens_wheel_name}"


def install():
    env = {{k: v for k, v in os.environ.items() if not k.startswith("PIP_")}}
    env["PIP_CONFIG_FILE"] = os.devnull
    pip = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--find-links", str(HERE / "wheels")]
    pip += ["--no-warn-script-location", "--no-compile", "-q"]
    subprocess.run([*pip, "-r", str(HERE / "requirements.txt")], check=True, env=env)
    subprocess.run([*pip, "--force-reinstall", str(ENS_WHEEL)], check=True, env=env)
    importlib.invalidate_caches()


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--no-install" in args:
        args.remove("--no-install")
    else:
        install()
    if "--install-only" in args:
        sys.exit(0)
    from ensemble import bundle

    sys.exit(bundle.main(HERE, args))
'''


def _readme(recipe, runtime: str, licences: dict[str, str]) -> str:
    """The bundle's ``README.md``: what it holds, how to run it offline, its licences."""
    shown = "\n".join(f"- {name}: {text}" for name, text in licences.items())
    return f"""# ens inference bundle: recipe `{recipe.name}`, runtime `{runtime}`

Everything `ens predict` needs, offline: `wheels/` (the locked versions, ens's own wheel among them),
`runs/` (fold models, blend weights, speaker-normalisation statistics), `export/` (the image members'
graphs, for onnx / openvino), `weights/` (pretrained encoders a member reads), `recipe.json`,
`manifest.json` (every file's SHA-256, the ens commit, the Python and platform the wheels are for).

In a Kaggle notebook with no internet (the bundle attached as a dataset):

    !python /kaggle/input/<bundle>/predict.py /kaggle/input/<competition>/test_soundscapes --window 5 --hop 5 --out submission.csv

`predict.py` first installs the wheels into the running Python (`pip install --no-index --no-deps
--find-links wheels -r requirements.txt`; `--no-install` skips it, `--install-only` stops after it),
then writes one row per file (its stem as the id) or, with `--window` / `--hop`, one row per window,
`<file stem>_<end second>`. `--verify` checks every file against the manifest first.

## Licences

{shown}
"""


# ---------------------------------------------------------------- using a bundle


def read_manifest(folder: str | os.PathLike) -> dict:
    """A bundle's ``manifest.json``.

    Raises:
        BundleError: ``folder`` holds none (not a bundle).
    """
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise BundleError(f"{path} cannot be read ({err}); give the folder `ens bundle` wrote.") from err
    if manifest.get("format") != "ens-bundle":
        raise BundleError(f"{path} is not an ens bundle's manifest; give the folder `ens bundle` wrote.")
    return manifest


def verify(folder: str | os.PathLike) -> list[str]:
    """The files of bundle ``folder`` that are missing or whose SHA-256 differs from ``manifest.json``'s (empty when intact)."""
    folder = Path(folder)
    return [name for name, entry in read_manifest(folder)["files"].items() if not (folder / name).is_file() or sha256(folder / name) != entry["sha256"]]


def load_recipe(folder: str | os.PathLike):
    """The bundle's recipe (``recipe.json``) with its folders placed in ``folder``: ``runs_dir`` its ``runs/``,
    ``weights_dir`` its ``weights/``.

    Raises:
        BundleError: not a bundle. RecipeError: the recipe does not load with this ens.
    """
    from .core.recipe import from_dict

    folder = Path(folder).resolve()
    read_manifest(folder)
    data = json.loads((folder / RECIPE).read_text())
    data["paths"] = {**data.get("paths", {}), "runs_dir": str(folder / RUNS), "weights_dir": str(folder / WEIGHTS)}
    return from_dict(data, str(folder / RECIPE))


def row_ids(prediction, window: bool) -> list[str]:
    """The submission ids of one file's prediction: its stem, or with ``window`` one id per window,
    ``<stem>_<end second>`` (the window's end in the file, whole seconds: BirdCLEF's ``row_id``)."""
    stem = Path(prediction.path).stem
    if not window:
        return [stem]
    return [f"{stem}_{int(round(end))}" for _, end in prediction.spans]


def submission(predictions, classes: list[str], id_col: str, window: bool):
    """The submission table: ``id_col`` then one probability column per class; a row per file, or per window.

    Raises:
        BundleError: two rows with one id (files of one stem in different folders, or windows whose ends
            round to the same second: give whole-second windows and hops).
    """
    import numpy as np
    import pandas as pd

    ids, rows = [], []
    for p in predictions:
        ids += row_ids(p, window)
        rows.append(p.window_proba if window else p.proba[None])
    frame = pd.DataFrame(np.concatenate(rows) if rows else np.zeros((0, len(classes))), columns=classes)
    frame.insert(0, id_col, ids)
    repeated = frame[id_col][frame[id_col].duplicated()].unique().tolist()
    if repeated:
        raise BundleError(
            f"row ids {repeated[:5]} repeat: files of one stem, or windows ending in the same whole second; give whole-second --window and --hop."
        )
    return frame


def main(folder: str | os.PathLike, argv: list[str] | None = None) -> int:
    """The bundle's ``predict.py`` after its install: predict audio files or folders with the bundle's ensemble
    and write the submission (``--help`` for the options). Returns the exit code (2 for a refusal, printed as ``error: ...``)."""
    parser = argparse.ArgumentParser(prog="predict.py", description="Predict audio with this ens bundle's ensemble and write a submission CSV.")
    parser.add_argument("paths", nargs="+", help="audio files, or folders searched recursively for .wav .flac .mp3 .ogg")
    parser.add_argument("--out", default="submission.csv", help="the CSV to write (default submission.csv)")
    parser.add_argument("--window", type=float, help="seconds per window: one row per window, <stem>_<end second>")
    parser.add_argument("--hop", type=float, help="seconds between window starts (default the window with --window)")
    parser.add_argument("--id-col", help="the id column's name (default the recipe's [competition].id_col; row_id with --window)")
    parser.add_argument("--speaker-dir", help="other recordings of the files' one speaker (speaker-normalised members)")
    parser.add_argument("--same-speaker", action="store_true", help="the files are one speaker")
    parser.add_argument("--threads", type=int, help="CPU threads (0: every core); default the recipe's [runtime].threads")
    parser.add_argument("--on-error", choices=("fail", "skip"), default="fail", help="files that cannot be read: fail or skip")
    parser.add_argument("--verify", action="store_true", help="check every file's SHA-256 against manifest.json first")
    parser.add_argument("--timing", help="write a JSON of seconds: load (ensemble), warm-up (the first file), predict (every file)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        return _main(Path(folder), args)
    except EnsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _main(folder: Path, args: argparse.Namespace) -> int:
    """:func:`main` after parsing."""
    import warnings

    from . import predict

    started = time.monotonic()
    if args.verify:
        bad = verify(folder)
        if bad:
            raise BundleError(f"{len(bad)} files of {folder} are missing or differ from manifest.json: {bad[:5]}; copy the bundle again.")
    manifest = read_manifest(folder)
    recipe = load_recipe(folder)
    if args.threads is not None:
        recipe = dataclasses.replace(recipe, runtime=dataclasses.replace(recipe.runtime, threads=args.threads))
    runtime = manifest["runtime"]
    export_dir = folder / EXPORT / runtime if runtime != "torch" else None
    files = predict.audio_files(args.paths)
    ensemble = predict.load_ensemble(recipe, "cpu", runtime, export_dir)
    loaded = time.monotonic()
    hop = args.hop if args.hop is not None or args.window is None else args.window
    speaker = None if args.speaker_dir is None else [args.speaker_dir]
    timing = {"load_s": loaded - started}
    if args.timing:
        predict.predict(ensemble, files[:1], args.window, hop, args.on_error, speaker, args.same_speaker)
        timing["warmup_s"] = time.monotonic() - loaded
    begun = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predictions = predict.predict(ensemble, files, args.window, hop, args.on_error, speaker, args.same_speaker)
    for warning in caught:
        if issubclass(warning.category, (predict.SpeakerNormWarning, predict.SkippedClipsWarning)):
            print(f"warning: {warning.message}", file=sys.stderr)
    windowed = args.window is not None
    id_col = args.id_col or ("row_id" if windowed else recipe.competition.id_col)
    frame = submission(predictions, ensemble.classes, id_col, windowed)
    atomic.write_csv(args.out, frame)
    timing.update(predict_s=time.monotonic() - begun, files=len(predictions), rows=len(frame))
    if args.timing:
        atomic.write_json(args.timing, timing)
    print(f"wrote {args.out}: {len(frame)} rows of {len(predictions)} files in {time.monotonic() - started:.1f} s ({runtime})")
    return 0


# ---------------------------------------------------------------- the time budget


@dataclass
class Budget:
    """A bundle's predict throughput measured as installed, and whether a competition's clips fit its limit.

    Attributes:
        clips, minutes: the competition's test clips and time limit.
        install_s: seconds of ``predict.py --install-only`` into the virtual environment (a fresh one: the whole install).
        fixed_s: seconds of the timed ``predict.py`` run outside its timed prediction (Python start-up, imports,
            loading the ensemble, the warm-up file).
        sample: the files timed; predict_s: seconds to predict them (once warm).
        estimate_s: ``install_s + fixed_s + clips * predict_s / sample``.
        fits: ``estimate_s <= minutes * 60``; margin_s: ``minutes * 60 - estimate_s`` (negative: over).
        cores: this machine's CPU cores (``os.cpu_count``); the competition's machine may differ.
    """

    clips: int
    minutes: float
    install_s: float
    fixed_s: float
    sample: int
    predict_s: float
    estimate_s: float
    fits: bool
    margin_s: float
    cores: int

    @classmethod
    def of(cls, clips: int, minutes: float, install_s: float, fixed_s: float, sample: int, predict_s: float) -> Budget:
        """The budget of ``clips`` files in ``minutes`` from a measure (seconds, see the attributes) on this machine."""
        estimate = install_s + fixed_s + clips * predict_s / sample
        return cls(clips, minutes, install_s, fixed_s, sample, predict_s, estimate, estimate <= minutes * 60, minutes * 60 - estimate, os.cpu_count() or 0)

    @property
    def clips_per_s(self) -> float:
        """Files predicted per second once warm."""
        return self.sample / self.predict_s

    def describe(self) -> str:
        """One paragraph: the measure, the estimate and the verdict with its margin."""
        verdict = "fits" if self.fits else "does NOT fit"
        return (
            f"measured on this machine ({self.cores} cores): install {self.install_s:.1f} s, start-up and loading {self.fixed_s:.1f} s, "
            f"{self.sample} files in {self.predict_s:.1f} s ({self.clips_per_s:.2f} files/s)\n"
            f"{self.clips} files: estimated {self.estimate_s / 60:.1f} min of {self.minutes:g} min: {verdict}, "
            f"margin {self.margin_s / 60:+.1f} min ({self.margin_s / (self.minutes * 60):+.0%})"
        )


def measure_budget(folder: str | os.PathLike, audio: list[str | os.PathLike], clips: int, minutes: float, venv: str | os.PathLike | None = None) -> Budget:
    """Install bundle ``folder`` into a virtual environment and time its ``predict.py`` on ``audio``; estimate whether
    ``clips`` such files fit in ``minutes``.

    Args:
        audio: files or folders of representative recordings (their length sets the throughput).
        venv: the virtual environment to install into; a fresh temporary one when None (removed after), created
            with ``python -m venv`` when it does not exist.

    Raises:
        BundleError: not a bundle, ``clips`` or ``minutes`` not positive, no audio file, or the install or the
            prediction failed (their output shown).
    """
    from . import predict

    if clips < 1 or minutes <= 0:
        raise BundleError(f"budget_clips={clips}, budget_minutes={minutes}: give a positive number of clips and of minutes.")
    folder = Path(folder).resolve()
    read_manifest(folder)
    files = [str(p.resolve()) for p in predict.audio_files(list(audio))]
    with tempfile.TemporaryDirectory() as scratch:
        env_dir = Path(venv) if venv is not None else Path(scratch) / "venv"
        python = env_dir / "bin" / "python"
        if not python.exists():
            _run([sys.executable, "-m", "venv", str(env_dir)], "creating the virtual environment")
        started = time.monotonic()
        _run([str(python), str(folder / SCRIPT), "--install-only"], "installing the bundle")
        install_s = time.monotonic() - started
        timing_path = Path(scratch) / "timing.json"
        started = time.monotonic()
        _run([str(python), str(folder / SCRIPT), "--no-install", *files, "--out", str(Path(scratch) / "sub.csv"), "--timing", str(timing_path)], "predicting")
        wall = time.monotonic() - started
        timing = json.loads(timing_path.read_text())
    return Budget.of(clips, minutes, install_s, wall - timing["predict_s"], len(files), timing["predict_s"])


def _run(command: list[str], what: str) -> None:
    """Run ``command`` (the machine's pip settings left to the bundle's script).

    Raises:
        BundleError: it failed; names ``what`` and shows the end of its output.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the installed bundle's ens, not a checkout's
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise BundleError(f"{what} failed (exit {done.returncode}): {(done.stdout + done.stderr)[-1500:]}")
