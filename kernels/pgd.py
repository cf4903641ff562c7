"""The fused PGD step: argument checks, backend dispatch, and the ``kernels::pgd_step`` custom ops.

    x_new = pgd_step(x, grad, x0, step_size=2/255, eps=8/255)            # L-inf, new tensor
    pgd_step(x, grad, x0, step_size=0.1, eps=0.5, norm="l2", out=x)       # L2, in place

Semantics are ``kernels.reference.pgd_step_reference`` (torchattacks' PGD / PGDL2 update): fp32
arithmetic whatever the input dtype, result in ``x``'s dtype, any shape with the batch first.

Non-finite gradients (one behaviour, every backend): a NaN or +-inf gradient value is never ignored.
Every output element computed from it is NaN: under L-inf the step is elementwise, so exactly the
elements whose gradient is non-finite come out NaN; under L2 the step is divided by the sample's
gradient norm, so the whole sample comes out NaN. Other elements and samples are unaffected. An attack
loop (or its evaluation) can therefore detect the breakdown with ``isfinite`` instead of silently
reporting an unmoved sample as robust. This differs from torchattacks for L-inf, whose
``sign(NaN) = 0`` leaves such an element unmoved and whose ``sign(inf) = 1`` steps normally.
A zero gradient (finite) is a zero step, as in torchattacks; L2 with ``eps = 0`` at ``x == x0`` with
a zero gradient is ``0 * (1/0)`` = NaN.

The step is **not differentiable**: an attack applies it to detached tensors between gradient
evaluations. The wrapper detaches its inputs, the ops register no autograd formula, and the result
never requires grad. Three ops share one implementation because a custom op may not return an alias
of an input: ``kernels::pgd_step`` (functional), ``kernels::pgd_step_`` (in place on x) and
``kernels::pgd_step_out`` (writes a separate ``out``); each has a fake (meta) implementation so the
ops trace under ``torch.compile``.
"""

import math

import torch

from kernels import backends
from kernels.reference import pgd_step_reference

Tensor = torch.Tensor

NORMS = ("linf", "l2")
BACKENDS = backends.BACKENDS


def pgd_step(
    x: Tensor,
    grad: Tensor,
    x0: Tensor,
    *,
    step_size: float,
    eps: float,
    norm: str = "linf",
    clamp: tuple[float, float] | None = (0.0, 1.0),
    out: Tensor | None = None,
    backend: str = "auto",
) -> Tensor:
    """One projected-gradient step of ``x`` along ``grad``, kept within ``eps`` of ``x0`` and in ``clamp``.

    ``out`` may be given (same shape and dtype; it may be ``x`` itself for an in-place update, but
    may not overlap any input otherwise). ``clamp=None`` skips range clipping. ``backend``: "auto"
    (triton on CUDA, torch elsewhere), "reference", "torch" or "triton" (CUDA, or CPU tensors under
    ``TRITON_INTERPRET=1``). Raises ValueError on inconsistent arguments.
    """
    step_size, eps = float(step_size), float(eps)
    _check(x, grad, x0, out, step_size, eps, norm, clamp)
    backend = _resolve_backend(backend, x)
    lo, hi = (None, None) if clamp is None else (float(clamp[0]), float(clamp[1]))
    x, grad, x0 = x.detach(), grad.detach(), x0.detach()
    args = (step_size, eps, norm, lo, hi, backend)
    if out is None:
        return torch.ops.kernels.pgd_step(x, grad, x0, *args)
    if _same_view(out, x):
        torch.ops.kernels.pgd_step_(x, grad, x0, *args)
    else:
        torch.ops.kernels.pgd_step_out(x, grad, x0, out.detach(), *args)
    return out


