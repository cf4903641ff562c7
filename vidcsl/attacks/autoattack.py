"""AutoAttack (Croce & Hein 2020) for final robust-accuracy numbers, through ``torchattacks.AutoAttack``.

Optional: torchattacks is imported only when called, and its absence is a clear error. Clips and L-inf
clip sets are attacked through their image view (``vidcsl.attacks.torchattacks_based``). The targeted
attacks aim at the 9 highest-scoring wrong classes, as the official AutoAttack does. torchattacks 3.5
builds the ensemble with its own defaults (e.g. APGD runs 10 steps, the official code 100).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from vidcsl.attacks.pgd import frozen_for_attack, predicts
from vidcsl.attacks.torchattacks_based import (
    TA_NORMS,
    TARGET_CLASSES,
    check_ta_input,
    check_targeted,
    load_torchattacks,
    num_classes,
    run_torchattacks,
)

Tensor = torch.Tensor
VERSIONS = ("standard", "plus", "rand")


def autoattack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str = "linf",
    n_classes: int | None = None,
    version: str = "standard",
    seed: int = 0,
) -> Tensor:
    """Adversarial examples from AutoAttack on a classifier taking pixels in [0,1]; returns x_adv.

    ``n_classes`` defaults to the model's number of logits. The model is evaluated in eval mode; its
    flags, buffers and ``requires_grad`` are restored after (torchattacks alone would leave every
    submodule in train mode if the model was training).
    """
    check_ta_input("autoattack", x, y, norm)
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
    n = num_classes(model, x) if n_classes is None else n_classes
    if n < 2:
        raise ValueError(f"n_classes must be >= 2, got {n}")
    if version != "rand":  # the 'rand' version has no targeted attack
        check_targeted(f"AutoAttack ({version})", n)
    ta = load_torchattacks()
    return run_torchattacks("autoattack", model, x, y, norm, lambda m: ta.AutoAttack(
        m, norm=TA_NORMS[norm], eps=eps, version=version, n_classes=min(n, TARGET_CLASSES + 1), seed=seed))


@torch.no_grad()
def autoattack_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str = "linf",
    n_classes: int | None = None,
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
            correct += predicts(model(adv), yb).sum().item()
    return correct / x.shape[0]
