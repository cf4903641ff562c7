"""AdvProp-style dual BatchNorm: separate normalisation statistics for clean and adversarial inputs.

Adversarial examples have a different activation distribution from clean ones; mixing both in one BN's
running statistics hurts clean accuracy (Xie et al., AdvProp). CLAE and ACL therefore route adversarial
forward passes through auxiliary BN layers. Convolution weights stay shared; only BN is duplicated.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class DualBatchNorm(nn.Module):
    """Holds a ``clean`` and an ``adversarial`` BN of the same kind; ``adversarial_mode`` picks the branch."""

    def __init__(self, clean: _BatchNorm, adversarial: _BatchNorm | None = None):
        super().__init__()
        if not isinstance(clean, _BatchNorm):
            raise ValueError(f"DualBatchNorm wraps a BatchNorm layer, got {type(clean).__name__}")
        if adversarial is None:
            adversarial = copy.deepcopy(clean)  # same parameters and running stats to start from
        if type(adversarial) is not type(clean) or adversarial.num_features != clean.num_features:
            raise ValueError(f"DualBatchNorm branches differ: {clean} vs {adversarial}")
        self.clean = clean
        self.adversarial = adversarial
        self.adversarial_mode = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adversarial(x) if self.adversarial_mode else self.clean(x)

    def extra_repr(self) -> str:
        return f"adversarial_mode={self.adversarial_mode}"


def convert_to_dual_bn(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm in ``module`` (in place) by a DualBatchNorm whose two branches start as copies.

    Returns the module (or the wrapper, if ``module`` itself is a BN). The clean branch is the original layer,
    so build the optimizer *after* converting, or the adversarial branch's parameters will not be trained.
    """
    if isinstance(module, _BatchNorm):
        return DualBatchNorm(module)
    for name, child in list(module.named_children()):
        if isinstance(child, DualBatchNorm):
            continue
        if isinstance(child, _BatchNorm):
            setattr(module, name, DualBatchNorm(child))
        else:
            convert_to_dual_bn(child)
    return module


def dual_bn_layers(module: nn.Module) -> list[DualBatchNorm]:
    return [m for m in module.modules() if isinstance(m, DualBatchNorm)]


@contextmanager
def use_adversarial_bn(module: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Within the block, every DualBatchNorm of ``module`` uses the adversarial branch (or the clean one if
    ``enabled`` is False); each layer's previous choice is restored afterwards, also on error."""
    layers = dual_bn_layers(module)
    previous = [m.adversarial_mode for m in layers]
    try:
        for m in layers:
            m.adversarial_mode = bool(enabled)
        yield module
    finally:
        for m, mode in zip(layers, previous):
            m.adversarial_mode = mode
