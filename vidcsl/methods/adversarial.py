"""What the adversarial contrastive methods (CLAE, RoCL, ACL; SPEC §4) share, on top of SimCLR.

Each of them is SimCLR plus "make adversarial views, add their NT-Xent terms". This module holds the
parts that are the same for all three, so each method module only states its attack and its loss:

- its settings, read from ``cfg.method.options`` (a free-form mapping) with documented defaults and
  checked like the rest of the config: an unknown key or a bad value raises a ValueError naming it;
- dual BatchNorm (AdvProp): with ``dual_bn`` every BN of encoder and head gets an auxiliary copy
  that adversarial inputs go through, so the clean statistics (used by probes and evaluation) only
  ever see clean data;
- the attack mode: the mode the trainer set (``train`` -> batch statistics), unless overridden;
  ``vidcsl.attacks`` restores every flag and BN buffer afterwards;
- the false-negative options (``cfg.fn``): every NT-Xent term goes through SimCLR's
  ``contrastive_loss`` with them, and by default the attack maximises the same FN-aware loss.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from typing import Any, ClassVar

import torch
from torch import nn

from vidcsl.attacks.pgd import frozen_for_attack
from vidcsl.methods.base import StepContext
from vidcsl.methods.false_negatives import fn_loss_kwargs
from vidcsl.methods.simclr import SimCLR
from vidcsl.models.dual_bn import convert_to_dual_bn, use_adversarial_bn

Tensor = torch.Tensor

ATTACK_MODES = ("auto", "train", "eval")
NORMS = ("linf", "l2")
# Options every adversarial method has; subclasses add theirs in ``option_defaults``.
COMMON_DEFAULTS: dict[str, Any] = {
    "dual_bn": True,  # auxiliary BN for adversarial inputs (AdvProp)
    "attack_mode": "auto",  # auto = the mode the trainer set; or force "train" / "eval"
    "attack_fn": True,  # the attack maximises the FN-aware loss the method trains on
    "norm": "linf",
}
_CHOICES = {"attack_mode": ATTACK_MODES, "norm": NORMS}
_NON_NEGATIVE = ("eps", "alpha", "adv_weight", "reg_weight")


def _parse_number(value: Any, key: str) -> float:
    """A float from a number or a fraction string such as ``"8/255"`` (how attack budgets are quoted)."""
    if isinstance(value, bool):
        raise ValueError(f"config key '{key}' expects a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(Fraction(value.replace(" ", "")))
        except (ValueError, ZeroDivisionError):
            pass
    raise ValueError(f"config key '{key}' expects a number or a fraction like '8/255', got {value!r}")


def read_method_options(cfg: Any, defaults: dict[str, Any], method: str) -> dict[str, Any]:
    """``cfg.method.options`` merged over ``defaults``, each value checked against its default's type."""
    given = dict(getattr(getattr(cfg, "method", None), "options", None) or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"config key 'method.options.{unknown[0]}' is not an option of method {method!r} "
                         f"(known: {', '.join(sorted(defaults))})")
    out: dict[str, Any] = {}
    for name, default in defaults.items():
        key, value = f"method.options.{name}", given.get(name, default)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"config key '{key}' expects true or false, got {value!r}")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"config key '{key}' expects an integer >= 1, got {value!r}")
        elif isinstance(default, float):
            value = _parse_number(value, key)
            if name in _NON_NEGATIVE and not value >= 0:
                raise ValueError(f"config key '{key}' must be >= 0, got {value}")
        elif name in _CHOICES and value not in _CHOICES[name]:
            raise ValueError(f"config key '{key}' must be one of {_CHOICES[name]}, got {value!r}")
        out[name] = value
    return out


class AdversarialSimCLR(SimCLR):
    """SimCLR with adversarial views: options, dual BN, attack mode and FN kwargs for the attack."""

    option_defaults: ClassVar[dict[str, Any]] = COMMON_DEFAULTS

    def __init__(self, cfg: Any, encoder: nn.Module, num_classes: int):
        super().__init__(cfg, encoder, num_classes)
        self.options = read_method_options(cfg, self.option_defaults, self.name)
        if self.options["dual_bn"]:
            # Before the trainer builds the optimiser, so the auxiliary BN parameters are trained too.
            convert_to_dual_bn(self.encoder)
            convert_to_dual_bn(self.head)

    def projector(self) -> nn.Module:
        """Encoder + head as one module, the form the attacks take (built per call, never registered)."""
        return nn.Sequential(self.encoder, self.head)

    def attack_mode(self) -> str:
        """``train`` / ``eval``: the option, or (``auto``) the mode the trainer put the method in."""
        mode = self.options["attack_mode"]
        return ("train" if self.training else "eval") if mode == "auto" else mode

    def attack_nce_kwargs(self, labels: Tensor | None, ctx: StepContext) -> dict[str, Any]:
        """FN keyword arguments for the attack's (local, not all-gathered) NT-Xent."""
        if not self.options["attack_fn"] or self.cfg.fn is None:
            return {}
        return fn_loss_kwargs(self.cfg.fn, ctx.epoch, labels)

    @contextmanager
    def adversarial_branch(self) -> Iterator[None]:
        """Route forward passes through the auxiliary BNs (a no-op without dual BN)."""
        with use_adversarial_bn(self, enabled=self.options["dual_bn"]):
            yield

    def attack_target(self, x: Tensor) -> Tensor:
        """The attack's fixed target: projections of the *clean* view through the clean BN branch, with
        BN statistics and the mode left untouched (as CLAE's code computes it)."""
        with frozen_for_attack(self.projector(), self.attack_mode()), torch.no_grad():
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
