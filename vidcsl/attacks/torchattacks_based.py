"""APGD-CE, APGD-T (Croce & Hein 2020) and CW-L2 (Carlini & Wagner 2017) through torchattacks.

torchattacks' attacks are written for images (B,C,H,W). A clip (B,C,T,H,W) or an L-inf clip set
(B,K,C,T,H,W) is handed to them as the image (B, C*T, H, W) / (B, K*C*T, H, W) of the same numbers, with
the model behind a view back to its own shape: the L-inf box is elementwise and a clip's L2 norm is the
norm of all its numbers, so the threat model is exactly the same. An L2 clip set is refused: torchattacks
would bound the norm of the whole video, not of each clip. torchattacks is imported only when called;
the model's flags, buffers and ``requires_grad`` are restored, and so is the global RNG (APGD reseeds it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from vidcsl.attacks.pgd import NORMS, check_input, frozen_for_attack, per_clip

Tensor = torch.Tensor
TA_NORMS = {"linf": "Linf", "l2": "L2"}
# The official AutoAttack targets the 9 highest-scoring wrong classes in APGD-T and FAB-T; torchattacks
# targets n_classes - 1 of them, so it is given min(n_classes, TARGETS + 1).
TARGET_CLASSES = 9
MIN_CLASSES_TARGETED = 4  # APGD-T's targeted DLR loss reads the 4th-largest logit


def load_torchattacks():
    try:
        import torchattacks
    except ImportError as err:  # pragma: no cover - exercised only where torchattacks is absent
        raise ImportError("this attack needs the optional package 'torchattacks' (pip install torchattacks>=3.5)") \
            from err
    return torchattacks


class AsImages(nn.Module):
    """The model seen through the (B, -1, H, W) image view of its real input shape.

    The wrapper takes the model's train/eval flag: torchattacks puts a model it found training back
    into train mode after an attack, so a new (training) wrapper would flip an eval-mode model.
    """

    def __init__(self, model: nn.Module, sample_shape: torch.Size):
        super().__init__()
        self.model, self.sample_shape = model, tuple(sample_shape)
        self.training = model.training

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.reshape(x.shape[0], *self.sample_shape))


def num_classes(model: nn.Module, x: Tensor) -> int:
    """The number of logits the model gives (one eval-mode forward pass of one sample)."""
    with frozen_for_attack(model, "eval"), torch.no_grad():
        return int(model(x[:1]).shape[1])


def check_targeted(name: str, n_classes: int) -> None:
    if n_classes < MIN_CLASSES_TARGETED:
        raise ValueError(f"{name} needs a classifier with >= {MIN_CLASSES_TARGETED} classes (its targeted DLR "
                         f"loss reads the 4th-largest logit); this model has {n_classes}")


def check_ta_input(name: str, x: Tensor, y: Tensor, norm: str) -> None:
    """Shapes, the norm, and no L2 clip sets (torchattacks would bound the whole video's norm)."""
    check_input(x, y)
    if norm not in NORMS:
        raise ValueError(f"{name}: norm must be one of {NORMS}, got {norm!r}")
    if x.dim() == 6 and norm == "l2":
        raise ValueError(f"{name} cannot attack clip sets (B,K,C,T,H,W) under L2: torchattacks would bound the "
                         "norm of the whole video, not of each clip; use 'pgd' or 'fgsm'")


def run_torchattacks(name: str, model: nn.Module, x: Tensor, y: Tensor, norm: str,
                     make: Callable[[nn.Module], object]) -> Tensor:
    """``make(model_as_images)(x_as_images, y)`` in eval mode; x_adv back in ``x``'s shape and dtype."""
    check_ta_input(name, x, y, norm)
    images = x.detach().reshape(x.shape[0], -1, *x.shape[-2:])
    devices = [x.device] if x.device.type == "cuda" else []
    with frozen_for_attack(model, "eval"), torch.random.fork_rng(devices=devices):
        attack = make(model if x.dim() == 4 else AsImages(model, x.shape[1:]))
        with torch.enable_grad():
            adv = attack(images, y.detach())
    return adv.detach().reshape(x.shape).to(x.dtype)


def apgd_ce(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str = "linf", steps: int = 100,
            restarts: int = 1, rho: float = 0.75, seed: int = 0) -> Tensor:
    """APGD with the cross-entropy loss (Croce & Hein 2020; 100 steps as in AutoAttack), ``torchattacks.APGD``."""
    ta = load_torchattacks()
    return run_torchattacks("apgd-ce", model, x, y, norm, lambda m: ta.APGD(
        m, norm=TA_NORMS[norm], eps=eps, steps=steps, n_restarts=restarts, seed=seed, loss="ce", rho=rho))


def apgd_t(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str = "linf", steps: int = 100,
           restarts: int = 1, rho: float = 0.75, seed: int = 0, target_classes: int = TARGET_CLASSES) -> Tensor:
    """Targeted APGD with the DLR loss against the ``target_classes`` highest-scoring wrong classes
    (Croce & Hein 2020; 9 targets, 100 steps as in AutoAttack), ``torchattacks.APGDT``."""
    check_ta_input("apgd-t", x, y, norm)
    ta = load_torchattacks()
    n = num_classes(model, x)
    check_targeted("apgd-t", n)
    if target_classes < 1:
        raise ValueError(f"apgd-t: target_classes must be >= 1, got {target_classes}")
    return run_torchattacks("apgd-t", model, x, y, norm, lambda m: ta.APGDT(
        m, norm=TA_NORMS[norm], eps=eps, steps=steps, n_restarts=restarts, seed=seed, rho=rho,
        n_classes=min(n, target_classes + 1)))


def project_l2(adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """``x + delta * min(1, eps / ||delta||)`` per sample (per clip of a clip set), clipped to [0, 1]."""
    delta = per_clip(adv - x)
    norms = delta.flatten(1).norm(dim=1).view(-1, *([1] * (delta.dim() - 1)))
    factor = torch.clamp(eps / norms.clamp_min(1e-12), max=1.0)
    return (x + (delta * factor).view_as(x)).clamp(0, 1)


def cw_l2(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str = "l2", c: float = 1.0,
          kappa: float = 0.0, steps: int = 50, lr: float = 0.01) -> Tensor:
    """Carlini & Wagner's L2 attack as torchattacks implements it (``torchattacks.CW``: a fixed ``c``, no
    binary search over it, Adam for ``steps``), then projected onto the eps-ball: CW minimises the
    perturbation instead of bounding it, so a sample counts as broken at eps only if the projection of
    CW's example (its own example whenever that is within eps) is still misclassified."""
    if norm != "l2":
        raise ValueError(f"cw-l2 is an L2 attack, got norm={norm!r}")
    ta = load_torchattacks()
    adv = run_torchattacks("cw-l2", model, x, y, norm, lambda m: ta.CW(m, c=c, kappa=kappa, steps=steps, lr=lr))
    return project_l2(adv, x.detach(), eps)
