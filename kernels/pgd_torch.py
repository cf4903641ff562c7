"""Eager PyTorch path of the fused PGD step: torchattacks' op sequence, run chunk by chunk in place.

Why chunks: the unfused sequence makes ~7 full passes over freshly allocated tensors. Here a chunk of
whole samples is copied once into a small fp32 buffer, every op of the sequence runs in place on
it while it is still in the CPU cache, and the result is written to ``out`` once. The ops and their
order are exactly torchattacks' (``x + a*sign(g)``; ``g/(||g||+1e-10)``, ``delta*min(1, eps/||delta||)``),
so on fp32 inputs the result is bit-identical to ``torchattacks.PGD`` / ``PGDL2`` (for finite
gradients; a non-finite one gives NaN, see ``kernels.pgd``).

Chunks hold whole samples, so the L2 per-sample norms are complete inside a chunk, and writing a
chunk of ``out`` only after reading the same chunk of ``x`` makes ``out is x`` (in-place) safe.
Callers validate arguments (``kernels.pgd``); this module only computes.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor

# ~1 MiB of fp32 per chunk: the buffer and the matching slices of x, x0 stay cache-resident on CPU.
CPU_CHUNK_ELEMS = 1 << 18


def default_chunk_elems(device: torch.device) -> int:
    """On CPU, cache-sized chunks; on accelerators one chunk (each extra chunk only adds launches)."""
    return CPU_CHUNK_ELEMS if device.type == "cpu" else 1 << 62


def pgd_step_torch(
    x: Tensor,
    grad: Tensor,
    x0: Tensor,
    out: Tensor,
    *,
    step_size: float,
    eps: float,
    norm: str,
    clamp: tuple[float, float] | None,
    chunk_elems: int | None = None,
) -> Tensor:
    """Write one PGD step of ``x`` into ``out`` (same shape and dtype; may be ``x`` itself); returns ``out``."""
    n = x.shape[0]
    if n == 0 or x.numel() == 0:
        return out
    per_sample = x.numel() // n
    chunk = chunk_elems if chunk_elems is not None else default_chunk_elems(x.device)
    rows = max(1, chunk // max(per_sample, 1))
    step = _linf_chunk if norm == "linf" else _l2_chunk
    for start in range(0, n, rows):
        sl = slice(start, min(start + rows, n))
        result = step(x[sl], grad[sl], x0[sl], step_size, eps)
        if clamp is not None:
            result.clamp_(clamp[0], clamp[1])
        out[sl].copy_(result)
    return out


def _linf_chunk(x: Tensor, g: Tensor, x0: Tensor, a: float, eps: float) -> Tensor:
    """``x0 + clamp(x + a*sign(g) - x0, -eps, eps)`` in fp32, in one fresh buffer."""
    buf = g.to(torch.float32, copy=True)
    buf.sign_().add_(g, alpha=0.0)  # + 0*g: exact 0 for a finite gradient, NaN for NaN / inf (a NaN step)
    buf.mul_(a).add_(x)  # adv = x + a * sign(g)
    buf.sub_(x0).clamp_(-eps, eps).add_(x0)  # x0 + clip(adv - x0)
    return buf


def _l2_chunk(x: Tensor, g: Tensor, x0: Tensor, a: float, eps: float) -> Tensor:
    """``x0 + delta * min(1, eps/||delta||)`` with ``delta = x + a*g/(||g||+1e-10) - x0``, per sample."""
    b = x.shape[0]
    bshape = (b,) + (1,) * (x.dim() - 1)
    buf = g.to(torch.float32, copy=True)
    gnorm = torch.linalg.vector_norm(buf.reshape(b, -1), ord=2, dim=1) + 1e-10
    buf.div_(gnorm.view(bshape)).mul_(a).add_(x)  # adv = x + a * (g / ||g||)
    buf.sub_(x0)  # delta
    dnorm = torch.linalg.vector_norm(buf.reshape(b, -1), ord=2, dim=1)
    factor = torch.minimum(eps / dnorm, torch.ones_like(dnorm))  # eps/0 = inf -> 1; NaN propagates
    buf.mul_(factor.view(bshape)).add_(x0)
    return buf
