"""The Triton InfoNCE backend against the materialised specification, run by the Triton interpreter on CPU.

Sizes are tiny on purpose (the interpreter is slow) but chosen so that R, C are not multiples of the 16-wide
interpreter tiles and d (24, 40) is not a power of two, which exercises every padding path.
"""

import os
import zlib

os.environ["TRITON_INTERPRET"] = "1"  # must precede the first import of triton

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_leaves  # noqa: E402

from kernels import aot  # noqa: E402
from kernels.info_nce_triton import nce_backward, nce_forward  # noqa: E402
from kernels.reference import nce_rows_reference, topk_cut_reference  # noqa: E402

STAT_KEYS = ("pos_top1", "fn_found", "fn_correct", "fn_possible")


# ------------------------------------------------------------------------------------------------ helpers
def _unit(n, d, gen, dtype=torch.float32):
    return F.normalize(torch.randn(n, d, generator=gen), dim=1).to(dtype).contiguous()


def _problem(form, gen, dtype=torch.float32):
    """Anchors, keys and index vectors for the NT-Xent form (self column present) or the cross form."""
    if form == "ntxent":
        n, d = 13, 40
        z = _unit(2 * n, d, gen, dtype)
        idx = torch.arange(2 * n)
        return z.clone(), z, idx, (idx + n) % (2 * n)
    r, c, d = 21, 37, 24  # cross / MoCo: keys = the other view plus a queue
    return _unit(r, d, gen, dtype), _unit(c, d, gen, dtype), torch.full((r,), -1), torch.arange(r)


def _negative_cos(anchors, keys, self_idx, pos_idx):
    """Reference cosines with self and positive columns set to NaN (so they are ignored when picking cuts)."""
    cos = anchors.float() @ keys.float().t()
    cols = torch.arange(keys.shape[0])
    not_neg = (cols[None, :] == self_idx[:, None]) | (cols[None, :] == pos_idx[:, None])
    return cos.masked_fill(not_neg, float("nan"))


def _midpoint_cut(values, rank):
    """Per-row cut halfway between the rank-th and (rank+1)-th largest value: far from every data point,
    so fp rounding differences between the kernel and the reference cannot flip a ``cos > cut`` decision."""
    v = values.nan_to_num(float("-inf")).sort(dim=1, descending=True).values
    return ((v[:, rank - 1] + v[:, rank]) / 2).contiguous()


def _threshold_cut(cos, quantile=0.8):
    """One global threshold in the widest gap of the data near the given quantile (same for every row)."""
    v = cos[~cos.isnan()].sort().values
    lo, hi = int(quantile * len(v)) - 10, int(quantile * len(v)) + 10
    gaps = v[lo + 1:hi] - v[lo:hi - 1]
    i = int(gaps.argmax())
    t = (v[lo + i] + v[lo + i + 1]) / 2
    return torch.full((cos.shape[0],), float(t))


def _detector(kind, anchors, keys, self_idx, pos_idx, gen):
    """(labels_a, labels_k, cut) for one false-negative detector; labels are 3 classes, so FNs are common."""
    R, C = anchors.shape[0], keys.shape[0]
    labels_k = torch.randint(0, 3, (C,), generator=gen)
    if (self_idx >= 0).all():  # NT-Xent: an anchor is a key, so it carries that key's label
        labels_a = labels_k[self_idx]
    else:
        labels_a = torch.randint(0, 3, (R,), generator=gen)
    cos = _negative_cos(anchors, keys, self_idx, pos_idx)
    if kind == "none":
        return None, None, None
    if kind == "labels":
        return labels_a, labels_k, None
    if kind == "threshold":
        return None, None, _threshold_cut(cos)
    if kind == "topk":
        return None, None, _midpoint_cut(cos, 3)
    if kind == "labels+topk":
        return labels_a, labels_k, _midpoint_cut(cos, 2)
    raise AssertionError(kind)


def _reference(anchors, keys, inv_temp, self_idx, pos_idx, la, lk, cut, attract, sla, slk, grad_loss):
    """Reference loss, stats, and autograd gradients of sum(grad_loss * loss) in fp32."""
    a = anchors.float().clone().requires_grad_(True)
    k = keys.float().clone().requires_grad_(True)
    t = torch.tensor(float(inv_temp), requires_grad=True)
    loss, stats = nce_rows_reference(a, k, t, self_idx, pos_idx, labels_a=la, labels_k=lk, cut=cut,
                                     attract=attract, stat_labels_a=sla, stat_labels_k=slk)
    (loss * grad_loss).sum().backward()
    return loss.detach(), stats, a.grad, k.grad, t.grad


