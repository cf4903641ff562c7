"""Linear probe on a frozen encoder (SPEC §6): the model is selected on validation, never on test.

Features are computed once and cached (default), or live each epoch with training augmentation
(``probe.cached=false``). Features are standardised with training statistics while fitting; the
standardisation is folded into the returned classifier, so it applies to raw encoder features
(``classifier(encoder(x))``) — what the robustness evaluation attacks.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from vidcsl.models.heads import LinearClassifier

Tensor = torch.Tensor


@dataclass
class ProbeResult:
    classifier: LinearClassifier  # applies to raw features
    best_epoch: int  # 0-based epoch chosen on validation
    val_acc: float
    test_acc: float | None
    train_acc: float
    history: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"best_epoch": self.best_epoch, "val_acc": self.val_acc, "test_acc": self.test_acc,
                "train_acc": self.train_acc, "history": self.history}


@torch.no_grad()
def accuracy(classifier: torch.nn.Module, feats: Tensor, labels: Tensor, batch: int = 4096) -> float:
    if feats.shape[0] == 0:
        return math.nan
    dev = next(classifier.parameters()).device
    hits = sum(int((classifier(feats[i:i + batch].to(dev)).argmax(1).cpu() == labels[i:i + batch]).sum())
               for i in range(0, feats.shape[0], batch))
    return hits / feats.shape[0]


def _fold_standardisation(clf: LinearClassifier, mean: Tensor, std: Tensor) -> LinearClassifier:
    """``W((f - mean)/std) + b`` == ``(W/std) f + (b - (W/std) mean)``."""
    out = copy.deepcopy(clf)
    with torch.no_grad():
        w = clf.fc.weight / std.to(clf.fc.weight.device)
        out.fc.weight.copy_(w)
        out.fc.bias.copy_(clf.fc.bias - w @ mean.to(w.device))
    return out


def fit_probe(epoch_batches: Callable[[int], Iterable[tuple[Tensor, Tensor]]], feature_dim: int, num_classes: int,
              val: tuple[Tensor, Tensor], probe_cfg: Any, *, mean: Tensor, std: Tensor,
              test: tuple[Tensor, Tensor] | None = None, device: torch.device | str = "cpu",
              progress: bool = True) -> ProbeResult:
    """Train a linear classifier on the (feature, label) batches ``epoch_batches(epoch)`` yields.

    After each epoch the validation accuracy is measured; the best epoch's weights are kept (ties: the
    earlier epoch). Test accuracy is computed once, for that selected classifier only.
    """
    device = torch.device(device)
    torch.manual_seed(probe_cfg.seed)
    clf = LinearClassifier(feature_dim, num_classes).to(device)
    if probe_cfg.optimizer == "adam":
        opt = torch.optim.Adam(clf.parameters(), lr=probe_cfg.lr, weight_decay=probe_cfg.weight_decay)
    else:
        opt = torch.optim.SGD(clf.parameters(), lr=probe_cfg.lr, momentum=probe_cfg.momentum,
                              weight_decay=probe_cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=probe_cfg.epochs)
    mean, std = mean.to(device), std.to(device)
    best: tuple[float, int, dict, float] | None = None
    history = []
    bar = tqdm(range(probe_cfg.epochs), desc="linear probe", disable=not progress, leave=False)
    for epoch in bar:
        clf.train()
        total, hits, loss_sum = 0, 0, 0.0
        for f, y in epoch_batches(epoch):
            f, y = (f.to(device) - mean) / std, y.to(device)
            logits = clf(f)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += y.shape[0]
            hits += int((logits.argmax(1) == y).sum())
            loss_sum += float(loss.detach()) * y.shape[0]
        sched.step()
        clf.eval()
        raw = _fold_standardisation(clf, mean, std)
        val_acc = accuracy(raw, *val)
        train_acc = hits / max(1, total)
        history.append({"epoch": epoch, "train_loss": loss_sum / max(1, total), "train_acc": train_acc,
                        "val_acc": val_acc})
        bar.set_postfix(val_acc=f"{val_acc:.3f}")
        if best is None or val_acc > best[0]:
            best = (val_acc, epoch, copy.deepcopy(raw.state_dict()), train_acc)
    final = LinearClassifier(feature_dim, num_classes).to(device)
    final.load_state_dict(best[2])
    final.eval()
    test_acc = accuracy(final, *test) if test is not None else None
    return ProbeResult(final, best[1], best[0], test_acc, best[3], history)


def train_linear_probe(train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor], num_classes: int, probe_cfg: Any,
                       *, test: tuple[Tensor, Tensor] | None = None, device: torch.device | str = "cpu",
                       progress: bool = True) -> ProbeResult:
    """Probe on cached features: shuffled mini-batches of ``train`` each epoch (seeded by ``probe_cfg.seed``)."""
    feats, labels = train
    if feats.shape[0] != labels.shape[0] or feats.shape[0] == 0:
        raise ValueError(f"probe needs one label per training feature, got {tuple(feats.shape)} and "
                         f"{tuple(labels.shape)}")
    mean, std = feats.mean(0), feats.std(0).clamp_min(1e-6)
    gen = torch.Generator().manual_seed(probe_cfg.seed)

    def batches(epoch: int):
        perm = torch.randperm(feats.shape[0], generator=gen)
        for i in range(0, feats.shape[0], probe_cfg.batch_size):
            idx = perm[i:i + probe_cfg.batch_size]
            yield feats[idx], labels[idx]

    return fit_probe(batches, feats.shape[1], num_classes, val, probe_cfg, mean=mean, std=std, test=test,
                     device=device, progress=progress)


def train_live_probe(embed: Callable[[Tensor], Tensor], train_loader: Iterable, feature_dim: int, num_classes: int,
                     val: tuple[Tensor, Tensor], probe_cfg: Any, *, stats: tuple[Tensor, Tensor],
                     test: tuple[Tensor, Tensor] | None = None, device: torch.device | str = "cpu",
                     progress: bool = True) -> ProbeResult:
    """Probe on features of augmented training samples, recomputed every epoch by the frozen ``embed``."""
    device = torch.device(device)

    def batches(epoch: int):
        set_epoch = getattr(getattr(train_loader, "sampler", None), "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)
        for batch in train_loader:
            if batch is None:
                continue
            with torch.no_grad():
                yield embed(batch[0].to(device)).float(), torch.as_tensor(batch[1]).long()

    return fit_probe(batches, feature_dim, num_classes, val, probe_cfg, mean=stats[0], std=stats[1], test=test,
                     device=device, progress=progress)


def run_probe(run_or_checkpoint: str | os.PathLike, overrides: list[str] | tuple[str, ...] = (), *,
              out_dir: str | os.PathLike | None = None, device: str | None = None) -> dict[str, Any]:
    """The ``probe`` command: load a run's encoder, extract features, fit, save ``probe/`` next to the run.

    ``overrides`` change the stored config (``probe.*`` and data loading keys, e.g. ``probe.epochs=20``).
    Writes ``classifier.pt`` (weights_only-loadable) and ``probe.json``; returns the summary dict.
    """
    from vidcsl.config import config_to_dict
    from vidcsl.data.factory import build_datasets
    from vidcsl.train.checkpoint import load_for_evaluation, resolve_checkpoint, save_checkpoint
    from vidcsl.train.logging import write_json
    from vidcsl.train.trainer import make_loader

    path = resolve_checkpoint(run_or_checkpoint)
    method, cfg, dev = load_for_evaluation(path, overrides, device)
    data = build_datasets(cfg.data, "eval" if cfg.probe.cached else "supervised", views=1, seed=cfg.train.seed)
    encoder = method.encoder
    bs, workers, progress = cfg.probe.batch_size, cfg.data.num_workers, cfg.train.progress

    def features(ds, name):
        return extract_features_of(encoder, make_loader(ds, bs, workers), dev, data.is_video, name, progress)

    val = features(data.val, "val features")
    test = features(data.test, "test features") if data.test is not None else None
    if cfg.probe.cached:
        train = features(data.train_eval, "train features")
        result = train_linear_probe(train, val, data.num_classes, cfg.probe, test=test, device=dev,
                                    progress=progress)
    else:
        train = features(data.train_eval, "train features (statistics)")
        loader = make_loader(data.train, bs, workers, shuffle=True, seed=cfg.probe.seed)
        result = train_live_probe(encoder, loader, train[0].shape[1], data.num_classes, val, cfg.probe,
                                  stats=(train[0].mean(0), train[0].std(0).clamp_min(1e-6)), test=test,
                                  device=dev, progress=progress)
    out = Path(out_dir) if out_dir is not None else path.parent.parent / "probe"
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / "classifier.pt", {"model": result.classifier.state_dict(),
                                            "num_classes": data.num_classes, "feature_dim": train[0].shape[1],
                                            "checkpoint": str(path), "probe": config_to_dict(cfg.probe)})
    summary = {"checkpoint": str(path), "num_classes": data.num_classes, **result.summary()}
    write_json(out / "probe.json", summary)
    return summary


def extract_features_of(encoder: torch.nn.Module, loader: Iterable, device: torch.device, is_video: bool,
                        desc: str, progress: bool) -> tuple[Tensor, Tensor]:
    from vidcsl.train.knn import extract_features

    encoder.eval()
    return extract_features(encoder, loader, device, is_video=is_video, desc=desc, progress=progress)
