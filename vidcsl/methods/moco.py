"""MoCo v2 (Chen, Fan, Girshick & He 2020): a momentum (key) encoder + head and a queue of past keys.

Keys of the current global batch and the queue are all negatives of a query except its own key
(the cross InfoNCE of ``kernels``, as in MoCo v3; MoCo v2 used only the queue). The queue also
stores the keys' labels, so the oracle detector and the FN precision / recall work across it.
No shuffle-BN: with one process it is a no-op, in DDP the key BatchNorm sees the local batch only.
The key network follows the online one through :mod:`vidcsl.methods.momentum`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from vidcsl.methods.base import StepContext, register_method
from vidcsl.methods.collapse import EMBED_STD, embedding_std
from vidcsl.methods.false_negatives import fn_logs, fn_loss_kwargs
from vidcsl.methods.losses import cross_nce
from vidcsl.methods.momentum import MomentumSettings, ema_update, momentum_at, momentum_copy
from vidcsl.methods.simclr import SimCLR
from vidcsl.schema import bounded

Tensor = torch.Tensor


@dataclass
class MoCoSettings(MomentumSettings):
    """MoCo v2's defaults: ``momentum`` 0.999 (constant), a queue of ``queue_size`` 65536 keys;
    ``symmetric`` also swaps the two views (two loss terms, averaged; MoCo v2 uses one)."""

    momentum: float = bounded(0.999, ge=0, lt=1)
    queue_size: int = bounded(65536, ge=1)
    symmetric: bool = False


@register_method("moco")
class MoCo(SimCLR):
    settings_class = MoCoSettings

    def __init__(self, cfg: Any, encoder: torch.nn.Module, num_classes: int):
        super().__init__(cfg, encoder, num_classes)
        self.key_encoder = momentum_copy(self.encoder)
        self.key_head = momentum_copy(self.head)
        self._momentum = self.settings.momentum
        size, dim = self.settings.queue_size, cfg.model.proj_out_dim
        self.register_buffer("queue", torch.zeros(size, dim))
        self.register_buffer("queue_labels", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_len", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def keys(self, x: Tensor) -> Tensor:
        return F.normalize(self.key_head(self.key_encoder(x)).float(), dim=1)

    def _direction(self, q: Tensor, k: Tensor, labels: Tensor | None,
                   ctx: StepContext) -> tuple[Tensor, dict[str, Tensor], Tensor, Tensor | None]:
        """Loss of local queries ``q`` against [own keys, other ranks' keys, queue]; returns the global keys too."""
        n, r = q.shape[0], ctx.rank
        gk = ctx.gather_nograd(k)
        others = torch.cat([gk[: r * n], gk[(r + 1) * n:]])
        filled = int(self.queue_len)
        keys = torch.cat([k, others, self.queue[:filled]])
        glabels = key_labels = None
        if labels is not None:
            glabels = ctx.gather_nograd(labels)
            key_labels = torch.cat([labels, glabels[: r * n], glabels[(r + 1) * n:], self.queue_labels[:filled]])
        kw = fn_loss_kwargs(self.cfg.fn, ctx.epoch, labels)
        if "labels" in kw:
            kw["labels_q"], kw["labels_k"] = kw.pop("labels"), key_labels
        # q joins the fp32 queue's dtype; the dots still run in bf16 on CUDA (method.loss_precision=auto)
        loss, stats = cross_nce(q.float(), keys, self.cfg.method.temperature, backend=self.cfg.method.loss_backend,
                                precision=self.cfg.method.loss_precision,
                                stat_labels_q=labels, stat_labels_k=key_labels, **kw)
        return loss, stats, gk, glabels

    def training_step(self, batch: Any, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        (x1, x2), y = self.split_batch(batch)
        s = self.settings
        self._momentum = momentum_at(s.momentum, s.momentum_schedule, ctx.global_step, ctx.total_steps)
        if s.symmetric:
            q1, q2 = self.project(torch.cat([x1, x2])).chunk(2)
            k1, k2 = self.keys(torch.cat([x1, x2])).chunk(2)
            loss_a, stats_a, gk, gy = self._direction(q1, k2, y, ctx)
            loss_b, stats_b, _, _ = self._direction(q2, k1, y, ctx)
            loss = 0.5 * (loss_a + loss_b)
            stats = {key: torch.cat([stats_a[key], stats_b[key]]) for key in stats_a}
            queries = q1
        else:
            queries = self.project(x1)
            loss, stats, gk, gy = self._direction(queries, self.keys(x2), y, ctx)
        self._enqueue(gk, gy)
        logs = fn_logs(stats, ctx.gather_nograd)
        logs["queue_fill"] = float(self.queue_len) / self.queue.shape[0]
        logs[EMBED_STD] = embedding_std(ctx.gather_nograd(queries.detach()))
        return loss, logs

    @torch.no_grad()
    def _enqueue(self, keys: Tensor, labels: Tensor | None) -> None:
        """Ring-buffer insert of the global batch's keys (identical on every rank, so queues stay in sync)."""
        size = self.queue.shape[0]
        keys = keys[-size:]
        m = keys.shape[0]
        idx = (int(self.queue_ptr) + torch.arange(m, device=keys.device)) % size
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_labels[idx] = labels[-size:].long() if labels is not None else -1
        self.queue_ptr.fill_((int(self.queue_ptr) + m) % size)
        self.queue_len.fill_(min(size, int(self.queue_len) + m))

    def after_optimizer_step(self) -> None:
        ema_update(self.encoder, self.key_encoder, self._momentum)
        ema_update(self.head, self.key_head, self._momentum)