def _run(anchors, keys, inv_temp, self_idx, pos_idx, la, lk, cut, attract, sla, slk, grad_loss, *, topk=0,
         deterministic=False, precision="ieee"):
    """Forward then backward of the Triton core; the backward takes the forward's cut when top-k ran."""
    it = torch.tensor(float(inv_temp))
    kw = dict(topk=topk, precision=precision)
    loss, lse, stats, cut_used = nce_forward(anchors, keys, it, self_idx, pos_idx, la, lk, cut, attract, sla, slk,
                                             **kw)
    npos = 1.0 + stats[:, 1] if attract else torch.ones_like(loss)
    da, dk = nce_backward(anchors, keys, it, self_idx, pos_idx, la, lk, cut_used if topk else cut, attract, lse,
                          npos, grad_loss, deterministic=deterministic, **kw)
    return loss, lse, stats, da, dk


def _ref_lse(anchors, keys, inv_temp, self_idx, pos_idx, la, lk, cut, attract):
    """log-sum-exp over D(r), materialised independently of the reference module."""
    cos = anchors.float() @ keys.float().t()
    cols = torch.arange(keys.shape[0])
    is_self = cols[None, :] == self_idx[:, None]
    is_neg = ~is_self & (cols[None, :] != pos_idx[:, None])
    fn = torch.zeros_like(is_neg)
    if la is not None:
        fn |= la[:, None] == lk[None, :]
    if cut is not None:
        fn |= cos > cut[:, None]
    fn &= is_neg
    drop = is_self | (fn & (not attract))
    return torch.logsumexp((cos * inv_temp).masked_fill(drop, float("-inf")), dim=1)


def _assert_case(anchors, keys, inv_temp, self_idx, pos_idx, la, lk, cut, attract, gen, *, rtol, atol):
    C = keys.shape[0]
    R = anchors.shape[0]
    stat_k = torch.randint(0, 3, (C,), generator=gen)
    stat_a = torch.randint(0, 3, (R,), generator=gen)
    grad_loss = torch.randn(R, generator=gen)
    args = (anchors, keys, inv_temp, self_idx, pos_idx, la, lk, cut, attract, stat_a, stat_k)
    loss, lse, stats, da, dk = _run(*args, grad_loss)
    ref_loss, ref_stats, ref_da, ref_dk, ref_dt = _reference(*args, grad_loss)

    assert torch.isfinite(loss).all() and torch.isfinite(da).all() and torch.isfinite(dk).all()
    torch.testing.assert_close(loss, ref_loss, rtol=rtol, atol=atol)
    ref_lse = _ref_lse(anchors, keys, inv_temp, self_idx, pos_idx, la, lk, cut, attract)
    torch.testing.assert_close(lse, ref_lse, rtol=rtol, atol=atol)
    for j, key in enumerate(STAT_KEYS):
        torch.testing.assert_close(stats[:, j], ref_stats[key], rtol=0, atol=0, msg=f"stat {key}")
    scale = max(ref_da.abs().max().item(), ref_dk.abs().max().item())
    torch.testing.assert_close(da, ref_da, rtol=rtol, atol=atol * scale)
    torch.testing.assert_close(dk, ref_dk, rtol=rtol, atol=atol * scale)
    # the contract's inv_temp gradient, derived by the autograd layer from d_anchors
    d_temp = (da * anchors.float()).sum() / inv_temp
    torch.testing.assert_close(d_temp, ref_dt, rtol=rtol * 10, atol=atol * scale * R)


