"""CLAE (Ho & Vasconcelos, NeurIPS 2020): SimCLR plus a term on a batch-wise FGSM adversary.

The default (``variant: published``) is the algorithm as the authors' code computes it
(github.com/chihhuiho/CLAE, ``SimCLR/main.py``, ``gen_adv`` and ``train``):

1. the attack's anchor is ``z_i = g_adv(x_i)``: view ``i`` through the *adversarial* BN branch;
2. ``x_adv = x_i + eps * sign(grad_x NT-Xent(z_i, g_adv(x)))`` at ``x = x_i``: one FGSM step that
   starts at ``x_i`` and maximises the whole batch's NT-Xent, not one sample's;
3. ``loss = NT-Xent(z_i, z_j) + adv_weight * NT-Xent(z_i, g_adv(x_adv))`` with ``z_i, z_j`` the
   clean-BN projections of the two views.

Where this implementation differs from that code, and why:

- ``x_adv`` is clipped to the image range [0, 1] (every attack of the project keeps images valid);
  the authors' code does not clip (it works on inputs normalised to [-1, 1], so its eps 0.03 is our
  0.015 in [0, 1] pixel units). Only pixels within eps of 0 or 1 can differ.
- The attack leaves BN running statistics untouched (``vidcsl.attacks`` restores them); in the
  authors' code its two forward passes also update the adversarial BN's running statistics, which
  only evaluation through the adversarial branch would read.
- The clean term is this project's SimCLR pass (one BN batch over both views), so CLAE and SimCLR
  differ only by the adversarial term; the authors' SimCLR re-implementation passes the views
  separately.

The auxiliary BNs use the authors' momentum (``adv_bn_momentum`` 0.01). ``variant: view_j`` is the
variant this project ran before: the adversary starts from ``x_j`` and aims at ``z_i`` through the
*clean* BN. With ``cfg.fn`` both terms (and, with ``attack_fn``, the attack) remove or attract false
negatives: Gupta et al.'s "CLAE + FN removal". Settings: :class:`CLAESettings`; see docs/methods.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vidcsl.attacks.contrastive import batch_attack
from vidcsl.methods.adversarial import AdversarialSettings, AdversarialSimCLR
from vidcsl.methods.base import StepContext, register_method
from vidcsl.models.dual_bn import dual_bn_layers
from vidcsl.schema import bounded, choices

Tensor = torch.Tensor

VARIANTS = ("published", "view_j")


@dataclass
class CLAESettings(AdversarialSettings):
    """``eps`` 0.015: the FGSM step (= budget) in [0, 1] pixel units (the authors' 0.03 on [-1, 1] inputs).
    ``adv_weight`` 1.0: CLAE's alpha. ``adv_bn_momentum`` 0.01: momentum of the auxiliary BNs' running
    statistics (the authors' ``bn_adv_momentum``). ``variant``: ``published`` (the adversary of view i,
    anchored through the adversarial BN) or ``view_j`` (the adversary of view j, anchored through the
    clean BN). Plus the common settings of :class:`vidcsl.methods.adversarial.AdversarialSettings`."""

    eps: float = bounded(0.015, ge=0)
    adv_weight: float = bounded(1.0, ge=0)
    adv_bn_momentum: float = bounded(0.01, gt=0, le=1)
    variant: str = choices(*VARIANTS, default="published")


@register_method("clae")
class CLAE(AdversarialSimCLR):
    settings_class = CLAESettings

    def __init__(self, cfg: Any, encoder: torch.nn.Module, num_classes: int):
        super().__init__(cfg, encoder, num_classes)
        for layer in dual_bn_layers(self):
            layer.adversarial.momentum = self.settings.adv_bn_momentum

    def attack_start(self, x_i: Tensor, x_j: Tensor) -> Tensor:
        """The view the adversary perturbs: ``x_i`` (published) or ``x_j`` (the ``view_j`` variant)."""
        return x_i if self.settings.variant == "published" else x_j

    def make_adversarial(self, x_i: Tensor, x_j: Tensor, labels: Tensor | None, ctx: StepContext) -> Tensor:
        """One FGSM step from :meth:`attack_start` up the batch NT-Xent against the fixed anchor ``z_i``."""
        s = self.settings
        target = self.attack_target(x_i, adversarial_branch=s.variant == "published")
        with self.adversarial_branch():
            return batch_attack(self.projector(), self.attack_start(x_i, x_j), eps=s.eps,
                                temperature=self.cfg.method.temperature, norm=s.norm, mode=self.attack_mode(),
                                nce_kwargs=self.attack_nce_kwargs(labels, ctx), target=target)

    def training_step(self, batch: Any, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        (x_i, x_j), y = self.split_batch(batch)
        x_adv = self.make_adversarial(x_i, x_j, y, ctx)  # before the clean pass: no graph held meanwhile
        z_i, z_j = self.project(torch.cat([x_i, x_j])).chunk(2)  # clean branch: exactly SimCLR's pass
        z_adv = self.project_adversarial(x_adv)
        loss_clean, clean_logs = self.contrastive_loss(z_i, z_j, y, ctx, self.cfg.fn)
        loss_adv, adv_logs = self.contrastive_loss(z_i, z_adv, y, ctx, self.cfg.fn)
        loss = loss_clean + self.settings.adv_weight * loss_adv
        size = self.perturbation_size(x_adv, self.attack_start(x_i, x_j))
        return loss, self.merge_logs(clean_logs, adv_logs, loss_clean=loss_clean.detach(),
                                     loss_adv=loss_adv.detach(), adv_linf=size)
