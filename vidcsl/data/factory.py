"""Config -> datasets: wires ``cfg.data`` to the image and video dataset classes.

``build_datasets(data_cfg, mode)`` returns a :class:`DataBundle` with the training set in the shape the
method needs (two augmented views for ``contrastive``, one or two for ``supervised``, deterministic for
``eval``), the same training samples with the evaluation transform (kNN bank, probe features), and
validation / test splits. Datasets without a validation split get one held out of train (seeded),
so nothing downstream ever selects on test.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Subset

from vidcsl.errors import ConfigError, DataError

MODES = ("contrastive", "supervised", "eval")
# datasets with an official train / test split pair: test is the split reported (SSv2's test labels are not
# public, so its validation split is the one papers report); validation is held out of train
OFFICIAL_TEST_SPLIT = {"ucf101": "test", "hmdb51": "test", "ssv2": "validation"}


@dataclass
class DataBundle:
    train: Dataset  # training augmentation, 1 or 2 views
    train_eval: Dataset  # the training samples with the evaluation transform
    val: Dataset
    test: Dataset | None
    num_classes: int
    class_names: list[str]
    is_video: bool


def build_datasets(data_cfg: Any, mode: str = "contrastive", *, views: int = 2, seed: int = 0) -> DataBundle:
    """Datasets for ``mode`` (``contrastive`` | ``supervised`` | ``eval``); ``views`` applies to supervised."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "contrastive":
        views = 2
    elif mode == "eval":
        views = 1
    if views not in (1, 2):
        raise ValueError(f"views must be 1 or 2, got {views}")
    kind = data_cfg.kind
    builder = _image_bundle if kind in ("embedded_digits", "cifar10", "cifar100", "image_folder") else _video_bundle
    bundle = builder(data_cfg, mode, views, seed)
    if data_cfg.limit_train:
        bundle.train = _limit(bundle.train, data_cfg.limit_train, seed)
        bundle.train_eval = _limit(bundle.train_eval, data_cfg.limit_train, seed)
    if data_cfg.limit_eval:
        bundle.val = _limit(bundle.val, data_cfg.limit_eval, seed + 1)
        if bundle.test is not None:
            bundle.test = _limit(bundle.test, data_cfg.limit_eval, seed + 2)
    return bundle


def _limit(ds: Dataset, n: int, seed: int) -> Dataset:
    """A seeded random subset (not the first n: lists are often sorted by class)."""
    if n >= len(ds):
        return ds
    idx = np.sort(np.random.default_rng(seed).permutation(len(ds))[:n])
    return Subset(ds, idx.tolist())


def set_dataset_epoch(ds: Dataset, epoch: int) -> None:
    """Forward ``set_epoch`` through Subsets to datasets whose randomness depends on the epoch (video)."""
    while isinstance(ds, Subset):
        ds = ds.dataset
    if hasattr(ds, "set_epoch"):
        ds.set_epoch(epoch)


# ----------------------------------------------------------------------------------------- images


def _image_arrays(data_cfg: Any, seed: int) -> tuple[dict[str, tuple[Any, np.ndarray]], list[str]]:
    """{"train"|"val"|"test": (uint8 NHWC array or list of paths, labels)} and class names."""
    from vidcsl.data import images

    kind = data_cfg.kind
    if kind == "embedded_digits":
        from vidcsl.data.embedded import embedded_digits

        splits = embedded_digits(data_cfg.cache_dir)
        return dict(splits), [str(i) for i in range(10)]
    if kind in ("cifar10", "cifar100"):
        root = _existing(data_cfg.root, "data.root")
        x, y = images.load_cifar(root, kind, train=True)
        xt, yt = images.load_cifar(root, kind, train=False)
        tr, va = images.split_train_val(len(y), data_cfg.val_fraction, seed)
        names = [str(i) for i in range(100 if kind == "cifar100" else 10)]
        return {"train": (x[tr], y[tr]), "val": (x[va], y[va]), "test": (xt, yt)}, names
    root = Path(_existing(data_cfg.root, "data.root"))
    if (root / "train").is_dir():
        train = images.load_image_folder(root / "train")
        out = {"train": (train.paths, train.labels)}
        for split in ("val", "test"):
            if (root / split).is_dir():
                part = images.load_image_folder(root / split)
                if part.classes != train.classes:
                    raise DataError(f"image folder {root / split}: classes differ from {root / 'train'}")
                out[split] = (part.paths, part.labels)
        if "val" not in out:
            out["train"], out["val"] = _carve(out["train"], data_cfg.val_fraction, seed)
        return out, train.classes
    whole = images.load_image_folder(root)
    rest, test = _carve((whole.paths, whole.labels), data_cfg.val_fraction, seed + 1)
    train, val = _carve(rest, data_cfg.val_fraction, seed)
    return {"train": train, "val": val, "test": test}, whole.classes


