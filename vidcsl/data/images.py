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
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from vidcsl.data.epoch import SharedEpoch

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


def _plain(img) -> torch.Tensor:
    """An image as a plain CHW tensor (see :func:`to_image_tensor`)."""
    return to_image_tensor(img).as_subclass(torch.Tensor)


def _chance(p: float, generator: torch.Generator | None) -> bool:
    """True with probability p, drawn as torchvision's random-apply transforms draw it."""
    return not bool(torch.rand(1, generator=generator) >= p)


def _uniform(low, high, generator: torch.Generator | None) -> float:
    return float(torch.empty(1).uniform_(low, high, generator=generator).item())


class BatchTransform:
    """An image transform that draws its random parameters per image and applies them to many images at once.

    ``draw(height, width, generator)`` makes one image's draws, from ``generator`` (torch's global RNG when
    None); ``apply(images, params)`` transforms a list of uint8 CHW images with their draws into one float
    (N, C, size, size) batch in [0, 1]. Calling the transform on one image draws and applies at once, so
    ``ImageDataset`` gets the same views one at a time (``__getitem__``) or a batch at a time (``__getitems__``,
    which DataLoader uses): per-image tensor ops dominate at small image sizes, and a batch shares them.
    """

    random = True  # False: draw() takes no randomness, so nothing needs seeding

    def draw(self, height: int, width: int, generator: torch.Generator | None = None) -> Any:
        raise NotImplementedError

    def apply(self, images: list[torch.Tensor], params: list) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, img, generator: torch.Generator | None = None) -> torch.Tensor:
        x = _plain(img)
        return self.apply([x], [self.draw(x.shape[-2], x.shape[-1], generator)])[0]


@dataclass(frozen=True)
class _SimCLRDraw:
    box: tuple[int, int, int, int]  # top, left, height, width of the resized crop
    flip: bool
    jitter: tuple[list[int], tuple] | None  # (order of the four colour ops, their factors) or None: no jitter
    gray: bool
    blur_sigma: float | None


