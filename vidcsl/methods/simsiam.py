"""SimSiam (Chen & He, CVPR 2021): a predictor and a stop-gradient, no negatives, no momentum network.

    loss = 1/2 * D(p1, sg(z2)) + 1/2 * D(p2, sg(z1)),   D(p, z) = -cos(p, z)  (mean over the batch)

``z = head(encoder(x))`` per view, ``p = predictor(z)``; ``sg`` stops the gradient, which is what
keeps SimSiam from collapsing. The predictor is a bottleneck MLP (the paper's 2048 -> 512 -> 2048):
its hidden width defaults to a quarter of ``model.proj_out_dim``. The loss lies in [-1, 1].

Not reproduced: the paper's 3-layer projector with BN on its output (the projector is ``cfg.model``'s,
as for every method here) and its option of a fixed predictor learning rate. Settings:
:class:`SimSiamSettings`; see docs/methods.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from vidcsl.methods.base import StepContext, register_method
from vidcsl.methods.negative_free import NegativeFreeMethod, full_precision, predictor_head
from vidcsl.schema import bounded

Tensor = torch.Tensor


def negative_cosine(p: Tensor, z: Tensor) -> Tensor:
    """SimSiam's D: mean over rows of -cos(p_i, z_i), with the gradient stopped at ``z``."""
    with full_precision(p):
        return -F.cosine_similarity(p.float(), z.detach().float(), dim=1).mean()


@dataclass
class SimSiamSettings:
    """``predictor_hidden_dim``: the predictor's bottleneck width; null = ``model.proj_out_dim // 4``."""

    predictor_hidden_dim: int | None = bounded(None, ge=1)


@register_method("simsiam")
class SimSiam(NegativeFreeMethod):
    settings_class = SimSiamSettings

    def __init__(self, cfg: Any, encoder: torch.nn.Module, num_classes: int):
        super().__init__(cfg, encoder, num_classes)
        hidden = self.settings.predictor_hidden_dim or max(1, cfg.model.proj_out_dim // 4)
        self.predictor = predictor_head(cfg, hidden)

    def objective(self, z1: Tensor, z2: Tensor, x1: Tensor, x2: Tensor,
                  ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        loss = 0.5 * negative_cosine(self.predictor(z1), z2) + 0.5 * negative_cosine(self.predictor(z2), z1)
        return loss, {}
