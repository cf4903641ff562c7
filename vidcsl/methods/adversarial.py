"""What the adversarial contrastive methods (CLAE, RoCL, ACL) share, on top of SimCLR.

Each of them is SimCLR plus "make adversarial views, add their NT-Xent terms". This module holds the
parts that are the same for all three, so each method module only states its attack and its loss:

- the settings every one of them has (:class:`AdversarialSettings`, given under ``method.options``
  and checked like every config key; attack budgets may be written as fractions such as ``8/255``);
- dual BatchNorm (AdvProp, Xie et al. 2020): with ``dual_bn`` every BN of encoder and head gets an
  auxiliary copy that adversarial inputs go through, so the clean statistics (used by probes and
  evaluation) only ever see clean data;
- the attack mode: the mode the trainer set (``train`` -> batch statistics), unless overridden;
  ``vidcsl.attacks`` restores every flag and BN buffer afterwards, so an attack leaves no trace;
- the false-negative options (``cfg.fn``): every NT-Xent term goes through SimCLR's
  ``contrastive_loss`` with them, and by default the attack maximises the same FN-aware loss.

docs/methods.md gives each method's loss, settings and paper.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vidcsl.attacks.pgd import frozen_for_attack
from vidcsl.methods.base import StepContext
from vidcsl.methods.false_negatives import fn_loss_kwargs
from vidcsl.methods.simclr import SimCLR
from vidcsl.models.dual_bn import convert_to_dual_bn, use_adversarial_bn
from vidcsl.schema import choices

Tensor = torch.Tensor

ATTACK_MODES = ("auto", "train", "eval")
NORMS = ("linf", "l2")


@dataclass
class AdversarialSettings:
    """Settings every adversarial contrastive method has.

    ``dual_bn``: adversarial inputs through auxiliary BN (AdvProp). ``attack_mode``: ``auto`` (the mode
    the trainer set), or force ``train`` (batch statistics) / ``eval`` (running statistics).
    ``attack_fn``: the attack maximises the FN-aware loss the method trains on. ``norm``: ``linf`` / ``l2``.
    """

    dual_bn: bool = True
    attack_mode: str = choices(*ATTACK_MODES, default="auto")
    attack_fn: bool = True
    norm: str = choices(*NORMS, default="linf")


class AdversarialSimCLR(SimCLR):
    """SimCLR with adversarial views: settings, dual BN, attack mode and FN kwargs for the attack."""

    settings_class = AdversarialSettings

    def __init__(self, cfg: Any, encoder: nn.Module, num_classes: int):
        super().__init__(cfg, encoder, num_classes)
        if self.settings.dual_bn:
            # Before the trainer builds the optimiser, so the auxiliary BN parameters are trained too.
            convert_to_dual_bn(self.encoder)
            convert_to_dual_bn(self.head)

    def projector(self) -> nn.Module:
        """Encoder + head as one module, the form the attacks take (built per call, never registered)."""
        return nn.Sequential(self.encoder, self.head)

    def attack_mode(self) -> str:
        """``train`` / ``eval``: the option, or (``auto``) the mode the trainer put the method in."""
        mode = self.settings.attack_mode
        return ("train" if self.training else "eval") if mode == "auto" else mode

    def attack_nce_kwargs(self, labels: Tensor | None, ctx: StepContext) -> dict[str, Any]:
        """FN keyword arguments for the attack's (local, not all-gathered) NT-Xent."""
        if not self.settings.attack_fn or self.cfg.fn is None:
            return {}
        return fn_loss_kwargs(self.cfg.fn, ctx.epoch, labels)

    @contextmanager
    def adversarial_branch(self) -> Iterator[None]:
        """Route forward passes through the auxiliary BNs (a no-op without dual BN)."""
        with use_adversarial_bn(self, enabled=self.settings.dual_bn):
            yield

    def attack_target(self, x: Tensor, *, adversarial_branch: bool = False) -> Tensor:
        """The attack's fixed target: projections of ``x`` through the clean BN branch (or, with
        ``adversarial_branch``, the auxiliary one), in the attack's mode, BN statistics left untouched."""
        with frozen_for_attack(self.projector(), self.attack_mode()), torch.no_grad():
            if adversarial_branch:
                return self.project_adversarial(x).detach()
            return self.project(x).detach()

    def project_adversarial(self, x: Tensor) -> Tensor:
        """Projection of adversarial inputs, through the auxiliary BNs when dual BN is on."""
        with self.adversarial_branch():
            return self.project(x)

    @staticmethod
    def merge_logs(clean: dict[str, float], adversarial: dict[str, float], **extra: Tensor | float) -> dict[str, float]:
        """Clean-term logs under SimCLR's names, adversarial-term logs prefixed ``adv_``, plus ``extra``."""
        logs = dict(clean)
        logs.update({f"adv_{k}": v for k, v in adversarial.items()})
        logs.update({k: float(v) for k, v in extra.items()})
        return logs

    @staticmethod
    def perturbation_size(x_adv: Tensor, x: Tensor) -> float:
        """Mean over the batch of the per-sample L-inf size of the perturbation (a monitor)."""
        return float((x_adv.detach() - x.detach()).flatten(1).abs().amax(dim=1).mean())
