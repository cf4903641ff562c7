"""Representation metrics against hand-computed values on tiny inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from vidcsl.robustness.metrics import (
    alignment,
    class_distance_ratio,
    fn_precision_recall,
    linf_sphere_noise,
    sensitivity,
    uniformity,
)


def test_alignment_by_hand():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    assert alignment(z1, z2) == pytest.approx((2.0 + 0.0) / 2)  # ||(1,-1)||^2 = 2
    assert alignment(z1, z2, alpha=1) == pytest.approx(math.sqrt(2) / 2)


def test_uniformity_by_hand_and_chunking():
    # three points: pairwise squared distances 2, 2, 4 (unit vectors e1, e2, -e1)
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    expected = math.log((2 * math.exp(-4) + math.exp(-8)) / 3)
    assert uniformity(z) == pytest.approx(expected, rel=1e-6)
    big = torch.nn.functional.normalize(torch.randn(37, 5, generator=torch.Generator().manual_seed(0)), dim=1)
    ref = torch.pdist(big).pow(2).mul(-2).exp().mean().log().item()  # Wang & Isola's formula
    for chunk in (1, 4, 10, 1024):
        assert uniformity(big, chunk_size=chunk) == pytest.approx(ref, rel=1e-5)


def test_class_distance_ratio_by_hand():
    # class 0 at x=0 and x=1, class 1 at x=10: intra = 1; inter = mean(10, 9) = 9.5
    z = torch.tensor([[0.0], [1.0], [10.0]])
    labels = torch.tensor([0, 0, 1])
    assert class_distance_ratio(z, labels) == pytest.approx(9.5)
    assert class_distance_ratio(z, labels, chunk_size=1) == pytest.approx(9.5)
    with pytest.raises(ValueError, match="same-class"):
        class_distance_ratio(z, torch.tensor([0, 1, 2]))


def test_linf_sphere_noise_lies_on_the_sphere():
    d = linf_sphere_noise((64, 3, 4, 4), 0.1, torch.Generator().manual_seed(0))
    torch.testing.assert_close(d.flatten(1).abs().amax(1), torch.full((64,), 0.1))
    assert d.abs().mean() < 0.1 * 0.6  # not the cube's corners: interior coordinates are uniform


def test_sensitivity_of_a_linear_encoder_by_hand():
    """f(x) = x * 2 (identity map scaled): ||f(x+d) - f(x)|| = 2||d||, ||f(x)|| = 2||x||."""
    enc = nn.Sequential(nn.Flatten(), nn.Linear(4, 4, bias=False))
    with torch.no_grad():
        enc[1].weight.copy_(2 * torch.eye(4))
    x = torch.full((3, 1, 2, 2), 0.5)
    eps = 0.1
    value = sensitivity(enc, x, eps=eps, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    d = linf_sphere_noise(x.shape, eps, g)
    expected = d.flatten(1).norm(dim=1).mean() / x.flatten(1).norm(dim=1).mean()
    assert value == pytest.approx(expected.item(), rel=1e-5)
    # adversarial: the best L-inf move of a linear map is every pixel by eps: ratio = eps / 0.5
    adv = sensitivity(enc, x, eps=eps, kind="adversarial", steps=5, generator=torch.Generator().manual_seed(1))
    assert adv == pytest.approx(eps / 0.5, rel=1e-4)
    assert adv > value


def test_fn_precision_recall_by_hand():
    r = fn_precision_recall(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 2.0]), torch.tensor([3.0, 3.0]))
    assert r["precision"] == pytest.approx(0.75) and r["recall"] == pytest.approx(0.5)
    assert r["f1"] == pytest.approx(2 * 0.75 * 0.5 / 1.25)
    assert math.isnan(fn_precision_recall(0, 0, 5)["precision"])
    with pytest.raises(ValueError, match="inconsistent"):
        fn_precision_recall(3, 2, 5)
