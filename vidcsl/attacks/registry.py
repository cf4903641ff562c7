"""Attacks by name, one call shape: ``ATTACKS[name](model, x, y, eps=..., norm=..., **options) -> x_adv``.

``x`` is images (B,C,H,W), clips (B,C,T,H,W) or clip sets (B,K,C,T,H,W) in [0, 1]; ``x_adv`` is detached,
shaped and typed like ``x``, inside the eps-ball of its norm (per clip for clip sets) and in [0, 1].
Each entry lists its options and the norms it supports; an unknown name, option or norm is a
:class:`vidcsl.errors.ConfigError` naming it, raised before anything runs (``Attack.check`` lets a
config be checked without a model). ``docs/attacks.md`` has the table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn as nn

from vidcsl.attacks.autoattack import autoattack
from vidcsl.attacks.pgd import INPUT_DIMS, NORMS, fgsm, pgd
from vidcsl.attacks.torchattacks_based import apgd_ce, apgd_t, cw_l2
from vidcsl.errors import ConfigError

Tensor = torch.Tensor


class AttackFn(Protocol):
    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str, **options: Any) -> Tensor:
        ...


@dataclass(frozen=True)
class Attack:
    """A named attack: the function, its norms, its options (name -> meaning and default) and the
    norms it supports on clip sets; ``sweep_options`` are the options ``robust_sweep`` sets itself
    (from its own ``steps``, ``restarts``, ...)."""

    name: str
    fn: Callable[..., Tensor]
    summary: str
    norms: tuple[str, ...]
    options: Mapping[str, str]
    clip_set_norms: tuple[str, ...]
    sweep_options: Mapping[str, str] = field(default_factory=dict)  # robust_sweep parameter -> option

    def check(self, *, norm: str, options: Iterable[str] = (), ndim: int | None = None) -> None:
        """Raise ConfigError when ``norm``, an option name or the input rank (``x.dim()``) does not fit."""
        if norm not in self.norms:
            raise ConfigError(f"attack {self.name!r} supports norms {list(self.norms)}, got {norm!r}")
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ConfigError(f"attack {self.name!r} has no option {', '.join(map(repr, unknown))}; "
                              f"its options: {', '.join(self.options) or 'none'}")
        if ndim is not None and ndim not in INPUT_DIMS:
            raise ConfigError(f"attack {self.name!r}: x must be {', '.join(INPUT_DIMS.values())}; got {ndim}-D")
        if ndim == 6 and norm not in self.clip_set_norms:
            raise ConfigError(f"attack {self.name!r} cannot attack clip sets (B,K,C,T,H,W) under {norm}: it would "
                              f"bound the whole video, not each clip (clip-set norms: {list(self.clip_set_norms)})")

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str, **options: Any) -> Tensor:
        self.check(norm=norm, options=options, ndim=x.dim())
        if not (math.isfinite(eps) and eps >= 0):
            raise ConfigError(f"attack {self.name!r}: eps must be finite and >= 0, got {eps}")
        return self.fn(model, x, y, eps=float(eps), norm=norm, **options)


_MODE = "'eval' (running BN statistics, default) or 'train' (batch statistics, restored after)"
_GENERATOR = "torch.Generator for the random start (default: the global RNG)"
_SEED = "seed of torchattacks' random start (default 0; the global RNG is left as it was)"

ATTACKS: dict[str, Attack] = {a.name: a for a in (
    Attack("pgd", pgd, "PGD (Madry et al. 2018), torchattacks' PGD / PGDL2 semantics, fused kernels.pgd step",
           NORMS, {
               "steps": "iterations (default 20)",
               "alpha": "step size (default 2.5 * eps / steps)",
               "random_start": "start at a random point of the ball, as torchattacks (default True)",
               "restarts": "re-attack the samples still correct from a new random start (default 1)",
               "early_stop": "keep a sample's first misclassified iterate, not its last (default False)",
               "loss": "loss(logits, y) -> scalar to maximise (default mean cross-entropy)",
               "generator": _GENERATOR,
               "mode": _MODE,
           }, NORMS),
    Attack("fgsm", fgsm, "FGSM (Goodfellow et al. 2015): one step of size eps, torchattacks' FGSM", NORMS, {
        "loss": "loss(logits, y) -> scalar to maximise (default mean cross-entropy)",
        "mode": _MODE,
    }, NORMS),
    Attack("apgd-ce", apgd_ce, "APGD with cross-entropy (Croce & Hein 2020), torchattacks' APGD", NORMS, {
        "steps": "iterations (default 100, as in AutoAttack)",
        "restarts": "random restarts on the samples still correct (default 1)",
        "rho": "step-size reduction threshold (default 0.75)",
        "seed": _SEED,
    }, ("linf",), {"steps": "steps", "restarts": "restarts"}),
    Attack("apgd-t", apgd_t, "targeted APGD with the DLR loss (Croce & Hein 2020), torchattacks' APGDT", NORMS, {
        "steps": "iterations per target class (default 100, as in AutoAttack)",
        "restarts": "random restarts per target class (default 1)",
        "rho": "step-size reduction threshold (default 0.75)",
        "seed": _SEED,
        "target_classes": "number of highest-scoring wrong classes targeted (default 9, as in AutoAttack)",
    }, ("linf",), {"steps": "steps", "restarts": "restarts"}),
    Attack("autoattack", autoattack, "AutoAttack (Croce & Hein 2020), torchattacks' AutoAttack", NORMS, {
        "version": "'standard' (APGD-CE, APGD-T, FAB-T, Square; default), 'plus' or 'rand'",
        "n_classes": "number of classes (default: the model's number of logits)",
        "seed": _SEED,
    }, ("linf",)),
    Attack("cw-l2", cw_l2, "Carlini & Wagner 2017 L2 attack (torchattacks' CW: fixed c, no binary search), "
           "projected onto the eps-ball", ("l2",), {
               "c": "weight of the misclassification term (default 1)",
               "kappa": "confidence margin (default 0)",
               "steps": "Adam steps (default 50)",
               "lr": "Adam learning rate (default 0.01)",
           }, (), {"steps": "steps"}),
)}


def attack_by_name(name: str) -> Attack:
    """The registered attack ``name``; ConfigError listing the known names otherwise."""
    try:
        return ATTACKS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown attack {name!r}; known attacks: {', '.join(ATTACKS)}") from None
