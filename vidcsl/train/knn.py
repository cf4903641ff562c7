"""Weighted kNN classifier on frozen features (InstDisc's monitor), and feature extraction.

Each test feature votes with its ``k`` most cosine-similar training features, neighbour j weighted by
``exp(cos_j / temperature)``. The test set is processed in chunks, so no N_test x N_train matrix exists
beyond one chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from vidcsl.errors import DataError

Tensor = torch.Tensor


class ExtractionStopped(Exception):
    """``should_stop`` asked :func:`extract_features` to stop (e.g. SIGTERM during a kNN monitor)."""


@torch.no_grad()
def extract_features(embed: Callable[[Tensor], Tensor], loader: Iterable, device: torch.device, *,
                     is_video: bool, desc: str = "features", progress: bool = True,
                     should_stop: Callable[[], bool] | None = None) -> tuple[Tensor, Tensor]:
    """Run ``embed`` over ``loader`` -> (float32 features on CPU, int64 labels); skipped (None) batches dropped.

    A sample holding several clips / crops (one extra leading dim) is embedded per view and averaged.
    ``should_stop`` is asked before each batch; when it says yes, :class:`ExtractionStopped` is raised.
    """
    sample_dims = 4 if is_video else 3
    feats, labels = [], []
    use_bf16 = device.type == "cuda"
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        if should_stop is not None and should_stop():
            raise ExtractionStopped(f"{desc}: stopped after {len(feats)} batches")
        if batch is None:
            continue
        x, y = batch[0], batch[1]
        x = x.to(device, non_blocking=True)
        views = 1
        if x.dim() == sample_dims + 2:
            views = x.shape[1]
            x = x.flatten(0, 1)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            f = embed(x).float()
        feats.append(f.view(-1, views, f.shape[-1]).mean(1).cpu())
        labels.append(torch.as_tensor(y).long().cpu())
    if not feats:
        raise DataError(f"{desc}: the loader gave no usable samples (all batches were bad or empty)")
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def knn_predict(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, num_classes: int, *,
                k: int = 200, temperature: float = 0.07, chunk: int = 256) -> Tensor:
    """Class scores (N_test, num_classes) of the weighted kNN vote; argmax gives the prediction."""
    if train_feats.shape[0] != train_labels.shape[0] or train_feats.shape[0] == 0:
        raise ValueError(f"kNN needs a non-empty bank with one label per feature, got {tuple(train_feats.shape)} "
                         f"features and {tuple(train_labels.shape)} labels")
    bank = F.normalize(train_feats.float(), dim=1)
    k = min(k, bank.shape[0])
    labels = train_labels.long().to(bank.device)
    out = []
    for start in range(0, test_feats.shape[0], chunk):
        q = F.normalize(test_feats[start:start + chunk].float().to(bank.device), dim=1)
        sim, idx = (q @ bank.t()).topk(k, dim=1)
        weights = (sim / temperature).exp()
        scores = torch.zeros(q.shape[0], num_classes, device=bank.device)
        scores.scatter_add_(1, labels[idx], weights)
        out.append(scores)
    return torch.cat(out) if out else torch.zeros(0, num_classes)


def knn_accuracy(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, test_labels: Tensor,
                 num_classes: int, **kw) -> float:
    scores = knn_predict(train_feats, train_labels, test_feats, num_classes, **kw)
    return float((scores.argmax(1).cpu() == test_labels.long().cpu()).float().mean())
