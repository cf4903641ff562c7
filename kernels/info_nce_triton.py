"""Triton backend of the core InfoNCE row operation (``nce_rows``; semantics in ``kernels.reference``).

Why a fused kernel: the similarity matrix S = anchors @ keys^T / tau is (R, C); materialising it is the
memory bottleneck of large-batch contrastive learning. Here it only ever exists as BLOCK_M x BLOCK_N tiles
in registers / shared memory, FlashAttention-style:

* forward: one program per BLOCK_M anchor rows walks all key tiles with an online max/sum, and keeps only
  the per-row log-sum-exp plus O(R) statistics;
* backward: two kernels recompute each S tile with the *same* helper (same tile shapes, same d-chunk
  order, same a @ k^T orientation), so a false-negative threshold decision ``cos > cut`` can never flip
  between forward and backward. ``dA`` programs own anchor blocks and loop over key blocks, ``dK`` programs
  own key blocks and loop over anchor blocks (``tl.dot(tl.trans(g), a)``): no atomics, deterministic.

Precision: fp32 accumulation always. fp32 inputs use ``input_precision="ieee"`` so that ``tl.dot`` never
silently rounds to TF32 on Ampere+ (TF32 would also make ``cos > cut`` decisions differ from the fp32
reference). fp16 / bf16 inputs use tensor cores (Triton only consults ``input_precision`` for f32 x f32
dots, so the same "ieee" flag is passed for every dtype); in the backward the softmax weights are cast to
the input dtype for the second dot (as FlashAttention does with P). To keep fp16 weights out of the
subnormal range, ``grad_loss`` is factored out: per row exactly in ``dA``, and through one global scale
``max|grad_loss|`` in ``dK``.

Small batches: each loop over tiles can be split over several programs (``auto_splits``) in runs of whole
tiles, so tiles (and therefore threshold decisions) are unchanged; partial row states / gradients are
merged on the host side in O(splits * (R + C) * d).

This module imports without a GPU. Launching needs CUDA tensors, or CPU tensors with
``TRITON_INTERPRET=1`` set before triton is first imported (then one small fixed tile config is used;
bf16 is refused there because the interpreter's bf16 ``tl.dot`` is wrong).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

Tensor = torch.Tensor

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------------------------------------
# jit helpers shared by all three kernels (sharing them is what makes forward and backward tiles identical)
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def _cos_tile(a_ptr, k_ptr, offs_m, offs_n, R, C, D,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    """fp32 tile anchors[offs_m] . keys[offs_n] over the padded d, in BLOCK_D chunks in a fixed order."""
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < R
    n_ok = offs_n < C
    row_a = offs_m.to(tl.int64) * D
    row_k = offs_n.to(tl.int64) * D
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + offs_d
        d_ok = cols < D
        a = tl.load(a_ptr + row_a[:, None] + cols[None, :], mask=m_ok[:, None] & d_ok[None, :], other=0.0)
        k = tl.load(k_ptr + row_k[:, None] + cols[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        acc = tl.dot(a, tl.trans(k), acc, input_precision=PRECISION)
    return acc


@triton.jit
def _tile_masks(cos, offs_n, C, self_idx, pos_idx, la, lk, cut,
                HAS_LABELS: tl.constexpr, HAS_CUT: tl.constexpr, ATTRACT: tl.constexpr):
    """Column roles of a tile from O(R + C) vectors: (is_pos, is_neg, fn, in_denominator, in_positive)."""
    cols = offs_n[None, :]
    col_ok = cols < C
    not_self = cols != self_idx[:, None]
    is_pos = (cols == pos_idx[:, None]) & col_ok
    is_neg = col_ok & not_self & (cols != pos_idx[:, None])
    if HAS_LABELS:
        hit = la[:, None] == lk[None, :]
        if HAS_CUT:
            hit = hit | (cos > cut[:, None])
    elif HAS_CUT:
        hit = cos > cut[:, None]
    else:
        hit = cols < 0  # no detector: nothing is a false negative
    fn = hit & is_neg
    if ATTRACT:
        in_d = col_ok & not_self
        in_p = is_pos | fn
    else:
        in_d = col_ok & not_self & (~fn)
        in_p = is_pos
    return is_pos, is_neg, fn, in_d, in_p


@triton.jit
def _row_vectors(self_ptr, pos_ptr, la_ptr, cut_ptr, offs_m, R,
                 HAS_LABELS: tl.constexpr, HAS_CUT: tl.constexpr):
    """Per-row inputs of an anchor block; padded rows get self = pos = -1 (they are never stored).

    Column indices are compared in int32 (C < 2**31): int64 tiles would double the registers of every mask.
    Labels stay int64 so that any label values compare exactly.
    """
    m_ok = offs_m < R
    self_idx = tl.load(self_ptr + offs_m, mask=m_ok, other=-1).to(tl.int32)
    pos_idx = tl.load(pos_ptr + offs_m, mask=m_ok, other=-1).to(tl.int32)
    la = self_idx.to(tl.int64)
    cut = offs_m.to(tl.float32)
    if HAS_LABELS:
        la = tl.load(la_ptr + offs_m, mask=m_ok, other=0)
    if HAS_CUT:
        cut = tl.load(cut_ptr + offs_m, mask=m_ok, other=float("inf"))
    return self_idx, pos_idx, la, cut


# ----------------------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def _nce_fwd_kernel(a_ptr, k_ptr, inv_temp_ptr, self_ptr, pos_ptr, la_ptr, lk_ptr, cut_ptr, sla_ptr, slk_ptr,
                    loss_ptr, lse_ptr, stats_ptr, part_ptr, R, C, D, TILES_PER_SPLIT,
                    HAS_LABELS: tl.constexpr, HAS_CUT: tl.constexpr, HAS_STAT: tl.constexpr,
                    ATTRACT: tl.constexpr, SPLIT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    """Program (row block, split): the split's run of key tiles. Unsplit, it finishes the rows itself;
    split, it writes its 8 partial row states to ``part`` (SPLITS, 8, R) for ``_combine_partials``."""
    pid = tl.program_id(0)
    pid_s = tl.program_id(1)
    n_lo = pid_s * TILES_PER_SPLIT * BLOCK_N
    n_hi = tl.minimum(n_lo + TILES_PER_SPLIT * BLOCK_N, C)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < R
    inv_temp = tl.load(inv_temp_ptr)
    self_idx, pos_idx, la, cut = _row_vectors(self_ptr, pos_ptr, la_ptr, cut_ptr, offs_m, R,
                                              HAS_LABELS, HAS_CUT)
    sla = self_idx.to(tl.int64)
    if HAS_STAT:
        sla = tl.load(sla_ptr + offs_m, mask=m_ok, other=0)

    neg_inf = float("-inf")
    m_i = tl.full((BLOCK_M,), neg_inf, dtype=tl.float32)  # running max over D(r)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)  # running sum of exp(S - m_i) over D(r)
    pos_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)  # sum of S over P(r)
    s_pos = tl.zeros((BLOCK_M,), dtype=tl.float32)  # S at the positive
    best_neg = tl.full((BLOCK_M,), neg_inf, dtype=tl.float32)  # max S over non-FN negatives
    n_fn = tl.zeros((BLOCK_M,), dtype=tl.float32)
    n_correct = tl.zeros((BLOCK_M,), dtype=tl.float32)
    n_possible = tl.zeros((BLOCK_M,), dtype=tl.float32)

    for n0 in range(n_lo, n_hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < C
        cos = _cos_tile(a_ptr, k_ptr, offs_m, offs_n, R, C, D, BLOCK_M, BLOCK_N, BLOCK_D, PRECISION)
        s = cos * inv_temp
        lk = offs_n
        if HAS_LABELS:
            lk = tl.load(lk_ptr + offs_n, mask=n_ok, other=0)
        is_pos, is_neg, fn, in_d, in_p = _tile_masks(cos, offs_n, C, self_idx, pos_idx, la, lk, cut,
                                                     HAS_LABELS, HAS_CUT, ATTRACT)
        # online log-sum-exp; a fully masked tile (or row so far) keeps m = -inf: shift by 0 then, so
        # exp(-inf - -inf) = NaN never happens
        s_d = tl.where(in_d, s, neg_inf)
        m_new = tl.maximum(m_i, tl.max(s_d, axis=1))
        m_safe = tl.where(m_new == neg_inf, 0.0, m_new)
        l_i = l_i * tl.exp(m_i - m_safe) + tl.sum(tl.exp(s_d - m_safe[:, None]), axis=1)
        m_i = m_new

        pos_sum += tl.sum(tl.where(in_p, s, 0.0), axis=1)
        s_pos += tl.sum(tl.where(is_pos, s, 0.0), axis=1)
        best_neg = tl.maximum(best_neg, tl.max(tl.where(is_neg & (~fn), s, neg_inf), axis=1))
        n_fn += tl.sum(fn.to(tl.float32), axis=1)
        if HAS_STAT:
            slk = tl.load(slk_ptr + offs_n, mask=n_ok, other=0)
            same = (sla[:, None] == slk[None, :]) & is_neg
            n_correct += tl.sum((same & fn).to(tl.float32), axis=1)
            n_possible += tl.sum(same.to(tl.float32), axis=1)

    if SPLIT:
        part = part_ptr + pid_s.to(tl.int64) * 8 * R + offs_m
        tl.store(part + 0 * R, m_i, mask=m_ok)
        tl.store(part + 1 * R, l_i, mask=m_ok)
        tl.store(part + 2 * R, pos_sum, mask=m_ok)
        tl.store(part + 3 * R, s_pos, mask=m_ok)
        tl.store(part + 4 * R, best_neg, mask=m_ok)
        tl.store(part + 5 * R, n_fn, mask=m_ok)
        tl.store(part + 6 * R, n_correct, mask=m_ok)
        tl.store(part + 7 * R, n_possible, mask=m_ok)
    else:
        lse = m_i + tl.log(l_i)
        if ATTRACT:
            npos = 1.0 + n_fn
        else:
            npos = tl.full((BLOCK_M,), 1.0, dtype=tl.float32)
        loss = lse - pos_sum / npos
        tl.store(loss_ptr + offs_m, loss, mask=m_ok)
        tl.store(lse_ptr + offs_m, lse, mask=m_ok)
        st = stats_ptr + offs_m.to(tl.int64) * 4
        tl.store(st + 0, (s_pos >= best_neg).to(tl.float32), mask=m_ok)
        tl.store(st + 1, n_fn, mask=m_ok)
        tl.store(st + 2, n_correct, mask=m_ok)
        tl.store(st + 3, n_possible, mask=m_ok)


@triton.jit
def _unit_grad_tile(cos, inv_temp, lse, npos, offs_n, C, self_idx, pos_idx, la, lk, cut,
                    HAS_LABELS: tl.constexpr, HAS_CUT: tl.constexpr, ATTRACT: tl.constexpr):
    """G / grad_loss for one tile: softmax over D(r) minus the uniform weight on P(r)."""
    s = cos * inv_temp
    is_pos, is_neg, fn, in_d, in_p = _tile_masks(cos, offs_n, C, self_idx, pos_idx, la, lk, cut,
                                                 HAS_LABELS, HAS_CUT, ATTRACT)
    p = tl.where(in_d, tl.exp(s - lse[:, None]), 0.0)
    return p - tl.where(in_p, 1.0 / npos[:, None], 0.0)


@triton.jit
def _nce_bwd_anchor_kernel(a_ptr, k_ptr, inv_temp_ptr, self_ptr, pos_ptr, la_ptr, lk_ptr, cut_ptr,
                           lse_ptr, npos_ptr, gl_ptr, da_ptr, R, C, D, TILES_PER_SPLIT,
                           HAS_LABELS: tl.constexpr, HAS_CUT: tl.constexpr, ATTRACT: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                           BLOCK_DO: tl.constexpr, PRECISION: tl.constexpr):
    """dA[rows, d-chunk] = inv_temp * grad_loss[r] * sum over key tiles of W_tile @ keys[:, d-chunk].

    Split s covers a run of key tiles and writes its partial sum to ``da[s]`` (the caller sums the splits).
    """
    pid_m = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_s = tl.program_id(2)
    n_lo = pid_s * TILES_PER_SPLIT * BLOCK_N
    n_hi = tl.minimum(n_lo + TILES_PER_SPLIT * BLOCK_N, C)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < R
    offs_do = pid_d * BLOCK_DO + tl.arange(0, BLOCK_DO)
    do_ok = offs_do < D
    inv_temp = tl.load(inv_temp_ptr)
    self_idx, pos_idx, la, cut = _row_vectors(self_ptr, pos_ptr, la_ptr, cut_ptr, offs_m, R,
                                              HAS_LABELS, HAS_CUT)
    lse = tl.load(lse_ptr + offs_m, mask=m_ok, other=0.0)
    npos = tl.load(npos_ptr + offs_m, mask=m_ok, other=1.0)
    gl = tl.load(gl_ptr + offs_m, mask=m_ok, other=0.0)

    acc = tl.zeros((BLOCK_M, BLOCK_DO), dtype=tl.float32)
    for n0 in range(n_lo, n_hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < C
        cos = _cos_tile(a_ptr, k_ptr, offs_m, offs_n, R, C, D, BLOCK_M, BLOCK_N, BLOCK_D, PRECISION)
        lk = offs_n
        if HAS_LABELS:
            lk = tl.load(lk_ptr + offs_n, mask=n_ok, other=0)
        w = _unit_grad_tile(cos, inv_temp, lse, npos, offs_n, C, self_idx, pos_idx, la, lk, cut,
                            HAS_LABELS, HAS_CUT, ATTRACT)
        k_out = tl.load(k_ptr + offs_n.to(tl.int64)[:, None] * D + offs_do[None, :],
                        mask=n_ok[:, None] & do_ok[None, :], other=0.0)
        acc = tl.dot(w.to(k_out.dtype), k_out, acc, input_precision=PRECISION)
    da = acc * (gl * inv_temp)[:, None]
    da_ptr += pid_s.to(tl.int64) * R * D
    tl.store(da_ptr + offs_m.to(tl.int64)[:, None] * D + offs_do[None, :], da,
             mask=m_ok[:, None] & do_ok[None, :])


@triton.jit
def _nce_bwd_key_kernel(a_ptr, k_ptr, inv_temp_ptr, self_ptr, pos_ptr, la_ptr, lk_ptr, cut_ptr,
                        lse_ptr, npos_ptr, gl_ptr, gscale_ptr, dk_ptr, R, C, D, TILES_PER_SPLIT,
                        HAS_LABELS: tl.constexpr, HAS_CUT: tl.constexpr, ATTRACT: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                        BLOCK_DO: tl.constexpr, PRECISION: tl.constexpr):
    """dK[keys, d-chunk] = inv_temp * sum over anchor tiles of G_tile^T @ anchors[:, d-chunk].

    The S tile is computed as a @ k^T exactly as in the forward (not k @ a^T), then transposed in the dot.
    Split s covers a run of anchor tiles and writes its partial sum to ``dk[s]``.
    """
    pid_n = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_s = tl.program_id(2)
    m_lo = pid_s * TILES_PER_SPLIT * BLOCK_M
    m_hi = tl.minimum(m_lo + TILES_PER_SPLIT * BLOCK_M, R)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < C
    offs_do = pid_d * BLOCK_DO + tl.arange(0, BLOCK_DO)
    do_ok = offs_do < D
    inv_temp = tl.load(inv_temp_ptr)
    gscale = tl.load(gscale_ptr)
    lk = offs_n
    if HAS_LABELS:
        lk = tl.load(lk_ptr + offs_n, mask=n_ok, other=0)

    acc = tl.zeros((BLOCK_N, BLOCK_DO), dtype=tl.float32)
    for m0 in range(m_lo, m_hi, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        m_ok = offs_m < R
        self_idx, pos_idx, la, cut = _row_vectors(self_ptr, pos_ptr, la_ptr, cut_ptr, offs_m, R,
                                                  HAS_LABELS, HAS_CUT)
        lse = tl.load(lse_ptr + offs_m, mask=m_ok, other=0.0)
        npos = tl.load(npos_ptr + offs_m, mask=m_ok, other=1.0)
        gl = tl.load(gl_ptr + offs_m, mask=m_ok, other=0.0)
        cos = _cos_tile(a_ptr, k_ptr, offs_m, offs_n, R, C, D, BLOCK_M, BLOCK_N, BLOCK_D, PRECISION)
        w = _unit_grad_tile(cos, inv_temp, lse, npos, offs_n, C, self_idx, pos_idx, la, lk, cut,
                            HAS_LABELS, HAS_CUT, ATTRACT)
        w = tl.where(m_ok[:, None], w * (gl / gscale)[:, None], 0.0)
        a_out = tl.load(a_ptr + offs_m.to(tl.int64)[:, None] * D + offs_do[None, :],
                        mask=m_ok[:, None] & do_ok[None, :], other=0.0)
        acc = tl.dot(tl.trans(w.to(a_out.dtype)), a_out, acc, input_precision=PRECISION)
    dk = acc * (gscale * inv_temp)
    dk_ptr += pid_s.to(tl.int64) * C * D
    tl.store(dk_ptr + offs_n.to(tl.int64)[:, None] * D + offs_do[None, :], dk,
             mask=n_ok[:, None] & do_ok[None, :])


# ----------------------------------------------------------------------------------------------------------
# launch configuration
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TileConfig:
    """Tile shapes shared by the forward and both backward kernels (they must agree, see module doc)."""

    block_m: int
    block_n: int
    block_d: int  # d-chunk of the S = a @ k^T reduction
    block_do: int  # d-chunk of the gradient outputs (second grid axis of the backward)
    num_warps: int
    num_stages: int


def _interpreted() -> bool:
    """True when triton was imported with TRITON_INTERPRET=1 (kernels then run on CPU tensors)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_nce_fwd_kernel, InterpretedFunction)


