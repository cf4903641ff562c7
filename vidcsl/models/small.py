"""Small encoders for CPU demos on 32x32 images and clips (the embedded digits data).

A ResNet takes minutes per epoch on two CPU cores; these take seconds while still being real conv nets
with BatchNorm (so dual BN and attacks behave as on the big models). They expect normalised input and
return pooled features; the registry adds the pixel normalisation.
"""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Four 3x3 conv-BN-ReLU layers (strides 1, 2, 2, 2), global average pool: ~120k params at the default."""

    def __init__(self, channels: tuple[int, ...] = (32, 48, 64, 128)):
        super().__init__()
        layers, c_in = [], 3
        for i, c in enumerate(channels):
            layers += [nn.Conv2d(c_in, c, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                       nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)


class SmallCNN3D(nn.Module):
    """Four 3x3x3 conv-BN-ReLU layers for short 32x32 clips; time is downsampled only in the last two."""

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__()
        strides = [(1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2)]
        layers, c_in = [], 3
        for i, c in enumerate(channels):
            stride = strides[min(i, len(strides) - 1)]
            layers += [nn.Conv3d(c_in, c, 3, stride=stride, padding=1, bias=False),
                       nn.BatchNorm3d(c), nn.ReLU(inplace=True)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.feature_dim = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)
