"""Plain, materialised PyTorch: the specification every fused path is tested against.

Everything here builds the full similarity matrix and lets autograd differentiate it. It is slow
and O(N^2) in memory on purpose: it is the easiest code to check by eye against the papers (NT-Xent:
Chen et al., 2020; false-negative elimination / attraction: Huynh et al., 2022) and ``docs/kernels.md``.

The fused paths (``torch`` tiled and ``triton``) implement one *core* operation, ``nce_rows``,
over a block of anchor rows against a set of keys; the public losses are thin wrappers that build
anchors, keys and index vectors and call it. The core's semantics, column ``j`` of anchor row ``r``:

* ``cos[r, j] = anchors[r] . keys[j]`` (accumulated in fp32); ``S = cos * inv_temp``.
* ``j == self_idx[r]``: not a column at all (the anchor itself; ``-1`` = no self column).
* ``j == pos_idx[r]``: the positive: always in the denominator ``D(r)`` and the positive set ``P(r)``,
  never a false negative.
* any other ``j`` is a negative. It is a *detected false negative* (FN) when
  ``labels_a[r] == labels_k[j]`` (oracle, if labels are given) or ``cos[r, j] > cut[r]``
  (similarity detector, if ``cut`` is given). Detection uses the detached ``cos``.
* treatment ``eliminate``: an FN leaves ``D(r)``.  ``attract``: an FN stays in ``D(r)`` and joins ``P(r)``.
* ``loss[r] = logsumexp_{j in D(r)} S[r, j] - mean_{j in P(r)} S[r, j]``. A row whose negatives are all
  eliminated has ``D = P = {pos}`` and loss 0 (never NaN).

Per-row statistics (no gradient): ``pos_top1`` (1 if the positive's similarity is >= every non-FN
negative's), ``fn_found`` (number of detected FNs); with ``stat_labels_*`` also ``fn_correct`` (detected
FNs whose stat labels match: true FNs) and ``fn_possible`` (negatives whose stat labels match), from
which precision = sum(fn_correct)/sum(fn_found) and recall = sum(fn_correct)/sum(fn_possible).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def nce_rows_reference(
    anchors: Tensor,
    keys: Tensor,
    inv_temp: Tensor | float,
    self_idx: Tensor,
    pos_idx: Tensor,
    *,
    labels_a: Tensor | None = None,
    labels_k: Tensor | None = None,
    cut: Tensor | None = None,
    attract: bool = False,
    stat_labels_a: Tensor | None = None,
    stat_labels_k: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-row InfoNCE loss of ``anchors`` (R, d) against ``keys`` (C, d), materialised.

    Returns ``(loss_rows, stats)``: ``loss_rows`` (R,) fp32, differentiable w.r.t. anchors, keys
    and ``inv_temp`` (if it is a tensor that requires grad); ``stats`` is a dict of (R,) fp32 tensors.
    """
    R, C = anchors.shape[0], keys.shape[0]
    dev = anchors.device
    cos = anchors.float() @ keys.float().t()  # (R, C)
    S = cos * inv_temp
    cols = torch.arange(C, device=dev)
    is_self = cols[None, :] == self_idx[:, None]
    is_pos = cols[None, :] == pos_idx[:, None]
    is_neg = ~(is_self | is_pos)

    fn = torch.zeros(R, C, dtype=torch.bool, device=dev)
    if labels_a is not None:
        fn |= labels_a[:, None] == labels_k[None, :]
    if cut is not None:
        fn |= cos.detach() > cut.float()[:, None]
    fn &= is_neg

    in_denominator = ~is_self & ~(fn & (not attract))
    in_positive = is_pos | (fn & attract)
    lse = torch.logsumexp(S.masked_fill(~in_denominator, float("-inf")), dim=1)
    pos_mean = (S * in_positive).sum(1) / in_positive.sum(1)
    loss = lse - pos_mean

    with torch.no_grad():
        s_pos = (S * is_pos).sum(1)
        best_neg = S.masked_fill(~(is_neg & ~fn), float("-inf")).amax(1)
        stats = {
            "pos_top1": (s_pos >= best_neg).float(),
            "fn_found": fn.sum(1).float(),
        }
        if stat_labels_a is not None:
            same = (stat_labels_a[:, None] == stat_labels_k[None, :]) & is_neg
            stats["fn_correct"] = (fn & same).sum(1).float()
            stats["fn_possible"] = same.sum(1).float()
    return loss, stats


def topk_cut_reference(anchors: Tensor, keys: Tensor, self_idx: Tensor, pos_idx: Tensor, k: int) -> Tensor:
    """Per-row cut-off for the top-k detector: the (k+1)-th largest negative cosine.

    ``cos > cut`` then selects exactly the k most similar negatives (barring ties); with fewer than
    k+1 negatives the cut is -inf and every negative is selected.
    """
    cos = (anchors.float() @ keys.float().t()).detach()
    cols = torch.arange(keys.shape[0], device=anchors.device)
    neg = (cols[None, :] != self_idx[:, None]) & (cols[None, :] != pos_idx[:, None])
    cos = cos.masked_fill(~neg, float("-inf"))
    if k + 1 > cos.shape[1]:
        return torch.full((cos.shape[0],), float("-inf"), device=cos.device)
    return cos.topk(k + 1, dim=1).values[:, k]


