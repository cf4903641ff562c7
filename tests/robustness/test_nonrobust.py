"""Robust / non-robust feature datasets: feature matching moves x' towards g(x) within its budget, and
the saved dataset round-trips with its provenance (a changed file is refused)."""

import json

import pytest
import torch
from torch import nn

from vidcsl.robustness.nonrobust import (
    build_feature_dataset,
    load_feature_dataset,
    match_features,
    save_feature_dataset,
)


def _encoder():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.Tanh(), nn.Linear(16, 8))


def _images(n=6, seed=1):
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("eps", [0.5, None])
def test_match_features_approaches_the_target_within_budget(eps):
    g, x = _encoder(), _images()
    target, start = x[:3], x[3:]
    out = match_features(g, target, start, steps=60, step_size=0.05, eps=eps)
    with torch.no_grad():
        before = (g(start) - g(target)).norm(dim=1)
        after = (g(out) - g(target)).norm(dim=1)
    assert (after < 0.7 * before).all()
    assert out.min() >= 0 and out.max() <= 1
    moved = (out - start).flatten(1).norm(dim=1)
    if eps is not None:
        assert (moved <= eps + 1e-5).all()
    else:
        assert (moved > 0).all()


def test_match_features_restores_the_encoder_state():
    g = _encoder().train()
    flags = [p.requires_grad for p in g.parameters()]
    match_features(g, _images(2), _images(2, seed=2), steps=2, step_size=0.1)
    assert g.training and [p.requires_grad for p in g.parameters()] == flags


def test_dataset_pairs_every_target_with_another_start_and_keeps_labels():
    g, x = _encoder(), _images(5)
    labels = torch.arange(5)
    new, lab = build_feature_dataset(g, x, labels, robust=False, steps=0, eps=0.5, batch_size=2, seed=3)
    assert torch.equal(lab, labels)
    # with 0 steps each new sample is its starting point: some *other* training input
    for i in range(5):
        match = [j for j in range(5) if torch.equal(new[i], x[j])]
        assert match and match[0] != i
    with pytest.raises(ValueError, match="differ in length"):
        build_feature_dataset(g, x, labels[:3], robust=True)


def test_save_and_load_round_trip_with_provenance(tmp_path):
    x, y = _images(4), torch.tensor([3, 1, 4, 1])
    path = save_feature_dataset(tmp_path / "nonrobust.npz", x, y, {"encoder": "run/x", "eps": 0.5})
    images, labels, meta = load_feature_dataset(path)
    torch.testing.assert_close(images, x.half().float())
    assert torch.equal(labels, y) and meta["encoder"] == "run/x" and meta["num_samples"] == 4
    assert json.loads(path.with_suffix(".json").read_text())["sha256"] == meta["sha256"]
    path.write_bytes(path.read_bytes()[:-8] + b"corrupt!")
    with pytest.raises(ValueError, match="checksum"):
        load_feature_dataset(path)
    with pytest.raises(FileNotFoundError, match="vidcsl nonrobust"):
        load_feature_dataset(tmp_path / "missing.npz")
