"""RoCL-style training (Kim et al. 2020): the positives of an image are {x_i, x_j, x_adv(i)}.

``x_adv`` is the instance-wise attack on view ``i`` (``vidcsl.attacks.contrastive.instance_attack``:
PGD-``steps`` with a random start, maximising NT-Xent of ``x_adv`` against view ``j``). The loss is

    loss = NT-Xent(z_i, z_j) + adv_weight * NT-Xent(z_i, z_adv) + reg_weight * NT-Xent(z_adv, z_j)

Why this combination: RoCL's first term contrasts ``x_i`` with the positive set {x_j, x_adv}; we write
it as the two pairwise NT-Xents (i, j) + (i, adv), so every term is the fused 2N-way kernel with the
false-negative options and no 3N x 3N matrix exists. RoCL's second (regularisation) term, (adv, j),
is exactly the objective the attack maximised, so with it the training minimises what the adversary
maximised (a proper min-max); ``reg_weight: 0`` gives the two-term form.

RoCL shares one BN for all three inputs (one forward pass over [x_i; x_j; x_adv]); ``dual_bn: true``
routes ``x_adv`` through auxiliary BN instead, as CLAE and ACL do.

Settings (``method.options``): :class:`RoCLSettings`; see docs/methods.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vidcsl.attacks.contrastive import instance_attack
from vidcsl.methods.adversarial import AdversarialSettings, AdversarialSimCLR
from vidcsl.methods.base import StepContext, register_method
from vidcsl.schema import bounded

Tensor = torch.Tensor


@dataclass
class RoCLSettings(AdversarialSettings):
    """RoCL's instance-wise attack (Kim et al. 2020): PGD-``steps`` 7, step ``alpha`` 2/255, budget ``eps``
    8/255 (pixels in [0, 1]), random start; ``adv_weight`` 1.0 on NT-Xent(i, adv) and ``reg_weight`` 1.0 on
    NT-Xent(adv, j). ``dual_bn`` is off: RoCL shares one BN over clean and adversarial inputs."""

    dual_bn: bool = False
    eps: float = bounded(8 / 255, ge=0)
    alpha: float = bounded(2 / 255, ge=0)
    steps: int = bounded(7, ge=1)
    random_start: bool = True
    adv_weight: float = bounded(1.0, ge=0)
    reg_weight: float = bounded(1.0, ge=0)


@register_method("rocl")
class RoCL(AdversarialSimCLR):
    settings_class = RoCLSettings

    def make_adversarial(self, x_i: Tensor, x_j: Tensor, labels: Tensor | None, ctx: StepContext) -> Tensor:
        """``x_adv(i)``: PGD from ``x_i`` up the NT-Xent of ``x_adv`` against view ``j``."""
        s = self.settings
        target = self.attack_target(x_j)
        with self.adversarial_branch():
            return instance_attack(self.projector(), x_i, x_j, eps=s.eps, alpha=s.alpha, steps=s.steps,
                                   temperature=self.cfg.method.temperature, norm=s.norm,
                                   random_start=s.random_start, mode=self.attack_mode(),
                                   nce_kwargs=self.attack_nce_kwargs(labels, ctx), target=target)

    def training_step(self, batch: Any, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        (x_i, x_j), y = self.split_batch(batch)
        x_adv = self.make_adversarial(x_i, x_j, y, ctx)
        if self.settings.dual_bn:
            z_i, z_j = self.project(torch.cat([x_i, x_j])).chunk(2)
            z_adv = self.project_adversarial(x_adv)
        else:
            z_i, z_j, z_adv = self.project(torch.cat([x_i, x_j, x_adv])).chunk(3)
        fn = self.cfg.fn
        loss_clean, clean_logs = self.contrastive_loss(z_i, z_j, y, ctx, fn)
        loss_adv, adv_logs = self.contrastive_loss(z_i, z_adv, y, ctx, fn)
        loss_reg, _ = self.contrastive_loss(z_adv, z_j, y, ctx, fn)
        loss = loss_clean + self.settings.adv_weight * loss_adv + self.settings.reg_weight * loss_reg
        return loss, self.merge_logs(clean_logs, adv_logs, loss_clean=loss_clean.detach(),
                                     loss_adv=loss_adv.detach(), loss_reg=loss_reg.detach(),
                                     adv_linf=self.perturbation_size(x_adv, x_i))