def _check(x, grad, x0, out, step_size, eps, norm, clamp) -> None:
    """Every argument error as a ValueError that names the offending argument."""
    named = {"x": x, "grad": grad, "x0": x0} | ({} if out is None else {"out": out})
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"pgd_step: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(f"pgd_step: {name} must have a floating dtype, got {t.dtype}")
    if x.dim() == 0:
        raise ValueError("pgd_step: x needs a leading batch dimension, got a 0-d tensor")
    for name, t in named.items():
        if t.shape != x.shape:
            raise ValueError(f"pgd_step: {name} has shape {tuple(t.shape)}, x has {tuple(x.shape)}")
        if t.dtype != x.dtype:
            raise ValueError(f"pgd_step: {name} has dtype {t.dtype}, x has {x.dtype}")
        if t.device != x.device:
            raise ValueError(f"pgd_step: {name} is on {t.device}, x is on {x.device}")
    if norm not in NORMS:
        raise ValueError(f"pgd_step: norm must be one of {NORMS}, got {norm!r}")
    if not (math.isfinite(step_size) and step_size >= 0):
        raise ValueError(f"pgd_step: step_size must be finite and >= 0, got {step_size}")
    if math.isnan(eps) or eps < 0:
        raise ValueError(f"pgd_step: eps must be >= 0, got {eps}")
    if clamp is not None:
        if len(clamp) != 2 or any(math.isnan(float(c)) for c in clamp):
            raise ValueError(f"pgd_step: clamp must be None or (low, high) numbers, got {clamp!r}")
        if float(clamp[0]) > float(clamp[1]):
            raise ValueError(f"pgd_step: clamp low {clamp[0]} exceeds high {clamp[1]}")
    if out is not None and not _same_view(out, x):
        for name in ("x", "grad", "x0"):
            if _shares_memory(out, named[name]):
                raise ValueError(f"pgd_step: out overlaps {name}; out may only be x itself or separate memory")


def _resolve_backend(backend: str, x: Tensor) -> str:
    """The shared dispatch rule of ``kernels.backends`` (auto = triton on CUDA when it imports, else torch)."""
    return backends.resolve("pgd_step", backend, x.device, x.dtype)


def _same_view(a: Tensor, b: Tensor) -> bool:
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()


def _shares_memory(a: Tensor, b: Tensor) -> bool:
    """Conservative: any two tensors on one storage (not just overlapping bytes) count as sharing."""
    if a.numel() == 0 or b.numel() == 0:
        return False
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _compute(x, grad, x0, out, step_size, eps, norm, lo, hi, backend) -> None:
    """The one implementation behind all three ops: writes the step into ``out`` (may be ``x``)."""
    clamp = None if lo is None else (lo, hi)
    kw = dict(step_size=step_size, eps=eps, norm=norm, clamp=clamp)
    if backend == "reference":
        out.copy_(pgd_step_reference(x, grad, x0, **kw))
    elif backend == "torch":
        backends.module("pgd_step", "torch").pgd_step_torch(x, grad, x0, out, **kw)
    elif backend == "triton":
        backends.module("pgd_step", "triton").pgd_step_triton(x, grad, x0, out, **kw)
    else:
        raise ValueError(f"pgd_step: backend must be resolved before dispatch, got {backend!r}")


# --- custom ops (no autograd registered on purpose: the step is not differentiable) -------------


@torch.library.custom_op("kernels::pgd_step", mutates_args=())
def _pgd_step_op(
    x: Tensor, grad: Tensor, x0: Tensor, step_size: float, eps: float, norm: str,
    clamp_lo: float | None, clamp_hi: float | None, backend: str,
) -> Tensor:
    out = torch.empty_like(x)
    _compute(x, grad, x0, out, step_size, eps, norm, clamp_lo, clamp_hi, backend)
    return out


@_pgd_step_op.register_fake
def _pgd_step_fake(x, grad, x0, step_size, eps, norm, clamp_lo, clamp_hi, backend):
    return torch.empty_like(x)


@torch.library.custom_op("kernels::pgd_step_", mutates_args=("x",))
def _pgd_step_inplace_op(
    x: Tensor, grad: Tensor, x0: Tensor, step_size: float, eps: float, norm: str,
    clamp_lo: float | None, clamp_hi: float | None, backend: str,
) -> None:
    _compute(x, grad, x0, x, step_size, eps, norm, clamp_lo, clamp_hi, backend)


@_pgd_step_inplace_op.register_fake
def _pgd_step_inplace_fake(x, grad, x0, step_size, eps, norm, clamp_lo, clamp_hi, backend):
    return None


@torch.library.custom_op("kernels::pgd_step_out", mutates_args=("out",))
def _pgd_step_out_op(
    x: Tensor, grad: Tensor, x0: Tensor, out: Tensor, step_size: float, eps: float, norm: str,
    clamp_lo: float | None, clamp_hi: float | None, backend: str,
) -> None:
    _compute(x, grad, x0, out, step_size, eps, norm, clamp_lo, clamp_hi, backend)


@_pgd_step_out_op.register_fake
def _pgd_step_out_fake(x, grad, x0, out, step_size, eps, norm, clamp_lo, clamp_hi, backend):
    return None