def pick_config(d: int, dtype: torch.dtype, interpreted: bool) -> TileConfig:
    """Tile shapes by embedding size and dtype.

    Interpreter: one small fixed config (16-wide tiles exercise the multi-tile and padding paths on tiny
    inputs; the interpreter cannot autotune). GPU: not timed (no GPU was available), but chosen by compiling
    the kernels ahead of time for sm_80 and sm_90 and reading ptxas' register / spill report (see the test
    ``test_gpu_kernels_compile_without_spills``):

    * fp16 / bf16 (tensor cores, wgmma on Hopper): 64 x 64 tiles, S reduced in 64-wide d chunks, gradient
      outputs in chunks of up to 256, 8 warps: <= 255 registers and no spills, 16-64 KiB shared memory.
      4 warps or 128-wide d chunks spill in the forward.
    * fp32 (exact "ieee" FMA dots, no tensor cores): 32 x 32 tiles, 32-wide d chunks, outputs in chunks
      of 64, 4 warps: no spills (64 x 64 fp32 tiles spill hundreds of bytes). Smaller row blocks also give
      twice the programs for small batches.

    d beyond the output chunk is split over the backward's second grid axis (each chunk recomputes S, the
    FlashAttention trade-off).
    """
    if interpreted:
        return TileConfig(block_m=16, block_n=16, block_d=16, block_do=32, num_warps=4, num_stages=1)
    d_pad = max(16, triton.next_power_of_2(d))
    if dtype == torch.float32:
        return TileConfig(block_m=32, block_n=32, block_d=min(d_pad, 32), block_do=min(d_pad, 64),
                          num_warps=4, num_stages=2)
    return TileConfig(block_m=64, block_n=64, block_d=min(d_pad, 64), block_do=min(d_pad, 256), num_warps=8,
                      num_stages=2)


