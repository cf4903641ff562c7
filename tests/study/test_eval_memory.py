"""Bounded memory: the streamed evaluation of a synthetic video split of 4N clip sets peaks no higher than
that of N (within noise), while holding the 4N split in memory, as a concatenating evaluation would, is
seen by the same measurement."""

from __future__ import annotations

import os
import threading
import time

import torch
from torch import nn
from torch.utils.data import Dataset

from vidcsl.robustness.evaluate import IndexedSubset
from vidcsl.robustness.measures import MeasurePlan, Sweep, run_measures
from vidcsl.train.trainer import make_loader

K, C, T, S = 3, 3, 8, 48  # clips per video, channels, frames, side: 663 kB per sample in float32
N = 32
MiB = 2**20


class SyntheticClips(Dataset):
    """Clip sets drawn from a per-index seed (nothing cached): (K, C, T, S, S) in [0, 1], label index % 4."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.rand(K, C, T, S, S, generator=torch.Generator().manual_seed(i)), i % 4


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_growth(fn) -> int:
    """Peak resident memory above the level before ``fn`` runs, sampled every 2 ms."""
    base, peak, done = _rss(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return max(peak[0], _rss()) - base


def _plan() -> MeasurePlan:
    torch.manual_seed(0)
    model = nn.Sequential(nn.AdaptiveAvgPool3d((2, 4, 4)), nn.Flatten(), nn.Linear(C * 2 * 4 * 4, 4))
    return MeasurePlan(classifiers={"standard": model.eval()}, levels=["clip", "video"],
                       sweeps=[Sweep("pgd", "linf", [0.0, 2 / 255])], num_classes=4, steps=1)


def _evaluate(n: int) -> int:
    loader = make_loader(IndexedSubset(SyntheticClips(n), list(range(n))), 8)
    rec = run_measures(loader, _plan(), torch.device("cpu"), progress=False)
    return rec.n


def test_peak_memory_of_the_streamed_evaluation_does_not_grow_with_the_split():
    assert _evaluate(16) == 16  # warm-up: lazy initialisations, allocator pools
    small = peak_growth(lambda: _evaluate(N))
    large = peak_growth(lambda: _evaluate(4 * N))
    held = []  # the old evaluation stacked the whole split: the measurement must see that
    concatenated = peak_growth(lambda: held.append(torch.stack([SyntheticClips(4 * N)[i][0] for i in range(4 * N)])))
    split_bytes = 4 * N * K * C * T * S * S * 4
    assert concatenated > 0.8 * split_bytes, (concatenated / MiB, split_bytes / MiB)
    assert large - small < 0.25 * split_bytes, (small / MiB, large / MiB, split_bytes / MiB)
