"""The fine-tune kind (ensemble.members.finetune): a tiny randomly initialised Whisper encoder written into a
weights folder here (no such weights exist offline but Whisper base, too slow for a test) is named
in ``backbones`` and fine-tuned on real RAVDESS clips through the real CLI (ens train, blend,
predict, export, predict --runtime), resumed bit-identically after SIGKILL; and a tiny wav2vec2's
code path (masking, pooling, layer-wise groups) checked against transformers."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import transformers
from safetensors.numpy import load_file
from typer.testing import CliRunner

from ensemble import predict
from ensemble.cli import app
from ensemble.core import recipe as recipe_mod
from ensemble.deploy import engines
from ensemble.inputs import audio
from ensemble.members import finetune, kinds, pseudo
from ensemble.store import runs
from ensemble.store import split as split_mod

from .conftest import cli_ok, killed_after_first_epoch, one_backbone_recipe, ravdess_clip, save_tiny_whisper

EPOCHS = 3
FINETUNE = f"""epochs = {EPOCHS}
lr = 3e-3
layer_decay = 0.7
seed = 5
[augment]
copies = 1
freq_mask = 8
time_mask = 20
[finetune]
train_layers = 1
accumulate = 2
seconds = 4.0
"""
"""Every random part of this kind is on: waveform copies, SpecAugment on the log-mel, the seeded head;
gradient accumulation and layer-wise decay; clips up to 4 s (a RAVDESS clip, trimmed, fits: ens predict sees it whole)."""


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A weights folder holding ``whisper_tiny``: a randomly initialised Whisper (2 encoder layers, width 16) and its feature extractor."""
    root = tmp_path_factory.mktemp("weights")
    save_tiny_whisper(root / "whisper_tiny")
    return root


def _recipe_text(text: str, weights) -> str:
    text = text.replace('backbones = ["test_efficientnet", "test_resnet"]', 'backbones = ["whisper_tiny"]').replace("[train]\nepochs = 1\n", "[train]\n")
    text = text.replace("[paths]\n", f'[paths]\nweights_dir = "{weights}"\n')
    return text.replace("pretrained = false\n", "pretrained = false\n" + FINETUNE)


@pytest.fixture(scope="module")
def trained(small_source, tiny_recipe_text, weights, tmp_path_factory):
    """The tiny recipe with ``backbones = ["whisper_tiny"]`` on the 48 real clips (actors 5 and 6 the
    hidden test, 2 folds): ens train, ens blend, ens predict of the test clips, ens export to ONNX and OpenVINO."""
    root = tmp_path_factory.mktemp("finetune")
    path, comp = one_backbone_recipe(root, small_source, lambda *a: _recipe_text(tiny_recipe_text(*a), weights), "")
    out = {"path": path, "comp": comp, "root": root, "train": cli_ok(["train", "--recipe", str(path)])}
    out["blend"] = cli_ok(["blend", "--recipe", str(path), "--method", "mean"])
    test = pd.read_csv(comp / "test.csv", dtype=str)
    out["clips"] = [comp / p for p in test["path"]]
    out["predicted"] = root / "predicted.csv"
    cli_ok(["predict", *map(str, out["clips"]), "--recipe", str(path), "--out", str(out["predicted"])])
    out["export"] = {fmt: cli_ok(["export", "--recipe", str(path), "--format", fmt]) for fmt in engines.FORMATS}
    out["r"] = recipe_mod.load(path)
    return out


def test_an_encoder_folder_is_a_finetuned_entry_and_timm_names_stay_image_members(trained, weights):
    r = trained["r"]
    assert kinds.of(r, "whisper_tiny").name == "finetune" and kinds.of(r, "whisper_tiny@3").name == "finetune"
    assert kinds.of(r, "test_resnet").name == "image"
    (weights / "timm_like").mkdir(exist_ok=True)  # a timm local-dir folder: config.json without model_type
    (weights / "timm_like" / "config.json").write_text(json.dumps({"architecture": "resnet18", "num_classes": 8}))
    assert kinds.of(r, "timm_like").name == "image"


