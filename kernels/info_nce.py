"""Public InfoNCE losses (NT-Xent and cross / CLIP form) over fused, O(N*d)-memory backends.

Both losses reduce to one core, ``nce_rows``: each anchor row ``r`` against a set of keys, with an
optional self column, one positive and false-negative (FN) detection (labels, a per-row cosine cut-off,
an in-kernel top-k). Its semantics are ``kernels.reference.nce_rows_reference``; the backends
(``kernels.backends``, shared with ``pgd_step``) are

* ``"torch"``  -- ``kernels.info_nce_torch``: tiled PyTorch, any device (the CPU path);
* ``"triton"`` -- ``kernels.info_nce_triton``: Triton kernels (CUDA, or CPU under ``TRITON_INTERPRET=1``);
* ``"reference"`` -- the materialised specification itself (O(N^2) memory; for tests and comparisons).

Dtype policy (``precision``): rows are L2-normalised in fp32, then the similarity dots take them rounded
to bf16 (fp16 for fp16 inputs) with fp32 accumulation; log-sum-exp, masks, statistics and gradient
accumulation are fp32 in every mode. See ``resolve_precision`` and ``docs/kernels.md``.

The core is registered as the custom ops ``kernels::nce_forward`` / ``kernels::nce_backward`` with fake
(meta) implementations and an autograd formula, so the losses work under ``torch.compile(fullgraph=True)``
and inside CUDA graphs (with ``checks="device"``, the default on CUDA, nothing waits for the GPU).
"""

import functools

import torch
import torch.nn.functional as F

from kernels import backends
from kernels.reference import _reduce, cross_info_nce_reference, info_nce_reference

Tensor = torch.Tensor

FN_MODES = ("eliminate", "attract")
REDUCTIONS = ("mean", "sum", "none")
BACKENDS = backends.BACKENDS
PRECISIONS = ("auto", "bf16", "fp16", "tf32", "ieee")
CHECKS = ("auto", "host", "device")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INT32 = torch.iinfo(torch.int32)


class NonFiniteEmbeddingError(ValueError):
    """Embeddings hold NaN or inf: in training this means the run diverged (callers may catch it).

    Raised only with ``checks="host"`` (the default on CPU); with device-side checks the loss is NaN instead.
    """


def _without_autocast(loss_fn):
    """Run a loss with any enclosing autocast region switched off.

    The ops choose their own dot precision (``precision``) with fp32 accumulation; a bf16 autocast region
    (mixed-precision training) would otherwise recast the normalisation and the reference's matmuls.
    """

    @functools.wraps(loss_fn)
    def wrapper(a, *args, **kwargs):
        device_type = a.device.type if isinstance(a, Tensor) else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            return loss_fn(a, *args, **kwargs)

    return wrapper


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """The one dispatch rule (``kernels.backends.resolve``): ``auto`` = triton for CUDA tensors when it
    imports, torch otherwise. Raises ValueError for an unknown name or a backend that cannot run these tensors.
    """
    return backends.resolve("info_nce", backend, device, dtype)


def resolve_precision(precision: str, device: torch.device, dtype: torch.dtype) -> str:
    """The dot precision actually used: "bf16", "fp16", "tf32" or "ieee".

    ``auto``: fp16 inputs -> "fp16", bf16 inputs -> "bf16"; fp32 inputs -> "bf16" on CUDA (tensor cores,
    the training default) and "ieee" on CPU (where low-precision dots buy no speed, so CPU results stay
    exact); fp64 -> "ieee" (fp64 arithmetic on the torch path). Explicit values apply on every device:
    the torch path rounds the operands exactly as the GPU sees them.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    if dtype == torch.float16:
        return "fp16"
    if dtype == torch.bfloat16:
        return "bf16"
    if dtype == torch.float32 and device.type == "cuda":
        return "bf16"
    return "ieee"


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _module(backend: str, device: torch.device, dtype: torch.dtype):
    name = resolve_backend(backend, device, dtype)
    if name == "reference":
        raise ValueError("backend 'reference' has no fused core")
    return backends.module("info_nce", name)


# ----------------------------------------------------------------------------------------------------
# Custom ops: the fused core, opaque to autograd and torch.compile.


@torch.library.custom_op("kernels::nce_forward", mutates_args=())
def nce_forward_op(anchors: Tensor, keys: Tensor, inv_temp: Tensor, self_idx: Tensor, pos_idx: Tensor,
                   labels_a: Tensor | None, labels_k: Tensor | None, cut: Tensor | None, topk: int, attract: bool,
                   stat_labels_a: Tensor | None, stat_labels_k: Tensor | None, precision: str, stats: bool,
                   deterministic: bool, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-row (loss, lse, stats, cut_used) of the chosen backend (``cut_used`` is empty without ``topk``).
    ``deterministic`` is only recorded for the backward."""
    mod = _module(backend, anchors.device, anchors.dtype)
    return mod.nce_forward(anchors, keys, inv_temp, self_idx, pos_idx, labels_a, labels_k, cut, attract,
                           stat_labels_a, stat_labels_k, topk=topk, precision=precision, stats=stats)


