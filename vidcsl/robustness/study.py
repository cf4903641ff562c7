"""``vidcsl study CONFIG``: train every paradigm of the comparison, evaluate each, write one report.

A study config (YAML) names one or more *tracks* (a dataset + backbone, i.e. a base training config)
and the *variants* to run on each:

    sl                      supervised cross-entropy (same backbone, augmentations, schedule)
    csl                     SimCLR
    csl_fn_threshold / _topk / _oracle   SimCLR + false-negative elimination with that detector
    supcon                  supervised contrastive
    clae, rocl, acl         adversarial contrastive methods; ``*_fn`` adds FN removal (``adv_fn_detector``)

Each variant is the track's config plus a few overrides, trained through ``vidcsl.train.trainer`` into
``runs_dir/<track>/<variant>/`` and evaluated by ``vidcsl.robustness.evaluate``. The study is
resumable: a sub-run with final metrics is not retrained, and an evaluation with the same settings is
not repeated. The report states the numbers as measured, including the robustness gap
RA_sl - RA_csl and the part of it an FN variant closes, (RA_fn - RA_csl) / (RA_sl - RA_csl), which is
reported as "n/a" (with the reason) when the gap is too small to divide by.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from vidcsl.report.tables import fmt, markdown_table, write_csv_rows
from vidcsl.robustness.evaluate import EvalConfig, eval_config_from_dict, evaluate_run, load_eval
from vidcsl.schema import bounded


@dataclass(frozen=True)
class Variant:
    label: str
    overrides: tuple[str, ...]
    fn: bool = False  # uses false-negative removal
    base: str | None = None  # the variant it adds FN removal to (for the gain / gap closed)


def _fn(detector: str) -> tuple[str, ...]:
    return (f"fn.detector={detector}",)


VARIANTS: dict[str, Variant] = {
    "sl": Variant("SL (supervised)", ("method.name=supervised", "data.supervised_augment=contrastive",
                                      "fn.detector=none")),
    "csl": Variant("CSL (SimCLR)", ("method.name=simclr", "fn.detector=none")),
    "csl_fn_threshold": Variant("CSL+FN threshold", ("method.name=simclr", *_fn("threshold")), True, "csl"),
    "csl_fn_topk": Variant("CSL+FN top-k", ("method.name=simclr", *_fn("topk")), True, "csl"),
    "csl_fn_oracle": Variant("CSL+FN oracle", ("method.name=simclr", *_fn("oracle")), True, "csl"),
    "supcon": Variant("SupCon", ("method.name=supcon", "fn.detector=none")),
}
for _m in ("clae", "rocl", "acl"):
    VARIANTS[_m] = Variant(_m.upper(), (f"method.name={_m}", "fn.detector=none"))
    VARIANTS[f"{_m}_fn"] = Variant(f"{_m.upper()}+FN", (f"method.name={_m}",), True, _m)


@dataclass
class Track:
    name: str
    config: str  # base training config (path relative to the study file)
    overrides: list[str] = field(default_factory=list)
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    variant_overrides: dict[str, list[str]] = field(default_factory=dict)  # extra overrides per variant
    eval: dict[str, Any] = field(default_factory=dict)  # merged over the study's eval section


@dataclass
class StudyConfig:
    name: str = "study"
    runs_dir: str = "runs/study"
    tracks: list[Track] = field(default_factory=list)
    fn_threshold: float = bounded(0.8, ge=-1.0, le=1.0)  # the threshold detector's cosine cut-off
    fn_topk: int = bounded(5, ge=1)
    fn_warmup_epochs: int = bounded(0, ge=0)
    adv_fn_detector: str = "topk"  # detector of the adversarial *_fn variants
    device: str = "auto"
    headline_norm: str = "linf"
    headline_eps: float = bounded(2.0, ge=0)  # x 255 for linf; raw for l2
    min_gap: float = bounded(0.02, ge=0)  # below this RA_sl - RA_csl, "gap closed" is n/a
    progress: bool = True
    eval: dict[str, Any] = field(default_factory=dict)
    source: str | None = None  # where the config was read from (set by load_study_config)


def load_study_config(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> StudyConfig:
    """Read and check a study YAML (``key=value`` overrides apply to its top level, e.g. ``runs_dir=x``)."""
    from vidcsl.config import _build, apply_overrides

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"study config {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"study config {str(path)!r} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"study config {str(path)!r} must hold a mapping")
    raw = apply_overrides(raw, overrides)
    tracks = raw.pop("tracks", None)
    if not isinstance(tracks, list) or not tracks:
        raise ValueError(f"study config {str(path)!r}: 'tracks' must be a non-empty list")
    cfg = _build(StudyConfig, raw, "")
    cfg.tracks = [_build(Track, t, f"tracks[{i}].") for i, t in enumerate(tracks)]
    cfg.source = str(path)
    for i, t in enumerate(cfg.tracks):
        cfg_path = (path.parent / t.config) if not Path(t.config).is_absolute() else Path(t.config)
        if not cfg_path.is_file():
            raise ValueError(f"study config {str(path)!r}: tracks[{i}].config {t.config!r} does not exist "
                             f"(looked for {cfg_path})")
        t.config = str(cfg_path)
        unknown = [v for v in t.variants if v not in VARIANTS]
        if unknown:
            raise ValueError(f"study config {str(path)!r}: tracks[{i}].variants has unknown {unknown}; "
                             f"known: {list(VARIANTS)}")
        bad = [v for v in t.variant_overrides if v not in t.variants]
        if bad:
            raise ValueError(f"study config {str(path)!r}: tracks[{i}].variant_overrides names {bad}, "
                             f"which are not in its variants")
        eval_config_from_dict({**cfg.eval, **t.eval})  # fail early on a bad eval key
    if len({t.name for t in cfg.tracks}) != len(cfg.tracks):
        raise ValueError(f"study config {str(path)!r}: track names must be unique")
    if cfg.headline_norm not in ("linf", "l2"):
        raise ValueError(f"study key 'headline_norm' must be linf or l2, got {cfg.headline_norm!r}")
    if cfg.adv_fn_detector not in ("threshold", "topk", "oracle"):
        raise ValueError(f"study key 'adv_fn_detector' must be threshold, topk or oracle, got {cfg.adv_fn_detector!r}")
    return cfg


def variant_config(study: StudyConfig, track: Track, variant: str, run_dir: Path) -> Any:
    """The training :class:`vidcsl.config.Config` of one sub-run."""
    from vidcsl.config import load_config

    v = VARIANTS[variant]
    extra = list(v.overrides)
    if v.fn and not any(o.startswith("fn.detector=") for o in extra):
        extra.append(f"fn.detector={study.adv_fn_detector}")
    fn = [f"fn.threshold={study.fn_threshold}", f"fn.topk={study.fn_topk}",
          f"fn.warmup_epochs={study.fn_warmup_epochs}"]
    run = [f"train.name={variant}", f"train.runs_dir={run_dir.parent}", f"train.progress={str(study.progress).lower()}"]
    if study.device != "auto":
        run.append(f"train.device={study.device}")
    return load_config(track.config, [*track.overrides, *extra, *fn, *track.variant_overrides.get(variant, []),
                                      *run])


def _same_config(saved: Path, cfg: Any) -> bool:
    from vidcsl.config import config_to_dict

    ignore = ("progress", "tensorboard", "runs_dir", "device")
    try:
        old = yaml.safe_load(saved.read_text())
    except (OSError, yaml.YAMLError):
        return False
    new = config_to_dict(cfg)
    for d in (old, new):
        for k in ignore:
            d.get("train", {}).pop(k, None)
    return old == new


def train_variant(cfg: Any, run_dir: Path) -> str:
    """Train one sub-run unless it already finished -> "trained" | "resumed" | "kept"."""
    from vidcsl.train.checkpoint import CHECKPOINT_DIR, LAST
    from vidcsl.train.trainer import Trainer

    if (run_dir / "config.yaml").is_file() and not _same_config(run_dir / "config.yaml", cfg):
        raise ValueError(f"sub-run {str(run_dir)!r} was trained with a different config than the study now asks "
                         f"for; delete it or choose another runs_dir")
    ckpt = run_dir / CHECKPOINT_DIR / LAST
    if (run_dir / "metrics.json").is_file() and ckpt.is_file():
        return "kept"
    resume = ckpt.is_file()
    Trainer(cfg, run_dir=run_dir, resume=resume).fit()
    return "resumed" if resume else "trained"


def for_run(ecfg: EvalConfig, supervised: bool) -> EvalConfig:
    """The evaluation settings of one sub-run: a supervised run is its own classifier, so probe overrides
    (which ``evaluate`` refuses for it) are dropped."""
    import dataclasses

    return dataclasses.replace(ecfg, probe=[]) if supervised else ecfg


def evaluate_variant(run_dir: Path, ecfg: EvalConfig) -> dict[str, Any]:
    """Evaluate unless ``eval.json`` is newer than the checkpoint and made with the same settings."""
    from vidcsl.train.checkpoint import CHECKPOINT_DIR, LAST

    old = load_eval(run_dir)
    ckpt = run_dir / CHECKPOINT_DIR / LAST
    fresh = old is not None and old.get("eval_fingerprint") == ecfg.fingerprint() and \
        (run_dir / "eval" / "eval.json").stat().st_mtime >= ckpt.stat().st_mtime
    return old if fresh else evaluate_run(run_dir, ecfg)


def available(variant: str) -> bool:
    """Whether the variant's training method exists in this installation."""
    from vidcsl.methods.base import method_class

    name = next(o.split("=", 1)[1] for o in VARIANTS[variant].overrides if o.startswith("method.name="))
    try:
        method_class(name)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------------------------------ analysis


