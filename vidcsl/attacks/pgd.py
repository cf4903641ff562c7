"""PGD / FGSM on images (B,C,H,W), clips (B,C,T,H,W) and clip sets (B,K,C,T,H,W), every update through
``kernels.pgd.pgd_step``.

The semantics are torchattacks' (``PGD``, ``PGDL2``, ``FGSM``; PGD is Madry et al. 2018) so numbers are
comparable with the literature; the difference is that the model's state is never touched behind the
caller's back: train/eval flags, BatchNorm running statistics and ``requires_grad`` are saved and
restored (``frozen_for_attack``), so an attack can run in the middle of a training step.

A clip set is the K clips of one video, classified together (the model maps (B,K,C,T,H,W) to (B, classes),
e.g. by averaging the K clips' logits). Its threat model is "each clip within eps": the L-inf ball is
elementwise anyway; for L2 the random start, the gradient normalisation and the projection are per clip,
which the shared loop gets by handing ``pgd_step`` the (B*K, C,T,H,W) view.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

Tensor = torch.Tensor
Objective = Callable[[Tensor], Tensor]
Loss = Callable[[Tensor, Tensor], Tensor]
ATTACK_MODES = ("eval", "train")
NORMS = ("linf", "l2")
INPUT_DIMS = {4: "images (B,C,H,W)", 5: "clips (B,C,T,H,W)", 6: "clip sets (B,K,C,T,H,W)"}
DEFAULT_STEPS = 20
DEFAULT_ALPHA_FACTOR = 2.5  # step size alpha = 2.5 * eps / steps: the last steps can still cross the ball


def predicts(logits: Tensor, y: Tensor) -> Tensor:
    """Bool per sample: the prediction is ``y`` and every logit is finite. An input that drives the model
    to NaN / inf (e.g. an attack that followed a non-finite gradient, which ``pgd_step`` turns into NaN)
    counts as misclassified, never as robust."""
    return (logits.argmax(1) == y) & torch.isfinite(logits).all(1)


@contextmanager
def frozen_for_attack(model: nn.Module, mode: str = "eval") -> Iterator[nn.Module]:
    """Run ``model`` in ``mode`` for an attack, then put every flag and buffer back as it was.

    ``mode="eval"`` (torchattacks' choice) uses running BN statistics; ``mode="train"`` uses batch
    statistics (as some adversarial-training recipes do) and the running statistics it would update
    are restored afterwards. Parameters stop requiring grad meanwhile (only the input's gradient is
    needed), which also saves the parameter-gradient work.
    """
    if mode not in ATTACK_MODES:
        raise ValueError(f"attack mode must be one of {ATTACK_MODES}, got {mode!r}")
    flags = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.train(mode == "train")
        for p, _ in grads:
            p.requires_grad_(False)
        yield model
    finally:
        for m, was_training in flags:
            m.training = was_training
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for p, req in grads:
            p.requires_grad_(req)


def check_input(x: Tensor, y: Tensor | None = None) -> None:
    """Images, clips or clip sets, with one label per sample when ``y`` is given."""
    if x.dim() not in INPUT_DIMS:
        raise ValueError(f"x must be {', '.join(INPUT_DIMS.values())}; got shape {tuple(x.shape)}")
    if y is not None and (y.dim() != 1 or y.shape[0] != x.shape[0]):
        raise ValueError(f"y has shape {tuple(y.shape)}: need {x.shape[0]} labels, one per sample of x")


def _check_attack_args(x: Tensor, eps: float, alpha: float, steps: int, norm: str) -> None:
    check_input(x)
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if eps < 0 or alpha < 0:
        raise ValueError(f"eps and alpha must be >= 0, got eps={eps}, alpha={alpha}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")


def per_clip(t: Tensor) -> Tensor:
    """The view the ball acts on: one row per clip of a clip set (B*K, C,T,H,W), else ``t`` itself."""
    return t.flatten(0, 1) if t.dim() == 6 else t


def random_point(x: Tensor, eps: float, norm: str, generator: torch.Generator | None = None) -> Tensor:
    """torchattacks' random start: L-inf uniform in the eps-box; L2 a Gaussian direction scaled to
    radius ``eps * U(0,1)`` (same draw order as ``PGDL2``), per clip for clip sets; clipped to [0,1]."""
    rows = per_clip(x)
    if norm == "linf":
        delta = torch.empty_like(rows).uniform_(-eps, eps, generator=generator)
    elif norm == "l2":
        delta = torch.empty_like(rows).normal_(generator=generator)
        shape = (rows.shape[0],) + (1,) * (rows.dim() - 1)
        n = delta.flatten(1).norm(p=2, dim=1).view(shape)
        r = torch.zeros_like(n).uniform_(0, 1, generator=generator)
        delta *= r / n * eps
    else:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return torch.clamp(x + delta.view_as(x), min=0, max=1).detach()


def _step(adv: Tensor, grad: Tensor, x0: Tensor, alpha: float, eps: float, norm: str) -> Tensor:
    """One fused projected step (per clip for clip sets); a new detached tensor shaped like ``adv``."""
    from kernels.pgd import pgd_step

    out = pgd_step(per_clip(adv.detach()), per_clip(grad), per_clip(x0), step_size=alpha, eps=eps, norm=norm)
    return out.view_as(adv)


def maximize(
    objective: Objective,
    x: Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    norm: str = "linf",
    random_init: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Projected gradient ascent of ``objective(x_adv) -> scalar`` inside the eps-ball of ``x`` and [0,1].

    The loop every batch-coupled attack here shares (contrastive losses tie the samples of a batch
    together); the caller is responsible for the model's state (wrap in ``frozen_for_attack``).
    Returns a detached tensor shaped and typed like ``x``.
    """
    _check_attack_args(x, eps, alpha, steps, norm)
    x0 = x.detach()
    adv = random_point(x0, eps, norm, generator) if random_init else x0.clone()
    with torch.enable_grad():
        for _ in range(steps):
            adv.requires_grad_(True)
            value = objective(adv)
            if value.dim() != 0:
                raise ValueError(f"attack objective must return a scalar, got shape {tuple(value.shape)}")
            (grad,) = torch.autograd.grad(value, adv)
            adv = _step(adv, grad, x0, alpha, eps, norm)
    return adv


def _pgd_until_fooled(model: nn.Module, x: Tensor, y: Tensor, eps: float, alpha: float, steps: int, norm: str,
                      random_start: bool, loss: Loss | None, scale: float,
                      generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """PGD that stops attacking a sample once the model misclassifies it, compacting the batch.

    Returns ``(x_adv, fooled)``: ``fooled[i]`` says some iterate (the start included) was misclassified,
    and ``x_adv[i]`` is then the first such iterate; otherwise the last iterate. Until a sample is
    fooled its iterates are torchattacks' PGD ones: the default loss is the batch-mean cross-entropy with
    the mean taken as ``sum * scale`` rather than over the samples still attacked, so a sample's gradient
    does not change as others drop out. A custom ``loss(logits, y)`` sees only the samples still
    attacked. Misclassification is judged on the forward pass that gives the gradient (eval mode).
    """
    _check_attack_args(x, eps, alpha, steps, norm)
    x0 = x.detach()
    adv = random_point(x0, eps, norm, generator) if random_start else x0.clone()
    out = adv.clone()
    fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    active = torch.arange(x.shape[0], device=x.device)
    y_a = y
    for step in range(steps + 1):
        last = step == steps
        with torch.set_grad_enabled(not last):
            adv.requires_grad_(not last)
            logits = model(adv)
            wrong = ~predicts(logits, y_a)
            n_wrong = int(wrong.sum())  # the one host sync of a step
            if n_wrong:
                out[active[wrong]] = adv.detach()[wrong]
                fooled[active[wrong]] = True
                keep = ~wrong
                logits, y_a, active = logits[keep], y_a[keep], active[keep]
            if last or n_wrong == wrong.shape[0]:
                out[active] = adv.detach()[keep] if n_wrong else adv.detach()
                break
            value = F.cross_entropy(logits, y_a, reduction="sum") * scale if loss is None else loss(logits, y_a)
            (grad,) = torch.autograd.grad(value, adv)
        if n_wrong:  # compact: only the samples still classified correctly go on
            adv, grad, x0 = adv.detach()[keep], grad[keep], x0[keep]
        adv = _step(adv, grad, x0, alpha, eps, norm)
    return out, fooled


def check_restarts(restarts: int, random_start: bool) -> None:
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    if restarts > 1 and not random_start:
        raise ValueError(f"restarts={restarts} needs random_start=True: without a random start every restart "
                         "repeats the same deterministic attack")


def with_restarts(run: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]], x: Tensor, y: Tensor,
                  restarts: int) -> tuple[Tensor, Tensor]:
    """``run(x, y) -> (x_adv, fooled)`` again on the samples no earlier restart fooled; same return."""
    adv, fooled = x.detach().clone(), torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(restarts):
        todo = (~fooled).nonzero().squeeze(1)
        if todo.numel() == 0:
            break
        a, f = run(x[todo], y[todo])
        adv[todo], fooled[todo] = a.to(adv.dtype), f
    return adv, fooled