# ------------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("attract", [False, True], ids=["eliminate", "attract"])
@pytest.mark.parametrize("detector", ["none", "labels", "threshold", "topk", "labels+topk"])
@pytest.mark.parametrize("form", ["ntxent", "cross"])
def test_matches_reference_fp32(form, detector, attract):
    gen = torch.Generator().manual_seed(zlib.crc32(f"{form}-{detector}-{attract}".encode()))
    anchors, keys, self_idx, pos_idx = _problem(form, gen)
    la, lk, cut = _detector(detector, anchors, keys, self_idx, pos_idx, gen)
    _assert_case(anchors, keys, 7.0, self_idx, pos_idx, la, lk, cut, attract, gen, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("inv_temp", [1.0, 14.3, 50.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_dtypes_and_temperatures(dtype, inv_temp):
    """Labels + per-row cut, attract; fp16 inputs accumulate in fp32 (backward weights pass through fp16)."""
    gen = torch.Generator().manual_seed(int(inv_temp * 10) + (dtype == torch.float16))
    anchors, keys, self_idx, pos_idx = _problem("cross", gen, dtype)
    la, lk, cut = _detector("labels+topk", anchors, keys, self_idx, pos_idx, gen)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-3, atol=2e-3)
    _assert_case(anchors, keys, inv_temp, self_idx, pos_idx, la, lk, cut, True, gen, **tol)


def test_fp16_tiny_upstream_gradient_keeps_precision():
    """grad_loss ~ 1e-6 (a mean over a huge batch): G = grad_loss * softmax would sit in fp16's subnormal
    range, so the backend must factor the scale out of the half-precision dot instead of rounding it away."""
    gen = torch.Generator().manual_seed(21)
    anchors, keys, self_idx, pos_idx = _problem("ntxent", gen, torch.float16)
    grad_loss = 1e-6 * (1 + torch.rand(anchors.shape[0], generator=gen))
    args = (anchors, keys, 10.0, self_idx, pos_idx, None, None, None, False, None, None)
    _, _, _, da, dk = _run(*args, grad_loss)
    _, _, ref_da, ref_dk, _ = _reference(*args, grad_loss)
    for got, ref in ((da, ref_da), (dk, ref_dk)):
        torch.testing.assert_close(got, ref, rtol=5e-3, atol=5e-3 * ref.abs().max().item())


@pytest.mark.parametrize("splits", [1, 3])
def test_split_tile_loops_match_reference(splits):
    """The default interpreter run splits every loop in 2; here the unsplit kernels (finishing rows in-kernel)
    and an uneven 3-way split (C = 37 keys = 3 tiles; R = 26 rows = 2 tiles, so 2 key splits) are checked."""
    gen = torch.Generator().manual_seed(17)
    anchors, keys, self_idx, pos_idx = _problem("cross", gen)
    la, lk, cut = _detector("labels+topk", anchors, keys, self_idx, pos_idx, gen)
    stat_a = torch.randint(0, 3, (anchors.shape[0],), generator=gen)
    stat_k = torch.randint(0, 3, (keys.shape[0],), generator=gen)
    grad_loss = torch.randn(anchors.shape[0], generator=gen)
    args = (anchors, keys, 9.0, self_idx, pos_idx, la, lk, cut, True, stat_a, stat_k)
    it = torch.tensor(9.0)
    loss, lse, stats, _ = nce_forward(anchors, keys, it, self_idx, pos_idx, la, lk, cut, True, stat_a, stat_k,
                                      splits=splits)
    da, dk = nce_backward(anchors, keys, it, self_idx, pos_idx, la, lk, cut, True, lse, 1 + stats[:, 1],
                          grad_loss, splits=splits, deterministic=splits == 3)
    ref_loss, ref_stats, ref_da, ref_dk, _ = _reference(*args, grad_loss)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats, torch.stack([ref_stats[k] for k in STAT_KEYS], 1), rtol=0, atol=0)
    torch.testing.assert_close(da, ref_da, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dk, ref_dk, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="splits must be a positive int"):
        nce_forward(anchors, keys, it, self_idx, pos_idx, None, None, None, False, None, None, splits=0)


@pytest.mark.parametrize("attract", [False, True], ids=["eliminate", "attract"])
def test_fully_masked_tiles_and_rows(attract):
    """Key tiles whose every column is an FN (the online lse must not NaN) and rows with every negative
    detected (eliminate: D = P = {pos}, loss 0 and zero gradient)."""
    gen = torch.Generator().manual_seed(3)
    R, C, d = 19, 50, 24
    anchors, keys = _unit(R, d, gen), _unit(C, d, gen)
    self_idx, pos_idx = torch.full((R,), -1), 20 + torch.arange(R)  # positives live in the 2nd/3rd tiles
    labels_a = torch.zeros(R, dtype=torch.long)
    labels_k = torch.arange(C) % 7 + 1
    labels_k[:16] = 0  # the whole first 16-wide key tile is a false negative for every row
    cut = torch.full((R,), 2.0)  # cos <= 1 < 2: the cut detects nothing on most rows ...
    cut[[0, 5, 18]] = float("-inf")  # ... and every negative on these rows
    _assert_case(anchors, keys, 10.0, self_idx, pos_idx, labels_a, labels_k, cut, attract, gen,
                 rtol=1e-5, atol=1e-5)
    loss, _, stats, da, _ = _run(anchors, keys, 10.0, self_idx, pos_idx, labels_a, labels_k, cut, attract,
                                 None, None, torch.ones(R))
    assert stats[[0, 5, 18], 1].tolist() == [C - 1] * 3  # every column but the positive is an FN
    assert (stats[:, 1] >= 16).all()
    if not attract:
        assert loss[[0, 5, 18]].abs().max() == 0
        assert da[[0, 5, 18]].abs().max() == 0


def test_stats_without_stat_labels_are_zero_and_top1_matches():
    gen = torch.Generator().manual_seed(11)
    anchors, keys, self_idx, pos_idx = _problem("ntxent", gen)
    cut = _midpoint_cut(_negative_cos(anchors, keys, self_idx, pos_idx), 2)
    _, _, stats, _ = nce_forward(anchors, keys, torch.tensor(5.0), self_idx, pos_idx, None, None, cut, False,
                                 None, None)
    _, ref = nce_rows_reference(anchors, keys, 5.0, self_idx, pos_idx, cut=cut)
    torch.testing.assert_close(stats[:, 0], ref["pos_top1"], rtol=0, atol=0)
    assert stats[:, 1].tolist() == [2.0] * anchors.shape[0]  # the midpoint between ranks 2 and 3 keeps 2
    assert stats[:, 2:].abs().max() == 0


class _AllocationRecorder(TorchDispatchMode):
    """Records the size in bytes of every tensor produced by a torch op while active."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.sizes.append((str(func), t.numel() * t.element_size(), t.numel()))
        return out


def test_no_rows_by_columns_allocation():
    """No torch op in forward or backward produces a tensor of R*C elements (or even R*C fp32 bytes).

    What can be checked here is the host side (argument handling, scaling, the interpreter's own copies of
    the arguments); inside the kernels only BLOCK_M x BLOCK_N tiles exist by construction. R*C = 1920 is
    far above (R + C) * d = 704 so a materialised similarity matrix could not hide below the bound.
    """
    gen = torch.Generator().manual_seed(5)
    R, C, d = 40, 48, 8
    anchors, keys = _unit(R, d, gen), _unit(C, d, gen)
    self_idx, pos_idx = torch.full((R,), -1), torch.arange(R)
    la, lk = torch.randint(0, 3, (R,), generator=gen), torch.randint(0, 3, (C,), generator=gen)
    cut = torch.full((R,), 0.5)
    with _AllocationRecorder() as rec:
        loss, lse, stats, cut_used = nce_forward(anchors, keys, torch.tensor(4.0), self_idx, pos_idx, la, lk,
                                                 cut, True, la, lk, topk=3)
        nce_backward(anchors, keys, torch.tensor(4.0), self_idx, pos_idx, la, lk, cut_used, True, lse,
                     1 + stats[:, 1], torch.ones(R), topk=3)
    assert rec.sizes, "the recorder saw no torch op at all"
    op, nbytes, numel = max(rec.sizes, key=lambda s: s[1])
    assert nbytes < R * C * 4 and numel < R * C, f"{op} produced {numel} elements ({nbytes} bytes)"


def test_bad_input_raises_value_error():
    gen = torch.Generator().manual_seed(0)
    anchors, keys, self_idx, pos_idx = _problem("cross", gen)
    it = torch.tensor(2.0)
    good = dict(anchors=anchors, keys=keys, inv_temp=it, self_idx=self_idx, pos_idx=pos_idx, labels_a=None,
                labels_k=None, cut=None, attract=False, stat_labels_a=None, stat_labels_k=None)

    def call(**bad):
        return nce_forward(**{**good, **bad})

    with pytest.raises(ValueError, match="share a dtype"):
        call(keys=keys.half())
    with pytest.raises(ValueError, match="d=24"):
        call(keys=keys[:, :20].contiguous())
    with pytest.raises(ValueError, match="labels_a and labels_k"):
        call(labels_a=torch.zeros(anchors.shape[0], dtype=torch.long))
    with pytest.raises(ValueError, match="pos_idx must have shape"):
        call(pos_idx=pos_idx[:-1])
    with pytest.raises(ValueError, match="self_idx must be torch.int64"):
        call(self_idx=self_idx.int())
    with pytest.raises(ValueError, match="contiguous"):
        call(anchors=anchors.t().contiguous().t())
    with pytest.raises(ValueError, match="tf32.*no CPU equivalent"):
        call(precision="tf32")
    with pytest.raises(ValueError, match="precision must be one of"):
        call(precision="fp8")
    with pytest.raises(ValueError, match="topk must be an integer in \\[0, 16\\]"):
        call(topk=17)
    with pytest.raises(ValueError, match="inv_temp must be a one-element"):
        call(inv_temp=2.0)




# ------------------------------------------------------------------------------------------------ in-kernel top-k
def _topk_reference_cut(anchors, keys, self_idx, pos_idx, k, threshold=None):
    """(exact per-row cut = max((k+1)-th largest negative cosine, threshold), a cut selecting the same
    negatives with margin: halfway to the k-th). The margin version is what the materialised reference gets,
    so that its own (full-matmul) cosines cannot fall an ulp on the other side of the kernel's cut."""
    a, kk = anchors.float(), keys.float()
    exact = topk_cut_reference(a, kk, self_idx, pos_idx, k)
    mid = (topk_cut_reference(a, kk, self_idx, pos_idx, k - 1) + exact) / 2
    mid = torch.where(torch.isfinite(exact), mid, exact)
    if threshold is not None:
        exact, mid = exact.clamp_min(threshold), mid.clamp_min(threshold)
    return exact, mid


TOPK_CASES = [("ntxent", 1, "none", False), ("ntxent", 3, "labels+threshold", False),
              ("ntxent", 16, "none", True), ("cross", 2, "labels", True), ("cross", 5, "threshold", False),
              ("cross", 16, "labels+threshold", True)]


@pytest.mark.parametrize("form,k,extra,attract", TOPK_CASES)
def test_in_kernel_topk_matches_reference(form, k, extra, attract):
    """The one-pass running top-k (evictions folded into the log-sum-exp) gives the reference's loss, stats
    and gradients, with k up to 16 and alongside labels / a threshold; the per-row cut it stores for the
    backward is the (k+1)-th largest negative cosine (or the threshold when larger). Both backward variants."""
    gen = torch.Generator().manual_seed(zlib.crc32(f"{form}-{k}-{extra}-{attract}".encode()))
    anchors, keys, self_idx, pos_idx = _problem(form, gen)
    la, lk, _ = _detector("labels", anchors, keys, self_idx, pos_idx, gen)
    if "labels" not in extra:
        la = lk = None
    thr = 0.15 if "threshold" in extra else None
    cut = None if thr is None else torch.full((anchors.shape[0],), thr)
    exact, mid = _topk_reference_cut(anchors, keys, self_idx, pos_idx, k, thr)
    sla = torch.randint(0, 3, (anchors.shape[0],), generator=gen)
    slk = torch.randint(0, 3, (keys.shape[0],), generator=gen)
    g = torch.randn(anchors.shape[0], generator=gen)
    it = torch.tensor(6.0)
    loss, lse, stats, cut_used = nce_forward(anchors, keys, it, self_idx, pos_idx, la, lk, cut, attract, sla, slk,
                                             topk=k)
    torch.testing.assert_close(cut_used, exact, rtol=0, atol=1e-6)
    ref_loss, ref_stats, ref_da, ref_dk, _ = _reference(anchors, keys, 6.0, self_idx, pos_idx, la, lk, mid, attract,
                                                        sla, slk, g)
    assert ref_stats["fn_found"].sum() > 0
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats, torch.stack([ref_stats[key] for key in STAT_KEYS], 1), rtol=0, atol=0)
    npos = 1 + stats[:, 1] if attract else torch.ones_like(loss)
    for det in (False, True):
        da, dk = nce_backward(anchors, keys, it, self_idx, pos_idx, la, lk, cut_used, attract, lse, npos, g,
                              topk=k, deterministic=det)
        torch.testing.assert_close(da, ref_da, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(dk, ref_dk, rtol=1e-5, atol=1e-5)


def _exact_rows(n, d, gen):
    """Rows with entries in {-2..2}/4: every dot product is a multiple of 1/16, exact in any summation order,
    so cosines tie exactly (duplicated rows make more ties) and a threshold can sit exactly on one."""
    z = torch.randint(-2, 3, (n, d), generator=gen).float() / 4
    z[5], z[9], z[11] = z[3], z[3], z[7]
    return z


@pytest.mark.parametrize("k", [1, 2, 4])
def test_topk_and_threshold_ties_on_exact_cosines(k):
    """Ties at the k-th place select fewer than k (strict ``cos > (k+1)-th``), ties inside the top-k are all
    selected, a threshold equal to a cosine keeps that cosine out: the kernel (one pass, evictions), the tiled
    torch path (two sweeps) and the reference agree exactly on every false-negative count."""
    from kernels import info_nce_torch

    gen = torch.Generator().manual_seed(40 + k)
    z = _exact_rows(26, 12, gen)
    n = 13
    idx = torch.arange(2 * n)
    pos = (idx + n) % (2 * n)
    cos = z @ z.t()
    thr = float(cos[0, 3])  # exactly representable: every path sees this very value
    cut = torch.full((2 * n,), thr)
    g = torch.randn(2 * n, generator=gen)
    ref_cut = topk_cut_reference(z, z, idx, pos, k).clamp_min(thr)
    ref_loss, ref_stats, ref_da, ref_dk, _ = _reference(z, z, 3.0, idx, pos, None, None, ref_cut, False, None, None,
                                                        g)
    kth = topk_cut_reference(z, z, idx, pos, k - 1)
    assert ((kth == topk_cut_reference(z, z, idx, pos, k)) & (kth > thr)).any(), "no tie at the k-th place"
    it = torch.tensor(3.0)
    got = {}
    for name, mod in (("triton", None), ("torch", info_nce_torch)):
        fwd = nce_forward if mod is None else mod.nce_forward
        bwd = nce_backward if mod is None else mod.nce_backward
        loss, lse, stats, cut_used = fwd(z, z, it, idx, pos, None, None, cut, False, None, None, topk=k)
        da, dk = bwd(z, z, it, idx, pos, None, None, cut_used, False, lse, torch.ones(2 * n), g, topk=k)
        got[name] = stats[:, 1]
        torch.testing.assert_close(cut_used, ref_cut, rtol=0, atol=0, msg=name)
        torch.testing.assert_close(stats[:, 1], ref_stats["fn_found"], rtol=0, atol=0, msg=name)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5, msg=name)
        torch.testing.assert_close(da, ref_da, rtol=1e-5, atol=1e-5, msg=name)
        torch.testing.assert_close(dk, ref_dk, rtol=1e-5, atol=1e-5, msg=name)
    assert (got["triton"] < k).any() and (got["triton"] > 0).any()  # the ties really removed some


