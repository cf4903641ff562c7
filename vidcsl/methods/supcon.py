"""Supervised contrastive learning (SupCon): every same-class sample is a positive.

It is the NT-Xent kernel with the true labels as the FN detector and the ``attract`` treatment, so
it shares SimCLR's encoder, head, augmentations and schedule.
"""

from __future__ import annotations

from typing import Any

import torch

from vidcsl.methods.base import StepContext, register_method
from vidcsl.methods.simclr import SimCLR


@register_method("supcon")
class SupCon(SimCLR):
    def training_step(self, batch: Any, ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
        (x1, x2), y = self.split_batch(batch)
        if y is None:
            raise ValueError("method 'supcon' needs class labels, but the batch has none")
        z1, z2 = self.project(torch.cat([x1, x2])).chunk(2)
        return self.contrastive_loss(z1, z2, y, ctx, None, labels=ctx.gather_nograd(y), fn_mode="attract")