def _carve(split: tuple[Any, np.ndarray], fraction: float, seed: int):
    from vidcsl.data.images import split_train_val

    items, labels = split
    keep, held = split_train_val(len(labels), fraction, seed)
    pick = lambda idx: ([items[i] for i in idx] if isinstance(items, list) else items[idx], labels[idx])  # noqa: E731
    return pick(keep), pick(held)


def _image_bundle(data_cfg: Any, mode: str, views: int, seed: int) -> DataBundle:
    from vidcsl.data import images

    arrays, names = _image_arrays(data_cfg, seed)
    size, strength = data_cfg.image_size, data_cfg.aug_strength
    evaluate = images.eval_transform(size)
    if mode == "contrastive" or (mode == "supervised" and data_cfg.supervised_augment == "contrastive"):
        scale = tuple(data_cfg.crop_scale) if data_cfg.crop_scale else None
        train_tf = images.simclr_transform(size, strength, scale=scale)
    elif mode == "supervised":
        train_tf = images.supervised_transform(size)
    else:
        train_tf = evaluate
    x, y = arrays["train"]
    test = arrays.get("test")
    return DataBundle(
        train=images.ImageDataset(x, y, transform=train_tf, two_views=views == 2, seed=seed),
        train_eval=images.ImageDataset(x, y, transform=evaluate),
        val=images.ImageDataset(*arrays["val"], transform=evaluate),
        test=None if test is None else images.ImageDataset(*test, transform=evaluate),
        num_classes=len(names), class_names=names, is_video=False,
    )


# ----------------------------------------------------------------------------------------- videos


def video_backend(name: str) -> str:
    """``auto`` -> decord when it imports, else PyAV."""
    if name != "auto":
        return name
    try:
        import decord  # noqa: F401

        return "decord"
    except ImportError:
        return "pyav"


def _video_samples(data_cfg: Any, seed: int) -> tuple[dict[str, list], list[str]]:
    from vidcsl.data.layouts import read_split

    kind = data_cfg.kind
    if kind == "embedded_video":
        from vidcsl.data.embedded import embedded_video

        info = embedded_video(data_cfg.cache_dir)
        out = {s: read_split("list", info["root"], split=s, list_file=info[s])[0] for s in ("train", "val", "test")}
        return out, list(info["classes"])
    if kind in OFFICIAL_TEST_SPLIT:
        root = _existing(data_cfg.root, "data.root")
        kw = dict(fold=data_cfg.fold, splits_dir=data_cfg.annotations)
        train, names = read_split(kind, root, split="train", **kw)
        test, _ = read_split(kind, root, split=OFFICIAL_TEST_SPLIT[kind], **kw)
        (tr, _), (va, _) = _carve((train, np.array([y for _, y in train])), data_cfg.val_fraction, seed)
        return {"train": tr, "val": va, "test": test}, names
    if kind == "kinetics":
        root = data_cfg.root or os.path.dirname(os.path.abspath(data_cfg.train_list))
        train, names = read_split("kinetics", root, split="train", csv_file=data_cfg.train_list)
        out = {"train": train}
        if data_cfg.val_list:
            out["val"], _ = read_split("kinetics", root, split="val", csv_file=data_cfg.val_list)
        if data_cfg.test_list:
            out["test"], _ = read_split("kinetics", root, split="test", csv_file=data_cfg.test_list)
        return _fill_val(out, data_cfg, seed), names
    if kind == "video_list":
        root = data_cfg.root or os.path.dirname(os.path.abspath(data_cfg.train_list))
        train, names = read_split("list", root, split="train", list_file=data_cfg.train_list)
        out = {"train": train}
        for split, path in (("val", data_cfg.val_list), ("test", data_cfg.test_list)):
            if path:
                out[split], _ = read_split("list", root, split=split, list_file=path)
        return _fill_val(out, data_cfg, seed), names
    root = Path(_existing(data_cfg.root, "data.root"))  # video_folder
    train, names = read_split("folder", root, split="train")
    out = {"train": train}
    for split in ("val", "test"):
        if (root / split).is_dir():
            out[split], split_names = read_split("folder", root, split=split)
            if split_names != names:
                raise DataError(f"video folder {root / split}: classes differ from the training folder")
    if not (root / "train").is_dir():  # one folder for everything: carve test too
        (rest, _), (out["test"], _) = _carve((train, np.array([y for _, y in train])), data_cfg.val_fraction,
                                             seed + 1)
        out["train"] = rest
    return _fill_val(out, data_cfg, seed), names


