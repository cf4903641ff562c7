"""AutoAttack wrapper: a tiny run that must be at least as strong as PGD, inside the ball, state restored."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from vidcsl.attacks.autoattack import autoattack, autoattack_accuracy
from vidcsl.attacks.pgd import pgd


def tiny_classifier():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 4))


@pytest.mark.timeout(120)
def test_autoattack_is_inside_the_ball_and_not_weaker_than_pgd():
    model = tiny_classifier().train()
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.eval()
        y = model(x).argmax(1)  # every sample starts correctly classified
        model.train()
    flags = [m.training for m in model.modules()]
    buffers = [b.clone() for b in model.buffers()]
    eps = 0.5  # large enough for APGD-CE to break every sample: Square (5000 queries) would take a minute
    adv = autoattack(model, x, y, eps=eps)  # n_classes: the model's 4 logits
    assert (adv - x).abs().max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), buffers))
    aa = autoattack_accuracy(model, x, y, eps=eps, n_classes=4, batch_size=4)
    with torch.no_grad():
        model.eval()
        pgd_acc = (model(pgd(model, x, y, eps=eps, alpha=eps / 4, steps=10)).argmax(1) == y).float().mean()
    assert aa <= pgd_acc.item() + 1e-9


def test_autoattack_rejects_bad_arguments():
    model = tiny_classifier().eval()
    x, y = torch.rand(2, 3, 8, 8), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="norm"):
        autoattack(model, x, y, eps=0.1, norm="l1", n_classes=4)
    with pytest.raises(ValueError, match="version"):
        autoattack(model, x, y, eps=0.1, n_classes=4, version="fast")
    with pytest.raises(ValueError, match="images"):
        autoattack(model, x[:, 0], y, eps=0.1)
    with pytest.raises(ValueError, match=">= 4 classes"):
        autoattack(model, x, y, eps=0.1, n_classes=3)
    with pytest.raises(ValueError, match="clip sets"):
        autoattack(model, x[:, None, :, None], y, eps=0.1, norm="l2")
