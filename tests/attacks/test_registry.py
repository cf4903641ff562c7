"""The attack registry: one call shape for every attack, on images, clips and clip sets; clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchattacks

from vidcsl.attacks import ATTACKS, attack_by_name, robust_sweep
from vidcsl.errors import ConfigError

# Few steps everywhere; AutoAttack gets a radius at which APGD-CE breaks every sample (its later attacks,
# FAB-T and Square with 5000 queries, would take minutes on survivors).
FAST = {
    "pgd": {"steps": 3}, "fgsm": {}, "apgd-ce": {"steps": 3}, "apgd-t": {"steps": 2, "target_classes": 2},
    "autoattack": {}, "cw-l2": {"steps": 5, "c": 10.0},
}
EPS = {"linf": 8 / 255, "l2": 0.5}


def size_of(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per clip for clip sets, per sample otherwise."""
    rows = delta.flatten(0, 1) if delta.dim() == 6 else delta
    rows = rows.flatten(1)
    return rows.abs().amax(1) if norm == "linf" else rows.norm(dim=1)


def assert_valid(adv, x, eps, norm):
    assert adv.shape == x.shape and adv.dtype == x.dtype and not adv.requires_grad
    assert adv.min() >= 0 and adv.max() <= 1
    assert (size_of(adv - x, norm) <= eps * (1 + 1e-5) + 1e-6).all()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_has_the_one_call_shape(name, classifier, inputs, state_of, same_state):
    model = classifier()
    x, y = inputs((6, 3, 8, 8), model)
    spec = ATTACKS[name]
    assert spec is attack_by_name(name) and spec.options and spec.summary
    rng = torch.get_rng_state()
    for norm in spec.norms:
        eps = 0.5 if name == "autoattack" and norm == "linf" else EPS[norm] * (4 if name == "autoattack" else 1)
        model.train()
        before = state_of(model)
        adv = spec(model, x, y, eps=eps, norm=norm, **FAST[name])
        same_state(model, before)
        model.eval()
        assert_valid(adv, x, eps, norm)
        with torch.no_grad():
            assert F.cross_entropy(model(adv), y) > F.cross_entropy(model(x), y)
    if name not in ("pgd",):  # pgd's random start draws from the global RNG, as torchattacks'
        assert torch.equal(torch.get_rng_state(), rng), "the global RNG was disturbed"


def test_pgd_entry_defaults_are_torchattacks_pgd(classifier, inputs):
    model = classifier()
    x, y = inputs((6, 3, 8, 8), model)
    ours = ATTACKS["pgd"](model, x, y, eps=8 / 255, norm="linf", steps=4, random_start=False)
    theirs = torchattacks.PGD(model, eps=8 / 255, alpha=2.5 * (8 / 255) / 4, steps=4, random_start=False)(x, y)
    assert torch.equal(ours, theirs)


def test_early_stop_keeps_the_first_misclassified_iterate(classifier, inputs):
    model = classifier()
    x, y = inputs((16, 3, 8, 8), model)
    plain = ATTACKS["pgd"](model, x, y, eps=8 / 255, norm="linf", steps=10, random_start=False)
    early = ATTACKS["pgd"](model, x, y, eps=8 / 255, norm="linf", steps=10, random_start=False, early_stop=True)
    with torch.no_grad():
        plain_ok, early_ok = model(plain).argmax(1) == y, model(early).argmax(1) == y
    assert not (early_ok & ~plain_ok).any() and (~early_ok).any()
    # a sample broken early stops moving: its example is nearer x than the last iterate of plain PGD
    broken = ~early_ok
    assert ((early - x)[broken].abs().sum() < (plain - x)[broken].abs().sum())
    assert torch.equal(early[~broken], plain[~broken])


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_clip_sets_keep_every_clip_within_eps(norm, clip_set_classifier, inputs):
    """(B,K,C,T,H,W): each clip is within eps on its own (the L2 ball is per clip, not per video)."""
    model = clip_set_classifier()
    x, y = inputs((3, 4, 3, 2, 8, 8), model)
    eps = EPS[norm]
    for name, options in (("pgd", {"steps": 8}), ("fgsm", {})):
        adv = ATTACKS[name](model, x, y, eps=eps, norm=norm, **options)
        assert_valid(adv, x, eps, norm)
        clip_sizes = size_of(adv - x, norm)
        assert (clip_sizes > 0.9 * eps).all()  # every clip is attacked up to its own boundary
        if norm == "l2":  # ... so the video's whole perturbation is well outside one eps-ball
            assert ((adv - x).flatten(1).norm(dim=1) > 1.5 * eps).all()
    if norm == "linf":
        adv = ATTACKS["apgd-ce"](model, x, y, eps=eps, norm=norm, steps=3)
        assert_valid(adv, x, eps, norm)
    out = robust_sweep(model, x, y, norm=norm, eps_list=[0, eps / 2, eps], steps=4)
    assert not (out[eps] & ~out[0.0]).any()


