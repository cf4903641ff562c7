"""The public InfoNCE API and its fused backends against the materialised specification (kernels.reference).

Tiny chunk sizes (autouse fixture) make the tiled torch path cross many row/column tile borders; the Triton
backend is included automatically when ``kernels.info_nce_triton`` imports (interpreter mode on CPU).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from kernels import info_nce_torch
from kernels.distributed import all_gather_with_grad, local_rows
from kernels.info_nce import (
    NonFiniteEmbeddingError,
    cross_info_nce,
    info_nce,
    nce_backward_op,
    nce_forward_op,
    resolve_backend,
    resolve_precision,
)
from kernels.reference import (
    cross_info_nce_reference,
    info_nce_reference,
    nce_rows_reference,
    topk_cut_reference,
)


def _triton_imports() -> bool:
    try:
        import kernels.info_nce_triton  # noqa: F401
    except Exception:
        return False
    return True


FUSED = ["torch"] + (["triton"] if _triton_imports() else [])
STAT_KEYS = ("pos_top1", "fn_found", "fn_correct", "fn_possible")


@pytest.fixture(autouse=True)
def tiny_chunks(monkeypatch):
    """Tiles of 8 x 12 so that every test size spans several partial row and column tiles."""
    monkeypatch.setattr(info_nce_torch, "CHUNK_ROWS", 8)
    monkeypatch.setattr(info_nce_torch, "CHUNK_COLS", 12)


# ------------------------------------------------------------------------------------------------ helpers
def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _unit(n, d, seed, dtype=torch.float32):
    """Normalised rows rounded to ``dtype``: fused and reference then see the same values exactly."""
    return F.normalize(torch.randn(n, d, generator=_gen(seed)), dim=1).to(dtype)


def _tol(dtype):
    """(loss atol, grad relative tolerance): losses accumulate in fp32 everywhere; grads round to dtype."""
    return {torch.float32: (2e-5, 1e-4), torch.float16: (1e-4, 4e-3),
            torch.bfloat16: (1e-4, 3e-2), torch.float64: (1e-9, 1e-9)}[dtype]


def _safe_threshold(cos_values: torch.Tensor, quantile: float) -> float:
    """A cut-off in the widest gap between data cosines near ``quantile``: no value sits near the boundary."""
    v = cos_values.flatten().double().sort().values
    i = int(quantile * (len(v) - 1))
    lo, hi = max(i - 8, 0), min(i + 8, len(v) - 1)
    gaps = v[lo + 1:hi + 1] - v[lo:hi]
    j = lo + int(gaps.argmax())
    assert gaps.max() > 1e-4, "test data has no clean gap near the requested quantile"
    return float((v[j] + v[j + 1]) / 2)


def _run(fn, tensors, temperature, weights=None, **kw):
    """Loss (detached), grads of every input tensor and of a tensor temperature, and stats if asked."""
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    temp = temperature.detach().clone().requires_grad_() if isinstance(temperature, torch.Tensor) else temperature
    out = fn(*leaves, temp, **kw)
    loss, stats = out if kw.get("return_stats") else (out, None)
    (loss.sum() if weights is None else (loss * weights).sum()).backward()
    t_grad = temp.grad if isinstance(temp, torch.Tensor) else None
    return loss.detach(), [x.grad for x in leaves], t_grad, stats


def _assert_same(got, ref, dtype, check_stats=True):
    loss_atol, grad_rtol = _tol(dtype)
    torch.testing.assert_close(got[0].float(), ref[0].float(), atol=loss_atol, rtol=1e-5)
    for g, r in zip(got[1], ref[1]):
        assert g.dtype == dtype, "gradients must come back in the input dtype"
        scale = float(r.abs().max())
        torch.testing.assert_close(g.float(), r.float(), atol=grad_rtol * scale + 1e-7, rtol=grad_rtol)
    if ref[2] is not None:
        torch.testing.assert_close(got[2].float(), ref[2].float(), atol=1e-6, rtol=grad_rtol)
    if check_stats and ref[3] is not None:
        assert set(got[3]) == set(ref[3])
        for key in ref[3]:
            torch.testing.assert_close(got[3][key], ref[3][key], atol=0, rtol=0, msg=key)


def _ref_inputs(tensors):
    return [t.float() for t in tensors]


def _ref_nt(z1, z2, t, return_stats=False, **kw):
    loss, stats = info_nce_reference(z1, z2, t, **kw)
    return (loss, stats) if return_stats else loss


def _ref_cross(q, k, t, return_stats=False, **kw):
    loss, stats = cross_info_nce_reference(q, k, t, **kw)
    return (loss, stats) if return_stats else loss


# ------------------------------------------------------------------------------------------------ NT-Xent
DTYPES = [(b, dt) for b in FUSED for dt in (torch.float32, torch.float16, torch.bfloat16)]


@pytest.mark.parametrize("backend,dtype", DTYPES)
@pytest.mark.parametrize("n,d", [(13, 20), (9, 33)])
@pytest.mark.parametrize("temperature", [0.07, 0.5, "learnable"])
def test_nt_xent_values_and_grads(backend, dtype, n, d, temperature):
    """Per-row losses under non-uniform upstream weights: z1, z2 and temperature gradients."""
    temp = torch.tensor(0.2) if temperature == "learnable" else temperature
    z1, z2 = _unit(n, d, 1, dtype), _unit(n, d, 2, dtype)
    w = torch.rand(2 * n, generator=_gen(3))
    kw = dict(normalize=False, reduction="none")
    got = _run(info_nce, [z1, z2], temp, w, backend=backend, **kw)
    ref = _run(_ref_nt, _ref_inputs([z1, z2]), temp, w, **kw)
    _assert_same(got, ref, dtype)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_normalize_inside_and_reductions(backend, dtype, reduction):
    """Un-normalised inputs: the API normalises (in fp32) and the gradient flows back through it."""
    z1 = (3 * torch.randn(11, 24, generator=_gen(4))).to(dtype)
    z2 = (3 * torch.randn(11, 24, generator=_gen(5))).to(dtype)
    got = _run(info_nce, [z1, z2], 0.1, backend=backend, reduction=reduction)
    ref = _run(_ref_nt, _ref_inputs([z1, z2]), 0.1, reduction=reduction)
    if dtype == torch.float32:
        _assert_same(got, ref, dtype)
    else:  # the API rounds the normalised rows to fp16, the reference keeps fp32: compare loosely
        torch.testing.assert_close(got[0], ref[0], atol=0.05, rtol=0.01)
        for g, r in zip(got[1], ref[1]):
            torch.testing.assert_close(g.float(), r, atol=0.05 * float(r.abs().max()), rtol=0.05)


# ------------------------------------------------------------------------------------------------ false negatives
DETECTORS = ["labels", "threshold", "topk", "labels+topk", "threshold+topk"]


def _fn_kwargs(detector, z1, z2, labels):
    Z = torch.cat([z1, z2]).float()
    cos = Z @ Z.t()
    kw = {}
    if "labels" in detector:
        kw["labels"] = labels
    if "threshold" in detector:
        kw["fn_threshold"] = _safe_threshold(cos[~torch.eye(len(Z), dtype=torch.bool)], 0.85)
    if "topk" in detector:
        kw["fn_topk"] = 3
    return kw


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("detector", DETECTORS)
@pytest.mark.parametrize("fn_mode", ["eliminate", "attract"])
def test_false_negative_modes(backend, detector, fn_mode):
    """Each detector x treatment: loss, gradients and every stat (incl. detector precision/recall counts)."""
    n, d = 13, 20
    z1, z2 = _unit(n, d, 6), _unit(n, d, 7)
    labels = torch.randint(0, 4, (n,), generator=_gen(8))
    kw = dict(_fn_kwargs(detector, z1, z2, labels), fn_mode=fn_mode, normalize=False, reduction="none",
              return_stats=True, stat_labels=labels)
    w = torch.rand(2 * n, generator=_gen(9))
    temp = torch.tensor(0.15)
    got = _run(info_nce, [z1, z2], temp, w, backend=backend, **kw)
    ref = _run(_ref_nt, [z1, z2], temp, w, **kw)
    assert ref[3]["fn_found"].sum() > 0, "the case must actually detect false negatives"
    _assert_same(got, ref, torch.float32)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("fn_mode", ["eliminate", "attract"])
def test_every_negative_a_false_negative(backend, fn_mode):
    """One class for the whole batch: eliminate leaves D = P = {pos} (loss 0, no NaN); attract matches ref."""
    n = 10
    z1, z2 = _unit(n, 16, 10), _unit(n, 16, 11)
    labels = torch.full((n,), 3)
    kw = dict(labels=labels, fn_mode=fn_mode, normalize=False, reduction="none", return_stats=True)
    got = _run(info_nce, [z1, z2], 0.1, backend=backend, **kw)
    ref = _run(_ref_nt, [z1, z2], 0.1, **kw)
    assert all(torch.isfinite(g).all() for g in got[1])
    if fn_mode == "eliminate":
        assert torch.equal(got[0], torch.zeros(2 * n))
        assert all(torch.equal(g, torch.zeros_like(g)) for g in got[1])
    _assert_same(got, ref, torch.float32)


# ------------------------------------------------------------------------------------------------ DDP shards
@pytest.mark.parametrize("backend", FUSED)
def test_row_offset_shards_add_up(backend):
    """Shard means weighted by their share of rows sum to the global loss; shard grads sum to global grads."""
    n = 13
    z1, z2 = _unit(n, 20, 12), _unit(n, 20, 13)
    labels = torch.randint(0, 5, (n,), generator=_gen(14))
    kw = dict(labels=labels, fn_topk=2, fn_mode="attract", normalize=False, backend=backend)
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    total = info_nce(a, b, 0.1, **kw)
    total.backward()
    sa, sb = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    parts = []
    for off, rows in [(0, 5), (5, 4), (9, 4)]:
        part = info_nce(sa, sb, 0.1, row_offset=off, num_rows=rows, **kw) * (rows / n)
        part.backward()
        parts.append(part.detach())
    torch.testing.assert_close(sum(parts), total.detach(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(sa.grad, a.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(sb.grad, b.grad, atol=1e-6, rtol=1e-5)
    ref = info_nce_reference(z1, z2, 0.1, labels=labels, fn_topk=2, fn_mode="attract", normalize=False,
                             row_offset=5, num_rows=4)[0]
    torch.testing.assert_close(parts[1] * n / 4, ref, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ cross form
@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("detector,fn_mode", [("none", "eliminate"), ("labels", "eliminate"), ("labels", "attract"),
                                             ("threshold+topk", "eliminate"), ("threshold+topk", "attract")])
def test_cross_with_queue(backend, symmetric, detector, fn_mode):
    """MoCo queue (M > N keys) and CLIP symmetric form, learnable temperature, stats."""
    n, m, d = 11, 30, 18
    q, k = _unit(n, d, 15), _unit(m, d, 16)
    lq = torch.randint(0, 4, (n,), generator=_gen(17))
    lk = torch.randint(0, 4, (m,), generator=_gen(18))
    kw = dict(symmetric=symmetric, fn_mode=fn_mode, normalize=False, reduction="none", return_stats=True,
              stat_labels_q=lq, stat_labels_k=lk)
    if detector == "labels":
        kw.update(labels_q=lq, labels_k=lk)
    elif detector == "threshold+topk":
        kw.update(fn_threshold=_safe_threshold(q @ k.t(), 0.7), fn_topk=4)
    w = torch.rand(2 * n if symmetric else n, generator=_gen(19))
    temp = torch.tensor(0.3)
    got = _run(cross_info_nce, [q, k], temp, w, backend=backend, **kw)
    ref = _run(_ref_cross, [q, k], temp, w, **kw)
    _assert_same(got, ref, torch.float32)


# ------------------------------------------------------------------------------------------------ autograd checks
def test_gradcheck_fp64_torch_path():
    """Finite differences in fp64 through normalisation, the fused op and a learnable temperature."""
    g = _gen(20)
    z1, z2 = torch.randn(5, 6, generator=g, dtype=torch.float64), torch.randn(5, 6, generator=g, dtype=torch.float64)
    t = torch.tensor(0.3, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 2, 1])
    q, k = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(7, 6, generator=g, dtype=torch.float64)
    inputs = [x.requires_grad_() for x in (z1, z2, t, q, k)]

    def f(z1, z2, t, q, k):
        a = info_nce(z1, z2, t, labels=labels, fn_mode="attract", backend="torch", reduction="none")
        b = cross_info_nce(q, k, t, symmetric=True, backend="torch", reduction="none")
        return torch.cat([a, b])

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6)


def _core_args(attract=True):
    R, C, d = 9, 14, 5
    a, k = _unit(R, d, 21), _unit(C, d, 22)
    self_idx = torch.tensor([0, 1, 2, -1, 4, 5, 6, 7, -1])
    pos_idx = (torch.arange(R) + 3) % C
    la, lk = torch.randint(0, 3, (R,), generator=_gen(23)), torch.randint(0, 3, (C,), generator=_gen(24))
    cut = torch.full((R,), 0.4)
    return a, k, torch.tensor(5.0), self_idx, pos_idx, la, lk, cut, attract


@pytest.mark.parametrize("topk", [0, 2])
@pytest.mark.parametrize("attract", [False, True])
def test_opcheck(attract, topk):
    """Schema, fake (meta) kernels, autograd registration and AOT dispatch of both custom ops (with the
    in-op top-k detector, whose per-row cut the backward takes)."""
    a, k, it, self_idx, pos_idx, la, lk, cut, attract = _core_args(attract)
    args = (a.requires_grad_(), k.requires_grad_(), it.requires_grad_(), self_idx, pos_idx, la, lk, cut, topk,
            attract, la, lk, "ieee", True, False, "torch")
    torch.library.opcheck(nce_forward_op, args)
    _, lse, stats, cut_used = nce_forward_op(*args)
    assert cut_used.shape == ((9,) if topk else (0,))
    npos = 1 + stats[:, 1] if attract else torch.ones(9)
    torch.library.opcheck(nce_backward_op, (a.detach(), k.detach(), it.detach(), self_idx, pos_idx, la, lk,
                                            cut_used if topk else cut, topk, attract, lse, npos, torch.rand(9),
                                            "ieee", False, "torch"))


def test_torch_compile_fullgraph():
    """The whole loss (normalise, top-k cut, fused op, learnable temperature) compiles without graph breaks."""
    torch._dynamo.reset()
    z1, z2 = torch.randn(7, 12, generator=_gen(25)), torch.randn(7, 12, generator=_gen(26))
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0])

    def f(z1, z2, t):
        return info_nce(z1, z2, t, labels=labels, fn_topk=2, backend="torch")

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got = _run(compiled, [z1, z2], torch.tensor(0.2))
    ref = _run(f, [z1, z2], torch.tensor(0.2))
    _assert_same(got, ref, torch.float32)


# ------------------------------------------------------------------------------------------------ the tiled core
def test_topk_cut_tiled_matches_reference():
    """Running top-(k+1) across column tiles equals the reference's (k+1)-th largest negative cosine."""
    R, C = 19, 37
    a, k = _unit(R, 9, 27), _unit(C, 9, 28)
    self_idx, pos_idx = torch.arange(R), torch.arange(R) + 5
    cos = a @ k.t()
    for kk in (1, 4, 30):
        ref = topk_cut_reference(a, k, self_idx, pos_idx, kk)
        tiled = info_nce_torch.topk_cut(a, k, self_idx, pos_idx, kk, chunk_rows=8, chunk_cols=12)
        torch.testing.assert_close(tiled, ref, atol=1e-6, rtol=0)
        cut = info_nce_torch.topk_cut(a, k, self_idx, pos_idx, kk, chunk_rows=R, chunk_cols=C)  # one tile = cos
        for r in range(R):
            neg = [cos[r, j] for j in range(C) if j not in (self_idx[r], pos_idx[r])]
            assert sum(float(c) > float(cut[r]) for c in neg) == min(kk, len(neg))
    assert torch.isinf(info_nce_torch.topk_cut(a, k, self_idx, pos_idx, 36)).all()  # 35 negatives < 37
    assert torch.isinf(info_nce_torch.topk_cut(a, k, self_idx, pos_idx, 40)).all()  # k + 1 > C


