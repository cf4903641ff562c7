"""Image datasets (CIFAR pickles, image folders) and their augmentations.

Samples follow the convention shared with the video datasets: ``dataset[i]`` is ``(x, label)`` with ``x``
float32 (C, H, W) in [0, 1], or ``((x1, x2), label)`` in two-view (contrastive) mode. Pixels stay in [0, 1]
(no normalisation here) because every encoder normalises inside itself, so attacks work in pixel space.
Nothing here ever downloads: the project must run offline, so missing data is an error saying where to put it.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

_CIFAR_LAYOUT = {
    # name -> (folder, train files, test files, label key)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels"),
}
_CIFAR_URLS = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
}


# ----------------------------------------------------------------------------------------------- CIFAR
def _unpickle_cifar(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR python batch; keys may be bytes (official files) or str (re-pickled files)."""
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except Exception as exc:  # pickle raises many kinds of errors on corrupt input
        raise ValueError(f"corrupt CIFAR pickle {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(batch, dict):
        raise ValueError(f"corrupt CIFAR pickle {path}: expected a dict, got {type(batch).__name__}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or label_key not in batch:
        raise ValueError(f"CIFAR pickle {path} lacks the keys 'data' and '{label_key}' (has {sorted(batch)})")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"CIFAR pickle {path}: 'data' must be uint8 (N, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise ValueError(f"CIFAR pickle {path}: {labels.shape[0]} labels for {data.shape[0]} images")
    # rows are stored channel-major (R plane, G plane, B plane): go to NHWC.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


def load_cifar(root: str | Path, name: str = "cifar10", train: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Load CIFAR-10/100 from the standard python pickles under ``root`` as (uint8 NHWC, int64 labels).

    CIFAR-100 uses the fine (100-class) labels.
    """
    if name not in _CIFAR_LAYOUT:
        raise ValueError(f"unknown CIFAR name {name!r}; valid: {sorted(_CIFAR_LAYOUT)}")
    folder, train_files, test_files, label_key = _CIFAR_LAYOUT[name]
    directory = Path(root) / folder
    how = (f"download {_CIFAR_URLS[name]} elsewhere and extract it so that {directory} exists "
           "(vidcsl never downloads)")
    if not directory.is_dir():
        raise FileNotFoundError(f"{name} directory not found: expected {directory}; {how}")
    images, labels = [], []
    for fname in train_files if train else test_files:
        path = directory / fname
        if not path.is_file():
            raise FileNotFoundError(f"{name} file not found: expected {path}; {how}")
        x, y = _unpickle_cifar(path, label_key)
        images.append(x)
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels)


# ---------------------------------------------------------------------------------------- image folder
@dataclass
class ImageFolderArrays:
    """An image folder ``root/<class>/*.png|jpg``: paths and labels, loaded to arrays only on request."""

    paths: list[Path]
    labels: np.ndarray
    classes: list[str]

    def load_arrays(self, size: int | None = None) -> np.ndarray:
        """Decode every image to one uint8 NHWC array (resized to size x size if given; needed when
        the images differ in size)."""
        arrays = [read_image_file(p, size) for p in self.paths]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ValueError(f"images under {self.paths[0].parent.parent} differ in size {sorted(shapes)}; "
                             "pass size= to resize them")
        return np.stack(arrays) if arrays else np.zeros((0, size or 0, size or 0, 3), np.uint8)


def read_image_file(path: str | Path, size: int | None = None) -> np.ndarray:
    """Decode one image file to uint8 HWC RGB (optionally resized to size x size)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if size is not None:
                img = img.resize((size, size), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8).copy()
    except (OSError, SyntaxError) as exc:
        raise ValueError(f"cannot decode image file {path}: {exc}") from exc


def load_image_folder(root: str | Path) -> ImageFolderArrays:
    """Index ``root/<class>/<image>`` (classes sorted by name, label = position in that order)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: expected a directory {root} holding <class>/<image>")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"image folder {root} has no class sub-directories (expected {root}/<class>/*.png)")
    paths, labels = [], []
    for label, cls in enumerate(classes):
        files = sorted(p for p in (root / cls).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise ValueError(f"image folder {root} has class folders but no images with extensions {IMAGE_EXTENSIONS}")
    return ImageFolderArrays(paths=paths, labels=np.asarray(labels, dtype=np.int64), classes=classes)


# ------------------------------------------------------------------------------------------ transforms
def to_image_tensor(img) -> tv_tensors.Image:
    """uint8 HWC (numpy/PIL/tensor) or CHW tensor -> a CHW ``tv_tensors.Image``.

    numpy arrays and PIL images are taken as HWC (their usual layout); a tensor is CHW when its first dim
    is 1 or 3, otherwise HWC.
    """
    if isinstance(img, tv_tensors.Image):
        return img
    if not isinstance(img, (np.ndarray, torch.Tensor)):  # PIL
        img = np.asarray(img)
    if isinstance(img, np.ndarray):
        if img.ndim == 2:
            img = img[:, :, None]
        if img.ndim != 3:
            raise ValueError(f"image must be HWC or HW, got shape {img.shape}")
        t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
    else:
        t = img if img.ndim == 3 else img.unsqueeze(0)
        if t.ndim != 3:
            raise ValueError(f"image must be CHW or HWC, got shape {tuple(img.shape)}")
        if t.shape[0] not in (1, 3):
            t = t.permute(2, 0, 1)
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    if t.shape[0] != 3:
        raise ValueError(f"image must have 1 or 3 channels, got shape {tuple(t.shape)}")
    return tv_tensors.Image(t.contiguous())


def _finish() -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.ToPureTensor()]


def simclr_transform(size: int, strength: float = 1.0, *, blur: bool = False,
                     scale: tuple[float, float] | None = None) -> Callable:
    """SimCLR augmentation: random resized crop, flip, colour jitter (p 0.8), grayscale (p 0.2), optional blur.

    Small images (<= 64 px) crop with scale (0.2, 1) rather than (0.08, 1): tiny crops of 32 px images
    leave too little to recognise (the usual CIFAR SimCLR choice).
    """
    if size <= 0 or strength < 0:
        raise ValueError(f"simclr_transform needs size > 0 and strength >= 0, got size={size}, strength={strength}")
    if scale is None:
        scale = (0.2, 1.0) if size <= 64 else (0.08, 1.0)
    s = strength
    ops = [
        v2.Lambda(to_image_tensor),
        v2.RandomResizedCrop(size, scale=scale, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(0.4 * s, 0.4 * s, 0.4 * s, min(0.1 * s, 0.5))], p=0.8),
        v2.RandomGrayscale(p=0.2),
    ]
    if blur:
        kernel = max(3, int(0.1 * size) // 2 * 2 + 1)  # ~10% of the image, odd
        ops.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5))
    return v2.Compose(ops + _finish())


def supervised_transform(size: int) -> Callable:
    """The usual CIFAR supervised recipe: random crop with size/8 zero padding, horizontal flip."""
    if size <= 0:
        raise ValueError(f"supervised_transform needs size > 0, got {size}")
    return v2.Compose([
        v2.Lambda(to_image_tensor),
        v2.Resize(size, antialias=True),
        v2.CenterCrop(size),
        v2.RandomCrop(size, padding=max(1, size // 8)),
        v2.RandomHorizontalFlip(),
        *_finish(),
    ])


def eval_transform(size: int) -> Callable:
    """Deterministic: resize the short side to ``size``, centre crop, to float in [0, 1]."""
    if size <= 0:
        raise ValueError(f"eval_transform needs size > 0, got {size}")
    return v2.Compose([v2.Lambda(to_image_tensor), v2.Resize(size, antialias=True), v2.CenterCrop(size),
                       *_finish()])


# --------------------------------------------------------------------------------------------- dataset
class ImageDataset(Dataset):
    """(x, label) samples over uint8 NHWC arrays or a list of image paths (decoded lazily).

    Augmentations draw from a generator seeded by (seed, epoch, index), not from the process's global
    RNG, so a sample gets the same views whatever the number of DataLoader workers and after a resume.
    """

    def __init__(self, images: np.ndarray | Sequence[str | Path], labels, *, transform: Callable | None,
                 two_views: bool = False, seed: int = 0):
        labels = np.asarray(labels, dtype=np.int64)
        if isinstance(images, np.ndarray):
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
                raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        elif isinstance(images, torch.Tensor):
            raise ValueError("images must be a numpy uint8 NHWC array or a list of paths, not a tensor")
        else:
            images = [Path(p) for p in images]
        if labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(f"{len(images)} images but labels of shape {labels.shape}")
        self.images = images
        self.labels = labels
        self.transform = transform if transform is not None else v2.Compose([v2.Lambda(to_image_tensor),
                                                                             *_finish()])
        self.two_views = two_views
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """New augmentation draws every epoch (the trainer calls this before each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def _raw(self, i: int):
        img = self.images[i]
        return read_image_file(img) if isinstance(img, Path) else img

    def __getitem__(self, i: int):
        img = self._raw(i)
        label = int(self.labels[i])
        with torch.random.fork_rng(devices=[]):  # torchvision v2 draws from torch's global RNG
            torch.manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i)
            if self.two_views:
                return (self.transform(img), self.transform(img)), label
            return self.transform(img), label


def split_train_val(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded disjoint (train, val) index arrays: a held-out split for choosing probes/epochs, never test."""
    if n < 0 or not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"split_train_val needs n >= 0 and 0 <= val_fraction < 1, got n={n}, {val_fraction}")
    n_val = int(math.floor(n * val_fraction + 0.5))
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])
