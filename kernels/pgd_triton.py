"""Triton path of the fused PGD step (CUDA; CPU tensors under ``TRITON_INTERPRET=1``).

* L-inf: one elementwise kernel reads x, grad, x0 once and writes the new x.
* L2, sample fits one program (<= ``MAX_SINGLE_ELEMS`` elements, e.g. a CIFAR image): one kernel, one
  program per sample, both per-sample norms taken in registers: still one read of each input.
* L2, larger samples (clips): three kernels over a (span, sample) grid. (1) per-span partial sums of
  g^2; (2) each span sums its sample's partials into ||g||, forms the stepped delta and writes partial
  sums of delta^2; (3) each span forms ||g||, ||delta||, the projection factor, recomputes delta and
  writes the clamped result. Partial sums go to small (B, spans) buffers: deterministic (no atomics).

Arithmetic follows torchattacks op by op in fp32 (``x + a*(g/gn)``, ``eps * (1/||delta||)`` as
``eps / tensor`` does, correctly rounded sqrt and division, no FMA contraction), so results differ from
the eager sequence only by the order of the norm reductions. A non-finite gradient value gives a NaN
output (its element under L-inf, its sample under L2 via the norm; see ``kernels.pgd``); clamp keeps NaN.
No autotuning: autotune re-runs a kernel, which is wrong for in-place updates.
Callers validate arguments (``kernels.pgd``); this module only computes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

Tensor = torch.Tensor

LINF_BLOCK = 1024
MAX_SINGLE_ELEMS = 8192  # L2 samples up to this size use the one-program-per-sample kernel
REDUCE_BLOCK = 1024  # elements per loop iteration of the multi-kernel L2 path
TARGET_SPANS = 64  # spans per sample on the multi-kernel L2 path (enough programs to fill a GPU)
MAX_GRID_Y = 65535  # CUDA grid limit on axis 1 (the sample axis)


@triton.jit
def _clip(v, lo, hi):
    """torch.clamp semantics for lo <= hi: NaN stays NaN (comparisons with NaN are false)."""
    v = tl.where(v < lo, lo, v)
    return tl.where(v > hi, hi, v)


@triton.jit
def _finish(x0, delta, factor, lo, hi, CLAMP: tl.constexpr):
    """x0 + delta*factor, then the optional range clamp."""
    out = x0 + delta * factor
    if CLAMP:
        out = _clip(out, lo, hi)
    return out


@triton.jit
def _l2_delta(x, g, x0, step, gnorm):
    """The stepped delta, torchattacks' order: (x + a * (g / gnorm)) - x0."""
    return (x + step * tl.div_rn(g, gnorm)) - x0


@triton.jit
def _l2_factor(sumsq_delta, eps):
    """min(eps / ||delta||, 1), with eps/t computed as eps * (1/t) like torch; NaN propagates."""
    f = tl.div_rn(1.0, tl.sqrt_rn(sumsq_delta)) * eps
    return tl.where(f > 1.0, 1.0, f)