@nce_forward_op.register_fake
def _(anchors, keys, inv_temp, self_idx, pos_idx, labels_a, labels_k, cut, topk, attract, stat_labels_a,
      stat_labels_k, precision, stats, deterministic, backend):
    R, dt = anchors.shape[0], _compute_dtype(anchors)
    return (anchors.new_empty(R, dtype=dt), anchors.new_empty(R, dtype=dt), anchors.new_empty(R, 4, dtype=dt),
            anchors.new_empty(R if topk else 0, dtype=dt))


@torch.library.custom_op("kernels::nce_backward", mutates_args=())
def nce_backward_op(anchors: Tensor, keys: Tensor, inv_temp: Tensor, self_idx: Tensor, pos_idx: Tensor,
                    labels_a: Tensor | None, labels_k: Tensor | None, cut: Tensor | None, topk: int,
                    attract: bool, lse: Tensor, npos: Tensor, grad_loss: Tensor, precision: str,
                    deterministic: bool, backend: str) -> tuple[Tensor, Tensor]:
    """(d_anchors, d_keys) in the compute dtype, recomputed tile by tile by the chosen backend."""
    mod = _module(backend, anchors.device, anchors.dtype)
    return mod.nce_backward(anchors, keys, inv_temp, self_idx, pos_idx, labels_a, labels_k, cut, attract,
                            lse, npos, grad_loss, topk=topk, precision=precision, deterministic=deterministic)


@nce_backward_op.register_fake
def _(anchors, keys, inv_temp, self_idx, pos_idx, labels_a, labels_k, cut, topk, attract, lse, npos, grad_loss,
      precision, deterministic, backend):
    dt = _compute_dtype(anchors)
    return anchors.new_empty(anchors.shape, dtype=dt), keys.new_empty(keys.shape, dtype=dt)


def _setup_context(ctx, inputs, output):
    (anchors, keys, inv_temp, self_idx, pos_idx, labels_a, labels_k, cut, topk, attract, _, _, precision, _,
     deterministic, backend) = inputs
    _, lse, stats, cut_used = output
    npos = 1.0 + stats[:, 1] if attract else torch.ones_like(lse)
    # with top-k, the backward takes the forward's final per-row cut: decided on the same accumulator
    ctx.save_for_backward(anchors, keys, inv_temp, self_idx, pos_idx, labels_a, labels_k,
                          cut_used if topk else cut, lse, npos)
    ctx.topk, ctx.attract, ctx.precision, ctx.deterministic, ctx.backend = (topk, attract, precision,
                                                                           deterministic, backend)
    ctx.mark_non_differentiable(lse, stats, cut_used)


