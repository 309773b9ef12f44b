"""The channel registry: every channel has a torch and a reference computation and figure facts, and
the modules the recipe imports for channels and waveform augmentation load without torch."""

import subprocess
import sys

import numpy as np

from ensemble.core import channels, recipe
from ensemble.inputs import features, reference

from .conftest import ROOT


def test_every_channel_has_a_torch_and_a_reference_computation():
    assert set(features.Renderer.CHANNELS) == set(reference.CHANNELS) == set(channels.CHANNELS) == set(recipe.CHANNELS)
    assert recipe.CHANNELS == channels.NAMES == ("mel", "chroma", "stft", "mfcc")
    for name, channel in channels.CHANNELS.items():
        assert channel.name == name
        assert channel.nearest == (name == "chroma") and channel.ticks == (channels.PITCH_CLASSES if name == "chroma" else ())


def test_axis_facts_follow_the_feature_settings():
    config = recipe.FeatureConfig(sample_rate=22050, n_mels=64, n_mfcc=20, top_db=60.0)
    extents = {name: channel.extent(config) for name, channel in channels.CHANNELS.items()}
    assert extents == {"mel": (0.0, 64.0), "chroma": (-0.5, 11.5), "stft": (0.0, 11.025), "mfcc": (0.0, 20.0)}
    assert channels.CHANNELS["stft"].axis == "frequency (kHz)"
    rows = np.array([0.0, 0.5, 1.0])
    db, db_range = channels.CHANNELS["mel"].values(rows, config)
    np.testing.assert_array_equal(db, [-60.0, -30.0, 0.0])
    assert db_range == (-60.0, 0.0)
    same, unit_range = channels.CHANNELS["chroma"].values(rows, config)
    assert same is rows and unit_range == (0.0, 1.0)


def test_the_channel_and_waveform_modules_the_recipe_imports_load_without_torch():
    code = "import sys, ensemble.core.channels, ensemble.core.waveform_augment; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
