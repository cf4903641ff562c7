"""CLAE's op sequence, pinned against a transcription of the authors' algorithm (Ho & Vasconcelos 2020).

The transcription below follows ``gen_adv`` and ``train`` of the authors' code step by step with plain
PyTorch (its own NT-Xent, its own FGSM step) on a copy of the model; the method must give the same
adversarial batch and the same loss. It shares nothing with ``vidcsl.attacks`` or the fused kernels.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from vidcsl.config import load_config
from vidcsl.methods.base import StepContext, build_method
from vidcsl.models.dual_bn import DualBatchNorm, use_adversarial_bn
from vidcsl.models.registry import build_encoder

TAU = 0.5


def nt_xent(a: torch.Tensor, b: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    """SimCLR's NT-Xent, written out: 2N-way cross-entropy of cosine similarities, self excluded."""
    z = F.normalize(torch.cat([a, b]), dim=1)
    n = a.shape[0]
    sim = z @ z.T / tau
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(sim, positives)


def clae_transcription(model, x_i, x_j, eps, alpha, anchor_branch="adversarial", start="x_i"):
    """CLAE's training step as the authors compute it (clipped to [0, 1], as documented)."""
    g = lambda x: model.head(model.encoder(x))  # noqa: E731
    x0 = x_i if start == "x_i" else x_j
    with use_adversarial_bn(model, enabled=anchor_branch == "adversarial"):
        z_anchor = g(x_i).detach()  # the attack's anchor z_i
    x = x0.clone().requires_grad_(True)
    with use_adversarial_bn(model):
        attack_loss = nt_xent(z_anchor, g(x))  # NT-Xent(z_i, g_adv(x)) at x = x0
    grad, = torch.autograd.grad(attack_loss, x)
    x_adv = (x0 + eps * grad.sign()).clamp(0, 1)  # one FGSM step from x0
    z_i, z_j = g(torch.cat([x_i, x_j])).chunk(2)  # clean BN
    with use_adversarial_bn(model):
        z_adv = g(x_adv)
    return x_adv, nt_xent(z_i, z_j) + alpha * nt_xent(z_i, z_adv)


def make_clae(**options):
    opts = [f"method.options.{k}={v}" for k, v in options.items()]
    cfg = load_config(None, ["method.name=clae", f"method.temperature={TAU}", "method.loss_backend=torch",
                             "model.proj_hidden_dim=32", "model.proj_out_dim=16", *opts])
    torch.manual_seed(0)
    method = build_method(cfg, build_encoder("small_cnn", channels=(8, 16, 16, 32)), num_classes=3).train()
    g = torch.Generator().manual_seed(2)  # give the auxiliary BNs their own parameters (else branches agree)
    with torch.no_grad():
        for layer in method.modules():
            if isinstance(layer, DualBatchNorm):
                layer.adversarial.weight.mul_(1 + torch.rand(layer.adversarial.weight.shape, generator=g))
                layer.adversarial.bias.add_(0.1 * torch.randn(layer.adversarial.bias.shape, generator=g))
    return method


def views(n=8):
    g = torch.Generator().manual_seed(1)
    x_i, x_j = torch.rand(n, 3, 16, 16, generator=g), torch.rand(n, 3, 16, 16, generator=g)
    x_i[:, :, :2] = 0.0  # pixels on the box edge: the clip to [0, 1] acts
    return x_i, x_j


@pytest.mark.parametrize("options, anchor, start", [
    ({}, "adversarial", "x_i"),  # the default: the published algorithm
    ({"variant": "view_j"}, "clean", "x_j"),  # the documented variant
    ({"eps": 0.03, "adv_weight": 0.5}, "adversarial", "x_i"),
])
def test_clae_step_equals_the_transcription(options, anchor, start):
    method = make_clae(**options)
    x_i, x_j = views()
    twin = copy.deepcopy(method)
    want_adv, want_loss = clae_transcription(twin, x_i, x_j, method.settings.eps, method.settings.adv_weight,
                                             anchor, start)
    x_adv = method.make_adversarial(x_i, x_j, None, StepContext())
    torch.testing.assert_close(x_adv, want_adv.detach(), rtol=0, atol=1e-6)
    loss, logs = method.training_step(((x_i, x_j), None), StepContext())
    torch.testing.assert_close(loss.detach(), want_loss.detach(), rtol=1e-6, atol=1e-6)
    assert logs["adv_linf"] == pytest.approx(method.settings.eps, abs=1e-6)


def test_the_transcription_tells_the_branches_and_starts_apart():
    """The pin can fail: anchoring through the other BN, or starting from the other view, changes x_adv."""
    method = make_clae()
    x_i, x_j = views()
    published, _ = clae_transcription(copy.deepcopy(method), x_i, x_j, 0.015, 1.0)
    clean_anchor, _ = clae_transcription(copy.deepcopy(method), x_i, x_j, 0.015, 1.0, anchor_branch="clean")
    from_j, _ = clae_transcription(copy.deepcopy(method), x_i, x_j, 0.015, 1.0, start="x_j")
    assert (published - clean_anchor).abs().max() > 1e-3
    assert (published - from_j).abs().max() > 1e-3


def test_auxiliary_bns_use_the_authors_momentum():
    method = make_clae()
    layers = [m for m in method.modules() if isinstance(m, DualBatchNorm)]
    assert layers and all(m.adversarial.momentum == 0.01 and m.clean.momentum == 0.1 for m in layers)
    assert all(m.adversarial.momentum == 0.2 for m in make_clae(adv_bn_momentum=0.2).modules()
               if isinstance(m, DualBatchNorm))
