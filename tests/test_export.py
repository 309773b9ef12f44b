"""ens export and ens predict --runtime: the tiny trained ensemble's members, each one graph of its fold
models, as ONNX and OpenVINO give torch eager's probabilities on real RAVDESS clips, and the refusals."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from ensemble import export, predict
from ensemble.cli import app
from ensemble.core import recipe as recipe_mod
from ensemble.deploy import engines
from ensemble.store import competition
from ensemble.store import runs as run_store

from .conftest import cli_ok, copy_tiny_runs

runner = CliRunner()


@pytest.fixture(scope="module")
def exported(tiny_trained, tmp_path_factory):
    """A copy of the session's tiny runs (2 backbones x 2 folds, 1 epoch, blended), exported as
    ONNX and OpenVINO through the CLI; the competition's 16 real hidden-test clips."""
    root = tmp_path_factory.mktemp("export")
    recipe_path = copy_tiny_runs(tiny_trained, root)
    outputs = {fmt: cli_ok(["export", "--recipe", str(recipe_path), "--format", fmt]) for fmt in engines.FORMATS}
    r = recipe_mod.load(recipe_path)
    c = competition.load(r.competition)
    return {"recipe_path": recipe_path, "recipe": r, "clips": c.audio_paths(c.test), "outputs": outputs}


def test_the_manifest_lists_each_members_graph_and_runs_with_the_blend(exported):
    r = exported["recipe"]
    manifest = json.loads((engines.export_dir(r, "onnx") / engines.MANIFEST).read_text())
    assert manifest["format"] == "onnx" and manifest["classes"] == r.competition.classes
    assert manifest["blend"]["method"] and abs(sum(manifest["weights"].values()) - 1) < 1e-9
    assert len(manifest["members"]) == 2
    for member in manifest["members"]:
        assert member["kind"] == "image" and member["features"]["height"] == r.features.height
        assert (engines.export_dir(r, "onnx") / member["file"]).is_file() and member["file"] == f"{member['name']}.onnx"
        assert [run["fold"] for run in member["runs"]] == list(range(r.folds.n_splits))
        for run in member["runs"]:
            assert run["sha1"] == engines.sha1(run_store.run_dir(r, run["entry"], run["fold"]) / run_store.MODEL)
    xml = [Path(m["file"]) for m in json.loads((engines.export_dir(r, "openvino") / engines.MANIFEST).read_text())["members"]]
    assert all((engines.export_dir(r, "openvino") / f.with_suffix(".bin")).is_file() for f in xml)
    assert "manifest.json" in exported["outputs"]["openvino"]


@pytest.mark.parametrize("engine", engines.FORMATS)
def test_exported_graphs_give_torch_probabilities_on_real_clips(exported, engine, monkeypatch):
    monkeypatch.setattr(engines, "CHUNK", 3)  # OpenVINO: the 16 clips' batch as 6 requests on its streams, put back in order
    r, clips = exported["recipe"], exported["clips"]
    eager = predict.predict(predict.load_ensemble(r), clips)
    ensemble = predict.load_ensemble(r, engine=engine)
    assert all(len(models) == 1 and isinstance(models[0], engines.ExportedModel) for models in ensemble.models.values())
    got = predict.predict(ensemble, clips)
    diff = np.max(np.abs(np.stack([p.proba for p in got]) - np.stack([p.proba for p in eager])))
    assert diff < 1e-4, f"{engine}: max abs difference {diff} from torch eager"


def test_ens_predict_runtime_matches_torch(exported, tmp_path):
    recipe, clips = str(exported["recipe_path"]), [str(c) for c in exported["clips"][:6]]
    frames = {}
    for engine in engines.RUNTIMES:
        out = tmp_path / f"{engine}.csv"
        cli_ok(["predict", *clips, "--recipe", recipe, "--runtime", engine, "--threads", "1", "--out", str(out)])
        frames[engine] = pd.read_csv(out)
    classes = exported["recipe"].competition.classes
    for engine in engines.FORMATS:
        assert frames[engine]["path"].tolist() == frames["torch"]["path"].tolist()
        np.testing.assert_allclose(frames[engine][classes].to_numpy(), frames["torch"][classes].to_numpy(), atol=1e-4)


def test_refusals_name_the_fix(exported, tiny_trained, tmp_path, monkeypatch):
    r, recipe = exported["recipe"], str(exported["recipe_path"])
    bad = runner.invoke(app, ["export", "--recipe", recipe, "--format", "tflite"])
    assert bad.exit_code == 2 and "tflite" in bad.output
    with pytest.raises(engines.ExportError, match="'tflite' is not one of onnx, openvino"):
        export.export(r, "tflite")
    with pytest.raises(engines.ExportError, match="not one of torch, onnx, openvino"):
        predict.load_ensemble(r, engine="tflite")

    missing = runner.invoke(app, ["predict", str(exported["clips"][0]), "--recipe", recipe, "--runtime", "onnx", "--export-dir", str(tmp_path)])
    assert missing.exit_code == 2 and "manifest.json does not exist" in missing.output and "ens export --format onnx" in missing.output

    untrained = tmp_path / "untrained.toml"
    untrained.write_text(f'extends = "{tiny_trained["recipe"]}"\nname = "untrained"\n[paths]\nruns_dir = "{tmp_path / "runs"}"\n')
    result = runner.invoke(app, ["export", "--recipe", str(untrained), "--format", "onnx"])
    assert result.exit_code == 2 and "ens train" in result.output

    manifest = engines.export_dir(r, "onnx") / engines.MANIFEST
    member = json.loads(manifest.read_text())["members"][0]
    elsewhere = tmp_path / "stale"
    elsewhere.mkdir()
    stale = json.loads(manifest.read_text())
    stale["members"][0]["runs"][1]["sha1"] = "0" * 40
    (elsewhere / engines.MANIFEST).write_text(json.dumps(stale))
    with pytest.raises(engines.ExportError, match=f"{member['file']} was exported from other weights than .*fold1.*re-run `ens export --format onnx`"):
        predict.load_ensemble(r, engine="onnx", export_dir=elsewhere)
    stale["members"][0]["runs"] = stale["members"][0]["runs"][:1]  # a graph of fewer folds than the ensemble now has
    (elsewhere / engines.MANIFEST).write_text(json.dumps(stale))
    with pytest.raises(engines.ExportError, match=f"{member['file']} holds the runs .*, the ensemble uses .*re-run `ens export --format onnx`"):
        predict.load_ensemble(r, engine="onnx", export_dir=elsewhere)
    with pytest.raises(engines.ExportError, match="of format 'onnx', not 'openvino'"):
        predict.load_ensemble(r, engine="openvino", export_dir=engines.export_dir(r, "onnx"))

    real = engines.importlib.import_module

    def without_openvino(name, *args):
        if name == "openvino":
            raise ImportError("No module named 'openvino'")
        return real(name, *args)

    monkeypatch.setattr(engines.importlib, "import_module", without_openvino)
    with pytest.raises(engines.ExportError, match=r"needs the openvino package.*pip install -e '\.\[deploy\]'"):
        export.export(r, "openvino", tmp_path / "nothing")


