"""MoCo v2: a momentum (key) encoder + head and a queue of past keys as extra negatives.

Keys of the current global batch and the queue are all negatives of a query except its own key
(the cross InfoNCE of ``kernels``, as in MoCo v3; MoCo v2 used only the queue). The queue also
stores the keys' labels, so the oracle detector and the FN precision / recall work across it.
No shuffle-BN: with one process it is a no-op, in DDP the key BatchNorm sees the local batch only.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

from vidcsl.methods.base import StepContext, register_method
from vidcsl.methods.false_negatives import fn_logs, fn_loss_kwargs
from vidcsl.methods.losses import cross_nce
from vidcsl.methods.simclr import SimCLR

Tensor = torch.Tensor


@register_method("moco")
class MoCo(SimCLR):
    def __init__(self, cfg: Any, encoder: torch.nn.Module, num_classes: int):
        super().__init__(cfg, encoder, num_classes)
        self.key_encoder = copy.deepcopy(self.encoder)
        self.key_head = copy.deepcopy(self.head)
        for p in list(self.key_encoder.parameters()) + list(self.key_head.parameters()):
            p.requires_grad_(False)
        size, dim = cfg.method.moco_queue_size, cfg.model.proj_out_dim
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
        loss, stats = cross_nce(q.float(), keys, self.cfg.method.temperature, backend=self.cfg.method.loss_backend,
                                stat_labels_q=labels, stat_labels_k=key_labels, **kw)
        return loss, stats, gk, glabels

    def training_step(self, batch: Any, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        (x1, x2), y = self.split_batch(batch)
        if self.cfg.method.moco_symmetric:
            q1, q2 = self.project(torch.cat([x1, x2])).chunk(2)
            k1, k2 = self.keys(torch.cat([x1, x2])).chunk(2)
            loss_a, stats_a, gk, gy = self._direction(q1, k2, y, ctx)
            loss_b, stats_b, _, _ = self._direction(q2, k1, y, ctx)
            loss = 0.5 * (loss_a + loss_b)
            stats = {key: torch.cat([stats_a[key], stats_b[key]]) for key in stats_a}
        else:
            loss, stats, gk, gy = self._direction(self.project(x1), self.keys(x2), y, ctx)
        self._enqueue(gk, gy)
        logs = fn_logs(stats, ctx.gather_nograd)
        logs["queue_fill"] = float(self.queue_len) / self.queue.shape[0]
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

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        m = self.cfg.method.moco_momentum
        for online, key in ((self.encoder, self.key_encoder), (self.head, self.key_head)):
            for pq, pk in zip(online.parameters(), key.parameters()):
                pk.mul_(m).add_(pq.detach(), alpha=1.0 - m)