def test_backward_decides_on_the_forwards_accumulator():
    """The cut the top-k forward stores is a cosine *as the kernels compute it*. Used as a plain threshold it
    must select exactly the same negatives (the (k+1)-th sits exactly on it and stays out), and both backward
    variants, recomputing S with the one shared tile configuration, must agree bit for bit with the gradients
    of the top-k call: no decision flips between passes."""
    gen = torch.Generator().manual_seed(77)
    anchors, keys, self_idx, pos_idx = _problem("cross", gen)
    it, g = torch.tensor(8.0), torch.randn(anchors.shape[0], generator=gen)
    loss_k, lse_k, st_k, cut_used = nce_forward(anchors, keys, it, self_idx, pos_idx, None, None, None, False, None,
                                                None, topk=4)
    loss_t, lse_t, st_t, _ = nce_forward(anchors, keys, it, self_idx, pos_idx, None, None, cut_used, False, None,
                                         None)
    assert st_k[:, 1].tolist() == [4.0] * anchors.shape[0] == st_t[:, 1].tolist()
    torch.testing.assert_close(loss_t, loss_k, rtol=1e-6, atol=1e-6)  # summed in another order, same terms
    ones = torch.ones_like(loss_k)
    grads = [nce_backward(anchors, keys, it, self_idx, pos_idx, None, None, cut_used, False, lse_k, ones, g, topk=4,
                          deterministic=det) for det in (False, True)]
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-6)  # summation order only
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-5, atol=1e-6)
    _, mid = _topk_reference_cut(anchors, keys, self_idx, pos_idx, 4)
    _, _, ref_da, ref_dk, _ = _reference(anchors, keys, 8.0, self_idx, pos_idx, None, None, mid, False, None, None, g)
    torch.testing.assert_close(grads[0][0], ref_da, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0][1], ref_dk, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("topk", [0, 3])
