"""AutoAttack (Croce & Hein 2020) for final robust-accuracy numbers, through ``torchattacks.AutoAttack``.

Optional: torchattacks is imported only when called, and its absence is a clear error. AutoAttack's
published numbers are on images (B,C,H,W); torchattacks' implementation is image-only too.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from vidcsl.attacks.pgd import frozen_for_attack

Tensor = torch.Tensor
_NORMS = {"linf": "Linf", "l2": "L2"}
VERSIONS = ("standard", "plus", "rand")


def _torchattacks():
    try:
        import torchattacks
    except ImportError as err:  # pragma: no cover - exercised only where torchattacks is absent
        raise ImportError(
            "AutoAttack evaluation needs the optional package 'torchattacks' (pip install torchattacks>=3.5)"
        ) from err
    return torchattacks


def autoattack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str = "linf",
    n_classes: int,
    version: str = "standard",
    seed: int = 0,
) -> Tensor:
    """Adversarial examples from AutoAttack on a classifier taking pixels in [0,1]; returns x_adv.

    The model is evaluated in eval mode; its flags, buffers and ``requires_grad`` are restored after
    (torchattacks alone would leave every submodule in train mode if the model was training).
    """
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of {tuple(_NORMS)}, got {norm!r}")
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
    if x.dim() != 4:
        raise ValueError(f"AutoAttack takes images (B,C,H,W), got shape {tuple(x.shape)}")
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    ta = _torchattacks()
    with frozen_for_attack(model, "eval"):
        attack = ta.AutoAttack(model, norm=_NORMS[norm], eps=eps, version=version, n_classes=n_classes, seed=seed)
        with torch.enable_grad():
            adv = attack(x.detach(), y.detach())
    return adv.detach().to(x.dtype)


@torch.no_grad()
def autoattack_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str = "linf",
    n_classes: int,
    version: str = "standard",
    seed: int = 0,
    batch_size: int = 256,
) -> float:
    """Robust accuracy (fraction in [0,1]) of ``model`` under AutoAttack, batch by batch."""
    if x.shape[0] == 0:
        raise ValueError("autoattack_accuracy needs at least one sample")
    correct = 0
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        adv = autoattack(model, xb, yb, eps=eps, norm=norm, n_classes=n_classes, version=version, seed=seed)
        with frozen_for_attack(model, "eval"):
            correct += (model(adv).argmax(1) == yb).sum().item()
    return correct / x.shape[0]