# ----------------------------------------------------------------------------------------------------------
# argument checks (cheap: shapes / dtypes / devices only, never a device sync)
# ----------------------------------------------------------------------------------------------------------
def _check_vec(name: str, t: Tensor, n: int, device: torch.device, dtype: torch.dtype | None) -> Tensor:
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
    if t.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, anchors on {device}")
    if dtype is not None and t.dtype != dtype:
        raise ValueError(f"{name} must be {dtype}, got {t.dtype}")
    return t.contiguous()


def _check_pair(name_a: str, ta: Tensor | None, name_k: str, tk: Tensor | None, R: int, C: int,
                device: torch.device) -> tuple[Tensor | None, Tensor | None]:
    if (ta is None) != (tk is None):
        raise ValueError(f"{name_a} and {name_k} must be given together (one is None)")
    if ta is None:
        return None, None
    return (_check_vec(name_a, ta, R, device, torch.int64), _check_vec(name_k, tk, C, device, torch.int64))


def _check_common(anchors, keys, inv_temp, self_idx, pos_idx, labels_a, labels_k, cut):
    for name, t in (("anchors", anchors), ("keys", keys)):
        if not isinstance(t, Tensor) or t.dim() != 2:
            raise ValueError(f"{name} must be a 2-D tensor (rows, d), got "
                             f"{tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
        if t.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous")
    if anchors.dtype != keys.dtype:
        raise ValueError(f"anchors ({anchors.dtype}) and keys ({keys.dtype}) must share a dtype")
    if anchors.device != keys.device:
        raise ValueError(f"anchors ({anchors.device}) and keys ({keys.device}) must share a device")
    if anchors.shape[1] != keys.shape[1]:
        raise ValueError(f"anchors d={anchors.shape[1]} != keys d={keys.shape[1]}")
    if keys.shape[0] == 0 or anchors.shape[1] == 0:
        raise ValueError(f"keys must have at least one row and d >= 1, got keys {tuple(keys.shape)}")
    dev = anchors.device
    if dev.type == "cpu" and not _interpreted():
        raise ValueError("the triton InfoNCE backend got CPU tensors but triton is not in interpreter mode: "
                         "set TRITON_INTERPRET=1 before importing triton, or use CUDA tensors")
    if dev.type == "cpu" and anchors.dtype == torch.bfloat16:
        raise ValueError("bfloat16 is not supported under TRITON_INTERPRET=1 (the interpreter's bf16 tl.dot "
                         "returns garbage): use float32/float16 on CPU, or CUDA tensors")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"the triton InfoNCE backend needs CUDA (or CPU under TRITON_INTERPRET=1), "
                         f"got {dev}")
    R, C = anchors.shape[0], keys.shape[0]
    if not isinstance(inv_temp, Tensor) or inv_temp.numel() != 1:
        raise ValueError("inv_temp must be a one-element (0-dim) tensor")
    inv_temp = inv_temp.detach().to(device=dev, dtype=torch.float32).reshape(1)
    self_idx = _check_vec("self_idx", self_idx, R, dev, torch.int64)
    pos_idx = _check_vec("pos_idx", pos_idx, R, dev, torch.int64)
    labels_a, labels_k = _check_pair("labels_a", labels_a, "labels_k", labels_k, R, C, dev)
    if cut is not None:
        cut = _check_vec("cut", cut, R, dev, None).to(torch.float32)
    return inv_temp, self_idx, pos_idx, labels_a, labels_k, cut


