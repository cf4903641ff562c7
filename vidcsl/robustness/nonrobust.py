"""Robust and non-robust feature datasets (Ilyas et al. 2019; Li et al. 2023; SPEC §5).

For each training pair (x, y) we start from *another* training input x0 and move it, by normalised L2
gradient steps, until the encoder g can no longer tell it from x: minimise ||g(x') - g(x)||_2. The new
sample keeps label y, so whatever a model later learns from it can only come from the features g sees.

* non-robust set: g is a standard encoder and x' stays within an L2 ball around x0 (eps ~ 0.5), so x'
  still *looks* like x0 but carries x's (non-robust) features;
* robust set: g is a robust encoder and x' is unconstrained, so the features that survive are robust.

Every update goes through ``kernels.pgd.pgd_step`` (descent = ascent on the negated gradient).
The dataset is saved as ``.npz`` (float16 pixels in [0, 1] + int64 labels) with a JSON provenance file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from kernels.pgd import pgd_step


def match_features(
    encoder: nn.Module,
    target: torch.Tensor,
    start: torch.Tensor,
    *,
    steps: int = 1000,
    step_size: float = 0.1,
    eps: float | None = 0.5,
) -> torch.Tensor:
    """Return x' near ``start`` (within L2 ``eps``; ``None`` = unconstrained) with g(x') ~ g(target).

    The encoder's train/eval mode and parameters' requires_grad are restored afterwards.
    """
    if steps < 0 or step_size <= 0:
        raise ValueError(f"steps must be >= 0 and step_size > 0, got steps={steps}, step_size={step_size}")
    was_training = encoder.training
    grad_flags = [p.requires_grad for p in encoder.parameters()]
    encoder.eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    try:
        with torch.no_grad():
            goal = encoder(target)
        x0 = start.detach()
        x = x0.clone()
        bound = math.inf if eps is None else float(eps)
        for _ in range(steps):
            x.requires_grad_(True)
            loss = (encoder(x) - goal).pow(2).sum()
            (grad,) = torch.autograd.grad(loss, x)
            x = pgd_step(x.detach(), -grad, x0, step_size=step_size, eps=bound, norm="l2")
        return x.detach()
    finally:
        encoder.train(was_training)
        for p, flag in zip(encoder.parameters(), grad_flags):
            p.requires_grad_(flag)


def build_feature_dataset(
    encoder: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    robust: bool,
    steps: int = 1000,
    step_size: float = 0.1,
    eps: float = 0.5,
    batch_size: int = 128,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Build the robust (``robust=True``: no constraint) or non-robust (L2 ``eps`` ball) dataset.

    ``images`` are float pixels in [0, 1] (images or clips, batch first). Each x is paired with a
    random *other* training input as starting point; returns ``(new_images, labels)`` on the CPU.
    """
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"images ({images.shape[0]}) and labels ({labels.shape[0]}) differ in length")
    if images.shape[0] < 2:
        raise ValueError("need at least 2 training inputs to pick a different starting point")
    gen = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    # A random derangement-ish pairing: shift a permutation so that start != target.
    perm = torch.randperm(n, generator=gen)
    starts = perm.roll(1)
    order = torch.empty_like(perm)
    order[perm] = starts  # order[i] = index of the start for target i, never i itself
    encoder = encoder.to(device)
    out = torch.empty_like(images)
    for lo in tqdm(range(0, n, batch_size), desc="robust set" if robust else "non-robust set", leave=False):
        hi = min(lo + batch_size, n)
        target = images[lo:hi].to(device)
        start = images[order[lo:hi]].to(device)
        out[lo:hi] = match_features(
            encoder, target, start, steps=steps, step_size=step_size, eps=None if robust else eps
        ).cpu()
    return out, labels.clone()


def save_feature_dataset(
    path: str | os.PathLike, images: torch.Tensor, labels: torch.Tensor, provenance: dict
) -> Path:
    """Write ``path`` (.npz: ``images`` float16, ``labels`` int64) and ``path`` + ``.json`` provenance."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = images.to(torch.float16).numpy()
    lab = labels.to(torch.int64).numpy()
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, images=arr, labels=lab)
    os.replace(tmp, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    meta = {**provenance, "sha256": digest, "num_samples": int(lab.shape[0]), "shape": list(arr.shape[1:])}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return path


def load_feature_dataset(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Read a dataset written by :func:`save_feature_dataset`; checks the file against its provenance."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature dataset {path} does not exist (build it with `vidcsl nonrobust`)")
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if meta.get("sha256") and hashlib.sha256(path.read_bytes()).hexdigest() != meta["sha256"]:
        raise ValueError(f"{path} does not match the checksum in {meta_path}: the file changed or is corrupt")
    try:
        with np.load(path) as data:
            images, labels = torch.from_numpy(data["images"]).float(), torch.from_numpy(data["labels"])
    except (KeyError, ValueError, OSError) as err:
        raise ValueError(f"{path} is not a feature dataset (.npz with 'images' and 'labels'): {err}") from err
    return images, labels, meta
