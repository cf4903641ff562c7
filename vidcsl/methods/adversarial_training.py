"""Supervised adversarial training (Madry et al., ICLR 2018): the SL model trained on PGD examples.

    x_adv = PGD-steps(x, y) maximising CE(h(f(x_adv)), y) inside the eps-ball of x (random start)
    loss  = (1 - clean_weight) * CE(h(f(x_adv)), y) + clean_weight * CE(h(f(x)), y)

``clean_weight = 0`` (the default) is Madry et al.'s min-max objective. The attack is the shared PGD
(``vidcsl.attacks.pgd.pgd``: every update through ``kernels.pgd.pgd_step``, model flags, BatchNorm
buffers and ``requires_grad`` restored afterwards, so the attack leaves no trace in the training step).
This is the *robust source* of the robust-feature dataset (Ilyas et al. 2019; docs/nonrobust.md).
Settings: :class:`SupervisedATSettings`; see docs/methods.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vidcsl.attacks.pgd import pgd
from vidcsl.methods.base import StepContext, register_method
from vidcsl.methods.supervised import Supervised, SupervisedSettings
from vidcsl.schema import bounded, choices


@dataclass
class SupervisedATSettings(SupervisedSettings):
    """Madry et al.'s CIFAR-10 attack: ``norm`` linf, ``eps`` 8/255, ``alpha`` 2/255, ``steps`` 7, from a
    ``random_start``; pixels in [0, 1] (budgets may be written as fractions, ``8/255``). For L2 (Ilyas et
    al.'s robust models) set ``norm: l2`` with e.g. ``eps: 0.5``, ``alpha: 0.1``. ``attack_mode``: the
    model's mode during the attack, ``eval`` (running BN statistics, restored) or ``train`` (batch
    statistics; running statistics restored). ``clean_weight``: share of the clean cross-entropy in the
    loss (0 = pure adversarial training). Plus the supervised settings (``two_views``, ``label_smoothing``)."""

    norm: str = choices("linf", "l2", default="linf")
    eps: float = bounded(8 / 255, ge=0)
    alpha: float = bounded(2 / 255, ge=0)
    steps: int = bounded(7, ge=1)
    random_start: bool = True
    attack_mode: str = choices("eval", "train", default="eval")
    clean_weight: float = bounded(0.0, ge=0, le=1)


@register_method("supervised_at")
class SupervisedAT(Supervised):
    settings_class = SupervisedATSettings

    def classifier_model(self) -> nn.Module:
        """Encoder + classifier as one module, the form the attack takes (built per call, never registered)."""
        return nn.Sequential(self.encoder, self.classifier)

    def adversarial(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """PGD examples of ``x`` against the current model (detached)."""
        s = self.settings
        return pgd(self.classifier_model(), x, y, eps=s.eps, alpha=s.alpha, steps=s.steps, norm=s.norm,
                   random_start=s.random_start, mode=s.attack_mode)

    def training_step(self, batch: Any, ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
        x, target = self.labelled_inputs(batch)
        x_adv = self.adversarial(x, target)
        s = self.settings
        logits_adv = self.logits(x_adv).float()
        loss = F.cross_entropy(logits_adv, target, label_smoothing=s.label_smoothing)
        logs = {"train_adv_acc": (logits_adv.argmax(1) == target).float().mean().item(),
                "perturbation_l2": float((x_adv - x).flatten(1).norm(dim=1).mean())}
        if s.clean_weight > 0:
            logits = self.logits(x).float()
            clean = F.cross_entropy(logits, target, label_smoothing=s.label_smoothing)
            loss = (1 - s.clean_weight) * loss + s.clean_weight * clean
            logs["train_acc"] = (logits.argmax(1) == target).float().mean().item()
        return loss, logs
