"""BYOL (Grill et al., NeurIPS 2020): an online network predicts a momentum (EMA) target network.

    loss = mean_i [2 - 2 cos(q(z1_i), z2'_i)] + mean_i [2 - 2 cos(q(z2_i), z1'_i)]

``z = head(encoder(x))`` (online), ``q`` the predictor, ``z'`` the target network's projection (no
gradient). After every optimiser step the target follows the online encoder and head by EMA with a
momentum rising from ``momentum`` (0.996) to 1 by a cosine over training
(:mod:`vidcsl.methods.momentum`, shared with MoCo). Each term is ||q/|q| - z'/|z'| ||^2, so the loss
lies in [0, 8]. Probes and evaluation use the online encoder, as in the paper.

The predictor's hidden width defaults to ``model.proj_hidden_dim`` (BYOL: 4096, the width of its
projector). Settings: :class:`BYOLSettings`; see docs/methods.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from vidcsl.methods.base import StepContext, register_method
from vidcsl.methods.momentum import SCHEDULES, MomentumSettings, ema_update, momentum_at, momentum_copy
from vidcsl.methods.negative_free import NegativeFreeMethod, full_precision, predictor_head
from vidcsl.schema import bounded, choices

Tensor = torch.Tensor


def byol_regression(q: Tensor, z_target: Tensor) -> Tensor:
    """BYOL's per-direction loss: mean over rows of 2 - 2 cos(q_i, z_target_i) (no gradient to the target)."""
    with full_precision(q):
        return (2.0 - 2.0 * F.cosine_similarity(q.float(), z_target.detach().float(), dim=1)).mean()


@dataclass
class BYOLSettings(MomentumSettings):
    """``momentum`` 0.996: the target's base EMA momentum; ``momentum_schedule`` cosine (to 1 at the end of
    the schedule, as in BYOL) or constant. ``predictor_hidden_dim``: null = ``model.proj_hidden_dim``."""

    momentum: float = bounded(0.996, ge=0, lt=1)
    momentum_schedule: str = choices(*SCHEDULES, default="cosine")
    predictor_hidden_dim: int | None = bounded(None, ge=1)


@register_method("byol")
class BYOL(NegativeFreeMethod):
    settings_class = BYOLSettings

    def __init__(self, cfg: Any, encoder: torch.nn.Module, num_classes: int):
        super().__init__(cfg, encoder, num_classes)
        self.predictor = predictor_head(cfg, self.settings.predictor_hidden_dim or cfg.model.proj_hidden_dim)
        self.target_encoder = momentum_copy(self.encoder)
        self.target_head = momentum_copy(self.head)
        self._momentum = self.settings.momentum

    @torch.no_grad()
    def target(self, x: Tensor) -> Tensor:
        return self.target_head(self.target_encoder(x))

    def objective(self, z1: Tensor, z2: Tensor, x1: Tensor, x2: Tensor,
                  ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        s = self.settings
        self._momentum = momentum_at(s.momentum, s.momentum_schedule, ctx.global_step, ctx.total_steps)
        t1, t2 = self.target(x1), self.target(x2)
        loss = byol_regression(self.predictor(z1), t2) + byol_regression(self.predictor(z2), t1)
        return loss, {"momentum": self._momentum}

    def after_optimizer_step(self) -> None:
        ema_update(self.encoder, self.target_encoder, self._momentum)
        ema_update(self.head, self.target_head, self._momentum)
