"""BYOL, SimSiam, VICReg, Barlow Twins: losses against hand-written formulas, one step reduces the loss,
stop-gradients, the momentum network, and the configs that ship with them.

The formulas are written here with explicit Python loops over plain floats, independently of the
vectorised implementations they check.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from vidcsl.config import load_config
from vidcsl.methods.barlow import BarlowTwins, BarlowTwinsSettings, barlow_twins_loss
from vidcsl.methods.base import StepContext, build_method
from vidcsl.methods.byol import BYOL, byol_regression
from vidcsl.methods.moco import MoCo
from vidcsl.methods.momentum import ema_update, momentum_at
from vidcsl.methods.simsiam import SimSiam, negative_cosine
from vidcsl.methods.vicreg import VICReg, VICRegSettings, vicreg_loss
from vidcsl.models.registry import build_encoder

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
NEW = ("byol", "simsiam", "vicreg", "barlow")
Z1 = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 1.5], [2.0, 0.5, -0.5], [-1.0, 1.0, 0.0]])
Z2 = torch.tensor([[0.5, 1.0, 1.0], [0.5, -2.0, 0.5], [1.5, 1.0, 0.0], [-0.5, 0.0, -1.0]])


def rows(t):
    return [[float(v) for v in r] for r in t]


def cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def column_stats(z, unbiased):
    """Per-column mean, variance and the covariance matrix, by loops."""
    n, d = len(z), len(z[0])
    mean = [sum(r[j] for r in z) / n for j in range(d)]
    div = n - 1 if unbiased else n
    cov = [[sum((r[j] - mean[j]) * (r[k] - mean[k]) for r in z) / div for k in range(d)] for j in range(d)]
    return mean, [cov[j][j] for j in range(d)], cov


def vicreg_by_hand(z1, z2, lam=25.0, mu=25.0, nu=1.0, gamma=1.0, eps=1e-4):
    n, d = len(z1), len(z1[0])
    invariance = sum((a - b) ** 2 for r1, r2 in zip(z1, z2) for a, b in zip(r1, r2)) / (n * d)
    variance = covariance = 0.0
    for z in (z1, z2):
        _, var, cov = column_stats(z, unbiased=True)
        variance += sum(max(0.0, gamma - math.sqrt(v + eps)) for v in var) / d / 2
        covariance += sum(cov[j][k] ** 2 for j in range(d) for k in range(d) if j != k) / d
    return lam * invariance + mu * variance + nu * covariance


def barlow_by_hand(z1, z2, lam):
    n, d = len(z1), len(z1[0])
    standardised = []
    for z in (z1, z2):
        mean, var, _ = column_stats(z, unbiased=False)
        standardised.append([[(r[j] - mean[j]) / math.sqrt(var[j] + 1e-5) for j in range(d)] for r in z])
    a, b = standardised
    c = [[sum(a[i][j] * b[i][k] for i in range(n)) / n for k in range(d)] for j in range(d)]
    return sum((1 - c[j][j]) ** 2 for j in range(d)) + lam * sum(c[j][k] ** 2 for j in range(d) for k in range(d)
                                                                 if j != k)


def test_byol_regression_is_two_minus_two_cosine():
    want = sum(2 - 2 * cos(p, z) for p, z in zip(rows(Z1), rows(Z2))) / len(Z1)
    assert float(byol_regression(Z1, Z2)) == pytest.approx(want, rel=1e-6)
    # orthogonal -> 2, equal -> 0, opposite -> 4
    q = torch.tensor([[1.0, 0.0], [0.0, 3.0], [2.0, 0.0]])
    z = torch.tensor([[0.0, 5.0], [0.0, 1.0], [-1.0, 0.0]])
    assert float(byol_regression(q, z)) == pytest.approx((2 + 0 + 4) / 3)


def test_simsiam_d_is_negative_cosine_with_a_stop_gradient():
    want = -sum(cos(p, z) for p, z in zip(rows(Z1), rows(Z2))) / len(Z1)
    p, z = Z1.clone().requires_grad_(), Z2.clone().requires_grad_()
    loss = negative_cosine(p, z)
    assert float(loss.detach()) == pytest.approx(want, rel=1e-6)
    loss.backward()
    assert p.grad is not None and p.grad.abs().sum() > 0 and z.grad is None  # no gradient through the target


def test_vicreg_loss_matches_the_formula():
    loss, parts = vicreg_loss(Z1, Z2, VICRegSettings())
    assert float(loss) == pytest.approx(vicreg_by_hand(rows(Z1), rows(Z2)), rel=1e-5)
    custom = VICRegSettings(invariance_weight=2.0, variance_weight=3.0, covariance_weight=0.5, std_target=2.0)
    loss, _ = vicreg_loss(Z1, Z2, custom)
    assert float(loss) == pytest.approx(vicreg_by_hand(rows(Z1), rows(Z2), 2.0, 3.0, 0.5, 2.0), rel=1e-5)
    assert set(parts) == {"invariance", "variance", "covariance"}


@pytest.mark.parametrize("lam", [0.0051, 0.5])
def test_barlow_twins_loss_matches_the_formula(lam):
    loss, parts = barlow_twins_loss(Z1, Z2, lam)
    assert float(loss) == pytest.approx(barlow_by_hand(rows(Z1), rows(Z2), lam), rel=1e-5)
    assert float(parts["on_diagonal"]) == pytest.approx(barlow_by_hand(rows(Z1), rows(Z2), 0.0), rel=1e-5)


def test_barlow_twins_is_zero_for_identical_decorrelated_views():
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])  # standardised, uncorrelated
    loss, _ = barlow_twins_loss(z, z.clone(), 0.0051)
    assert float(loss) == pytest.approx(0.0, abs=1e-4)


def make(name, seed=0, **options):
    opts = [f"method.options.{k}={v}" for k, v in options.items()]
    cfg = load_config(None, [f"method.name={name}", "model.proj_hidden_dim=32", "model.proj_out_dim=16", *opts])
    torch.manual_seed(seed)
    return build_method(cfg, build_encoder("small_cnn", channels=(8, 16, 16, 32)), num_classes=3).train()


def toy_batch(n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 16, 16, generator=g)
    noise = lambda: 0.1 * torch.randn(x.shape, generator=g)  # noqa: E731
    return ((x + noise()).clamp(0, 1), (x + noise()).clamp(0, 1)), torch.arange(n) % 3


def test_method_losses_are_their_formula_on_the_models_outputs():
    (x1, x2), y = toy_batch()
    with torch.no_grad():
        byol = make("byol")
        loss, _ = byol.training_step(((x1, x2), y), StepContext())
        z1, z2 = byol.head(byol.encoder(x1)), byol.head(byol.encoder(x2))
        t1, t2 = byol.target_head(byol.target_encoder(x1)), byol.target_head(byol.target_encoder(x2))
        p1, p2 = byol.predictor(z1), byol.predictor(z2)
        want = sum(2 - 2 * cos(a, b) for a, b in zip(rows(p1), rows(t2)))
        want += sum(2 - 2 * cos(a, b) for a, b in zip(rows(p2), rows(t1)))
        assert float(loss) == pytest.approx(want / len(x1), rel=1e-5)

        simsiam = make("simsiam")
        loss, _ = simsiam.training_step(((x1, x2), y), StepContext())
        z1, z2 = simsiam.project(x1), simsiam.project(x2)
        p1, p2 = simsiam.predictor(z1), simsiam.predictor(z2)
        want = -0.5 * sum(cos(a, b) for a, b in zip(rows(p1), rows(z2))) / len(x1)
        want -= 0.5 * sum(cos(a, b) for a, b in zip(rows(p2), rows(z1))) / len(x1)
        assert float(loss) == pytest.approx(want, rel=1e-5)

        for name, by_hand in (("vicreg", vicreg_by_hand), ("barlow", lambda a, b: barlow_by_hand(a, b, 0.0051))):
            method = make(name)
            loss, logs = method.training_step(((x1, x2), y), StepContext())
            z1, z2 = method.project(x1), method.project(x2)  # one pass per view: BN statistics per view
            assert float(loss) == pytest.approx(by_hand(rows(z1), rows(z2)), rel=1e-4), name
            assert 0 < logs["embed_std"] <= 1


@pytest.mark.parametrize("name", NEW)
def test_one_step_reduces_the_loss_on_a_toy_batch(name):
    method = make(name)
    batch = toy_batch()
    opt = torch.optim.SGD(method.parameters_to_optimize(), lr=0.05)

    def loss_now():
        return method.training_step(batch, StepContext())[0]

    before = loss_now()
    opt.zero_grad()
    before.backward()
    opt.step()
    after = float(loss_now().detach())
    assert after < float(before.detach()) - 1e-4, (float(before), after)


@pytest.mark.parametrize("name", NEW)
def test_a_few_steps_keep_reducing_the_loss(name):
    method = make(name)
    batch = toy_batch()
    opt = torch.optim.Adam(method.parameters_to_optimize(), lr=3e-3)
    losses = []
    for step in range(6):
        loss, logs = method.training_step(batch, StepContext(global_step=step, total_steps=6))
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_optimizer_step()
        losses.append(float(loss.detach()))
    spread = max(losses) - min(losses)
    assert losses[-1] < losses[0] - 0.3 * spread, losses
    assert logs["embed_std"] > 0.05  # no collapse on the way


def test_stop_gradient_and_target_get_no_gradient():
    (x1, x2), y = toy_batch()
    byol = make("byol")
    byol.training_step(((x1, x2), y), StepContext())[0].backward()
    assert all(p.grad is None for p in byol.target_encoder.parameters())
    assert all(p.grad is None and not p.requires_grad for p in byol.target_head.parameters())
    assert all(p.grad is not None for p in byol.predictor.parameters())
    target_ids = {id(p) for p in byol.target_encoder.parameters()}
    assert not target_ids & {id(p) for p in byol.parameters_to_optimize()}


def test_byol_target_follows_by_ema_with_the_cosine_schedule():
    byol = make("byol")
    assert momentum_at(0.996, "cosine", 0, 100) == pytest.approx(0.996)
    assert momentum_at(0.996, "cosine", 50, 100) == pytest.approx(0.998)
    assert momentum_at(0.996, "cosine", 100, 100) == pytest.approx(1.0)
    assert momentum_at(0.99, "constant", 70, 100) == 0.99
    (x1, x2), y = toy_batch()
    _, logs = byol.training_step(((x1, x2), y), StepContext(global_step=25, total_steps=100))
    tau = 1 - (1 - 0.996) * (math.cos(math.pi * 0.25) + 1) / 2
    assert logs["momentum"] == pytest.approx(tau)
    with torch.no_grad():
        for p in byol.encoder.parameters():
            p.add_(1.0)
    before = [p.clone() for p in byol.target_encoder.parameters()]
    byol.after_optimizer_step()
    for b, online, target in zip(before, byol.encoder.parameters(), byol.target_encoder.parameters()):
        torch.testing.assert_close(target, tau * b + (1 - tau) * online)


def test_ema_update_formula():
    online, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = copy.deepcopy(target)
    ema_update(online, target, 0.75)
    for o, b, t in zip(online.parameters(), before.parameters(), target.parameters()):
        torch.testing.assert_close(t, 0.75 * b + 0.25 * o)


def test_predictor_widths_follow_the_papers_ratios():
    byol, simsiam = make("byol"), make("simsiam")  # proj_hidden_dim 32, proj_out_dim 16
    assert byol.predictor.net[0].out_features == 32  # BYOL: as wide as the projector's hidden layer
    assert simsiam.predictor.net[0].out_features == 4  # SimSiam: a 4x bottleneck of the output
    assert make("simsiam", predictor_hidden_dim=7).predictor.net[0].out_features == 7


@pytest.mark.parametrize("config, cls", [
    ("digits_byol", BYOL), ("digits_simsiam", SimSiam), ("digits_vicreg", VICReg), ("digits_barlow", BarlowTwins),
    ("video_byol", BYOL), ("video_simsiam", SimSiam), ("video_vicreg", VICReg), ("video_barlow", BarlowTwins),
    ("digits_moco", MoCo),
])
def test_configs_build_their_method_with_simclrs_recipe(config, cls):
    """Every paradigm trains on SimCLR's data, model, optimiser and schedule: only the objective differs."""
    cfg = load_config(CONFIGS / f"{config}.yaml")
    simclr = load_config(CONFIGS / ("digits_simclr.yaml" if config.startswith("digits") else "video_simclr.yaml"))
    assert (cfg.data, cfg.model, cfg.optim) == (simclr.data, simclr.model, simclr.optim)
    assert (cfg.train.epochs, cfg.train.batch_size) == (simclr.train.epochs, simclr.train.batch_size)
    method = build_method(cfg, build_encoder(cfg.model.encoder), num_classes=10)
    assert type(method) is cls and cls.data_mode == "contrastive" and cls.views == 2
    if cls is BarlowTwins:
        assert method.settings == BarlowTwinsSettings()  # the config spells out the defaults
