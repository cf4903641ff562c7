"""Small classifiers and inputs for the attack tests (fast on a 2-core CPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn


class PerSample(nn.Module):
    """Runs ``net`` on one sample at a time: a sample's logits cannot depend on which other samples share
    its batch, so attacks on differently composed batches are comparable bit for bit."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.net(x[i:i + 1].clone()) for i in range(x.shape[0])])


class ClipAverage(nn.Module):
    """A clip-set classifier as the evaluation builds one: (B,K,C,T,H,W) -> mean of the K clips' logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        b, k = clips.shape[:2]
        return self.model(clips.flatten(0, 1)).view(b, k, -1).mean(1)


def _classifier(dims: int = 2, classes: int = 4, size: int = 8) -> nn.Module:
    """conv-BN-ReLU-linear on (B,3,H,W) images or (B,3,T,H,W) clips, eval mode, non-trivial BN statistics."""
    conv, bn = (nn.Conv2d, nn.BatchNorm2d) if dims == 2 else (nn.Conv3d, nn.BatchNorm3d)
    torch.manual_seed(0)
    cells = size * size * (1 if dims == 2 else 2)
    net = nn.Sequential(conv(3, 6, 3, padding=1), bn(6), nn.ReLU(), nn.Flatten(), nn.Linear(6 * cells, classes))
    net.train()
    with torch.no_grad():
        net(torch.rand(16, 3, *([2] if dims == 3 else []), size, size))
    return net.eval()


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one intra-op thread is faster, and steady when other processes load the CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def classifier():
    return _classifier


@pytest.fixture
def clip_set_classifier():
    return lambda: ClipAverage(_classifier(dims=3)).eval()


@pytest.fixture
def per_sample():
    return lambda: PerSample(_classifier()).eval()


@pytest.fixture
def inputs():
    def make(shape, model, wrong: int = 0, seed: int = 1):
        """x uniform in [0,1]; y = the model's clean prediction, except the first ``wrong`` samples."""
        x = torch.rand(shape, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            y = model(x).argmax(1)
        y[:wrong] = (y[:wrong] + 1) % 4
        return x, y
    return make


def snapshot(model: nn.Module):
    return ([m.training for m in model.modules()], [b.clone() for b in model.buffers()],
            [p.requires_grad for p in model.parameters()])


@pytest.fixture
def state_of():
    """``state_of(model)`` -> a snapshot of flags, buffers and requires_grad; compare two with ``==``-like
    ``same_state``."""
    return snapshot


@pytest.fixture
def same_state():
    def check(model, before):
        flags, buffers, req = snapshot(model)
        assert flags == before[0]
        assert all(torch.equal(a, b) for a, b in zip(buffers, before[1]))
        assert req == before[2]
        assert all(p.grad is None for p in model.parameters())
    return check