def kernel_meta(cfg: TileConfig, *, has_labels: bool, has_cut: bool, attract: bool) -> dict:
    """Compile-time arguments shared by the three kernels (one place, so their tiles cannot diverge)."""
    return dict(HAS_LABELS=has_labels, HAS_CUT=has_cut, ATTRACT=bool(attract), BLOCK_M=cfg.block_m,
                BLOCK_N=cfg.block_n, BLOCK_D=cfg.block_d, PRECISION="ieee", num_warps=cfg.num_warps,
                num_stages=cfg.num_stages)


# ----------------------------------------------------------------------------------------------------------
# splitting the tile loop: parallelism for small batches
# ----------------------------------------------------------------------------------------------------------
_SM_COUNT: dict[int, int] = {}


def auto_splits(n_programs: int, n_loop_tiles: int, device: torch.device) -> int:
    """How many programs share one row block's (or key block's) loop over tiles.

    A SimCLR batch of 512 gives 1024 anchor rows = 16 programs of 64 rows: a GPU with 132 SMs would sit
    mostly idle. Splitting the loop into runs of whole tiles (tile boundaries and dot order unchanged, so
    every S tile is bit-identical to the unsplit one) fills about two waves; partial results are O(R) for
    the forward and O(splits * (R + C) * d) for the backward, combined by the caller side. At most 8.
    Under the interpreter: 2 whenever there are two tiles, so the small tests exercise the split path.
    """
    if device.type != "cuda":
        return min(2, n_loop_tiles)
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    want = triton.cdiv(2 * _SM_COUNT[idx], max(1, n_programs))
    return max(1, min(8, n_loop_tiles, want))


