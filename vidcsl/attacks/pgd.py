"""PGD / FGSM on images (B,C,H,W) and clips (B,C,T,H,W), every update through ``kernels.pgd.pgd_step``.

The semantics are torchattacks' (``PGD``, ``PGDL2``, ``FGSM``) so numbers are comparable with the
literature; the difference is that the model's state is never touched behind the caller's back:
train/eval flags, BatchNorm running statistics and ``requires_grad`` are saved and restored
(``frozen_for_attack``), so an attack can run in the middle of a training step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

Tensor = torch.Tensor
Objective = Callable[[Tensor], Tensor]
ATTACK_MODES = ("eval", "train")
NORMS = ("linf", "l2")


@contextmanager
def frozen_for_attack(model: nn.Module, mode: str = "eval") -> Iterator[nn.Module]:
    """Run ``model`` in ``mode`` for an attack, then put every flag and buffer back as it was.

    ``mode="eval"`` (torchattacks' choice) uses running BN statistics; ``mode="train"`` uses batch
    statistics (as some adversarial-training recipes do) and the running statistics it would update
    are restored afterwards. Parameters stop requiring grad meanwhile (only the input's gradient is
    needed), which also saves the parameter-gradient work.
    """
    if mode not in ATTACK_MODES:
        raise ValueError(f"attack mode must be one of {ATTACK_MODES}, got {mode!r}")
    flags = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.train(mode == "train")
        for p, _ in grads:
            p.requires_grad_(False)
        yield model
    finally:
        for m, was_training in flags:
            m.training = was_training
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for p, req in grads:
            p.requires_grad_(req)


def _check_attack_args(x: Tensor, eps: float, alpha: float, steps: int, norm: str) -> None:
    if x.dim() not in (4, 5):
        raise ValueError(f"x must be images (B,C,H,W) or clips (B,C,T,H,W), got shape {tuple(x.shape)}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if eps < 0 or alpha < 0:
        raise ValueError(f"eps and alpha must be >= 0, got eps={eps}, alpha={alpha}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")


def random_start(x: Tensor, eps: float, norm: str, generator: torch.Generator | None = None) -> Tensor:
    """torchattacks' random start: L-inf uniform in the eps-box; L2 a Gaussian direction scaled to
    radius ``eps * U(0,1)`` (same draw order as ``PGDL2``); clipped to [0,1]."""
    if norm == "linf":
        delta = torch.empty_like(x).uniform_(-eps, eps, generator=generator)
    elif norm == "l2":
        delta = torch.empty_like(x).normal_(generator=generator)
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        n = delta.flatten(1).norm(p=2, dim=1).view(shape)
        r = torch.zeros_like(n).uniform_(0, 1, generator=generator)
        delta *= r / n * eps
    else:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return torch.clamp(x + delta, min=0, max=1).detach()


def maximize(
    objective: Objective,
    x: Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    norm: str = "linf",
    random_init: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Projected gradient ascent of ``objective(x_adv) -> scalar`` inside the eps-ball of ``x`` and [0,1].

    The one loop every attack here shares; the caller is responsible for the model's state
    (wrap in ``frozen_for_attack``). Returns a detached tensor shaped and typed like ``x``.
    """
    from kernels.pgd import pgd_step

    _check_attack_args(x, eps, alpha, steps, norm)
    x0 = x.detach()
    adv = random_start(x0, eps, norm, generator) if random_init else x0.clone()
    with torch.enable_grad():
        for _ in range(steps):
            adv.requires_grad_(True)
            value = objective(adv)
            if value.dim() != 0:
                raise ValueError(f"attack objective must return a scalar, got shape {tuple(value.shape)}")
            (grad,) = torch.autograd.grad(value, adv)
            adv = pgd_step(adv.detach(), grad, x0, step_size=alpha, eps=eps, norm=norm).detach()
    return adv


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    norm: str = "linf",
    random_start: bool = True,
    loss: Callable[[Tensor, Tensor], Tensor] | None = None,
    generator: torch.Generator | None = None,
    mode: str = "eval",
) -> Tensor:
    """Untargeted PGD-``steps`` maximising ``loss(model(x_adv), y)`` (default: mean cross-entropy).

    With ``random_start=False`` it reproduces ``torchattacks.PGD`` (L-inf) / ``PGDL2`` (L2) on the
    same model and inputs. ``mode`` is the model mode used during the attack (see ``frozen_for_attack``).
    """
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"y has {y.shape[0]} labels for a batch of {x.shape[0]} inputs")
    loss_fn = loss if loss is not None else F.cross_entropy
    with frozen_for_attack(model, mode):
        return maximize(
            lambda adv: loss_fn(model(adv), y), x, eps=eps, alpha=alpha, steps=steps, norm=norm,
            random_init=random_start, generator=generator,
        )


def fgsm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str = "linf",
    loss: Callable[[Tensor, Tensor], Tensor] | None = None,
    mode: str = "eval",
) -> Tensor:
    """FGSM: one step of size ``eps`` from ``x`` (``torchattacks.FGSM`` for L-inf)."""
    return pgd(model, x, y, eps=eps, alpha=eps, steps=1, norm=norm, random_start=False, loss=loss, mode=mode)
