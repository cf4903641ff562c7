"""supervised_at (Madry et al. 2018): the loss is the cross-entropy on PGD examples made by a hand
transcription of the attack, the model's state survives the attack, settings are checked, and a few
steps of training lower the adversarial loss on a toy batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vidcsl.config import config_from_dict, load_config
from vidcsl.errors import ConfigError
from vidcsl.methods.base import StepContext, build_method, method_class

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


class Tiny(nn.Module):
    """Linear + tanh encoder (no BatchNorm: the attack's eval mode changes nothing)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3 * 4 * 4, 8)
        self.feature_dim = 8
        self.is_video = False

    def forward(self, x):
        return torch.tanh(self.fc(x.flatten(1)))


def _method(**options):
    cfg = config_from_dict({"method": {"name": "supervised_at", "options": options},
                            "train": {"progress": False, "tensorboard": False}})
    return build_method(cfg, Tiny(), num_classes=3)


def _batch(n=6):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 4, 4, generator=g), torch.arange(n) % 3


def _pgd_by_hand(f, x, y, eps, alpha, steps, norm):
    """PGD without random start, written out: ascend the mean CE, project on the ball, clip to [0, 1]."""
    adv = x.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(f(adv), y)
        g = torch.autograd.grad(loss, adv)[0]
        with torch.no_grad():
            if norm == "linf":
                adv = adv + alpha * g.sign()
                adv = torch.max(torch.min(adv, x + eps), x - eps)
            else:
                gn = g.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-10
                adv = adv + alpha * g / gn
                d = adv - x
                dn = d.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
                adv = x + d * torch.clamp(eps / (dn + 1e-12), max=1.0)
            adv = adv.clamp(0, 1)
    return adv.detach()


@pytest.mark.parametrize("norm,eps,alpha", [("linf", 0.1, 0.04), ("l2", 0.5, 0.2)])
def test_loss_is_cross_entropy_on_hand_made_pgd_examples(norm, eps, alpha):
    m = _method(norm=norm, eps=eps, alpha=alpha, steps=4, random_start=False)
    x, y = _batch()
    f = lambda t: m.classifier(m.encoder(t))  # noqa: E731
    adv = _pgd_by_hand(f, x, y, eps, alpha, 4, norm)
    expected = F.cross_entropy(f(adv), y)
    clean = F.cross_entropy(f(x), y)
    loss, logs = m.training_step((x, y), StepContext())
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert loss > clean + 1e-3  # the attack did raise the loss: not a clean-loss look-alike
    assert logs["perturbation_l2"] > 0


def test_clean_weight_mixes_clean_and_adversarial_terms():
    x, y = _batch()
    adv_only = _method(eps=0.1, alpha=0.04, steps=2, random_start=False)
    mixed = _method(eps=0.1, alpha=0.04, steps=2, random_start=False, clean_weight=0.25)
    la, _ = adv_only.training_step((x, y), StepContext())
    lm, logs = mixed.training_step((x, y), StepContext())
    clean = F.cross_entropy(mixed.logits(x), y)
    torch.testing.assert_close(lm, 0.75 * la + 0.25 * clean, rtol=1e-5, atol=1e-6)
    assert "train_acc" in logs


def test_attack_leaves_the_model_as_it_was_and_training_lowers_the_adversarial_loss():
    m = _method(eps=0.1, alpha=0.04, steps=3, random_start=False).train()
    x, y = _batch(12)
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    first, _ = m.training_step((x, y), StepContext())
    assert m.training and all(p.requires_grad for p in m.parameters())
    for _ in range(20):
        loss, _ = m.training_step((x, y), StepContext())
        opt.zero_grad()
        loss.backward()
        opt.step()
    last, _ = m.training_step((x, y), StepContext())
    assert last < first - 0.05


def test_registry_settings_and_config():
    cls = method_class("supervised_at")
    assert cls.own_classifier and cls.data_mode == "supervised"
    with pytest.raises(ConfigError, match="method.options.epsilon"):
        _method(epsilon=0.1)
    with pytest.raises(ConfigError, match="method.options.norm"):
        _method(norm="l1")
    assert _method(eps="8/255").settings.eps == pytest.approx(8 / 255)
    cfg = load_config(CONFIGS / "digits_supervised_at.yaml")
    s = cls.read_settings(cfg)
    assert cfg.method.name == "supervised_at" and s.norm == "l2" and s.eps > 0 and s.steps >= 1


def test_evaluated_as_its_own_classifier_like_supervised(tmp_path):
    """The evaluation and the study treat supervised_at as an SL model: its own head, no probe settings."""
    from vidcsl.robustness.evaluate import eval_config_from_dict
    from vidcsl.robustness.protocols import build_protocols
    from vidcsl.robustness.study import own_classifier

    assert own_classifier("supervised_at") and own_classifier("supervised") and not own_classifier("simclr")
    m = _method()
    with pytest.raises(ConfigError, match="supervised run"):
        build_protocols(m, m.cfg, tmp_path / "last.pt", tmp_path, eval_config_from_dict({"probe": ["probe.epochs=2"]}),
                        False, torch.device("cpu"))
    protocols, _ = build_protocols(m, m.cfg, tmp_path / "last.pt", tmp_path, eval_config_from_dict({}), False,
                                   torch.device("cpu"))
    x, _ = _batch()
    torch.testing.assert_close(protocols["standard"].classifier(x), m.logits(x))
