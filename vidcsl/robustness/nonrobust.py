"""Robust and non-robust feature datasets (Ilyas et al. 2019; Li et al. 2023; docs/nonrobust.md).

For each training pair (x, y) we start from *another* training input x0 and move it, by normalised L2
gradient steps, until the encoder g can no longer tell it from x: minimise ||g(x') - g(x)||_2. The new
sample keeps label y, so whatever a model later learns from it can only come from the features g sees.

* non-robust set: g is a standard encoder and x' stays within an L2 ball around x0 (eps ~ 0.5), so x'
  still *looks* like x0 but carries x's (non-robust) features;
* robust set: g is a robust encoder and x' is unconstrained, so the features that survive are robust.

"Non-robust features suffice" (Ilyas et al. 2019, section 3.2): targeted PGD on a *standard classifier*
moves each x (label y) within an L2 ball until the classifier predicts a target t, and the new sample
is labelled t; ``det``: t = (y + 1) mod C, ``rand``: t uniform over the classes. To a human the samples
are mislabelled, yet a model trained on them classifies the real test set above chance: the only signal
linking x' to t are the non-robust features the attack planted (:func:`build_targeted_dataset`).

Every update goes through ``kernels.pgd.pgd_step`` (descent = ascent on the negated gradient).
The driver that builds these sets from trained runs and trains every paradigm on them is
``vidcsl.robustness.nonrobust_matrix`` (``vidcsl nonrobust``; docs/nonrobust.md).
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
import torch.nn.functional as F
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


def start_indices(n: int, seed: int) -> torch.Tensor:
    """``order[i]``: the training input the sample built for target ``i`` starts from, never ``i`` itself
    (a seeded random cyclic shift of a permutation: every input is used once as a start)."""
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    order = torch.empty_like(perm)
    order[perm] = perm.roll(1)
    return order


def build_feature_dataset(
    encoder: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    robust: bool,
    steps: int = 1000,
    step_size: float = 0.1,
    eps: float | None = 0.5,
    batch_size: int = 128,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Build the robust (``robust=True``: no constraint) or non-robust (L2 ``eps`` ball; ``None``: no ball,
    as Ilyas et al. build it) dataset.

    ``images`` are float pixels in [0, 1] (images or clips, batch first). Each x is paired with a
    random *other* training input as starting point; returns ``(new_images, labels)`` on the CPU.
    """
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"images ({images.shape[0]}) and labels ({labels.shape[0]}) differ in length")
    if images.shape[0] < 2:
        raise ValueError("need at least 2 training inputs to pick a different starting point")
    n = images.shape[0]
    order = start_indices(n, seed)
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


TARGET_RULES = ("det", "rand")


def targets_for(labels: torch.Tensor, num_classes: int, rule: str, seed: int = 0) -> torch.Tensor:
    """Ilyas et al.'s targets: ``det`` t = (y + 1) mod C; ``rand`` t uniform over the C classes (seeded)."""
    if rule not in TARGET_RULES:
        raise ValueError(f"target rule must be one of {TARGET_RULES}, got {rule!r}")
    if num_classes < 2:
        raise ValueError(f"targets need at least 2 classes, got {num_classes}")
    if rule == "det":
        return (labels + 1) % num_classes
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, num_classes, labels.shape, generator=gen)


def targeted_pgd(classifier: nn.Module, x: torch.Tensor, targets: torch.Tensor, *, eps: float = 0.5,
                 step_size: float = 0.1, steps: int = 100, norm: str = "l2") -> torch.Tensor:
    """x' within ``eps`` of ``x`` minimising CE(classifier(x'), targets) (targeted PGD, no random start).

    The classifier's train/eval flags, buffers and ``requires_grad`` are restored afterwards.
    """
    from vidcsl.attacks.pgd import frozen_for_attack

    if steps < 0 or not step_size > 0 or not eps >= 0:
        raise ValueError(f"need steps >= 0, step_size > 0, eps >= 0; got {steps}, {step_size}, {eps}")
    x0 = x.detach()
    adv = x0.clone()
    with frozen_for_attack(classifier, "eval"), torch.enable_grad():
        for _ in range(steps):
            adv.requires_grad_(True)
            loss = F.cross_entropy(classifier(adv), targets)
            (grad,) = torch.autograd.grad(loss, adv)
            adv = pgd_step(adv.detach(), -grad, x0, step_size=step_size, eps=eps, norm=norm)
    return adv.detach()


def build_targeted_dataset(
    classifier: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    rule: str,
    steps: int = 100,
    step_size: float = 0.1,
    eps: float = 0.5,
    norm: str = "l2",
    batch_size: int = 128,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """D_det (``rule="det"``) or D_rand (``"rand"``): each x moved towards its target t and relabelled t.

    Returns ``(new_images, targets, hit)`` on the CPU; ``hit[i]`` says the classifier predicts t on x'
    (Ilyas et al. keep every sample; the hit rate is reported as the attack's success).
    """
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"images ({images.shape[0]}) and labels ({labels.shape[0]}) differ in length")
    targets = targets_for(labels, num_classes, rule, seed)
    classifier = classifier.to(device)
    out = torch.empty_like(images)
    hit = torch.zeros(images.shape[0], dtype=torch.bool)
    for lo in tqdm(range(0, images.shape[0], batch_size), desc=f"D_{rule}", leave=False):
        hi = min(lo + batch_size, images.shape[0])
        t = targets[lo:hi].to(device)
        adv = targeted_pgd(classifier, images[lo:hi].to(device), t, eps=eps, step_size=step_size, steps=steps,
                           norm=norm)
        with torch.no_grad():
            was = classifier.training
            classifier.eval()
            hit[lo:hi] = (classifier(adv).argmax(1) == t).cpu()
            classifier.train(was)
        out[lo:hi] = adv.cpu()
    return out, targets.clone(), hit


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
