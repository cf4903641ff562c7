"""Momentum (EMA) networks, shared by MoCo's key encoder and BYOL's target network.

A momentum network is a frozen copy of online modules whose weights follow them by an exponential
moving average after every optimiser step: ``target <- m * target + (1 - m) * online``. The momentum
``m`` is constant (MoCo, He et al. 2020) or rises from its base value to 1 over training by a cosine
(BYOL, Grill et al. 2020: ``m_k = 1 - (1 - m_base) * (cos(pi k / K) + 1) / 2``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from vidcsl.schema import bounded, choices

SCHEDULES = ("constant", "cosine")


@dataclass
class MomentumSettings:
    """``momentum``: the EMA coefficient (its base value under a schedule), in [0, 1).
    ``momentum_schedule``: ``constant``, or ``cosine`` from ``momentum`` to 1 over the run's steps."""

    momentum: float = bounded(0.99, ge=0, lt=1)
    momentum_schedule: str = choices(*SCHEDULES, default="constant")


def momentum_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` that the optimiser never touches (``requires_grad=False``)."""
    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


def momentum_at(base: float, schedule: str, step: int, total_steps: int) -> float:
    """The momentum at optimiser step ``step`` of ``total_steps`` (0 = unknown: the base value)."""
    if schedule == "constant" or total_steps <= 0:
        return base
    if schedule == "cosine":
        progress = min(max(step / total_steps, 0.0), 1.0)
        return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0
    raise ValueError(f"unknown momentum schedule {schedule!r} (known: {', '.join(SCHEDULES)})")


@torch.no_grad()
def ema_update(online: nn.Module, target: nn.Module, momentum: float) -> None:
    """``target <- momentum * target + (1 - momentum) * online``, parameter by parameter (buffers untouched)."""
    for p_online, p_target in zip(online.parameters(), target.parameters(), strict=True):
        p_target.mul_(momentum).add_(p_online.detach(), alpha=1.0 - momentum)
