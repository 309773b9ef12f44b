"""The seed systems' small CNNs, registered as timm models so they train and blend like any backbone.

``timm.create_model("seed_mfcc_cnn", num_classes=8, in_chans=1)`` works once :mod:`ensemble.members.models`
(which imports this module) is imported. Both take ``(batch, in_chans, height, frames)`` images of
any size and are trained from scratch (``pretrained = false`` in their recipes).
"""

from __future__ import annotations

from timm.models import register_model
from torch import nn

#: inputs are [0, 1] images; 0.5 / 0.5 maps them to [-1, 1] for the from-scratch CNNs.
_CFG = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "num_classes": 0, "architecture": ""}
_FACTORY_ARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "drop_path_rate")


class SeedMfccCnn(nn.Module):
    """The first seed's MFCC CNN: two 3x3 convolutions of 32 channels with stride 2, batch norm and
    ReLU, a 2x2 max-pool, a fixed 4 x 5 average pool (32 x 4 x 5 = 640 features whatever the clip
    length), then 640 -> 128 -> ``num_classes`` with dropout ``drop_rate`` before the last layer."""

    def __init__(self, num_classes: int = 8, in_chans: int = 1, drop_rate: float = 0.0):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 32, 3, stride=2, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, stride=2, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d((4, 5)),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Linear(640, 128), nn.ReLU(inplace=True), nn.Dropout(drop_rate), nn.Linear(128, num_classes))

    def forward(self, x):
        """``(batch, in_chans, height, frames)`` -> ``(batch, num_classes)`` logits."""
        return self.head(self.features(x))


class SeedDeepCnn(nn.Module):
    """The second seed's deep CNN: five VGG-style blocks of 64-128-256-512-512 channels (two 3x3
    convolutions with batch norm and ReLU each, 2x2 max-pool, ``Dropout2d(block_drop)``), global
    average pooling, then dense 512 -> 256 -> 128 -> ``num_classes`` with dropout ``drop_rate``."""

    def __init__(self, num_classes: int = 8, in_chans: int = 2, drop_rate: float = 0.3, block_drop: float = 0.1):
        super().__init__()
        layers, width = [], in_chans
        for out in (64, 128, 256, 512, 512):
            layers += [
                nn.Conv2d(width, out, 3, padding=1),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
                nn.Conv2d(out, out, 3, padding=1),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
                nn.Dropout2d(block_drop),
            ]
            width = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(
            nn.Linear(512, 256),
            nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
            nn.Linear(256, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
            nn.Linear(128, num_classes),
        )

    def forward(self, x):
        """``(batch, in_chans, height, frames)`` -> ``(batch, num_classes)`` logits."""
        return self.head(self.features(x))


def _build(cls, name: str, pretrained: bool, **kwargs) -> nn.Module:
    if pretrained:
        raise ValueError(f"{name} has no pretrained weights; set [train].pretrained = false (pretrained=False).")
    for key in _FACTORY_ARGS:
        kwargs.pop(key, None)
    model = cls(**kwargs)
    model.pretrained_cfg = {**_CFG, "architecture": name, "num_classes": kwargs.get("num_classes", 8)}
    return model


@register_model
def seed_mfcc_cnn(pretrained: bool = False, **kwargs) -> SeedMfccCnn:
    """timm entry point of :class:`SeedMfccCnn`."""
    return _build(SeedMfccCnn, "seed_mfcc_cnn", pretrained, **kwargs)


@register_model
def seed_deep_cnn(pretrained: bool = False, **kwargs) -> SeedDeepCnn:
    """timm entry point of :class:`SeedDeepCnn`."""
    return _build(SeedDeepCnn, "seed_deep_cnn", pretrained, **kwargs)
