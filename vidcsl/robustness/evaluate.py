"""``vidcsl evaluate RUN_OR_CHECKPOINT``: every robustness number of one trained model.

The driver: the evaluation settings (:class:`EvalConfig`), the model under each protocol
(``vidcsl.robustness.protocols``), the data (a seeded subset of the test split, streamed in batches from
a DataLoader) and the orchestration. The measures themselves are ``vidcsl.robustness.measures``; every
table, plot and report is written by ``vidcsl.report``. What is measured and how — protocols, clip and
video levels, attacks and their strength, the sanity panel, the per-sample outcome file — is described in
``docs/evaluation.md``. Writes ``eval.json``, ``outcomes.npz``, CSV tables, PNG plots and ``report.md``
into ``RUN/eval/``.
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
from torch import nn
from torch.utils.data import Dataset

from vidcsl.config import IMAGE_KINDS, bounded, choices
from vidcsl.errors import ConfigError, DataError
from vidcsl.robustness.measures import AUTOATTACK, EMPTY_CORRUPTIONS, MeasurePlan, Sweep
from vidcsl.robustness.outcomes import FILE_NAME as OUTCOMES_FILE
from vidcsl.robustness.protocols import PROTOCOLS

Tensor = torch.Tensor
EVAL_DIR = "eval"
SCHEMA = 2
VIDEO_LEVELS = ("clip", "video")
VIDEO_LEVEL_MEASURES = ("attacks", "corruptions")
NORMS = ("linf", "l2")


@dataclass
class EvalConfig:
    """What to measure and on how many samples (small subsets keep the CPU demo in minutes)."""

    n_samples: int | None = bounded(1000, ge=1)  # seeded test subset (None = the whole split)
    norms: list[str] = field(default_factory=lambda: ["linf", "l2"])
    linf_eps_255: list[float] = bounded([0.0, 1.0, 2.0, 4.0, 8.0], ge=0)  # L-inf eps x 255
    l2_eps: list[float] = bounded([0.0, 0.125, 0.25, 0.5], ge=0)
    attacks: list[str] = field(default_factory=lambda: ["pgd"])  # eps-sweep attacks, plus "autoattack"
    pgd_steps: int = bounded(20, ge=1)
    alpha_factor: float = bounded(2.5, gt=0)  # step alpha = alpha_factor * eps / pgd_steps
    random_start: bool = True
    restarts: int = bounded(1, ge=1)  # random starts per sample and eps (a sample is broken if any breaks it)
    autoattack_eps_255: float = bounded(8.0, gt=0)  # AutoAttack (L-inf, images) runs at this eps only
    autoattack_version: str = choices("standard", "plus", "rand", default="standard")
    sanity_linf_eps_255: float | None = bounded(64.0, gt=0)  # a large eps where robust accuracy must be ~0
    sanity_l2_eps: float | None = bounded(None, gt=0)
    sanity_max_acc: float = bounded(0.02, ge=0, le=1)  # "~0": at most this accuracy at the large eps
    protocols: list[str] = field(default_factory=lambda: list(PROTOCOLS))  # each measured where it applies
    levels: list[str] = field(default_factory=lambda: list(VIDEO_LEVELS))  # videos: clip and / or video level
    video_clips: int = bounded(3, ge=1)  # K uniform clips per video (video level; the clip level is the centre)
    video_level_measures: list[str] = field(default_factory=lambda: list(VIDEO_LEVEL_MEASURES))  # beyond clean
    robust_probe_eps_255: float = bounded(8.0, gt=0)  # RoCL's robust linear evaluation: PGD on the probe's data
    robust_probe_alpha_255: float = bounded(2.0, gt=0)
    robust_probe_steps: int = bounded(10, ge=1)
    robust_probe_epochs: int | None = bounded(None, ge=1)  # None = probe.epochs
    robust_probe_n_train: int | None = bounded(None, ge=1)  # seeded subset of the training split (None = all)
    corruptions: list[str] | None = None  # None = every corruption that applies (temporal ones for clips)
    severities: list[int] = bounded([1, 2, 3, 4, 5], ge=1, le=5)
    n_corruption: int | None = bounded(500, ge=1)  # first samples of the subset used per corruption and severity
    n_repr: int = bounded(512, ge=2)  # samples for the representation metrics
    sensitivity_eps_255: float = bounded(8.0, ge=0)  # L-inf radius of the random / adversarial perturbation
    sensitivity_steps: int = bounded(10, ge=1)
    batch_size: int = bounded(128, ge=1)
    num_workers: int | None = bounded(None, ge=0)  # DataLoader workers (None = the run's data.num_workers)
    seed: int = 0
    probe: list[str] = field(default_factory=list)  # probe.* overrides for the probes, e.g. probe.epochs=10
    device: str = "auto"
    progress: bool = True

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad key (before anything loads or runs)."""
        for f in dataclasses.fields(self):  # every numeric field declares its domain (a config built in code)
            if f.metadata.get("domain") is not None:
                f.metadata["domain"].check(getattr(self, f.name), f"eval.{f.name}")
            allowed = f.metadata.get("choices")
            if allowed and getattr(self, f.name) not in allowed:
                raise ConfigError(f"config key 'eval.{f.name}' must be one of {allowed}, got {getattr(self, f.name)!r}")
        _subset("norms", self.norms, NORMS)
        for norm, key in (("linf", "linf_eps_255"), ("l2", "l2_eps")):
            values = getattr(self, key)
            if norm in self.norms and not values:
                raise ConfigError(f"config key 'eval.{key}' is empty but 'eval.norms' lists {norm}: give at least one "
                                  "eps (0 = clean), or drop the norm")
            if len(set(values)) != len(values):
                raise ConfigError(f"config key 'eval.{key}' repeats an eps: {values}")
        if not self.attacks or len(set(self.attacks)) != len(self.attacks):
            raise ConfigError(f"config key 'eval.attacks' must list distinct attack names, got {self.attacks}")
        self.check_attacks()
        if not self.sweep_attacks():
            raise ConfigError(f"config key 'eval.attacks' needs an eps-sweep attack (e.g. pgd) besides autoattack, "
                              f"got {self.attacks}")
        if AUTOATTACK in self.attacks and "linf" not in self.norms:
            raise ConfigError("config key 'eval.attacks' lists autoattack (L-inf) but 'eval.norms' has no linf sweep "
                              "to compare it with")
        _subset("protocols", self.protocols, PROTOCOLS)
        if "standard" not in self.protocols:
            raise ConfigError(f"config key 'eval.protocols' must include 'standard', got {self.protocols}")
        _subset("levels", self.levels, VIDEO_LEVELS)
        if "video" in self.levels and self.video_clips < 2:
            raise ConfigError("config key 'eval.levels' lists video but 'eval.video_clips' is 1: a video level needs "
                              ">= 2 clips (or set levels: [clip])")
        _subset("video_level_measures", self.video_level_measures, VIDEO_LEVEL_MEASURES, empty_ok=True)
        if not self.severities:
            raise ConfigError("config key 'eval.severities' is empty")
        if self.corruptions is not None:
            from vidcsl.robustness.corruptions import CORRUPTIONS

            unknown = [c for c in self.corruptions if c not in CORRUPTIONS]
            if unknown:
                raise ConfigError(f"config key 'eval.corruptions' names unknown corruptions {unknown}; "
                                  f"known: {sorted(CORRUPTIONS)}")
        _check_probe_overrides(self.probe)
        _check_device(self.device)

    def check_attacks(self, is_video: bool = False) -> None:
        """Every attack is known, and every sweep attack supports every norm of the sweep, on clip sets too
        when a video run's video level is attacked (ConfigError naming 'eval.attacks')."""
        from vidcsl.attacks import attack_by_name

        clip_sets = is_video and "video" in self.levels and "attacks" in self.video_level_measures
        try:
            for name in self.attacks:
                attack_by_name(name)
            for name in self.sweep_attacks():
                for norm in self.norms:
                    attack_by_name(name).check(norm=norm, ndim=6 if clip_sets else None)
        except ConfigError as err:
            raise ConfigError(f"config key 'eval.attacks': {err}") from None

    def sweep_attacks(self) -> list[str]:
        return [a for a in self.attacks if a != AUTOATTACK]

    def fingerprint(self) -> str:
        """Hash of the settings that change numbers (not device / progress / workers): tells a stale eval.json."""
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("device", "progress", "num_workers")}
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def _subset(key: str, values: list[str], allowed: tuple[str, ...], empty_ok: bool = False) -> None:
    bad = [v for v in values if v not in allowed]
    if bad or (not values and not empty_ok) or len(set(values)) != len(values):
        raise ConfigError(f"config key 'eval.{key}' must list distinct values of {list(allowed)}, got {values}")


