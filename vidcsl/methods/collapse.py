"""Representation collapse: a cheap measure every embedding method logs, and the rule that stops a run.

Methods without negatives (BYOL, SimSiam, VICReg, Barlow Twins) can reach a trivial minimum where
every input maps to the same point. Following SimSiam (Chen & He, 2021, Sec. 4.1) we watch the
per-dimension standard deviation of the L2-normalised embeddings over the batch: for embeddings spread
isotropically on the unit sphere it is about ``1/sqrt(d)``; for collapsed ones it is 0. The logged
``embed_std`` is that mean standard deviation times ``sqrt(d)``, so it lies in [0, 1] whatever the
embedding size: about 1 for well-spread embeddings, 0 for a collapse.

The trainer stops the run (keeping the last checkpoint) when ``embed_std`` falls below the config key
``method.collapse_std`` (0 turns the guard off). Methods compute it on the global batch (all ranks'
rows), so every process takes the same decision. See docs/methods.md.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

EMBED_STD = "embed_std"  # the log key the guard reads


@torch.no_grad()
def embedding_std(z: Tensor) -> float:
    """Mean per-dimension std of the L2-normalised rows of ``z`` (n, d), times ``sqrt(d)``: in [0, 1]."""
    if z.shape[0] < 2:
        return math.nan
    u = F.normalize(z.detach().float().flatten(1), dim=1)
    return float(u.std(dim=0, unbiased=False).mean()) * math.sqrt(u.shape[1])


def collapse_reason(logs: dict[str, float], threshold: float) -> str | None:
    """Why the step's embeddings count as collapsed (``embed_std`` below ``threshold``), or None."""
    value = logs.get(EMBED_STD)
    if threshold <= 0 or value is None or not value < threshold:
        return None
    return (f"embed_std = {value:.3g} (per-dimension std of the normalised embeddings x sqrt(d); "
            f"about 1 when spread, 0 when collapsed) fell below method.collapse_std = {threshold:g}")
