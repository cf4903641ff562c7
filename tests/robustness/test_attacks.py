"""PGD/FGSM against torchattacks and the reference step; contrastive attacks; model state is restored."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchattacks

from kernels.reference import pgd_step_reference
from vidcsl.attacks.contrastive import batch_attack, feature_attack, instance_attack
from vidcsl.attacks.pgd import fgsm, pgd


def small_cnn(classes: int = 5, dims: int = 2) -> nn.Module:
    conv, bn = (nn.Conv2d, nn.BatchNorm2d) if dims == 2 else (nn.Conv3d, nn.BatchNorm3d)
    pool = nn.AdaptiveAvgPool2d(1) if dims == 2 else nn.AdaptiveAvgPool3d(1)
    torch.manual_seed(0)
    model = nn.Sequential(
        conv(3, 8, 3, padding=1), bn(8), nn.ReLU(), conv(8, 8, 3, padding=1, stride=2), bn(8), nn.ReLU(),
        nn.Dropout(0.1), pool, nn.Flatten(), nn.Linear(8, classes),
    )
    # Non-trivial running statistics, so "restored" is distinguishable from "reset".
    model.train()
    with torch.no_grad():
        model(torch.rand(16, 3, *([4] if dims == 3 else []), 12, 12))
    return model.eval()


def batch(n=6, dims=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    shape = (n, 3, 4, 12, 12) if dims == 3 else (n, 3, 12, 12)
    return torch.rand(shape, generator=g), torch.randint(0, 5, (n,), generator=g)


def snapshot(model):
    return (
        [m.training for m in model.modules()],
        [b.clone() for b in model.buffers()],
        [p.requires_grad for p in model.parameters()],
    )


def assert_same_state(model, before):
    flags, buffers, req = snapshot(model)
    assert flags == before[0]
    assert all(torch.equal(a, b) for a, b in zip(buffers, before[1]))
    assert req == before[2]


def test_pgd_linf_matches_torchattacks_exactly():
    model = small_cnn()
    x, y = batch()
    ours = pgd(model, x, y, eps=8 / 255, alpha=2 / 255, steps=6, random_start=False)
    theirs = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=6, random_start=False)(x, y)
    assert torch.equal(ours, theirs)
    assert (ours - x).abs().max() > 7 / 255  # it did move to the boundary


def test_pgd_l2_matches_torchattacks():
    model = small_cnn()
    x, y = batch()
    ours = pgd(model, x, y, eps=0.5, alpha=0.15, steps=6, norm="l2", random_start=False)
    theirs = torchattacks.PGDL2(model, eps=0.5, alpha=0.15, steps=6, random_start=False)(x, y)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    assert (ours - x).flatten(1).norm(dim=1).max() > 0.4


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_matches_torchattacks_draws(norm):
    model = small_cnn()
    x, y = batch()
    eps, alpha = (8 / 255, 2 / 255) if norm == "linf" else (0.5, 0.15)
    torch.manual_seed(123)
    ours = pgd(model, x, y, eps=eps, alpha=alpha, steps=2, norm=norm)
    torch.manual_seed(123)
    cls = torchattacks.PGD if norm == "linf" else torchattacks.PGDL2
    theirs = cls(model, eps=eps, alpha=alpha, steps=2, random_start=True)(x, y)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_generator_makes_random_start_deterministic():
    model = small_cnn()
    x, y = batch()
    a = pgd(model, x, y, eps=8 / 255, alpha=2 / 255, steps=1, generator=torch.Generator().manual_seed(5))
    b = pgd(model, x, y, eps=8 / 255, alpha=2 / 255, steps=1, generator=torch.Generator().manual_seed(5))
    c = pgd(model, x, y, eps=8 / 255, alpha=2 / 255, steps=1, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("norm,eps,alpha", [("linf", 4 / 255, 1 / 255), ("l2", 0.3, 0.1)])
def test_pgd_on_clips_matches_a_reference_loop(norm, eps, alpha):
    """Clips (B,C,T,H,W): the same ascent written out with the materialised reference step."""
    model = small_cnn(dims=3)
    x, y = batch(n=3, dims=3)
    ours = pgd(model, x, y, eps=eps, alpha=alpha, steps=3, norm=norm, random_start=False)
    adv = x.clone()
    for _ in range(3):
        adv.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(adv), y), adv)
        adv = pgd_step_reference(adv.detach(), g, x, step_size=alpha, eps=eps, norm=norm)
    torch.testing.assert_close(ours, adv, rtol=0, atol=1e-6)


def ball_ok(adv, x, eps, norm):
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert adv.min() >= 0 and adv.max() <= 1
    d = (adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert (size <= eps + 1e-5).all()


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5)])
@pytest.mark.parametrize("dims", [2, 3])
def test_pgd_and_fgsm_increase_loss_inside_the_ball(norm, eps, dims):
    model = small_cnn(dims=dims)
    x, y = batch(n=4, dims=dims)
    clean = F.cross_entropy(model(x), y)
    adv = pgd(model, x, y, eps=eps, alpha=eps / 4, steps=5, norm=norm)
    ball_ok(adv, x, eps, norm)
    assert F.cross_entropy(model(adv), y) > clean
    one = fgsm(model, x, y, eps=eps, norm=norm)
    ball_ok(one, x, eps, norm)
    assert F.cross_entropy(model(one), y) > clean


def test_fgsm_matches_torchattacks():
    model = small_cnn()
    x, y = batch()
    assert torch.equal(fgsm(model, x, y, eps=8 / 255), torchattacks.FGSM(model, eps=8 / 255)(x, y))


def nt_xent(model, a, b, t=0.5):
    from kernels.reference import info_nce_reference

    return info_nce_reference(model(a), model(b), t)[0]


def encoder(dims=2):
    model = small_cnn(classes=6, dims=dims)
    return model


@pytest.mark.parametrize("dims", [2, 3])
def test_contrastive_attacks_increase_their_loss(dims):
    model = encoder(dims)
    x, _ = batch(n=6, dims=dims, seed=2)
    x_other = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(9))).clamp(0, 1)
    clean = nt_xent(model, x, x_other)
    adv = instance_attack(model, x, x_other, temperature=0.5, generator=torch.Generator().manual_seed(0))
    ball_ok(adv, x, 8 / 255, "linf")
    assert nt_xent(model, adv, x_other) > clean
    adv_b = batch_attack(model, x, x_other, temperature=0.5)
    ball_ok(adv_b, x, 0.015, "linf")
    assert ((adv_b - x).abs() > 0.0149).float().mean() > 0.5  # one full FGSM step on most pixels
    assert nt_xent(model, adv_b, x_other) > clean
    same = batch_attack(model, x, temperature=0.5)  # x_other defaults to x
    assert nt_xent(model, same, x) > nt_xent(model, x, x)


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_feature_attack_moves_features_more_than_random_noise(norm, eps):
    model = encoder()
    x, _ = batch(n=6)
    with torch.no_grad():
        f = model(x)
    adv = feature_attack(model, x, eps=eps, alpha=eps / 4, steps=5, norm=norm,
                         generator=torch.Generator().manual_seed(0))
    ball_ok(adv, x, eps, norm)
    noise = torch.empty_like(x).uniform_(-1, 1, generator=torch.Generator().manual_seed(1))
    if norm == "linf":
        noise = noise.sign() * eps
    else:
        noise = noise / noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * eps
    with torch.no_grad():
        moved = (model(adv) - f).norm(dim=1)
        rand = (model((x + noise).clamp(0, 1)) - f).norm(dim=1)
    assert moved.mean() > rand.mean()


ATTACKS = {
    "pgd": lambda m, x, y, mode: pgd(m, x, y, eps=0.03, alpha=0.01, steps=2, mode=mode),
    "pgd_l2": lambda m, x, y, mode: pgd(m, x, y, eps=0.3, alpha=0.1, steps=2, norm="l2", mode=mode),
    "fgsm": lambda m, x, y, mode: fgsm(m, x, y, eps=0.03, mode=mode),
    "instance": lambda m, x, y, mode: instance_attack(m, x, x.flip(0), steps=2, temperature=0.5, mode=mode),
    "batch": lambda m, x, y, mode: batch_attack(m, x, temperature=0.5, mode=mode),
    "feature": lambda m, x, y, mode: feature_attack(m, x, eps=0.03, alpha=0.01, steps=2, mode=mode),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_attacks_leave_mode_buffers_and_requires_grad_alone(name, mode):
    model = small_cnn()
    model.train()
    model[6].eval()  # a mixed state must come back mixed, not flattened to train()
    model[0].weight.requires_grad_(False)
    x, y = batch()
    before = snapshot(model)
    ATTACKS[name](model, x, y, mode)
    assert_same_state(model, before)
    assert all(p.grad is None for p in model.parameters())


def test_attack_runs_inside_no_grad_and_state_restored_after_error():
    model = small_cnn()
    x, y = batch()
    with torch.no_grad():
        adv = pgd(model, x, y, eps=0.03, alpha=0.01, steps=2, random_start=False)
    assert not torch.equal(adv, x)
    model.train()
    before = snapshot(model)
    with pytest.raises(ValueError, match="labels"):
        pgd(model, x, y[:3], eps=0.03, alpha=0.01, steps=1)

    def bad_loss(out, yy):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        pgd(model, x, y, eps=0.03, alpha=0.01, steps=1, loss=bad_loss, mode="train")
    assert_same_state(model, before)


def test_bad_arguments_raise_clear_errors():
    model = small_cnn()
    x, y = batch()
    with pytest.raises(ValueError, match="norm"):
        pgd(model, x, y, eps=0.03, alpha=0.01, steps=1, norm="l1")
    with pytest.raises(ValueError, match="shape"):
        pgd(model, x[:, 0], y, eps=0.03, alpha=0.01, steps=1)
    with pytest.raises(ValueError, match="mode"):
        pgd(model, x, y, eps=0.03, alpha=0.01, steps=1, mode="test")
    with pytest.raises(ValueError, match="batch"):
        instance_attack(model, x, x[:2], temperature=0.5)


def test_every_attack_update_goes_through_the_fused_pgd_step(monkeypatch):
    """Issue 5: attacks update through ``kernels.pgd.pgd_step`` (a hand-written update would also match
    torchattacks, so count the calls)."""
    import kernels.pgd

    calls = []
    real = kernels.pgd.pgd_step

    def counting(*args, **kwargs):
        calls.append(kwargs.get("norm", "linf"))
        return real(*args, **kwargs)

    monkeypatch.setattr(kernels.pgd, "pgd_step", counting)
    model, (x, y) = small_cnn(), batch()
    for run, expected in (
        (lambda: pgd(model, x, y, eps=8 / 255, alpha=2 / 255, steps=3, norm="l2"), 3),
        (lambda: fgsm(model, x, y, eps=8 / 255), 1),
        (lambda: instance_attack(model, x, x, eps=8 / 255, alpha=2 / 255, steps=2, temperature=0.5), 2),
        (lambda: batch_attack(model, x, temperature=0.5), 1),
        (lambda: feature_attack(model, x, eps=8 / 255, alpha=2 / 255, steps=4), 4),
    ):
        calls.clear()
        run()
        assert len(calls) == expected
