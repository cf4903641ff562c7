"""ResNet-18/50 for 32x32 images: the standard CIFAR variant (3x3 stride-1 stem, no max-pool).

The ImageNet stem (7x7 stride 2 + max-pool) would shrink a 32 px image to 8 px before the first block;
the CIFAR stem keeps the resolution, which is what the robustness literature on CIFAR uses.
The module expects *normalised* input and returns pooled features; ``vidcsl.models.registry`` wraps it
with the pixel normalisation.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck


class ResNetCIFAR(nn.Module):
    """ResNet trunk with a CIFAR stem; ``forward`` returns (B, feature_dim) globally pooled features."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: list[int], width: int = 64):
        super().__init__()
        self.in_planes = width
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        self.layer1 = self._make_layer(block, width, layers[0], stride=1)
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = 8 * width * block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.in_planes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.in_planes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.in_planes, planes, stride, downsample)]
        self.in_planes = planes * block.expansion
        layers += [block(self.in_planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.pool(x), 1)


def resnet18_cifar(width: int = 64) -> ResNetCIFAR:
    return ResNetCIFAR(BasicBlock, [2, 2, 2, 2], width=width)


def resnet50_cifar(width: int = 64) -> ResNetCIFAR:
    return ResNetCIFAR(Bottleneck, [3, 4, 6, 3], width=width)