def test_ens_train_plans_the_cost_per_epoch_and_writes_each_folds_tables(trained):
    text, r = trained["train"], trained["r"]
    assert "fine-tune whisper_tiny (2 folds x 3 epochs)" in text and "s per epoch per fold:" in text
    assert "whisper_tiny fold 1:" in text and "whisper fine-tuned" in text
    fold_of = pd.read_csv(trained["comp"] / "folds.csv")
    for k in range(2):
        run = runs.run_dir(r, "whisper_tiny", k)
        log = pd.read_csv(run / runs.LOG)
        assert len(log) == EPOCHS and not (run / runs.CHECKPOINT).exists()
        metrics = json.loads((run / runs.METRICS).read_text())
        assert metrics["epoch"] == int(log.loc[log["selected"], "epoch"].max()) and metrics["encoder"] == "whisper"
        oof = pd.read_csv(run / runs.OOF)
        assert sorted(oof["id"]) == sorted(fold_of.loc[fold_of["fold"] == k, "id"])
        np.testing.assert_allclose(oof[r.competition.classes].sum(axis=1), 1.0, atol=1e-6)
        spec = json.loads((run / finetune.ENCODER).read_text())
        assert spec["samples"] == 64000 and spec["config"]["encoder_layers"] == 2  # 4 s at 16 kHz, whole 20 ms tokens
        weights_ = load_file(run / runs.MODEL)
        config = json.loads((run / runs.CONFIG).read_text())
        assert config["finetune"]["train_layers"] == 1 and "finetune" not in config["recipe"]
    # frozen below the top layer: the first layer and the stem are the pretrained ones, the top layer moved
    pretrained = transformers.WhisperForAudioClassification.from_pretrained(trained["r"].paths.weights_dir + "/whisper_tiny").encoder.state_dict()
    for name in ("layers.0.fc1.weight", "conv1.weight"):
        np.testing.assert_array_equal(weights_[f"encoder.{name}"], pretrained[name].numpy())
    assert not np.array_equal(weights_["encoder.layers.1.fc1.weight"], pretrained["layers.1.fc1.weight"].numpy())
    assert (pd.read_csv(trained["root"] / "runs" / "tiny" / "blend" / "leaderboard.csv")["model"] == "whisper_tiny").any()


def test_ens_predict_gives_the_members_test_table(trained):
    """The blend of one member is that member; a test clip, trimmed, fits the 4 s the encoder sees, so
    ens predict's probability of it is the mean of the fold models' rows in their test.csv."""
    r = trained["r"]
    predicted = pd.read_csv(trained["predicted"])
    tables = [pd.read_csv(runs.run_dir(r, "whisper_tiny", k) / runs.TEST) for k in range(2)]
    expected = np.mean([t[r.competition.classes].to_numpy() for t in tables], axis=0)
    np.testing.assert_allclose(predicted[r.competition.classes].to_numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("engine", engines.FORMATS)
def test_the_exported_graph_gives_torch_probabilities_on_real_clips(trained, engine):
    r = trained["r"]
    manifest = json.loads((engines.export_dir(r, engine) / engines.MANIFEST).read_text())
    (member,) = manifest["members"]
    assert member["kind"] == "finetune" and [i["name"] for i in member["inputs"]] == list(finetune.INPUTS)
    assert [(run["entry"], run["fold"]) for run in member["runs"]] == [("whisper_tiny", 0), ("whisper_tiny", 1)]
    eager = predict.load_ensemble(r)
    graph = predict.load_ensemble(r, engine=engine)
    rate = eager.sample_rate
    clips = [audio.load_trimmed(p, rate, r.features.trim_db)[0] for p in trained["clips"]]
    clips.append(np.concatenate(clips[:2]))  # longer than the 4 s: centre-cropped alike
    diff = np.abs(graph.predict_waveforms(clips) - eager.predict_waveforms(clips)).max()
    assert diff < 1e-4, f"{engine}: max abs difference {diff} from torch"


def _outputs(run):
    log = pd.read_csv(run / runs.LOG).drop(columns=["train_seconds", "seconds"])
    return pd.read_csv(run / runs.OOF), pd.read_csv(run / runs.TEST), log, load_file(run / runs.MODEL)


def test_sigkill_mid_training_then_resume_matches_the_uninterrupted_run(trained):
    r = trained["r"]
    killed = trained["root"] / "killed.toml"
    killed.write_text(trained["path"].read_text().replace(str(trained["root"] / "runs"), str(trained["root"] / "killed_runs")))
    run = runs.run_dir(recipe_mod.load(killed), "whisper_tiny", 0)
    args = ["train", "--recipe", str(killed), "--backbone", "whisper_tiny", "--fold", "0", "--quiet"]
    killed_after_first_epoch(args, run, timeout=120)
    assert 1 <= len(pd.read_csv(run / runs.LOG)) < EPOCHS
    cli_ok([*args, "--resume"])
    assert not (run / runs.CHECKPOINT).exists()
    reference = _outputs(runs.run_dir(r, "whisper_tiny", 0))
    resumed = _outputs(run)
    for a, b in zip(resumed[:3], reference[:3]):
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert resumed[3].keys() == reference[3].keys() and all(np.array_equal(resumed[3][k], reference[3][k]) for k in reference[3])


def test_recipe_checks_name_the_finetune_keys():
    with pytest.raises(recipe_mod.RecipeError, match=r"\[finetune\] needs .* pooling in \('attention', 'mean'\).*pooling = 'max'"):
        recipe_mod.from_dict({"finetune": {"pooling": "max"}})
    with pytest.raises(recipe_mod.RecipeError, match="accumulate = 0"):
        recipe_mod.from_dict({"finetune": {"accumulate": 0}})


def test_a_wav2vec2_encoder_pools_its_clip_frames_and_groups_its_layers(tmp_path):
    """The waveform-encoder path: the hidden states are transformers' own (eval mode), padding frames do not
    change the pooled clip, and the stem, each layer and the head are the layer-decay groups."""
    torch.manual_seed(0)
    small = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 24}
    stem = {"conv_dim": (8,) * 7, "num_conv_pos_embeddings": 8, "num_conv_pos_embedding_groups": 2, "feat_extract_norm": "layer"}
    transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(**small, **stem)).save_pretrained(tmp_path / "w2v")
    transformers.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(tmp_path / "w2v")
    r = recipe_mod.from_dict({"backbones": ["w2v"], "paths": {"weights_dir": str(tmp_path)}, "finetune": {"pooling": "mean", "seconds": 3.0}})
    assert kinds.of(r, "w2v").name == "finetune"
    net, spec = finetune.pretrained(r, "w2v", 8)
    net.eval()
    assert not spec.whisper and spec.samples == 48000
    y = audio.load_trimmed(ravdess_clip(1, 5), 16000, 40.0)[0][:20000]
    x, lengths = finetune.inputs(spec, spec.feature_extractor(), [y])
    with torch.no_grad():
        pooled = net(x, lengths)
        model = transformers.Wav2Vec2Model.from_pretrained(tmp_path / "w2v").eval()
        alone = transformers.Wav2Vec2FeatureExtractor.from_pretrained(tmp_path / "w2v")(y, sampling_rate=16000, return_tensors="pt")
        hidden = model(**alone, output_hidden_states=True).hidden_states
    weights = torch.softmax(net.layer_weights, 0)
    expected = net.head((weights[:, None, None] * torch.stack([h[0] for h in hidden])).sum(0).mean(0))
    np.testing.assert_allclose(pooled[0].numpy(), expected.detach().numpy(), atol=1e-4)
    from timm.optim import create_optimizer_v2

    groups = create_optimizer_v2(net, "adamw", lr=1.0, weight_decay=0.0, layer_decay=0.5).param_groups
    assert sorted({g["lr_scale"] for g in groups}) == [0.125, 0.25, 0.5, 1.0]  # the stem (its convolutions frozen), two layers, the head
    assert not any(p.requires_grad for p in net.encoder.feature_extractor.parameters())