def _reduce(rows: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return rows.mean()
    if reduction == "sum":
        return rows.sum()
    return rows


def info_nce_reference(
    z1: Tensor,
    z2: Tensor,
    temperature: Tensor | float = 0.1,
    *,
    labels: Tensor | None = None,
    fn_threshold: float | None = None,
    fn_topk: int | None = None,
    fn_mode: str = "eliminate",
    normalize: bool = True,
    reduction: str = "mean",
    row_offset: int = 0,
    num_rows: int | None = None,
    stat_labels: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """NT-Xent (SimCLR) over the 2N views ``Z = [z1; z2]``, materialised. Returns ``(loss, stats)``.

    Anchors are the local rows ``row_offset .. row_offset+num_rows`` of each view (all rows by
    default), so shards of a gathered global batch add up to the full loss: the mean over a shard
    times its share of rows sums to the global mean.
    """
    if normalize:
        z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    n = z1.shape[0]
    Z = torch.cat([z1, z2])
    rows = num_rows if num_rows is not None else n - row_offset
    local = torch.arange(row_offset, row_offset + rows, device=Z.device)
    idx = torch.cat([local, local + n])
    pos = (idx + n) % (2 * n)
    two = lambda t: None if t is None else torch.cat([t, t])  # noqa: E731
    labels_k, stat_k = two(labels), two(stat_labels)
    anchors = Z[idx]
    cut = _cut(anchors, Z, idx, pos, fn_threshold, fn_topk)
    loss, stats = nce_rows_reference(
        anchors, Z, 1.0 / temperature, idx, pos,
        labels_a=None if labels is None else labels_k[idx], labels_k=labels_k, cut=cut,
        attract=fn_mode == "attract",
        stat_labels_a=None if stat_labels is None else stat_k[idx], stat_labels_k=stat_k,
    )
    return _reduce(loss, reduction), stats


def cross_info_nce_reference(
    q: Tensor,
    k: Tensor,
    temperature: Tensor | float = 0.1,
    *,
    symmetric: bool = False,
    labels_q: Tensor | None = None,
    labels_k: Tensor | None = None,
    fn_threshold: float | None = None,
    fn_topk: int | None = None,
    fn_mode: str = "eliminate",
    normalize: bool = True,
    reduction: str = "mean",
    stat_labels_q: Tensor | None = None,
    stat_labels_k: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """MoCo / CLIP InfoNCE: row i of ``q`` (N, d) has positive ``k[i]``; ``k`` (M >= N, d) may carry a queue.

    ``symmetric`` averages the q->k and k[:N]->q directions (CLIP); then the per-row losses are the
    q->k rows followed by the k->q rows, and the reduction averages the two directions.
    """
    if normalize:
        q, k = F.normalize(q.float(), dim=1), F.normalize(k.float(), dim=1)
    n = q.shape[0]
    ar = torch.arange(n, device=q.device)
    none = torch.full_like(ar, -1)

    def direction(a, keys, la, lk, sa, sk):
        cut = _cut(a, keys, none, ar, fn_threshold, fn_topk)
        return nce_rows_reference(
            a, keys, 1.0 / temperature, none, ar, labels_a=la, labels_k=lk, cut=cut,
            attract=fn_mode == "attract", stat_labels_a=sa, stat_labels_k=sk,
        )

    loss, stats = direction(q, k, labels_q, labels_k, stat_labels_q, stat_labels_k)
    if symmetric:
        first = lambda t: None if t is None else t[:n]  # noqa: E731
        loss2, stats2 = direction(k[:n], q, first(labels_k), labels_q, first(stat_labels_k), stat_labels_q)
        loss = torch.cat([loss, loss2])
        stats = {key: torch.cat([stats[key], stats2[key]]) for key in stats}
    return _reduce(loss, reduction), stats


def _cut(anchors, keys, self_idx, pos_idx, fn_threshold, fn_topk) -> Tensor | None:
    """Combine the two similarity detectors into one per-row cut-off (a negative must pass both)."""
    cut = None
    if fn_topk is not None:
        cut = topk_cut_reference(anchors, keys, self_idx, pos_idx, fn_topk)
    if fn_threshold is not None:
        t = torch.full((anchors.shape[0],), float(fn_threshold), device=anchors.device)
        cut = t if cut is None else torch.maximum(cut, t)
    return cut


def pgd_step_reference(
    x: Tensor,
    grad: Tensor,
    x0: Tensor,
    *,
    step_size: float,
    eps: float,
    norm: str = "linf",
    clamp: tuple[float, float] | None = (0.0, 1.0),
) -> Tensor:
    """One PGD update with torchattacks' semantics, in fp32, returned in ``x``'s dtype.

    L-inf: ``x + a*sign(g)`` (sign(0) = 0), clipped to the eps-box around ``x0``, then to ``clamp``.
    L2: ``x + a*g/||g||`` per sample (norm over all but dim 0, +1e-10 as torchattacks), then
    ``delta *= min(1, eps/||delta||)``, then clipped to ``clamp``. A non-finite gradient value (NaN,
    +-inf) makes every output computed from it NaN: its element under L-inf (unlike torchattacks, whose
    sign(NaN) = 0 would leave it unmoved), its whole sample under L2 (through the norm).
    """
    xf, gf, x0f = x.float(), grad.float(), x0.float()
    if norm == "linf":
        step = torch.where(torch.isfinite(gf), gf.sign(), float("nan"))
        adv = xf + step_size * step
        delta = torch.clamp(adv - x0f, min=-eps, max=eps)
        out = x0f + delta
    elif norm == "l2":
        dims = tuple(range(1, x.dim()))
        gnorm = gf.flatten(1).norm(p=2, dim=1).view(-1, *([1] * len(dims))) + 1e-10
        adv = xf + step_size * (gf / gnorm)  # torchattacks' rounding order
        delta = adv - x0f
        dnorm = delta.flatten(1).norm(p=2, dim=1).view(-1, *([1] * len(dims)))
        factor = torch.clamp(eps / dnorm, max=1.0)  # eps/0 = inf -> 1
        out = x0f + delta * factor
    else:
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    if clamp is not None:
        out = out.clamp(clamp[0], clamp[1])
    return out.to(x.dtype)