def _check_probe_overrides(overrides: list[str]) -> None:
    """Probe overrides must be ``probe.key=value`` and build a valid probe section."""
    from vidcsl.config import Config, apply_overrides, config_from_dict, config_to_dict, validate_config

    bad = [o for o in overrides if not o.startswith("probe.") or "=" not in o]
    if bad:
        raise ConfigError(f"config key 'eval.probe' takes 'probe.key=value' overrides (e.g. probe.epochs=10), got {bad}")
    try:
        validate_config(config_from_dict(apply_overrides(config_to_dict(Config()), overrides)), check_paths=False)
    except ConfigError as err:
        raise ConfigError(f"config key 'eval.probe': {err}") from None


def _check_device(name: str) -> None:
    try:
        dev = torch.device(name) if name != "auto" else None
    except RuntimeError:
        dev = None
        ok = False
    else:
        ok = name == "auto" or dev.type in ("cpu", "cuda", "mps")
    if not ok:
        raise ConfigError(f"config key 'eval.device' must be auto, cpu, cuda or cuda:N, got {name!r}")
    if dev is not None and dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"config key 'eval.device' is {name!r} but CUDA is not available")


def eval_config_from_dict(raw: dict[str, Any] | None, overrides: list[str] | tuple[str, ...] = ()) -> EvalConfig:
    """An :class:`EvalConfig` from a mapping plus ``key=value`` overrides (``eval.`` prefix optional)."""
    from vidcsl.config import _build, apply_overrides

    raw = dict(raw or {})
    fixed = [o.removeprefix("eval.") for o in overrides]
    cfg = _build(EvalConfig, apply_overrides(raw, fixed), "eval.")
    cfg.validate()
    return cfg


