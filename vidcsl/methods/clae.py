"""CLAE (Ho & Vasconcelos 2020): SimCLR plus a term on a batch-wise FGSM adversary of the second view.

    loss = NT-Xent(z_i, z_j) + adv_weight * NT-Xent(z_i, z_j_adv)

``x_j_adv`` is one FGSM step of size ``eps`` from ``x_j`` that maximises the whole batch's NT-Xent
against view ``i`` (``vidcsl.attacks.contrastive.batch_attack``): an adversary that makes the batch's
instance discrimination hard, rather than one sample's. Adversarial inputs go through auxiliary BN
(dual BN, AdvProp-style); during the attack too, so the adversary targets the branch it is fed to,
while the attack's fixed target ``z_i`` is the clean view through the clean BN branch.

Options (``method.options``): ``eps`` 0.015 (pixels in [0, 1]), ``adv_weight`` 1.0 (CLAE's alpha),
``dual_bn`` true, ``attack_mode`` auto, ``attack_fn`` true, ``norm`` linf. With ``cfg.fn`` both
terms remove (or attract) false negatives: Gupta et al.'s "CLAE + FN removal".
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from vidcsl.attacks.contrastive import batch_attack
from vidcsl.methods.adversarial import COMMON_DEFAULTS, AdversarialSimCLR
from vidcsl.methods.base import StepContext, register_method

Tensor = torch.Tensor


@register_method("clae")
class CLAE(AdversarialSimCLR):
    option_defaults: ClassVar[dict[str, Any]] = {**COMMON_DEFAULTS, "eps": 0.015, "adv_weight": 1.0}

    def make_adversarial(self, x_i: Tensor, x_j: Tensor, labels: Tensor | None, ctx: StepContext) -> Tensor:
        """``x_j_adv``: one FGSM step from ``x_j`` up the batch NT-Xent against ``x_i``."""
        o = self.options
        target = self.attack_target(x_i)
        with self.adversarial_branch():
            return batch_attack(self.projector(), x_j, x_i, eps=o["eps"], temperature=self.cfg.method.temperature,
                                norm=o["norm"], mode=self.attack_mode(),
                                nce_kwargs=self.attack_nce_kwargs(labels, ctx), target=target)

    def training_step(self, batch: Any, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        (x_i, x_j), y = self.split_batch(batch)
        x_j_adv = self.make_adversarial(x_i, x_j, y, ctx)  # before the clean pass: no graph held meanwhile
        z_i, z_j = self.project(torch.cat([x_i, x_j])).chunk(2)  # clean branch: exactly SimCLR's pass
        z_adv = self.project_adversarial(x_j_adv)
        loss_clean, clean_logs = self.contrastive_loss(z_i, z_j, y, ctx, self.cfg.fn)
        loss_adv, adv_logs = self.contrastive_loss(z_i, z_adv, y, ctx, self.cfg.fn)
        loss = loss_clean + self.options["adv_weight"] * loss_adv
        return loss, self.merge_logs(clean_logs, adv_logs, loss_clean=loss_clean.detach(),
                                     loss_adv=loss_adv.detach(), adv_linf=self.perturbation_size(x_j_adv, x_j))
