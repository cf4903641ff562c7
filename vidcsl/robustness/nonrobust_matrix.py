"""``vidcsl nonrobust``: robust / non-robust feature datasets across paradigms (Ilyas et al. 2019; Li et al. 2023).

The experiment, step by step (docs/nonrobust.md has the protocol and its reading):

1. **Sources.** Each *standard* source run (SL, CSL, CSL+FN, ... : any trained run) gives a classifier
   (an SL run's own head; any other run's frozen encoder + a linear probe fitted on the real training
   split, selected on validation) and an encoder. The *robust* source (``--robust-run``; an adversarially
   trained SL model, ``supervised_at``, or ACL / RoCL) gives the encoder of the robust set. Every source's
   clean and robust accuracy on the real test split is measured first.
2. **Refusal.** D_R needs a robust encoder: a robust source whose measured robust accuracy is below
   ``robust_threshold`` is refused (user error, exit 2) unless ``force``; without a robust source no D_R is
   built, and the report says so (it is never silently built from a standard run).
3. **Sets** (``vidcsl.robustness.nonrobust``), from ``n_train`` real training images each:
   ``nr`` D_NR (matching through a standard encoder within an L2 ball), ``r`` D_R (unconstrained matching
   through the robust encoder), ``det`` / ``rand`` D_det / D_rand (targeted PGD on a standard classifier,
   relabelled to the target). Each is cached as .npz + .json provenance; a rerun with the same recipe
   and the same source checkpoint reuses it.
4. **Targets.** Every target paradigm (study variant names: ``sl``, ``csl``, ``csl_fn`` = the CSL+FN
   detector ``fn_detector``, ``byol``, ...) is trained from scratch on every set with one shared recipe
   (the target config: epochs, batch size, augmentations, optimiser), the non-SL ones then get a linear
   probe fitted on the same synthetic set (epoch selected on the real validation split, never test).
5. **Matrix.** Each (set, target) model on the real test split: clean accuracy (usefulness) and robust
   accuracy under PGD (``eval_norm``, ``eval_eps``; ``vidcsl.attacks.robust_sweep``). Sanity lines:
   D_det / D_rand clean accuracy of the paradigm that built them vs chance (clearly above = more than
   3 standard errors above). Report: ``vidcsl.report.nonrobust_report``.

Two ways in: a matrix YAML (``configs/nonrobust_demo.yaml``: sources given as training configs, trained
here when missing), or one trained RUN (its own config is the targets' recipe).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vidcsl.errors import ConfigError, UsageError
from vidcsl.schema import bounded, check_fields, choices

SET_KINDS = ("nr", "r", "det", "rand")
SET_LABELS = {"nr": "D_NR", "r": "D_R", "det": "D_det", "rand": "D_rand"}
TARGET_ALIASES = {"csl_fn": None}  # resolved to csl_fn_<fn_detector>
IMAGE_KINDS = ("embedded_digits", "cifar10", "cifar100", "image_folder")


@dataclass
class Source:
    """A source model: a trained ``run`` folder, or a training ``config`` (+ ``overrides``) trained here."""

    name: str = ""
    run: str | None = None
    config: str | None = None
    overrides: list[str] = field(default_factory=list)


@dataclass
class MatrixConfig:
    """Settings of ``vidcsl nonrobust`` (YAML keys; ``key=value`` on the command line)."""

    name: str = "nonrobust"
    out: str = "runs/nonrobust"
    device: str = "auto"
    seed: int = bounded(0, ge=0)
    sources: list[Source] = field(default_factory=list)  # standard sources: D_NR, D_det, D_rand
    robust_source: Source | None = None  # D_R
    sets: list[str] = field(default_factory=lambda: list(SET_KINDS))
    targets: list[str] = field(default_factory=lambda: ["sl", "csl", "csl_fn", "byol"])
    target_config: str | None = None  # the targets' shared recipe (default: the first source's config)
    target_overrides: list[str] = field(default_factory=list)
    epochs: int | None = bounded(None, ge=1)  # of every target (default: the recipe's)
    fn_detector: str = choices("threshold", "topk", "oracle", default="topk")  # of csl_fn
    fn_topk: int = bounded(5, ge=1)
    fn_threshold: float = bounded(0.8, ge=-1, le=1)
    n_train: int = bounded(1000, ge=2)  # real training images each set is built from
    match_steps: int = bounded(1000, ge=0)  # D_R / D_NR: normalised L2 steps (Ilyas et al.: 1000 x 0.1)
    match_step_size: float = bounded(0.1, gt=0)
    # L2 ball of D_NR around its starting image: this project's variant, which keeps x' looking like x0;
    # None = Ilyas et al.'s D_NR, the same unconstrained matching as D_R through a standard encoder
    nr_eps: float | None = bounded(0.5, gt=0)
    attack_steps: int = bounded(100, ge=0)  # D_det / D_rand: targeted L2 PGD (Ilyas et al.: 100 x 0.1, eps 0.5)
    attack_step_size: float = bounded(0.1, gt=0)
    attack_eps: float = bounded(0.5, gt=0)
    eval_norm: str = choices("l2", "linf", default="l2")
    eval_eps: float = bounded(0.25, gt=0)  # robust accuracy of every cell and of the sources (linf: x 255)
    eval_steps: int = bounded(20, ge=1)
    n_eval: int | None = bounded(None, ge=1)  # real test samples (default: the whole test split)
    robust_threshold: float = bounded(0.3, ge=0, le=1)  # robust accuracy a D_R source needs
    force: bool = False  # build D_R from a source below robust_threshold anyway
    probe_epochs: int | None = bounded(None, ge=1)  # probes of sources and targets (default: the recipe's)
    batch_size: int = bounded(128, ge=1)  # building the sets and evaluating
    progress: bool = True
    source_file: str | None = None  # where the YAML was read from

    @property
    def eps(self) -> float:
        """``eval_eps`` in pixel units."""
        return self.eval_eps / 255 if self.eval_norm == "linf" else self.eval_eps


# ---------------------------------------------------------------------------------------------- config


def load_matrix_config(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> MatrixConfig:
    """Read and check a matrix YAML (``key=value`` overrides apply to its top level)."""
    from vidcsl.config import _build, apply_overrides, read_yaml_mapping

    path = Path(path)
    where = f"nonrobust config {str(path)!r}"
    raw = apply_overrides(read_yaml_mapping(path, where), list(overrides))
    sources, robust = raw.pop("sources", None), raw.pop("robust_source", None)
    if not isinstance(sources, dict) or not sources:
        raise ConfigError(f"{where}: 'sources' must map names to {{run: ...}} or {{config: ..., overrides: [...]}}")
    cfg = _build(MatrixConfig, raw, "")
    cfg.sources = [_source(name, s, f"{where}: sources.{name}", path.parent) for name, s in sources.items()]
    if robust is not None:
        if not isinstance(robust, dict) or "name" not in robust:
            raise ConfigError(f"{where}: 'robust_source' must be a mapping with a name and a run or config")
        robust = dict(robust)
        cfg.robust_source = _source(robust.pop("name"), robust, f"{where}: robust_source", path.parent)
    if cfg.target_config is not None:
        cfg.target_config = str(_relative(cfg.target_config, path.parent, f"{where}: target_config"))
    cfg.source_file = str(path)
    check_matrix_config(cfg)
    return cfg


def _relative(p: str, base: Path, where: str) -> Path:
    full = Path(p) if Path(p).is_absolute() else base / p
    if not full.is_file():
        raise ConfigError(f"{where} {p!r} does not exist (looked for {full})")
    return full


def _source(name: str, raw: Any, where: str, base: Path) -> Source:
    from vidcsl.config import _build

    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping with 'run' or 'config'")
    s = _build(Source, {**raw, "name": str(name)}, f"{where.split(': ', 1)[-1]}.")
    if (s.run is None) == (s.config is None):
        raise ConfigError(f"{where} needs exactly one of 'run' (a trained run folder) or 'config' (trained here)")
    if s.config is not None:
        s.config = str(_relative(s.config, base, f"{where}.config"))
    return s


def check_matrix_config(cfg: MatrixConfig) -> None:
    """Sets, targets and names checked before anything trains (ConfigError naming the key)."""
    from vidcsl.robustness.study import variant_spec

    bad = [s for s in cfg.sets if s not in SET_KINDS]
    if bad or not cfg.sets or len(set(cfg.sets)) != len(cfg.sets):
        raise ConfigError(f"nonrobust key 'sets' must list distinct sets of {SET_KINDS}, got {cfg.sets}")
    if not cfg.targets or len(set(cfg.targets)) != len(cfg.targets):
        raise ConfigError(f"nonrobust key 'targets' must list distinct paradigms, got {cfg.targets}")
    for t in cfg.targets:
        try:
            spec = variant_spec(target_variant(t, cfg))
        except ConfigError as err:
            raise ConfigError(f"nonrobust key 'targets': {err} (or csl_fn)") from None
        if spec.untrained:
            raise ConfigError(f"nonrobust key 'targets': {t!r} trains nothing")
    check_fields(cfg, "nonrobust")  # every field's domain again: command-line flags are set after loading
    names = [s.name for s in cfg.sources] + ([cfg.robust_source.name] if cfg.robust_source else [])
    if not cfg.sources:
        raise ConfigError("nonrobust: at least one standard source is needed")
    if len(set(names)) != len(names) or not all(names):
        raise ConfigError(f"nonrobust: source names must be unique and non-empty, got {names}")


def target_variant(name: str, cfg: MatrixConfig) -> str:
    """The study variant a target name stands for (``csl_fn`` -> ``csl_fn_<fn_detector>``)."""
    return f"csl_fn_{cfg.fn_detector}" if name == "csl_fn" else name


# ---------------------------------------------------------------------------------------------- sources


@dataclass
class LoadedSource:
    name: str
    checkpoint: Path
    cfg: Any
    method: nn.Module
    paradigm: str  # the target name of the paradigm that trained it (sl, csl, csl_fn, byol, ...)
    sha256: str  # of the checkpoint: read once, stamps the cached probe and every set built from it
    robust: bool = False
    classifier: nn.Module | None = None
    clean_acc: float | None = None
    robust_acc: float | None = None
    how: str = ""


def paradigm_of(cfg: Any) -> str:
    """The target name of the paradigm a run was trained with (SL-AT counts as SL's paradigm)."""
    from vidcsl.methods.base import method_class

    if method_class(cfg.method.name).own_classifier:
        return "sl"
    fn = getattr(cfg.fn, "detector", "none") if cfg.fn is not None else "none"
    if cfg.method.name == "simclr":
        return "csl" if fn == "none" else "csl_fn"
    return cfg.method.name


def _train_source(src: Source, out: Path, mcfg: MatrixConfig) -> tuple[Path, str]:
    """A source's run folder, trained from its config when it has no finished run yet."""
    from vidcsl.config import load_config
    from vidcsl.robustness.study import train_variant

    if src.run is not None:
        return Path(src.run), "given"
    run_dir = out / "sources" / src.name
    extra = [*src.overrides, f"train.name={src.name}", f"train.runs_dir={run_dir.parent}",
             f"train.progress={str(mcfg.progress).lower()}"]
    if mcfg.device != "auto":
        extra.append(f"train.device={mcfg.device}")
    return run_dir, train_variant(load_config(src.config, extra), run_dir)


def _real_data(cfg: Any, mcfg: MatrixConfig):
    """(real training images, labels) of ``n_train`` seeded samples, (test x, y), the bundle."""
    from vidcsl.data.factory import build_datasets
    from vidcsl.robustness.evaluate import load_tensors, subset_indices

    if cfg.data.kind not in IMAGE_KINDS:
        raise UsageError(f"vidcsl nonrobust builds image sets; the sources trained on {cfg.data.kind!r}")
    real = build_datasets(cfg.data, "eval", seed=cfg.train.seed)
    idx = subset_indices(len(real.train_eval), mcfg.n_train, mcfg.seed)
    train = load_tensors(real.train_eval, idx, mcfg.batch_size, desc="real training images", progress=mcfg.progress)
    test_ds = real.test if real.test is not None else real.val
    tidx = subset_indices(len(test_ds), mcfg.n_eval, mcfg.seed + 1)
    test = load_tensors(test_ds, tidx, mcfg.batch_size, desc="real test images", progress=mcfg.progress)
    return train, test, real


def _features(encoder: nn.Module, ds: Any, dev: torch.device, desc: str, progress: bool, bs: int):
    from vidcsl.train.probe import extract_features_of
    from vidcsl.train.trainer import make_loader

    return extract_features_of(encoder, make_loader(ds, bs), dev, False, desc, progress)


def fit_probe_on(encoder: nn.Module, train_ds: Any, val_ds: Any, num_classes: int, probe_cfg: Any,
                 dev: torch.device, progress: bool) -> nn.Module:
    """A linear probe on frozen features of ``train_ds``, its epoch chosen on ``val_ds`` (never test)."""
    from vidcsl.train.probe import train_linear_probe

    bs = probe_cfg.batch_size
    train = _features(encoder, train_ds, dev, "probe features", progress, max(bs, 256))
    val = _features(encoder, val_ds, dev, "val features", progress, max(bs, 256))
    return train_linear_probe(train, val, num_classes, probe_cfg, device=dev, progress=progress).classifier


def _probe_cfg(cfg: Any, mcfg: MatrixConfig) -> Any:
    import dataclasses

    return dataclasses.replace(cfg.probe, epochs=mcfg.probe_epochs) if mcfg.probe_epochs else cfg.probe


def classifier_of(method: nn.Module, cfg: Any, data: Any, mcfg: MatrixConfig, dev: torch.device,
                  cache: Path, stamp: str) -> nn.Module:
    """Pixels -> logits: an SL run's own head, else the frozen encoder + a linear probe fitted on
    ``data.train_eval``, its epoch chosen on ``data.val`` (cached in ``cache`` under ``stamp``)."""
    from vidcsl.models.heads import LinearClassifier
    from vidcsl.robustness.protocols import PixelClassifier

    if getattr(method, "own_classifier", False):
        return PixelClassifier(method.encoder, method.classifier).to(dev).eval()
    probe_cfg = _probe_cfg(cfg, mcfg)
    stamp = f"{stamp}|{probe_cfg}"
    state = torch.load(cache, map_location=dev, weights_only=True) if cache.is_file() else None
    if state is not None and state.get("stamp") == stamp:
        head = LinearClassifier(state["feature_dim"], state["num_classes"])
        head.load_state_dict(state["model"])
    else:
        head = fit_probe_on(method.encoder, data.train_eval, data.val, data.num_classes, probe_cfg, dev,
                            mcfg.progress)
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": head.state_dict(), "feature_dim": head.fc.in_features, "num_classes": data.num_classes,
                    "stamp": stamp}, cache)
    return PixelClassifier(method.encoder, head.to(dev)).to(dev).eval()