def test_seeds_and_a_pseudo_round_train_as_members_of_their_own(trained, weights):
    """``whisper_tiny@7`` beside ``whisper_tiny`` and one ``[pseudo]`` round of both: the seed is its own
    run (its own head and order), the students train on their fold's labels (every test clip at a 0.12
    threshold: eight classes put the top probability at 1/8 or more) and the blend holds teacher and student."""
    root = trained["root"]
    text = trained["path"].read_text().replace('backbones = ["whisper_tiny"]', 'backbones = ["whisper_tiny", "whisper_tiny@7"]')
    recipe = root / "rounds.toml"
    recipe.write_text(text.replace(str(root / "runs"), str(root / "rounds_runs")) + "[pseudo]\nthreshold = 0.12\n")
    output = cli_ok(["train", "--recipe", str(recipe), "--epochs", "1", "--pseudo-label"])
    for entry in ("whisper_tiny", "whisper_tiny@7", "whisper_tiny+pl1", "whisper_tiny@7+pl1"):
        assert f"{entry} fold 1:" in output
    assert "round 1 fold 0: 16 test clips pseudo-labelled" in output
    r = recipe_mod.load(recipe, {"pseudo": {"rounds": 1}, "train": {"epochs": 1}})
    seeds = [load_file(runs.run_dir(r, entry, 0) / runs.MODEL) for entry in ("whisper_tiny", "whisper_tiny@7")]
    assert not np.array_equal(seeds[0]["head.weight"], seeds[1]["head.weight"])
    assert json.loads((runs.run_dir(r, "whisper_tiny@7", 0) / runs.CONFIG).read_text())["recipe"]["train"]["seed"] == 7
    for k in range(2):
        labels = pd.read_csv(pseudo.labels_path(r, 1, k))
        config = json.loads((runs.run_dir(r, "whisper_tiny@7+pl1", k) / runs.CONFIG).read_text())
        assert len(labels) == 16 and config["pseudo"]["n"] == 16 and config["pseudo"]["round"] == 1
        assert json.loads((runs.run_dir(r, "whisper_tiny@7+pl1", k) / runs.METRICS).read_text())["pseudo_labelled"] == 16
    # a student's run trains on its fold's training clips and the labelled test clips, with their soft targets
    clips = finetune.load_clips(r, split_mod.load_split(r), 16000, 64000, progress=False)
    made = pseudo.fold_labels(r, clips, 1, 0)
    run = finetune._setup(r.for_backbone("whisper_tiny+pl1"), clips, "whisper_tiny+pl1", 0, made)
    n_train = len(clips.train)
    assert sorted(run.pool[run.pool >= n_train] - n_train) == sorted(made.rows) and len(made.rows) == 16
    np.testing.assert_allclose(run.y[n_train:].numpy(), made.targets, atol=1e-6)
    np.testing.assert_array_equal(run.y[:n_train].argmax(1).numpy(), clips.y)
    cli_ok(["blend", "--recipe", str(recipe), "--method", "mean", "--pseudo-label"])
    board = pd.read_csv(root / "rounds_runs" / "tiny" / "blend" / "leaderboard.csv")
    assert {"whisper_tiny", "whisper_tiny+pl1"} <= set(board["model"])


