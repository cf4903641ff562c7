"""CLAE, RoCL-style and ACL-style training steps: loss, gradients, attacks, dual BN, false negatives, configs.

Everything runs on CPU with a tiny small_cnn on 16x16 images and batch 8; each loss is checked against
the materialised reference NT-Xent (``kernels.reference``) on the same adversarial inputs.
"""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import pytest
import torch

from kernels.info_nce import info_nce
from kernels.reference import info_nce_reference
from vidcsl.attacks.pgd import frozen_for_attack
from vidcsl.config import load_config
from vidcsl.methods.acl import ACL
from vidcsl.methods.base import StepContext, build_method
from vidcsl.methods.clae import CLAE
from vidcsl.methods.rocl import RoCL
from vidcsl.models.dual_bn import DualBatchNorm, use_adversarial_bn
from vidcsl.models.registry import build_encoder

METHODS = ("clae", "rocl", "acl")
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TAU = 0.2


def make_method(name: str, options: dict | None = None, overrides: tuple[str, ...] = (), seed: int = 0):
    opts = [f"method.options.{k}={v}" for k, v in (options or {}).items()]
    cfg = load_config(None, [f"method.name={name}", f"method.temperature={TAU}", "method.loss_backend=torch",
                             "model.proj_hidden_dim=32", "model.proj_out_dim=16", *opts, *overrides])
    torch.manual_seed(seed)
    method = build_method(cfg, build_encoder("small_cnn", channels=(8, 16, 16, 32)), num_classes=3)
    return method.train()


