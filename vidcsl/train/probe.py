"""Linear probe on a frozen encoder: the model is selected on validation, never on test.

Features are computed once and cached (default), or live each epoch with training augmentation
(``probe.cached=false``). Features are standardised with training statistics while fitting; the
standardisation is folded into the returned classifier, so it applies to raw encoder features
(``classifier(encoder(x))``) — what the robustness evaluation attacks.

Videos follow the usual linear evaluation of video SSL (e.g. Qian et al. 2021, CVRL; Feichtenhofer et al.
2021): the classifier is fit on per-clip features (each of the ``data.eval_clips`` uniform clips of a training
video is one training sample, or one random augmented clip per video and epoch when live), and a video is
classified by its logits averaged over its clips. A linear classifier commutes with that average, so the
same probe gives both levels: ``clip`` (the centre clip alone) and ``video`` (all clips); it is selected on
the validation split's video-level accuracy. ``probe.json`` reports both levels and the settings the probe
was trained with (``settings``), so an evaluation can tell whether a stored probe matches what it asks for.
See ``docs/evaluation.md``.
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
from torch import nn
from tqdm import tqdm

from vidcsl.models.heads import LinearClassifier

Tensor = torch.Tensor
PROBE_FILE, SUMMARY_FILE = "classifier.pt", "probe.json"


@dataclass
class ProbeResult:
    classifier: LinearClassifier  # applies to raw features
    best_epoch: int  # 0-based epoch chosen on validation
    val_acc: float
    test_acc: float | None
    train_acc: float
    history: list[dict[str, float]] = field(default_factory=list)
    levels: dict[str, dict[str, float | None]] | None = None  # level -> {"val_acc", "test_acc"}

    def summary(self) -> dict[str, Any]:
        return {"best_epoch": self.best_epoch, "val_acc": self.val_acc, "test_acc": self.test_acc,
                "train_acc": self.train_acc, "levels": self.levels, "history": self.history}


@torch.no_grad()
def accuracy(classifier: torch.nn.Module, feats: Tensor, labels: Tensor, batch: int = 4096) -> float:
    if feats.shape[0] == 0:
        return math.nan
    dev = next(classifier.parameters()).device
    hits = sum(int((classifier(feats[i:i + batch].to(dev)).argmax(1).cpu() == labels[i:i + batch]).sum())
               for i in range(0, feats.shape[0], batch))
    return hits / feats.shape[0]


def centre_view(clips: int, crops: int) -> int:
    """Index of the centre crop of clip ``clips // 2`` among the clip-major views of one video."""
    return (clips // 2) * crops + crops // 2


def level_accuracies(classifier: nn.Module, feats: Tensor, labels: Tensor, *, is_video: bool,
                     centre: int = 0) -> dict[str, float]:
    """Accuracy per level from per-view features (N, V, D): ``image``, or ``clip`` (view ``centre``) and
    ``video`` (the mean over views — equal to averaging the logits, the classifier being linear)."""
    if not is_video:
        return {"image": accuracy(classifier, feats[:, 0], labels)}
    return {"clip": accuracy(classifier, feats[:, centre], labels), "video": accuracy(classifier, feats.mean(1), labels)}


def _fold_standardisation(clf: LinearClassifier, mean: Tensor, std: Tensor) -> LinearClassifier:
    """``W((f - mean)/std) + b`` == ``(W/std) f + (b - (W/std) mean)``."""
    out = copy.deepcopy(clf)
    with torch.no_grad():
        w = clf.fc.weight / std.to(clf.fc.weight.device)
        out.fc.weight.copy_(w)
        out.fc.bias.copy_(clf.fc.bias - w @ mean.to(w.device))
    return out


class Standardised(nn.Module):
    """``classifier((f - mean) / std)``: the probe being trained, as a function of raw features."""

    def __init__(self, classifier: nn.Module, mean: Tensor, std: Tensor):
        super().__init__()
        self.classifier = classifier
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, f: Tensor) -> Tensor:
        return self.classifier((f - self.mean) / self.std)


