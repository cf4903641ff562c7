"""Typed experiment configuration: dataclass schemas, YAML loading, dotted ``key=value`` overrides.

Every mistake a config can hold (an unknown key, a wrong type, a bad choice, a missing dataset path)
fails here, before any model or dataset is built, with a message naming the key or the path.

    cfg = load_config("configs/digits_simclr.yaml", ["optim.lr=0.3", "train.epochs=2"])

A YAML file may start from another with ``base: other.yaml`` (relative to the file); its keys are
merged section by section, the including file winning.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vidcsl.errors import ConfigError
from vidcsl.methods.false_negatives import FalseNegativeConfig
from vidcsl.schema import bounded, check_field_value, check_fields, choices, matching

IMAGE_KINDS = ("embedded_digits", "cifar10", "cifar100", "image_folder")
VIDEO_KINDS = ("embedded_video", "ucf101", "hmdb51", "kinetics", "ssv2", "video_list", "video_folder")
DATASET_KINDS = IMAGE_KINDS + VIDEO_KINDS


@dataclass
class DataConfig:
    """Which dataset, where it lives, and how samples are cut (clips) and augmented."""

    kind: str = choices(*DATASET_KINDS, default="embedded_digits")
    root: str | None = None  # dataset folder (videos / CIFAR batches / image folder)
    cache_dir: str | None = None  # embedded datasets: where to cache the generated data
    fold: int = bounded(1, ge=1, le=3)  # UCF101 / HMDB51 split number (1-3)
    annotations: str | None = None  # UCF101 / HMDB51 split-file folder (default: root)
    train_list: str | None = None  # video_list: "path label" files, kinetics: CSV files
    val_list: str | None = None
    test_list: str | None = None
    val_fraction: float = bounded(0.1, gt=0, lt=1)  # held out of train when the dataset has no validation split
    image_size: int = bounded(32, ge=1)
    aug_strength: float = bounded(1.0, ge=0)  # colour-jitter strength of the contrastive augmentations
    crop_scale: list[float] | None = bounded(None, gt=0, le=1)  # random-resized-crop area range [low, high]
    supervised_augment: str = choices("standard", "contrastive", default="standard")  # SL: crop+flip or SimCLR's
    num_frames: int = bounded(8, ge=1)
    stride: int = bounded(2, ge=1)
    target_fps: float | None = bounded(None, gt=0)
    clip_sampler: str = choices("random", "uniform", "two_clip", default="two_clip")
    max_gap_s: float | None = bounded(None, ge=0)  # two_clip: largest time between the two clips
    same_time: bool = False  # two_clip: same time, different augmentation
    eval_clips: int = bounded(1, ge=1)  # uniform clips per video at evaluation (embeddings averaged)
    eval_crops: int = bounded(1, ge=1)
    video_backend: str = choices("auto", "decord", "pyav", default="auto")
    limit_train: int | None = bounded(None, ge=1)  # keep only N training samples (quick runs); null = all
    limit_eval: int | None = bounded(None, ge=1)
    num_workers: int = bounded(0, ge=0)
    max_bad_fraction: float = bounded(0.1, ge=0, le=1)  # training stops when more of an epoch's samples are bad


@dataclass
class ModelConfig:
    """Backbone (``vidcsl.models.registry`` name) and projection head."""

    encoder: str = "small_cnn"
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    proj_hidden_dim: int = bounded(512, ge=1)
    proj_out_dim: int = bounded(128, ge=1)
    proj_layers: int = bounded(2, ge=1)
    proj_batch_norm: bool = True


@dataclass
class MethodConfig:
    """Training objective: the method, what the contrastive ones share, the collapse guard, its own settings.

    ``options``: the settings the method declares (its ``settings_class``, e.g. BYOL's ``momentum``),
    checked by :func:`validate_config` like every other key. ``collapse_std``: stop the run when the
    logged ``embed_std`` (per-dimension std of the normalised embeddings x sqrt(d): about 1 when spread,
    0 when collapsed) falls below it; 0 turns the guard off. docs/methods.md lists every method's options.
    """

    name: str = "simclr"
    temperature: float = bounded(0.1, gt=0)  # of the InfoNCE losses (SimCLR, MoCo, SupCon, adversarial CSL)
    loss_backend: str = choices("auto", "torch", "triton", "reference", default="auto")
    # dtype of the fused InfoNCE dots (fp32 accumulation always): auto = bf16 on CUDA, exact fp32 on CPU
    loss_precision: str = choices("auto", "bf16", "fp16", "tf32", "ieee", default="auto")
    collapse_std: float = bounded(0.02, ge=0, lt=1)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """Optimiser and per-step schedule (linear warm-up, then cosine to ``min_lr``)."""

    name: str = choices("sgd", "lars", "adamw", default="sgd")
    lr: float = bounded(0.1, gt=0)
    lr_scaling: str = choices("none", "linear", "sqrt", default="none")  # scale lr by batch_size / 256
    momentum: float = bounded(0.9, ge=0, lt=1)
    weight_decay: float = bounded(1e-4, ge=0)
    betas: list[float] = bounded([0.9, 0.999], ge=0, lt=1)
    lars_eta: float = bounded(0.001, gt=0)  # LARS trust coefficient
    exclude_bias_norm: bool = True  # no weight decay / LARS adaptation for biases and norm layers
    schedule: str = choices("cosine", "constant", default="cosine")
    warmup_epochs: float = bounded(0.0, ge=0)
    min_lr: float = bounded(0.0, ge=0)
    grad_clip: float | None = bounded(None, gt=0)  # max global gradient norm; null = no clipping


SEED_LIMIT = 2**32  # numpy seeds are 32-bit unsigned
DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?"


@dataclass
class TrainConfig:
    """The loop: length, batch (global, per optimiser step), precision, logging and checkpoints."""

    name: str | None = None  # run folder name (default: config file stem)
    runs_dir: str = "runs"
    epochs: int = bounded(10, ge=1)
    max_steps: int | None = bounded(None, ge=1)  # stop after this many optimiser steps (quick runs, tests)
    batch_size: int = bounded(256, ge=1)  # global: split over processes and accumulation steps
    accumulate: int = bounded(1, ge=1)
    seed: int = bounded(0, ge=0, lt=SEED_LIMIT)
    deterministic: bool = False
    device: str = matching(DEVICE_PATTERN, "auto, cpu, cuda or cuda:N", default="auto")
    precision: str = choices("auto", "bf16", "fp16", "fp32", default="auto")
    channels_last: bool = True  # CUDA only
    sync_bn: bool = False  # DDP on CUDA: BatchNorm statistics over the global batch
    log_every: int = bounded(10, ge=1)
    ckpt_every: int = bounded(500, ge=0)  # optimiser steps; 0 = only at the end / on preemption
    knn_every: int = bounded(0, ge=-1)  # epochs; 0 = only at the end (-1 = never)
    knn_k: int = bounded(200, ge=1)
    knn_temperature: float = bounded(0.07, gt=0)
    tensorboard: bool = True
    progress: bool = True


@dataclass
class ProbeConfig:
    """Linear probe on frozen features, selected on the validation split."""

    epochs: int = bounded(50, ge=1)
    optimizer: str = choices("sgd", "adam", default="sgd")
    lr: float = bounded(0.1, gt=0)
    weight_decay: float = bounded(0.0, ge=0)
    momentum: float = bounded(0.9, ge=0, lt=1)
    batch_size: int = bounded(256, ge=1)
    cached: bool = True  # features computed once (else live, with training augmentation)
    seed: int = bounded(0, ge=0, lt=SEED_LIMIT)


@dataclass
class Config:
    """A whole experiment."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    fn: FalseNegativeConfig = field(default_factory=FalseNegativeConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)


# --------------------------------------------------------------------------- loading


def load_config(path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = (),
                *, check_paths: bool = True) -> Config:
    """Read ``path`` (YAML; ``None`` = defaults), apply ``overrides``, validate; raises ValueError."""
    raw: dict[str, Any] = {} if path is None else read_yaml_with_base(Path(path))
    raw = apply_overrides(raw, overrides)
    cfg = config_from_dict(raw)
    if path is not None and cfg.train.name is None:
        cfg.train.name = Path(path).stem
    validate_config(cfg, check_paths=check_paths)
    return cfg


def read_yaml_mapping(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """The mapping a YAML file holds (empty file: ``{}``). ``what`` names the file in the error, e.g.
    ``"study config 'x.yaml'"``: a missing file, invalid YAML or a non-mapping is a :class:`ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} must hold a mapping, got {type(raw).__name__}")
    return raw


def read_yaml_with_base(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML mapping, merging it over its ``base:`` file if it names one."""
    if path.resolve() in _seen:
        raise ConfigError(f"config file {str(path)!r} includes itself through 'base'")
    raw = read_yaml_mapping(path, f"config file {str(path)!r}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    parent = read_yaml_with_base(path.parent / base, _seen + (path.resolve(),))
    return deep_merge(parent, raw)


def deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings; the value is parsed by ``yaml.safe_load`` (``1e-3``, ``[1,2]``)."""
    raw = deep_merge({}, raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like 'section.key=value'")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text) if text != "" else None
        except yaml.YAMLError:
            value = text
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: config key {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Build a :class:`Config` from nested dicts, checking every key and type."""
    return _build(Config, raw, "")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (primitives only): what checkpoints and ``config.yaml`` store."""
    return dataclasses.asdict(cfg)


def config_yaml(cfg: Config) -> str:
    """The YAML text of ``cfg`` (what a run folder's ``config.yaml`` holds)."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    Path(path).write_text(config_yaml(cfg))


def config_differences(old: dict[str, Any], new: dict[str, Any], *, ignore: tuple[str, ...] = ()) -> list[str]:
    """``"section.key: old -> new"`` for each key both plain configs hold with different values; keys
    starting with an ``ignore`` entry are skipped (a key only one side has is not compared: configs gain keys)."""
    flat_old, flat_new = _section_keys(old), _section_keys(new)
    return [f"{key}: {flat_old[key]!r} -> {flat_new[key]!r}" for key in flat_new
            if key in flat_old and flat_old[key] != flat_new[key] and not key.startswith(ignore)]


def _section_keys(raw: dict[str, Any]) -> dict[str, Any]:
    return {f"{section}.{key}": value for section, keys in raw.items() if isinstance(keys, dict)
            for key, value in keys.items()}


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "the config"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config key '{where}' must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        full = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f" (known: {', '.join(fields)})"
            raise ConfigError(f"config key '{full}' is unknown{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, full + ".")
        else:
            kwargs[key] = check_field_value(fields[key], _check_type(value, tp, full), full)
    return cls(**kwargs)


def _check_type(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` (ints widened to float where a float is expected) or raise naming ``key``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, key)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}' expects {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' expects a list, got {value!r}")
        return [_check_type(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' expects a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"config key '{key}' expects {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _type_name(tp: Any) -> str:
    args = typing.get_args(tp)
    if args and typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


# --------------------------------------------------------------------------- semantic checks


def validate_config(cfg: Config, *, check_paths: bool = True) -> None:
    """Every field's declaration (again, as a config may have been changed in code), the checks that span
    several keys, the encoder and method names, and dataset paths; raises ConfigError naming the key or path."""
    for section in dataclasses.fields(cfg):
        check_fields(getattr(cfg, section.name), section.name)
    if cfg.data.crop_scale is not None and not (len(cfg.data.crop_scale) == 2
                                                 and cfg.data.crop_scale[0] <= cfg.data.crop_scale[1]):
        raise ConfigError(f"config key 'data.crop_scale' must be [low, high] with 0 < low <= high <= 1, "
                          f"got {cfg.data.crop_scale}")
    if len(cfg.optim.betas) != 2:
        raise ConfigError(f"config key 'optim.betas' must hold two numbers, got {cfg.optim.betas}")
    if cfg.train.batch_size % cfg.train.accumulate:
        raise ConfigError(f"config key 'train.batch_size' ({cfg.train.batch_size}) must be divisible by "
                          f"'train.accumulate' ({cfg.train.accumulate})")
    _check_names(cfg)
    if check_paths:
        check_data_paths(cfg.data)


def _check_names(cfg: Config) -> None:
    """``model.encoder`` and ``method.name`` must name a registered encoder and method; the method's options fit it."""
    from vidcsl.methods.base import method_class
    from vidcsl.models.registry import ENCODERS

    if cfg.model.encoder not in ENCODERS:
        close = difflib.get_close_matches(cfg.model.encoder, ENCODERS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"config key 'model.encoder' is {cfg.model.encoder!r}, not a known encoder "
                          f"({hint}known: {', '.join(ENCODERS)})")
    try:
        cls = method_class(cfg.method.name)
    except ValueError as err:  # the registry's message names the key and the known methods
        raise ConfigError(str(err)) from None
    cls.check_config(cfg)  # every method.options key, against the method's declared settings


def check_data_paths(data: DataConfig) -> None:
    """The dataset files a config names must exist (embedded datasets need none)."""
    if data.kind.startswith("embedded_"):
        return
    needs_root = data.kind not in ("video_list", "kinetics")
    if needs_root and not data.root:
        raise ConfigError(f"config key 'data.root' is required for data.kind={data.kind!r}")
    named = {"data.root": data.root, "data.annotations": data.annotations, "data.train_list": data.train_list,
             "data.val_list": data.val_list, "data.test_list": data.test_list}
    if data.kind in ("video_list", "kinetics") and not data.train_list:
        raise ConfigError(f"config key 'data.train_list' is required for data.kind={data.kind!r}")
    for key, path in named.items():
        if path and not os.path.exists(os.path.expanduser(path)):
            raise ConfigError(f"dataset path {path!r} (config key '{key}') does not exist")
