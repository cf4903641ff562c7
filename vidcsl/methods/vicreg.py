"""VICReg (Bardes, Ponce & LeCun, ICLR 2022): variance, invariance and covariance regularisation.

    loss = lam * MSE(z1, z2) + mu * [v(Z1) + v(Z2)] / 2 + nu * [c(Z1) + c(Z2)]
    v(Z) = mean_j relu(gamma - sqrt(Var(Z[:, j]) + eps))          (hinge on each dimension's std)
    c(Z) = sum_{j != k} Cov(Z)[j, k]^2 / d                         (off-diagonal covariance)

with lam = 25, mu = 25, nu = 1, gamma = 1, eps = 1e-4 and unbiased (N - 1) variance and covariance,
as the authors' code (facebookresearch/vicreg) computes it: its variance term averages the two views
(the paper's formula sums them; the code's halving is what produced the published numbers).
Variance and covariance are taken over the *global* batch (all ranks' rows gathered with gradient,
like the authors' ``FullGatherLayer``); the MSE over the local rows, which DDP averages. Settings:
:class:`VICRegSettings`; see docs/methods.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vidcsl.methods.base import StepContext, register_method
from vidcsl.methods.negative_free import NegativeFreeMethod, full_precision, off_diagonal
from vidcsl.schema import bounded

Tensor = torch.Tensor


@dataclass
class VICRegSettings:
    """The paper's coefficients: ``invariance_weight`` (lambda) 25, ``variance_weight`` (mu) 25,
    ``covariance_weight`` (nu) 1; ``std_target`` (gamma) 1 and ``eps`` 1e-4 of the variance hinge."""

    invariance_weight: float = bounded(25.0, ge=0)
    variance_weight: float = bounded(25.0, ge=0)
    covariance_weight: float = bounded(1.0, ge=0)
    std_target: float = bounded(1.0, gt=0)
    eps: float = bounded(1e-4, gt=0)


def _variance_covariance(z: Tensor, s: VICRegSettings) -> tuple[Tensor, Tensor]:
    z = z - z.mean(dim=0)
    std = torch.sqrt(z.var(dim=0) + s.eps)
    cov = (z.T @ z) / (z.shape[0] - 1)
    return F.relu(s.std_target - std).mean(), off_diagonal(cov).pow(2).sum() / z.shape[1]


def vicreg_loss(z1: Tensor, z2: Tensor, s: VICRegSettings,
                gather: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """VICReg of the local rows ``z1``, ``z2`` (n, d); ``gather`` (with gradient) yields the global batch.

    Returns ``(loss, {"invariance", "variance", "covariance"})`` (the terms detached); the variance and covariance terms are
    those of the global batch, so in DDP every rank adds them in full (the gather's backward sums the
    ranks' gradients and DDP averages them back to one global gradient).
    """
    gather = gather or (lambda t: t)
    with full_precision(z1):
        z1, z2 = z1.float(), z2.float()
        invariance = F.mse_loss(z1, z2)
        var1, cov1 = _variance_covariance(gather(z1), s)
        var2, cov2 = _variance_covariance(gather(z2), s)
        variance, covariance = (var1 + var2) / 2, cov1 + cov2
        loss = s.invariance_weight * invariance + s.variance_weight * variance + s.covariance_weight * covariance
    return loss, {"invariance": invariance.detach(), "variance": variance.detach(), "covariance": covariance.detach()}


@register_method("vicreg")
class VICReg(NegativeFreeMethod):
    settings_class = VICRegSettings

    def objective(self, z1: Tensor, z2: Tensor, x1: Tensor, x2: Tensor,
                  ctx: StepContext) -> tuple[Tensor, dict[str, Tensor]]:
        return vicreg_loss(z1, z2, self.settings, ctx.gather)
