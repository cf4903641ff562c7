"""Optimisers (SGD, LARS, AdamW) and the per-step schedule: linear warm-up, then cosine decay.

Biases and normalisation weights (1-d parameters) get no weight decay and, for LARS, no trust-ratio
adaptation (as in SimCLR). The schedule's state is one integer, so checkpoints stay primitive.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al. 2017), SimCLR's variant.

    Per parameter: ``g = grad + wd * w``; if adapted, ``g *= eta * ||w|| / ||g||`` (1 when either norm is
    0); ``buf = momentum * buf + g``; ``w -= lr * buf``. Groups with ``lars_adapt=False`` are plain SGD.
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001, lars_adapt: bool = True):
        if lr <= 0 or eta <= 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"LARS needs lr > 0, eta > 0, momentum >= 0, weight_decay >= 0; got "
                             f"lr={lr}, eta={eta}, momentum={momentum}, weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                                      lars_adapt=lars_adapt))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                if group["lars_adapt"]:
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    trust = torch.where((w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm,
                                        torch.ones_like(w_norm))
                    g = g * trust
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = g.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(g)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def param_groups(model: nn.Module, weight_decay: float, exclude_bias_norm: bool) -> list[dict[str, Any]]:
    """Two groups: weights (decayed, LARS-adapted) and 1-d params (biases, norms: neither, if excluded)."""
    decay, plain = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (plain if exclude_bias_norm and p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "lars_adapt": True}]
    if plain:
        groups.append({"params": plain, "weight_decay": 0.0, "lars_adapt": False})
    return groups


def scaled_lr(optim_cfg: Any, batch_size: int) -> float:
    """Base lr scaled by the global batch (``linear``: x batch/256, ``sqrt``: x sqrt(batch/256))."""
    factor = {"none": 1.0, "linear": batch_size / 256, "sqrt": math.sqrt(batch_size / 256)}[optim_cfg.lr_scaling]
    return optim_cfg.lr * factor


def build_optimizer(model: nn.Module, optim_cfg: Any, batch_size: int) -> torch.optim.Optimizer:
    """The optimiser of ``optim_cfg`` (a :class:`vidcsl.config.OptimConfig`) over ``model``'s trainable params."""
    lr = scaled_lr(optim_cfg, batch_size)
    groups = param_groups(model, optim_cfg.weight_decay, optim_cfg.exclude_bias_norm)
    if optim_cfg.name == "lars":
        return LARS(groups, lr=lr, momentum=optim_cfg.momentum, eta=optim_cfg.lars_eta)
    for g in groups:
        g.pop("lars_adapt")
    if optim_cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=optim_cfg.momentum)
    if optim_cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(optim_cfg.betas))
    raise ValueError(f"config key 'optim.name' must be sgd, lars or adamw, got {optim_cfg.name!r}")


class WarmupCosine:
    """Per-step lr: linear from ~0 to the base lr over ``warmup_steps``, then cosine to ``min_lr``.

    ``schedule="constant"`` keeps the base lr after the warm-up.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                 min_lr: float = 0.0, schedule: str = "cosine"):
        if total_steps < 1 or warmup_steps < 0:
            raise ValueError(f"schedule needs total_steps >= 1 and warmup_steps >= 0, got {total_steps}, "
                             f"{warmup_steps}")
        self.optimizer = optimizer
        self.total_steps, self.warmup_steps = total_steps, min(warmup_steps, total_steps)
        self.min_lr, self.schedule = min_lr, schedule
        self.base_lrs = [g.setdefault("initial_lr", g["lr"]) for g in optimizer.param_groups]
        self.step_count = 0
        self._apply()

    def factor(self, step: int) -> float:
        """Multiplier of the base lr at optimiser step ``step`` (before that step is taken)."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    def lr_at(self, step: int, base_lr: float) -> float:
        f = self.factor(step)
        if step < self.warmup_steps or self.schedule == "constant":
            return base_lr * f
        return self.min_lr + (base_lr - self.min_lr) * f

    def _apply(self) -> None:
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = self.lr_at(self.step_count, base)

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"step_count": self.step_count, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "min_lr": self.min_lr, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step_count"])
        self.base_lrs = [float(b) for b in state["base_lrs"]]
        self._apply()
