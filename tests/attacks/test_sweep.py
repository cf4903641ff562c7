"""robust_sweep: never weaker than torchattacks' per-eps PGD, attacks only unsettled samples, restores state."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torchattacks
from torch import nn

import vidcsl.attacks.sweep as sweep_module
from vidcsl.attacks import clean_correct, robust_sweep
from vidcsl.errors import ConfigError

SWEEPS = {
    "linf": ([0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255], torchattacks.PGD),
    "l2": ([0.0, 0.05, 0.1, 0.2, 0.4], torchattacks.PGDL2),
}


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_sweep_breaks_every_sample_torchattacks_breaks(norm, per_sample, inputs):
    """Sample by sample, at every eps: with random_start=False the sweep's survivors survive torchattacks'
    PGD at that eps too. The model runs one sample at a time, so compaction cannot change a sample's
    logits in the last bits (which could otherwise flip a borderline sample either way)."""
    model = per_sample()
    x, y = inputs((32, 3, 8, 8), model, wrong=3)
    eps_list, attack_cls = SWEEPS[norm]
    steps = 5
    ours = robust_sweep(model, x, y, norm=norm, eps_list=eps_list[::-1], steps=steps, random_start=False)
    assert list(ours) == eps_list[::-1]  # the caller's order
    clean = clean_correct(model, x, y)
    assert torch.equal(ours[0.0], clean) and not clean[:3].any()
    partly_broken = 0
    for eps in eps_list[1:]:
        adv = attack_cls(model, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=False)(x, y)
        with torch.no_grad():
            theirs = model(adv).argmax(1) == y
        assert ours[eps].dtype == torch.bool and ours[eps].device.type == "cpu" and ours[eps].shape == (32,)
        assert not (ours[eps] & ~theirs).any(), f"eps={eps}: the sweep kept samples torchattacks broke"
        assert not (ours[eps] & ~clean).any()
        partly_broken += 0 < int(theirs.sum()) < int(clean.sum())
    assert partly_broken >= 2  # the eps grid is informative: some samples break, some survive
    assert int(ours[eps_list[-1]].sum()) < int(clean.sum())
    for small, large in zip(eps_list, eps_list[1:]):  # broken at a small eps => broken at every larger one
        assert not (ours[large] & ~ours[small]).any()


def test_sweep_attacks_only_samples_still_correct(per_sample, inputs, monkeypatch):
    """Clean-wrong samples are never attacked; each eps attacks exactly the survivors of the previous one."""
    model = per_sample()
    x, y = inputs((24, 3, 8, 8), model, wrong=4)
    attacked: list[tuple[float, torch.Tensor]] = []
    real = sweep_module.pgd_outcome

    def recording(model_, xs, ys, **kw):
        attacked.append((kw["eps"], xs.clone()))
        return real(model_, xs, ys, **kw)

    monkeypatch.setattr(sweep_module, "pgd_outcome", recording)
    eps_list = [0.0, 2 / 255, 4 / 255, 8 / 255]
    out = robust_sweep(model, x, y, norm="linf", eps_list=eps_list, steps=4, random_start=False)
    assert [e for e, _ in attacked] == eps_list[1:]
    for (_, xs), previous in zip(attacked, eps_list):
        assert torch.equal(xs, x[out[previous]])
    assert attacked[0][1].shape[0] == 20


def test_pgd_compacts_the_batch_as_samples_break(classifier, inputs):
    """Inside PGD a sample stops being attacked once misclassified: forward batches shrink."""
    net = classifier()
    x, y = inputs((16, 3, 8, 8), net)
    sizes = []
    net.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    out = robust_sweep(net, x, y, norm="linf", eps_list=[8 / 255], steps=10, random_start=False)
    broken = int((~out[8 / 255]).sum())
    assert 0 < broken < 16
    attack_sizes = sizes[1:]  # after the clean pass
    assert attack_sizes[0] == 16 and attack_sizes[-1] == 16 - broken
    assert all(a >= b for a, b in zip(attack_sizes, attack_sizes[1:]))
    assert len(attack_sizes) == 11 or attack_sizes[-1] == 0 <= len(attack_sizes) <= 11  # at most steps + 1 forward passes (the last one judges the last iterate)


def test_shared_clean_pass_and_restarts(per_sample, inputs):
    model = per_sample()
    x, y = inputs((16, 3, 8, 8), model, wrong=2)
    clean = clean_correct(model, x, y)
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    a = robust_sweep(model, x, y, norm="l2", eps_list=[0.2, 0.0], steps=3, generator=gen(), clean=clean)
    b = robust_sweep(model, x, y, norm="l2", eps_list=[0.2, 0.0], steps=3, generator=gen())
    assert all(torch.equal(a[e], b[e]) for e in a) and torch.equal(a[0.0], clean)
    # pretending everything was wrong clean: nothing is attacked, nothing is robust
    none = robust_sweep(model, x, y, norm="l2", eps_list=[0.2], clean=torch.zeros(16, dtype=torch.bool))
    assert not none[0.2].any()
    three = robust_sweep(model, x, y, norm="l2", eps_list=[0.2], steps=3, restarts=3, generator=gen(), clean=clean)
    assert not (three[0.2] & ~a[0.2]).any()  # the first restart is the single-restart run; more only break more
    with pytest.raises(ValueError, match="clean"):
        robust_sweep(model, x, y, norm="l2", eps_list=[0.2], clean=clean[:3])


def test_other_attacks_skip_settled_samples(per_sample, inputs, monkeypatch):
    """FGSM and APGD through the registry: same skip rule, outcome monotone in eps."""
    import vidcsl.attacks.registry as registry

    model = per_sample()
    x, y = inputs((12, 3, 8, 8), model, wrong=2)
    for name in ("fgsm", "apgd-ce"):
        seen: list[int] = []
        spec = registry.ATTACKS[name]

        def recording(m, xs, ys, _fn=spec.fn, _seen=seen, **kw):
            _seen.append(xs.shape[0])
            return _fn(m, xs, ys, **kw)

        monkeypatch.setitem(registry.ATTACKS, name, dataclasses.replace(spec, fn=recording))
        eps_list = [2 / 255, 8 / 255, 32 / 255]
        out = robust_sweep(model, x, y, norm="linf", eps_list=eps_list, attack=name, steps=3)
        survivors = [10] + [int(out[e].sum()) for e in eps_list[:-1]]
        assert seen == [s for s in survivors if s > 0]
        assert int(out[32 / 255].sum()) < 10
        for small, large in zip(eps_list, eps_list[1:]):
            assert not (out[large] & ~out[small]).any()


def test_sweep_restores_model_state(classifier, inputs, state_of, same_state):
    model = classifier()
    model.train()
    model[1].eval()  # a mixed state must come back mixed
    model[0].weight.requires_grad_(False)
    x, y = inputs((8, 3, 8, 8), model)
    before = state_of(model)
    robust_sweep(model, x, y, norm="linf", eps_list=[0, 4 / 255], steps=2)
    robust_sweep(model, x, y, norm="l2", eps_list=[0.3], attack="fgsm")
    same_state(model, before)


def test_sweep_rejects_bad_arguments(classifier, inputs):
    model = classifier()
    x, y = inputs((4, 3, 8, 8), model)
    with pytest.raises(ConfigError, match="known attacks: pgd, fgsm"):
        robust_sweep(model, x, y, norm="linf", eps_list=[0.1], attack="deepfool")
    with pytest.raises(ConfigError, match="'l1'"):
        robust_sweep(model, x, y, norm="l1", eps_list=[0.1])
    with pytest.raises(ConfigError, match="'linf'"):
        robust_sweep(model, x, y, norm="linf", eps_list=[0.1], attack="cw-l2")
    with pytest.raises(ConfigError, match="eps"):
        robust_sweep(model, x, y, norm="linf", eps_list=[-0.1])
    with pytest.raises(ConfigError, match="eps"):
        robust_sweep(model, x, y, norm="linf", eps_list=[])
    with pytest.raises(ConfigError, match="'early_stop'"):
        robust_sweep(model, x, y, norm="linf", eps_list=[0.1], early_stop=False)
    with pytest.raises(ConfigError, match="'alpha'"):
        robust_sweep(model, x, y, norm="linf", eps_list=[0.1], alpha=0.01)
    with pytest.raises(ConfigError, match="no option 'gamma'"):
        robust_sweep(model, x, y, norm="linf", eps_list=[0.1], attack="apgd-ce", gamma=3)
    with pytest.raises(ConfigError, match="mode"):
        robust_sweep(model, x, y, norm="linf", eps_list=[0.1], mode="train")
    with pytest.raises(ValueError, match="random_start"):
        robust_sweep(model, x, y, norm="linf", eps_list=[0.1], restarts=2, random_start=False)


class NaNAwayFromInput(nn.Module):
    """Logits favour class 0 everywhere, and turn NaN as soon as the input moves off the clean image:
    a model whose gradient/outputs break under attack. NaN logits must never count as correct."""

    def __init__(self, x0: torch.Tensor):
        super().__init__()
        self.register_buffer("x0", x0.clone())

    def forward(self, x):
        moved = (x - self.x0[: x.shape[0]]).flatten(1).abs().amax(1) > 0
        logits = torch.zeros(x.shape[0], 3, device=x.device) + torch.tensor([1.0, 0.0, 0.0]) + 0 * x.sum()
        return torch.where(moved[:, None], torch.full_like(logits, float("nan")), logits)


def test_non_finite_logits_count_as_broken_never_as_robust():
    x = torch.rand(4, 3, 8, 8)
    y = torch.zeros(4, dtype=torch.long)  # argmax of an all-NaN row is 0: would look "correct"
    model = NaNAwayFromInput(x).eval()
    out = robust_sweep(model, x, y, norm="linf", eps_list=[0.0, 2 / 255], steps=2, random_start=True,
                       generator=torch.Generator().manual_seed(0))
    assert out[0.0].all()  # clean: finite logits, correct
    assert not out[2 / 255].any()  # moved off the image: NaN logits, counted as broken