def robust_at(ev: dict[str, Any], norm: str, eps: float) -> float | None:
    """Robust accuracy at ``eps`` (x 255 for linf) from an eval dict, None when not measured."""
    for e in ev["robust"].get(norm, []):
        value = e["eps_255"] if norm == "linf" else e["eps"]
        if math.isclose(value, eps, rel_tol=1e-6, abs_tol=1e-9):
            return e["acc"]
    return None


def gap_closed(ra_sl: float | None, ra_csl: float | None, ra_fn: float | None, min_gap: float,
               n: int | None = None) -> tuple[float | None, str]:
    """(RA_fn - RA_csl) / (RA_sl - RA_csl), or (None, why) when the denominator is too small or missing.

    "Too small": not above ``min_gap`` nor, given the sample count ``n``, above two binomial standard
    errors of the difference (below that the sign of the gap is not resolved by the data).
    """
    if ra_sl is None or ra_csl is None or ra_fn is None:
        return None, "n/a: a robust accuracy it needs was not measured"
    gap = ra_sl - ra_csl
    floor, why = min_gap, f"min_gap {min_gap}"
    if n:
        se2 = 2 * math.sqrt((ra_sl * (1 - ra_sl) + ra_csl * (1 - ra_csl)) / n)
        if se2 > floor:
            floor, why = se2, f"two standard errors ({se2:.4f}) of the difference at n = {n}"
    if gap <= floor:
        return None, (f"n/a: RA_sl - RA_csl = {gap:+.4f} is not above {why}; the ratio is undefined or "
                      f"dominated by sampling noise")
    return (ra_fn - ra_csl) / gap, ""


