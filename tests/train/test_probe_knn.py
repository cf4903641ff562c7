"""kNN monitor against a brute-force reference and a hand example; probe selection on validation only."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vidcsl.config import ProbeConfig
from vidcsl.train.knn import knn_accuracy, knn_predict
from vidcsl.train.optim import LARS, WarmupCosine
from vidcsl.train.probe import accuracy, train_linear_probe


def test_knn_hand_example():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    labels = torch.tensor([0, 1, 1])
    q = torch.tensor([[1.0, 0.05]])
    scores = knn_predict(bank, labels, q, 2, k=2, temperature=0.5)
    qn = F.normalize(q, dim=1)
    s0 = float(qn @ F.normalize(bank[0:1], dim=1).t())
    s2 = float(qn @ F.normalize(bank[2:3], dim=1).t())
    torch.testing.assert_close(scores, torch.tensor([[math.exp(s0 / 0.5), math.exp(s2 / 0.5)]]))


def test_knn_chunked_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    bank, test = torch.randn(300, 8, generator=g), torch.randn(70, 8, generator=g)
    labels = torch.randint(0, 5, (300,), generator=g)
    sim = F.normalize(test, dim=1) @ F.normalize(bank, dim=1).t()
    top, idx = sim.topk(20, dim=1)
    ref = torch.zeros(70, 5).index_put_((torch.arange(70)[:, None].expand(-1, 20), labels[idx]),
                                        (top / 0.07).exp(), accumulate=True)
    for chunk in (7, 64, 1000):
        torch.testing.assert_close(knn_predict(bank, labels, test, 5, k=20, chunk=chunk), ref, rtol=1e-5, atol=0)
    assert knn_accuracy(bank, labels, bank, labels, 5, k=1) == 1.0  # each point is its own neighbour


def test_probe_selects_on_validation_not_last_epoch_or_test():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 3, generator=g)
    x = torch.randn(300, 6, generator=g)
    y = (x @ w).argmax(1)
    xv = torch.randn(100, 6, generator=g)
    yv = torch.randint(0, 3, (100,), generator=g)  # noisy validation labels: its accuracy wanders
    xt, yt = torch.randn(100, 6, generator=g), torch.randint(0, 3, (100,), generator=g)
    cfg = ProbeConfig(epochs=12, lr=0.5, batch_size=32, seed=0)
    result = train_linear_probe((x, y), (xv, yv), 3, cfg, test=(xt, yt), progress=False)
    val_hist = [h["val_acc"] for h in result.history]
    assert result.best_epoch == val_hist.index(max(val_hist))
    assert result.best_epoch < cfg.epochs - 1  # the hard case: the chosen epoch is not the last one
    # the returned classifier is the selected epoch's, applying to raw features
    assert accuracy(result.classifier, xv, yv) == pytest.approx(max(val_hist))
    assert result.test_acc == pytest.approx(accuracy(result.classifier, xt, yt))
    assert "test_acc" not in result.history[0]  # test is never looked at per epoch


def test_probe_learns_a_separable_problem():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(6, 3, generator=g)
    x = 5 * torch.randn(400, 6, generator=g) + 3.0  # un-normalised features: standardisation is folded in
    y = ((x - 3.0) @ w).argmax(1)
    xv = 5 * torch.randn(100, 6, generator=g) + 3.0
    yv = ((xv - 3.0) @ w).argmax(1)
    result = train_linear_probe((x, y), (xv, yv), 3, ProbeConfig(epochs=20, lr=0.1, batch_size=64),
                                progress=False)
    assert result.val_acc > 0.9


def test_lars_step_by_hand():
    p = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    p.grad = torch.tensor([0.0, 1.0])
    opt = LARS([p], lr=0.1, momentum=0.9, weight_decay=0.5, eta=0.01)
    opt.step()
    g = torch.tensor([0.0, 1.0]) + 0.5 * torch.tensor([3.0, 4.0])  # grad + wd * w = [1.5, 3.0]
    trust = 0.01 * 5.0 / float(g.norm())
    torch.testing.assert_close(p.detach(), torch.tensor([3.0, 4.0]) - 0.1 * trust * g)


def test_warmup_cosine_schedule():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = WarmupCosine(opt, total_steps=10, warmup_steps=2, min_lr=0.1)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(10):
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert lrs[2] == pytest.approx(1.0)  # cosine starts at the base lr
    assert lrs[6] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert lrs[10] == pytest.approx(0.1)
    state = sched.state_dict()
    other = WarmupCosine(torch.optim.SGD([p], lr=1.0), total_steps=10, warmup_steps=2, min_lr=0.1)
    other.load_state_dict(state)
    assert other.get_last_lr() == pytest.approx([lrs[10]])


def test_video_level_of_a_linear_probe_is_the_mean_of_its_clip_logits():
    from vidcsl.train.probe import centre_view, level_accuracies

    g = torch.Generator().manual_seed(2)
    clf = torch.nn.Linear(5, 3)
    feats = torch.randn(40, 3, 5, generator=g)  # 40 videos x 3 clips
    labels = torch.randint(0, 3, (40,), generator=g)
    with torch.no_grad():
        by_logits = clf(feats).mean(1).argmax(1)  # what the evaluation computes: logits averaged over clips
        centre = clf(feats[:, centre_view(3, 1)]).argmax(1)
    acc = level_accuracies(clf, feats, labels, is_video=True, centre=centre_view(3, 1))
    assert acc["video"] == pytest.approx(float((by_logits == labels).float().mean()))
    assert acc["clip"] == pytest.approx(float((centre == labels).float().mean()))
    assert centre_view(5, 3) == 7 and centre_view(1, 1) == 0  # clip 2 of 5, middle crop of 3


def test_view_features_keep_every_clip_and_live_probe_trains():
    """Per-view features are the encoder's on each clip; the live probe (probe.cached=false) learns."""
    from vidcsl.train.probe import extract_view_features, train_live_probe

    g = torch.Generator().manual_seed(3)
    embed = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 2 * 3 * 3, 6))
    clips = torch.rand(10, 4, 2, 2, 3, 3, generator=g)  # (N, K, C, T, H, W)
    labels = torch.arange(10) % 3
    loader = [(clips[:6], labels[:6]), None, (clips[6:], labels[6:])]
    feats, y = extract_view_features(embed, loader, torch.device("cpu"), True, "f", False)
    with torch.no_grad():
        torch.testing.assert_close(feats, embed(clips.flatten(0, 1)).view(10, 4, 6))
    assert torch.equal(y, labels)
    w = torch.randn(6, 3, generator=g)
    x = torch.randn(300, 6, generator=g)
    yx = (x @ w).argmax(1)
    batches = [(x[i:i + 50], yx[i:i + 50]) for i in range(0, 300, 50)]
    result = train_live_probe(torch.nn.Identity(), batches, 6, 3, (x, yx), ProbeConfig(epochs=10, lr=0.5),
                              stats=(x.mean(0), x.std(0)), progress=False)
    assert result.val_acc > 0.9
