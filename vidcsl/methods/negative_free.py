"""What the methods without negatives (BYOL, SimSiam, VICReg, Barlow Twins) share.

Each sees the same two augmented views, encoder and projection head (``cfg.model``) as SimCLR, so a
comparison with it differs only in the objective. The papers use far larger projectors (8192-wide for
VICReg and Barlow Twins, 4096 for BYOL, 2048 for SimSiam); here the projector follows ``cfg.model``
like SimCLR's, so a CPU demo stays small, while the *loss* hyperparameters default to the papers'.
As in the authors' code, each view is a separate forward pass (BatchNorm statistics per view).

Their losses are plain PyTorch (a few matrix products, no O(N^2) similarity matrix to fuse), computed
in float32 even under mixed precision. docs/methods.md describes each one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from vidcsl.methods.base import StepContext, TwoViewMethod

Tensor = torch.Tensor


@contextmanager
def full_precision(z: Tensor) -> Iterator[None]:
    """Autocast off on ``z``'s device: batch statistics and cross-correlations are summed in float32."""
    with torch.autocast(z.device.type, enabled=False):
        yield


def predictor_head(cfg: Any, hidden_dim: int) -> nn.Module:
    """BYOL / SimSiam predictor: Linear -> BN -> ReLU -> Linear from and to ``model.proj_out_dim``
    (BN as ``model.proj_batch_norm`` says, like the projector)."""
    from vidcsl.models.heads import ProjectionHead

    d = cfg.model.proj_out_dim
    return ProjectionHead(d, hidden_dim, d, num_layers=2, batch_norm=cfg.model.proj_batch_norm)


def off_diagonal(m: Tensor) -> Tensor:
    """The off-diagonal entries of a square matrix, flattened (VICReg's covariance, Barlow's redundancy)."""
    n = m.shape[0]
    return m.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


class NegativeFreeMethod(TwoViewMethod):
    """Two views, one forward pass each, and an :meth:`objective` on their projections."""

    has_negatives = False

    def objective(self, z1: Tensor, z2: Tensor, x1: Tensor, x2: Tensor,
                  ctx: StepContext) -> tuple[Tensor, dict[str, Any]]:
        """``(loss, extra logs)`` from the projections ``z1``, ``z2`` of the views ``x1``, ``x2``."""
        raise NotImplementedError

    def training_step(self, batch: Any, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        (x1, x2), _ = self.split_batch(batch)
        z1, z2 = self.project(x1), self.project(x2)
        loss, extra = self.objective(z1, z2, x1, x2, ctx)
        return loss, {**self.spread_logs(ctx, z1, z2), **{k: float(v) for k, v in extra.items()}}