def test_unreadable_clips_stop_the_run_or_are_skipped_when_no_other_kind_read_them(trained, tmp_path):
    """A fine-tune-only recipe whose first training clip is a text file and whose first test clip does not
    exist: by default both are named and nothing trains; with ``--on-error skip`` the training row is left
    out of the fold's tables, the test clip is predicted as the training prior, ``skipped.csv`` lists both."""
    comp = tmp_path / "comp"
    shutil.copytree(trained["comp"], comp, ignore=shutil.ignore_patterns(".ens_cache"))
    (tmp_path / "notes.wav").write_text("recorded on the old phone, see notes")
    bad = {}
    for table, path in (("train", tmp_path / "notes.wav"), ("test", tmp_path / "gone.wav")):
        frame = pd.read_csv(comp / f"{table}.csv", dtype=str, keep_default_na=False)
        frame.loc[0, "path"], bad[table] = str(path), frame.loc[0, "id"]
        frame.to_csv(comp / f"{table}.csv", index=False)
    recipe = tmp_path / "broken.toml"
    recipe.write_text(trained["path"].read_text().replace(str(trained["comp"]), str(comp)).replace(str(trained["root"] / "runs"), str(tmp_path / "runs")))
    args = ["train", "--recipe", str(recipe), "--fold", "0", "--epochs", "1", "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "2 audio file(s) cannot be used" in result.output and "--on-error skip" in result.output
    assert "notes.wav" in result.output and "gone.wav: audio file does not exist" in result.output
    assert not (tmp_path / "runs" / "tiny" / "whisper_tiny").exists()
    output = cli_ok([*args, "--on-error", "skip"])
    assert "skipped 1 training and 1 test clip(s)" in output
    skipped = pd.read_csv(tmp_path / "runs" / "tiny" / runs.SKIPPED, dtype=str)
    assert skipped[["table", "id"]].values.tolist() == [["train", bad["train"]], ["test", bad["test"]]]
    r = recipe_mod.load(recipe)
    split = split_mod.load_split(r)
    run = runs.run_dir(r, "whisper_tiny", 0)
    oof = pd.read_csv(run / runs.OOF, dtype={"id": str})
    assert bad["train"] not in set(oof["id"]) and len(oof) == (split.folds["fold"] == 0).sum()
    test = pd.read_csv(run / runs.TEST, dtype={"id": str}).set_index("id")
    classes = r.competition.classes
    np.testing.assert_allclose(test.loc[bad["test"], classes].to_numpy(dtype=float), split.prior)
    assert not np.allclose(test.drop(index=bad["test"])[classes].to_numpy(dtype=float), split.prior)
    # the training clip repaired: the next run reads it again (the earlier list does not keep it out) and lists the test clip alone
    shutil.copy(ravdess_clip(1, 5), tmp_path / "notes.wav")
    cli_ok([*args, "--on-error", "skip", "--force"])
    skipped = pd.read_csv(tmp_path / "runs" / "tiny" / runs.SKIPPED, dtype=str)
    assert skipped[["table", "id"]].values.tolist() == [["test", bad["test"]]]
    again = split_mod.load_split(r)
    assert bad["train"] in set(again.competition.train["id"]) and len(again.competition.train) == len(split.competition.train) + 1
    oof = pd.read_csv(run / runs.OOF, dtype={"id": str})
    assert sorted(oof["id"]) == sorted(again.folds.loc[again.folds["fold"] == 0, "id"])
