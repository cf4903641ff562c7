"""Encoders (shapes, in-model normalisation), heads, and dual BatchNorm."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from vidcsl.models.dual_bn import DualBatchNorm, convert_to_dual_bn, use_adversarial_bn
from vidcsl.models.heads import LinearClassifier, ProjectionHead
from vidcsl.models.registry import ENCODERS, build_encoder

torch.set_num_threads(1)


def _input(enc, batch=2):
    g = torch.Generator().manual_seed(0)
    shape = (batch, 3, 4, 32, 32) if enc.is_video else (batch, 3, 32, 32)
    return torch.rand(shape, generator=g)


@pytest.mark.parametrize("name", ENCODERS)
def test_every_encoder_gives_pooled_features(name):
    torch.manual_seed(0)
    enc = build_encoder(name)
    x = _input(enc)
    out = enc.eval()(x)
    assert out.shape == (2, enc.feature_dim) and torch.isfinite(out).all()
    assert enc.is_video == (name in {"r3d_18", "r2plus1d_18", "mc3_18", "x3d_xs", "x3d_s", "slow_r50", "small_cnn3d"})
    # features depend on the individual sample (pooling over the batch would be a bug)
    assert not torch.allclose(out[0], out[1])
    assert torch.allclose(enc(x[:1]), out[:1], atol=1e-5)


def test_unknown_name_and_wrong_input():
    with pytest.raises(ValueError, match="resnet18_cifar"):
        build_encoder("resnet1000")
    with pytest.raises(ValueError, match="nonsense"):
        build_encoder("small_cnn", nonsense=3)
    enc = build_encoder("small_cnn")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        enc(torch.rand(2, 3, 4, 32, 32))
    with pytest.raises(ValueError, match="T, H, W"):
        build_encoder("small_cnn3d")(torch.rand(2, 3, 32, 32))


@pytest.mark.parametrize("name", ["small_cnn", "small_cnn3d"])
def test_normalisation_lives_inside_the_model(name):
    torch.manual_seed(0)
    enc = build_encoder(name, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.2)).eval()
    x = _input(enc)
    shape = (1, 3) + (1,) * (x.ndim - 2)
    by_hand = enc.backbone((x - torch.tensor([0.1, 0.2, 0.3]).view(shape)) / torch.tensor([0.5, 0.25, 0.2]).view(shape))
    torch.testing.assert_close(enc(x), by_hand)
    assert {"mean", "std"} <= set(enc.state_dict())
    before = enc(x)
    enc.mean.fill_(0.9)
    assert not torch.allclose(enc(x), before)
    # gradients reach the pixels (attacks need them)
    x.requires_grad_(True)
    enc(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_cifar_resnet_stem_keeps_resolution():
    enc = build_encoder("resnet18_cifar", width=8)
    stem_out = enc.backbone.stem(torch.rand(1, 3, 32, 32))
    assert stem_out.shape[-2:] == (32, 32) and enc.feature_dim == 64
    assert not any(isinstance(m, nn.MaxPool2d) for m in enc.modules())


def test_small_cnn_is_small():
    n = sum(p.numel() for p in build_encoder("small_cnn").parameters())
    assert 50_000 < n < 200_000


def test_projection_head_shapes_and_depth():
    head = ProjectionHead(16, hidden_dim=32, out_dim=8, num_layers=3)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 32), (32, 32), (32, 8)]
    assert sum(isinstance(m, nn.BatchNorm1d) for m in head.modules()) == 2
    assert head(torch.rand(4, 16)).shape == (4, 8)
    plain = ProjectionHead(16, hidden_dim=32, out_dim=8, batch_norm=False)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in plain.modules())
    assert all(m.bias is not None for m in plain.modules() if isinstance(m, nn.Linear))
    single = ProjectionHead(16, out_dim=8, num_layers=1)
    assert [type(m) for m in single.net] == [nn.Linear]
    with pytest.raises(ValueError, match="num_layers"):
        ProjectionHead(16, num_layers=0)
    clf = LinearClassifier(16, 10)
    x = torch.rand(3, 16)
    torch.testing.assert_close(clf(x), x @ clf.fc.weight.T + clf.fc.bias)


def _bn_stats(model):
    return {n: b.clone() for n, b in model.named_buffers() if "running_mean" in n}


def test_dual_bn_keeps_separate_running_stats():
    torch.manual_seed(0)
    model = convert_to_dual_bn(build_encoder("small_cnn"))
    first = model.backbone.features[1]
    assert isinstance(first, DualBatchNorm)
    model.train()
    x_clean, x_adv = torch.rand(8, 3, 32, 32), torch.rand(8, 3, 32, 32) * 0.2 + 0.8
    before = _bn_stats(model)
    model(x_clean)
    after_clean = _bn_stats(model)
    for n in before:
        changed = not torch.equal(before[n], after_clean[n])
        assert changed == (".clean." in n), n
    # the clean stats equal the hand-computed momentum update of the first BN's input
    with torch.no_grad():
        conv_out = model.backbone.features[0]((x_clean - model.mean.view(1, 3, 1, 1)) / model.std.view(1, 3, 1, 1))
    torch.testing.assert_close(first.clean.running_mean, 0.1 * conv_out.mean((0, 2, 3)), atol=1e-5, rtol=1e-4)
    with use_adversarial_bn(model):
        model(x_adv)
    after_adv = _bn_stats(model)
    for n in before:
        changed = not torch.equal(after_clean[n], after_adv[n])
        assert changed == (".adversarial." in n), n


@pytest.mark.parametrize("builder", [
    lambda: build_encoder("small_cnn"),
    lambda: build_encoder("small_cnn3d"),
    lambda: ProjectionHead(12, hidden_dim=16, out_dim=4),
])
def test_conversion_preserves_eval_outputs(builder):
    torch.manual_seed(0)
    model = builder()
    model.train()
    x = torch.rand(4, 12) if isinstance(model, ProjectionHead) else _input(model, 4)
    model(x)  # give the BNs non-trivial running stats
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
    reference = copy.deepcopy(model).eval()
    dual = convert_to_dual_bn(model).eval()
    n_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in reference.modules())
    assert sum(isinstance(m, DualBatchNorm) for m in dual.modules()) == n_bn
    torch.testing.assert_close(dual(x), reference(x))
    with use_adversarial_bn(dual):
        torch.testing.assert_close(dual(x), reference(x))  # both branches start as copies
    convert_to_dual_bn(dual)  # idempotent: no wrapping twice
    assert sum(isinstance(m, DualBatchNorm) for m in dual.modules()) == n_bn


def test_context_manager_restores_state_even_on_error():
    model = convert_to_dual_bn(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.BatchNorm1d(4)))
    layers = [m for m in model.modules() if isinstance(m, DualBatchNorm)]
    layers[1].adversarial_mode = True  # a mixed prior state must come back exactly
    with use_adversarial_bn(model):
        assert all(m.adversarial_mode for m in layers)
        with use_adversarial_bn(model, enabled=False):
            assert not any(m.adversarial_mode for m in layers)
        assert all(m.adversarial_mode for m in layers)
    assert [m.adversarial_mode for m in layers] == [False, True]
    with pytest.raises(RuntimeError, match="inside"):
        with use_adversarial_bn(model):
            raise RuntimeError("inside")
    assert [m.adversarial_mode for m in layers] == [False, True]
    assert isinstance(convert_to_dual_bn(nn.BatchNorm2d(3)), DualBatchNorm)
    with pytest.raises(ValueError, match="BatchNorm"):
        DualBatchNorm(nn.Linear(2, 2))
