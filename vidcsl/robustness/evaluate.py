"""``vidcsl evaluate RUN_OR_CHECKPOINT``: every robustness number of one trained model (SPEC §6).

The evaluated classifier maps pixels in [0, 1] to logits, so attacks and corruptions act on pixels:

* a supervised run is its own classifier (encoder + its trained linear layer);
* any other run is its frozen encoder + a linear probe (``RUN/probe/classifier.pt``, trained with
  ``vidcsl.train.probe.run_probe`` when missing or older than the checkpoint).

On one seeded test subset it measures clean accuracy, robust accuracy over an L-inf and an L2 epsilon
sweep (PGD, alpha = alpha_factor * eps / steps), video multi-clip clean accuracy (logits averaged over
K clips), accuracy under every corruption and severity (mean per family), representation metrics
(alignment on two augmented views, uniformity, inter/intra-class distance ratio, sensitivity to random
and adversarial perturbations) and the false-negative detector's precision / recall when the run logged
them. Writes ``eval.json``, CSV tables, PNG plots and ``report.md`` into ``RUN/eval/``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

Tensor = torch.Tensor
EVAL_DIR = "eval"


@dataclass
class EvalConfig:
    """What to measure and on how many samples (small subsets keep the CPU demo in minutes)."""

    n_samples: int | None = 1000  # seeded test subset for clean / robust accuracy (None = whole split)
    norms: list[str] = field(default_factory=lambda: ["linf", "l2"])
    linf_eps_255: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.0, 4.0, 8.0])  # L-inf eps x 255
    l2_eps: list[float] = field(default_factory=lambda: [0.0, 0.125, 0.25, 0.5])
    pgd_steps: int = 20
    alpha_factor: float = 2.5  # step alpha = alpha_factor * eps / pgd_steps
    random_start: bool = True
    autoattack: bool = False  # images only; slow
    autoattack_eps_255: float = 8.0
    corruptions: list[str] | None = None  # None = every corruption that applies (temporal ones for clips)
    severities: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    n_corruption: int | None = 500  # first samples of the subset used per corruption and severity
    video_clips: int = 3  # K uniform clips per video for multi-clip accuracy
    n_repr: int = 512  # samples for the representation metrics
    sensitivity_eps_255: float = 8.0  # L-inf radius of the random / adversarial perturbation
    sensitivity_steps: int = 10
    batch_size: int = 128
    seed: int = 0
    probe: list[str] = field(default_factory=list)  # overrides for a probe trained here, e.g. probe.epochs=10
    device: str = "auto"
    progress: bool = True

    def validate(self) -> None:
        """Raise ValueError naming the first bad key."""
        if self.n_samples is not None and self.n_samples < 1:
            raise ValueError(f"eval key 'n_samples' must be >= 1 or null, got {self.n_samples}")
        bad = [n for n in self.norms if n not in ("linf", "l2")]
        if bad or not self.norms:
            raise ValueError(f"eval key 'norms' must list 'linf' and/or 'l2', got {self.norms}")
        for key in ("linf_eps_255", "l2_eps"):
            values = getattr(self, key)
            if any(not math.isfinite(v) or v < 0 for v in values):
                raise ValueError(f"eval key {key!r} must hold finite eps >= 0, got {values}")
        if self.pgd_steps < 1 or self.sensitivity_steps < 1:
            raise ValueError("eval keys 'pgd_steps' and 'sensitivity_steps' must be >= 1")
        if not self.alpha_factor > 0:
            raise ValueError(f"eval key 'alpha_factor' must be > 0, got {self.alpha_factor}")
        if any(s not in (1, 2, 3, 4, 5) for s in self.severities):
            raise ValueError(f"eval key 'severities' must be values in 1..5, got {self.severities}")
        for key in ("n_corruption", "video_clips", "n_repr", "batch_size"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"eval key {key!r} must be >= 1, got {value}")
        if self.corruptions is not None:
            from vidcsl.robustness.corruptions import CORRUPTIONS

            unknown = [c for c in self.corruptions if c not in CORRUPTIONS]
            if unknown:
                raise ValueError(f"eval key 'corruptions' names unknown corruptions {unknown}; "
                                 f"known: {sorted(CORRUPTIONS)}")

    def fingerprint(self) -> str:
        """Hash of the settings that change numbers (not device / progress): tells a stale eval.json."""
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("device", "progress")}
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def eval_config_from_dict(raw: dict[str, Any] | None, overrides: list[str] | tuple[str, ...] = ()) -> EvalConfig:
    """An :class:`EvalConfig` from a mapping plus ``key=value`` overrides (``eval.`` prefix optional)."""
    from vidcsl.config import _build, apply_overrides

    raw = dict(raw or {})
    fixed = [o.removeprefix("eval.") for o in overrides]
    cfg = _build(EvalConfig, apply_overrides(raw, fixed), "eval.")
    cfg.validate()
    return cfg


# ------------------------------------------------------------------------------------------ the model


class PixelClassifier(nn.Module):
    """``head(encoder(x))``: pixels in [0, 1] -> logits (what attacks and corruptions act on)."""

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))


@dataclass
class LoadedModel:
    classifier: PixelClassifier
    encoder: nn.Module
    cfg: Any  # vidcsl.config.Config of the run
    kind: str  # "supervised" | "linear_probe"
    checkpoint: Path
    run_dir: Path
    probe: dict[str, Any] | None


def load_model(run_or_checkpoint: str | os.PathLike, *, probe_overrides: list[str] | tuple[str, ...] = (),
               device: torch.device | str = "cpu", progress: bool = True) -> LoadedModel:
    """The run's pixel classifier: the supervised model, or the encoder + its (possibly new) linear probe."""
    from vidcsl.models.heads import LinearClassifier
    from vidcsl.train.checkpoint import load_checkpoint, load_trained_method, resolve_checkpoint
    from vidcsl.train.probe import run_probe

    path = resolve_checkpoint(run_or_checkpoint)
    run_dir = path.parent.parent
    method, cfg, _ = load_trained_method(path)
    if hasattr(method, "classifier") and cfg.method.name == "supervised":
        clf = PixelClassifier(method.encoder, method.classifier)
        return LoadedModel(clf.to(device).eval(), method.encoder, cfg, "supervised", path, run_dir, None)
    probe_dir = run_dir / "probe"
    clf_path, summary_path = probe_dir / "classifier.pt", probe_dir / "probe.json"
    stale = not clf_path.is_file() or not summary_path.is_file() or \
        summary_path.stat().st_mtime < path.stat().st_mtime
    if stale:
        run_probe(path, [*probe_overrides, f"train.progress={str(progress).lower()}"], out_dir=probe_dir,
                  device=str(device))
    state = load_checkpoint(clf_path)
    head = LinearClassifier(int(state["feature_dim"]), int(state["num_classes"]))
    head.load_state_dict(state["model"])
    summary = json.loads(summary_path.read_text())
    summary.pop("history", None)
    clf = PixelClassifier(method.encoder, head)
    return LoadedModel(clf.to(device).eval(), method.encoder, cfg, "linear_probe", path, run_dir, summary)