def protocol_levels(ev: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """Clean, robust (the first sweep attack, per eps) and mean corruption accuracy of every protocol and
    level an eval.json holds: {protocol: {level: {...}}} (standard/image or standard/clip is the headline)."""
    attack = ev.get("robust_attack", "pgd")
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, p in (ev.get("protocols") or {}).items():
        for level, s in p["levels"].items():
            sweep = s["robust"].get(attack, {})
            out.setdefault(name, {})[level] = {
                "clean_acc": s["clean_acc"], "n_samples": s["n_samples"],
                "robust_linf": {str(e["eps_255"]): e["acc"] for e in sweep.get("linf", [])},
                "robust_l2": {str(e["eps"]): e["acc"] for e in sweep.get("l2", [])},
                "autoattack": (s.get("autoattack") or {}).get("acc"),
                "corruption_mean": (s.get("corruptions") or {}).get("mean"),
                "sanity_pass": (s.get("sanity") or {}).get("pass")}
    return out


def analyse_track(study: StudyConfig, track: Track, evals: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per-variant rows plus the gap and gap-closed figures at the headline epsilon (and at every eps)."""
    norm, eps = study.headline_norm, study.headline_eps
    ra = {v: robust_at(ev, norm, eps) for v, ev in evals.items()}
    all_eps = sorted({(e["eps_255"] if n == "linf" else e["eps"]) for ev in evals.values()
                      for n in (norm,) for e in ev["robust"].get(n, [])})
    gaps = {}
    for e in all_eps:
        sl, csl = (robust_at(evals[v], norm, e) if v in evals else None for v in ("sl", "csl"))
        gaps[str(e)] = None if sl is None or csl is None else sl - csl
    rows = []
    for v, ev in evals.items():
        var = VARIANTS[v]
        closed, why = None, ""
        gain = None
        if var.fn and var.base == "csl":
            closed, why = gap_closed(ra.get("sl"), ra.get("csl"), ra[v], study.min_gap, ev["n_samples"])
        if var.fn and var.base in evals and ra.get(var.base) is not None and ra[v] is not None:
            gain = ra[v] - ra[var.base]
        det = ev.get("fn_detector_stats") or {}
        rep = ev["representation"]
        rows.append({
            "variant": v, "label": var.label, "method": ev["method"], "fn_detector": ev["fn_detector"],
            "clean_acc": ev["clean_acc"], "clean_acc_multiclip": ev.get("clean_acc_multiclip"),
            "robust_linf": {str(e["eps_255"]): e["acc"] for e in ev["robust"].get("linf", [])},
            "robust_l2": {str(e["eps"]): e["acc"] for e in ev["robust"].get("l2", [])},
            "headline_ra": ra[v], "corruption_mean": ev["corruptions"]["mean"],
            "corruption_family_mean": ev["corruptions"]["family_mean"],
            "uniformity": rep["uniformity"], "alignment": rep["alignment"],
            "inter_intra_ratio": rep["inter_intra_ratio"], "sensitivity_random": rep["sensitivity_random"],
            "sensitivity_adversarial": rep["sensitivity_adversarial"],
            "fn_precision": det.get("precision"), "fn_recall": det.get("recall"),
            "fn_gain": gain, "gap_closed": closed, "gap_closed_note": why, "n_samples": ev["n_samples"],
            "eval_dir": str(Path(ev["run"]) / "eval"), "protocols": protocol_levels(ev),
        })
    gap = None if ra.get("sl") is None or ra.get("csl") is None else ra["sl"] - ra["csl"]
    return {"track": track.name, "config": track.config, "headline": {"norm": norm, "eps": eps},
            "robustness_gap": gap, "robustness_gap_per_eps": gaps, "rows": rows,
            "is_video": next(iter(evals.values()))["is_video"] if evals else None,
            "num_classes": next(iter(evals.values()))["num_classes"] if evals else None}


# -------------------------------------------------------------------------------------------- report

MAIN_COLUMNS = [("variant", "variant"), ("clean", "clean_acc"), ("clean multi-clip", "clean_acc_multiclip"),
                ("RA headline", "headline_ra"), ("mean corruption", "corruption_mean"),
                ("uniformity", "uniformity"), ("alignment", "alignment"), ("FN precision", "fn_precision"),
                ("FN recall", "fn_recall"), ("FN gain (RA)", "fn_gain"), ("gap closed", "gap_closed")]


def main_table(track: dict[str, Any]) -> str:
    """The track's main Markdown table (its numbers are the JSON's, printed with ``fmt``)."""
    rows = [[r[key] if key != "variant" else r["variant"] for _, key in MAIN_COLUMNS] for r in track["rows"]]
    return markdown_table([h for h, _ in MAIN_COLUMNS], rows)


def _plots(track: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = track["track"]
    files = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, xlabel in ((axes[0], "robust_linf", "eps x 255 (L-inf)"), (axes[1], "robust_l2", "eps (L2)")):
        for r in track["rows"]:
            pts = sorted((float(e), a) for e, a in r[key].items())
            if pts:
                ax.plot(*zip(*pts), marker="o", label=r["variant"])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("robust accuracy")
        ax.set_ylim(0, 1)
    axes[1].legend(fontsize=7)
    fig.suptitle(f"{name}: PGD robust accuracy")
    fig.tight_layout()
    fig.savefig(out / f"{name}_accuracy_vs_eps.png", dpi=100)
    plt.close(fig)
    files.append(f"{name}_accuracy_vs_eps.png")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    variants = [r["variant"] for r in track["rows"]]
    axes[0].bar(variants, [r["uniformity"] for r in track["rows"]])
    axes[0].set_ylabel("uniformity (lower = more uniform)")
    families = sorted({f for r in track["rows"] for f in r["corruption_family_mean"]})
    width = 0.8 / max(1, len(families))
    for k, fam in enumerate(families):
        axes[1].bar([i + k * width for i in range(len(variants))],
                    [r["corruption_family_mean"].get(fam, math.nan) for r in track["rows"]], width, label=fam)
    axes[1].set_xticks([i + 0.4 - width / 2 for i in range(len(variants))], variants)
    axes[1].set_ylabel("corruption accuracy")
    axes[1].set_ylim(0, 1)
    axes[1].legend(fontsize=7)
    for ax in axes:
        ax.tick_params(axis="x", rotation=60)
    fig.tight_layout()
    fig.savefig(out / f"{name}_uniformity_corruptions.png", dpi=100)
    plt.close(fig)
    files.append(f"{name}_uniformity_corruptions.png")
    return files


def csv_rows(tracks: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    eps_linf = sorted({e for t in tracks for r in t["rows"] for e in r["robust_linf"]}, key=float)
    eps_l2 = sorted({e for t in tracks for r in t["rows"] for e in r["robust_l2"]}, key=float)
    scalar = [k for _, k in MAIN_COLUMNS if k != "variant"] + ["inter_intra_ratio", "sensitivity_random",
                                                               "sensitivity_adversarial", "n_samples"]
    headers = ["track", "variant", "method", "fn_detector", *scalar, *[f"ra_linf_{e}" for e in eps_linf],
               *[f"ra_l2_{e}" for e in eps_l2]]
    rows = [[t["track"], r["variant"], r["method"], r["fn_detector"], *[r[k] for k in scalar],
             *[r["robust_linf"].get(e) for e in eps_linf], *[r["robust_l2"].get(e) for e in eps_l2]]
            for t in tracks for r in t["rows"]]
    return headers, rows


def write_study_report(study: StudyConfig, tracks: list[dict[str, Any]], out: Path,
                       notes: list[str]) -> Path:
    """``report.md``, ``study.json``, ``study.csv`` and per-track PNGs into ``out``."""
    from vidcsl.train.logging import write_json

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "study.json", {"name": study.name, "source": study.source, "min_gap": study.min_gap,
                                    "tracks": tracks, "notes": notes})
    write_csv_rows(out / "study.csv", *csv_rows(tracks))
    unit = "/255" if study.headline_norm == "linf" else ""
    lines = [f"# Study `{study.name}`", "",
             f"Config `{study.source}`. Every number below was measured by this run of the study (sub-runs in "
             f"`{study.runs_dir}`); they are what these models, budgets and subsets gave, not a test of any "
             "paper's claim. Robust accuracy (RA) is from PGD on encoder + linear probe (SL: its own "
             f"classifier); the headline RA is at {study.headline_norm} eps = {fmt(study.headline_eps, 3)}{unit}. "
             "Gap closed = (RA_fn - RA_csl) / (RA_sl - RA_csl) at that eps; FN gain = RA of the variant "
             "minus RA of the same method without FN removal.", ""]
    for t in tracks:
        lines += [f"## Track `{t['track']}`", "", f"Training config `{t['config']}`; "
                  f"{t['rows'][0]['n_samples'] if t['rows'] else 0} evaluation samples; {t['num_classes']} "
                  f"classes (chance accuracy {fmt(1 / t['num_classes'])}).", "",
                  main_table(t), ""]
        gap = t["robustness_gap"]
        lines.append(f"Robustness gap RA_sl - RA_csl at the headline eps: {fmt(gap)}"
                     + ("" if gap is None else (" (SL higher)" if gap > 0 else " (SL not higher)")) + ".")
        for r in t["rows"]:
            if r["gap_closed_note"]:
                lines.append(f"- `{r['variant']}` gap closed: {r['gap_closed_note']}")
        per_eps = [[e, g] for e, g in t["robustness_gap_per_eps"].items()]
        lines += ["", f"Gap RA_sl - RA_csl per eps ({t['headline']['norm']}):", "",
                  markdown_table(["eps", "gap"], per_eps), ""]
        linf = sorted({e for r in t["rows"] for e in r["robust_linf"]}, key=float)
        l2 = sorted({e for r in t["rows"] for e in r["robust_l2"]}, key=float)
        lines += ["Robust accuracy per eps (L-inf eps x 255 | L2 eps):", "",
                  markdown_table(["variant", *[f"linf {e}" for e in linf], *[f"l2 {e}" for e in l2]],
                                 [[r["variant"], *[r["robust_linf"].get(e) for e in linf],
                                   *[r["robust_l2"].get(e) for e in l2]] for r in t["rows"]]), ""]
        lines += [f"![{p}]({p})" for p in _plots(t, out)] + [""]
        lines += ["Per-run reports: " + ", ".join(f"[{r['variant']}]({os.path.relpath(r['eval_dir'], out)}/report.md)"
                                                  for r in t["rows"]), ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    (out / "report.md").write_text("\n".join(lines))
    return out / "report.md"


# ---------------------------------------------------------------------------------------------- driver


def run_study(study: StudyConfig, eval_overrides: list[str] | tuple[str, ...] = ()) -> Path:
    """Train (or keep) and evaluate every sub-run, then write the comparison; returns the report path."""
    start = time.perf_counter()
    root = Path(study.runs_dir)
    notes: list[str] = []
    jobs = []
    for t in study.tracks:
        for v in t.variants:
            if available(v):
                jobs.append((t, v))
            else:
                notes.append(f"track {t.name}: variant {v} skipped: its training method is not installed")
    results: dict[str, dict[str, dict[str, Any]]] = {t.name: {} for t in study.tracks}
    # every sub-run's training and evaluation config is built (and checked) before anything trains
    configs = {(t.name, v): variant_config(study, t, v, root / t.name / v) for t, v in jobs}
    evals = {(t.name, v): for_run(eval_config_from_dict({**study.eval, **t.eval, "progress": study.progress,
                                                         "device": study.device}, eval_overrides),
                                  configs[(t.name, v)].method.name == "supervised") for t, v in jobs}
    bar = tqdm(jobs, desc=f"study {study.name}", disable=not study.progress, position=0)
    for t, v in bar:
        bar.set_postfix_str(f"{t.name}/{v}")
        run_dir = root / t.name / v
        cfg = configs[(t.name, v)]
        how = train_variant(cfg, run_dir)
        results[t.name][v] = evaluate_variant(run_dir, evals[(t.name, v)])
        if how == "kept":
            notes.append(f"{t.name}/{v}: training kept from an earlier run of the study")
    bar.close()
    tracks = [analyse_track(study, t, results[t.name]) for t in study.tracks if results[t.name]]
    notes.append(f"study wall time {time.perf_counter() - start:.0f} s")
    return write_study_report(study, tracks, root, notes)


# ------------------------------------------------------------------------------- non-robust features


def _synthetic_bundle(cfg: Any, images: Any, labels: Any, mode: str, views: int) -> Any:
    """The real dataset's bundle with the training split replaced by a synthetic one (same transforms).

    Pixels are stored as uint8 for the image pipeline: rounding moves each pixel by at most 0.5/255.
    """
    import numpy as np
    import torch
    from torch.utils.data import Subset

    from vidcsl.data.factory import build_datasets
    from vidcsl.data.images import ImageDataset

    bundle = build_datasets(cfg.data, mode, views=views, seed=cfg.train.seed)
    train = bundle.train.dataset if isinstance(bundle.train, Subset) else bundle.train
    arr = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    lab = np.asarray(labels, dtype=np.int64)
    bundle.train = ImageDataset(arr, lab, transform=train.transform, two_views=train.two_views)
    bundle.train_eval = ImageDataset(arr, lab, transform=None)
    return bundle


def _probe_on(run_dir: Path, bundle: Any, cfg: Any, device: Any, ecfg: EvalConfig) -> None:
    """Linear probe of a CSL run on the synthetic training set (selected on the real validation split), with
    the settings the evaluation asks for recorded, so ``evaluate`` uses it instead of training its own."""
    from vidcsl.config import apply_overrides, config_from_dict, config_to_dict
    from vidcsl.robustness.protocols import requested_settings
    from vidcsl.train.checkpoint import load_trained_method, save_checkpoint
    from vidcsl.train.logging import write_json
    from vidcsl.train.probe import extract_features_of, train_linear_probe
    from vidcsl.train.trainer import make_loader

    method, _, _ = load_trained_method(run_dir, map_location=device)
    probe_cfg = config_from_dict(apply_overrides(config_to_dict(cfg), ecfg.probe)).probe
    bs = probe_cfg.batch_size

    def feats(ds, desc):
        return extract_features_of(method.encoder, make_loader(ds, bs), device, False, desc, cfg.train.progress)

    train, val = feats(bundle.train_eval, "synthetic features"), feats(bundle.val, "val features")
    result = train_linear_probe(train, val, bundle.num_classes, probe_cfg, device=device,
                                progress=cfg.train.progress)
    out = run_dir / "probe"
    save_checkpoint(out / "classifier.pt", {"model": result.classifier.state_dict(),
                                            "num_classes": bundle.num_classes, "feature_dim": train[0].shape[1]})
    write_json(out / "probe.json", {"trained_on": "synthetic training set",
                                    "settings": requested_settings(cfg, ecfg, "standard", False), **result.summary()})


def nonrobust_study(run: str | os.PathLike, *, robust_run: str | os.PathLike | None = None,
                    out_dir: str | os.PathLike | None = None, n_train: int = 1000, steps: int = 1000,
                    step_size: float = 0.1, eps: float = 0.5, epochs: int | None = None,
                    eval_settings: list[str] | tuple[str, ...] = (), device: str = "auto") -> Path:
    """Build the non-robust (from ``run``) and robust (from ``robust_run``) sets, train SL and CSL on each,
    evaluate on the real test set; writes ``nonrobust.json``, ``matrix.csv``, ``matrix.md``, ``report.md``."""
    from vidcsl.config import apply_overrides, config_from_dict, config_to_dict, validate_config
    from vidcsl.data.factory import build_datasets
    from vidcsl.robustness.evaluate import load_tensors, select_device
    from vidcsl.robustness.nonrobust import build_feature_dataset, load_feature_dataset, save_feature_dataset
    from vidcsl.train.checkpoint import load_trained_method, resolve_checkpoint
    from vidcsl.train.logging import write_json
    from vidcsl.train.trainer import Trainer

    if n_train < 2 or steps < 0 or not step_size > 0 or not eps > 0:
        raise ValueError(f"need n_train >= 2, steps >= 0, step_size > 0, eps > 0; got {n_train}, {steps}, "
                         f"{step_size}, {eps}")
    dev = select_device(device)
    ckpt = resolve_checkpoint(run)
    _, cfg, _ = load_trained_method(ckpt)
    if cfg.data.kind not in ("embedded_digits", "cifar10", "cifar100", "image_folder"):
        raise ValueError(f"vidcsl nonrobust supports image datasets; run {str(run)!r} trained on {cfg.data.kind!r}")
    out = Path(out_dir) if out_dir is not None else ckpt.parent.parent / "nonrobust"
    ecfg = eval_config_from_dict({"device": str(dev)}, eval_settings)
    real = build_datasets(cfg.data, "eval", seed=cfg.train.seed)
    idx = list(range(min(n_train, len(real.train_eval))))
    x, y = load_tensors(real.train_eval, idx, 256, desc="real training images", progress=True)
    sources = {"nonrobust": (ckpt, False), "robust": (resolve_checkpoint(robust_run or run), True)}
    matrix: dict[str, dict[str, Any]] = {}
    for kind, (source, robust) in sources.items():
        npz = out / f"{kind}.npz"
        if not npz.is_file():
            encoder = load_trained_method(source, map_location=dev)[0].encoder
            new_x, new_y = build_feature_dataset(encoder, x, y, robust=robust, steps=steps, step_size=step_size,
                                                 eps=eps, seed=cfg.train.seed, device=dev)
            save_feature_dataset(npz, new_x, new_y, {
                "kind": kind, "source_checkpoint": str(source), "dataset": cfg.data.kind, "n_train": len(idx),
                "steps": steps, "step_size": step_size, "eps": None if robust else eps,
                "objective": "min ||g(x') - g(x)||_2 from another training image (Ilyas et al. 2019)"})
        images, labels, meta = load_feature_dataset(npz)
        matrix[kind] = {"provenance": meta}
        for paradigm, method in (("sl", "supervised"), ("csl", "simclr")):
            extra = [f"method.name={method}", "fn.detector=none", "data.limit_train=null", "train.knn_every=-1",
                     f"train.name={kind}_{paradigm}"]
            if epochs is not None:
                extra.append(f"train.epochs={epochs}")
            extra += [f"train.device={dev}", f"train.batch_size={min(cfg.train.batch_size, len(idx))}",
                      "train.accumulate=1"]
            pcfg = config_from_dict(apply_overrides(config_to_dict(cfg), extra))
            validate_config(pcfg)
            run_dir = out / kind / paradigm
            mode, views = ("supervised", 1) if method == "supervised" else ("contrastive", 2)
            bundle = _synthetic_bundle(pcfg, images, labels, mode, views)
            if not (run_dir / "metrics.json").is_file():
                resume = (run_dir / "checkpoints" / "last.pt").is_file()
                Trainer(pcfg, run_dir=run_dir, resume=resume, data=bundle).fit()
                if method != "supervised":
                    _probe_on(run_dir, bundle, pcfg, dev, ecfg)
            ev = evaluate_variant(run_dir, for_run(ecfg, method == "supervised"))
            matrix[kind][paradigm] = {"clean_acc": ev["clean_acc"], "robust": ev["robust"],
                                      "eval_dir": str(run_dir / "eval")}
    headline = [("linf", e) for e in ecfg.linf_eps_255 if e > 0][:1] + [("l2", e) for e in ecfg.l2_eps if e > 0][-1:]
    headers = ["training set", *[f"{p} {c}" for p in ("SL", "CSL") for c in
                                 ["clean", *[f"RA {n} {e:g}{'/255' if n == 'linf' else ''}" for n, e in headline]]]]
    rows = []
    for kind in matrix:
        row = [kind]
        for p in ("sl", "csl"):
            cell = matrix[kind][p]
            row += [cell["clean_acc"], *[robust_at({"robust": cell["robust"]}, n, e) for n, e in headline]]
        rows.append(row)
    write_json(out / "nonrobust.json", {"run": str(ckpt), "matrix": matrix, "headline": headline})
    write_csv_rows(out / "matrix.csv", headers, rows)
    table = markdown_table(headers, rows)
    (out / "matrix.md").write_text(table + "\n")
    (out / "report.md").write_text("\n".join([
        "# Robust and non-robust feature datasets", "",
        f"Non-robust set from `{sources['nonrobust'][0]}` (L2 ball {eps}), robust set from "
        f"`{sources['robust'][0]}` (unconstrained); {len(idx)} training images, {steps} steps of {step_size}. "
        "SL and CSL (+ linear probe on the same synthetic set) were trained on each and evaluated on the real "
        f"test split ({ecfg.n_samples} samples). Numbers as measured.", "", table, ""]))
    return out / "report.md"