def accuracies(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mcfg: MatrixConfig,
               dev: torch.device) -> tuple[float, float]:
    """(clean, robust) accuracy on (x, y): PGD-``eval_steps`` at ``eval_eps`` through ``robust_sweep``."""
    from vidcsl.attacks.sweep import robust_sweep

    gen = torch.Generator(device=dev).manual_seed(mcfg.seed)
    clean = torch.zeros(0, dtype=torch.bool)
    robust = torch.zeros(0, dtype=torch.bool)
    for lo in range(0, x.shape[0], mcfg.batch_size):
        xb, yb = x[lo:lo + mcfg.batch_size].to(dev), y[lo:lo + mcfg.batch_size].to(dev)
        out = robust_sweep(model, xb, yb, norm=mcfg.eval_norm, eps_list=[0.0, mcfg.eps], steps=mcfg.eval_steps,
                           generator=gen)
        clean, robust = torch.cat([clean, out[0.0]]), torch.cat([robust, out[mcfg.eps]])
    return float(clean.float().mean()), float(robust.float().mean())


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_source(src: Source, out: Path, mcfg: MatrixConfig, dev: torch.device, robust: bool) -> LoadedSource:
    from vidcsl.train.checkpoint import load_trained_method, resolve_checkpoint

    run_dir, how = _train_source(src, out, mcfg)  # how: given / trained / resumed / kept
    ckpt = resolve_checkpoint(run_dir)
    method, cfg, _ = load_trained_method(ckpt, map_location=dev)
    return LoadedSource(src.name, ckpt, cfg, method, paradigm_of(cfg), _sha(ckpt), robust=robust, how=how)