def test_changing_one_clip_changes_only_that_videos_logits(clip_set_classifier):
    """The clip-set model the attacks are tested on is what they assume: each video's K clips count."""
    model = clip_set_classifier()
    x = torch.rand(2, 3, 3, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    changed = x.clone()
    changed[1, 2] = torch.rand(3, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base, after = model(x), model(changed)
    assert torch.equal(after[0], base[0]) and not torch.allclose(after[1], base[1])
    # ... and an attack that changes only clip 2 of video 1 changes video 1's logits
    mask = torch.zeros_like(x)
    mask[1, 2] = 1
    adv = ATTACKS["pgd"](model, x, torch.tensor([0, 1]), eps=8 / 255, norm="linf", steps=2)
    with torch.no_grad():
        assert not torch.allclose(model(x + (adv - x) * mask)[1], base[1])


def test_clips_go_through_torchattacks_attacks(classifier, inputs):
    """(B,C,T,H,W) clips: torchattacks sees the (B, C*T, H, W) image view; both norms fit exactly."""
    model = classifier(dims=3)
    x, y = inputs((4, 3, 2, 8, 8), model)
    for norm in ("linf", "l2"):
        adv = ATTACKS["apgd-ce"](model, x, y, eps=EPS[norm], norm=norm, steps=3)
        assert_valid(adv, x, EPS[norm], norm)
        with torch.no_grad():
            assert F.cross_entropy(model(adv), y) > F.cross_entropy(model(x), y)
    adv = ATTACKS["cw-l2"](model, x, y, eps=0.2, norm="l2", steps=5, c=10.0)
    assert_valid(adv, x, 0.2, "l2")


def test_image_view_keeps_an_eval_model_in_eval(classifier, inputs):
    """torchattacks re-enables training on a model it found training: the clip wrapper must not look so."""
    from vidcsl.attacks.torchattacks_based import AsImages

    model = classifier(dims=3)
    x, y = inputs((2, 3, 2, 8, 8), model)
    torchattacks.APGD(AsImages(model, x.shape[1:]), eps=0.1, steps=1)(x.reshape(2, -1, 8, 8), y)
    assert not any(m.training for m in model.modules())


def test_unknown_names_options_and_norms_are_config_errors(clip_set_classifier, inputs):
    model = clip_set_classifier()
    x, y = inputs((2, 2, 3, 2, 8, 8), model)
    with pytest.raises(ConfigError, match="unknown attack 'pgd-l2'.*pgd, fgsm, apgd-ce, apgd-t, autoattack, cw-l2"):
        attack_by_name("pgd-l2")
    with pytest.raises(ConfigError, match="'l1'"):
        ATTACKS["pgd"](model, x, y, eps=0.1, norm="l1")
    with pytest.raises(ConfigError, match="cw-l2.*'linf'"):
        ATTACKS["cw-l2"](model, x, y, eps=0.1, norm="linf")
    with pytest.raises(ConfigError, match="no option 'iterations'.*steps"):
        ATTACKS["pgd"](model, x, y, eps=0.1, norm="linf", iterations=3)
    with pytest.raises(ConfigError, match="eps"):
        ATTACKS["fgsm"](model, x, y, eps=float("nan"), norm="linf")
    for name in ("apgd-ce", "apgd-t", "autoattack", "cw-l2"):
        with pytest.raises(ConfigError, match="clip sets"):
            ATTACKS[name](model, x, y, eps=0.1, norm="l2")
    ATTACKS["apgd-ce"].check(norm="linf", options=["seed"], ndim=6)  # a config check needs no model
    with pytest.raises(ValueError, match="shape"):
        ATTACKS["pgd"](model, x, y[:1], eps=0.1, norm="linf")


def test_targeted_attacks_need_four_classes(classifier, inputs):
    model = classifier(classes=3)
    x, y = inputs((2, 3, 8, 8), model)
    for name in ("apgd-t", "autoattack"):
        with pytest.raises(ValueError, match=">= 4 classes"):
            ATTACKS[name](model, x, y, eps=0.1, norm="linf")