@triton.jit
def _linf_kernel(x_ptr, g_ptr, x0_ptr, out_ptr, n, step, eps, lo, hi,
                 CLAMP: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=m, other=0.0).to(tl.float32)
    x0 = tl.load(x0_ptr + offs, mask=m, other=0.0).to(tl.float32)
    sign = tl.where(g > 0, 1.0, tl.where(g < 0, -1.0, 0.0))
    sign = tl.where(tl.abs(g) < float("inf"), sign, float("nan"))  # NaN / inf gradient: NaN step (kernels.pgd)
    delta = _clip((x + step * sign) - x0, -eps, eps)
    out = _finish(x0, delta, 1.0, lo, hi, CLAMP)
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _l2_single_kernel(x_ptr, g_ptr, x0_ptr, out_ptr, per_sample, step, eps, lo, hi,
                      CLAMP: tl.constexpr, BLOCK: tl.constexpr):
    """One program per sample; BLOCK >= per_sample."""
    base = tl.program_id(0).to(tl.int64) * per_sample
    offs = tl.arange(0, BLOCK)
    m = offs < per_sample
    x = tl.load(x_ptr + base + offs, mask=m, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + base + offs, mask=m, other=0.0).to(tl.float32)
    x0 = tl.load(x0_ptr + base + offs, mask=m, other=0.0).to(tl.float32)
    gnorm = tl.sqrt_rn(tl.sum(g * g, axis=0)) + 1e-10
    delta = tl.where(m, _l2_delta(x, g, x0, step, gnorm), 0.0)
    factor = _l2_factor(tl.sum(delta * delta, axis=0), eps)
    out = _finish(x0, delta, factor, lo, hi, CLAMP)
    tl.store(out_ptr + base + offs, out.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _row_sum(part_ptr, sample, n_spans, SPANS_P2: tl.constexpr):
    """Sum of one sample's per-span partials (a row of a (B, n_spans) fp32 buffer)."""
    j = tl.arange(0, SPANS_P2)
    return tl.sum(tl.load(part_ptr + sample * n_spans + j, mask=j < n_spans, other=0.0), axis=0)


@triton.jit
def _l2_sumsq_grad_kernel(g_ptr, part_g_ptr, per_sample, span, n_spans, BLOCK: tl.constexpr):
    span_id, sample = tl.program_id(0), tl.program_id(1)
    base = sample.to(tl.int64) * per_sample
    start = span_id.to(tl.int64) * span
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for k in range(0, span, BLOCK):
        offs = start + k + tl.arange(0, BLOCK)
        g = tl.load(g_ptr + base + offs, mask=offs < per_sample, other=0.0).to(tl.float32)
        acc += g * g
    tl.store(part_g_ptr + sample * n_spans + span_id, tl.sum(acc, axis=0))


@triton.jit
def _l2_sumsq_delta_kernel(x_ptr, g_ptr, x0_ptr, part_g_ptr, part_d_ptr, per_sample, span, n_spans, step,
                           BLOCK: tl.constexpr, SPANS_P2: tl.constexpr):
    span_id, sample = tl.program_id(0), tl.program_id(1)
    base = sample.to(tl.int64) * per_sample
    start = span_id.to(tl.int64) * span
    gnorm = tl.sqrt_rn(_row_sum(part_g_ptr, sample, n_spans, SPANS_P2)) + 1e-10
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for k in range(0, span, BLOCK):
        offs = start + k + tl.arange(0, BLOCK)
        m = offs < per_sample
        x = tl.load(x_ptr + base + offs, mask=m, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + base + offs, mask=m, other=0.0).to(tl.float32)
        x0 = tl.load(x0_ptr + base + offs, mask=m, other=0.0).to(tl.float32)
        delta = tl.where(m, _l2_delta(x, g, x0, step, gnorm), 0.0)
        acc += delta * delta
    tl.store(part_d_ptr + sample * n_spans + span_id, tl.sum(acc, axis=0))


@triton.jit
def _l2_apply_kernel(x_ptr, g_ptr, x0_ptr, out_ptr, part_g_ptr, part_d_ptr, per_sample, span, n_spans,
                     step, eps, lo, hi, CLAMP: tl.constexpr, BLOCK: tl.constexpr, SPANS_P2: tl.constexpr):
    span_id, sample = tl.program_id(0), tl.program_id(1)
    base = sample.to(tl.int64) * per_sample
    start = span_id.to(tl.int64) * span
    gnorm = tl.sqrt_rn(_row_sum(part_g_ptr, sample, n_spans, SPANS_P2)) + 1e-10
    factor = _l2_factor(_row_sum(part_d_ptr, sample, n_spans, SPANS_P2), eps)
    for k in range(0, span, BLOCK):
        offs = start + k + tl.arange(0, BLOCK)
        m = offs < per_sample
        x = tl.load(x_ptr + base + offs, mask=m, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + base + offs, mask=m, other=0.0).to(tl.float32)
        x0 = tl.load(x0_ptr + base + offs, mask=m, other=0.0).to(tl.float32)
        out = _finish(x0, _l2_delta(x, g, x0, step, gnorm), factor, lo, hi, CLAMP)
        tl.store(out_ptr + base + offs, out.to(out_ptr.dtype.element_ty), mask=m)


def pgd_step_triton(
    x: Tensor,
    grad: Tensor,
    x0: Tensor,
    out: Tensor,
    *,
    step_size: float,
    eps: float,
    norm: str,
    clamp: tuple[float, float] | None,
    max_single_elems: int = MAX_SINGLE_ELEMS,
) -> Tensor:
    """Write one PGD step of ``x`` into ``out`` (same shape and dtype; may be ``x`` itself); returns ``out``.

    ``max_single_elems`` picks the L2 strategy (samples larger than it take the three-kernel path);
    it is a parameter so tests can reach both paths with small tensors.
    """
    if x.numel() == 0:
        return out
    xc, gc, x0c = x.contiguous(), grad.contiguous(), x0.contiguous()
    dst = out if out.is_contiguous() else torch.empty_like(xc)
    lo, hi = (float(clamp[0]), float(clamp[1])) if clamp is not None else (0.0, 0.0)
    common = dict(step=float(step_size), lo=lo, hi=hi, CLAMP=clamp is not None)
    if norm == "linf":
        n = xc.numel()
        _linf_kernel[(triton.cdiv(n, LINF_BLOCK),)](
            xc, gc, x0c, dst, n, eps=float(eps), BLOCK=LINF_BLOCK, num_warps=4, **common
        )
    else:
        batch = xc.shape[0]
        per_sample = xc.numel() // batch
        for s in range(0, batch, MAX_GRID_Y):
            e = min(s + MAX_GRID_Y, batch)
            _l2(xc[s:e], gc[s:e], x0c[s:e], dst[s:e], per_sample, float(eps), max_single_elems, common)
    if dst is not out:
        out.copy_(dst)
    return out


def _l2(x, g, x0, out, per_sample, eps, max_single_elems, common):
    batch = x.shape[0]
    block = triton.next_power_of_2(per_sample)
    if per_sample <= max_single_elems:
        _l2_single_kernel[(batch,)](
            x, g, x0, out, per_sample, eps=eps, BLOCK=block, num_warps=8 if block >= 4096 else 4,
            enable_fp_fusion=False, **common,
        )
        return
    span = triton.cdiv(triton.cdiv(per_sample, TARGET_SPANS), REDUCE_BLOCK) * REDUCE_BLOCK
    n_spans = triton.cdiv(per_sample, span)
    spans_p2 = triton.next_power_of_2(n_spans)
    part_g = torch.empty((batch, n_spans), dtype=torch.float32, device=x.device)
    part_d = torch.empty_like(part_g)
    grid = (n_spans, batch)
    _l2_sumsq_grad_kernel[grid](g, part_g, per_sample, span, n_spans, BLOCK=REDUCE_BLOCK, num_warps=4)
    _l2_sumsq_delta_kernel[grid](
        x, g, x0, part_g, part_d, per_sample, span, n_spans, common["step"],
        BLOCK=REDUCE_BLOCK, SPANS_P2=spans_p2, num_warps=4, enable_fp_fusion=False,
    )
    _l2_apply_kernel[grid](
        x, g, x0, out, part_g, part_d, per_sample, span, n_spans, eps=eps,
        BLOCK=REDUCE_BLOCK, SPANS_P2=spans_p2, num_warps=4, enable_fp_fusion=False, **common,
    )