# ---------------------------------------------------------------------------------------------- sets


def _recipe(kind: str, src: LoadedSource, mcfg: MatrixConfig, dataset: str) -> dict[str, Any]:
    common = {"kind": kind, "source": src.name, "source_checkpoint": str(src.checkpoint),
              "source_sha256": src.sha256, "dataset": dataset, "n_train": mcfg.n_train, "seed": mcfg.seed}
    if kind in ("nr", "r"):
        return {**common, "steps": mcfg.match_steps, "step_size": mcfg.match_step_size,
                "eps": mcfg.nr_eps if kind == "nr" else None,
                "objective": "min ||g(x') - g(x)||_2 from another training image (Ilyas et al. 2019)"}
    return {**common, "steps": mcfg.attack_steps, "step_size": mcfg.attack_step_size, "eps": mcfg.attack_eps,
            "norm": "l2", "objective": f"targeted PGD towards t ({'(y+1) mod C' if kind == 'det' else 'random'}), "
            "relabelled t (Ilyas et al. 2019)"}


def build_set(kind: str, src: LoadedSource, x: torch.Tensor, y: torch.Tensor, num_classes: int, path: Path,
              mcfg: MatrixConfig, dev: torch.device, dataset: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Build (or reuse, when cached with the same recipe) one synthetic set -> (images, labels, provenance)."""
    from vidcsl.robustness.nonrobust import (
        build_feature_dataset,
        build_targeted_dataset,
        load_feature_dataset,
        save_feature_dataset,
        start_indices,
    )

    recipe = _recipe(kind, src, mcfg, dataset)
    if path.is_file():
        try:
            images, labels, meta = load_feature_dataset(path)
        except ValueError:
            meta = {}
        if meta.get("recipe") == recipe:
            return images, labels, {**meta, "reused": True}
    extra: dict[str, Any] = {}
    if kind in ("nr", "r"):
        new_x, new_y = build_feature_dataset(src.method.encoder, x, y, robust=kind == "r", steps=mcfg.match_steps,
                                             step_size=mcfg.match_step_size, eps=mcfg.nr_eps,
                                             batch_size=mcfg.batch_size, seed=mcfg.seed, device=dev)
        start = x[start_indices(len(x), mcfg.seed)]
    else:
        new_x, new_y, hit = build_targeted_dataset(src.classifier, x, y, num_classes, rule=kind,
                                                   steps=mcfg.attack_steps, step_size=mcfg.attack_step_size,
                                                   eps=mcfg.attack_eps, batch_size=mcfg.batch_size, seed=mcfg.seed,
                                                   device=dev)
        extra["target_hit_rate"] = float(hit.float().mean())
        extra["label_changed"] = float((new_y != y).float().mean())
        start = x
    extra["mean_l2_to_start"] = float((new_x - start).flatten(1).norm(dim=1).mean())
    save_feature_dataset(path, new_x, new_y, {"recipe": recipe, **extra})
    images, labels, meta = load_feature_dataset(path)
    return images, labels, {**meta, "reused": False}


def synthetic_bundle(cfg: Any, images: torch.Tensor, labels: torch.Tensor, mode: str, views: int) -> Any:
    """The real dataset's bundle with the training split replaced by a synthetic one (same transforms).

    Pixels are stored as uint8 for the image pipeline: rounding moves each pixel by at most 0.5/255.
    """
    import numpy as np
    from torch.utils.data import Subset

    from vidcsl.data.factory import build_datasets
    from vidcsl.data.images import ImageDataset

    bundle = build_datasets(cfg.data, mode, views=views, seed=cfg.train.seed)
    train = bundle.train.dataset if isinstance(bundle.train, Subset) else bundle.train
    arr = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    lab = np.asarray(labels, dtype=np.int64)
    bundle.train = ImageDataset(arr, lab, transform=train.transform, two_views=train.two_views, seed=cfg.train.seed)
    bundle.train_eval = ImageDataset(arr, lab, transform=None)
    return bundle


# ---------------------------------------------------------------------------------------------- targets


def target_config(base: dict[str, Any], target: str, mcfg: MatrixConfig, run_dir: Path, n: int) -> Any:
    """The training config of one target: the shared recipe + the paradigm's overrides, nothing else."""
    from vidcsl.config import apply_overrides, config_from_dict, validate_config
    from vidcsl.robustness.study import variant_spec

    v = variant_spec(target_variant(target, mcfg))
    extra = ["method.options={}", *v.overrides, f"fn.threshold={mcfg.fn_threshold}", f"fn.topk={mcfg.fn_topk}",
             "fn.warmup_epochs=0", *mcfg.target_overrides, "data.limit_train=null", "train.knn_every=-1",
             "train.tensorboard=false", f"train.progress={str(mcfg.progress).lower()}",
             f"train.name={run_dir.name}", f"train.runs_dir={run_dir.parent}", f"train.seed={mcfg.seed}",
             "train.accumulate=1"]
    if mcfg.epochs is not None:
        extra.append(f"train.epochs={mcfg.epochs}")
    if mcfg.device != "auto":
        extra.append(f"train.device={mcfg.device}")
    raw = apply_overrides(base, extra)
    raw["train"]["batch_size"] = min(int(raw["train"]["batch_size"]), max(2, n // 2))
    cfg = config_from_dict(raw)
    validate_config(cfg)
    return cfg


def train_target(cfg: Any, bundle: Any, run_dir: Path, set_sha: str, mcfg: MatrixConfig,
                 dev: torch.device) -> tuple[nn.Module, str]:
    """Train one target on a synthetic set (kept when trained before on the same set and config) and return
    its pixel classifier (the SL head, or the frozen encoder + a probe fitted on the same synthetic set)."""
    from vidcsl.config import config_to_dict
    from vidcsl.train.checkpoint import CHECKPOINT_DIR, LAST, load_trained_method
    from vidcsl.train.trainer import METRICS, Trainer

    stamp = {"set_sha256": set_sha, "config": config_to_dict(cfg), "probe_epochs": mcfg.probe_epochs}
    stamp_path = run_dir / "trained_on.json"
    kept = (run_dir / METRICS).is_file() and (run_dir / CHECKPOINT_DIR / LAST).is_file() and \
        stamp_path.is_file() and json.loads(stamp_path.read_text()) == json.loads(json.dumps(stamp))
    if not kept:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        Trainer(cfg, run_dir=run_dir, data=bundle).fit()
    method, _, _ = load_trained_method(run_dir, map_location=dev)
    probe_path = run_dir / "synthetic_probe.pt"
    classifier = classifier_of(method, cfg, bundle, mcfg, dev, probe_path, stamp=set_sha)
    if not kept:
        stamp_path.write_text(json.dumps(stamp, sort_keys=True))
    return classifier, "kept" if kept else "trained"


# ---------------------------------------------------------------------------------------------- driver


def chance_check(acc: float, num_classes: int, n: int) -> dict[str, Any]:
    """Is ``acc`` clearly above chance: above 1/C + 3 standard errors of chance-level accuracy on n samples?"""
    p0 = 1.0 / num_classes
    se = math.sqrt(p0 * (1 - p0) / max(n, 1))
    return {"acc": acc, "chance": p0, "se": se, "bar": p0 + 3 * se, "clearly_above": acc > p0 + 3 * se}


def run_matrix(mcfg: MatrixConfig) -> Path:
    """Sources -> refusal check -> sets -> targets -> matrix -> report; returns the report path."""
    import time

    from vidcsl.config import config_to_dict, load_config
    from vidcsl.methods.base import method_class
    from vidcsl.robustness.evaluate import select_device
    from vidcsl.train.logging import write_json

    check_matrix_config(mcfg)
    start = time.perf_counter()
    dev = select_device(mcfg.device, key="nonrobust key 'device'")
    out = Path(mcfg.out)
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    timing = {"sources_s": 0.0, "sets_s": 0.0, "targets_s": 0.0, "eval_s": 0.0}
    tick = time.perf_counter()
    sources = [load_source(s, out, mcfg, dev, robust=False) for s in mcfg.sources]
    robust = load_source(mcfg.robust_source, out, mcfg, dev, robust=True) if mcfg.robust_source else None
    first = sources[0].cfg
    (x, y), (xt, yt), real = _real_data(first, mcfg)
    for s in sources + ([robust] if robust else []):
        if s.cfg.data.kind != first.data.kind or s.cfg.data.image_size != first.data.image_size:
            raise UsageError(f"source {s.name!r} trained on {s.cfg.data.kind} at {s.cfg.data.image_size} px, "
                             f"source {sources[0].name!r} on {first.data.kind} at {first.data.image_size} px: "
                             "every source must share the dataset")
        s.classifier = classifier_of(s.method, s.cfg, real, mcfg, dev, out / "sources" / f"{s.name}.probe.pt",
                                     stamp=s.sha256)
        s.clean_acc, s.robust_acc = accuracies(s.classifier, xt, yt, mcfg, dev)
    timing["sources_s"] = time.perf_counter() - tick
    eps_txt = f"{mcfg.eval_norm.upper()} eps {mcfg.eval_eps:g}{'/255' if mcfg.eval_norm == 'linf' else ''}"
    if "r" in mcfg.sets:
        if robust is None:
            notes.append("No D_R: no robust source was given (--robust-run, or robust_source in the config); "
                         "D_R is never built from a standard run.")
        elif robust.robust_acc < mcfg.robust_threshold and not mcfg.force:
            raise UsageError(
                f"refusing to build D_R from {robust.name!r} ({robust.checkpoint}): its measured robust accuracy "
                f"is {robust.robust_acc:.3f} (PGD-{mcfg.eval_steps}, {eps_txt}, {len(yt)} test samples; clean "
                f"{robust.clean_acc:.3f}), below robust_threshold {mcfg.robust_threshold:g}, so it is not a robust "
                "encoder and D_R would hold non-robust features; pass an adversarially trained run (e.g. "
                "supervised_at, ACL, RoCL) or --force")
        elif robust.robust_acc < mcfg.robust_threshold:
            notes.append(f"D_R FORCED from {robust.name!r} although its robust accuracy {robust.robust_acc:.3f} is "
                         f"below robust_threshold {mcfg.robust_threshold:g}: it is not a robust encoder.")
    plan: list[tuple[str, LoadedSource]] = []
    for s in sources:
        plan += [(k, s) for k in ("nr", "det", "rand") if k in mcfg.sets]
    if robust is not None and "r" in mcfg.sets:
        plan.append(("r", robust))
    base = config_to_dict(load_config(mcfg.target_config) if mcfg.target_config else first)
    sets, cells = [], []
    for kind, src in plan:
        key = f"{kind}_{src.name}"
        tick = time.perf_counter()
        images, labels, meta = build_set(kind, src, x, y, real.num_classes, out / "sets" / f"{key}.npz", mcfg, dev,
                                         first.data.kind)
        timing["sets_s"] += time.perf_counter() - tick
        sets.append({"key": key, "kind": kind, "label": SET_LABELS[kind], "source": src.name,
                     "source_paradigm": src.paradigm, "provenance": meta})
        for target in mcfg.targets:
            tick = time.perf_counter()
            run_dir = out / "train" / key / target
            cfg = target_config(base, target, mcfg, run_dir, len(labels))
            cls = method_class(cfg.method.name)
            bundle = synthetic_bundle(cfg, images, labels, cls.data_mode, cls.views_for(cfg))
            model, how = train_target(cfg, bundle, run_dir, meta["sha256"], mcfg, dev)
            timing["targets_s"] += time.perf_counter() - tick
            tick = time.perf_counter()
            clean, rob = accuracies(model, xt, yt, mcfg, dev)
            timing["eval_s"] += time.perf_counter() - tick
            cells.append({"set": key, "target": target, "clean_acc": clean, "robust_acc": rob, "how": how})
    sanity = []
    for st in sets:
        if st["kind"] not in ("det", "rand"):
            continue
        own = next((c for c in cells if c["set"] == st["key"] and c["target"] == st["source_paradigm"]), None)
        row = {"set": st["key"], "label": st["label"], "source": st["source"], "paradigm": st["source_paradigm"]}
        if own is None:
            row["missing"] = f"target {st['source_paradigm']!r} (the source's paradigm) was not trained"
        else:
            row.update(chance_check(own["clean_acc"], real.num_classes, len(yt)))
        sanity.append(row)
    result = {
        "name": mcfg.name, "settings": {k: v for k, v in vars(mcfg).items() if k not in ("sources", "robust_source")},
        "device": str(dev), "num_classes": real.num_classes, "n_test": len(yt), "dataset": first.data.kind,
        "eval": {"norm": mcfg.eval_norm, "eps": mcfg.eval_eps, "steps": mcfg.eval_steps, "label": eps_txt},
        "sources": [{"name": s.name, "checkpoint": str(s.checkpoint), "paradigm": s.paradigm, "method": s.cfg.method.name,
                     "robust_source": s.robust, "clean_acc": s.clean_acc, "robust_acc": s.robust_acc, "how": s.how}
                    for s in sources + ([robust] if robust else [])],
        "sets": sets, "targets": list(mcfg.targets), "cells": cells, "sanity": sanity, "notes": notes,
        "wall_s": time.perf_counter() - start, "timing": timing,
    }
    write_json(out / "nonrobust.json", result)
    from vidcsl.report.nonrobust_report import write_nonrobust_report

    return write_nonrobust_report(result, out)


def matrix_config_for_run(run: str, overrides: list[str] | tuple[str, ...] = ()) -> MatrixConfig:
    """The matrix of one trained RUN as standard source (its config = the targets' recipe)."""
    from vidcsl.config import _build, apply_overrides

    raw = apply_overrides({"out": str(Path(run) / "nonrobust")}, list(overrides))
    cfg = _build(MatrixConfig, raw, "")
    cfg.sources = [Source(name=_run_name(run), run=str(run))]
    return cfg


def _run_name(run: str) -> str:
    from vidcsl.train.checkpoint import load_trained_method, resolve_checkpoint

    _, cfg, _ = load_trained_method(resolve_checkpoint(run))
    return paradigm_of(cfg)
