"""``vidcsl study CONFIG``: train every paradigm of the comparison, evaluate each, write one report.

A study config (YAML) names one or more *tracks* (a dataset + backbone: a base training config), the
*variants* to train on each, and the training *seeds*. Every variant is the track's config plus a few
overrides (:data:`VARIANTS`), trained once per seed into ``runs_dir/<track>/<variant>/seed<s>/`` and
evaluated there by ``vidcsl.robustness.evaluate``; every model of a track is evaluated on the same test
samples with the same attack seeds, so outcomes pair sample by sample and seed by seed. The comparison
(``vidcsl.robustness.comparison``: paired bootstrap intervals, McNemar, the questions and whether this
budget resolves them) and the report (``vidcsl.report.study_report``) follow. The study is resumable: a
sub-run with final metrics is not retrained, an evaluation with the same settings is not repeated.

The protocol — what is compared, what SL and CSL share, seeds and pairing, the statistics, the rule for
"resolved", the mechanism figure — is described in docs/study.md.

Variants:

    random_init            the encoder at initialisation + a linear probe (reference: what random features give)
    sl                     supervised cross-entropy (same backbone, augmentations, schedule)
    csl                    SimCLR;  csl_t<T> (e.g. csl_t0.5): SimCLR at temperature T (``csl_temperatures``)
    moco                   MoCo v2
    csl_fn_threshold / _topk / _oracle   SimCLR + false-negative elimination with that detector
    supcon                 supervised contrastive (the labels as positives: oracle FN, attract)
    byol, simsiam, vicreg, barlow        negative-free
    clae, rocl, acl        adversarial contrastive methods; ``*_fn`` adds FN removal (``adv_fn_detector``)
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from vidcsl.errors import ConfigError, RunFolderError
from vidcsl.robustness.evaluate import EvalConfig, eval_config_from_dict, evaluate_run, load_eval
from vidcsl.schema import bounded

# The paradigm groups of the report, in its order.
PARADIGMS = ("reference", "SL", "contrastive", "contrastive + FN", "negative-free", "adversarial contrastive")


@dataclass(frozen=True)
class Variant:
    label: str
    overrides: tuple[str, ...]
    paradigm: str
    base: str | None = None  # the variant it adds FN removal to (FN gain, gap closed)
    untrained: bool = False  # no training: the encoder at initialisation (random_init)

    @property
    def fn(self) -> bool:
        return self.base is not None

    @property
    def method(self) -> str:
        return next(o.split("=", 1)[1] for o in self.overrides if o.startswith("method.name="))


_NO_FN = "fn.detector=none"
VARIANTS: dict[str, Variant] = {
    "random_init": Variant("Random init (untrained encoder)", ("method.name=simclr", _NO_FN), "reference",
                           untrained=True),
    "sl": Variant("SL (supervised)", ("method.name=supervised", "data.supervised_augment=contrastive", _NO_FN),
                  "SL"),
    "csl": Variant("CSL (SimCLR)", ("method.name=simclr", _NO_FN), "contrastive"),
    # MoCo v2's own temperature (Chen et al. 2020); its momentum / queue come from the track (demo sizes)
    "moco": Variant("MoCo v2", ("method.name=moco", _NO_FN, "method.temperature=0.2"), "contrastive"),
    "csl_fn_threshold": Variant("CSL+FN threshold", ("method.name=simclr", "fn.detector=threshold"),
                                "contrastive + FN", "csl"),
    "csl_fn_topk": Variant("CSL+FN top-k", ("method.name=simclr", "fn.detector=topk"), "contrastive + FN", "csl"),
    "csl_fn_oracle": Variant("CSL+FN oracle", ("method.name=simclr", "fn.detector=oracle"), "contrastive + FN",
                             "csl"),
    "supcon": Variant("SupCon (labels as positives)", ("method.name=supcon", _NO_FN), "contrastive + FN"),
    "byol": Variant("BYOL", ("method.name=byol", _NO_FN), "negative-free"),
    "simsiam": Variant("SimSiam", ("method.name=simsiam", _NO_FN), "negative-free"),
    "vicreg": Variant("VICReg", ("method.name=vicreg", _NO_FN), "negative-free"),
    "barlow": Variant("Barlow Twins", ("method.name=barlow", _NO_FN), "negative-free"),
}
for _m in ("clae", "rocl", "acl"):
    VARIANTS[_m] = Variant(_m.upper(), (f"method.name={_m}", _NO_FN), "adversarial contrastive")
    VARIANTS[f"{_m}_fn"] = Variant(f"{_m.upper()}+FN", (f"method.name={_m}",), "adversarial contrastive", _m)

TEMPERATURE_VARIANT = re.compile(r"csl_t(\d+(?:\.\d+)?)")


def temperature_variant(temperature: float) -> str:
    """The name of CSL at ``temperature`` (``csl_t0.05``)."""
    return f"csl_t{temperature:g}"


def variant_spec(name: str) -> Variant:
    """The :class:`Variant` of a name: one of :data:`VARIANTS` or ``csl_t<T>`` (SimCLR at temperature T)."""
    if name in VARIANTS:
        return VARIANTS[name]
    match = TEMPERATURE_VARIANT.fullmatch(name)
    if match and float(match.group(1)) > 0:
        t = float(match.group(1))
        return Variant(f"CSL (SimCLR) t={t:g}", ("method.name=simclr", _NO_FN, f"method.temperature={t:g}"),
                       "contrastive")
    raise ConfigError(f"unknown study variant {name!r}; known: {', '.join(VARIANTS)}, csl_t<temperature>")


@dataclass
class Track:
    name: str
    config: str  # base training config (path relative to the study file)
    overrides: list[str] = field(default_factory=list)
    variants: list[str] = field(default_factory=lambda: [v for v in VARIANTS if v != "random_init"])
    variant_overrides: dict[str, list[str]] = field(default_factory=dict)  # extra overrides per variant
    seeds: list[int] | None = bounded(None, ge=0)  # None = the study's seeds
    variant_seeds: dict[str, list[int]] = field(default_factory=dict)  # fewer seeds for some variants
    eval: dict[str, Any] = field(default_factory=dict)  # merged over the study's eval section


@dataclass
class StudyConfig:
    name: str = "study"
    runs_dir: str = "runs/study"
    tracks: list[Track] = field(default_factory=list)
    seeds: list[int] = bounded([0], ge=0)  # train.seed of each sub-run; every variant is trained per seed
    csl_temperatures: list[float] = bounded([], gt=0)  # adds csl_t<T> to every track (the uniformity sweep)
    fn_threshold: float = bounded(0.8, ge=-1.0, le=1.0)  # the threshold detector's cosine cut-off
    fn_topk: int = bounded(5, ge=1)
    fn_warmup_epochs: int = bounded(0, ge=0)
    adv_fn_detector: str = "topk"  # detector of the adversarial *_fn variants
    device: str = "auto"
    headline_norm: str = "linf"
    headline_eps: float = bounded(2.0, ge=0)  # x 255 for linf; raw for l2
    n_boot: int = bounded(2000, ge=100)  # bootstrap replicates of every interval
    confidence: float = bounded(0.95, gt=0, lt=1)  # level of every interval
    progress: bool = True
    eval: dict[str, Any] = field(default_factory=dict)
    source: str | None = None  # where the config was read from (set by load_study_config)

    def track_seeds(self, track: Track, variant: str) -> list[int]:
        """The seeds ``variant`` is trained with on ``track``."""
        return list(track.variant_seeds.get(variant, track.seeds if track.seeds is not None else self.seeds))


def _unique(values: list[Any], key: str) -> None:
    if not values or len(set(values)) != len(values):
        raise ConfigError(f"study key '{key}' must list distinct values, at least one, got {values}")


def load_study_config(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> StudyConfig:
    """Read and check a study YAML (``key=value`` overrides apply to its top level, e.g. ``runs_dir=x``)."""
    from vidcsl.config import _build, apply_overrides, read_yaml_mapping

    path = Path(path)
    where = f"study config {str(path)!r}"
    raw = apply_overrides(read_yaml_mapping(path, where), overrides)
    tracks = raw.pop("tracks", None)
    if not isinstance(tracks, list) or not tracks:
        raise ConfigError(f"{where}: 'tracks' must be a non-empty list")
    cfg = _build(StudyConfig, raw, "")
    cfg.tracks = [_build(Track, t, f"tracks[{i}].") for i, t in enumerate(tracks)]
    cfg.source = str(path)
    _unique(cfg.seeds, "seeds")
    if len(set(cfg.csl_temperatures)) != len(cfg.csl_temperatures):
        raise ConfigError(f"{where}: 'csl_temperatures' repeats a value: {cfg.csl_temperatures}")
    for i, t in enumerate(cfg.tracks):
        at = f"{where}: tracks[{i}]"
        cfg_path = (path.parent / t.config) if not Path(t.config).is_absolute() else Path(t.config)
        if not cfg_path.is_file():
            raise ConfigError(f"{at}.config {t.config!r} does not exist (looked for {cfg_path})")
        t.config = str(cfg_path)
        t.variants += [temperature_variant(x) for x in cfg.csl_temperatures
                       if temperature_variant(x) not in t.variants]
        for v in t.variants:
            try:
                variant_spec(v)
            except ConfigError as err:
                raise ConfigError(f"{at}.variants: {err}") from None
        if len(set(t.variants)) != len(t.variants):
            raise ConfigError(f"{at}.variants repeats a variant: {t.variants}")
        for key, named in (("variant_overrides", t.variant_overrides), ("variant_seeds", t.variant_seeds)):
            bad = [v for v in named if v not in t.variants]
            if bad:
                raise ConfigError(f"{at}.{key} names {bad}, which are not in its variants")
        if t.seeds is not None:
            _unique(t.seeds, f"tracks[{i}].seeds")
        for v, seeds in t.variant_seeds.items():
            if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                      for s in seeds):
                raise ConfigError(f"{at}.variant_seeds.{v} must be a list of seeds (integers >= 0), got {seeds!r}")
            _unique(seeds, f"tracks[{i}].variant_seeds.{v}")
        eval_config_from_dict({**cfg.eval, **t.eval})  # fail early on a bad eval key
    if len({t.name for t in cfg.tracks}) != len(cfg.tracks):
        raise ConfigError(f"{where}: track names must be unique")
    if cfg.headline_norm not in ("linf", "l2"):
        raise ConfigError(f"study key 'headline_norm' must be linf or l2, got {cfg.headline_norm!r}")
    if cfg.adv_fn_detector not in ("threshold", "topk", "oracle"):
        raise ConfigError(f"study key 'adv_fn_detector' must be threshold, topk or oracle, got {cfg.adv_fn_detector!r}")
    return cfg


def sub_run_dir(root: str | os.PathLike, track: str, variant: str, seed: int) -> Path:
    """Where one (variant, seed) of a track is trained and evaluated."""
    return Path(root) / track / variant / f"seed{seed}"


def variant_config(study: StudyConfig, track: Track, variant: str, run_dir: Path, seed: int = 0, *,
                   check_paths: bool = True) -> Any:
    """The training :class:`vidcsl.config.Config` of one sub-run: the track's config, the variant's
    overrides, the study's FN settings, the track's extra overrides for the variant, then the run's name,
    folder, device and ``train.seed``. Nothing else differs between the variants of a track, so they share
    epochs, batch size, augmentations, encoder and optimiser unless ``variant_overrides`` says otherwise
    (the report checks this on the configs themselves: :func:`budget_sharing`)."""
    from vidcsl.config import load_config

    v = variant_spec(variant)
    extra = list(v.overrides)
    if v.fn and not any(o.startswith("fn.detector=") for o in extra):
        extra.append(f"fn.detector={study.adv_fn_detector}")
    fn = [f"fn.threshold={study.fn_threshold}", f"fn.topk={study.fn_topk}",
          f"fn.warmup_epochs={study.fn_warmup_epochs}"]
    run = [f"train.name={run_dir.name}", f"train.runs_dir={run_dir.parent}",
           f"train.progress={str(study.progress).lower()}", f"train.seed={seed}"]
    if study.device != "auto":
        run.append(f"train.device={study.device}")
    return load_config(track.config, [*track.overrides, *extra, *fn, *track.variant_overrides.get(variant, []),
                                      *run], check_paths=check_paths)


RUN_KEYS = ("train.name", "train.runs_dir", "train.progress", "train.tensorboard", "train.device", "train.seed")


def _flat(cfg: Any) -> dict[str, Any]:
    from vidcsl.config import config_to_dict

    return {f"{s}.{k}": v for s, keys in config_to_dict(cfg).items() if isinstance(keys, dict)
            for k, v in keys.items() if f"{s}.{k}" not in RUN_KEYS}


def recipe_differences(cfg: Any, reference: Any) -> dict[str, list[Any]]:
    """``{key: [value, reference value]}`` for every training key two sub-run configs set differently
    (the run's own name, folder, device and seed left out)."""
    a, b = _flat(cfg), _flat(reference)
    return {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


BUDGET_KEYS = ("train.epochs", "train.max_steps", "train.batch_size", "train.accumulate", "model.encoder")


def budget_sharing(sl: Any, csl: Any) -> dict[str, Any]:
    """What the SL and CSL sub-runs share, read off their configs: the budget keys, every ``data.*`` key
    (augmentations: SL trains with SimCLR's when ``data.supervised_augment`` is ``contrastive``, the only
    data key that matters to SL alone), every ``optim.*`` key, and how many augmented views of each image
    a step sees. ``differs`` lists every key set differently."""
    a, b = _flat(sl), _flat(csl)
    diff = recipe_differences(sl, csl)
    shared = {k: a[k] for k in BUDGET_KEYS if k in a and a.get(k) == b.get(k)}
    not_shared = {k: diff[k] for k in BUDGET_KEYS if k in diff}
    data_diff = [k for k in diff if k.startswith("data.") and k != "data.supervised_augment"]
    sl_aug = a.get("data.supervised_augment") == "contrastive"
    augment = {"shared": sl_aug and not data_diff,
               "detail": ("SimCLR's augmentations (data.supervised_augment = contrastive) and every other data.* "
                          "key equal" if sl_aug and not data_diff else
                          "SL trains with data.supervised_augment = " + repr(a.get("data.supervised_augment"))
                          + (f"; data keys differ: {', '.join(data_diff)}" if data_diff else ""))}
    optim_diff = [k for k in diff if k.startswith("optim.")]
    sl_views = 2 if (sl.method.options or {}).get("two_views") else 1
    return {"compared": ["sl", "csl"], "shared": shared, "not_shared": not_shared, "augmentations": augment,
            "optimiser": {"shared": not optim_diff, "differs": {k: diff[k] for k in optim_diff}},
            "views_per_step": {"sl": sl_views, "csl": 2}, "differs": diff}


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


def write_untrained_run(cfg: Any, run_dir: Path) -> None:
    """A run folder holding the method at initialisation (seeded with ``train.seed`` as a trained run
    would be): ``config.yaml``, ``checkpoints/last.pt`` with 0 steps, and ``metrics.json`` saying it was
    not trained. Evaluating it probes the random encoder's features (docs/study.md, "random_init")."""
    from vidcsl.config import config_to_dict, config_yaml
    from vidcsl.data.factory import build_datasets
    from vidcsl.methods.base import build_method, method_class
    from vidcsl.train.checkpoint import CHECKPOINT_DIR, LAST, build_encoder_of, save_checkpoint
    from vidcsl.train.logging import write_json, write_text_atomic
    from vidcsl.train.trainer import METRICS, seed_everything

    seed_everything(cfg.train.seed)
    cls = method_class(cfg.method.name)
    num_classes = build_datasets(cfg.data, cls.data_mode, views=cls.views_for(cfg), seed=cfg.train.seed).num_classes
    method = build_method(cfg, build_encoder_of(cfg), num_classes)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", config_yaml(cfg))
    save_checkpoint(run_dir / CHECKPOINT_DIR / LAST, {
        "version": 1, "model": method.state_dict(), "num_classes": num_classes, "config": config_to_dict(cfg),
        "progress": {"epoch": 0, "step_in_epoch": 0, "global_step": 0}})
    write_json(run_dir / METRICS, {"method": cfg.method.name, "encoder": cfg.model.encoder,
                                   "dataset": cfg.data.kind, "untrained": True, "epochs_completed": 0,
                                   "global_step": 0, "train_seconds": 0.0})


def train_variant(cfg: Any, run_dir: Path, untrained: bool = False) -> str:
    """Train one sub-run unless it already finished -> "trained" | "resumed" | "kept" (``untrained``:
    write the method at initialisation instead, :func:`write_untrained_run`)."""
    from vidcsl.train.checkpoint import CHECKPOINT_DIR, LAST
    from vidcsl.train.trainer import METRICS, Trainer

    if (run_dir / "config.yaml").is_file() and not _same_config(run_dir / "config.yaml", cfg):
        raise RunFolderError(f"sub-run {str(run_dir)!r} was trained with a different config than the study now "
                             f"asks for; delete it or choose another runs_dir")
    ckpt = run_dir / CHECKPOINT_DIR / LAST
    if (run_dir / METRICS).is_file() and ckpt.is_file():
        return "kept"
    if untrained:
        write_untrained_run(cfg, run_dir)
        return "trained"
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
    return old if fresh else evaluate_run(run_dir, ecfg, plots=False)  # the study report plots every model


def own_classifier(method: str) -> bool:
    """Whether a method trains a classifier of its own (SL, SL-AT): evaluated as is, so no probe settings."""
    from vidcsl.methods.base import method_class

    return method_class(method).own_classifier


def available(variant: str) -> bool:
    """Whether the variant's training method exists in this installation."""
    from vidcsl.methods.base import method_class

    try:
        method_class(variant_spec(variant).method)
    except ValueError:
        return False
    return True


def robust_at(ev: dict[str, Any], norm: str, eps: float) -> float | None:
    """Robust accuracy at ``eps`` (x 255 for linf) from an eval dict, None when not measured."""
    for e in ev["robust"].get(norm, []):
        value = e["eps_255"] if norm == "linf" else e["eps"]
        if math.isclose(value, eps, rel_tol=1e-6, abs_tol=1e-9):
            return e["acc"]
    return None


# ---------------------------------------------------------------------------------------------- driver


@dataclass
class Job:
    track: Track
    variant: str
    seed: int
    run_dir: Path
    cfg: Any  # vidcsl.config.Config
    ecfg: EvalConfig


def plan_jobs(study: StudyConfig, eval_overrides: list[str] | tuple[str, ...] = ()) -> tuple[list[Job], list[str]]:
    """Every sub-run's training and evaluation config, built and checked (attacks against the track's data
    included) before anything trains -> (jobs, notes on skipped variants)."""
    from vidcsl.config import IMAGE_KINDS

    jobs, notes = [], []
    for t in study.tracks:
        base = eval_config_from_dict({**study.eval, **t.eval, "progress": study.progress, "device": study.device},
                                     eval_overrides)
        checked = False
        for v in t.variants:
            if not available(v):
                notes.append(f"track {t.name}: variant {v} skipped: its training method is not installed")
                continue
            for seed in study.track_seeds(t, v):
                run_dir = sub_run_dir(study.runs_dir, t.name, v, seed)
                cfg = variant_config(study, t, v, run_dir, seed)
                if not checked:
                    base.check_attacks(cfg.data.kind not in IMAGE_KINDS)
                    checked = True
                jobs.append(Job(t, v, seed, run_dir, cfg, for_run(base, own_classifier(cfg.method.name))))
    return jobs, notes


def run_study(study: StudyConfig, eval_overrides: list[str] | tuple[str, ...] = ()) -> Path:
    """Train (or keep) and evaluate every sub-run, then compare and report; returns the report path."""
    from vidcsl.robustness.comparison import analyse_study
    from vidcsl.train.trainer import NonFiniteLossError

    start = time.perf_counter()
    jobs, notes = plan_jobs(study, eval_overrides)
    failed: set[tuple[str, str, int]] = set()
    bar = tqdm(jobs, desc=f"study {study.name}", disable=not study.progress, position=0)
    for job in bar:
        bar.set_postfix_str(f"{job.track.name}/{job.variant}/seed{job.seed}")
        try:
            how = train_variant(job.cfg, job.run_dir, variant_spec(job.variant).untrained)
        except NonFiniteLossError as err:  # diverged or collapsed: left out, the others go on
            notes.append(f"{job.track.name}/{job.variant}/seed{job.seed}: training stopped ({err}); left out of "
                         "the comparison")
            failed.add((job.track.name, job.variant, job.seed))
            continue
        evaluate_variant(job.run_dir, job.ecfg)
        if how == "kept":
            notes.append(f"{job.track.name}/{job.variant}/seed{job.seed}: training kept from an earlier run")
    bar.close()
    done = [j for j in jobs if (j.track.name, j.variant, j.seed) not in failed]
    result = analyse_study(study, done)
    result["notes"] = notes + [f"study wall time {time.perf_counter() - start:.0f} s"]
    from vidcsl.report.study_report import write_study_report

    return write_study_report(result, Path(study.runs_dir))
