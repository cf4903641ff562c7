"""Tiled PyTorch InfoNCE core (the CPU path): online log-sum-exp forward, recomputing backward.

Same contract as the Triton backend (semantics: ``kernels.reference.nce_rows_reference``; design:
``docs/kernels.md``). The similarity matrix is visited in ``(CHUNK_ROWS, CHUNK_COLS)`` tiles; the forward
keeps only per-row running values (log-sum-exp, positive sum, stats) and the backward recomputes every
tile with the *same* chunking, so a threshold decision taken in the forward can never flip in the
backward. Peak extra memory is O(CHUNK_ROWS * CHUNK_COLS + (R + C) * d); no (R, C) tensor is allocated.

Precision: the rows are rounded to the dot operands of ``precision`` (bf16, fp16, tf32 or kept: "ieee"),
exactly as the GPU kernels see them; products and sums are then fp32 (fp64 for fp64 inputs, so that the
path can be gradchecked). The top-k detector is exact: per row block, a first sweep over the same tiles
finds the (k+1)-th largest negative cosine, and the second sweep uses it as the cut (what the Triton
forward does in one pass). No ``nonzero``/``item``: nothing here waits for the device.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor

# Tile shape, measured on CPU (benchmarks/bench_info_nce.py): a 1024 x 2048 fp32 tile (8 MiB) keeps the
# element-wise passes close to cache while the matmuls stay large enough to run at full speed.
# Tests shrink these to exercise the tiling; they are read at call time.
CHUNK_ROWS = 1024
CHUNK_COLS = 2048

_HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def round_tf32(x: Tensor) -> Tensor:
    """fp32 values rounded to TF32 (10-bit mantissa, round to nearest even), returned as fp32."""
    i = x.to(torch.float32).contiguous().view(torch.int32)
    i = (i + 0x0FFF + ((i >> 13) & 1)) & -8192  # -8192 = ~0x1FFF: clear the 13 dropped mantissa bits
    return i.view(torch.float32)


def dot_operand(x: Tensor, precision: str, dt: torch.dtype) -> Tensor:
    """``x`` as the dot operands of ``precision`` see it, in the compute dtype ``dt``."""
    if precision in _HALF:
        return x.to(_HALF[precision]).to(dt)
    if precision == "tf32":
        return round_tf32(x).to(dt)
    if precision != "ieee":
        raise ValueError(f"precision must be bf16, fp16, tf32 or ieee, got {precision!r}")
    return x.to(dt)


def _chunks(total: int, size: int):
    for start in range(0, total, size):
        yield start, min(start + size, total)


class _Column:
    """Per row, the one column ``idx[r]`` if it falls in the tile ``[c0, c1)``, addressed without a sync
    (``col`` clamped into the tile, ``inside`` says whether it really is there; ``idx = -1``: nowhere)."""

    def __init__(self, idx: Tensor, c0: int, c1: int):
        local = idx - c0
        self.inside = ((local >= 0) & (local < c1 - c0))[:, None]
        self.col = local.clamp(0, c1 - c0 - 1)[:, None]

    def get(self, x: Tensor, other: float = 0.0) -> Tensor:
        return torch.where(self.inside, x.gather(1, self.col), other).squeeze(1)

    def set(self, x: Tensor, value) -> None:
        x.scatter_(1, self.col, torch.where(self.inside, value, x.gather(1, self.col)))


class _Tile:
    """One recomputed tile: cosines, the self / positive columns, detected false negatives.

    Both passes build tiles through this class, which is what guarantees identical decisions.
    """

    def __init__(self, a: Tensor, k: Tensor, c0: int, c1: int, self_idx: Tensor, pos_idx: Tensor,
                 labels_a: Tensor | None, labels_k: Tensor | None, cut: Tensor | None):
        self.cos = a @ k.t()
        self.self_col = _Column(self_idx, c0, c1)
        self.pos_col = _Column(pos_idx, c0, c1)
        fn = None
        if labels_a is not None:
            fn = labels_a[:, None] == labels_k[None, c0:c1]
        if cut is not None:
            over = self.cos > cut[:, None]
            fn = over if fn is None else fn.logical_or_(over)
        if fn is not None:  # the self and positive columns are never false negatives
            self.self_col.set(fn, False)
            self.pos_col.set(fn, False)
        self.fn = fn


def _logsumexp_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """(row max, row log-sum-exp) of ``x``, destroying it; all -inf rows give (-inf, -inf), never NaN."""
    m = x.amax(1)
    m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    x.sub_(m_safe[:, None]).exp_()
    return m, m_safe + x.sum(1).log()


def _topk_cut_rows(a: Tensor, K: Tensor, self_idx: Tensor, pos_idx: Tensor, k: int, cc: int) -> Tensor:
    """(k+1)-th largest negative cosine of each row of ``a`` (-inf if fewer), from the same column tiles
    (same ``a @ k^T`` products) as ``_Tile``: a running top-(k+1) merged with each tile."""
    best = a.new_full((a.shape[0], k + 1), float("-inf"))
    for c0, c1 in _chunks(K.shape[0], cc):
        cos = a @ K[c0:c1].t()
        for idx in (self_idx, pos_idx):
            _Column(idx, c0, c1).set(cos, float("-inf"))
        best = torch.cat([best, cos], dim=1).topk(k + 1, dim=1).values
    return best[:, k]


def topk_cut(anchors: Tensor, keys: Tensor, self_idx: Tensor, pos_idx: Tensor, k: int, *, precision: str = "ieee",
             chunk_rows: int | None = None, chunk_cols: int | None = None) -> Tensor:
    """Per-row (k+1)-th largest negative cosine (``topk_cut_reference``), tiled, on any device.

    ``cos > cut`` selects the k most similar negatives (fewer on ties at the boundary, as the reference).
    Returns (R,) in the compute dtype; -inf where fewer than k+1 negatives exist.
    """
    cr, cc = chunk_rows or CHUNK_ROWS, chunk_cols or CHUNK_COLS
    dt = _compute_dtype(anchors)
    A, K = dot_operand(anchors.detach(), precision, dt), dot_operand(keys.detach(), precision, dt)
    out = A.new_empty(A.shape[0])
    for r0, r1 in _chunks(A.shape[0], cr):
        out[r0:r1] = _topk_cut_rows(A[r0:r1], K, self_idx[r0:r1], pos_idx[r0:r1], k, cc)
    return out


def nce_forward(anchors, keys, inv_temp, self_idx, pos_idx, labels_a, labels_k, cut, attract,
                stat_labels_a, stat_labels_k, *, topk: int = 0, precision: str = "ieee", stats: bool = True,
                chunk_rows: int | None = None, chunk_cols: int | None = None):
    """Per-row ``(loss, lse, stats, cut_used)``; stats columns ``[pos_top1, fn_found, fn_correct, fn_possible]``.

    ``topk`` (0 = off) adds the top-k detector: the per-row cut becomes max(cut, (k+1)-th largest negative
    cosine), returned as ``cut_used`` (R,) for the backward (empty without ``topk``). The positive enters
    the log-sum-exp once at the end (``logaddexp``), so each tile needs only one masked copy: negatives
    that remain in D(r) (all but eliminated false negatives).
    """
    cr = chunk_rows or CHUNK_ROWS
    cc = chunk_cols or CHUNK_COLS
    dt = _compute_dtype(anchors)
    A, K = dot_operand(anchors, precision, dt), dot_operand(keys, precision, dt)
    it = inv_temp.to(dt)
    R, C = A.shape[0], K.shape[0]
    loss = A.new_empty(R)
    lse_out = A.new_empty(R)
    st = A.new_zeros(R, 4)
    cut_used = A.new_empty(R if topk else 0)
    with_stat = stat_labels_a is not None
    for r0, r1 in _chunks(R, cr):
        a = A[r0:r1]
        n = r1 - r0
        sl = slice(r0, r1)
        lab_a = None if labels_a is None else labels_a[sl]
        cut_r = None if cut is None else cut[sl].to(dt)
        if topk:
            kcut = _topk_cut_rows(a, K, self_idx[sl], pos_idx[sl], topk, cc)
            cut_r = kcut if cut_r is None else torch.maximum(kcut, cut_r)
            cut_used[sl] = cut_r
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
            s_pos += t.pos_col.get(S)
            t.self_col.set(S, float("-inf"))
            t.pos_col.set(S, float("-inf"))
            if t.fn is not None:
                fn_found += t.fn.sum(1)
                if attract:
                    fn_sum += torch.where(t.fn, S, 0.0).sum(1)
                    best_neg = torch.maximum(best_neg, S.masked_fill(t.fn, float("-inf")).amax(1))
                else:
                    S.masked_fill_(t.fn, float("-inf"))
            if with_stat:
                same = stat_labels_a[sl][:, None] == stat_labels_k[None, c0:c1]
                t.self_col.set(same, False)
                t.pos_col.set(same, False)
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
        if stats:
            st[sl, 0] = (s_pos >= best_neg).to(dt)
        st[sl, 1] = fn_found
        if with_stat:
            st[sl, 2] = fn_correct
            st[sl, 3] = fn_possible
    return loss, lse_out, st, cut_used


def nce_backward(anchors, keys, inv_temp, self_idx, pos_idx, labels_a, labels_k, cut, attract, lse, npos,
                 grad_loss, *, topk: int = 0, precision: str = "ieee", deterministic: bool = True,
                 chunk_rows: int | None = None, chunk_cols: int | None = None):
    """``(d_anchors, d_keys)`` from G[r,j] = g[r] (softmax_D(r)[j] - [j in P(r)] / |P(r)|), tile by tile.

    ``cut`` is the forward's ``cut_used`` when it ran the top-k detector (``topk`` itself is then not needed
    here; it is accepted so both backends share one signature, as is ``deterministic``: this path always is).
    The upstream ``g`` is applied to the O(R*d) operands instead of each tile (one pass fewer per tile).
    """
    cr = chunk_rows or CHUNK_ROWS
    cc = chunk_cols or CHUNK_COLS
    dt = _compute_dtype(anchors)
    A, K = dot_operand(anchors, precision, dt), dot_operand(keys, precision, dt)
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
            t.self_col.set(P, float("-inf"))
            if t.fn is not None and not attract:
                P.masked_fill_(t.fn, float("-inf"))
            P.sub_(lse[sl, None]).exp_()
            t.pos_col.set(P, t.pos_col.get(P)[:, None] - inv_npos[:, None])
            if t.fn is not None and attract:
                P.sub_(t.fn * inv_npos[:, None])
            acc.addmm_(P, K[c0:c1])
            dK[c0:c1].addmm_(P.t(), ga)
        dA[sl] = acc.mul_(g[sl, None])
    return dA.mul_(it), dK.mul_(it)