# ------------------------------------------------------------------------------------------- the data


def _subset_indices(n_total: int, n: int | None, seed: int) -> list[int]:
    if n is None or n >= n_total:
        return list(range(n_total))
    return sorted(np.random.default_rng(seed).permutation(n_total)[:n].tolist())


def load_tensors(ds: Any, indices: list[int], batch_size: int, *, desc: str, progress: bool) -> tuple[Tensor, Tensor]:
    """Stack ``ds[indices]`` into (x, y) tensors; bad (None) samples are dropped."""
    from torch.utils.data import Subset

    from vidcsl.train.trainer import make_loader

    xs, ys = [], []
    for batch in tqdm(make_loader(Subset(ds, indices), batch_size), desc=desc, disable=not progress, leave=False):
        if batch is None:
            continue
        xs.append(batch[0] if not isinstance(batch[0], (list, tuple)) else torch.stack(list(batch[0]), 1))
        ys.append(torch.as_tensor(batch[1]).long())
    if not xs:
        raise ValueError(f"{desc}: no usable samples in the evaluation split")
    return torch.cat(xs), torch.cat(ys)


def eval_data(cfg: Any, ecfg: EvalConfig) -> dict[str, Any]:
    """The evaluation subset: single-view tensors (x, y), multi-clip tensors for videos, and two-view pairs.

    Videos are read as K = ``video_clips`` uniform clips with one centre crop; the single-clip tensor is
    the middle clip, so single- and multi-clip accuracies see the same videos.
    """
    from vidcsl.config import config_from_dict, config_to_dict
    from vidcsl.data.factory import build_datasets

    data_cfg = config_from_dict(config_to_dict(cfg)).data
    data_cfg.limit_train, data_cfg.limit_eval = None, None
    is_video = data_cfg.kind not in ("embedded_digits", "cifar10", "cifar100", "image_folder")
    if is_video:
        data_cfg.eval_clips, data_cfg.eval_crops = ecfg.video_clips, 1
    bundle = build_datasets(data_cfg, "eval", seed=cfg.train.seed)
    split, ds = ("test", bundle.test) if bundle.test is not None else ("val", bundle.val)
    idx = _subset_indices(len(ds), ecfg.n_samples, ecfg.seed)
    x, y = load_tensors(ds, idx, ecfg.batch_size, desc=f"{split} subset", progress=ecfg.progress)
    multi = None
    if is_video and x.dim() == 6:  # (N, K, C, T, H, W)
        multi, x = x, x[:, x.shape[1] // 2].contiguous()
    data_cfg.clip_sampler = "two_clip"  # positives for alignment, whatever sampler the run trained with
    pairs_bundle = build_datasets(data_cfg, "contrastive", seed=cfg.train.seed)
    pidx = _subset_indices(len(pairs_bundle.train), ecfg.n_repr, ecfg.seed + 1)
    pairs, _ = load_tensors(pairs_bundle.train, pidx, ecfg.batch_size, desc="augmented pairs",
                            progress=ecfg.progress)
    return {"x": x, "y": y, "multi": multi, "pairs": pairs, "split": split, "is_video": is_video,
            "num_classes": bundle.num_classes, "class_names": bundle.class_names}


# ------------------------------------------------------------------------------------------ measures


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int, device: torch.device) -> Tensor:
    """Logits of ``model`` on ``x`` in batches (on CPU, float32)."""
    out = [model(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out)


def accuracy_of(logits: Tensor, y: Tensor) -> float:
    """Fraction correct as hits / n (the same arithmetic as the robust accuracy)."""
    return int((logits.argmax(1) == y).sum()) / y.shape[0]


def multiclip_accuracy(model: nn.Module, clips: Tensor, y: Tensor, batch_size: int, device: torch.device) -> float:
    """Accuracy of logits averaged over the K clips of each video: ``clips`` is (N, K, C, T, H, W)."""
    n, k = clips.shape[:2]
    logits = predict(model, clips.flatten(0, 1), batch_size, device).view(n, k, -1).mean(1)
    return accuracy_of(logits, y)


def robust_accuracy(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str, steps: int,
                    alpha_factor: float, random_start: bool, batch_size: int, device: torch.device,
                    seed: int) -> float:
    """Accuracy on PGD-``steps`` examples (alpha = alpha_factor * eps / steps).

    At eps = 0 no perturbation exists, so the clean inputs are scored (the L2 projection is 0/0 there).
    """
    from vidcsl.attacks.pgd import pgd

    if eps == 0:
        return accuracy_of(predict(model, x, batch_size, device), y)
    gen = torch.Generator(device=device).manual_seed(seed)
    hits = 0
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        adv = pgd(model, xb, yb, eps=eps, alpha=alpha_factor * eps / steps, steps=steps, norm=norm,
                  random_start=random_start, generator=gen)
        with torch.no_grad():
            hits += int((model(adv).argmax(1) == yb).sum())
    return hits / x.shape[0]


def corruption_accuracy(model: nn.Module, x: Tensor, y: Tensor, ecfg: EvalConfig, is_video: bool,
                        device: torch.device) -> dict[str, Any]:
    """Accuracy per corruption and severity, the mean per family and over everything."""
    from vidcsl.robustness.corruptions import CORRUPTIONS, IMAGE_CORRUPTIONS, VIDEO_CORRUPTIONS, corrupt

    names = ecfg.corruptions if ecfg.corruptions is not None else (VIDEO_CORRUPTIONS if is_video
                                                                   else IMAGE_CORRUPTIONS)
    names = [n for n in names if is_video or not CORRUPTIONS[n].clips_only]
    if is_video and x.shape[2] < 2:
        names = [n for n in names if not CORRUPTIONS[n].clips_only]
    n = x.shape[0] if ecfg.n_corruption is None else min(ecfg.n_corruption, x.shape[0])
    x, y = x[:n], y[:n]
    rows = []
    jobs = [(c, s) for c in names for s in ecfg.severities]
    for name, sev in tqdm(jobs, desc="corruptions", disable=not ecfg.progress, leave=False):
        hits = 0
        for i in range(0, n, ecfg.batch_size):
            xc = corrupt(x[i:i + ecfg.batch_size], name, sev, seed=ecfg.seed + i)
            hits += int((predict(model, xc, ecfg.batch_size, device).argmax(1) == y[i:i + ecfg.batch_size]).sum())
        rows.append({"name": name, "family": CORRUPTIONS[name].family, "severity": sev, "acc": hits / n})
    family: dict[str, list[float]] = {}
    per_name: dict[str, list[float]] = {}
    for r in rows:
        family.setdefault(r["family"], []).append(r["acc"])
        per_name.setdefault(r["name"], []).append(r["acc"])
    mean = lambda v: float(sum(v) / len(v)) if v else math.nan  # noqa: E731
    return {"n_samples": n, "per_corruption": rows, "corruption_mean": {k: mean(v) for k, v in per_name.items()},
            "family_mean": {k: mean(v) for k, v in family.items()}, "mean": mean([r["acc"] for r in rows])}


# Representation metrics (SPEC §6, ``vidcsl.robustness.metrics``) on L2-normalised backbone features: the
# same space for SL and CSL (SL has no projection head).


def cosine_histogram(z: Tensor, bins: int = 40) -> dict[str, list[float]]:
    """Histogram of pairwise cosine similarities (a != b): how spread the representation is."""
    n = z.shape[0]
    cos = (z @ z.t())[~torch.eye(n, dtype=torch.bool)].clamp(-1, 1)
    counts = torch.histc(cos, bins=bins, min=-1.0, max=1.0)
    edges = torch.linspace(-1, 1, bins + 1)
    return {"edges": [round(float(e), 4) for e in edges], "counts": [int(c) for c in counts]}


def batched_sensitivity(encoder: nn.Module, x: Tensor, ecfg: EvalConfig, kind: str, device: torch.device) -> float:
    """``metrics.sensitivity`` per batch of ``batch_size``, averaged weighted by batch size (memory bound)."""
    from vidcsl.robustness.metrics import sensitivity

    gen = torch.Generator(device=device).manual_seed(ecfg.seed)
    total = 0.0
    for i in range(0, x.shape[0], ecfg.batch_size):
        xb = x[i:i + ecfg.batch_size].to(device)
        total += xb.shape[0] * sensitivity(encoder, xb, eps=ecfg.sensitivity_eps_255 / 255, kind=kind,
                                           steps=ecfg.sensitivity_steps, generator=gen)
    return total / x.shape[0]


def representation_metrics(encoder: nn.Module, x: Tensor, y: Tensor, pairs: Tensor, ecfg: EvalConfig,
                           device: torch.device) -> dict[str, Any]:
    """Alignment (augmented pairs), uniformity, inter/intra ratio, cosine histogram, sensitivities."""
    from vidcsl.robustness.metrics import alignment, class_distance_ratio, uniformity

    bs = ecfg.batch_size
    xs, ys = x[:ecfg.n_repr], y[:ecfg.n_repr]
    z = F.normalize(predict(encoder, xs, bs, device), dim=1)
    z1 = F.normalize(predict(encoder, pairs[:, 0], bs, device), dim=1)
    z2 = F.normalize(predict(encoder, pairs[:, 1], bs, device), dim=1)
    try:
        ratio = class_distance_ratio(z, ys)
    except ValueError:  # too few samples for a same-class and a different-class pair
        ratio = math.nan
    return {"n_samples": int(z.shape[0]), "n_pairs": int(z1.shape[0]), "alignment": alignment(z1, z2),
            "uniformity": uniformity(z), "inter_intra_ratio": ratio,
            "sensitivity_random": batched_sensitivity(encoder, xs, ecfg, "random", device),
            "sensitivity_adversarial": batched_sensitivity(encoder, xs, ecfg, "adversarial", device),
            "sensitivity_eps_255": ecfg.sensitivity_eps_255, "cosine_hist": cosine_histogram(z)}


def detector_stats(run_dir: Path) -> dict[str, float] | None:
    """Last logged false-negative precision / recall of the run (None when it logged none)."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return None
    from vidcsl.train.logging import read_metrics

    last: dict[str, float] = {}
    for row in read_metrics(run_dir):
        for key in ("fn_precision", "fn_recall", "fn_found_per_row"):
            if row["name"] == f"train/{key}" and math.isfinite(row["value"]):
                last[key] = row["value"]
    return {k.removeprefix("fn_"): v for k, v in last.items()} if "fn_precision" in last else None


# ---------------------------------------------------------------------------------------------- driver


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def evaluate_run(run_or_checkpoint: str | os.PathLike, ecfg: EvalConfig | None = None, *,
                 out_dir: str | os.PathLike | None = None, write_report: bool = True) -> dict[str, Any]:
    """Measure everything for one run; write ``eval.json`` (+ CSV, PNG, report.md) and return the dict."""
    ecfg = ecfg or EvalConfig()
    ecfg.validate()
    start = time.perf_counter()
    device = select_device(ecfg.device)
    torch.manual_seed(ecfg.seed)
    model = load_model(run_or_checkpoint, probe_overrides=ecfg.probe, device=device, progress=ecfg.progress)
    cfg = model.cfg
    data = eval_data(cfg, ecfg)
    x, y, clf, bs = data["x"], data["y"], model.classifier, ecfg.batch_size
    result: dict[str, Any] = {
        "run": str(model.run_dir), "checkpoint": str(model.checkpoint), "model_kind": model.kind,
        "method": cfg.method.name, "fn_detector": cfg.fn.detector, "encoder": cfg.model.encoder,
        "dataset": cfg.data.kind, "is_video": data["is_video"], "split": data["split"],
        "n_samples": int(x.shape[0]), "num_classes": data["num_classes"], "probe": model.probe,
    }
    result["clean_acc"] = accuracy_of(predict(clf, x, bs, device), y)
    result["clean_acc_multiclip"] = None
    if data["multi"] is not None:
        result["clean_acc_multiclip"] = multiclip_accuracy(clf, data["multi"], y, bs, device)
        result["video_clips"] = int(data["multi"].shape[1])
    sweeps = {"linf": [e / 255 for e in ecfg.linf_eps_255], "l2": list(ecfg.l2_eps)}
    robust: dict[str, list[dict[str, float]]] = {}
    jobs = [(norm, eps) for norm in ecfg.norms for eps in sweeps[norm]]
    for k, (norm, eps) in enumerate(tqdm(jobs, desc=f"PGD-{ecfg.pgd_steps} sweep", disable=not ecfg.progress,
                                         leave=False)):
        acc = robust_accuracy(clf, x, y, eps=eps, norm=norm, steps=ecfg.pgd_steps, alpha_factor=ecfg.alpha_factor,
                              random_start=ecfg.random_start, batch_size=bs, device=device, seed=ecfg.seed + k)
        entry = {"eps": eps, "acc": acc}
        if norm == "linf":
            entry["eps_255"] = eps * 255
        robust.setdefault(norm, []).append(entry)
    result["robust"] = robust
    result["autoattack"] = None
    if ecfg.autoattack and not data["is_video"]:
        from vidcsl.attacks.autoattack import autoattack_accuracy

        eps = ecfg.autoattack_eps_255 / 255
        result["autoattack"] = {"eps_255": ecfg.autoattack_eps_255, "acc": autoattack_accuracy(
            clf, x.to(device), y.to(device), eps=eps, n_classes=data["num_classes"], seed=ecfg.seed,
            batch_size=bs)}
    result["corruptions"] = corruption_accuracy(clf, x, y, ecfg, data["is_video"], device)
    result["representation"] = representation_metrics(model.encoder, x, y, data["pairs"], ecfg, device)
    result["fn_detector_stats"] = detector_stats(model.run_dir)
    result["eval_config"] = dataclasses.asdict(ecfg)
    result["eval_fingerprint"] = ecfg.fingerprint()
    result["seconds"] = time.perf_counter() - start
    out = Path(out_dir) if out_dir is not None else model.run_dir / EVAL_DIR
    if write_report:
        write_run_report(result, out)
    else:
        from vidcsl.train.logging import write_json

        write_json(out / "eval.json", result)
    return result


# ---------------------------------------------------------------------------------------------- report


def fmt(value: Any, digits: int = 4) -> str:
    """A number as the report prints it (``n/a`` for None / NaN): JSON and Markdown must agree."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(value)
    return f"{float(value):.{digits}f}"


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub Markdown table; cells are printed with :func:`fmt` unless already strings."""
    cell = lambda v: v if isinstance(v, str) else fmt(v)  # noqa: E731
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(path: Path, headers: list[str], rows: list[list[Any]]) -> None:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(headers)
        w.writerows([["" if v is None else v for v in row] for row in rows])


def robust_rows(result: dict[str, Any]) -> list[list[Any]]:
    """(norm, eps, eps x 255 or '', accuracy) rows of the PGD sweep."""
    return [[norm, e["eps"], e.get("eps_255", ""), e["acc"]] for norm, entries in result["robust"].items()
            for e in entries]


def _plots(result: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    norms = list(result["robust"])
    fig, axes = plt.subplots(1, len(norms), figsize=(4.5 * len(norms), 3.5), squeeze=False)
    for ax, norm in zip(axes[0], norms):
        entries = result["robust"][norm]
        xs = [e["eps_255"] if norm == "linf" else e["eps"] for e in entries]
        ax.plot(xs, [e["acc"] for e in entries], marker="o")
        ax.set_xlabel("eps x 255 (L-inf)" if norm == "linf" else "eps (L2)")
        ax.set_ylabel("robust accuracy")
        ax.set_ylim(0, 1)
        ax.set_title(f"PGD, {norm}")
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_eps.png", dpi=100)
    plt.close(fig)
    names.append("accuracy_vs_eps.png")
    cm = result["corruptions"]["corruption_mean"]
    if cm:
        fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(cm)), 3.5))
        ax.bar(list(cm), list(cm.values()))
        ax.axhline(result["clean_acc"], color="k", ls="--", lw=1, label="clean")
        ax.set_ylabel("accuracy (mean over severities)")
        ax.set_ylim(0, 1)
        ax.tick_params(axis="x", rotation=70)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "corruptions.png", dpi=100)
        plt.close(fig)
        names.append("corruptions.png")
    hist = result["representation"]["cosine_hist"]
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    ax.stairs(hist["counts"], hist["edges"], fill=True)
    ax.set_xlabel("cosine similarity of two test samples")
    ax.set_ylabel("pairs")
    ax.set_title(f"uniformity {fmt(result['representation']['uniformity'], 3)}")
    fig.tight_layout()
    fig.savefig(out / "uniformity_hist.png", dpi=100)
    plt.close(fig)
    names.append("uniformity_hist.png")
    return names


def write_run_report(result: dict[str, Any], out: str | os.PathLike) -> Path:
    """``eval.json``, ``robust.csv``, ``corruptions.csv``, ``representation.csv``, PNGs and ``report.md``."""
    from vidcsl.train.logging import write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "eval.json", result)
    rob_h = ["norm", "eps", "eps_255", "acc"]
    write_csv(out / "robust.csv", rob_h, robust_rows(result))
    cor = result["corruptions"]
    cor_h = ["name", "family", "severity", "acc"]
    cor_rows = [[r[k] for k in cor_h] for r in cor["per_corruption"]]
    write_csv(out / "corruptions.csv", cor_h, cor_rows)
    rep = result["representation"]
    rep_keys = ["alignment", "uniformity", "inter_intra_ratio", "sensitivity_random", "sensitivity_adversarial"]
    write_csv(out / "representation.csv", ["metric", "value"], [[k, rep[k]] for k in rep_keys])
    plots = _plots(result, out)
    kind = "supervised model" if result["model_kind"] == "supervised" else "frozen encoder + linear probe"
    lines = [f"# Evaluation of `{result['run']}`", "",
             f"Method `{result['method']}` (FN detector `{result['fn_detector']}`), encoder `{result['encoder']}`, "
             f"dataset `{result['dataset']}`; evaluated as {kind} on {result['n_samples']} samples of the "
             f"{result['split']} split. Numbers as measured on this subset.", "",
             "## Accuracy", "",
             markdown_table(["clean", "clean (multi-clip)", "mean corruption"],
                            [[result["clean_acc"], result["clean_acc_multiclip"], cor["mean"]]]), "",
             f"## Robust accuracy (PGD-{result['eval_config']['pgd_steps']}, "
             f"alpha = {result['eval_config']['alpha_factor']} eps / steps)", "",
             markdown_table(rob_h, robust_rows(result)), ""]
    if result.get("autoattack"):
        lines += [f"AutoAttack (L-inf, eps {fmt(result['autoattack']['eps_255'], 1)}/255): "
                  f"{fmt(result['autoattack']['acc'])}", ""]
    lines += [f"## Corruptions ({cor['n_samples']} samples; mean over severities)", "",
              markdown_table(["family", "acc"], [[k, v] for k, v in cor["family_mean"].items()]), "",
              markdown_table(["corruption", "acc"], [[k, v] for k, v in cor["corruption_mean"].items()]), "",
              "## Representation (L2-normalised backbone features)", "",
              markdown_table(["metric", "value"], [[k, rep[k]] for k in rep_keys]), ""]
    det = result.get("fn_detector_stats")
    if det:
        lines += ["## False-negative detector (last training log)", "",
                  markdown_table(["precision", "recall"], [[det.get("precision"), det.get("recall")]]), ""]
    lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    (out / "report.md").write_text("\n".join(lines))
    return out / "report.md"


def load_eval(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """A run's ``eval/eval.json`` or None when absent / unreadable."""
    path = Path(run_dir) / EVAL_DIR / "eval.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
