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

from kernels.info_nce_triton import nce_backward, nce_forward  # noqa: E402
from kernels.reference import nce_rows_reference  # noqa: E402

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


def _run(anchors, keys, inv_temp, self_idx, pos_idx, la, lk, cut, attract, sla, slk, grad_loss):
    it = torch.tensor(float(inv_temp))
    loss, lse, stats = nce_forward(anchors, keys, it, self_idx, pos_idx, la, lk, cut, attract, sla, slk)
    npos = 1.0 + stats[:, 1] if attract else torch.ones_like(loss)
    da, dk = nce_backward(anchors, keys, it, self_idx, pos_idx, la, lk, cut, attract, lse, npos, grad_loss)
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
    loss, lse, stats = nce_forward(anchors, keys, it, self_idx, pos_idx, la, lk, cut, True, stat_a, stat_k,
                                   splits=splits)
    da, dk = nce_backward(anchors, keys, it, self_idx, pos_idx, la, lk, cut, True, lse, 1 + stats[:, 1],
                          grad_loss, splits=splits)
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
    _, _, stats = nce_forward(anchors, keys, torch.tensor(5.0), self_idx, pos_idx, None, None, cut, False,
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
        loss, lse, stats = nce_forward(anchors, keys, torch.tensor(4.0), self_idx, pos_idx, la, lk, cut, True,
                                       la, lk)
        nce_backward(anchors, keys, torch.tensor(4.0), self_idx, pos_idx, la, lk, cut, True, lse,
                     1 + stats[:, 1], torch.ones(R))
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
    with pytest.raises(ValueError, match="bfloat16 is not supported under TRITON_INTERPRET"):
        call(anchors=anchors.bfloat16(), keys=keys.bfloat16())
    with pytest.raises(ValueError, match="inv_temp must be a one-element"):
        call(inv_temp=2.0)


_AOT_SCRIPT = r"""
import json, os, re, subprocess, sys, tempfile
import torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import kernels.info_nce_triton as m

out = []
for dtype, name, d, cc in json.loads(sys.argv[1]):
    cfg = m.pick_config(d, getattr(torch, dtype), interpreted=False)
    meta = m.kernel_meta(cfg, has_labels=True, has_cut=True, attract=True)
    opts = dict(num_warps=meta.pop("num_warps"), num_stages=meta.pop("num_stages"))
    fn = getattr(m, name)
    meta.update(dict(HAS_STAT=True, SPLIT=True) if name == "_nce_fwd_kernel" else dict(BLOCK_DO=cfg.block_do))
    ptr = {"a_ptr": "*" + {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}[dtype], "k_ptr": None}
    ptr["k_ptr"] = ptr["a_ptr"]
    ints = ("self_ptr", "pos_ptr", "la_ptr", "lk_ptr", "sla_ptr", "slk_ptr")
    sig = {a: "constexpr" if a in meta else "i32" if a in ("R", "C", "D", "TILES_PER_SPLIT")
           else ptr.get(a, "*i64" if a in ints else "*fp32") for a in fn.arg_names}
    # what a launch with 16-aligned tensors and d = 128 specialises on
    attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(fn.arg_names)
             if sig[a][0] == "*" or a == "D"}
    k = triton.compile(ASTSource(fn, sig, meta, attrs), target=GPUTarget("cuda", cc, 32), options=opts)
    ptx = k.asm["ptx"]
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    arch = "sm_90a" if cc == 90 else f"sm_{cc}"
    rep = subprocess.run([ptxas, "-v", f"--gpu-name={arch}", f.name, "-o", os.devnull],
                         capture_output=True, text=True, check=True).stderr
    spill = int(re.search(r"(\d+) bytes spill stores", rep)[1])
    out.append(dict(dtype=dtype, kernel=name, cc=cc, spill=spill,
                    regs=int(re.search(r"Used (\d+) registers", rep)[1]), shared=k.metadata.shared,
                    mma=ptx.count("mma.sync") + ptx.count("wgmma.mma_async")))
print(json.dumps(out))
"""


@pytest.mark.slow
def test_gpu_kernels_compile_without_spills(tmp_path):
    """The GPU path cannot run here, but it can be compiled: ahead of time for sm_90 (H100), in a process
    without TRITON_INTERPRET, with the exact configs ``pick_config`` gives. Checks that every kernel compiles,
    ptxas reports no register spills, shared memory fits, fp16 uses tensor-core MMA and fp32 uses none
    (input_precision="ieee": no silent TF32)."""
    import json
    import pathlib
    import subprocess
    import sys

    triton_dir = pathlib.Path(__import__("triton").__file__).parent
    if not (triton_dir / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("this triton wheel ships no ptxas: cannot compile for a GPU target offline")
    jobs = [(dt, k, 128, 90) for dt in ("float16", "float32")
            for k in ("_nce_fwd_kernel", "_nce_bwd_anchor_kernel", "_nce_bwd_key_kernel")]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    root = pathlib.Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", _AOT_SCRIPT, json.dumps(jobs)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(reports) == len(jobs)
    for r in reports:
        assert r["spill"] == 0, r
        assert r["shared"] <= 100 * 1024, r
        assert (r["mma"] > 0) == (r["dtype"] == "float16"), r