def test_bf16_operands_under_the_interpreter(topk):
    """precision="bf16" on fp32 rows: the kernels see the rows rounded to bf16 (TMA loads and casts of bf16
    tensors run here; the interpreter multiplies them exactly in fp32 where a GPU uses bf16 tensor cores),
    so the reference on the rounded rows is matched; the softmax weights pass through bf16 in the backward."""
    gen = torch.Generator().manual_seed(5 + topk)
    anchors, keys, self_idx, pos_idx = _problem("ntxent", gen)
    a16, k16 = anchors.bfloat16().float(), keys.bfloat16().float()
    la, lk, _ = _detector("labels", anchors, keys, self_idx, pos_idx, gen)
    g = torch.randn(anchors.shape[0], generator=gen)
    loss, _, stats, da, dk = _run(anchors, keys, 5.0, self_idx, pos_idx, la, lk, None, True, None, None, g,
                                  topk=topk, precision="bf16")
    cut = _topk_reference_cut(a16, k16, self_idx, pos_idx, topk)[1] if topk else None
    ref_loss, ref_stats, ref_da, ref_dk, _ = _reference(a16, k16, 5.0, self_idx, pos_idx, la, lk, cut, True, None,
                                                        None, g)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats[:, 1], ref_stats["fn_found"], rtol=0, atol=0)
    scale = float(max(ref_da.abs().max(), ref_dk.abs().max()))
    torch.testing.assert_close(da, ref_da, rtol=2e-2, atol=1e-2 * scale)
    torch.testing.assert_close(dk, ref_dk, rtol=2e-2, atol=1e-2 * scale)
    # and the same kernels given bf16 tensors directly agree with the fp32-given ones
    loss_b = nce_forward(anchors.bfloat16(), keys.bfloat16(), torch.tensor(5.0), self_idx, pos_idx, la, lk, None,
                         True, None, None, topk=topk, precision="bf16")[0]
    assert torch.equal(loss_b, loss)