def _fill_val(out: dict[str, list], data_cfg: Any, seed: int) -> dict[str, list]:
    """Hold a validation split out of train when the dataset brings none."""
    if "val" not in out:
        train = out["train"]
        (out["train"], _), (out["val"], _) = _carve((train, np.array([y for _, y in train])),
                                                    data_cfg.val_fraction, seed)
    return out


def _video_bundle(data_cfg: Any, mode: str, views: int, seed: int) -> DataBundle:
    from vidcsl.data.augment import clip_eval_transform, clip_train_transform
    from vidcsl.data.video import VideoClipDataset

    samples, names = _video_samples(data_cfg, seed)
    common = dict(num_frames=data_cfg.num_frames, stride=data_cfg.stride, target_fps=data_cfg.target_fps,
                  backend=video_backend(data_cfg.video_backend), seed=seed)
    evaluate = clip_eval_transform(data_cfg.image_size, data_cfg.eval_crops)

    def readers(s: list) -> int:
        """Readers kept open per process: all of the embedded clips (tiny files; opening one indexes it and
        starts a decoder, a sizeable part of reading its few frames), none of a real dataset's (open decoders
        of full-size videos hold megabytes each, and a random order revisits a file only once an epoch)."""
        return len(s) if data_cfg.kind == "embedded_video" else 0

    def eval_set(s):
        return VideoClipDataset(s, sampler="uniform", num_clips=data_cfg.eval_clips, transform=evaluate,
                                max_open_readers=readers(s), **common)

    if mode == "eval":
        train = eval_set(samples["train"])
    else:
        scale = {"scale": tuple(data_cfg.crop_scale)} if data_cfg.crop_scale else {}
        train_tf = clip_train_transform(data_cfg.image_size, data_cfg.aug_strength, **scale)
        sampler = data_cfg.clip_sampler if views == 2 else "random"
        if views == 2 and sampler != "two_clip":
            raise ConfigError(f"config key 'data.clip_sampler' must be 'two_clip' for two-view training, "
                              f"got {sampler!r}")
        train = VideoClipDataset(samples["train"], sampler=sampler, transform=train_tf,
                                 max_gap_s=data_cfg.max_gap_s, same_time=data_cfg.same_time,
                                 max_open_readers=readers(samples["train"]), **common)
    test = samples.get("test")
    return DataBundle(train=train, train_eval=eval_set(samples["train"]), val=eval_set(samples["val"]),
                      test=None if test is None else eval_set(test), num_classes=len(names),
                      class_names=list(names), is_video=True)


def _existing(path: str | None, key: str) -> str:
    if not path:
        raise ConfigError(f"config key '{key}' is required for this dataset kind")
    path = os.path.expanduser(path)
    if not os.path.exists(path):
        raise DataError(f"dataset path {path!r} (config key '{key}') does not exist")
    return path
