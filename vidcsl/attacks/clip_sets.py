"""A classifier of clip sets: the K clips of one video, (B,K,C,T,H,W) -> (B, classes).

Multi-clip video accuracy averages the logits of K clips per video; attacking that prediction means
attacking all K clips at once, each within eps (the attacks' threat model for clip sets).
"""

from __future__ import annotations

import torch
from torch import nn


class ClipAverage(nn.Module):
    """``model`` on every clip of a clip set, logits averaged over the K clips of each video."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        if clips.dim() != 6:
            raise ValueError(f"ClipAverage expects clip sets (B,K,C,T,H,W), got shape {tuple(clips.shape)}")
        b, k = clips.shape[:2]
        return self.model(clips.flatten(0, 1)).view(b, k, -1).mean(1)
