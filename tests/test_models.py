import pytest
import torch

from ensemble.cli import shown
from ensemble.members import models

from .conftest import ROOT

WEIGHTS = ROOT.parent / "shared" / "weights"


def test_local_imagenet_weights_load_with_a_new_head():
    model = models.create("tf_mobilenetv3_small_100", num_classes=8, weights=WEIGHTS)
    from safetensors.torch import load_file

    stem = load_file(WEIGHTS / "tf_mobilenetv3_small_100" / "model.safetensors")["conv_stem.weight"]
    assert torch.equal(model.conv_stem.weight.detach(), stem)  # ImageNet weights, not random ones
    assert model(torch.rand(2, 3, 128, 176)).shape == (2, 8)
    mean, std = models.normalization(model, 3)
    assert mean.flatten().tolist() == [0.5, 0.5, 0.5] and std.shape == (1, 3, 1, 1)


def test_pretrained_stem_adapts_to_other_channel_counts():
    model = models.create("tf_mobilenetv3_small_100", num_classes=4, in_chans=2, weights=WEIGHTS)
    assert model.conv_stem.weight.shape[1] == 2
    assert model(torch.rand(1, 2, 64, 64)).shape == (1, 4)
    mean, std = models.normalization(model, 2)
    assert mean.shape == (1, 2, 1, 1)


def test_unknown_backbone_suggests_names():
    with pytest.raises(models.BackboneError, match=r"unknown backbone 'efficientnet_b00'.*efficientnet_b0"):
        models.create("efficientnet_b00", num_classes=8)


def test_missing_weights_error_names_both_ways_and_no_pretrained(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.BackboneError) as err:
        models.create("test_resnet", num_classes=8, weights=tmp_path)
    message = str(err.value)  # the library names its parameters; the command line shows them as flags
    assert "weights_dir=DIR" in message and "ENS_WEIGHTS_DIR" in message and "hub" in message and "pretrained=False" in message
    text = shown(err.value)
    assert "--weights-dir DIR" in text and "--no-pretrained" in text and "weights_dir=" not in text


def test_weights_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv(models.WEIGHTS_ENV, str(tmp_path / "env"))
    assert models.weights_dir(tmp_path / "cli") == tmp_path / "cli"
    assert models.weights_dir(None) == tmp_path / "env"