def select_device(name: str, *, key: str = "config key 'eval.device'") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else is checked against this machine
    (:class:`ConfigError` naming ``key``), as training checks ``train.device``."""
    from vidcsl.train.distributed import select_device as checked

    return checked(name, name=key)


# ------------------------------------------------------------------------------------------ the model


@dataclass
class LoadedRun:
    method: nn.Module  # the trained method (``.encoder``; a supervised run also ``.classifier``), eval mode
    cfg: Any  # vidcsl.config.Config of the run
    checkpoint: Path
    run_dir: Path


def load_run(run_or_checkpoint: str | os.PathLike, device: torch.device) -> LoadedRun:
    from vidcsl.train.checkpoint import load_trained_method, resolve_checkpoint

    path = resolve_checkpoint(run_or_checkpoint)
    method, cfg, _ = load_trained_method(path)
    return LoadedRun(method.to(device).eval(), cfg, path, path.parent.parent)


# ------------------------------------------------------------------------------------------- the data


class IndexedSubset(Dataset):
    """``ds[indices[i]]`` as ``(x, y, indices[i])`` (None when the sample is unreadable): outcomes keep the
    dataset index of every sample, so two evaluations can be paired sample by sample."""

    def __init__(self, ds: Dataset, indices: list[int]):
        self.ds, self.indices = ds, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        item = self.ds[self.indices[i]]
        return None if item is None else (item[0], item[1], self.indices[i])


def subset_indices(n_total: int, n: int | None, seed: int) -> list[int]:
    """The seeded evaluation subset (sorted): the same for every model evaluated with the same settings."""
    if n is None or n >= n_total:
        return list(range(n_total))
    return sorted(np.random.default_rng(seed).permutation(n_total)[:n].tolist())


def load_tensors(ds: Any, indices: list[int], batch_size: int, *, desc: str, progress: bool) -> tuple[Tensor, Tensor]:
    """Stack ``ds[indices]`` into (x, y) tensors, bad (None) samples dropped: for callers that need the samples
    in memory (building the non-robust feature sets). The evaluation itself streams (``eval_data``)."""
    from torch.utils.data import Subset
    from tqdm import tqdm

    from vidcsl.train.trainer import make_loader

    xs, ys = [], []
    for batch in tqdm(make_loader(Subset(ds, indices), batch_size), desc=desc, disable=not progress, leave=False):
        if batch is not None:
            xs.append(batch[0])
            ys.append(torch.as_tensor(batch[1]).long())
    if not xs:
        raise DataError(f"{desc}: no usable samples")
    return torch.cat(xs), torch.cat(ys)


@dataclass
class EvalData:
    loader: Any  # yields [x, y, dataset index]; x images (B,C,H,W), clips (B,C,T,H,W) or clip sets (B,K,C,T,H,W)
    pairs: Any  # yields [[x1, x2], y]: two augmented views (alignment)
    split: str
    is_video: bool
    num_classes: int
    n_planned: int
    num_frames: int


def eval_data(cfg: Any, ecfg: EvalConfig) -> EvalData:
    """The evaluation subset, streamed: videos as K = ``video_clips`` uniform clips with one centre crop."""
    from torch.utils.data import Subset

    from vidcsl.config import config_from_dict, config_to_dict
    from vidcsl.data.factory import build_datasets
    from vidcsl.train.trainer import make_loader

    data_cfg = config_from_dict(config_to_dict(cfg)).data
    data_cfg.limit_train, data_cfg.limit_eval = None, None
    is_video = data_cfg.kind not in IMAGE_KINDS
    if is_video:
        data_cfg.eval_clips, data_cfg.eval_crops = ecfg.video_clips, 1
    workers = data_cfg.num_workers if ecfg.num_workers is None else ecfg.num_workers
    bundle = build_datasets(data_cfg, "eval", seed=cfg.train.seed)
    split, ds = ("test", bundle.test) if bundle.test is not None else ("val", bundle.val)
    idx = subset_indices(len(ds), ecfg.n_samples, ecfg.seed)
    loader = make_loader(IndexedSubset(ds, idx), ecfg.batch_size, workers)
    data_cfg.clip_sampler = "two_clip"  # positives for alignment, whatever sampler the run trained with
    pairs_ds = build_datasets(data_cfg, "contrastive", seed=cfg.train.seed).train
    pairs = make_loader(Subset(pairs_ds, subset_indices(len(pairs_ds), ecfg.n_repr, ecfg.seed + 1)),
                        ecfg.batch_size, workers)
    return EvalData(loader, pairs, split, is_video, bundle.num_classes, len(idx), data_cfg.num_frames)


# ------------------------------------------------------------------------------------------- the plan


def corruption_names(ecfg: EvalConfig, is_video: bool, num_frames: int) -> list[str]:
    """The corruptions that apply: temporal ones only for clips of >= 2 frames."""
    from vidcsl.robustness.corruptions import CORRUPTIONS, IMAGE_CORRUPTIONS, VIDEO_CORRUPTIONS

    names = ecfg.corruptions if ecfg.corruptions is not None else (VIDEO_CORRUPTIONS if is_video
                                                                   else IMAGE_CORRUPTIONS)
    temporal_ok = is_video and num_frames >= 2
    return [n for n in names if temporal_ok or not CORRUPTIONS[n].clips_only]


def build_plan(ecfg: EvalConfig, data: EvalData, classifiers: dict[str, nn.Module]) -> MeasurePlan:
    """What ``run_measures`` measures, from the settings (extra eps for the sanity panel included)."""
    sanity = {"linf": None if ecfg.sanity_linf_eps_255 is None else ecfg.sanity_linf_eps_255 / 255,
              "l2": ecfg.sanity_l2_eps}
    aa = None
    if AUTOATTACK in ecfg.attacks and not data.is_video:
        aa = {"norm": "linf", "eps": ecfg.autoattack_eps_255 / 255, "version": ecfg.autoattack_version}
    sweeps = []
    for attack in ecfg.sweep_attacks():
        for norm in ecfg.norms:
            eps = [e / 255 for e in ecfg.linf_eps_255] if norm == "linf" else list(ecfg.l2_eps)
            extra = [e for e in (sanity[norm], aa["eps"] if aa and norm == aa["norm"] else None) if e is not None]
            sweeps.append(Sweep(attack, norm, eps, extra))
    return MeasurePlan(
        classifiers=classifiers, levels=list(ecfg.levels) if data.is_video else ["image"], sweeps=sweeps,
        num_classes=data.num_classes, steps=ecfg.pgd_steps, alpha_factor=ecfg.alpha_factor,
        random_start=ecfg.random_start, restarts=ecfg.restarts, autoattack=aa,
        corruptions=corruption_names(ecfg, data.is_video, data.num_frames), severities=list(ecfg.severities),
        n_corruption=ecfg.n_corruption, video_measures=tuple(ecfg.video_level_measures),
        sanity_eps={k: v for k, v in sanity.items() if v is not None}, sanity_max_acc=ecfg.sanity_max_acc,
        seed=ecfg.seed)


# ---------------------------------------------------------------------------------------------- driver


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


def evaluate_run(run_or_checkpoint: str | os.PathLike, ecfg: EvalConfig | None = None, *,
                 out_dir: str | os.PathLike | None = None, write_report: bool = True,
                 plots: bool = True) -> dict[str, Any]:
    """Measure everything for one run; write ``eval.json`` and ``outcomes.npz`` (+ tables, report.md and,
    with ``plots``, PNGs) and return the ``eval.json`` dict."""
    from vidcsl.robustness.measures import RepresentationAccumulator, run_measures
    from vidcsl.robustness.protocols import build_protocols

    ecfg = ecfg or EvalConfig()
    ecfg.validate()
    start = time.perf_counter()
    device = select_device(ecfg.device)
    torch.manual_seed(ecfg.seed)
    run = load_run(run_or_checkpoint, device)
    cfg = run.cfg
    is_video = cfg.data.kind not in IMAGE_KINDS
    ecfg.check_attacks(is_video)  # before any probe is fitted
    protocols, skipped = build_protocols(run.method, cfg, run.checkpoint, run.run_dir, ecfg, is_video, device)
    data = eval_data(cfg, ecfg)
    plan = build_plan(ecfg, data, {name: p.classifier for name, p in protocols.items()})
    rep = RepresentationAccumulator(run.method.encoder, ecfg.n_repr, eps=ecfg.sensitivity_eps_255 / 255,
                                    steps=ecfg.sensitivity_steps, seed=ecfg.seed, device=device)
    total = math.ceil(data.n_planned / ecfg.batch_size)
    recorder = run_measures(data.loader, plan, device, representation=rep, progress=ecfg.progress, total=total)
    if recorder.n == 0:
        raise DataError(f"no usable sample in the {data.split} split of {cfg.data.kind!r} (every one was unreadable)")
    for batch in data.pairs:
        if batch is not None:
            rep.add_pairs(batch[0][0].to(device), batch[0][1].to(device))
    outcomes = recorder.result({"split": data.split, "dataset": cfg.data.kind, "run": str(run.run_dir),
                                "eval_fingerprint": ecfg.fingerprint()})
    notes = [f"probe of protocol {name} trained for this evaluation: {p.probe['trained_now']}"
              for name, p in protocols.items() if p.probe and p.probe.get("trained_now")]
    if AUTOATTACK in ecfg.attacks and is_video:
        notes.append("autoattack not measured: torchattacks' AutoAttack takes images only")
    result = assemble(run, ecfg, data, plan, protocols, skipped, outcomes, rep.result(), notes)
    result["seconds"] = time.perf_counter() - start
    out = Path(out_dir) if out_dir is not None else run.run_dir / EVAL_DIR
    outcomes.save(out / OUTCOMES_FILE)
    if write_report:
        from vidcsl.report.run_report import write_run_report

        write_run_report(result, out, plots=plots)
    else:
        from vidcsl.train.logging import write_json

        write_json(out / "eval.json", result)
    return result


def assemble(run: LoadedRun, ecfg: EvalConfig, data: EvalData, plan: MeasurePlan, protocols: dict[str, Any],
             skipped: dict[str, str], outcomes: Any, representation: dict[str, Any],
             notes: list[str]) -> dict[str, Any]:
    """The ``eval.json`` dict: every accuracy computed from ``outcomes`` (see docs/evaluation.md)."""
    from vidcsl.robustness.measures import summarise_level

    cfg = run.cfg
    per_protocol = {}
    for name, p in protocols.items():
        levels = {lvl: summarise_level(outcomes, name, lvl, plan) for lvl in plan.levels}
        per_protocol[name] = {"description": p.description, "probe": p.probe,
                              "levels": {k: v for k, v in levels.items() if v is not None}}
    primary = plan.levels[0]
    head = per_protocol["standard"]["levels"][primary]
    first_attack = ecfg.sweep_attacks()[0]
    video = per_protocol["standard"]["levels"].get("video")
    return {
        "schema": SCHEMA, "run": str(run.run_dir), "checkpoint": str(run.checkpoint),
        "model_kind": "supervised" if protocols["standard"].probe is None else "linear_probe",
        "method": cfg.method.name, "fn_detector": cfg.fn.detector, "encoder": cfg.model.encoder,
        "dataset": cfg.data.kind, "is_video": data.is_video, "split": data.split, "n_samples": len(outcomes),
        "num_classes": data.num_classes, "levels": plan.levels, "primary_level": primary,
        "video_clips": ecfg.video_clips if data.is_video else None,
        "attacks": {"sweep": ecfg.sweep_attacks(), "steps": ecfg.pgd_steps, "alpha_factor": ecfg.alpha_factor,
                    "random_start": ecfg.random_start, "restarts": ecfg.restarts, "autoattack": plan.autoattack},
        "protocols": per_protocol, "protocols_skipped": skipped,
        # the standard protocol at the primary level (image, or clip for videos), as read by the study
        "probe": protocols["standard"].probe, "clean_acc": head["clean_acc"],
        "clean_acc_multiclip": None if video is None else video["clean_acc"],
        "robust": head["robust"].get(first_attack, {}), "robust_attack": first_attack,
        "autoattack": head["autoattack"], "corruptions": head["corruptions"] or EMPTY_CORRUPTIONS,
        "sanity": head["sanity"],
        "representation": representation, "fn_detector_stats": detector_stats(run.run_dir),
        "outcomes": {"file": OUTCOMES_FILE, "n_samples": len(outcomes), "n_keys": len(outcomes.values)},
        "notes": notes, "eval_config": dataclasses.asdict(ecfg), "eval_fingerprint": ecfg.fingerprint(),
    }


def load_eval(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """A run's ``eval/eval.json`` or None when absent / unreadable."""
    path = Path(run_dir) / EVAL_DIR / "eval.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