# ---- a multilabel member of two seeds with time-shift TTA, exported ----

ML_SHIFTS = [-0.1, 0.1]


@pytest.fixture(scope="module")
def multilabel_export(strong_source, tiny_recipe_text, tmp_path_factory):
    """The multilabel task (emotion plus ``strong``, one sigmoid per class) on the 48 real clips: one
    member of two seeds (test_resnet, test_resnet@7) x 2 folds x 1 epoch with time-shift TTA, blended
    by the mean and exported as ONNX and OpenVINO through the CLI."""
    root = tmp_path_factory.mktemp("export_multilabel")
    comp = root / "comp"
    text = tiny_recipe_text(comp, root / "runs", root / "subs").replace("[competition]\n", '[competition]\ntask = "multilabel"\n')
    text = text.replace('"surprised"]', '"surprised", "strong"]').replace('["test_efficientnet", "test_resnet"]', '["test_resnet", "test_resnet@7"]')
    recipe_path = root / "ml.toml"
    recipe_path.write_text(text + f'metric = "lwlrap"\ntta_shifts = {ML_SHIFTS}\n[blend]\nmethod = "mean"\n')
    cli_ok(["data", "ravdess", "--source", str(strong_source), "--out", str(comp), "--test-actors", "5,6", "--folds", "2", "--labels", "emotion_intensity"])
    cli_ok(["train", "--recipe", str(recipe_path), "--quiet"])
    cli_ok(["blend", "--recipe", str(recipe_path)])
    for fmt in engines.FORMATS:
        cli_ok(["export", "--recipe", str(recipe_path), "--format", fmt])
    r = recipe_mod.load(recipe_path)
    c = competition.load(r.competition)
    return {"recipe": r, "clips": c.audio_paths(c.test)}


def _sigmoids_by_hand(r, images: np.ndarray, shifts) -> np.ndarray:
    """The mean over both seeds and both folds of each saved model's sigmoids (torch eager, CPU), each
    the mean over the image and the image rolled along time by round(shift * frames) for each shift."""
    import torch
    from safetensors.torch import load_file

    from ensemble.members import models

    x = torch.from_numpy(images.astype(np.float32))
    rolls = [0, *(round(s * images.shape[-1]) for s in shifts)]
    out = []
    for entry in ("test_resnet", "test_resnet@7"):
        for fold in range(2):
            model = models.build(r, entry, len(r.competition.classes))
            model.load_state_dict(load_file(run_store.run_dir(r, entry, fold) / run_store.MODEL))
            with torch.no_grad():
                out.append(np.mean([torch.sigmoid(model.eval()(torch.roll(x, k, dims=-1))).numpy() for k in rolls], axis=0))
    return np.mean(out, axis=0)


@pytest.mark.parametrize("engine", engines.FORMATS)
def test_an_exported_multilabel_member_gives_the_seeds_and_folds_mean_sigmoids_with_tta(multilabel_export, engine):
    import torch

    from ensemble.inputs import audio, features

    r = multilabel_export["recipe"]
    ensemble = predict.load_ensemble(r, engine=engine)
    assert [m.name for m in ensemble.members] == ["test_resnet"] and ensemble.members[0].entries == ("test_resnet", "test_resnet@7")
    clips = [audio.load_trimmed(p, r.features.sample_rate, r.features.trim_db)[0] for p in multilabel_export["clips"][:8]]
    images = features.model_inputs(clips, r.features)
    (graph,) = ensemble.models["test_resnet"]
    assert isinstance(graph, engines.ExportedModel)
    # the graph alone: the four models' sigmoids averaged, no TTA
    plain = _sigmoids_by_hand(r, images, ())
    np.testing.assert_allclose(graph(torch.from_numpy(images.astype(np.float32))).numpy(), plain, atol=1e-4)
    assert np.abs(plain.sum(axis=1) - 1).max() > 0.1  # sigmoids: a softmax would sum to 1
    # through ens predict's path with the recipe's time-shift TTA
    with_tta = _sigmoids_by_hand(r, images, ML_SHIFTS)
    np.testing.assert_allclose(ensemble.predict_waveforms(clips), with_tta, atol=1e-4)
    assert np.abs(with_tta - plain).max() > 1e-4  # the shifts change it
