"""Drawing feature images: the one place that draws a rendered image's channels, for ``ens predict
--save-image`` (:func:`clip_figure`) and the report's "Feature images" (:func:`clips_figure`).

Every channel is drawn by :func:`draw_channel`: time in seconds on x, the channel's own frequency
axis on y and colours over the channel's full range in its own unit, as :mod:`ensemble.core.channels`
describes it. Figures are :class:`matplotlib.figure.Figure` on the Agg canvas (no pyplot state,
no display).
"""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from ..core.channels import CHANNELS
from ..core.recipe import FeatureConfig

FONT = 8  # points: axis labels and ticks of a panel


def draw_channel(ax: Axes, name: str, rows: np.ndarray, config: FeatureConfig) -> AxesImage:
    """Draw channel ``name``'s ``rows`` ``(height, frames)``, pixel values in [0, 1] of an image rendered
    with ``config``, on ``ax``.

    x: time in seconds, frame ``k`` centred at ``k * hop_length / sample_rate`` (the centred STFT's
    frame times). y: :attr:`Channel.extent` labelled :attr:`Channel.axis`, with :attr:`Channel.ticks`
    at the row classes' centres (chroma's pitch classes). Colours (magma): the values in the
    channel's unit over its full range (:meth:`Channel.values`: dB under the clip peak for a log
    channel; a pretrained frontend's log-mel as it is), a linear map of the pixel values the backbones see.

    Returns:
        the image, for a colour bar labelled with the channel's :meth:`Channel.unit`.
    """
    channel = CHANNELS[name]
    values, (vmin, vmax) = channel.values(rows, config)
    step = config.hop_length / config.sample_rate
    extent = (-step / 2, (rows.shape[-1] - 0.5) * step, *channel.extent(config))
    shown = ax.imshow(values, origin="lower", aspect="auto", extent=extent, cmap="magma", vmin=vmin, vmax=vmax, interpolation="nearest")
    if channel.ticks:
        ax.set_yticks(np.arange(len(channel.ticks)), channel.ticks)
    ax.set_ylabel(channel.axis, fontsize=FONT, labelpad=1)
    ax.tick_params(labelsize=FONT - 1)
    return shown


def clip_figure(image: np.ndarray, config: FeatureConfig, title: str) -> Figure:
    """One clip's image: a panel per channel, one above the other on a shared time axis, each with a
    colour bar in the channel's unit (:func:`draw_channel`).

    Args:
        image: ``(channels, height, frames)`` in [0, 1], channels as ``config.channels``.
        title: the figure's title.
    """
    seconds = image.shape[-1] * config.hop_length / config.sample_rate
    fig = Figure(figsize=(max(6.0, min(20.0, 2.0 * seconds)), 2.2 * len(config.channels) + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(config.channels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, name, rows in zip(axes, config.channels, image):
        fig.colorbar(draw_channel(ax, name, rows, config), ax=ax, label=CHANNELS[name].unit(config))
        ax.set_title(CHANNELS[name].title, loc="left", fontsize=9)
    axes[-1].set_xlabel("time (s)", fontsize=FONT)
    fig.suptitle(title, fontsize=10)
    return fig


def clips_figure(title: str, clips: list[tuple[str, np.ndarray]], config: FeatureConfig) -> Figure:
    """One row of panels: every channel of each clip, clip after clip (:func:`draw_channel`, no colour bars).

    Args:
        title: the figure's title (the report: the class name).
        clips: ``(caption, image)`` pairs; ``image`` ``(channels, height, frames)`` in [0, 1],
            channels as ``config.channels``.
    """
    channels = config.channels
    fig = Figure(figsize=(13, 2.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(clips) * len(channels), squeeze=False)[0]
    for k, (caption, image) in enumerate(clips):
        for col, name in enumerate(channels):
            ax = axes[k * len(channels) + col]
            draw_channel(ax, name, image[col], config)
            ax.set_title(f"{caption}\n{CHANNELS[name].title}", fontsize=FONT)
            ax.set_xlabel("time (s)", fontsize=FONT)
    fig.suptitle(title, fontsize=11, fontweight="bold")
    return fig