def _backward(ctx, grad_loss, grad_lse, grad_stats, grad_cut):
    """Anchors / keys from the backend; inv_temp from dL/dt = sum_rj G_rj cos_rj = sum_r <dA_r, A_r> / t."""
    anchors, keys, inv_temp, self_idx, pos_idx, labels_a, labels_k, cut, lse, npos = ctx.saved_tensors
    if grad_loss is None:
        grad_loss = torch.zeros_like(lse)
    d_a, d_k = nce_backward_op(anchors, keys, inv_temp, self_idx, pos_idx, labels_a, labels_k, cut, ctx.topk,
                               ctx.attract, lse, npos, grad_loss.to(lse.dtype), ctx.precision, ctx.deterministic,
                               ctx.backend)
    d_t = None
    if ctx.needs_input_grad[2]:
        d_t = ((d_a * anchors.to(d_a.dtype)).sum() / inv_temp.to(d_a.dtype)).to(inv_temp.dtype)
    return (d_a.to(anchors.dtype), d_k.to(keys.dtype), d_t) + (None,) * 13


nce_forward_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------------
# The core with autograd, and the two public losses.


def nce_rows(anchors: Tensor, keys: Tensor, inv_temp: Tensor, self_idx: Tensor, pos_idx: Tensor, *,
             labels_a: Tensor | None = None, labels_k: Tensor | None = None, cut: Tensor | None = None,
             topk: int = 0, attract: bool = False, stat_labels_a: Tensor | None = None,
             stat_labels_k: Tensor | None = None, precision: str = "ieee", stats: bool = True,
             deterministic: bool = False, backend: str = "auto") -> tuple[Tensor, dict[str, Tensor]]:
    """Fused ``nce_rows_reference``: per-row loss (differentiable in anchors, keys, inv_temp) and stats.

    Inputs are taken as they are (no normalisation, little validation): the losses below are the checked
    entry points. ``topk`` adds the top-k detector to ``cut`` (a similarity FN must pass both).
    ``precision`` is a resolved one ("bf16", "fp16", "tf32", "ieee"); ``backend`` a fused one.
    """
    loss, _, st, _ = nce_forward_op(anchors.contiguous(), keys.contiguous(), inv_temp, self_idx, pos_idx,
                                    labels_a, labels_k, cut, int(topk), attract, stat_labels_a, stat_labels_k,
                                    precision, stats, deterministic, backend)
    out = {"pos_top1": st[:, 0].float(), "fn_found": st[:, 1].float()}
    if stat_labels_a is not None:
        out["fn_correct"] = st[:, 2].float()
        out["fn_possible"] = st[:, 3].float()
    return loss, out


def _threshold_cut(anchors: Tensor, fn_threshold: float | None) -> Tensor | None:
    """The threshold detector as a per-row cut (the top-k detector runs inside the op)."""
    if fn_threshold is None:
        return None
    return torch.full((anchors.shape[0],), float(fn_threshold), device=anchors.device,
                      dtype=_compute_dtype(anchors))


def _inv_temp(temperature, like: Tensor) -> Tensor:
    """1/temperature as a 0-dim tensor in the compute dtype, keeping the graph of a learnable temperature."""
    dt = _compute_dtype(like)
    if isinstance(temperature, Tensor):
        return 1.0 / temperature.to(device=like.device, dtype=dt).reshape(())
    return torch.tensor(1.0 / float(temperature), dtype=dt, device=like.device)


def _stats_out(stats: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().float() for k, v in stats.items()}


# ----------------------------------------------------------------------------------------------------
# Validation: every bad input is a ValueError that names the argument. Shape / dtype / option errors are
# raised always (they cost no device sync); checks that need *values* (finite embeddings, a positive
# temperature tensor, labels in int32 range) are either raised on the host ("host") or turn the loss NaN
# on the device ("device"), where the trainer's non-finite stop catches them.


def _use_host_checks(checks: str, device: torch.device) -> bool:
    if checks not in CHECKS:
        raise ValueError(f"checks must be one of {CHECKS}, got {checks!r}")
    if torch.compiler.is_compiling():
        return False
    return checks == "host" or (checks == "auto" and device.type != "cuda")


