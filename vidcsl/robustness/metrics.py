"""Representation metrics: alignment and uniformity (Wang & Isola 2020), inter/intra-class distance
ratio, sensitivity to random and adversarial input perturbations, and false-negative detector
precision/recall. Pairwise quantities are computed tile by tile: no N x N matrix beyond one tile.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from vidcsl.attacks.contrastive import feature_attack
from vidcsl.attacks.pgd import frozen_for_attack

Tensor = torch.Tensor


def _check_embeddings(z: Tensor, name: str = "z") -> None:
    if z.dim() != 2 or z.shape[0] < 2:
        raise ValueError(f"{name} must be (N >= 2, d) embeddings, got shape {tuple(z.shape)}")


def alignment(z1: Tensor, z2: Tensor, alpha: float = 2.0) -> float:
    """E ||z - z+||^alpha over positive pairs (rows of z1, z2); pass normalised embeddings."""
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 and z2 must be paired (N, d) embeddings, got {tuple(z1.shape)}, {tuple(z2.shape)}")
    return (z1.float() - z2.float()).norm(dim=1).pow(alpha).mean().item()


def _upper_pair_tiles(n: int, chunk: int):
    """(rows, cols, mask) tiles covering the pairs i < j exactly once."""
    for r0 in range(0, n, chunk):
        for c0 in range(r0, n, chunk):
            rows = torch.arange(r0, min(r0 + chunk, n))
            cols = torch.arange(c0, min(c0 + chunk, n))
            yield rows, cols, rows[:, None] < cols[None, :]


def uniformity(z: Tensor, t: float = 2.0, chunk_size: int = 1024) -> float:
    """log E_{i<j} exp(-t ||z_i - z_j||^2): a streaming log-sum-exp over tiles of pairs."""
    _check_embeddings(z)
    z = z.float()
    n = z.shape[0]
    total = torch.tensor(float("-inf"), dtype=torch.float64)
    for rows, cols, mask in _upper_pair_tiles(n, chunk_size):
        d2 = torch.cdist(z[rows], z[cols]).pow(2)
        vals = (-t * d2)[mask.to(z.device)].double().cpu()
        if vals.numel():
            total = torch.logaddexp(total, torch.logsumexp(vals, 0))
    return (total - math.log(n * (n - 1) / 2)).item()


def class_distance_ratio(z: Tensor, labels: Tensor, chunk_size: int = 1024) -> float:
    """Mean distance between pairs of different classes / mean distance between pairs of the same class.

    Larger = classes better separated relative to their spread. Needs at least one pair of each kind.
    """
    _check_embeddings(z)
    if labels.shape != (z.shape[0],):
        raise ValueError(f"labels must be ({z.shape[0]},), got {tuple(labels.shape)}")
    z = z.float()
    sums = torch.zeros(2, dtype=torch.float64)
    counts = torch.zeros(2, dtype=torch.float64)
    for rows, cols, mask in _upper_pair_tiles(z.shape[0], chunk_size):
        d = torch.cdist(z[rows], z[cols]).double().cpu()
        same = labels[rows].cpu()[:, None] == labels[cols].cpu()[None, :]
        for k, sel in enumerate((mask & same, mask & ~same)):
            sums[k] += d[sel].sum()
            counts[k] += sel.sum()
    if (counts == 0).any():
        raise ValueError("class_distance_ratio needs at least one same-class and one different-class pair")
    intra, inter = (sums / counts).tolist()
    return inter / intra if intra > 0 else float("inf")


def linf_sphere_noise(shape, eps: float, generator: torch.Generator | None = None, device=None) -> Tensor:
    """Uniform on the L-inf sphere of radius eps (the cube's surface): uniform in the cube, then one
    coordinate per sample, chosen uniformly (all 2n faces have equal area), set to +-eps."""
    draw_on = generator.device if generator is not None else torch.device("cpu")  # a CUDA generator draws on CUDA
    delta = torch.empty(shape, device=draw_on).uniform_(-eps, eps, generator=generator)
    flat = delta.view(shape[0], -1)
    face = torch.randint(0, flat.shape[1], (shape[0],), generator=generator, device=draw_on)
    sign = torch.randint(0, 2, (shape[0],), generator=generator, device=draw_on).float() * 2 - 1
    flat[torch.arange(shape[0], device=draw_on), face] = sign * eps
    return delta.to(device)


@torch.no_grad()
def sensitivity(
    encoder: nn.Module,
    x: Tensor,
    *,
    eps: float,
    kind: str = "random",
    norm: str = "linf",
    steps: int = 10,
    alpha: float | None = None,
    generator: torch.Generator | None = None,
) -> float:
    """E ||f(x+delta) - f(x)|| / E ||f(x)|| with delta random (L-inf sphere) or adversarial (feature
    attack, PGD-``steps``, step ``alpha`` = 2.5 eps / steps by default). Perturbed inputs are clipped to
    [0,1], as any real input would be. Evaluated in eval mode; the model's state is restored."""
    if kind not in ("random", "adversarial"):
        raise ValueError(f"kind must be 'random' or 'adversarial', got {kind!r}")
    if kind == "random":
        if norm != "linf":
            raise ValueError("random sensitivity samples the L-inf sphere: use norm='linf'")
        x_pert = (x + linf_sphere_noise(x.shape, eps, generator, x.device).to(x.dtype)).clamp(0, 1)
    else:
        step = alpha if alpha is not None else 2.5 * eps / max(steps, 1)
        x_pert = feature_attack(encoder, x, eps=eps, alpha=step, steps=steps, norm=norm, generator=generator)
    with frozen_for_attack(encoder, "eval"):
        f, fp = encoder(x).flatten(1).float(), encoder(x_pert).flatten(1).float()
    return ((fp - f).norm(dim=1).mean() / f.norm(dim=1).mean()).item()


def fn_precision_recall(fn_correct, fn_found, fn_possible) -> dict[str, float]:
    """Detector quality from counts (numbers or per-row tensors, summed): precision = correct/found,
    recall = correct/possible, f1. An empty denominator gives NaN (undefined, not 0 or 1)."""
    correct, found, possible = (float(torch.as_tensor(v).sum()) for v in (fn_correct, fn_found, fn_possible))
    if min(correct, found, possible) < 0 or correct > found or correct > possible:
        raise ValueError(f"inconsistent counts: correct={correct}, found={found}, possible={possible}")
    precision = correct / found if found else float("nan")
    recall = correct / possible if possible else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else float("nan")
    return {"precision": precision, "recall": recall, "f1": f1}
