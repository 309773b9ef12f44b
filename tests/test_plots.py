"""Feature images drawn by ensemble.inputs.plots (ens predict --save-image, the report) on real RAVDESS clips:
every channel, time in seconds, each channel's frequency axis, colours in its own unit."""

import io

import numpy as np
import pytest

from ensemble.core import channels, frontends
from ensemble.core.recipe import FeatureConfig
from ensemble.inputs import audio, features, plots

from .conftest import ravdess_clip

CONFIG = FeatureConfig(channels=["mel", "chroma", "stft", "mfcc"], height=64, n_mfcc=20)


@pytest.fixture(scope="module")
def images():
    clips = [audio.load(ravdess_clip(actor, 5), CONFIG.sample_rate, CONFIG.duration, CONFIG.trim_db) for actor in (1, 2)]
    return features.model_inputs(clips, CONFIG)


def _check_panel(ax, name, rows):
    """``ax`` shows channel ``name``'s ``rows`` as :mod:`ensemble.core.channels` describes it."""
    channel = channels.CHANNELS[name]
    step = CONFIG.hop_length / CONFIG.sample_rate
    assert ax.get_ylabel() == channel.axis
    np.testing.assert_allclose(ax.get_ylim(), channel.extent(CONFIG))
    np.testing.assert_allclose(ax.get_xlim(), (-step / 2, (features.frames(CONFIG) - 0.5) * step))  # seconds: 3.5 s of frames
    [shown] = ax.get_images()
    expected = rows * CONFIG.top_db - CONFIG.top_db if channel.log else rows
    np.testing.assert_array_equal(np.asarray(shown.get_array()), expected)
    assert shown.get_clim() == ((-CONFIG.top_db, 0.0) if channel.log else (0.0, 1.0))
    if name == "chroma":
        assert [t.get_text() for t in ax.get_yticklabels()] == list(channels.PITCH_CLASSES)
        np.testing.assert_array_equal(ax.get_yticks(), np.arange(12))


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=50)
    return buffer.getvalue()


def test_a_clip_figure_has_a_panel_and_colour_bar_per_channel(images):
    fig = plots.clip_figure(images[0], CONFIG, "clip")
    panels, bars = fig.axes[:4], fig.axes[4:]
    assert len(bars) == 4 and [ax.get_title(loc="left") for ax in panels] == ["log-Mel", "chroma", "log-STFT magnitude", "MFCC"]
    for ax, name, rows in zip(panels, CONFIG.channels, images[0]):
        _check_panel(ax, name, rows)
    assert [bar.get_ylabel() for bar in bars] == [channels.CHANNELS[name].value for name in CONFIG.channels]
    assert panels[-1].get_xlabel() == "time (s)" and fig.get_suptitle() == "clip"
    assert _png(fig)[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_row_of_clips_shows_every_channel_of_each_clip(images):
    fig = plots.clips_figure("angry", [("clip-a", images[0]), ("clip-b", images[1])], CONFIG)
    assert len(fig.axes) == 2 * 4 and fig.get_suptitle() == "angry"
    for k, (caption, image) in enumerate([("clip-a", images[0]), ("clip-b", images[1])]):
        for col, name in enumerate(CONFIG.channels):
            ax = fig.axes[4 * k + col]
            assert ax.get_title() == f"{caption}\n{channels.CHANNELS[name].title}" and ax.get_xlabel() == "time (s)"
            _check_panel(ax, name, image[col])
    assert _png(fig)[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_pretrained_frontends_log_mel_is_drawn_on_its_own_scale_not_as_db():
    """EfficientAT's log-mel (values above its silence floor, not pixels in [0, 1]) is shown as it is,
    over its own extremes, and its colour bar says so instead of "dB re clip peak"."""
    config = FeatureConfig(**frontends.feature_settings("efficientat"))
    clip = audio.load(ravdess_clip(3, 5), config.sample_rate, config.duration, config.trim_db)
    image = features.model_inputs([clip], config)[0]
    assert image.max() > 1.0  # not a [0, 1] image: read as dB it would be wrong
    fig = plots.clip_figure(image, config, "mn04")
    panel, bar = fig.axes
    [shown] = panel.get_images()
    np.testing.assert_array_equal(np.asarray(shown.get_array()), image[0])
    assert shown.get_clim() == (float(image.min()), float(image.max()))
    assert bar.get_ylabel() == "efficientat log-mel above silence" and "dB" not in bar.get_ylabel()
