"""ACL-style training (Jiang et al. 2020, dual-stream): both views attacked, adversarial pair via dual BN.

    loss = 1/2 * (NT-Xent(z_i, z_j) + NT-Xent(z_i_adv, z_j_adv))

The two perturbations are found *jointly*, as in ACL: PGD-``steps`` (random start) on the
concatenated pair [x_i; x_j], maximising NT-Xent(f(x_i + d_i), f(x_j + d_j)) through the auxiliary
BNs the adversarial pair is later trained through. It is the shared ascent loop
(``vidcsl.attacks.pgd.maximize``, each update ``kernels.pgd.pgd_step``) with that objective, under
``frozen_for_attack`` (model flags, BN buffers and ``requires_grad`` restored).

Settings (``method.options``): :class:`ACLSettings`; see docs/methods.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vidcsl.attacks.pgd import frozen_for_attack, maximize
from vidcsl.methods.adversarial import AdversarialSettings, AdversarialSimCLR
from vidcsl.methods.base import StepContext, register_method
from vidcsl.schema import bounded

Tensor = torch.Tensor


def pair_attack(encoder_with_head: nn.Module, x_i: Tensor, x_j: Tensor, *, eps: float, alpha: float, steps: int,
                temperature: float, norm: str = "linf", random_start: bool = True, mode: str = "eval",
                nce_kwargs: dict[str, Any] | None = None) -> tuple[Tensor, Tensor]:
    """ACL's attack: perturb both views at once to maximise their NT-Xent; returns ``(x_i_adv, x_j_adv)``."""
    from kernels.info_nce import info_nce

    if x_i.shape != x_j.shape:
        raise ValueError(f"the two views must have the same shape, got {tuple(x_i.shape)} and {tuple(x_j.shape)}")
    kwargs = dict(nce_kwargs or {})

    def objective(adv: Tensor) -> Tensor:
        z_i, z_j = encoder_with_head(adv).chunk(2)  # one pass: BN sees both views, as in training
        return info_nce(z_i, z_j, temperature, **kwargs)

    with frozen_for_attack(encoder_with_head, mode):
        adv = maximize(objective, torch.cat([x_i, x_j]), eps=eps, alpha=alpha, steps=steps, norm=norm,
                       random_init=random_start)
    x_i_adv, x_j_adv = adv.chunk(2)
    return x_i_adv, x_j_adv


@dataclass
class ACLSettings(AdversarialSettings):
    """ACL's attack (Jiang et al. 2020): PGD-``steps`` 5 with step ``alpha`` 2/255 in a budget ``eps``
    8/255 (pixels in [0, 1]), from a random start. Plus the common settings (dual BN on by default)."""

    eps: float = bounded(8 / 255, ge=0)
    alpha: float = bounded(2 / 255, ge=0)
    steps: int = bounded(5, ge=1)
    random_start: bool = True


@register_method("acl")
class ACL(AdversarialSimCLR):
    settings_class = ACLSettings

    def make_adversarial(self, x_i: Tensor, x_j: Tensor, labels: Tensor | None,
                         ctx: StepContext) -> tuple[Tensor, Tensor]:
        """Both views attacked jointly through the adversarial branch."""
        s = self.settings
        with self.adversarial_branch():
            return pair_attack(self.projector(), x_i, x_j, eps=s.eps, alpha=s.alpha, steps=s.steps,
                               temperature=self.cfg.method.temperature, norm=s.norm,
                               random_start=s.random_start, mode=self.attack_mode(),
                               nce_kwargs=self.attack_nce_kwargs(labels, ctx))

    def training_step(self, batch: Any, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        (x_i, x_j), y = self.split_batch(batch)
        a_i, a_j = self.make_adversarial(x_i, x_j, y, ctx)
        z_i, z_j = self.project(torch.cat([x_i, x_j])).chunk(2)
        za_i, za_j = self.project_adversarial(torch.cat([a_i, a_j])).chunk(2)
        loss_clean, clean_logs = self.contrastive_loss(z_i, z_j, y, ctx, self.cfg.fn)
        loss_adv, adv_logs = self.contrastive_loss(za_i, za_j, y, ctx, self.cfg.fn)
        loss = 0.5 * (loss_clean + loss_adv)
        size = 0.5 * (self.perturbation_size(a_i, x_i) + self.perturbation_size(a_j, x_j))
        return loss, self.merge_logs(clean_logs, adv_logs, loss_clean=loss_clean.detach(),
                                     loss_adv=loss_adv.detach(), adv_linf=size)
