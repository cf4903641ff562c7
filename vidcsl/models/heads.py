"""Heads on top of encoder features: the contrastive projection MLP and the linear probe."""

from __future__ import annotations

import torch
from torch import nn


class ProjectionHead(nn.Module):
    """SimCLR / MoCo v2 projection MLP: (num_layers - 1) x [Linear, BN, ReLU] then Linear to ``out_dim``.

    The contrastive loss is applied to its output, not to the encoder features: SimCLR showed the layer
    before the projection keeps more information for downstream (probe) tasks.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128, num_layers: int = 2,
                 batch_norm: bool = True):
        super().__init__()
        if min(in_dim, hidden_dim, out_dim) < 1 or num_layers < 1:
            raise ValueError(f"ProjectionHead needs positive dims and num_layers >= 1, got in_dim={in_dim}, "
                             f"hidden_dim={hidden_dim}, out_dim={out_dim}, num_layers={num_layers}")
        layers, d = [], in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(d, hidden_dim, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.ReLU(inplace=True))
            d = hidden_dim
        layers.append(nn.Linear(d, out_dim))
        self.net = nn.Sequential(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LinearClassifier(nn.Module):
    """A linear probe: one affine map from (frozen) features to class logits."""

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        if in_dim < 1 or num_classes < 2:
            raise ValueError(f"LinearClassifier needs in_dim >= 1 and num_classes >= 2, got {in_dim}, {num_classes}")
        self.fc = nn.Linear(in_dim, num_classes)
        self.in_dim, self.num_classes = in_dim, num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)