class SimCLRTransform(BatchTransform):
    """SimCLR's augmentation (Chen et al. 2020), drawn and applied exactly as this torchvision v2 pipeline does:

        RandomResizedCrop(size, scale) -> RandomHorizontalFlip() -> RandomApply([ColorJitter(b, c, s, h)], p=0.8)
        -> RandomGrayscale(p=0.2) [-> RandomApply([GaussianBlur(kernel, (0.1, 2.0))], p=0.5)] -> float in [0, 1]

    The same random numbers are drawn in the same order and the same float operations give bit-identical
    views (tests/data/test_images.py compares them), but a batch of images costs a few tensor ops per step
    instead of a few dozen per image: crops and blur run per image, flips, jitter and grayscale per batch.
    """

    def __init__(self, size: int, strength: float, scale: tuple[float, float], blur: bool):
        self.size, self.scale, self.ratio = size, tuple(scale), (3 / 4, 4 / 3)
        self._log_ratio = torch.log(torch.tensor(self.ratio))
        s = strength
        self.jitter_ranges = (_jitter_range(0.4 * s, 1.0, 0.0), _jitter_range(0.4 * s, 1.0, 0.0),
                              _jitter_range(0.4 * s, 1.0, 0.0), _jitter_range(min(0.1 * s, 0.5), 0.0, None))
        self.blur_kernel = max(3, int(0.1 * size) // 2 * 2 + 1) if blur else None  # ~10% of the image, odd

    def _box(self, height: int, width: int, g) -> tuple[int, int, int, int]:
        """torchvision's RandomResizedCrop.make_params (area ``scale``, log-uniform aspect ``ratio``)."""
        area = height * width
        for _ in range(10):
            target_area = area * torch.empty(1).uniform_(self.scale[0], self.scale[1], generator=g).item()
            aspect = torch.exp(torch.empty(1).uniform_(self._log_ratio[0], self._log_ratio[1], generator=g)).item()
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = torch.randint(0, height - h + 1, size=(1,), generator=g).item()
                left = torch.randint(0, width - w + 1, size=(1,), generator=g).item()
                return top, left, h, w
        in_ratio = float(width) / float(height)  # fallback: central crop
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            h, w = height, int(round(height * max(self.ratio)))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def draw(self, height: int, width: int, generator: torch.Generator | None = None) -> _SimCLRDraw:
        g = generator
        box = self._box(height, width, g)
        flip = _chance(0.5, g)
        jitter = None
        if _chance(0.8, g):
            order = torch.randperm(4, generator=g).tolist()
            jitter = order, tuple(None if r is None else _uniform(*r, g) for r in self.jitter_ranges)
        gray = _chance(0.2, g)
        sigma = _uniform(0.1, 2.0, g) if self.blur_kernel and _chance(0.5, g) else None
        return _SimCLRDraw(box, flip, jitter, gray, sigma)

    def apply(self, images: list[torch.Tensor], params: list[_SimCLRDraw]) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F

        from vidcsl.data.augment import color_jitter_each

        size = [self.size, self.size]
        x = torch.stack([F.resized_crop(img, *p.box, size, antialias=True) for img, p in zip(images, params)])

        def rows(pick) -> torch.Tensor:
            return torch.tensor([i for i, p in enumerate(params) if pick(p)], dtype=torch.long)

        if len(flip := rows(lambda p: p.flip)):
            x[flip] = F.horizontal_flip(x[flip])
        if len(jit := rows(lambda p: p.jitter is not None)):
            x[jit] = color_jitter_each(x[jit], [params[i].jitter[0] for i in jit.tolist()],
                                       [params[i].jitter[1] for i in jit.tolist()])
        if len(gray := rows(lambda p: p.gray)):
            x[gray] = F.rgb_to_grayscale(x[gray], num_output_channels=x.shape[-3])
        for i, p in enumerate(params):
            if p.blur_sigma is not None:
                k = self.blur_kernel
                x[i] = F.gaussian_blur(x[i], [k, k], [p.blur_sigma, p.blur_sigma])
        return F.to_dtype(x, torch.float32, scale=True)


def _jitter_range(amount: float, centre: float, floor: float | None) -> tuple[float, float] | None:
    """torchvision's ColorJitter range for ``amount`` around ``centre`` (None when it is empty)."""
    low, high = centre - amount, centre + amount
    if floor is not None:
        low = max(low, floor)
    return None if low == high == centre else (float(low), float(high))


class EvalTransform(BatchTransform):
    """Deterministic: resize the short side to ``size`` and centre crop (none when ``size`` is None), to float."""

    random = False

    def __init__(self, size: int | None):
        self.size = size

    def draw(self, height: int, width: int, generator: torch.Generator | None = None) -> None:
        return None

    def apply(self, images: list[torch.Tensor], params: list) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F

        if self.size is not None:
            s = self.size
            images = [F.center_crop(F.resize(img, [s], antialias=True), [s, s]) for img in images]
        return F.to_dtype(torch.stack(images), torch.float32, scale=True)


def simclr_transform(size: int, strength: float = 1.0, *, blur: bool = False,
                     scale: tuple[float, float] | None = None) -> SimCLRTransform:
    """SimCLR augmentation: random resized crop, flip, colour jitter (p 0.8), grayscale (p 0.2), optional blur.

    Small images (<= 64 px) crop with scale (0.2, 1) rather than (0.08, 1): tiny crops of 32 px images
    leave too little to recognise (the usual CIFAR SimCLR choice).
    """
    if size <= 0 or strength < 0:
        raise ValueError(f"simclr_transform needs size > 0 and strength >= 0, got size={size}, strength={strength}")
    if scale is None:
        scale = (0.2, 1.0) if size <= 64 else (0.08, 1.0)
    return SimCLRTransform(size, strength, scale, blur)


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


def eval_transform(size: int) -> EvalTransform:
    """Deterministic: resize the short side to ``size``, centre crop, to float in [0, 1]."""
    if size <= 0:
        raise ValueError(f"eval_transform needs size > 0, got {size}")
    return EvalTransform(size)


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
        self.transform = transform if transform is not None else EvalTransform(None)
        self.two_views = two_views
        self.seed = seed
        self._epoch = SharedEpoch()

    @property
    def epoch(self) -> int:
        return self._epoch.get()

    def set_epoch(self, epoch: int) -> None:
        """New augmentation draws every epoch (the trainer calls this before each epoch; DataLoader workers
        that persist across epochs see it too)."""
        self._epoch.set(epoch)

    def __len__(self) -> int:
        return len(self.labels)

    def _raw(self, i: int):
        img = self.images[i]
        return read_image_file(img) if isinstance(img, Path) else img

    def _seed(self, i: int) -> int:
        return (self.seed * 1_000_003 + self.epoch) * 10_000_019 + i

    def __getitem__(self, i: int):
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: Sequence[int]) -> list:
        """The samples at ``indices`` (DataLoader fetches a batch through this): a :class:`BatchTransform`
        draws per sample from the sample's own generator and transforms the batch at once."""
        indices = [int(i) for i in indices]
        if not isinstance(self.transform, BatchTransform):
            return [self._one(i) for i in indices]
        tf, views = self.transform, 2 if self.two_views else 1
        images, params = [], []
        for i in indices:
            img = _plain(self._raw(i))
            g = torch.Generator().manual_seed(self._seed(i)) if tf.random else None
            for _ in range(views):
                images.append(img)
                params.append(tf.draw(img.shape[-2], img.shape[-1], g))
        out = tf.apply(images, params) if images else []
        labels = [int(self.labels[i]) for i in indices]
        if self.two_views:
            return [((out[2 * k], out[2 * k + 1]), y) for k, y in enumerate(labels)]
        return [(out[k], y) for k, y in enumerate(labels)]

    def _one(self, i: int):
        """One sample through any other transform (e.g. a torchvision pipeline), which draws from torch's
        global RNG: seeded per sample inside ``fork_rng``, so the caller's RNG state is left as it was."""
        img = self._raw(i)
        label = int(self.labels[i])
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(self._seed(i))  # CPU only: torch.manual_seed costs ~0.2 ms
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
