"""Robust accuracy over an epsilon sweep, per sample, skipping work whose outcome is already settled.

An adversarial example found at eps_1 lies inside every larger ball of the same norm, so a sample broken
at eps_1 is broken at every eps_2 > eps_1. ``robust_sweep`` therefore attacks eps in increasing order and
only the samples still correct at the previous eps; samples misclassified clean are never attacked. Inside
PGD a sample stops being attacked once the model misclassifies it (that example is kept) and the batch
is compacted. Until then its iterates are torchattacks' PGD ones, so with ``random_start=False`` every
sample torchattacks' per-eps PGD breaks is broken here too (``docs/attacks.md``).

    clean = clean_correct(model, x, y)                    # one clean pass, shared by both norms
    linf = robust_sweep(model, x, y, norm="linf", eps_list=[0, 2/255, 8/255], clean=clean)
    l2 = robust_sweep(model, x, y, norm="l2", eps_list=[0.25, 0.5], clean=clean)
    linf[8/255]                                           # (B,) bool on CPU: still correct at 8/255
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from vidcsl.attacks.pgd import (
    DEFAULT_ALPHA_FACTOR,
    DEFAULT_STEPS,
    check_input,
    check_restarts,
    default_alpha,
    frozen_for_attack,
    pgd_outcome,
    predicts,
)
from vidcsl.attacks.registry import attack_by_name
from vidcsl.errors import ConfigError

Tensor = torch.Tensor
# PGD options robust_sweep sets itself, beyond its named arguments: alpha from alpha_factor, early stopping on.
_PGD_SET_BY_SWEEP = frozenset({"alpha", "early_stop"})


@torch.no_grad()
def clean_correct(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """(B,) bool on CPU: the model (in eval mode, state restored) classifies sample i correctly."""
    check_input(x, y)
    with frozen_for_attack(model, "eval"):
        return predicts(model(x), y).detach().to("cpu", copy=True)


def _check_eps(eps_list: list[float]) -> list[float]:
    if len(eps_list) == 0:
        raise ConfigError("robust_sweep needs at least one eps in eps_list")
    bad = [e for e in eps_list if not (isinstance(e, (int, float)) and math.isfinite(e) and e >= 0)]
    if bad:
        raise ConfigError(f"eps_list must hold finite eps >= 0, got {bad}")
    return sorted({float(e) for e in eps_list})


def robust_sweep(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    norm: str,
    eps_list: list[float],
    attack: str = "pgd",
    steps: int = DEFAULT_STEPS,
    alpha_factor: float = DEFAULT_ALPHA_FACTOR,
    random_start: bool = True,
    restarts: int = 1,
    generator: torch.Generator | None = None,
    mode: str = "eval",
    clean: Tensor | None = None,
    **options: Any,
) -> dict[float, Tensor]:
    """For each eps of ``eps_list`` (any order; 0 = clean), a (B,) bool CPU tensor: sample still correct.

    ``attack`` names a registry entry (``vidcsl.attacks.ATTACKS``). For PGD: ``steps`` iterations of
    size ``alpha_factor * eps / steps``, ``random_start`` as torchattacks, ``restarts`` re-attacks the
    samples a restart left correct from a new random start (drawn from ``generator``). The other attacks
    take ``steps`` / ``restarts`` when they have such an option (APGD, CW) and ``options`` (checked by the
    registry, e.g. ``seed``); only the samples still correct at the previous eps are attacked.
    ``clean``: the (B,) outcome of :func:`clean_correct`, to share one clean pass between norms. The
    model is judged in eval mode (``mode`` must be "eval": batch statistics would change as samples
    drop out); its flags, buffers and ``requires_grad`` are restored.
    """
    spec = attack_by_name(attack)
    check_input(x, y)
    spec.check(norm=norm, options=options, ndim=x.dim())
    if mode != "eval":
        raise ConfigError(f"robust_sweep judges the model in eval mode, got mode={mode!r} (train-mode batch "
                          "statistics would change as samples drop out of the batch)")
    clash = sorted(set(options) & _PGD_SET_BY_SWEEP) if spec.name == "pgd" else []
    if clash:
        raise ConfigError(f"robust_sweep sets the pgd option(s) {clash} itself (alpha = alpha_factor * eps / "
                          "steps; a sample stops being attacked once misclassified)")
    if spec.name == "pgd":
        check_restarts(restarts, random_start)
    if steps < 1 or not alpha_factor > 0:
        raise ConfigError(f"robust_sweep needs steps >= 1 and alpha_factor > 0, got {steps}, {alpha_factor}")
    eps_sorted = _check_eps(eps_list)
    if clean is None:
        clean = clean_correct(model, x, y)
    if clean.shape != (x.shape[0],) or clean.dtype != torch.bool:
        raise ValueError(f"clean must be a ({x.shape[0]},) bool tensor, got {tuple(clean.shape)} {clean.dtype}")
    sweep_values = {"steps": steps, "restarts": restarts}
    extra = {opt: sweep_values[param] for param, opt in spec.sweep_options.items()}

    def fooled_by_attack(xs: Tensor, ys: Tensor, eps: float) -> Tensor:
        if spec.name == "pgd":
            alpha = default_alpha(eps, steps, alpha_factor)
            return pgd_outcome(model, xs, ys, eps=eps, alpha=alpha, steps=steps, norm=norm, random_start=random_start,
                               restarts=restarts, early_stop=True, loss_scale=1.0 / x.shape[0], generator=generator,
                               **options)[1]
        adv = spec(model, xs, ys, eps=eps, norm=norm, **extra, **options)
        with torch.no_grad():
            return ~predicts(model(adv), ys)

    robust = clean.to(x.device).clone()
    outcome: dict[float, Tensor] = {}
    with frozen_for_attack(model, "eval"):
        for eps in eps_sorted:
            if eps > 0 and bool(robust.any()):
                idx = robust.nonzero().squeeze(1)
                robust[idx[fooled_by_attack(x[idx], y[idx], eps)]] = False
            outcome[eps] = robust.detach().to("cpu", copy=True)
    return {float(e): outcome[float(e)] for e in eps_list}