def _check_embeddings(named: dict[str, Tensor]) -> None:
    first_name, first = next(iter(named.items()))
    for name, z in named.items():
        if not isinstance(z, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
        if z.dim() != 2:
            raise ValueError(f"{name} must be 2-D (rows, dim), got shape {tuple(z.shape)}")
        if z.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"{name} must be float16/bfloat16/float32/float64, got {z.dtype}")
        if z.dtype != first.dtype:
            raise ValueError(f"{name} has dtype {z.dtype} but {first_name} has {first.dtype}")
        if z.device != first.device:
            raise ValueError(f"{name} is on {z.device} but {first_name} is on {first.device}")
        if z.shape[1] != first.shape[1]:
            raise ValueError(f"{name} has dim {z.shape[1]} but {first_name} has {first.shape[1]}")
        if z.shape[1] == 0:
            raise ValueError(f"{name} has embedding dim 0")


def _check_labels(name: str, labels: Tensor | None, n: int, device: torch.device) -> Tensor | None:
    if labels is None:
        return None
    if not isinstance(labels, Tensor):
        raise ValueError(f"{name} must be a tensor of integer class ids, got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"{name} must have an integer dtype, got {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(labels.shape)}")
    return labels.to(device=device, dtype=torch.int64)


def _value_problems(host: bool, embeddings: dict[str, Tensor], temperature, labels: dict[str, Tensor | None]):
    """Check values. ``host``: raise (NonFiniteEmbeddingError / ValueError), one sync per check. Otherwise
    return a 0-dim bool tensor on the device, True when any check fails (the loss is then made NaN)."""
    if host:
        for name, z in embeddings.items():
            if not bool(torch.isfinite(z).all()):
                raise NonFiniteEmbeddingError(f"{name} contains non-finite values (NaN or inf)")
        if isinstance(temperature, Tensor) and not bool((temperature > 0).all()):
            raise ValueError(f"temperature must be > 0, got {float(temperature)}")
        for name, lab in labels.items():
            if lab is not None and lab.numel() and not bool(((lab >= _INT32.min) & (lab <= _INT32.max)).all()):
                raise ValueError(f"{name} must hold class ids within the int32 range")
        return None
    bad = torch.zeros((), dtype=torch.bool, device=next(iter(embeddings.values())).device)
    for z in embeddings.values():
        bad = bad | ~torch.isfinite(z).all()
    if isinstance(temperature, Tensor):
        bad = bad | ~(temperature.to(bad.device) > 0).all()
    for lab in labels.values():
        if lab is not None:
            bad = bad | ~((lab >= _INT32.min) & (lab <= _INT32.max)).all()
    return bad


def _poison(loss: Tensor, bad: Tensor | None) -> Tensor:
    """NaN wherever a device-side check failed (the gradient of the loss itself is left alone)."""
    return loss if bad is None else loss + torch.where(bad, float("nan"), 0.0).to(loss.dtype)


def _check_options(temperature, fn_threshold, fn_topk, fn_mode, reduction, backend, precision) -> None:
    if fn_mode not in FN_MODES:
        raise ValueError(f"fn_mode must be one of {FN_MODES}, got {fn_mode!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if isinstance(temperature, Tensor):
        if temperature.numel() != 1 or not temperature.dtype.is_floating_point:
            raise ValueError(f"temperature tensor must be a single float, got shape {tuple(temperature.shape)} "
                             f"and dtype {temperature.dtype}")
    elif isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ValueError(f"temperature must be a positive float or tensor, got {type(temperature).__name__}")
    elif not temperature > 0 or temperature == float("inf"):
        raise ValueError(f"temperature must be a finite value > 0, got {temperature}")
    if fn_topk is not None and (isinstance(fn_topk, bool) or not isinstance(fn_topk, int) or fn_topk < 1):
        raise ValueError(f"fn_topk must be an integer >= 1, got {fn_topk!r}")
    if fn_threshold is not None:
        if isinstance(fn_threshold, bool) or not isinstance(fn_threshold, (int, float)):
            raise ValueError(f"fn_threshold must be a float cosine cut-off, got {type(fn_threshold).__name__}")
        if fn_threshold != fn_threshold or abs(fn_threshold) == float("inf"):
            raise ValueError(f"fn_threshold must be finite, got {fn_threshold}")


def _check_topk_backend(fn_topk: int | None, backend: str) -> None:
    if fn_topk and backend == "triton":
        limit = backends.module("info_nce", "triton").MAX_TOPK
        if fn_topk > limit:
            raise ValueError(f"fn_topk must be <= {limit} on the triton backend (the running top-k lives in "
                             f"registers), got {fn_topk}; use backend='torch' for a larger k")


def _check_pair(name_a: str, a, name_b: str, b) -> None:
    if (a is None) != (b is None):
        raise ValueError(f"{name_a} and {name_b} must be given together (or neither)")


def _prepare(z: Tensor, normalize: bool) -> Tensor:
    """L2-normalise in fp32 (fp64 for fp64), kept in that dtype: the op rounds to the dot precision itself,
    so gradients come back through the normalisation unrounded (plain autograd, outside the op)."""
    z = z.to(_compute_dtype(z))
    if normalize:
        z = F.normalize(z, dim=1)
    return z.contiguous()


def _deterministic(deterministic: bool | None) -> bool:
    return torch.are_deterministic_algorithms_enabled() if deterministic is None else bool(deterministic)


@_without_autocast
def info_nce(z1: Tensor, z2: Tensor, temperature: float | Tensor = 0.1, *, labels: Tensor | None = None,
             fn_threshold: float | None = None, fn_topk: int | None = None, fn_mode: str = "eliminate",
             normalize: bool = True, reduction: str = "mean", row_offset: int = 0, num_rows: int | None = None,
             return_stats: bool = False, stat_labels: Tensor | None = None, backend: str = "auto",
             precision: str = "auto", deterministic: bool | None = None, checks: str = "auto"):
    r"""NT-Xent (SimCLR; Chen et al., 2020) over the 2N views ``Z = [z1; z2]``, without ever forming the
    2N x 2N matrix.

    With ``S = Z Z^T / temperature`` (rows of Z L2-normalised when ``normalize``), anchor ``i`` has the
    positive ``p(i) = (i + N) mod 2N``, denominator set ``D(i) = {j != i}`` and positive set ``P(i) = {p(i)}``:

        loss_i = log sum_{j in D(i)} exp S[i, j]  -  (1/|P(i)|) sum_{p in P(i)} S[i, p]

    False negatives (FN) of anchor ``i`` are negatives ``j`` with ``labels[i] == labels[j]`` (oracle) or
    ``cos(z_i, z_j) > fn_threshold`` and/or among the ``fn_topk`` most similar negatives of ``i`` (with
    both, a negative must pass both; ties at the k-th place select fewer). ``fn_mode="eliminate"`` removes
    them from ``D(i)``; ``"attract"`` adds them to ``P(i)`` (SupCon-style). A row with every negative removed
    has loss 0. Labels are class ids within the int32 range; ``fn_topk`` <= 16 on the triton backend.

    ``row_offset``/``num_rows`` select the local anchors (rows ``row_offset..+num_rows`` of each view) of
    a gathered global batch, for DDP (see ``kernels.distributed``): the shard means weighted by their
    share of rows add up to the global mean. ``reduction="none"`` returns the per-row losses, view 1
    rows then view 2 rows. ``temperature`` may be a tensor requiring grad (learnable, CLIP-style).
    With ``return_stats`` returns ``(loss, stats)``: per-row ``pos_top1``, ``fn_found`` and, given
    ``stat_labels``, ``fn_correct`` / ``fn_possible`` (detector precision = sum correct / sum found,
    recall = sum correct / sum possible).

    Numerics: ``precision`` ("auto", "bf16", "fp16", "tf32", "ieee"; see ``resolve_precision``) sets the
    operands of the similarity dots; everything else is fp32. ``deterministic`` (default: follows
    ``torch.use_deterministic_algorithms``) avoids the CUDA backward's fp32 atomics. ``checks``: "host"
    raises on NaN/inf embeddings (``NonFiniteEmbeddingError``), a non-positive temperature tensor or labels
    outside int32 (each a device sync); "device" never syncs and returns a NaN loss instead (CUDA graphs);
    "auto" = host on CPU, device on CUDA and under ``torch.compile``.

    Example::

        z1, z2 = model(x1), model(x2)                      # (N, d) each, e.g. bf16 under autocast
        loss = info_nce(z1, z2, temperature=0.2)
        loss, st = info_nce(z1, z2, fn_topk=2, fn_mode="attract", return_stats=True)
        loss.backward()
    """
    _check_embeddings({"z1": z1, "z2": z2})
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    n = z1.shape[0]
    if n < 2:
        raise ValueError(f"info_nce needs a batch of N >= 2 pairs, got N = {n}")
    _check_options(temperature, fn_threshold, fn_topk, fn_mode, reduction, backend, precision)
    if isinstance(row_offset, bool) or not isinstance(row_offset, int) or not 0 <= row_offset < n:
        raise ValueError(f"row_offset must be an integer in [0, {n}), got {row_offset!r}")
    rows = n - row_offset if num_rows is None else num_rows
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1 or row_offset + rows > n:
        raise ValueError(f"num_rows must be an integer in [1, {n - row_offset}] for row_offset={row_offset}, "
                         f"got {num_rows!r}")
    labels = _check_labels("labels", labels, n, z1.device)
    stat_labels = _check_labels("stat_labels", stat_labels, n, z1.device)
    bad = _value_problems(_use_host_checks(checks, z1.device), {"z1": z1, "z2": z2}, temperature,
                          {"labels": labels, "stat_labels": stat_labels})
    if backend == "reference":
        loss, stats = info_nce_reference(
            z1, z2, temperature, labels=labels, fn_threshold=fn_threshold, fn_topk=fn_topk, fn_mode=fn_mode,
            normalize=normalize, reduction=reduction, row_offset=row_offset, num_rows=num_rows,
            stat_labels=stat_labels)
        loss = _poison(loss, bad)
        return (loss, _stats_out(stats)) if return_stats else loss
    if not torch.compiler.is_compiling():  # resolve now for an early, clear error; the op re-resolves
        backend = resolve_backend(backend, z1.device, z1.dtype)
        _check_topk_backend(fn_topk, backend)
    prec = resolve_precision(precision, z1.device, z1.dtype)

    Z = torch.cat([_prepare(z1, normalize), _prepare(z2, normalize)])
    local = torch.arange(row_offset, row_offset + rows, device=Z.device)
    idx = torch.cat([local, local + n])
    pos = (idx + n) % (2 * n)
    anchors = Z if rows == n else Z[idx]
    both = lambda t: None if t is None else torch.cat([t, t])  # noqa: E731
    labels_k, stat_k = both(labels), both(stat_labels)
    loss, stats = nce_rows(
        anchors, Z, _inv_temp(temperature, Z), idx, pos,
        labels_a=None if labels_k is None else labels_k[idx], labels_k=labels_k,
        cut=_threshold_cut(anchors, fn_threshold), topk=fn_topk or 0, attract=fn_mode == "attract",
        stat_labels_a=None if stat_k is None else stat_k[idx], stat_labels_k=stat_k, precision=prec,
        stats=return_stats, deterministic=_deterministic(deterministic), backend=backend)
    loss = _poison(_reduce(loss, reduction), bad)
    return (loss, _stats_out(stats)) if return_stats else loss


@_without_autocast
def cross_info_nce(q: Tensor, k: Tensor, temperature: float | Tensor = 0.1, *, symmetric: bool = False,
                   labels_q: Tensor | None = None, labels_k: Tensor | None = None,
                   fn_threshold: float | None = None, fn_topk: int | None = None, fn_mode: str = "eliminate",
                   normalize: bool = True, reduction: str = "mean", return_stats: bool = False,
                   stat_labels_q: Tensor | None = None, stat_labels_k: Tensor | None = None,
                   backend: str = "auto", precision: str = "auto", deterministic: bool | None = None,
                   checks: str = "auto"):
    r"""Cross InfoNCE (MoCo, He et al. 2020; CLIP, Radford et al. 2021): query ``q[i]`` (N, d) against keys
    ``k`` (M >= N, d), positive ``k[i]``.

    ``S = q k^T / temperature``; ``loss_i = log sum_{j in D(i)} exp S[i, j] - mean_{p in P(i)} S[i, p]``
    with ``D(i)`` all M keys (rows ``N..M`` of ``k`` are e.g. a MoCo queue) minus eliminated false
    negatives; FN detection and ``fn_mode`` as in ``info_nce`` (``labels_q``/``labels_k`` for the oracle).
    ``symmetric`` (CLIP) adds the ``k[:N] -> q`` direction: per-row losses are the q->k rows followed by
    the k->q rows and ``mean`` averages both directions. ``return_stats``, ``precision``,
    ``deterministic`` and ``checks`` as in ``info_nce``.

    Example::

        loss = cross_info_nce(q, torch.cat([k, queue]), temperature=0.07)         # MoCo
        loss = cross_info_nce(img, txt, temperature=logit_t, symmetric=True)      # CLIP, learnable t
    """
    _check_embeddings({"q": q, "k": k})
    n, m = q.shape[0], k.shape[0]
    if n < 2:
        raise ValueError(f"cross_info_nce needs N >= 2 queries, got N = {n}")
    if m < n:
        raise ValueError(f"k must hold at least as many rows as q (row i of k is q[i]'s positive), "
                         f"got {m} keys for {n} queries")
    _check_options(temperature, fn_threshold, fn_topk, fn_mode, reduction, backend, precision)
    _check_pair("labels_q", labels_q, "labels_k", labels_k)
    _check_pair("stat_labels_q", stat_labels_q, "stat_labels_k", stat_labels_k)
    labels_q = _check_labels("labels_q", labels_q, n, q.device)
    labels_k = _check_labels("labels_k", labels_k, m, q.device)
    stat_labels_q = _check_labels("stat_labels_q", stat_labels_q, n, q.device)
    stat_labels_k = _check_labels("stat_labels_k", stat_labels_k, m, q.device)
    bad = _value_problems(_use_host_checks(checks, q.device), {"q": q, "k": k}, temperature,
                          {"labels_q": labels_q, "labels_k": labels_k, "stat_labels_q": stat_labels_q,
                           "stat_labels_k": stat_labels_k})
    if backend == "reference":
        loss, stats = cross_info_nce_reference(
            q, k, temperature, symmetric=symmetric, labels_q=labels_q, labels_k=labels_k,
            fn_threshold=fn_threshold, fn_topk=fn_topk, fn_mode=fn_mode, normalize=normalize,
            reduction=reduction, stat_labels_q=stat_labels_q, stat_labels_k=stat_labels_k)
        loss = _poison(loss, bad)
        return (loss, _stats_out(stats)) if return_stats else loss
    if not torch.compiler.is_compiling():
        backend = resolve_backend(backend, q.device, q.dtype)
        _check_topk_backend(fn_topk, backend)
    prec = resolve_precision(precision, q.device, q.dtype)

    q, k = _prepare(q, normalize), _prepare(k, normalize)
    inv_temp = _inv_temp(temperature, q)
    ar = torch.arange(n, device=q.device)
    no_self = torch.full_like(ar, -1)
    det = _deterministic(deterministic)

    def direction(a, keys, la, lk, sa, sk):
        return nce_rows(a, keys, inv_temp, no_self, ar, labels_a=la, labels_k=lk,
                        cut=_threshold_cut(a, fn_threshold), topk=fn_topk or 0, attract=fn_mode == "attract",
                        stat_labels_a=sa, stat_labels_k=sk, precision=prec, stats=return_stats,
                        deterministic=det, backend=backend)

    loss, stats = direction(q, k, labels_q, labels_k, stat_labels_q, stat_labels_k)
    if symmetric:
        first = lambda t: None if t is None else t[:n]  # noqa: E731
        loss2, stats2 = direction(k[:n], q, first(labels_k), labels_q, first(stat_labels_k), stat_labels_q)
        loss = torch.cat([loss, loss2])
        stats = {key: torch.cat([stats[key], stats2[key]]) for key in stats}
    loss = _poison(_reduce(loss, reduction), bad)
    return (loss, _stats_out(stats)) if return_stats else loss