def test_core_never_allocates_rows_by_cols():
    """Every tensor created by the torch core stays tile-sized or O((R + C) d): no (R, C) matrix."""
    R, C, d, cr, cc = 150, 170, 4, 16, 32

    class Sizes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.biggest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    self.biggest = max(self.biggest, t.numel())
            return out

    a, k = _unit(R, d, 29), _unit(C, d, 30)
    self_idx, pos_idx = torch.arange(R), (torch.arange(R) + 7) % C
    la, lk = torch.randint(0, 3, (R,)), torch.randint(0, 3, (C,))
    it = torch.tensor(4.0)
    with Sizes() as mode:
        loss, lse, st, cut = info_nce_torch.nce_forward(a, k, it, self_idx, pos_idx, la, lk, None, True, la, lk,
                                                        topk=3, chunk_rows=cr, chunk_cols=cc)
        info_nce_torch.nce_backward(a, k, it, self_idx, pos_idx, la, lk, cut, True, lse, 1 + st[:, 1],
                                    torch.ones(R), chunk_rows=cr, chunk_cols=cc)
    assert mode.biggest <= max(cr * (cc + 4), C * d)
    ref_cut = topk_cut_reference(a, k, self_idx, pos_idx, 3)
    torch.testing.assert_close(cut, ref_cut, atol=1e-6, rtol=0)  # the tiles' own products: last bits differ
    # the reference's full matmul may put the (k+1)-th cosine an ulp above the tiles' cut: give it a cut
    # that selects the same 3 negatives with margin
    mid = (topk_cut_reference(a, k, self_idx, pos_idx, 2) + ref_cut) / 2
    ref, _ = nce_rows_reference(a, k, it, self_idx, pos_idx, labels_a=la, labels_k=lk, cut=mid, attract=True)
    torch.testing.assert_close(loss, ref, atol=2e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ dispatch
def test_backend_dispatch(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_backend("auto", cpu, torch.float32) == "torch"
    assert resolve_backend("torch", cpu, torch.float64) == "torch"
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("cuda", cpu, torch.float32)
    with pytest.raises(ValueError, match="float64|unavailable"):
        resolve_backend("triton", cpu, torch.float64)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET|unavailable"):
        resolve_backend("triton", cpu, torch.float32)


def test_reference_backend_is_the_specification():
    z1, z2 = torch.randn(6, 8, generator=_gen(31)), torch.randn(6, 8, generator=_gen(32))
    loss, stats = info_nce(z1, z2, 0.2, fn_topk=1, backend="reference", return_stats=True)
    ref, ref_stats = info_nce_reference(z1, z2, 0.2, fn_topk=1)
    assert torch.equal(loss, ref) and set(stats) == {"pos_top1", "fn_found"}
    torch.testing.assert_close(stats, ref_stats)


# ------------------------------------------------------------------------------------------------ bad input
Z = torch.randn(6, 8)


def _bad_cases():
    nan = Z.clone()
    nan[2, 3] = float("nan")
    return [
        (lambda: info_nce(Z, torch.randn(5, 8)), "same shape"),
        (lambda: info_nce(Z, torch.randn(6, 7)), "dim"),
        (lambda: info_nce(Z, Z.double()), "dtype"),
        (lambda: info_nce(Z, Z.to("meta")), "is on"),
        (lambda: info_nce(Z[:1], Z[:1]), "N >= 2"),
        (lambda: info_nce(Z[0], Z[0]), "2-D"),
        (lambda: info_nce(Z.long(), Z.long()), "float16"),
        (lambda: info_nce(nan, Z), "non-finite"),
        (lambda: info_nce(Z, Z, 0.0), "temperature"),
        (lambda: info_nce(Z, Z, -0.1), "temperature"),
        (lambda: info_nce(Z, Z, torch.tensor(-1.0)), "temperature"),
        (lambda: info_nce(Z, Z, torch.tensor([0.1, 0.2])), "temperature"),
        (lambda: info_nce(Z, Z, labels=torch.zeros(5, dtype=torch.long)), "labels must have shape"),
        (lambda: info_nce(Z, Z, labels=torch.zeros(6)), "integer dtype"),
        (lambda: info_nce(Z, Z, stat_labels=torch.zeros(7, dtype=torch.long)), "stat_labels"),
        (lambda: info_nce(Z, Z, fn_mode="remove"), "fn_mode"),
        (lambda: info_nce(Z, Z, reduction="avg"), "reduction"),
        (lambda: info_nce(Z, Z, backend="cuda"), "backend"),
        (lambda: info_nce(Z, Z, fn_topk=0), "fn_topk"),
        (lambda: info_nce(Z, Z, fn_topk=1.5), "fn_topk"),
        (lambda: info_nce(Z, Z, fn_threshold=float("nan")), "fn_threshold"),
        (lambda: info_nce(Z, Z, row_offset=6), "row_offset"),
        (lambda: info_nce(Z, Z, row_offset=-1), "row_offset"),
        (lambda: info_nce(Z, Z, row_offset=2, num_rows=5), "num_rows"),
        (lambda: info_nce(Z, Z, num_rows=0), "num_rows"),
        (lambda: cross_info_nce(Z, Z[:4]), "at least as many rows"),
        (lambda: cross_info_nce(Z, Z, symmetric=True, labels_q=torch.zeros(6, dtype=torch.long)), "together"),
        (lambda: cross_info_nce(Z, torch.randn(9, 8), labels_q=torch.zeros(6, dtype=torch.long),
                                labels_k=torch.zeros(6, dtype=torch.long)), "labels_k must have shape"),
        (lambda: cross_info_nce(Z[:1], Z), "N >= 2"),
        (lambda: cross_info_nce(Z, Z, fn_mode="x"), "fn_mode"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_cases())))
def test_bad_input_raises_clear_value_error(case):
    call, message = _bad_cases()[case]
    with pytest.raises(ValueError, match=message):
        call()


# ------------------------------------------------------------------------------------------------ DDP (2 ranks)
_DDP_SCRIPT = """
import sys
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def worker(rank, world, out):
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=world)
    from kernels.distributed import all_gather_with_grad, local_rows
    from kernels.info_nce import info_nce

    data = torch.load(f"{out}/inputs.pt")
    n = data["n"]
    a = data["z1"][rank * n:(rank + 1) * n].clone().requires_grad_()
    b = data["z2"][rank * n:(rank + 1) * n].clone().requires_grad_()
    z1_all, z2_all = all_gather_with_grad(a), all_gather_with_grad(b)
    loss = info_nce(z1_all, z2_all, 0.2, labels=data["labels"], fn_mode="attract",
                    row_offset=local_rows(n, rank), num_rows=n, backend="torch")
    loss.backward()
    torch.save({"loss": loss.detach(), "g1": a.grad, "g2": b.grad}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.start_processes(worker, args=(2, sys.argv[1]), nprocs=2, start_method="fork")
"""


def test_ddp_two_ranks_match_single_process(tmp_path):
    """Two gloo ranks gathering with gradient: mean of rank losses and DDP-averaged grads = one process."""
    n, world = 4, 2
    z1, z2 = torch.randn(world * n, 8, generator=_gen(33)), torch.randn(world * n, 8, generator=_gen(34))
    labels = torch.tensor([0, 1, 2, 0, 1, 3, 3, 2])
    torch.save({"n": n, "z1": z1, "z2": z2, "labels": labels}, tmp_path / "inputs.pt")
    (tmp_path / "ddp.py").write_text(_DDP_SCRIPT)
    root = str(Path(__file__).resolve().parents[2])
    proc = subprocess.run([sys.executable, str(tmp_path / "ddp.py"), str(tmp_path)], cwd=root, timeout=240,
                          env={**os.environ, "PYTHONPATH": root}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    full = _run(info_nce, [z1, z2], 0.2, labels=labels, fn_mode="attract", backend="torch")
    torch.testing.assert_close(sum(r["loss"] for r in ranks) / world, full[0], atol=1e-6, rtol=1e-6)
    g1 = torch.cat([r["g1"] for r in ranks]) / world  # DDP averages the per-rank gradients
    g2 = torch.cat([r["g2"] for r in ranks]) / world
    torch.testing.assert_close(g1, full[1][0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(g2, full[1][1], atol=1e-6, rtol=1e-5)


def test_single_process_helpers():
    x = torch.randn(3, 2)
    assert all_gather_with_grad(x) is x
    assert local_rows(5, 3) == 15
    with pytest.raises(ValueError, match="n_local"):
        local_rows(0, 1)


# ------------------------------------------------------------------------------------------------ dtype policy
def test_precision_resolution():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", cuda, torch.float32) == "bf16"  # tensor cores by default on the GPU
    assert resolve_precision("auto", cuda, torch.bfloat16) == "bf16"
    assert resolve_precision("auto", cuda, torch.float16) == "fp16"
    assert resolve_precision("auto", cpu, torch.float32) == "ieee"  # exact where low precision buys nothing
    assert resolve_precision("auto", cpu, torch.bfloat16) == "bf16"
    assert resolve_precision("auto", cpu, torch.float64) == "ieee"
    assert resolve_precision("tf32", cpu, torch.float32) == "tf32"
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp8", cpu, torch.float32)


def test_round_tf32_keeps_ten_mantissa_bits_nearest_even():
    one = 1.0
    ulp = 2.0 ** -10
    x = torch.tensor([one + ulp / 4, one + ulp * 3 / 4, one + ulp / 2, one + ulp * 3 / 2, -(one + ulp * 3 / 4), 0.0])
    expect = torch.tensor([one, one + ulp, one, one + 2 * ulp, -(one + ulp), 0.0])
    assert torch.equal(info_nce_torch.round_tf32(x), expect)


@pytest.mark.parametrize("backend,precision", [(b, p) for b in FUSED for p in ("bf16", "fp16", "tf32")
                                                if (b, p) != ("triton", "tf32")])  # no CPU tf32: a clear error
def test_explicit_precision_rounds_the_dot_operands(backend, precision):
    """fp32 inputs with a low-precision dot: the same as the reference on the rows rounded the same way
    (after normalisation in fp32), with the top-k detector; and not the same as the exact dot."""
    z1, z2 = 3 * torch.randn(11, 24, generator=_gen(60)), 3 * torch.randn(11, 24, generator=_gen(61))
    rnd = {"bf16": lambda t: t.bfloat16().float(), "fp16": lambda t: t.half().float(),
           "tf32": info_nce_torch.round_tf32}[precision]
    kw = dict(fn_topk=2, reduction="none")
    got = info_nce(z1, z2, 0.1, backend=backend, precision=precision, **kw)
    exact = info_nce(z1, z2, 0.1, backend=backend, precision="ieee", **kw)
    ref = info_nce_reference(rnd(F.normalize(z1, dim=1)), rnd(F.normalize(z2, dim=1)), 0.1, normalize=False,
                             **kw)[0]
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-5)
    assert (got - exact).abs().max() > 1e-5


# ------------------------------------------------------------------------------------------------ no host syncs
class _NoSync:
    """Every way of reading a tensor's value on the host raises while active (what a CUDA sync would be)."""

    NAMES = ("item", "__bool__", "__int__", "__float__", "tolist", "nonzero")

    def __enter__(self):
        def refuse(name):
            def f(*args, **kwargs):
                raise AssertionError(f"host sync: Tensor.{name} was called")
            return f

        self.saved = {n: getattr(torch.Tensor, n) for n in self.NAMES}
        self.saved_nonzero = torch.nonzero
        for n in self.NAMES:
            setattr(torch.Tensor, n, refuse(n))
        torch.nonzero = refuse("nonzero (torch.nonzero)")
        return self

    def __exit__(self, *exc):
        for n, f in self.saved.items():
            setattr(torch.Tensor, n, f)
        torch.nonzero = self.saved_nonzero


@pytest.mark.parametrize("backend", ["torch"])
def test_dispatch_path_never_reads_values_on_the_host(backend):
    """With device-side checks (the default on CUDA) the whole loss, forward and backward, with every
    detector, stats, a learnable temperature and both forms, never calls item/bool/int/float/tolist/nonzero."""
    n, d = 13, 20
    z1, z2 = (torch.randn(n, d, generator=_gen(s)).requires_grad_() for s in (70, 71))
    temp = torch.tensor(0.2, requires_grad=True)
    labels = torch.randint(0, 3, (n,), generator=_gen(72))
    with _NoSync():
        loss, stats = info_nce(z1, z2, temp, labels=labels, fn_threshold=0.3, fn_topk=2, fn_mode="attract",
                               return_stats=True, stat_labels=labels, backend=backend, checks="device",
                               row_offset=2, num_rows=9)
        loss2 = cross_info_nce(z1, z2, temp, symmetric=True, fn_topk=1, backend=backend, checks="device")
        (loss + loss2).backward()
    assert torch.isfinite(loss) and z1.grad is not None and temp.grad is not None
    with pytest.raises(AssertionError, match="host sync"), _NoSync():
        info_nce(z1, z2, temp, backend=backend, checks="host")  # the host checks do read values


def test_triton_host_side_never_reads_values(monkeypatch):
    """The Triton backend's host code (argument checks, operand casts, TMA descriptors, split merges, the
    fp16 scale) with the kernel launches themselves stubbed out: no value is read on the host."""
    if "triton" not in FUSED:
        pytest.skip("triton does not import here")
    import kernels.info_nce_triton as m

    class Stub:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: None

    monkeypatch.setattr(m, "_interpreted", lambda: True)
    for name in ("_nce_fwd_kernel", "_nce_bwd_anchor_kernel", "_nce_bwd_key_kernel"):
        monkeypatch.setattr(m, name, Stub())
    a, k = _unit(40, 24, 73), _unit(50, 24, 74)
    self_idx, pos_idx = torch.full((40,), -1), torch.arange(40)
    la, lk = torch.randint(0, 3, (40,)), torch.randint(0, 3, (50,))
    it = torch.tensor(5.0)
    with _NoSync():
        for topk, det in ((0, False), (3, True)):
            loss, lse, st, cut = m.nce_forward(a, k, it, self_idx, pos_idx, la, lk, torch.full((40,), 0.2), True,
                                               la, lk, topk=topk, precision="bf16")
            m.nce_backward(a, k, it, self_idx, pos_idx, la, lk, cut if topk else None, True, lse, 1 + st[:, 1],
                           torch.ones(40), topk=topk, precision="bf16", deterministic=det)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a CUDA graph needs a GPU (runs in gpu_check too)")
def test_loss_captures_in_a_cuda_graph():
    """Forward + backward of the fused loss (bf16, top-k, labels, stats) inside one CUDA graph, replayed on new
    inputs, equals an eager call: possible only because nothing on the path syncs. The capture itself is the
    GPU check's (``benchmarks/gpu_check.py``), so both run the same code."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from benchmarks.gpu_check import cuda_graph_replay

    dev = torch.device("cuda")
    z1, z2 = torch.randn(512, 128, device=dev), torch.randn(512, 128, device=dev)
    result = cuda_graph_replay(z1, z2, torch.randint(0, 10, (512,), device=dev))
    assert result["captured"] and result["ok"], result


# ------------------------------------------------------------------------------------------------ value checks
def _nan_rows():
    z = torch.randn(6, 8, generator=_gen(75))
    bad = z.clone()
    bad[2, 3] = float("inf")
    return z, bad


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's numpy
@pytest.mark.parametrize("backend", FUSED + ["reference"])
def test_device_checks_turn_bad_values_into_a_nan_loss(backend):
    """checks="device": non-finite embeddings, a non-positive temperature tensor or labels outside int32 give
    a NaN loss (every row for reduction="none"), which the trainer's non-finite stop catches; checks="host"
    raises a clear error for the same inputs."""
    z, bad = _nan_rows()
    big = torch.tensor([0, 1, 2, 2**40, 1, 0])
    cases = [((bad, z, 0.1), {}, NonFiniteEmbeddingError),
             ((z, z.flip(0), torch.tensor(-0.5)), {}, ValueError),
             ((z, z.flip(0), 0.1), {"labels": big}, ValueError)]
    for args, extra, error in cases:
        for reduction in ("mean", "none"):
            loss = info_nce(*args, backend=backend, checks="device", reduction=reduction, **extra)
            assert loss.isnan().all(), (args, extra, reduction)
        with pytest.raises(error):
            info_nce(*args, backend=backend, checks="host", **extra)
    assert torch.isfinite(info_nce(z, z.flip(0), 0.1, backend=backend, checks="device"))
    assert cross_info_nce(bad, z, 0.1, backend=backend, checks="device").isnan()
    with pytest.raises(ValueError, match="checks must be one of"):
        info_nce(z, z, checks="never")


def test_deterministic_follows_torch_setting(monkeypatch):
    """``deterministic=None`` asks torch.use_deterministic_algorithms; an explicit value wins."""
    seen = []
    real = info_nce_torch.nce_backward

    def spy(*args, **kwargs):
        seen.append(kwargs["deterministic"])
        return real(*args, **kwargs)

    monkeypatch.setattr(info_nce_torch, "nce_backward", spy)
    z1, z2 = (torch.randn(5, 4, generator=_gen(s)).requires_grad_() for s in (76, 77))
    info_nce(z1, z2, backend="torch").backward()
    info_nce(z1, z2, backend="torch", deterministic=True).backward()
    torch.use_deterministic_algorithms(True)
    try:
        info_nce(z1, z2, backend="torch").backward()
    finally:
        torch.use_deterministic_algorithms(False)
    assert seen == [False, True, True]


def test_triton_topk_limit_is_a_clear_error():
    if "triton" not in FUSED:
        pytest.skip("triton does not import here")
    z = torch.randn(20, 8, generator=_gen(78))
    with pytest.raises(ValueError, match="fn_topk must be <= 16 on the triton backend"):
        info_nce(z, z.flip(0), fn_topk=17, backend="triton")
    info_nce(z, z.flip(0), fn_topk=17, backend="torch")  # no such limit on the torch path