Batches = Callable[[int, nn.Module], Iterable[tuple[Tensor, Tensor]]]


def fit_probe(epoch_batches: Batches, feature_dim: int, num_classes: int, val: tuple[Tensor, Tensor],
              probe_cfg: Any, *, mean: Tensor, std: Tensor, test: tuple[Tensor, Tensor] | None = None,
              device: torch.device | str = "cpu", progress: bool = True) -> ProbeResult:
    """Train a linear classifier on the (raw feature, label) batches ``epoch_batches(epoch, current)`` yields.

    ``current`` maps raw features to logits with the weights being trained (e.g. for an attack on them).
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
    current = Standardised(clf, mean, std)
    best: tuple[float, int, dict, float] | None = None
    history = []
    bar = tqdm(range(probe_cfg.epochs), desc="linear probe", disable=not progress, leave=False)
    for epoch in bar:
        clf.train()
        total, hits, loss_sum = 0, 0, 0.0
        for f, y in epoch_batches(epoch, current):
            y = y.to(device)
            logits = current(f.to(device))
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

    def batches(epoch: int, _current: nn.Module):
        perm = torch.randperm(feats.shape[0], generator=gen)
        for i in range(0, feats.shape[0], probe_cfg.batch_size):
            idx = perm[i:i + probe_cfg.batch_size]
            yield feats[idx], labels[idx]

    return fit_probe(batches, feats.shape[1], num_classes, val, probe_cfg, mean=mean, std=std, test=test,
                     device=device, progress=progress)


def per_clip(batch: Any, is_video: bool) -> tuple[Tensor, Tensor] | None:
    """``(x, y)`` of a loader batch with every view of a sample as its own sample (labels repeated)."""
    if batch is None:
        return None
    x, y = batch[0], torch.as_tensor(batch[1]).long()
    if x.dim() == (6 if is_video else 5):
        views = x.shape[1]
        return x.flatten(0, 1), y.repeat_interleave(views)
    return x, y


def train_live_probe(embed: Callable[[Tensor], Tensor], train_loader: Iterable, feature_dim: int, num_classes: int,
                     val: tuple[Tensor, Tensor], probe_cfg: Any, *, stats: tuple[Tensor, Tensor],
                     test: tuple[Tensor, Tensor] | None = None, device: torch.device | str = "cpu",
                     progress: bool = True, is_video: bool = False) -> ProbeResult:
    """Probe on features of augmented training samples, recomputed every epoch by the frozen ``embed``."""
    device = torch.device(device)

    def batches(epoch: int, _current: nn.Module):
        set_epoch = getattr(getattr(train_loader, "sampler", None), "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)
        for batch in train_loader:
            xy = per_clip(batch, is_video)
            if xy is None:
                continue
            with torch.no_grad():  # (not around the yield: grad mode would stay off in the caller)
                feats = embed(xy[0].to(device)).float()
            yield feats, xy[1]

    return fit_probe(batches, feature_dim, num_classes, val, probe_cfg, mean=stats[0], std=stats[1], test=test,
                     device=device, progress=progress)


# -------------------------------------------------------------------------------------- a run's probe


class AdversarialBNEncoder(nn.Module):
    """The encoder with every dual BatchNorm on its adversarial branch (ACL's evaluation, Jiang et al. 2020)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, x: Tensor) -> Tensor:
        from vidcsl.models.dual_bn import use_adversarial_bn

        with use_adversarial_bn(self.encoder):
            return self.encoder(x)


def probe_settings(cfg: Any, *, is_video: bool, features: str = "clean_bn",
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a probe was trained with: probe settings, view protocol, feature branch (+ ``extra``), as JSON."""
    import json

    from vidcsl.config import config_to_dict

    views = None
    if is_video:
        views = {"clips": cfg.data.eval_clips, "crops": cfg.data.eval_crops, "fit": "per-clip features",
                 "select": "video-level validation accuracy",
                 "clip_level_view": centre_view(cfg.data.eval_clips, cfg.data.eval_crops)}
    out = {"probe": config_to_dict(cfg.probe), "view_protocol": views, "features": features, **(extra or {})}
    return json.loads(json.dumps(out))


@dataclass
class ProbeSetup:
    """A run's frozen feature extractor and the data a probe of it needs (features of val / test per view)."""

    checkpoint: Path
    cfg: Any
    method: nn.Module
    embed: nn.Module  # pixels -> features (the encoder, or its adversarial-BN branch)
    device: torch.device
    data: Any  # vidcsl.data.factory.DataBundle
    features: str  # "clean_bn" | "adversarial_bn"
    val: tuple[Tensor, Tensor]  # (N, V, D) features, labels
    test: tuple[Tensor, Tensor] | None
    centre: int  # the clip-level view

    @property
    def is_video(self) -> bool:
        return bool(self.data.is_video)

    def selection(self, split: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor] | None:
        """Features the probe is selected / tested on: the mean over views (video level) or the image."""
        return None if split is None else (split[0].mean(1), split[1])

    def levels(self, classifier: nn.Module) -> dict[str, dict[str, float | None]]:
        val = level_accuracies(classifier, *self.val, is_video=self.is_video, centre=self.centre)
        test = level_accuracies(classifier, *self.test, is_video=self.is_video, centre=self.centre) \
            if self.test is not None else {}
        return {lvl: {"val_acc": acc, "test_acc": test.get(lvl)} for lvl, acc in val.items()}


def prepare_probe(run_or_checkpoint: str | os.PathLike, overrides: list[str] | tuple[str, ...] = (), *,
                  device: str | None = None, adversarial_bn: bool = False) -> ProbeSetup:
    """Load a run's encoder (``overrides`` change the stored config: ``probe.*``, data loading keys) and
    compute its validation and test features per view."""
    from vidcsl.data.factory import build_datasets
    from vidcsl.train.checkpoint import load_for_evaluation, resolve_checkpoint

    path = resolve_checkpoint(run_or_checkpoint)
    method, cfg, dev = load_for_evaluation(path, overrides, device)
    data = build_datasets(cfg.data, "eval" if cfg.probe.cached else "supervised", views=1, seed=cfg.train.seed)
    embed = AdversarialBNEncoder(method.encoder) if adversarial_bn else method.encoder
    setup = ProbeSetup(path, cfg, method, embed, dev, data, "adversarial_bn" if adversarial_bn else "clean_bn",
                       val=(torch.zeros(0), torch.zeros(0)), test=None,
                       centre=centre_view(cfg.data.eval_clips, cfg.data.eval_crops) if data.is_video else 0)
    setup.val = view_features_of(setup, data.val, "val features")
    setup.test = view_features_of(setup, data.test, "test features") if data.test is not None else None
    return setup


def view_features_of(setup: ProbeSetup, ds: Any, desc: str) -> tuple[Tensor, Tensor]:
    """(N, V, D) features of every view of ``ds``'s samples (V = clips x crops; 1 for images), labels."""
    from vidcsl.train.trainer import make_loader

    loader = make_loader(ds, setup.cfg.probe.batch_size, setup.cfg.data.num_workers)
    return extract_view_features(setup.embed, loader, setup.device, setup.is_video, desc, setup.cfg.train.progress)


def fit_standard_probe(setup: ProbeSetup) -> ProbeResult:
    """The linear probe: cached per-clip features, or live augmented ones (``probe.cached=false``)."""
    from vidcsl.train.trainer import make_loader

    cfg, data, dev = setup.cfg, setup.data, setup.device
    train_views, train_labels = view_features_of(setup, data.train_eval, "train features")
    views = train_views.shape[1]
    train = (train_views.flatten(0, 1), train_labels.repeat_interleave(views))
    val, test = setup.selection(setup.val), setup.selection(setup.test)
    if cfg.probe.cached:
        result = train_linear_probe(train, val, data.num_classes, cfg.probe, test=test, device=dev,
                                    progress=cfg.train.progress)
    else:
        loader = make_loader(data.train, cfg.probe.batch_size, cfg.data.num_workers, shuffle=True,
                             seed=cfg.probe.seed)
        result = train_live_probe(setup.embed, loader, train[0].shape[1], data.num_classes, val, cfg.probe,
                                  stats=(train[0].mean(0), train[0].std(0).clamp_min(1e-6)), test=test,
                                  device=dev, progress=cfg.train.progress, is_video=setup.is_video)
    return result


def save_probe(setup: ProbeSetup, result: ProbeResult, out_dir: str | os.PathLike,
               extra_settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``classifier.pt`` (weights_only-loadable) and ``probe.json``; returns the summary."""
    from vidcsl.config import config_to_dict
    from vidcsl.train.checkpoint import save_checkpoint
    from vidcsl.train.logging import write_json

    result.levels = setup.levels(result.classifier)
    settings = probe_settings(setup.cfg, is_video=setup.is_video, features=setup.features, extra=extra_settings)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / PROBE_FILE, {"model": result.classifier.state_dict(), "num_classes": setup.data.num_classes,
                                       "feature_dim": result.classifier.fc.in_features,
                                       "checkpoint": str(setup.checkpoint), "probe": config_to_dict(setup.cfg.probe)})
    summary = {"checkpoint": str(setup.checkpoint), "num_classes": setup.data.num_classes,
               "settings": settings, **result.summary()}
    write_json(out / SUMMARY_FILE, summary)
    return summary


def run_probe(run_or_checkpoint: str | os.PathLike, overrides: list[str] | tuple[str, ...] = (), *,
              out_dir: str | os.PathLike | None = None, device: str | None = None,
              adversarial_bn: bool = False) -> dict[str, Any]:
    """The ``probe`` command: load a run's encoder, extract features, fit, save ``probe/`` next to the run.

    ``overrides`` change the stored config (``probe.*`` and data loading keys, e.g. ``probe.epochs=20``).
    ``adversarial_bn`` probes the adversarial BatchNorm branch of a dual-BN encoder instead of the clean one.
    Writes ``classifier.pt`` (weights_only-loadable) and ``probe.json``; returns the summary dict.
    """
    setup = prepare_probe(run_or_checkpoint, overrides, device=device, adversarial_bn=adversarial_bn)
    result = fit_standard_probe(setup)
    out = Path(out_dir) if out_dir is not None else setup.checkpoint.parent.parent / "probe"
    return save_probe(setup, result, out)


@torch.no_grad()
def extract_view_features(embed: Callable[[Tensor], Tensor], loader: Iterable, device: torch.device, is_video: bool,
                          desc: str, progress: bool) -> tuple[Tensor, Tensor]:
    """(N, V, D) float32 features of every view of each sample (V = 1 for single views), int64 labels.

    Computed in float32 (no autocast), as the evaluation computes its logits: the probe's reported accuracy
    is then the evaluation's clean accuracy on the same samples.
    """
    if isinstance(embed, nn.Module):
        embed.eval()
    feats, labels = [], []
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        xy = per_clip(batch, is_video)
        if xy is None:
            continue
        views = xy[0].shape[0] // batch[0].shape[0]
        f = embed(xy[0].to(device, non_blocking=True)).flatten(1).float().cpu()
        feats.append(f.view(-1, views, f.shape[-1]))
        labels.append(xy[1][::views])
    if not feats:
        raise ValueError(f"{desc}: the loader gave no usable samples (all batches were bad or empty)")
    if len({f.shape[1] for f in feats}) != 1:
        raise ValueError(f"{desc}: samples have different numbers of views {sorted({f.shape[1] for f in feats})}")
    return torch.cat(feats), torch.cat(labels)


def extract_features_of(encoder: torch.nn.Module, loader: Iterable, device: torch.device, is_video: bool,
                        desc: str, progress: bool) -> tuple[Tensor, Tensor]:
    """View-averaged features (what kNN uses)."""
    from vidcsl.train.knn import extract_features

    encoder.eval()
    return extract_features(encoder, loader, device, is_video=is_video, desc=desc, progress=progress)
