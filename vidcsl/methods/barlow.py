"""Barlow Twins (Zbontar et al., ICML 2021): the cross-correlation of the two views' embeddings -> identity.

    C = Z1n^T Z2n / N,   loss = sum_j (1 - C[j, j])^2 + lambda * sum_{j != k} C[j, k]^2

``Z1n``, ``Z2n``: each view's embeddings standardised per dimension over the batch (BatchNorm without
affine parameters, in training mode: biased variance, eps 1e-5), ``N`` the global batch size, and
lambda = 0.0051 as in the authors' code (facebookresearch/barlowtwins; the paper rounds it to 5e-3).
Standardisation and C use the *global* batch (all ranks' rows gathered with gradient), so DDP gives
exactly the single-process loss and gradient; every rank adds the whole loss. Settings:
:class:`BarlowTwinsSettings`; see docs/methods.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from vidcsl.methods.base import StepContext, register_method
from vidcsl.methods.negative_free import NegativeFreeMethod, full_precision, off_diagonal
from vidcsl.schema import bounded

Tensor = torch.Tensor

BN_EPS = 1e-5  # torch.nn.BatchNorm1d's default, which the authors' code standardises with


@dataclass
class BarlowTwinsSettings:
    """``off_diagonal_weight`` (lambda) 0.0051: weight of the redundancy-reduction (off-diagonal) term."""

    off_diagonal_weight: float = bounded(0.0051, ge=0)


def standardize(z: Tensor) -> Tensor:
    """Per-dimension (z - mean) / sqrt(biased var + eps) over the batch: BatchNorm1d(affine=False) in training."""
    return (z - z.mean(dim=0)) / torch.sqrt(z.var(dim=0, unbiased=False) + BN_EPS)


def barlow_twins_loss(z1: Tensor, z2: Tensor, off_diagonal_weight: float,
                      gather: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Barlow Twins of the local rows ``z1``, ``z2`` (n, d) over the global batch ``gather`` yields."""
    gather = gather or (lambda t: t)
    with full_precision(z1):
        a, b = standardize(gather(z1.float())), standardize(gather(z2.float()))
        c = a.T @ b / a.shape[0]
        on_diagonal = (torch.diagonal(c) - 1).pow(2).sum()
        redundancy = off_diagonal(c).pow(2).sum()
        loss = on_diagonal + off_diagonal_weight * redundancy
    return loss, {"on_diagonal": on_diagonal.detach(), "off_diagonal": redundancy.detach()}


@register_method("barlow")
class BarlowTwins(NegativeFreeMethod):
    settings_class = BarlowTwinsSettings

    def objective(self, z1: Tensor, z2: Tensor, x1: Tensor, x2: Tensor,
                  ctx: StepContext) -> tuple[Tensor, dict[str, Tensor]]:
        return barlow_twins_loss(z1, z2, self.settings.off_diagonal_weight, ctx.gather)