def pgd_outcome(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    norm: str = "linf",
    random_start: bool = True,
    restarts: int = 1,
    early_stop: bool = True,
    loss: Loss | None = None,
    loss_scale: float | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """``(x_adv, fooled)`` of PGD with restarts, for a model already in its attack mode (eval).

    Each restart attacks only the samples the earlier ones did not fool, from a new random start.
    ``early_stop`` keeps a sample's first misclassified iterate and stops attacking it there, compacting
    the batch; otherwise each sample's last iterate is kept, then judged. With early stopping the
    default cross-entropy is summed and scaled by ``loss_scale`` (default ``1 / len(x)``, the mean of
    torchattacks' PGD), not averaged over the samples still attacked: a sample's gradient then does not
    change as others drop out, so its iterates stay torchattacks' until it is fooled.
    """
    check_restarts(restarts, random_start)
    scale = 1.0 / max(x.shape[0], 1) if loss_scale is None else float(loss_scale)
    loss_fn = loss if loss is not None else F.cross_entropy

    def run(xs: Tensor, ys: Tensor) -> tuple[Tensor, Tensor]:
        if early_stop:
            return _pgd_until_fooled(model, xs, ys, eps, alpha, steps, norm, random_start, loss, scale, generator)
        adv = maximize(lambda a: loss_fn(model(a), ys), xs, eps=eps, alpha=alpha, steps=steps, norm=norm,
                       random_init=random_start, generator=generator)
        with torch.no_grad():
            return adv, ~predicts(model(adv), ys)

    return with_restarts(run, x, y, restarts)


def default_alpha(eps: float, steps: int, alpha_factor: float = DEFAULT_ALPHA_FACTOR) -> float:
    """The step size ``alpha_factor * eps / steps``."""
    return alpha_factor * eps / max(steps, 1)


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    alpha: float | None = None,
    steps: int = DEFAULT_STEPS,
    norm: str = "linf",
    random_start: bool = True,
    restarts: int = 1,
    early_stop: bool = False,
    loss: Loss | None = None,
    generator: torch.Generator | None = None,
    mode: str = "eval",
) -> Tensor:
    """Untargeted PGD-``steps`` (Madry et al. 2018) maximising ``loss(model(x_adv), y)`` (default: mean
    cross-entropy); ``alpha`` defaults to ``2.5 * eps / steps``.

    With ``random_start=False`` (and the defaults ``restarts=1, early_stop=False``) it reproduces
    ``torchattacks.PGD`` (L-inf) / ``PGDL2`` (L2) on the same model and inputs. Variants: ``restarts``
    re-attacks, from a new random start, the samples still classified correctly; ``early_stop`` keeps a
    sample's first misclassified iterate instead of its last one (both judge the model in eval mode).
    ``mode`` is the model mode during the attack (see ``frozen_for_attack``).
    """
    check_input(x, y)
    alpha = default_alpha(eps, steps) if alpha is None else alpha
    check_restarts(restarts, random_start)
    if (early_stop or restarts > 1) and mode != "eval":
        raise ValueError(f"early_stop and restarts > 1 judge the model's predictions, which needs mode='eval'; "
                         f"got mode={mode!r}")
    loss_fn = loss if loss is not None else F.cross_entropy
    with frozen_for_attack(model, mode):
        if restarts == 1 and not early_stop:
            return maximize(
                lambda adv: loss_fn(model(adv), y), x, eps=eps, alpha=alpha, steps=steps, norm=norm,
                random_init=random_start, generator=generator,
            )
        return pgd_outcome(model, x, y, eps=eps, alpha=alpha, steps=steps, norm=norm, random_start=random_start,
                           restarts=restarts, early_stop=early_stop, loss=loss, generator=generator)[0]


def fgsm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str = "linf",
    loss: Loss | None = None,
    mode: str = "eval",
) -> Tensor:
    """FGSM (Goodfellow et al. 2015): one step of size ``eps`` from ``x`` (``torchattacks.FGSM`` for L-inf)."""
    return pgd(model, x, y, eps=eps, alpha=eps, steps=1, norm=norm, random_start=False, loss=loss, mode=mode)
