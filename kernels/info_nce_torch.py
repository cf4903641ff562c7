"""Tiled PyTorch InfoNCE core (the CPU path): online log-sum-exp forward, recomputing backward.

Same contract as the Triton backend (see ``kernels.reference.nce_rows_reference`` for the semantics).
The similarity matrix is visited in ``(CHUNK_ROWS, CHUNK_COLS)`` tiles; the forward keeps only per-row
running values (log-sum-exp, positive sum, stats) and the backward recomputes every tile with the
*same* chunking, so a threshold decision taken in the forward can never flip in the backward. Peak
extra memory is O(CHUNK_ROWS * CHUNK_COLS + (R + C) * d); no (R, C) tensor is ever allocated.

Arithmetic is fp32 (fp64 for fp64 inputs, so that the path can be gradchecked).
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor

# Tile shape, measured on CPU (benchmarks/bench_info_nce.py): a 1024 x 2048 fp32 tile (8 MiB) keeps the
# element-wise passes close to cache while the matmuls stay large enough to run at full speed.
# Tests shrink these to exercise the tiling; they are read at call time.
CHUNK_ROWS = 1024
CHUNK_COLS = 2048


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _chunks(total: int, size: int):
    for start in range(0, total, size):
        yield start, min(start + size, total)


def _local_hits(idx: Tensor, c0: int, c1: int) -> tuple[Tensor, Tensor]:
    """Rows whose column ``idx[r]`` falls in ``[c0, c1)``, and that column relative to ``c0``."""
    rows = torch.nonzero((idx >= c0) & (idx < c1)).squeeze(1)
    return rows, idx[rows] - c0


class _Tile:
    """One recomputed tile: fp32 cosines, masks of the self / positive columns, detected false negatives.

    Both passes build tiles through this class, which is what guarantees identical decisions.
    """

    def __init__(self, a: Tensor, k: Tensor, c0: int, c1: int, self_idx: Tensor, pos_idx: Tensor,
                 labels_a: Tensor | None, labels_k: Tensor | None, cut: Tensor | None):
        self.cos = a @ k.t()
        self.self_rows, self.self_cols = _local_hits(self_idx, c0, c1)
        self.pos_rows, self.pos_cols = _local_hits(pos_idx, c0, c1)
        fn = None
        if labels_a is not None:
            fn = labels_a[:, None] == labels_k[None, c0:c1]
        if cut is not None:
            over = self.cos > cut[:, None]
            fn = over if fn is None else fn.logical_or_(over)
        if fn is not None:  # the self and positive columns are never false negatives
            fn[self.self_rows, self.self_cols] = False
            fn[self.pos_rows, self.pos_cols] = False
        self.fn = fn


def _logsumexp_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """(row max, row log-sum-exp) of ``x``, destroying it; all -inf rows give (-inf, -inf), never NaN."""
    m = x.amax(1)
    m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    x.sub_(m_safe[:, None]).exp_()
    return m, m_safe + x.sum(1).log()


def nce_forward(anchors, keys, inv_temp, self_idx, pos_idx, labels_a, labels_k, cut, attract,
                stat_labels_a, stat_labels_k, chunk_rows: int | None = None, chunk_cols: int | None = None):
    """Per-row loss, log-sum-exp over D(r) and stats ``[pos_top1, fn_found, fn_correct, fn_possible]``.

    The positive enters the log-sum-exp once at the end (``logaddexp``), so each tile needs only one
    masked copy: negatives that remain in D(r) (all but eliminated false negatives).
    """
    cr = chunk_rows or CHUNK_ROWS
    cc = chunk_cols or CHUNK_COLS
    dt = _compute_dtype(anchors)
    A, K = anchors.to(dt), keys.to(dt)
    it = inv_temp.to(dt)
    R, C = A.shape[0], K.shape[0]
    loss = A.new_empty(R)
    lse_out = A.new_empty(R)
    stats = A.new_zeros(R, 4)
    with_stat = stat_labels_a is not None
    for r0, r1 in _chunks(R, cr):
        a = A[r0:r1]
        n = r1 - r0
        sl = slice(r0, r1)
        lab_a = None if labels_a is None else labels_a[sl]
        cut_r = None if cut is None else cut[sl].to(dt)
        lse_neg = a.new_full((n,), float("-inf"))
        best_neg = a.new_full((n,), float("-inf"))
        s_pos = a.new_zeros(n)
        fn_sum = a.new_zeros(n)  # sum of S over attracted false negatives
        fn_found = a.new_zeros(n)
        fn_correct = a.new_zeros(n)
        fn_possible = a.new_zeros(n)
        for c0, c1 in _chunks(C, cc):
            t = _Tile(a, K[c0:c1], c0, c1, self_idx[sl], pos_idx[sl], lab_a, labels_k, cut_r)
            S = t.cos.mul_(it)
            s_pos[t.pos_rows] = S[t.pos_rows, t.pos_cols]
            S[t.self_rows, t.self_cols] = float("-inf")
            S[t.pos_rows, t.pos_cols] = float("-inf")
            if t.fn is not None:
                fn_found += t.fn.sum(1)
                if attract:
                    fn_sum += torch.where(t.fn, S, 0.0).sum(1)
                    best_neg = torch.maximum(best_neg, S.masked_fill(t.fn, float("-inf")).amax(1))
                else:
                    S.masked_fill_(t.fn, float("-inf"))
            if with_stat:
                same = stat_labels_a[sl][:, None] == stat_labels_k[None, c0:c1]
                same[t.self_rows, t.self_cols] = False
                same[t.pos_rows, t.pos_cols] = False
                fn_possible += same.sum(1)
                if t.fn is not None:
                    fn_correct += same.logical_and_(t.fn).sum(1)
            m, lse_t = _logsumexp_rows(S)
            if t.fn is None or not attract:
                best_neg = torch.maximum(best_neg, m)
            lse_neg = torch.logaddexp(lse_neg, lse_t)
        lse = torch.logaddexp(lse_neg, s_pos)
        npos = 1.0 + fn_found if attract else torch.ones_like(fn_found)
        pos_mean = (s_pos + fn_sum) / npos
        loss[sl] = lse - pos_mean
        lse_out[sl] = lse
        stats[sl, 0] = (s_pos >= best_neg).to(dt)
        stats[sl, 1] = fn_found
        if with_stat:
            stats[sl, 2] = fn_correct
            stats[sl, 3] = fn_possible
    return loss, lse_out, stats


def nce_backward(anchors, keys, inv_temp, self_idx, pos_idx, labels_a, labels_k, cut, attract, lse, npos,
                 grad_loss, chunk_rows: int | None = None, chunk_cols: int | None = None):
    """``(d_anchors, d_keys)`` from G[r,j] = g[r] (softmax_D(r)[j] - [j in P(r)] / |P(r)|), tile by tile.

    The upstream ``g`` is applied to the O(R*d) operands instead of each tile (one pass fewer per tile).
    """
    cr = chunk_rows or CHUNK_ROWS
    cc = chunk_cols or CHUNK_COLS
    dt = _compute_dtype(anchors)
    A, K = anchors.to(dt), keys.to(dt)
    it = inv_temp.to(dt)
    lse, npos, g = lse.to(dt), npos.to(dt), grad_loss.to(dt)
    R, C = A.shape[0], K.shape[0]
    dA = A.new_empty(R, A.shape[1])
    dK = K.new_zeros(C, K.shape[1])
    for r0, r1 in _chunks(R, cr):
        sl = slice(r0, r1)
        a = A[sl]
        ga = a * g[sl, None]
        inv_npos = 1.0 / npos[sl]
        lab_a = None if labels_a is None else labels_a[sl]
        cut_r = None if cut is None else cut[sl].to(dt)
        acc = a.new_zeros(r1 - r0, A.shape[1])
        for c0, c1 in _chunks(C, cc):
            t = _Tile(a, K[c0:c1], c0, c1, self_idx[sl], pos_idx[sl], lab_a, labels_k, cut_r)
            P = t.cos.mul_(it)
            P[t.self_rows, t.self_cols] = float("-inf")
            if t.fn is not None and not attract:
                P.masked_fill_(t.fn, float("-inf"))
            P.sub_(lse[sl, None]).exp_()
            P[t.pos_rows, t.pos_cols] -= inv_npos[t.pos_rows]
            if t.fn is not None and attract:
                P.sub_(t.fn * inv_npos[:, None])
            acc.addmm_(P, K[c0:c1])
            dK[c0:c1].addmm_(P.t(), ga)
        dA[sl] = acc.mul_(g[sl, None])
    return dA.mul_(it), dK.mul_(it)


def topk_cut(anchors: Tensor, keys: Tensor, self_idx: Tensor, pos_idx: Tensor, k: int,
             midpoint: bool = False, chunk_rows: int | None = None, chunk_cols: int | None = None) -> Tensor:
    """Per-row (k+1)-th largest negative cosine (``topk_cut_reference``), tiled, on any device.

    A running top-(k+1) per row is merged with each column tile. With ``midpoint`` the cut is placed
    halfway between the k-th and (k+1)-th values instead: ``cos > cut`` selects the same k negatives,
    but a path whose cosines differ in the last bits (another kernel) cannot flip the boundary one.
    Returns (R,) in the compute dtype (fp32, fp64 for fp64 inputs); -inf where fewer than k+1 exist.
    """
    cr = chunk_rows or CHUNK_ROWS
    cc = chunk_cols or CHUNK_COLS
    dt = _compute_dtype(anchors)
    A, K = anchors.detach().to(dt), keys.detach().to(dt)
    R, C = A.shape[0], K.shape[0]
    if k + 1 > C:
        return A.new_full((R,), float("-inf"))
    out = A.new_empty(R)
    for r0, r1 in _chunks(R, cr):
        sl = slice(r0, r1)
        best = A.new_full((r1 - r0, k + 1), float("-inf"))
        for c0, c1 in _chunks(C, cc):
            cos = A[sl] @ K[c0:c1].t()
            for idx in (self_idx[sl], pos_idx[sl]):
                rows, cols = _local_hits(idx, c0, c1)
                cos[rows, cols] = float("-inf")
            best = torch.cat([best, cos], dim=1).topk(k + 1, dim=1).values
        kth, cut = best[:, k - 1], best[:, k]
        if midpoint:
            cut = torch.where(torch.isfinite(cut), 0.5 * (kth + cut), cut)
        out[sl] = cut
    return out