def _tiles_per_split(n_loop_tiles: int, splits: int) -> tuple[int, int]:
    """(tiles per split, splits actually needed) for at most ``splits`` runs of whole tiles."""
    if not isinstance(splits, int) or isinstance(splits, bool) or splits < 1:
        raise ValueError(f"splits must be a positive int, got {splits!r}")
    per = triton.cdiv(n_loop_tiles, splits)
    return per, triton.cdiv(n_loop_tiles, per)


def _combine_partials(part: Tensor, attract: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Merge per-split row states (SPLITS, 8, R) into (loss, lse, stats) as one program would, by the
    online log-sum-exp rule (a split with no column of D(r) has m = -inf and weight exp(-inf) = 0)."""
    m, l, pos_sum, s_pos, best_neg, n_fn, n_correct, n_possible = part.unbind(1)
    m_all = m.amax(0)  # finite: the positive is in D(r) and in exactly one split
    lse = m_all + torch.log((l * torch.exp(m - m_all)).sum(0))
    n_fn = n_fn.sum(0)
    npos = 1.0 + n_fn if attract else torch.ones_like(lse)
    loss = lse - pos_sum.sum(0) / npos
    top1 = (s_pos.sum(0) >= best_neg.amax(0)).float()
    stats = torch.stack([top1, n_fn, n_correct.sum(0), n_possible.sum(0)], dim=1)
    return loss, lse, stats


# ----------------------------------------------------------------------------------------------------------
# public backend API (contract in kernels/info_nce.py dispatch)
# ----------------------------------------------------------------------------------------------------------
def nce_forward(anchors: Tensor, keys: Tensor, inv_temp: Tensor, self_idx: Tensor, pos_idx: Tensor,
                labels_a: Tensor | None, labels_k: Tensor | None, cut: Tensor | None, attract: bool,
                stat_labels_a: Tensor | None, stat_labels_k: Tensor | None, *,
                splits: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Per-row InfoNCE of anchors (R, d) against keys (C, d) without materialising S.

    Returns ``(loss (R,), lse (R,), stats (R, 4))`` in fp32; stats columns are
    ``[pos_top1, fn_found, fn_correct, fn_possible]`` (the last two 0 without stat labels).
    ``splits`` (default: ``auto_splits``) divides each row block's key loop over that many programs.
    """
    inv_temp, self_idx, pos_idx, labels_a, labels_k, cut = _check_common(
        anchors, keys, inv_temp, self_idx, pos_idx, labels_a, labels_k, cut)
    R, d = anchors.shape
    C = keys.shape[0]
    dev = anchors.device
    stat_labels_a, stat_labels_k = _check_pair("stat_labels_a", stat_labels_a, "stat_labels_k", stat_labels_k,
                                               R, C, dev)
    if R == 0:
        z = torch.zeros(0, device=dev, dtype=torch.float32)
        return z, z.clone(), z.new_zeros(0, 4)
    cfg = pick_config(d, anchors.dtype, dev.type == "cpu")
    row_blocks = triton.cdiv(R, cfg.block_m)
    n_tiles = triton.cdiv(C, cfg.block_n)
    if splits is None:
        splits = auto_splits(row_blocks, n_tiles, dev)
    per, splits = _tiles_per_split(n_tiles, splits)
    loss = torch.empty(R, device=dev, dtype=torch.float32)
    lse = torch.empty(R, device=dev, dtype=torch.float32)
    stats = torch.empty(R, 4, device=dev, dtype=torch.float32)
    part = torch.empty(splits, 8, R, device=dev, dtype=torch.float32) if splits > 1 else loss
    dummy = self_idx  # stands in for absent optional vectors; the constexpr flags prune every use
    _nce_fwd_kernel[(row_blocks, splits)](
        anchors, keys, inv_temp, self_idx, pos_idx,
        dummy if labels_a is None else labels_a, dummy if labels_k is None else labels_k,
        inv_temp if cut is None else cut,
        dummy if stat_labels_a is None else stat_labels_a, dummy if stat_labels_k is None else stat_labels_k,
        loss, lse, stats, part, R, C, d, per, HAS_STAT=stat_labels_a is not None, SPLIT=splits > 1,
        **kernel_meta(cfg, has_labels=labels_a is not None, has_cut=cut is not None, attract=attract),
    )
    if splits > 1:
        return _combine_partials(part, bool(attract))
    return loss, lse, stats


def nce_backward(anchors: Tensor, keys: Tensor, inv_temp: Tensor, self_idx: Tensor, pos_idx: Tensor,
                 labels_a: Tensor | None, labels_k: Tensor | None, cut: Tensor | None, attract: bool,
                 lse: Tensor, npos: Tensor, grad_loss: Tensor, *,
                 splits: int | None = None) -> tuple[Tensor, Tensor]:
    """Gradients of ``sum_r grad_loss[r] * loss[r]`` w.r.t. anchors and keys, recomputing S tile by tile.

    ``lse`` comes from ``nce_forward``; ``npos`` = |P(r)| = 1 + (fn_found if attract else 0).
    Returns ``(d_anchors (R, d), d_keys (C, d))`` in fp32. The inv_temp gradient is left to the caller.
    ``splits`` (default: ``auto_splits`` per kernel) divides each block's tile loop over that many programs.
    """
    inv_temp, self_idx, pos_idx, labels_a, labels_k, cut = _check_common(
        anchors, keys, inv_temp, self_idx, pos_idx, labels_a, labels_k, cut)
    R, d = anchors.shape
    C = keys.shape[0]
    dev = anchors.device
    lse = _check_vec("lse", lse, R, dev, None).to(torch.float32)
    npos = _check_vec("npos", npos, R, dev, None).to(torch.float32)
    grad_loss = _check_vec("grad_loss", grad_loss, R, dev, None).to(torch.float32)
    if R == 0:
        return torch.zeros(0, d, device=dev), torch.zeros(C, d, device=dev)
    # one global scale keeps fp16 weights G / scale in range in the key kernel (see module doc)
    gscale = grad_loss.abs().amax().clamp_min(torch.finfo(torch.float32).tiny).reshape(1)
    cfg = pick_config(d, anchors.dtype, dev.type == "cpu")
    dummy = self_idx
    flags = dict(has_labels=labels_a is not None, has_cut=cut is not None, attract=attract)
    common = dict(BLOCK_DO=cfg.block_do, **kernel_meta(cfg, **flags))
    la = dummy if labels_a is None else labels_a
    lk = dummy if labels_k is None else labels_k
    cut_arg = inv_temp if cut is None else cut
    d_chunks = triton.cdiv(d, cfg.block_do)
    row_blocks, key_blocks = triton.cdiv(R, cfg.block_m), triton.cdiv(C, cfg.block_n)

    s_a = splits if splits is not None else auto_splits(row_blocks * d_chunks, key_blocks, dev)
    per_a, s_a = _tiles_per_split(key_blocks, s_a)
    d_anchors = torch.empty(s_a, R, d, device=dev, dtype=torch.float32)
    _nce_bwd_anchor_kernel[(row_blocks, d_chunks, s_a)](
        anchors, keys, inv_temp, self_idx, pos_idx, la, lk, cut_arg, lse, npos, grad_loss, d_anchors,
        R, C, d, per_a, **common)

    s_k = splits if splits is not None else auto_splits(key_blocks * d_chunks, row_blocks, dev)
    per_k, s_k = _tiles_per_split(row_blocks, s_k)
    d_keys = torch.empty(s_k, C, d, device=dev, dtype=torch.float32)
    _nce_bwd_key_kernel[(key_blocks, d_chunks, s_k)](
        anchors, keys, inv_temp, self_idx, pos_idx, la, lk, cut_arg, lse, npos, grad_loss, gscale, d_keys,
        R, C, d, per_k, **common)
    return (d_anchors[0] if s_a == 1 else d_anchors.sum(0)), (d_keys[0] if s_k == 1 else d_keys.sum(0))
