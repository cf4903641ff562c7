"""Adversarial attacks on images, clips and clip sets, by name (``ATTACKS``) and as an eps sweep.

    from vidcsl.attacks import ATTACKS, attack_by_name, clean_correct, robust_sweep

    x_adv = ATTACKS["pgd"](model, x, y, eps=8 / 255, norm="linf", steps=10)
    still_correct = robust_sweep(model, x, y, norm="linf", eps_list=[0, 2 / 255, 8 / 255])

The contrastive attacks (``vidcsl.attacks.contrastive``) attack encoders without labels and are used by
the adversarial training methods; ``docs/attacks.md`` describes all of them.
"""

from vidcsl.attacks.autoattack import autoattack, autoattack_accuracy
from vidcsl.attacks.contrastive import batch_attack, feature_attack, instance_attack
from vidcsl.attacks.pgd import (
    DEFAULT_ALPHA_FACTOR,
    DEFAULT_STEPS,
    NORMS,
    fgsm,
    frozen_for_attack,
    maximize,
    pgd,
    pgd_outcome,
)
from vidcsl.attacks.registry import ATTACKS, Attack, AttackFn, attack_by_name
from vidcsl.attacks.sweep import clean_correct, robust_sweep
from vidcsl.attacks.torchattacks_based import apgd_ce, apgd_t, cw_l2

__all__ = [
    "ATTACKS", "DEFAULT_ALPHA_FACTOR", "DEFAULT_STEPS", "NORMS", "Attack", "AttackFn", "apgd_ce", "apgd_t",
    "attack_by_name", "autoattack", "autoattack_accuracy", "batch_attack", "clean_correct", "cw_l2",
    "feature_attack", "fgsm", "frozen_for_attack", "instance_attack", "maximize", "pgd", "pgd_outcome",
    "robust_sweep",
]