_AOT_JOBS = ([[kernel, 0, "bf16", aot.FULL_FLAGS, d] for d in (128, 256, 1024) for kernel in aot.KERNELS]
             + [[kernel, 0, "ieee", aot.FULL_FLAGS, 128] for kernel in ("forward", "backward")])


@pytest.mark.slow
def test_gpu_kernels_compile_for_hopper(tmp_path):
    """The GPU path cannot run here, but it can be compiled: ahead of time for sm_90a (H100/H200), in a process
    without TRITON_INTERPRET, with the default config ``candidate_configs`` gives, for the default training
    dtype (bf16) at d = 128, 256 (anchors/keys resident) and 1024 (streamed), every detector and statistics
    flag set (the register worst case; ``python -m kernels.aot`` reports every config and flag set). Every
    kernel: no register spills, shared memory within Hopper's
    227 KiB, tensor-core MMA (wgmma); the forward's S-tile instruction appears in both backward variants (one
    S tile configuration); the S tile's MMA layout has all warps along the rows (row reductions inside a
    warp). fp32 "ieee" compiles to FMA only (no silent TF32)."""
    import json
    import pathlib
    import subprocess
    import sys

    if not aot.available():
        pytest.skip("this triton wheel ships no ptxas: cannot compile for a GPU target offline")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    root = pathlib.Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "kernels.aot", "--jobs-json", json.dumps(_AOT_JOBS)], cwd=root,
                          env={**env, "PYTHONPATH": str(root)}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(rows) == len(_AOT_JOBS)
    s_instr = {}
    for r in rows:
        assert "error" not in r, r
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, r
        assert r["shared_bytes"] <= 227 * 1024, r
        if r["precision"] == "ieee":
            assert r["tensor_core_instructions"] == [], r
            continue
        assert any(i.startswith("wgmma") for i in r["tensor_core_instructions"]), r
        assert f"{r['config']['num_warps']}, 1" in r["mma_warps"], r
        if r["kernel"] == "forward":
            (instr,) = r["tensor_core_instructions"]  # the forward has exactly one dot: S
            s_instr[r["d"]] = instr
    for r in rows:
        if r["precision"] == "bf16" and r["kernel"] != "forward":
            assert s_instr[r["d"]] in r["tensor_core_instructions"], (r, s_instr[r["d"]])
