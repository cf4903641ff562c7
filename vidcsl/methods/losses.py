"""One entry to the contrastive losses: the fused kernels, or the materialised reference on request.

``backend="reference"`` (config ``method.loss_backend``) runs ``kernels.reference`` — slow and
O(N^2), useful to compare against; every other value is passed to the fused kernels' dispatcher.
``precision`` (config ``method.loss_precision``) sets the dtype of the fused similarity dots: ``auto``
is bf16 tensor-core dots with fp32 accumulation on CUDA and exact fp32 on CPU (docs/kernels.md); the
reference is always exact. Both return ``(loss, stats)``.
"""

from __future__ import annotations

from typing import Any

import torch

Tensor = torch.Tensor


def nt_xent(z1: Tensor, z2: Tensor, temperature: float, *, backend: str = "auto", precision: str = "auto",
            **kw: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """SimCLR's NT-Xent over ``[z1; z2]`` with ``info_nce``'s keyword options (FN, row shard, stats)."""
    if backend == "reference":
        from kernels.reference import info_nce_reference

        return info_nce_reference(z1, z2, temperature, **kw)
    from kernels.info_nce import info_nce

    return info_nce(z1, z2, temperature, return_stats=True, backend=backend, precision=precision, **kw)


def cross_nce(q: Tensor, k: Tensor, temperature: float, *, backend: str = "auto", precision: str = "auto",
              **kw: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """MoCo / CLIP InfoNCE (row i of ``q`` has positive ``k[i]``) with ``cross_info_nce``'s options."""
    if backend == "reference":
        from kernels.reference import cross_info_nce_reference

        return cross_info_nce_reference(q, k, temperature, **kw)
    from kernels.info_nce import cross_info_nce

    return cross_info_nce(q, k, temperature, return_stats=True, backend=backend, precision=precision, **kw)
