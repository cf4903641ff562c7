"""Tiny synthetic stand-ins shared by the training tests: a tiny encoder, configs and datasets."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from vidcsl.config import config_from_dict
from vidcsl.data.factory import DataBundle


class TinyEncoder(nn.Module):
    """Flatten + linear + ReLU; no BatchNorm, so sharded and global batches give the same gradients."""

    def __init__(self, in_dim: int = 3 * 4 * 4, feature_dim: int = 16, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(in_dim, feature_dim)
        self.feature_dim = feature_dim
        self.is_video = False

    def forward(self, x):
        return torch.relu(self.fc(x.flatten(1)))


def tiny_cfg(**sections):
    """A Config with a small projection head (no BN) and the given section overrides."""
    raw = {"model": {"proj_hidden_dim": 16, "proj_out_dim": 8, "proj_batch_norm": False},
           "method": {"temperature": 0.5},
           "train": {"progress": False, "tensorboard": False}}
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    return config_from_dict(raw)


class NoisyViews(Dataset):
    """Fixed class prototypes + noise drawn from the *global* torch RNG (so resume must restore it)."""

    def __init__(self, n: int = 48, num_classes: int = 4, size: int = 4, two_views: bool = True,
                 bad: tuple[int, ...] = ()):
        g = torch.Generator().manual_seed(123)
        self.protos = torch.rand(num_classes, 3, size, size, generator=g)
        self.labels = torch.arange(n) % num_classes
        self.two_views, self.bad = two_views, set(bad)

    def __len__(self):
        return len(self.labels)

    def view(self, i):
        x = self.protos[self.labels[i]] + 0.1 * torch.randn(self.protos.shape[1:])
        return x.clamp(0, 1)

    def __getitem__(self, i):
        if i in self.bad:
            return None
        y = int(self.labels[i])
        return ((self.view(i), self.view(i)), y) if self.two_views else (self.view(i), y)


def bundle(n=48, two_views=True, bad=()):
    train = NoisyViews(n, two_views=two_views, bad=bad)
    evals = NoisyViews(16, two_views=False)
    return DataBundle(train=train, train_eval=NoisyViews(n, two_views=False), val=evals, test=evals,
                      num_classes=4, class_names=list("abcd"), is_video=False)


@pytest.fixture
def kit():
    """The helpers above, as a fixture (test modules cannot import conftest under importlib mode)."""
    return SimpleNamespace(TinyEncoder=TinyEncoder, cfg=tiny_cfg, bundle=bundle, NoisyViews=NoisyViews)


ROOT = Path(__file__).resolve().parents[2]
DIGITS_CONFIG = str(ROOT / "configs" / "digits_simclr.yaml")
# a tiny SimCLR on the embedded digits: two steps, a few seconds
DIGITS_SMALL = ["model.encoder_kwargs={channels: [4, 8, 8, 16]}", "model.proj_hidden_dim=16", "model.proj_out_dim=8",
                "train.progress=false", "train.tensorboard=false", "data.num_workers=0", "data.limit_train=64",
                "data.limit_eval=32", "train.batch_size=16", "train.max_steps=2", "train.knn_k=5", "probe.epochs=2"]


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """A finished tiny digits run, trained once through the CLI; ``copy(dest)`` gives a test its own copy."""
    from vidcsl.cli import main

    run_dir = tmp_path_factory.mktemp("digits") / "run"
    assert main(["pretrain", DIGITS_CONFIG, *DIGITS_SMALL, "--run-dir", str(run_dir)]) == 0

    def copy(dest):
        shutil.copytree(run_dir, dest)
        return Path(dest)

    return SimpleNamespace(dir=run_dir, config=DIGITS_CONFIG, overrides=list(DIGITS_SMALL), copy=copy)
