"""The fused PGD step, every backend, against torchattacks' update written out op by op (below).

The oracle ``torchattacks_step`` is copied in spirit from torchattacks' PGD / PGDL2 ``forward`` loops,
independent of ``kernels.reference``; the end-to-end tests compare whole PGD-k runs against
``torchattacks.PGD`` / ``PGDL2`` themselves. Exactness: the torch path performs the same fp32 ops in
the same order, so it must match bit for bit; the triton path only reduces the L2 norms in another
order (L-inf must still be exact); the reference writes ``a*g/gn`` as ``(a*g)/gn`` (an ulp apart).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before torch/triton are imported

import pytest
import torch
import torch.nn as nn

from kernels.pgd import pgd_step
from kernels.pgd_torch import pgd_step_torch
from kernels.pgd_triton import pgd_step_triton

BACKENDS = ("reference", "torch", "triton")
NORMS = ("linf", "l2")
STEP = {"linf": (2 / 255, 8 / 255), "l2": (0.3, 0.5)}  # (step_size, eps) per norm


def torchattacks_step(x, g, x0, a, eps, norm, clamp=(0.0, 1.0)):
    """One update exactly as torchattacks' PGD / PGDL2 loops write it, in fp32, back to x's dtype."""
    images, adv_images, grad = x0.float(), x.float(), g.float()
    batch_size = len(images)
    view = (-1,) + (1,) * (x.dim() - 1)
    if norm == "linf":
        adv_images = adv_images + a * grad.sign()
        delta = torch.clamp(adv_images - images, min=-eps, max=eps)
    else:
        grad_norms = torch.norm(grad.view(batch_size, -1), p=2, dim=1) + 1e-10
        grad = grad / grad_norms.view(view)
        adv_images = adv_images + a * grad
        delta = adv_images - images
        delta_norms = torch.norm(delta.view(batch_size, -1), p=2, dim=1)
        factor = eps / delta_norms
        factor = torch.min(factor, torch.ones_like(delta_norms))
        delta = delta * factor.view(view)
    adv_images = images + delta
    if clamp is not None:
        adv_images = torch.clamp(adv_images, min=clamp[0], max=clamp[1])
    return adv_images.to(x.dtype)


def make_inputs(shape, dtype=torch.float32, seed=0, spread=0.05):
    """x0 in [0,1]; x a perturbed, clamped copy (as after earlier steps); grad with mixed signs."""
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand(shape, generator=gen)
    x = (x0 + spread * torch.randn(shape, generator=gen)).clamp(0, 1)
    g = torch.randn(shape, generator=gen)
    return x.to(dtype), g.to(dtype), x0.to(dtype)


def assert_step_close(out, expected, backend, norm):
    """Bitwise where the op order is the same; otherwise within the reduction-order error."""
    assert out.dtype == expected.dtype and out.shape == expected.shape
    if backend == "torch" or norm == "linf":
        torch.testing.assert_close(out, expected, rtol=0, atol=0, equal_nan=True)
        return
    ulp = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[out.dtype]
    torch.testing.assert_close(out.float(), expected.float(), rtol=0, atol=ulp, equal_nan=True)


IMAGE, CLIP = (3, 3, 7, 9), (2, 3, 4, 9, 11)  # odd sizes: no sample is a multiple of any block


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("shape", [IMAGE, CLIP], ids=["image", "clip"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_matches_torchattacks_sequence(backend, norm, shape, dtype):
    x, g, x0 = make_inputs(shape, dtype)
    a, eps = STEP[norm]
    out = pgd_step(x, g, x0, step_size=a, eps=eps, norm=norm, backend=backend)
    assert_step_close(out, torchattacks_step(x, g, x0, a, eps, norm), backend, norm)


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("norm", NORMS)
def test_bf16_on_eager_paths(backend, norm):
    x, g, x0 = make_inputs(IMAGE, torch.bfloat16)
    a, eps = STEP[norm]
    out = pgd_step(x, g, x0, step_size=a, eps=eps, norm=norm, backend=backend)
    assert_step_close(out, torchattacks_step(x, g, x0, a, eps, norm), backend, norm)


def test_l2_projection_is_active_and_exercised():
    """Guard against vacuous tests: default inputs hit the eps-ball projection, spread=0.001 does not."""
    x, g, x0 = make_inputs(IMAGE)
    a, eps = STEP["l2"]
    out = pgd_step(x, g, x0, step_size=a, eps=eps, norm="l2", backend="torch", clamp=None)
    radius = (out - x0).flatten(1).norm(dim=1)
    torch.testing.assert_close(radius, torch.full_like(radius, eps), rtol=1e-5, atol=0)
    x_far, g2, x0_2 = make_inputs(IMAGE, spread=0.001)
    out = pgd_step(x_far, g2, x0_2, step_size=0.05, eps=eps, norm="l2", backend="torch", clamp=None)
    assert ((out - x0_2).flatten(1).norm(dim=1) < eps).all()


@pytest.mark.parametrize("norm", NORMS)
def test_triton_multi_kernel_l2_and_linf_on_larger_samples(norm):
    """Samples of 3876 elements: the L2 three-kernel path with 4 spans, the last one partial."""
    shape = (3, 3, 4, 17, 19)
    x, g, x0 = make_inputs(shape)
    a, eps = STEP[norm]
    out = pgd_step_triton(x, g, x0, torch.empty_like(x), step_size=a, eps=eps, norm=norm,
                          clamp=(0.0, 1.0), max_single_elems=64)
    assert_step_close(out, torchattacks_step(x, g, x0, a, eps, norm), "triton", norm)


@pytest.mark.parametrize("norm", NORMS)
def test_torch_path_chunking_is_invisible(norm):
    """Chunks of 1 and 2 samples give the same bits as one chunk (norms are per sample)."""
    x, g, x0 = make_inputs((5, 3, 6, 7))
    a, eps = STEP[norm]
    kw = dict(step_size=a, eps=eps, norm=norm, clamp=(0.0, 1.0))
    whole = pgd_step_torch(x, g, x0, torch.empty_like(x), chunk_elems=10**9, **kw)
    for chunk in (1, 2 * 3 * 6 * 7):
        part = pgd_step_torch(x, g, x0, torch.empty_like(x), chunk_elems=chunk, **kw)
        assert torch.equal(part, whole)
    assert torch.equal(whole, torchattacks_step(x, g, x0, a, eps, norm))


@pytest.mark.parametrize("backend", BACKENDS)
def test_linf_zero_gradient_entries_do_not_move(backend):
    x, g, x0 = make_inputs(IMAGE)
    g[:, 0] = 0.0
    a, eps = STEP["linf"]
    x = x0 + (x - x0).clamp(-eps, eps)  # start inside the box so a zero step is a fixed point
    out = pgd_step(x, g, x0, step_size=a, eps=eps, norm="linf", backend=backend, clamp=None)
    assert torch.equal(out[:, 0], x[:, 0])
    assert not torch.equal(out[:, 1:], x[:, 1:])
    assert_step_close(out, torchattacks_step(x, g, x0, a, eps, "linf", None), backend, "linf")


@pytest.mark.parametrize("backend", BACKENDS)
def test_l2_zero_gradient_sample_does_not_move(backend):
    x, g, x0 = make_inputs(IMAGE, spread=0.001)  # ||x - x0|| well inside the eps-ball
    g[1] = 0.0
    a, eps = STEP["l2"]
    out = pgd_step(x, g, x0, step_size=a, eps=eps, norm="l2", backend=backend)
    assert torch.equal(out[1], x[1])
    assert not torch.equal(out[0], x[0])
    assert_step_close(out, torchattacks_step(x, g, x0, a, eps, "l2"), backend, "l2")


def _paths():
    """Every code path of the step: reference, torch (whole / one-sample chunks), triton (one program per
    sample / the three-kernel L2 path)."""
    return {
        "reference": lambda x, g, x0, **kw: pgd_step(x, g, x0, backend="reference", **kw),
        "torch": lambda x, g, x0, **kw: pgd_step(x, g, x0, backend="torch", **kw),
        "torch-chunked": lambda x, g, x0, **kw: pgd_step_torch(x, g, x0, torch.empty_like(x), chunk_elems=1,
                                                               clamp=(0.0, 1.0), **kw),
        "triton": lambda x, g, x0, **kw: pgd_step(x, g, x0, backend="triton", **kw),
        "triton-multi": lambda x, g, x0, **kw: pgd_step_triton(x, g, x0, torch.empty_like(x), clamp=(0.0, 1.0),
                                                               max_single_elems=64, **kw),
    }


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's numpy
@pytest.mark.parametrize("path", list(_paths()))
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_non_finite_gradient_gives_nan_never_a_silent_step(path, bad):
    """One documented behaviour (kernels.pgd): every output computed from a non-finite gradient value is NaN.
    L-inf: exactly the elements whose gradient is non-finite (torchattacks would leave a NaN one unmoved and
    step an inf one); L2: their whole sample (through the norm). Everything else is the ordinary step."""
    step = _paths()[path]
    x, g, x0 = make_inputs((3, 2, 5, 40))  # 400-element samples: the three-kernel L2 path has 7 spans
    g[1, 1, 2, 7] = bad
    g[1, 0, 4, 39] = bad
    for norm in NORMS:
        a, eps = STEP[norm]
        out = step(x, g, x0, step_size=a, eps=eps, norm=norm)
        finite_g = torch.where(torch.isfinite(g), g, 0.0)
        expected = torchattacks_step(x, finite_g, x0, a, eps, norm)
        nan = out.isnan()
        if norm == "linf":
            assert nan.sum() == 2 and nan[1, 1, 2, 7] and nan[1, 0, 4, 39]
            assert_step_close(out.masked_fill(nan, 0.0), expected.masked_fill(nan, 0.0), path.split("-")[0], norm)
        else:
            assert nan[1].all() and not nan[0].any() and not nan[2].any()
            for i in (0, 2):
                assert_step_close(out[i:i + 1], expected[i:i + 1], path.split("-")[0], norm)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm", NORMS)
def test_out_aliasing_x_updates_in_place(backend, norm):
    x, g, x0 = make_inputs(CLIP)
    a, eps = STEP[norm]
    expected = torchattacks_step(x, g, x0, a, eps, norm)
    result = pgd_step(x, g, x0, step_size=a, eps=eps, norm=norm, backend=backend, out=x)
    assert result is x
    assert_step_close(x, expected, backend, norm)


@pytest.mark.parametrize("backend", BACKENDS)
def test_separate_and_non_contiguous_out_and_inputs(backend):
    x, g, x0 = make_inputs((2, 4, 5, 3))
    xt, gt, x0t = (t.transpose(1, 3) for t in (x, g, x0))  # non-contiguous views, shape (2, 3, 5, 4)
    out = torch.empty_like(xt.contiguous()).transpose(1, 3).contiguous().transpose(1, 3)
    assert not out.is_contiguous()
    a, eps = STEP["l2"]
    result = pgd_step(xt, gt, x0t, step_size=a, eps=eps, norm="l2", backend=backend, out=out)
    assert result is out
    expected = torchattacks_step(xt.contiguous(), gt.contiguous(), x0t.contiguous(), a, eps, "l2")
    assert_step_close(out, expected, backend, "l2")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm", NORMS)
def test_clamp_none_allows_leaving_the_range(backend, norm):
    x, g, x0 = make_inputs(IMAGE)
    x0, x, g = x0 * 0.1 + 0.95, x * 0.1 + 0.95, g.abs()  # near the top, pushed upwards
    a, eps = STEP[norm]
    out = pgd_step(x, g, x0, step_size=a, eps=eps, norm=norm, backend=backend, clamp=None)
    assert out.max() > 1.0
    assert_step_close(out, torchattacks_step(x, g, x0, a, eps, norm, None), backend, norm)
    clamped = pgd_step(x, g, x0, step_size=a, eps=eps, norm=norm, backend=backend, clamp=(0.2, 0.99))
    assert_step_close(clamped, torchattacks_step(x, g, x0, a, eps, norm, (0.2, 0.99)), backend, norm)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm", NORMS)
def test_infinite_eps_is_an_unconstrained_step(backend, norm):
    """eps=inf (used for unconstrained descent) projects nothing: x + a*sign(g) or x + a*g/||g||."""
    x, g, x0 = make_inputs(CLIP)
    a = STEP[norm][0]
    out = pgd_step(x, g, x0, step_size=a, eps=float("inf"), norm=norm, backend=backend, clamp=None)
    gnorm = g.flatten(1).norm(dim=1).view(-1, 1, 1, 1, 1) + 1e-10
    free = x + a * (g.sign() if norm == "linf" else g / gnorm)
    torch.testing.assert_close(out, free, rtol=0, atol=1e-6)  # x0 + ((x + step) - x0): rounding only
    bounded = pgd_step(x, g, x0, step_size=a, eps=STEP[norm][1], norm=norm, backend=backend, clamp=None)
    assert (bounded - free).abs().max() > 1e-3  # a finite eps would have projected


def test_result_is_detached_and_auto_is_torch_on_cpu():
    x, g, x0 = make_inputs(IMAGE)
    x.requires_grad_(True)
    out = pgd_step(x, g, x0, step_size=0.01, eps=0.03)
    assert not out.requires_grad
    assert torch.equal(out, pgd_step(x, g, x0, step_size=0.01, eps=0.03, backend="torch"))
    import kernels.pgd

    assert kernels.pgd._resolve_backend("auto", x0) == "torch"  # L-inf agrees on every path: ask directly


def test_empty_batch_returns_empty():
    x = torch.empty(0, 3, 4, 4)
    for backend in BACKENDS:
        for norm in NORMS:
            assert pgd_step(x, x, x, step_size=0.1, eps=0.1, norm=norm, backend=backend).shape == x.shape


def _bad(**change):
    x, g, x0 = make_inputs((2, 3, 4, 4))
    kw = dict(x=x, grad=g, x0=x0, step_size=0.1, eps=0.2, norm="linf", clamp=(0.0, 1.0), out=None,
              backend="torch")
    kw.update(change)
    return kw


@pytest.mark.parametrize("change, message", [
    (dict(grad=torch.zeros(2, 3, 4, 5)), "grad has shape"),
    (dict(x0=torch.zeros(3, 3, 4, 4)), "x0 has shape"),
    (dict(out=torch.zeros(2, 3, 4)), "out has shape"),
    (dict(grad=torch.zeros(2, 3, 4, 4, dtype=torch.float64)), "grad has dtype"),
    (dict(out=torch.zeros(2, 3, 4, 4, dtype=torch.float16)), "out has dtype"),
    (dict(x=torch.zeros(2, 3, 4, 4, dtype=torch.int64)), "x must have a floating dtype"),
    (dict(x=torch.tensor(0.5)), "batch dimension"),
    (dict(norm="l1"), "norm must be"),
    (dict(step_size=-0.1), "step_size"),
    (dict(step_size=float("nan")), "step_size"),
    (dict(eps=-1.0), "eps must be"),
    (dict(clamp=(1.0, 0.0)), "clamp low"),
    (dict(clamp=(0.0,)), "clamp must be"),
    (dict(backend="cuda"), "backend must be"),
])
def test_bad_inputs_raise_value_error(change, message):
    kw = _bad(**change)
    with pytest.raises(ValueError, match=message):
        pgd_step(kw.pop("x"), kw.pop("grad"), kw.pop("x0"), **kw)


def test_out_overlapping_an_input_raises():
    x, g, x0 = make_inputs((2, 3, 4, 4))
    with pytest.raises(ValueError, match="out overlaps grad"):
        pgd_step(x, g, x0, step_size=0.1, eps=0.2, out=g)
    buf = torch.rand(4, 3, 4, 4)
    with pytest.raises(ValueError, match="out overlaps x"):
        pgd_step(buf[:2], g, x0, step_size=0.1, eps=0.2, out=buf[1:3])


def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x, g, x0 = make_inputs((2, 3, 4, 4))
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        pgd_step(x, g, x0, step_size=0.1, eps=0.2, backend="triton")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_custom_ops_pass_opcheck(backend):
    x, g, x0 = make_inputs((2, 3, 5, 5))
    args = (0.3, 0.5, "l2", 0.0, 1.0, backend)
    torch.library.opcheck(torch.ops.kernels.pgd_step.default, (x, g, x0, *args))
    torch.library.opcheck(torch.ops.kernels.pgd_step_.default, (x.clone(), g, x0, *args))
    torch.library.opcheck(torch.ops.kernels.pgd_step_out.default, (x, g, x0, torch.empty_like(x), *args))
    torch.library.opcheck(torch.ops.kernels.pgd_step.default, (x, g, x0, 0.1, 0.2, "linf", None, None, backend))


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def our_pgd(model, images, labels, *, eps, alpha, steps, norm, backend):
    """PGD-k without random start, built on pgd_step; the loop torchattacks runs."""
    adv = images.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = nn.functional.cross_entropy(model(adv), labels)
        grad = torch.autograd.grad(loss, adv)[0]
        adv = pgd_step(adv.detach(), grad, images, step_size=alpha, eps=eps, norm=norm, backend=backend)
    return adv


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("norm", NORMS)
def test_pgd_loop_matches_torchattacks(backend, norm):
    import torchattacks

    torch.manual_seed(0)
    model = TinyNet().eval()
    images, labels = torch.rand(4, 3, 6, 6), torch.tensor([0, 1, 2, 3])
    if norm == "linf":
        attack = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=5, random_start=False)
        eps, alpha = 8 / 255, 2 / 255
    else:
        attack = torchattacks.PGDL2(model, eps=0.5, alpha=0.2, steps=5, random_start=False)
        eps, alpha = 0.5, 0.2
    expected = attack(images, labels)
    ours = our_pgd(model, images, labels, eps=eps, alpha=alpha, steps=5, norm=norm, backend=backend)
    assert not torch.equal(expected, images)
    if backend == "torch" or norm == "linf":
        assert torch.equal(ours, expected)
    else:
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
