"""Triton backend of the core InfoNCE row operation (``nce_rows``; semantics in ``kernels.reference``).

Why a fused kernel: the similarity matrix S = anchors @ keys^T / tau is (R, C); materialising it is the
memory bottleneck of large-batch contrastive learning. Here it only ever exists as BLOCK_M x BLOCK_N tiles
on chip, FlashAttention-style (design, dtype policy and memory contract: ``docs/kernels.md``):

* forward: one program per BLOCK_M anchor rows holds its anchor block (d <= 256) for the whole key sweep,
  streams key tiles through TMA descriptors and keeps an online log-sum-exp in base 2 (``exp2`` with the
  scale 1/tau * log2(e) folded into one multiply). The top-k false-negative detector runs inside the same
  sweep: a running per-row top-k (k <= ``MAX_TOPK``, a compile-time constant), updated only for rows whose
  tile holds a candidate above the current k-th value; a value evicted from it joins the log-sum-exp then,
  so "eliminate" stays exact in one pass. The per-row cut-off it ends with is stored for the backward.
* backward (default): one program per key block recomputes each S tile *once*, accumulates dK in
  registers and adds dA with fp32 atomics. ``deterministic=True`` instead runs two kernels (dA programs
  own anchor blocks, dK programs own key blocks: no atomics, S computed twice).

Every kernel computes S through ``_cos_tile`` with one ``TileConfig`` (same tile shapes, warps, d-chunk
order, a @ k^T orientation), so the fp32 accumulator on which a mask ``cos > cut`` is decided is the same
bits in the forward and in both backward variants: a false-negative decision cannot flip between passes.

Precision (``precision`` argument, resolved by ``kernels.info_nce``): the dot operands are the rows rounded
to bf16 or fp16 (tensor cores, fp32 accumulation) or kept in fp32 ("tf32": tensor cores with a 10-bit
mantissa; "ieee": exact fp32 FMA dots). Log-sum-exp, masks, statistics and gradient accumulation are
fp32 in every mode. In the backward the softmax weights are cast to the operand dtype for the second dot
(as FlashAttention does with P); to keep fp16 weights out of the subnormal range the upstream gradient
is factored out (per row in dA, through one global scale ``max|grad_loss|`` in dK).

Tile shapes are tuned once per (device, d, precision, flags) over a few configs on CUDA (``tile_config``).
Under ``TRITON_INTERPRET=1`` (CPU tensors) one small config is used, and bf16 dots run as exact fp32 dots
of the bf16 values (the interpreter cannot multiply bf16; on a GPU the same kernels use tensor cores).
Small batches split each loop over several programs (``auto_splits``) in runs of whole tiles.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

Tensor = torch.Tensor

MAX_TOPK = 16  # largest in-kernel top-k (its running list lives in registers)
PRECISIONS = ("bf16", "fp16", "tf32", "ieee")
DOT_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16, "tf32": torch.float32, "ieee": torch.float32}
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


# ----------------------------------------------------------------------------------------------------------
# jit helpers shared by every kernel (sharing them is what makes forward and backward tiles identical)
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def _dot(x, y, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc + x @ y with fp32 accumulation. UPCAST: the interpreter's stand-in for a bf16 tensor-core dot."""
    if UPCAST:
        return tl.dot(x.to(tl.float32), y.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(x, y, acc, input_precision=PRECISION)


@triton.jit
def _cos_tile(a_res, k_res, a_desc, k_desc, m0, n0, D, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              BLOCK_D: tl.constexpr, RESIDENT: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """fp32 tile anchors[m0:+BLOCK_M] . keys[n0:+BLOCK_N]. RESIDENT: both blocks already loaded over the
    whole padded d (one dot); otherwise both are streamed in BLOCK_D chunks, always in the same order."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if RESIDENT:
        acc = _dot(a_res, tl.trans(k_res), acc, PRECISION, UPCAST)
    else:
        for d0 in range(0, D, BLOCK_D):
            a = a_desc.load([m0, d0])
            k = k_desc.load([n0, d0])
            acc = _dot(a, tl.trans(k), acc, PRECISION, UPCAST)
    return acc


@triton.jit
def _row_vectors(self_ptr, pos_ptr, la_ptr, cut_ptr, offs_m, R, HAS_LABELS: tl.constexpr, HAS_CUT: tl.constexpr):
    """Per-row inputs of an anchor block; padded rows get self = pos = -1 (they are never stored).

    Column indices and labels are compared in int32 (C < 2**31; labels are int32 on this backend): int64
    tiles would double the registers of every mask. Without a cut the cut is -inf.
    """
    m_ok = offs_m < R
    self_idx = tl.load(self_ptr + offs_m, mask=m_ok, other=-1).to(tl.int32)
    pos_idx = tl.load(pos_ptr + offs_m, mask=m_ok, other=-1).to(tl.int32)
    la = self_idx
    cut = tl.full(offs_m.shape, float("-inf"), dtype=tl.float32)
    if HAS_LABELS:
        la = tl.load(la_ptr + offs_m, mask=m_ok, other=0)
    if HAS_CUT:
        cut = tl.load(cut_ptr + offs_m, mask=m_ok, other=float("inf"))
    return self_idx, pos_idx, la, cut


@triton.jit
def _columns(offs_n, C, self_idx, pos_idx):
    """Column roles of a tile: (in_row = every column of D(r) before FN removal, is_pos, is_neg)."""
    cols = offs_n[None, :]
    in_row = (cols < C) & (cols != self_idx[:, None])
    is_pos = in_row & (cols == pos_idx[:, None])
    is_neg = in_row & (cols != pos_idx[:, None])
    return in_row, is_pos, is_neg


@triton.jit
def _label_fn(is_neg, la, lk_ptr, offs_n, C, HAS_LABELS: tl.constexpr):
    """Negatives whose oracle labels match the anchor's (all False without labels)."""
    if HAS_LABELS:
        lk = tl.load(lk_ptr + offs_n, mask=offs_n < C, other=0)
        return is_neg & (la[:, None] == lk[None, :])
    else:
        return is_neg & (offs_n[None, :] < 0)


@triton.jit
def _fold(mc, l2, v, scale2):
    """Add one cosine ``v`` per row (-inf: none) to the online sum of exp(S): ``mc`` is the running max
    cosine, ``l2`` the sum of exp2((cos - mc) * scale2) with scale2 = log2(e) / tau."""
    m_new = tl.maximum(mc, v)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    return m_new, l2 * tl.exp2((mc - m_safe) * scale2) + tl.exp2((v - m_safe) * scale2)


@triton.jit
def _fold_tile(mc, l2, c, scale2):
    """``_fold`` for a whole tile of cosines (rows x cols, -inf = absent). A fully absent row keeps
    mc = -inf and shifts by 0, so exp2(-inf - -inf) = NaN never happens. The max itself contributes
    exp2(0) = 1 exactly, so a row whose D(r) is only its positive gets loss 0 exactly."""
    m_new = tl.maximum(mc, tl.max(c, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    return m_new, l2 * tl.exp2((mc - m_safe) * scale2) + tl.sum(tl.exp2((c - m_safe[:, None]) * scale2), axis=1)


@triton.jit
def _labels_match(la, lk_ptr, idx, HAS_LABELS: tl.constexpr):
    """la == labels_k[idx] where idx >= 0 (False elsewhere, and everywhere without labels): the label flag
    of top-k list entries, looked up by key index instead of being carried through the sweep."""
    if HAS_LABELS:
        return (idx >= 0) & (la == tl.load(lk_ptr + idx, mask=idx >= 0, other=0))
    else:
        return idx < -1


# ----------------------------------------------------------------------------------------------------------
# forward
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def _row_sum(x):
    """Sum over the list axis of a (rows, k) block; a (rows,) vector passes through (one value per row)."""
    if len(x.shape) == 2:
        return tl.sum(x, axis=1)
    else:
        return x


@triton.jit
def _row_max(x):
    if len(x.shape) == 2:
        return tl.max(x, axis=1)
    else:
        return x


@triton.jit
def _leave(val, valid, fn, sla, slk_ptr, idx, scale2, m2, l2, pos_cos, best, n_fn, n_correct, n_possible,
           ATTRACT: tl.constexpr, STATS: tl.constexpr, HAS_STAT: tl.constexpr):
    """Account for negatives leaving the top-k list (one per row when evicted, or the whole (rows, k) list
    at the end): ``fn`` marks detected false negatives among them, ``valid`` the entries that exist."""
    neg_inf = float("-inf")
    fn = valid & fn
    keep = valid & ~fn
    v = tl.where(valid if ATTRACT else keep, val, neg_inf)
    if len(v.shape) == 2:
        m2, l2 = _fold_tile(m2, l2, v, scale2)
    else:
        m2, l2 = _fold(m2, l2, v, scale2)
    if ATTRACT:
        pos_cos += _row_sum(tl.where(fn, val, 0.0))
    if STATS:
        best = tl.maximum(best, _row_max(tl.where(keep, val, neg_inf)))
    if STATS or ATTRACT:
        n_fn += _row_sum(fn.to(tl.float32))
    if HAS_STAT:
        same = valid & _labels_match(sla, slk_ptr, idx, True)
        n_possible += _row_sum(same.to(tl.float32))
        n_correct += _row_sum((same & fn).to(tl.float32))
    return m2, l2, pos_cos, best, n_fn, n_correct, n_possible


@triton.jit
def _nce_fwd_kernel(a_desc, k_desc, inv_temp_ptr, self_ptr, pos_ptr, la_ptr, lk_ptr, cut_ptr, sla_ptr, slk_ptr,
                    loss_ptr, lse_ptr, stats_ptr, cut_out_ptr, part_ptr, R, C, D, TILES_PER_SPLIT,
                    HAS_LABELS: tl.constexpr, HAS_CUT: tl.constexpr, TOPK: tl.constexpr, TOPK_P2: tl.constexpr,
                    ATTRACT: tl.constexpr, STATS: tl.constexpr, HAS_STAT: tl.constexpr, SPLIT: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, RESIDENT: tl.constexpr,
                    PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """Program (row block, split): the split's run of key tiles. Unsplit, it finishes the rows itself;
    split (never with TOPK), it writes its 8 partial row states to ``part`` (SPLITS, 8, R).

    TOPK > 0: a running top-k of negative cosines per row (values ``t_val`` and key indices ``t_idx``;
    padded slots hold +inf and are never evicted). ``rest_max`` is the largest negative *not* in the list,
    so at the end it is the (k+1)-th largest cosine and the detector's FNs are the list entries above
    ``max(rest_max, cut)``; every other negative has been folded into the log-sum-exp when it left (or
    never entered) the list. Label flags of list entries are looked up by index when needed.
    """
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    m0 = pid_m * BLOCK_M
    n_lo = pid_s * TILES_PER_SPLIT * BLOCK_N
    n_hi = tl.minimum(n_lo + TILES_PER_SPLIT * BLOCK_N, C)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    m_ok = offs_m < R
    inv_temp = tl.load(inv_temp_ptr)
    scale2 = inv_temp * 1.4426950408889634  # exp(S) = exp2(cos * scale2): the scale folded into one multiply
    self_idx, pos_idx, la, cut = _row_vectors(self_ptr, pos_ptr, la_ptr, cut_ptr, offs_m, R, HAS_LABELS, HAS_CUT)
    sla = self_idx
    if HAS_STAT:
        sla = tl.load(sla_ptr + offs_m, mask=m_ok, other=0)
    a = 0
    if RESIDENT:
        a = a_desc.load([m0, 0])

    neg_inf = float("-inf")
    m2 = tl.full((BLOCK_M,), neg_inf, dtype=tl.float32)  # running max cosine over D(r)
    l2 = tl.zeros((BLOCK_M,), dtype=tl.float32)  # running sum of exp2((cos - m2) * scale2) over D(r)
    pos_cos = tl.zeros((BLOCK_M,), dtype=tl.float32)  # sum of cos over P(r)
    s_pos = tl.zeros((BLOCK_M,), dtype=tl.float32)  # cos at the positive
    best = tl.full((BLOCK_M,), neg_inf, dtype=tl.float32)  # max cos over non-FN negatives
    n_fn = tl.zeros((BLOCK_M,), dtype=tl.float32)
    n_correct = tl.zeros((BLOCK_M,), dtype=tl.float32)
    n_possible = tl.zeros((BLOCK_M,), dtype=tl.float32)
    slots = tl.arange(0, TOPK_P2)
    t_val = tl.where(slots[None, :] < TOPK, neg_inf, float("inf")) + tl.zeros((BLOCK_M, TOPK_P2), tl.float32)
    t_idx = tl.full((BLOCK_M, TOPK_P2), -1, dtype=tl.int32)
    rest_max = tl.full((BLOCK_M,), neg_inf, dtype=tl.float32)

    for n0 in range(n_lo, n_hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k = 0
        if RESIDENT:
            k = k_desc.load([n0, 0])
        cos = _cos_tile(a, k, a_desc, k_desc, m0, n0, D, BLOCK_M, BLOCK_N, BLOCK_D, RESIDENT, PRECISION, UPCAST)
        in_row, is_pos, is_neg = _columns(offs_n, C, self_idx, pos_idx)
        if TOPK == 0:
            fn = _label_fn(is_neg, la, lk_ptr, offs_n, C, HAS_LABELS)
            if HAS_CUT:
                fn = fn | (is_neg & (cos > cut[:, None]))
            keep = is_neg & ~fn  # negatives that stay negatives
            if ATTRACT:
                in_d = in_row
                in_p = is_pos | fn
            else:
                in_d = is_pos | keep
                in_p = is_pos
            m2, l2 = _fold_tile(m2, l2, tl.where(in_d, cos, neg_inf), scale2)
            pos_cos += tl.sum(tl.where(in_p, cos, 0.0), axis=1)
            if STATS:
                s_pos += tl.sum(tl.where(is_pos, cos, 0.0), axis=1)
                best = tl.maximum(best, tl.max(tl.where(keep, cos, neg_inf), axis=1))
            if STATS or ATTRACT:
                n_fn += tl.sum(fn.to(tl.float32), axis=1)
            if HAS_STAT:
                slk = tl.load(slk_ptr + offs_n, mask=offs_n < C, other=0)
                same = is_neg & (sla[:, None] == slk[None, :])
                n_possible += tl.sum(same.to(tl.float32), axis=1)
                n_correct += tl.sum((same & fn).to(tl.float32), axis=1)
        else:
            # Only one tile, ``cand`` (cosines of the negatives not taken into the list, -inf elsewhere), lives
            # through the rounds; the positive is a per-row value. List entries are accounted for when they
            # leave the list (``_leave``) or at the end, never per tile.
            pcos = tl.sum(tl.where(is_pos, cos, 0.0), axis=1)
            has_pos = tl.max(is_pos.to(tl.int32), axis=1) > 0
            cand = tl.where(is_neg, cos, neg_inf)
            # move this tile's candidates above the current k-th value into the list, best first; only as
            # many rounds as the busiest row needs (usually 0-2 once the list has filled)
            kth = tl.min(t_val, axis=1)
            rounds = tl.minimum(tl.max(tl.sum((cand > kth[:, None]).to(tl.int32), axis=1), axis=0), TOPK)
            for _ in range(0, rounds):
                x, j = tl.max(cand, axis=1, return_indices=True, return_indices_tie_break_left=True)
                ins = x > kth
                cand = tl.where((tl.arange(0, BLOCK_N)[None, :] == j[:, None]) & ins[:, None], neg_inf, cand)
                ev, p = tl.min(t_val, axis=1, return_indices=True, return_indices_tie_break_left=True)
                slot = (slots[None, :] == p[:, None]) & ins[:, None]
                ev_idx = tl.max(tl.where(slot, t_idx, -1), axis=1)  # -1: nothing evicted
                t_val = tl.where(slot, x[:, None], t_val)
                t_idx = tl.where(slot, (n0 + j)[:, None], t_idx)
                kth = tl.min(t_val, axis=1)
                # the evicted value can no longer be a top-k FN: it is an ordinary negative from now on
                ev = tl.where(ev_idx >= 0, ev, neg_inf)
                rest_max = tl.maximum(rest_max, ev)
                ev_fn = _labels_match(la, lk_ptr, ev_idx, HAS_LABELS)
                m2, l2, pos_cos, best, n_fn, n_correct, n_possible = _leave(
                    ev, ev_idx >= 0, ev_fn, sla, slk_ptr, ev_idx, scale2, m2, l2, pos_cos, best, n_fn, n_correct,
                    n_possible, ATTRACT, STATS, HAS_STAT)
            rest_max = tl.maximum(rest_max, tl.max(cand, axis=1))
            open_neg = cand > neg_inf
            fn = _label_fn(open_neg, la, lk_ptr, offs_n, C, HAS_LABELS)
            keep = open_neg & ~fn
            m2, l2 = _fold_tile(m2, l2, tl.where(open_neg if ATTRACT else keep, cand, neg_inf), scale2)
            m2, l2 = _fold(m2, l2, tl.where(has_pos, pcos, neg_inf), scale2)
            pos_cos += pcos
            if ATTRACT:
                pos_cos += tl.sum(tl.where(fn, cand, 0.0), axis=1)
            if STATS:
                s_pos += pcos
                best = tl.maximum(best, tl.max(tl.where(keep, cand, neg_inf), axis=1))
            if STATS or ATTRACT:
                n_fn += tl.sum(fn.to(tl.float32), axis=1)
            if HAS_STAT:
                slk = tl.load(slk_ptr + offs_n, mask=offs_n < C, other=0)
                same = open_neg & (sla[:, None] == slk[None, :])
                n_possible += tl.sum(same.to(tl.float32), axis=1)
                n_correct += tl.sum((same & fn).to(tl.float32), axis=1)

    if TOPK > 0:
        # the list holds the k largest negatives; the detector's FNs are those above max((k+1)-th, cut)
        cut = tl.maximum(rest_max, cut)
        filled = t_idx >= 0
        t_fn = filled & (_labels_match(la[:, None], lk_ptr, t_idx, HAS_LABELS) | (t_val > cut[:, None]))
        m2, l2, pos_cos, best, n_fn, n_correct, n_possible = _leave(
            t_val, filled, t_fn, sla[:, None], slk_ptr, t_idx, scale2, m2, l2, pos_cos, best, n_fn, n_correct,
            n_possible, ATTRACT, STATS, HAS_STAT)
        tl.store(cut_out_ptr + offs_m, cut, mask=m_ok)

    if SPLIT:
        part = part_ptr + pid_s.to(tl.int64) * 8 * R + offs_m
        tl.store(part + 0 * R, m2, mask=m_ok)
        tl.store(part + 1 * R, l2, mask=m_ok)
        tl.store(part + 2 * R, pos_cos, mask=m_ok)
        tl.store(part + 3 * R, s_pos, mask=m_ok)
        tl.store(part + 4 * R, best, mask=m_ok)
        tl.store(part + 5 * R, n_fn, mask=m_ok)
        tl.store(part + 6 * R, n_correct, mask=m_ok)
        tl.store(part + 7 * R, n_possible, mask=m_ok)
    else:
        lse = m2 * inv_temp + tl.log2(l2) * 0.6931471805599453
        if ATTRACT:
            npos = 1.0 + n_fn
        else:
            npos = tl.full((BLOCK_M,), 1.0, dtype=tl.float32)
        tl.store(loss_ptr + offs_m, lse - pos_cos * inv_temp / npos, mask=m_ok)
        tl.store(lse_ptr + offs_m, lse, mask=m_ok)
        st = stats_ptr + offs_m.to(tl.int64) * 4
        if STATS:
            tl.store(st + 0, (s_pos * inv_temp >= best * inv_temp).to(tl.float32), mask=m_ok)
        tl.store(st + 1, n_fn, mask=m_ok)
        tl.store(st + 2, n_correct, mask=m_ok)
        tl.store(st + 3, n_possible, mask=m_ok)


# ----------------------------------------------------------------------------------------------------------
# backward
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def _unit_grad(cos, inv_temp, lse, inv_npos, la, lk_ptr, cut, offs_n, C, self_idx, pos_idx,
               HAS_LABELS: tl.constexpr, HAS_CUT: tl.constexpr, ATTRACT: tl.constexpr):
    """G / grad_loss for one tile: softmax over D(r) minus the uniform weight 1/|P(r)| on P(r)."""
    in_row, is_pos, is_neg = _columns(offs_n, C, self_idx, pos_idx)
    fn = _label_fn(is_neg, la, lk_ptr, offs_n, C, HAS_LABELS)
    if HAS_CUT:
        fn = fn | (is_neg & (cos > cut[:, None]))
    if ATTRACT:
        in_d = in_row
        in_p = is_pos | fn
    else:
        in_d = in_row & ~fn
        in_p = is_pos
    # exp(S - lse) with S - lse formed first: exactly 1 where S = lse (a row whose D(r) is its positive)
    p = tl.where(in_d, tl.exp2((cos * inv_temp - lse[:, None]) * 1.4426950408889634), 0.0)
    return p - tl.where(in_p, inv_npos[:, None], 0.0)


@triton.jit
def _row_grad_inputs(lse_ptr, npos_ptr, gl_ptr, offs_m, R):
    """(lse, 1/|P|, upstream gradient) of a row block; padded rows get gradient 0."""
    m_ok = offs_m < R
    lse = tl.load(lse_ptr + offs_m, mask=m_ok, other=0.0)
    inv_npos = 1.0 / tl.load(npos_ptr + offs_m, mask=m_ok, other=1.0)
    gl = tl.load(gl_ptr + offs_m, mask=m_ok, other=0.0)
    return lse, inv_npos, gl


@triton.jit
def _nce_bwd_anchor_kernel(a_desc, k_desc, ko_desc, inv_temp_ptr, self_ptr, pos_ptr, la_ptr, lk_ptr, cut_ptr,
                           lse_ptr, npos_ptr, gl_ptr, da_ptr, R, C, D, TILES_PER_SPLIT,
                           HAS_LABELS: tl.constexpr, HAS_CUT: tl.constexpr, ATTRACT: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                           RESIDENT: tl.constexpr, BLOCK_DA: tl.constexpr, PRECISION: tl.constexpr,
                           UPCAST: tl.constexpr):
    """Deterministic dA: program (anchor block, d-chunk, split) sums W_tile @ keys[:, chunk] over its key
    tiles in registers, times inv_temp * grad_loss[r]; split s writes ``da[s]`` (the caller sums)."""
    pid_m = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_s = tl.program_id(2)
    m0 = pid_m * BLOCK_M
    d0 = pid_d * BLOCK_DA
    n_lo = pid_s * TILES_PER_SPLIT * BLOCK_N
    n_hi = tl.minimum(n_lo + TILES_PER_SPLIT * BLOCK_N, C)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    inv_temp = tl.load(inv_temp_ptr)
    self_idx, pos_idx, la, cut = _row_vectors(self_ptr, pos_ptr, la_ptr, cut_ptr, offs_m, R, HAS_LABELS, HAS_CUT)
    lse, inv_npos, gl = _row_grad_inputs(lse_ptr, npos_ptr, gl_ptr, offs_m, R)
    a = 0
    if RESIDENT:
        a = a_desc.load([m0, 0])
    acc = tl.zeros((BLOCK_M, BLOCK_DA), dtype=tl.float32)
    for n0 in range(n_lo, n_hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k = 0
        if RESIDENT:
            k = k_desc.load([n0, 0])
        cos = _cos_tile(a, k, a_desc, k_desc, m0, n0, D, BLOCK_M, BLOCK_N, BLOCK_D, RESIDENT, PRECISION, UPCAST)
        w = _unit_grad(cos, inv_temp, lse, inv_npos, la, lk_ptr, cut, offs_n, C, self_idx, pos_idx,
                       HAS_LABELS, HAS_CUT, ATTRACT)
        if RESIDENT and BLOCK_DA == BLOCK_D:
            k_out = k
        else:
            k_out = ko_desc.load([n0, d0])
        acc = _dot(w.to(k_out.dtype), k_out, acc, PRECISION, UPCAST)
    offs_da = d0 + tl.arange(0, BLOCK_DA)
    da_ptr += pid_s.to(tl.int64) * R * D
    tl.store(da_ptr + offs_m.to(tl.int64)[:, None] * D + offs_da[None, :], acc * (gl * inv_temp)[:, None],
             mask=(offs_m < R)[:, None] & (offs_da < D)[None, :])


@triton.jit
def _nce_bwd_key_kernel(a_desc, k_desc, ao_desc, ko_desc, inv_temp_ptr, self_ptr, pos_ptr, la_ptr, lk_ptr, cut_ptr,
                        lse_ptr, npos_ptr, gl_ptr, gscale_ptr, da_ptr, dk_ptr, R, C, D, TILES_PER_SPLIT,
                        HAS_LABELS: tl.constexpr, HAS_CUT: tl.constexpr, ATTRACT: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, RESIDENT: tl.constexpr,
                        BLOCK_DO: tl.constexpr, BLOCK_DA: tl.constexpr, WITH_DA: tl.constexpr,
                        PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """Program (key block, d-chunk of dK, split): for each anchor tile of its split, S once, then
    dK[keys, chunk] += G^T @ anchors[:, chunk] in registers. The S tile is a @ k^T exactly as in the forward,
    transposed only in the second dot. Split s writes its dK partial to ``dk[s]``.

    WITH_DA (the default backward): the same G also gives dA[rows, chunk] += G @ keys[:, chunk], added with
    fp32 atomics in BLOCK_DA pieces, so with d <= BLOCK_DO (one chunk) S is computed once per tile.
    Without it (deterministic), ``_nce_bwd_anchor_kernel`` computes dA.
    """
    pid_n = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_s = tl.program_id(2)
    n0 = pid_n * BLOCK_N
    d0 = pid_d * BLOCK_DO
    m_lo = pid_s * TILES_PER_SPLIT * BLOCK_M
    m_hi = tl.minimum(m_lo + TILES_PER_SPLIT * BLOCK_M, R)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    inv_temp = tl.load(inv_temp_ptr)
    gscale = tl.load(gscale_ptr)
    k = 0
    if RESIDENT:
        k = k_desc.load([n0, 0])
    acc = tl.zeros((BLOCK_N, BLOCK_DO), dtype=tl.float32)
    for m0 in range(m_lo, m_hi, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        self_idx, pos_idx, la, cut = _row_vectors(self_ptr, pos_ptr, la_ptr, cut_ptr, offs_m, R,
                                                  HAS_LABELS, HAS_CUT)
        lse, inv_npos, gl = _row_grad_inputs(lse_ptr, npos_ptr, gl_ptr, offs_m, R)
        a = 0
        if RESIDENT:
            a = a_desc.load([m0, 0])
        cos = _cos_tile(a, k, a_desc, k_desc, m0, n0, D, BLOCK_M, BLOCK_N, BLOCK_D, RESIDENT, PRECISION, UPCAST)
        w = _unit_grad(cos, inv_temp, lse, inv_npos, la, lk_ptr, cut, offs_n, C, self_idx, pos_idx,
                       HAS_LABELS, HAS_CUT, ATTRACT)
        if RESIDENT and BLOCK_DO == BLOCK_D:
            a_out = a
        else:
            a_out = ao_desc.load([m0, d0])
        wg = (w * (gl / gscale)[:, None]).to(a_out.dtype)  # G / gscale: one operand for both dots
        acc = _dot(tl.trans(wg), a_out, acc, PRECISION, UPCAST)
        if WITH_DA:
            for c in tl.static_range(BLOCK_DO // BLOCK_DA):
                k_out = ko_desc.load([n0, d0 + c * BLOCK_DA])
                da = _dot(wg, k_out, tl.zeros((BLOCK_M, BLOCK_DA), dtype=tl.float32), PRECISION, UPCAST)
                offs_da = d0 + c * BLOCK_DA + tl.arange(0, BLOCK_DA)
                tl.atomic_add(da_ptr + offs_m.to(tl.int64)[:, None] * D + offs_da[None, :], da * (gscale * inv_temp),
                              mask=(offs_m < R)[:, None] & (offs_da < D)[None, :], sem="relaxed")
    offs_do = d0 + tl.arange(0, BLOCK_DO)
    dk_ptr += pid_s.to(tl.int64) * C * D
    tl.store(dk_ptr + offs_n.to(tl.int64)[:, None] * D + offs_do[None, :], acc * (gscale * inv_temp),
             mask=(offs_n < C)[:, None] & (offs_do < D)[None, :])


# ----------------------------------------------------------------------------------------------------------
# launch configuration and tuning
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TileConfig:
    """One configuration for all kernels of a call (the S tile must be identical in every pass).

    ``resident``: the padded d fits one tile (d <= 256 for 2-byte operands), so the loop-invariant block
    (anchors in the forward, keys in the backward) is loaded once and S is a single dot; otherwise S is
    reduced over d in ``block_d`` chunks. ``block_do``: d-chunk of dK (a second grid axis when d is
    larger: S is then recomputed per chunk). ``block_da``: piece of dA per atomic update (fused backward)
    or per program (deterministic backward).
    """

    block_m: int
    block_n: int
    block_d: int
    resident: bool
    block_do: int
    block_da: int
    num_warps: int
    stages_fwd: int
    stages_bwd: int


def _interpreted() -> bool:
    """True when triton was imported with TRITON_INTERPRET=1 (kernels then run on CPU tensors)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_nce_fwd_kernel, InterpretedFunction)


def padded_dim(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def candidate_configs(d: int, precision: str, interpreted: bool = False) -> list[TileConfig]:
    """The small set ``tile_config`` tunes over (first = default), by padded d and operand width.

    Every GPU config is checked ahead of time for sm_90a by ``kernels.aot`` (tests and the committed report
    ``benchmarks/results/aot_sm90a.md``): tensor-core dots and no register spills in any kernel even with
    every detector and statistics flag set. Interpreter: one config of 16-wide tiles, resident up to d = 32
    and chunked beyond (the tests reach both).

    * 2-byte operands, d <= 256: 128-row blocks on 8 warps (one warp group per 64 rows, so row reductions
      stay inside a warp), anchors (forward) / keys (backward) resident for the whole sweep; 64- or
      32-key tiles up to d = 128, 32-key tiles at d = 256 (the backward's dK accumulator then still fits).
    * fp32 "tf32" (operands twice as wide): resident as above up to d = 128 (32-key tiles at 128), d streamed
      in 32-wide chunks beyond.
    * larger d: both operands streamed in 64-wide d chunks; dK in chunks of 256 (S recomputed per chunk).
    * "ieee" (FMA dots, for validation): 32 x 32 tiles, 32-wide d chunks, dK in 32-wide chunks.
    """
    dp = padded_dim(d)
    if interpreted:
        resident = dp <= 32
        return [TileConfig(16, 16, dp if resident else 16, resident, 32, 16, 4, 1, 1)]
    if precision == "ieee":
        return [TileConfig(32, 32, 32, False, 32, 32, 4, 2, 2)]
    wide = precision == "tf32"
    if dp <= (64 if wide else 128):
        return [TileConfig(128, 64, dp, True, dp, min(dp, 64), 8, 2, 2),
                TileConfig(128, 32, dp, True, dp, min(dp, 64), 8, 2, 2)]
    if dp <= (128 if wide else 256):
        return [TileConfig(128, 32, dp, True, dp, 64, 8, 2, 2)]
    bd, do = (32, 128) if wide else (64, 256)
    return [TileConfig(128, 64, bd, False, do, 64, 8, 3, 3), TileConfig(128, 32, bd, False, do, 64, 8, 3, 3)]


_TUNED: dict[tuple, TileConfig] = {}


def tile_config(key: tuple, candidates: list[TileConfig], bench=None) -> TileConfig:
    """The config for ``key`` = (device, padded d, precision, flags): tuned once per process by timing
    ``bench(config)`` (forward + backward on the call's own inputs) over ``candidates``; then cached, and
    the backward looks up the same entry, so both passes use one S tile. While a CUDA graph is being
    captured nothing can be timed: the default is pinned for that key instead."""
    if key in _TUNED:
        return _TUNED[key]
    if len(candidates) == 1 or bench is None or torch.cuda.is_current_stream_capturing():
        _TUNED[key] = candidates[0]
        return candidates[0]
    times = {}
    for cfg in candidates:
        try:
            times[cfg] = triton.testing.do_bench(lambda cfg=cfg: bench(cfg), warmup=2, rep=10)
        except triton.runtime.errors.OutOfResources:
            continue
    if not times:
        raise RuntimeError(f"no InfoNCE tile config fits this GPU for {key}")
    _TUNED[key] = min(times, key=times.get)
    return _TUNED[key]


def _tune_key(device: torch.device, d: int, precision: str, has_labels: bool, has_sim: bool, topk: int,
              attract: bool) -> tuple:
    """(device, padded d, precision, flags); ``has_sim``: a similarity cut (threshold or top-k) is applied,
    which the backward sees as its ``cut`` vector."""
    return (str(device), padded_dim(d), precision, has_labels, has_sim, topk, attract)


def descriptor_blocks(cfg: TileConfig) -> dict[str, tuple[int, int]]:
    """Block shape of each TMA descriptor argument of the kernels under ``cfg``."""
    return {"a_desc": (cfg.block_m, cfg.block_d), "k_desc": (cfg.block_n, cfg.block_d),
            "ao_desc": (cfg.block_m, cfg.block_do), "ko_desc": (cfg.block_n, cfg.block_da)}


# the four kernel launches of a call: name -> (jit function, extra constexprs)
KERNELS = {"forward": ("_nce_fwd_kernel", {}), "backward": ("_nce_bwd_key_kernel", {"WITH_DA": True}),
           "backward_anchors": ("_nce_bwd_anchor_kernel", {}), "backward_keys": ("_nce_bwd_key_kernel", {"WITH_DA": False})}


def kernel_meta(kernel: str, cfg: TileConfig, *, has_labels: bool, has_cut: bool, attract: bool,
                precision: str, upcast: bool = False, topk: int = 0, stats: bool = True, has_stat: bool = False,
                split: bool = False) -> dict:
    """Compile-time arguments and launch options of one of ``KERNELS`` (one place, so tiles cannot diverge).
    ``backward`` is the default (atomic dA); ``backward_anchors`` + ``backward_keys`` the deterministic pair."""
    meta = dict(HAS_LABELS=has_labels, HAS_CUT=has_cut, ATTRACT=bool(attract), BLOCK_M=cfg.block_m,
                BLOCK_N=cfg.block_n, BLOCK_D=cfg.block_d, RESIDENT=cfg.resident,
                PRECISION="tf32" if precision == "tf32" else "ieee", UPCAST=upcast, num_warps=cfg.num_warps,
                num_stages=cfg.stages_bwd, **KERNELS[kernel][1])
    if kernel == "forward":
        meta.update(TOPK=topk, TOPK_P2=triton.next_power_of_2(max(topk, 1)), STATS=stats, HAS_STAT=has_stat,
                    SPLIT=split, num_stages=cfg.stages_fwd)
    elif kernel == "backward_anchors":
        meta.update(BLOCK_DA=cfg.block_da)
    else:
        meta.update(BLOCK_DO=cfg.block_do, BLOCK_DA=cfg.block_da)
    return meta


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
    return _labels32(name_a, ta, R, device), _labels32(name_k, tk, C, device)


def _labels32(name: str, t: Tensor, n: int, device: torch.device) -> Tensor:
    """Integer labels as int32 (the kernels compare labels in int32; callers keep values in its range)."""
    t = _check_vec(name, t, n, device, None)
    if t.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name} must be int32 or int64, got {t.dtype}")
    return t.to(torch.int32)


def _check_common(anchors, keys, inv_temp, self_idx, pos_idx, labels_a, labels_k, cut, precision):
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
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    dev = anchors.device
    if dev.type == "cpu" and not _interpreted():
        raise ValueError("the triton InfoNCE backend got CPU tensors but triton is not in interpreter mode: "
                         "set TRITON_INTERPRET=1 before importing triton, or use CUDA tensors")
    if dev.type == "cpu" and precision == "tf32":
        raise ValueError("precision='tf32' has no CPU equivalent under TRITON_INTERPRET=1: use 'ieee', 'fp16' "
                         "or 'bf16' on CPU")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"the triton InfoNCE backend needs CUDA (or CPU under TRITON_INTERPRET=1), got {dev}")
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


def _operand(x: Tensor, precision: str) -> Tensor:
    """``x`` in the dot dtype of ``precision``, rows 16-byte aligned for TMA (zero columns pad d if needed)."""
    dt = DOT_DTYPE[precision]
    align = 16 // dt.itemsize
    d = x.shape[1]
    width = triton.cdiv(d, align) * align
    if x.dtype == dt and width == d and x.is_contiguous() and x.data_ptr() % 16 == 0:
        return x
    out = torch.zeros(x.shape[0], width, device=x.device, dtype=dt)
    out[:, :d] = x
    return out


def _descriptors(a: Tensor, k: Tensor, cfg: TileConfig) -> dict[str, TensorDescriptor]:
    blocks = descriptor_blocks(cfg)
    src = {"a_desc": a, "k_desc": k, "ao_desc": a, "ko_desc": k}
    return {name: TensorDescriptor.from_tensor(src[name], list(blocks[name])) for name in blocks}


# ----------------------------------------------------------------------------------------------------------
# splitting the tile loop: parallelism for small batches
# ----------------------------------------------------------------------------------------------------------
_SM_COUNT: dict[int, int] = {}


def auto_splits(n_programs: int, n_loop_tiles: int, device: torch.device) -> int:
    """How many programs share one row block's (or key block's) loop over tiles.

    A SimCLR batch of 512 gives 1024 anchor rows = 8 programs of 128 rows: a GPU with 132 SMs would sit
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


def _combine_partials(part: Tensor, inv_temp: Tensor, attract: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Merge per-split row states (SPLITS, 8, R) into (loss, lse, stats) as one program would, by the
    online log-sum-exp rule (running max cosine, base-2 sums; a split with no column of D(r) has max -inf
    and weight 0)."""
    mc, l2, pos_cos, s_pos, best, n_fn, n_correct, n_possible = part.unbind(1)
    m_all = mc.amax(0)  # finite: the positive is in D(r) and in exactly one split
    scale2 = inv_temp * LOG2E
    lse = m_all * inv_temp + torch.log2((l2 * torch.exp2((mc - m_all) * scale2)).sum(0)) * LN2
    n_fn = n_fn.sum(0)
    npos = 1.0 + n_fn if attract else torch.ones_like(lse)
    loss = lse - pos_cos.sum(0) * inv_temp / npos
    top1 = (s_pos.sum(0) * inv_temp >= best.amax(0) * inv_temp).float()
    stats = torch.stack([top1, n_fn, n_correct.sum(0), n_possible.sum(0)], dim=1)
    return loss, lse, stats


# ----------------------------------------------------------------------------------------------------------
# public backend API (contract in kernels/info_nce.py dispatch)
# ----------------------------------------------------------------------------------------------------------
def _launch_forward(cfg, ops, inv_temp, self_idx, pos_idx, labels_a, labels_k, cut, attract, stat_a, stat_k,
                    topk, precision, stats, splits, d):
    a, k = ops
    R, C = a.shape[0], k.shape[0]
    dev = a.device
    row_blocks, n_tiles = triton.cdiv(R, cfg.block_m), triton.cdiv(C, cfg.block_n)
    if topk:
        splits = 1  # the running top-k is not split (its merge would need every split's list)
    elif splits is None:
        splits = auto_splits(row_blocks, n_tiles, dev)
    per, splits = _tiles_per_split(n_tiles, splits)
    loss = torch.empty(R, device=dev, dtype=torch.float32)
    lse = torch.empty(R, device=dev, dtype=torch.float32)
    st = torch.zeros(R, 4, device=dev, dtype=torch.float32)
    cut_out = torch.empty(R if topk else 0, device=dev, dtype=torch.float32)
    part = torch.empty(splits, 8, R, device=dev, dtype=torch.float32) if splits > 1 else loss
    dummy = self_idx  # stands in for absent optional vectors; the constexpr flags prune every use
    desc = _descriptors(a, k, cfg)
    meta = kernel_meta("forward", cfg, has_labels=labels_a is not None, has_cut=cut is not None,
                       attract=attract, precision=precision, upcast=_upcast(a), topk=topk, stats=stats,
                       has_stat=stat_a is not None, split=splits > 1)
    _nce_fwd_kernel[(row_blocks, splits)](
        desc["a_desc"], desc["k_desc"], inv_temp, self_idx, pos_idx,
        dummy if labels_a is None else labels_a, dummy if labels_k is None else labels_k,
        inv_temp if cut is None else cut, dummy if stat_a is None else stat_a, dummy if stat_k is None else stat_k,
        loss, lse, st, cut_out if topk else loss, part, R, C, d, per, **meta)
    if splits > 1:
        loss, lse, st = _combine_partials(part, inv_temp, bool(attract))
    return loss, lse, st, cut_out


def _launch_backward(cfg, ops, inv_temp, self_idx, pos_idx, labels_a, labels_k, cut, attract, lse, npos,
                     grad_loss, precision, deterministic, splits, d):
    a, k = ops
    R, C = a.shape[0], k.shape[0]
    dev = a.device
    # one global scale keeps fp16 weights G / scale in range in the second dots (see module doc)
    gscale = grad_loss.abs().amax().clamp_min(torch.finfo(torch.float32).tiny).reshape(1)
    dummy = self_idx
    flags = dict(has_labels=labels_a is not None, has_cut=cut is not None, attract=attract, precision=precision,
                 upcast=_upcast(a))
    desc = _descriptors(a, k, cfg)
    args = (inv_temp, self_idx, pos_idx, dummy if labels_a is None else labels_a,
            dummy if labels_k is None else labels_k, inv_temp if cut is None else cut, lse, npos, grad_loss)
    row_blocks, key_blocks = triton.cdiv(R, cfg.block_m), triton.cdiv(C, cfg.block_n)
    dk_chunks = triton.cdiv(d, cfg.block_do)
    s_k = splits if splits is not None else auto_splits(key_blocks * dk_chunks, row_blocks, dev)
    per_k, s_k = _tiles_per_split(row_blocks, s_k)
    d_keys = torch.empty(s_k, C, d, device=dev, dtype=torch.float32)
    if deterministic:
        da_chunks = triton.cdiv(d, cfg.block_da)
        s_a = splits if splits is not None else auto_splits(row_blocks * da_chunks, key_blocks, dev)
        per_a, s_a = _tiles_per_split(key_blocks, s_a)
        d_anchors = torch.empty(s_a, R, d, device=dev, dtype=torch.float32)
        _nce_bwd_anchor_kernel[(row_blocks, da_chunks, s_a)](
            desc["a_desc"], desc["k_desc"], desc["ko_desc"], *args, d_anchors, R, C, d, per_a,
            **kernel_meta("backward_anchors", cfg, **flags))
        d_anchors = d_anchors[0] if s_a == 1 else d_anchors.sum(0)
    else:
        d_anchors = torch.zeros(R, d, device=dev, dtype=torch.float32)  # the key kernel adds into it
    _nce_bwd_key_kernel[(key_blocks, dk_chunks, s_k)](
        desc["a_desc"], desc["k_desc"], desc["ao_desc"], desc["ko_desc"], *args, gscale, d_anchors, d_keys,
        R, C, d, per_k, **kernel_meta("backward_keys" if deterministic else "backward", cfg, **flags))
    return d_anchors, (d_keys[0] if s_k == 1 else d_keys.sum(0))


def _upcast(x: Tensor) -> bool:
    return x.dtype == torch.bfloat16 and x.device.type == "cpu"


def nce_forward(anchors: Tensor, keys: Tensor, inv_temp: Tensor, self_idx: Tensor, pos_idx: Tensor,
                labels_a: Tensor | None, labels_k: Tensor | None, cut: Tensor | None, attract: bool,
                stat_labels_a: Tensor | None, stat_labels_k: Tensor | None, *, topk: int = 0,
                precision: str = "ieee", stats: bool = True,
                splits: int | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-row InfoNCE of anchors (R, d) against keys (C, d) without materialising S.

    ``cut`` is a per-row cosine threshold; ``topk`` (0 = off, else <= ``MAX_TOPK``) adds the in-kernel top-k
    detector (a negative is then a similarity FN if it is among the row's k most similar *and* above
    ``cut``). Returns ``(loss (R,), lse (R,), stats (R, 4), cut_used)`` in fp32; stats columns are
    ``[pos_top1, fn_found, fn_correct, fn_possible]`` (pos_top1 only with ``stats``, the last two only with
    stat labels, else 0). With ``topk``, ``cut_used`` (R,) is the per-row cut the backward must use instead
    of ``cut``: max(cut, (k+1)-th largest negative cosine); without, it is empty (the backward takes ``cut``).
    ``splits`` (default: ``auto_splits``) divides each row block's key loop over that many programs.
    """
    inv_temp, self_idx, pos_idx, labels_a, labels_k, cut = _check_common(
        anchors, keys, inv_temp, self_idx, pos_idx, labels_a, labels_k, cut, precision)
    if isinstance(topk, bool) or not isinstance(topk, int) or not 0 <= topk <= MAX_TOPK:
        raise ValueError(f"topk must be an integer in [0, {MAX_TOPK}] on the triton backend, got {topk!r}")
    R, d = anchors.shape
    C = keys.shape[0]
    dev = anchors.device
    stat_labels_a, stat_labels_k = _check_pair("stat_labels_a", stat_labels_a, "stat_labels_k", stat_labels_k,
                                               R, C, dev)
    if R == 0:
        z = torch.zeros(0, device=dev, dtype=torch.float32)
        return z, z.clone(), z.new_zeros(0, 4), z.clone()
    ops = (_operand(anchors, precision), _operand(keys, precision))
    args = (ops, inv_temp, self_idx, pos_idx, labels_a, labels_k, cut, attract, stat_labels_a, stat_labels_k,
            topk, precision, stats)
    key = _tune_key(dev, d, precision, labels_a is not None, cut is not None or topk > 0, topk, attract)

    def bench(cfg):
        loss, lse, st, cut_used = _launch_forward(cfg, *args, splits, d)
        npos = 1.0 + st[:, 1] if attract else torch.ones_like(lse)
        sim = cut_used if topk else cut
        _launch_backward(cfg, ops, inv_temp, self_idx, pos_idx, labels_a, labels_k, sim, attract, lse, npos,
                         torch.ones_like(lse), precision, False, splits, d)

    cfg = tile_config(key, candidate_configs(d, precision, dev.type == "cpu"), bench)
    return _launch_forward(cfg, *args, splits, d)


def nce_backward(anchors: Tensor, keys: Tensor, inv_temp: Tensor, self_idx: Tensor, pos_idx: Tensor,
                 labels_a: Tensor | None, labels_k: Tensor | None, cut: Tensor | None, attract: bool,
                 lse: Tensor, npos: Tensor, grad_loss: Tensor, *, topk: int = 0, precision: str = "ieee",
                 deterministic: bool = False, splits: int | None = None) -> tuple[Tensor, Tensor]:
    """Gradients of ``sum_r grad_loss[r] * loss[r]`` w.r.t. anchors and keys, recomputing S tile by tile.

    ``lse`` and ``cut`` (= the forward's ``cut_used`` when a similarity detector ran) come from
    ``nce_forward``; ``topk`` is the forward's (it selects the same tuned config: same S tiles).
    ``npos`` = |P(r)| = 1 + (fn_found if attract else 0). Returns ``(d_anchors (R, d), d_keys (C, d))`` in
    fp32. ``deterministic``: two atomic-free kernels instead of one with fp32 atomics for d_anchors.
    The inv_temp gradient is left to the caller.
    """
    inv_temp, self_idx, pos_idx, labels_a, labels_k, cut = _check_common(
        anchors, keys, inv_temp, self_idx, pos_idx, labels_a, labels_k, cut, precision)
    R, d = anchors.shape
    C = keys.shape[0]
    dev = anchors.device
    lse = _check_vec("lse", lse, R, dev, None).to(torch.float32)
    npos = _check_vec("npos", npos, R, dev, None).to(torch.float32)
    grad_loss = _check_vec("grad_loss", grad_loss, R, dev, None).to(torch.float32)
    if R == 0:
        return torch.zeros(0, d, device=dev), torch.zeros(C, d, device=dev)
    key = _tune_key(dev, d, precision, labels_a is not None, cut is not None, topk, attract)
    cfg = tile_config(key, candidate_configs(d, precision, dev.type == "cpu"))  # tuned by the forward
    ops = (_operand(anchors, precision), _operand(keys, precision))
    return _launch_backward(cfg, ops, inv_temp, self_idx, pos_idx, labels_a, labels_k, cut, attract, lse, npos,
                            grad_loss, precision, bool(deterministic), splits, d)
