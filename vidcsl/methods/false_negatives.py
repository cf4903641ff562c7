"""False-negative options in one place: which detector, which treatment, when it starts.

Every contrastive method turns a :class:`FalseNegativeConfig` into keyword arguments for the fused
losses (``kernels.info_nce``) with :func:`fn_loss_kwargs`, and turns the kernel's per-row statistics
into detector precision / recall with :func:`fn_logs`. The detection itself runs inside the kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from vidcsl.schema import bounded, check_fields, choices

DETECTORS = ("none", "threshold", "topk", "oracle")
MODES = ("eliminate", "attract")


@dataclass
class FalseNegativeConfig:
    """How false negatives are found and treated.

    ``detector``: ``none`` (plain InfoNCE), ``threshold`` (cos > ``threshold``), ``topk`` (the ``topk``
    most similar negatives per anchor), ``oracle`` (same true label; the upper bound).
    ``mode``: ``eliminate`` (drop from the denominator) or ``attract`` (treat as extra positives).
    ``warmup_epochs``: no detection before this epoch, while similarities are still meaningless.
    """

    detector: str = choices(*DETECTORS, default="none")
    threshold: float = bounded(0.8, ge=-1.0, le=1.0)  # a cosine
    topk: int = bounded(1, ge=1)
    mode: str = choices(*MODES, default="eliminate")
    warmup_epochs: int = bounded(0, ge=0)

    def validate(self, prefix: str = "fn") -> None:
        """Check the declared fields of an instance built in code (the config loader checks them on load)."""
        check_fields(self, prefix)

    def active(self, epoch: int) -> bool:
        """True when detection runs at ``epoch`` (0-based)."""
        return self.detector != "none" and epoch >= self.warmup_epochs


def fn_loss_kwargs(fn: FalseNegativeConfig, epoch: int, labels: torch.Tensor | None) -> dict[str, Any]:
    """Keyword arguments for ``info_nce`` / single-label ``cross_info_nce`` implementing ``fn`` at ``epoch``.

    The oracle needs ``labels``; for ``cross_info_nce`` the caller renames ``labels`` to
    ``labels_q``/``labels_k``. Before the warm-up ends the loss is the plain InfoNCE.
    """
    if not fn.active(epoch):
        return {}
    kw: dict[str, Any] = {"fn_mode": fn.mode}
    if fn.detector == "threshold":
        kw["fn_threshold"] = float(fn.threshold)
    elif fn.detector == "topk":
        kw["fn_topk"] = int(fn.topk)
    elif fn.detector == "oracle":
        if labels is None:
            raise ValueError("fn.detector='oracle' needs class labels, but the batch has none")
        kw["labels"] = labels
    return kw


def fn_logs(stats: dict[str, torch.Tensor], gather=None) -> dict[str, float]:
    """Scalar logs from the kernel's per-row stats: contrastive top-1, FNs found per row, precision, recall.

    Precision and recall are ratios of batch sums (NaN when undefined, e.g. nothing detected); they
    need ``fn_correct`` / ``fn_possible``, present when stat labels were passed to the loss. ``gather``
    (e.g. ``StepContext.gather_nograd``) collects every rank's rows first, so DDP logs cover the global batch.
    """
    if gather is not None:
        stats = {k: gather(v.contiguous()) for k, v in stats.items()}
    logs = {"pos_top1": float(stats["pos_top1"].float().mean())}
    found = float(stats["fn_found"].sum())
    logs["fn_found_per_row"] = found / max(1, stats["fn_found"].numel())
    if "fn_correct" in stats:
        correct = float(stats["fn_correct"].sum())
        possible = float(stats["fn_possible"].sum())
        logs["fn_precision"] = correct / found if found > 0 else math.nan
        logs["fn_recall"] = correct / possible if possible > 0 else math.nan
    return logs