def distinguish_branches(method) -> None:
    """Give the auxiliary BNs their own affine parameters (at init they copy the clean ones, which would
    hide a pass through the wrong branch)."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for layer in method.modules():
            if isinstance(layer, DualBatchNorm):
                layer.adversarial.weight.mul_(1 + torch.rand(layer.adversarial.weight.shape, generator=g))
                layer.adversarial.bias.add_(0.1 * torch.randn(layer.adversarial.bias.shape, generator=g))


def make_batch(n: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x1, x2 = torch.rand(n, 3, 16, 16, generator=g), torch.rand(n, 3, 16, 16, generator=g)
    x1[:, :, :2], x2[:, :, -2:] = 0.0, 1.0  # pixels on the box edges: the [0, 1] clip must act
    y = torch.tensor([0, 0, 1, 1, 1, 2, 2, 0][:n])
    return x1, x2, y


def ref(a, b, fn_labels=None):
    return info_nce_reference(a, b, TAU, labels=fn_labels)[0]


def adversarial_pairs(method, x1, x2, y):
    """The adversarial inputs of ``method`` as ``[(clean, adversarial), ...]``, plus their budget."""
    adv = method.make_adversarial(x1, x2, y, StepContext())
    if isinstance(method, (CLAE, RoCL)):  # both perturb view i (published CLAE; RoCL)
        return [(x1, adv)]
    return [(x1, adv[0]), (x2, adv[1])]


def expected_loss(method, x1, x2, y, adv, fn_labels=None):
    """The documented (total, clean-term) loss of each method, rebuilt with the reference NT-Xent."""
    z1, z2 = method.project(torch.cat([x1, x2])).chunk(2)
    if isinstance(method, CLAE):
        with use_adversarial_bn(method):
            z_adv = method.project(adv)
        clean = ref(z1, z2, fn_labels)
        return clean + ref(z1, z_adv, fn_labels), clean
    if isinstance(method, RoCL):  # default: one shared BN pass over all three
        z1, z2, z_adv = method.project(torch.cat([x1, x2, adv])).chunk(3)
        clean = ref(z1, z2, fn_labels)
        return clean + ref(z1, z_adv, fn_labels) + ref(z_adv, z2, fn_labels), clean
    with use_adversarial_bn(method):
        za1, za2 = method.project(torch.cat(adv)).chunk(2)
    clean = ref(z1, z2, fn_labels)
    return 0.5 * (clean + ref(za1, za2, fn_labels)), clean


@pytest.mark.parametrize("name", METHODS)
def test_step_gives_finite_loss_with_gradients_everywhere(name):
    method = make_method(name)
    x1, x2, y = make_batch()
    loss, logs = method.training_step(((x1, x2), y), StepContext())
    assert loss.dim() == 0 and math.isfinite(loss.detach().item())
    loss.backward()
    for pname, p in method.encoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient on encoder parameter {pname}"
    duals = [m for m in method.modules() if isinstance(m, DualBatchNorm)]
    assert bool(duals) == (name != "rocl")  # CLAE / ACL default to dual BN, RoCL shares one BN
    for layer in duals:  # both branches are trained
        assert layer.clean.weight.grad.abs().sum() > 0 and layer.adversarial.weight.grad.abs().sum() > 0
    assert logs["loss_adv"] > 0 and logs["adv_linf"] > 0


@pytest.mark.parametrize("name", METHODS)
def test_loss_is_the_documented_combination(name):
    method = make_method(name)
    distinguish_branches(method)
    x1, x2, y = make_batch()
    torch.manual_seed(5)  # the same random start in both calls
    adv = method.make_adversarial(x1, x2, y, StepContext())
    torch.manual_seed(5)
    loss, logs = method.training_step(((x1, x2), y), StepContext())
    with torch.no_grad():
        want, want_clean = expected_loss(method, x1, x2, y, adv)
    torch.testing.assert_close(loss.detach(), want, rtol=1e-5, atol=1e-5)
    assert logs["loss_clean"] == pytest.approx(float(want_clean), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("name", METHODS)
def test_adversarial_inputs_stay_in_budget_and_raise_the_attacked_loss(name):
    method = make_method(name)
    x1, x2, y = make_batch()
    eps = method.settings.eps
    before = [b.clone() for b in method.buffers()]
    pairs = adversarial_pairs(method, x1, x2, y)
    assert all(torch.equal(a, b) for a, b in zip(before, method.buffers())), "the attack changed BN buffers"
    for clean, adv in pairs:
        assert adv.shape == clean.shape and not adv.requires_grad
        assert float((adv - clean).abs().max()) <= eps + 1e-6
        assert float((adv - clean).abs().max()) >= eps - 1e-6  # sign steps reach the budget somewhere
        assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    # The attacked objective, evaluated independently through the adversarial branch, went up.
    proj = torch.nn.Sequential(method.encoder, method.head)
    with torch.no_grad(), use_adversarial_bn(method, enabled=method.settings.dual_bn):
        if name == "clae":  # view i against itself, all through the adversarial branch
            clean_obj, adv_obj = (info_nce(proj(v), proj(x1), TAU) for v in (x1, pairs[0][1]))
        elif name == "rocl":  # view i against view j
            clean_obj, adv_obj = (info_nce(proj(v), proj(x2), TAU) for v in (x1, pairs[0][1]))
        else:  # both views together
            clean_obj = info_nce(*proj(torch.cat([x1, x2])).chunk(2), TAU)
            adv_obj = info_nce(*proj(torch.cat([pairs[0][1], pairs[1][1]])).chunk(2), TAU)
    assert float(adv_obj) > float(clean_obj) + 1e-3


@pytest.mark.parametrize("name, options", [("clae", {}), ("acl", {}), ("rocl", {"dual_bn": True})])
def test_clean_bn_statistics_match_a_clean_only_step(name, options):
    method = make_method(name, options)
    x1, x2, y = make_batch()
    twin = copy.deepcopy(method)
    method.training_step(((x1, x2), y), StepContext())
    with torch.no_grad():
        twin.project(torch.cat([x1, x2]))  # what a clean-only (SimCLR) step does to the statistics
    layers = [(a, b) for a, b in zip(method.modules(), twin.modules()) if isinstance(a, DualBatchNorm)]
    assert layers
    for ours, clean_only in layers:
        for stat in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(ours.clean, stat), getattr(clean_only.clean, stat))
        assert int(ours.adversarial.num_batches_tracked) == 1  # one adversarial training pass; attack restored
        assert not torch.allclose(ours.adversarial.running_mean, clean_only.adversarial.running_mean)
        assert not torch.allclose(ours.adversarial.running_mean, ours.clean.running_mean)


def test_rocl_shared_bn_sees_one_pass_over_all_three_inputs():
    method = make_method("rocl")
    x1, x2, y = make_batch()
    twin = copy.deepcopy(method)
    torch.manual_seed(3)
    adv = method.make_adversarial(x1, x2, y, StepContext())
    torch.manual_seed(3)
    method.training_step(((x1, x2), y), StepContext())
    with torch.no_grad():
        twin.project(torch.cat([x1, x2, adv]))
    bns = [(a, b) for a, b in zip(method.modules(), twin.modules()) if isinstance(a, torch.nn.BatchNorm2d)]
    for ours, single_pass in bns:
        torch.testing.assert_close(ours.running_mean, single_pass.running_mean)
        assert int(ours.num_batches_tracked) == 1


def test_attack_follows_the_mode_the_trainer_set():
    method = make_method("clae")  # FGSM without random start: deterministic
    x1, x2, y = make_batch()
    auto_train = method.make_adversarial(x1, x2, y, StepContext())
    method.eval()
    auto_eval = method.make_adversarial(x1, x2, y, StepContext())
    method.settings.attack_mode = "train"
    forced_train = method.make_adversarial(x1, x2, y, StepContext())
    assert not method.training
    assert torch.equal(auto_train, forced_train)
    assert not torch.equal(auto_train, auto_eval)  # running vs batch statistics give another attack
    before = [b.clone() for b in method.buffers()]
    method.settings.attack_mode = "auto"
    method.training_step(((x1, x2), y), StepContext())
    assert all(torch.equal(a, b) for a, b in zip(before, method.buffers()))  # eval: nothing updated


@pytest.mark.parametrize("name", METHODS)
def test_oracle_false_negatives_are_removed_and_reported(name):
    x1, x2, y = make_batch()
    plain = make_method(name)
    with_fn = make_method(name, overrides=("fn.detector=oracle",))
    distinguish_branches(with_fn)
    _, plain_logs = plain.training_step(((x1, x2), y), StepContext())
    torch.manual_seed(7)
    adv = with_fn.make_adversarial(x1, x2, y, StepContext())
    torch.manual_seed(7)
    loss, logs = with_fn.training_step(((x1, x2), y), StepContext())
    counts = torch.bincount(y)[y].float()
    same_class_negatives = float((2 * counts - 2).mean())  # per anchor of the 2N-way loss, by hand
    for prefix in ("", "adv_"):
        assert logs[f"{prefix}fn_precision"] == 1.0 and logs[f"{prefix}fn_recall"] == 1.0
        assert logs[f"{prefix}fn_found_per_row"] == pytest.approx(same_class_negatives)
    assert plain_logs["fn_found_per_row"] == 0
    assert logs["loss_clean"] < plain_logs["loss_clean"]  # same weights and views, smaller denominators
    with torch.no_grad():
        want, _ = expected_loss(with_fn, x1, x2, y, adv, fn_labels=y)
    torch.testing.assert_close(loss.detach(), want, rtol=1e-5, atol=1e-5)


def test_attack_maximises_the_fn_aware_loss_unless_told_not_to():
    x1, x2, y = make_batch()
    fn_attack = make_method("clae", overrides=("fn.detector=oracle",))
    plain_attack = make_method("clae", {"attack_fn": False}, overrides=("fn.detector=oracle",))
    no_fn = make_method("clae")
    a = fn_attack.make_adversarial(x1, x2, y, StepContext())
    b = plain_attack.make_adversarial(x1, x2, y, StepContext())
    c = no_fn.make_adversarial(x1, x2, y, StepContext())
    assert torch.equal(b, c) and not torch.equal(a, b)


def test_fn_warmup_keeps_the_plain_loss():
    x1, x2, y = make_batch()
    method = make_method("acl", overrides=("fn.detector=oracle", "fn.warmup_epochs=2"))
    _, early = method.training_step(((x1, x2), y), StepContext(epoch=1))
    _, late = method.training_step(((x1, x2), y), StepContext(epoch=2))
    assert early["fn_found_per_row"] == 0 and late["fn_found_per_row"] > 0


@pytest.mark.parametrize("name", METHODS)
def test_a_few_optimiser_steps_reduce_the_loss_on_a_fixed_batch(name):
    method = make_method(name, {"steps": 2} if name != "clae" else {})
    x1, x2, y = make_batch()
    opt = torch.optim.Adam(method.parameters_to_optimize(), lr=3e-3)

    def loss_now():
        torch.manual_seed(11)  # the same random start every time
        return method.training_step(((x1, x2), y), StepContext())[0]

    first = loss_now().detach().item()
    for _ in range(8):
        opt.zero_grad()
        loss_now().backward()
        opt.step()
    assert loss_now().detach().item() < 0.9 * first


def test_options_are_checked_and_fractions_parsed():
    method = make_method("rocl", {"eps": "4/255", "steps": 3})
    assert method.settings.eps == pytest.approx(4 / 255) and method.settings.steps == 3
    with pytest.raises(ValueError, match=r"method\.options\.epsilon"):
        make_method("clae", {"epsilon": 0.1})
    with pytest.raises(ValueError, match=r"method\.options\.steps"):
        make_method("acl", {"steps": 0})
    with pytest.raises(ValueError, match=r"method\.options\.eps"):
        make_method("clae", {"eps": "a lot"})
    with pytest.raises(ValueError, match=r"method\.options\.norm"):
        make_method("clae", {"norm": "l1"})


def test_works_on_clips():
    cfg = load_config(None, ["method.name=acl", "model.proj_hidden_dim=16", "model.proj_out_dim=8",
                             "method.options.steps=1"])
    torch.manual_seed(0)
    method = build_method(cfg, build_encoder("small_cnn3d", channels=(4, 8, 8, 8)), num_classes=2).train()
    clips = torch.rand(2, 4, 3, 4, 16, 16).unbind(0)
    loss, logs = method.training_step(((clips[0], clips[1]), torch.arange(4)), StepContext())
    assert math.isfinite(loss.detach().item()) and 0 < logs["adv_linf"] <= 8 / 255 + 1e-6


@pytest.mark.parametrize("config, cls, fn_detector", [
    ("digits_clae.yaml", CLAE, "none"), ("digits_clae_fn.yaml", CLAE, "topk"),
    ("digits_rocl.yaml", RoCL, "none"), ("digits_acl.yaml", ACL, "none"),
])
def test_configs_build_their_method(config, cls, fn_detector):
    cfg = load_config(CONFIGS / config)
    assert cfg.data.kind == "embedded_digits" and cfg.model.encoder == "small_cnn"
    method = build_method(cfg, build_encoder(cfg.model.encoder), num_classes=10)
    assert type(method) is cls and cfg.fn.detector == fn_detector
    want_eps = {CLAE: 0.015, RoCL: 8 / 255, ACL: 8 / 255}[cls]
    assert method.settings.eps == pytest.approx(want_eps)


@pytest.mark.parametrize("name, options, attack, anchor, branch", [
    ("clae", {}, "batch_attack", "x1", "adversarial"),  # published CLAE: z_i through the adversarial BN
    ("clae", {"variant": "view_j"}, "batch_attack", "x1", "clean"),
    ("rocl", {"dual_bn": True}, "instance_attack", "x2", "clean"),
])
def test_attack_target_is_the_documented_anchor(name, options, attack, anchor, branch, monkeypatch):
    """The attack's fixed anchor: the view and BN branch each method's docstring names."""
    import vidcsl.attacks.contrastive as contrastive

    method = make_method(name, {"dual_bn": True, **options})
    distinguish_branches(method)
    x1, x2, y = make_batch()
    seen = {}
    real = getattr(contrastive, attack)

    def spy(*args, **kwargs):
        seen["target"] = kwargs["target"]
        return real(*args, **kwargs)

    monkeypatch.setattr(sys.modules[type(method).__module__], attack, spy)
    view = {"x1": x1, "x2": x2}[anchor]
    method.make_adversarial(x1, x2, y, StepContext())
    with frozen_for_attack(method.projector(), "train"), torch.no_grad():  # the attack's (train) mode
        clean, adversarial = method.project(view), method.project_adversarial(view)
    want, other = (clean, adversarial) if branch == "clean" else (adversarial, clean)
    torch.testing.assert_close(seen["target"], want)
    assert not torch.allclose(seen["target"], other, atol=1e-3)
