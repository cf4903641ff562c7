"""All-gather with gradient and row shards: the pieces that let one InfoNCE kernel serve DDP.

Each rank embeds its local N views, gathers every rank's embeddings *with gradient* (so negatives
from other ranks still send gradient back to their own rank), and computes the loss only for its
own anchor rows of the global batch. Example (inside a DDP training step)::

    from kernels.distributed import all_gather_with_grad, local_rows
    from kernels.info_nce import info_nce

    z1, z2 = model(x1), model(x2)                                  # (n, d) local
    z1_all, z2_all = all_gather_with_grad(z1), all_gather_with_grad(z2)   # (world * n, d)
    loss = info_nce(z1_all, z2_all, row_offset=local_rows(n, rank), num_rows=n)
    loss.backward()   # DDP averages gradients over ranks: the mean of the shard losses is the global loss

Gradients of the gathered tensor are reduce-scattered back (summed over ranks) by the functional
collective's backward, so the per-rank ``loss.backward()`` plus DDP's gradient averaging equals the
gradient of the single-process loss over the global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

Tensor = torch.Tensor


def world_size() -> int:
    """Number of ranks, 1 when torch.distributed is unavailable or not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


def all_gather_with_grad(x: Tensor, group=None) -> Tensor:
    """Concatenate ``x`` (n, ...) from every rank along dim 0, differentiably; ``x`` itself on one rank.

    Uses ``torch.distributed._functional_collectives.all_gather_single_autograd``, whose backward
    reduce-scatters (sums) the incoming gradient, unlike ``dist.all_gather`` which cuts the graph.
    Every rank must pass the same shape.
    """
    if world_size() == 1:
        return x
    from torch.distributed import _functional_collectives as fc

    return fc.all_gather_single_autograd(x.contiguous(), gather_dim=0, group=group or dist.group.WORLD)


def local_rows(n_local: int, rank: int | None = None) -> int:
    """``row_offset`` of this rank's anchors in a gathered batch of equal shards of ``n_local`` rows."""
    if n_local < 1:
        raise ValueError(f"n_local must be >= 1, got {n_local}")
    if rank is None:
        rank = dist.get_rank() if world_size() > 1 else 0
    if rank < 0:
        raise ValueError(f"rank must be >= 0, got {rank}")
    return rank * n_local
