"""SimCLR (Chen et al. 2020): NT-Xent over two augmented views; with a false-negative config it is
"SimCLR+FN" (Gupta et al. 2023; the options are in docs/methods.md).

The contrastive loss is public (:meth:`SimCLR.contrastive_loss`) so adversarial variants reuse it.
"""

from __future__ import annotations

from typing import Any

import torch

from vidcsl.methods.base import StepContext, TwoViewMethod, register_method
from vidcsl.methods.collapse import EMBED_STD, embedding_std
from vidcsl.methods.false_negatives import FalseNegativeConfig, fn_logs, fn_loss_kwargs
from vidcsl.methods.losses import nt_xent

Tensor = torch.Tensor


@register_method("simclr")
class SimCLR(TwoViewMethod):
    def contrastive_loss(self, z1: Tensor, z2: Tensor, y: Tensor | None, ctx: StepContext,
                         fn: FalseNegativeConfig | None = None, **extra: Any) -> tuple[Tensor, dict[str, float]]:
        """NT-Xent of the local rows against the (all-gathered) global batch, with the FN options of ``fn``.

        ``y`` (class labels, if any) drive the oracle detector and the detector's precision / recall logs.
        ``extra`` keyword arguments go to the loss unchanged (e.g. ``labels`` + ``fn_mode`` for SupCon).
        The logs include ``embed_std`` of the global batch's embeddings (the collapse guard's measure).
        """
        n = z1.shape[0]
        g1, g2 = ctx.gather(z1), ctx.gather(z2)  # no upcast: the loss normalises in fp32 (docs/kernels.md)
        glabels = None if y is None else ctx.gather_nograd(y)
        kw = fn_loss_kwargs(fn, ctx.epoch, glabels) if fn is not None else {}
        kw.update(extra)
        loss, stats = nt_xent(g1, g2, self.cfg.method.temperature, backend=self.cfg.method.loss_backend,
                              precision=self.cfg.method.loss_precision,
                              row_offset=ctx.rank * n, num_rows=n, stat_labels=glabels, **kw)
        logs = fn_logs(stats, ctx.gather_nograd)
        logs[EMBED_STD] = embedding_std(torch.cat([g1, g2]))
        return loss, logs

    def training_step(self, batch: Any, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        (x1, x2), y = self.split_batch(batch)
        z1, z2 = self.project(torch.cat([x1, x2])).chunk(2)  # one pass: BatchNorm sees both views
        return self.contrastive_loss(z1, z2, y, ctx, self.cfg.fn)
