"""Attacks on encoders without labels: RoCL's instance-wise, CLAE's batch-wise, and the feature attack.

All three are the shared projected-ascent loop (``vidcsl.attacks.pgd.maximize``) with a different
objective, so their updates go through ``kernels.pgd.pgd_step`` and their contrastive losses through
``kernels.info_nce.info_nce``; the model's mode, BN statistics and ``requires_grad`` are restored.
They are pure functions of (model, tensors), callable from a training step or an evaluation.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from vidcsl.attacks.pgd import frozen_for_attack, maximize

Tensor = torch.Tensor


def _nce_objective(model: nn.Module, target: Tensor, temperature: float, nce_kwargs: dict[str, Any] | None):
    """NT-Xent of model(x_adv) against fixed (detached) embeddings of the other view."""
    from kernels.info_nce import info_nce

    kwargs = dict(nce_kwargs or {})
    for forbidden in ("return_stats", "reduction"):
        if forbidden in kwargs:
            raise ValueError(f"nce_kwargs may not set {forbidden!r}: the attack needs the mean loss")
    return lambda adv: info_nce(model(adv), target, temperature, **kwargs)


def _check_pair(x: Tensor, x_other: Tensor) -> None:
    if x_other.shape[0] != x.shape[0]:
        raise ValueError(f"x_other has batch {x_other.shape[0]}, x has {x.shape[0]}: views must pair up")


def _target(model: nn.Module, x: Tensor, x_other: Tensor, target: Tensor | None) -> Tensor:
    """Fixed embeddings of the other view: given by the caller (e.g. through a clean BN branch while the
    attack runs through the adversarial one), or computed here by the attacked model."""
    _check_pair(x, x_other if target is None else target)
    if target is not None:
        return target.detach()
    with torch.no_grad():
        return model(x_other).detach()


def instance_attack(
    encoder_with_head: nn.Module,
    x: Tensor,
    x_other: Tensor,
    *,
    eps: float = 8 / 255,
    alpha: float = 2 / 255,
    steps: int = 7,
    temperature: float,
    norm: str = "linf",
    random_start: bool = True,
    generator: torch.Generator | None = None,
    mode: str = "eval",
    nce_kwargs: dict[str, Any] | None = None,
    target: Tensor | None = None,
) -> Tensor:
    """RoCL: PGD that maximises NT-Xent between the projection of ``x_adv`` and that of ``x_other``.

    ``nce_kwargs`` (labels, fn_threshold, fn_topk, fn_mode, ...) go to ``info_nce`` unchanged, so a
    method with false-negative removal attacks the loss it trains on. ``target``: the other view's
    projections, if the caller computed them (``x_other`` is then ignored).
    """
    with frozen_for_attack(encoder_with_head, mode):
        target = _target(encoder_with_head, x, x_other, target)
        objective = _nce_objective(encoder_with_head, target, temperature, nce_kwargs)
        return maximize(
            objective, x, eps=eps, alpha=alpha, steps=steps, norm=norm, random_init=random_start,
            generator=generator,
        )


def batch_attack(
    encoder_with_head: nn.Module,
    x: Tensor,
    x_other: Tensor | None = None,
    *,
    eps: float = 0.015,
    temperature: float,
    norm: str = "linf",
    mode: str = "eval",
    nce_kwargs: dict[str, Any] | None = None,
    target: Tensor | None = None,
) -> Tensor:
    """CLAE: one FGSM step (no random start) on the batch's NT-Xent between ``x_adv`` and ``x_other``.

    ``x_adv`` starts at ``x``; ``x_other`` defaults to ``x`` itself (the pair is then identical at the
    start and the gradient comes from the negatives). CLAE attacks view j against view i: pass
    ``x=x_j, x_other=x_i``. ``target``: the other view's projections, if the caller computed them.
    """
    x_other = x if x_other is None else x_other
    with frozen_for_attack(encoder_with_head, mode):
        target = _target(encoder_with_head, x, x_other, target)
        objective = _nce_objective(encoder_with_head, target, temperature, nce_kwargs)
        return maximize(objective, x, eps=eps, alpha=eps, steps=1, norm=norm, random_init=False)


def feature_attack(
    encoder: nn.Module,
    x: Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    norm: str = "linf",
    random_start: bool = True,
    generator: torch.Generator | None = None,
    mode: str = "eval",
) -> Tensor:
    """Maximise ``||f(x+delta) - f(x)||_2`` per sample (representation sensitivity).

    The objective is the batch sum of squared distances: per sample it has the same ascent direction
    as the distance itself (sign / normalised step), and it is smooth at delta = 0. Its gradient is
    zero *at* delta = 0, so without a random start the first step cannot move: keep it on.
    """
    with frozen_for_attack(encoder, mode):
        with torch.no_grad():
            clean = encoder(x).detach().flatten(1)
        objective = lambda adv: (encoder(adv).flatten(1) - clean).pow(2).sum()
        return maximize(
            objective, x, eps=eps, alpha=alpha, steps=steps, norm=norm, random_init=random_start,
            generator=generator,
        )
