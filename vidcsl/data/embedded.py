"""The default data that needs no download: real handwritten-digit scans as images and as short videos.

Why this data: the project must run end-to-end offline on a 2-core CPU, yet a demo on synthetic noise would
say nothing about learning. scikit-learn ships 1,797 *real* 8x8 scans of handwritten digits
(``sklearn.datasets.load_digits``), so the images carry genuine intra-class variation. Each sample gets a
class-independent ink and paper shade from a small, nearly grey palette. The palette is small on purpose: a
colour unique to each sample (tried first) lets contrastive learning solve instance discrimination by colour
alone, and SimCLR then learns nothing about the digits (kNN accuracy at chance). The videos move a digit scan over a textured background along a class-specific
direction, so the label is carried both by appearance (which digit) and by motion (where it goes): a video
encoder can use either cue, and temporal augmentations or attacks can be studied on them.

Everything is deterministic (seeded) and cached under ``cache_dir or $VIDCSL_DATA or ~/.cache/vidcsl``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DIGITS_SPLIT = (1200, 200, 397)  # train / val / test, sums to the 1,797 bundled scans
_DIGITS_VERSION = 2
_VIDEO_VERSION = 3
# Ink and paper colours (RGB in [0, 1]); each sample draws one of each, independently of its class.
INK_PALETTE = np.array([[1.0, 1.0, 1.0], [0.95, 0.9, 0.8], [0.8, 0.9, 0.95]], np.float32)
PAPER_PALETTE = np.array([[0.05, 0.05, 0.05], [0.12, 0.1, 0.14]], np.float32)
_MARKER = "COMPLETE"


def default_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$VIDCSL_DATA``, else ``~/.cache/vidcsl``."""
    return Path(cache_dir or os.environ.get("VIDCSL_DATA") or Path.home() / ".cache" / "vidcsl")


def _digit_scans() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 real 8x8 digit scans as float in [0, 1] (ink = 1) and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def _upsample(scans: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of (N, h, w) float maps to (N, size, size)."""
    t = torch.from_numpy(scans).unsqueeze(1)
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False).squeeze(1).clamp(0, 1).numpy()


def _tint(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Colour each (N, H, W) ink map with a palette ink colour on a palette paper colour."""
    n = ink.shape[0]
    fg = INK_PALETTE[rng.integers(len(INK_PALETTE), size=n)][:, None, None, :]
    bg = PAPER_PALETTE[rng.integers(len(PAPER_PALETTE), size=n)][:, None, None, :]
    rgb = bg + (fg - bg) * ink[..., None]
    return np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)


def _build_digits(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    scans, labels = _digit_scans()
    rng = np.random.default_rng(seed)
    images = _tint(_upsample(scans, 32), rng)
    perm = rng.permutation(len(labels))
    n_train, n_val, _ = DIGITS_SPLIT
    parts = {"train": perm[:n_train], "val": perm[n_train:n_train + n_val], "test": perm[n_train + n_val:]}
    return {k: (images[idx], labels[idx]) for k, idx in parts.items()}


def _atomic_save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write to a temp file in the same folder, then rename: readers never see a half-written cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def embedded_digits(cache_dir: str | Path | None = None, *, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Digits as RGB 32x32 images: {"train"|"val"|"test": (uint8 (N, 32, 32, 3), int64 labels)}.

    Split 1200/200/397 of sklearn's 1,797 real scans, upsampled bilinearly, with a palette colour per sample.
    """
    path = default_cache_dir(cache_dir) / f"embedded_digits_v{_DIGITS_VERSION}_seed{seed}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                return {s: (z[f"{s}_x"], z[f"{s}_y"]) for s in ("train", "val", "test")}
        except (OSError, ValueError, KeyError):
            pass  # corrupt or stale cache: rebuild below
    splits = _build_digits(seed)
    _atomic_save_npz(path, {f"{s}_{k}": v for s, (x, y) in splits.items() for k, v in (("x", x), ("y", y))})
    return splits


# ---------------------------------------------------------------------------------------------- video
def _background(rng: np.random.Generator, size: int, num_textures: int = 4) -> np.ndarray:
    """One of a few fixed smooth textures in a dim palette colour: float (size, size, 3).

    The set is small on purpose: a background unique to each video would let a contrastive learner match
    the two clips of a video by their background alone.
    """
    which = int(rng.integers(num_textures))
    coarse = np.random.default_rng(1000 + which).uniform(0, 1, size=(3, size // 8, size // 8)).astype(np.float32)
    tex = F.interpolate(torch.from_numpy(coarse)[None], size=(size, size), mode="bicubic",
                        align_corners=False)[0].clamp(0, 1).numpy()
    colour = 0.1 + PAPER_PALETTE[rng.integers(len(PAPER_PALETTE))][:, None, None]
    return (colour * (0.5 + tex)).transpose(1, 2, 0)


def _render_clip(scan: np.ndarray, label: int, num_classes: int, rng: np.random.Generator, *, size: int,
                 frames: int, sprite: int) -> np.ndarray:
    """uint8 (T, size, size, 3): the digit scan moving in direction 2*pi*label/num_classes over a texture."""
    ink = _upsample(scan[None], sprite)[0]
    fg = INK_PALETTE[rng.integers(len(INK_PALETTE))]
    bg = _background(rng, size)
    angle = 2 * np.pi * label / num_classes + rng.uniform(-0.15, 0.15)
    direction = np.array([np.cos(angle), np.sin(angle)])  # (x, y); y grows downwards
    free = size - sprite  # the sprite's top-left corner lives in [0, free]
    travel = 0.8 * free
    speed = travel / max(frames - 1, 1)
    centre = free / 2 + rng.uniform(-0.1, 0.1, size=2) * free
    start = np.clip(centre - direction * travel / 2, 0, free)
    out = np.empty((frames, size, size, 3), np.float32)
    for t in range(frames):
        x, y = np.clip(start + direction * speed * t, 0, free)
        frame = bg + rng.normal(0, 0.03, size=bg.shape)  # sensor noise, new every frame
        # place the sprite at a sub-pixel position by shifting the ink map bilinearly.
        canvas = np.zeros((size, size), np.float32)
        ix, iy = int(x), int(y)
        fx, fy = x - ix, y - iy
        for dy, wy in ((0, 1 - fy), (1, fy)):
            for dx, wx in ((0, 1 - fx), (1, fx)):
                y0, x0 = min(iy + dy, free), min(ix + dx, free)
                canvas[y0:y0 + sprite, x0:x0 + sprite] += wy * wx * ink
        a = canvas[..., None]
        out[t] = frame * (1 - a) + fg * a
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)


def _write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    """H.264 (libx264, yuv420p) mp4 via PyAV; crf 17 keeps the small frames close to lossless."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "17", "preset": "veryfast"}
        for arr in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def embedded_video(cache_dir: str | Path | None = None, *, per_class: tuple[int, int, int] = (24, 6, 8),
                   num_classes: int = 10, size: int = 32, frames: int = 24, fps: int = 8,
                   seed: int = 0) -> dict:
    """Moving-digit mp4 clips in the "list" layout; returns {"root", "train", "val", "test", "classes"}.

    Class c is digit c moving in direction 2*pi*c/num_classes (label in appearance *and* motion). Each split's
    list file has lines ``relative/path.mp4 label`` (0-based label) relative to ``root``; ``root/classes.txt``
    names the classes, one a line. Scans are drawn
    from disjoint pools per split so test digits are unseen handwriting. Generated once (a few seconds),
    then reused: a marker file written last tells a complete cache from an interrupted one.
    """
    if not 1 <= num_classes <= 10:
        raise ValueError(f"num_classes must be in 1..10 (there are ten digits), got {num_classes}")
    if size % 2 or size < 16 or frames < 2 or fps < 1 or min(per_class) < 1:
        raise ValueError(f"need an even size >= 16, frames >= 2, fps >= 1, per_class >= 1; got size={size}, "
                         f"frames={frames}, fps={fps}, per_class={per_class}")
    config = dict(v=_VIDEO_VERSION, per_class=list(per_class), num_classes=num_classes, size=size,
                  frames=frames, fps=fps, seed=seed)
    tag = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]
    root = default_cache_dir(cache_dir) / f"embedded_video_{tag}"
    classes = [f"digit{c}_dir{round(360 * c / num_classes):03d}" for c in range(num_classes)]
    result = {"root": str(root), **{s: str(root / f"{s}.txt") for s in ("train", "val", "test")},
              "classes": classes}
    if (root / _MARKER).is_file():
        return result
    _generate_video(root, config, classes)
    return result


def _generate_video(root: Path, config: dict, classes: list[str]) -> None:
    from tqdm import tqdm

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=root.name + ".tmp"))
    try:
        scans, labels = _digit_scans()
        rng = np.random.default_rng(config["seed"])
        splits = ("train", "val", "test")
        total = config["num_classes"] * sum(config["per_class"])
        with tqdm(total=total, desc="embedded video", leave=False) as bar:
            for c, cls in enumerate(classes):
                pool = rng.permutation(np.flatnonzero(labels == c))
                # disjoint scans per split; reuse scans (with new motion/colour) only if the pool runs out
                bounds = np.cumsum([0, *config["per_class"]])
                bounds = (bounds * min(1.0, len(pool) / bounds[-1])).astype(int)
                for s, split in enumerate(splits):
                    part = pool[bounds[s]:max(bounds[s + 1], bounds[s] + 1)]
                    (tmp / split / cls).mkdir(parents=True, exist_ok=True)
                    for i in range(config["per_class"][s]):
                        clip = _render_clip(scans[part[i % len(part)]], c, config["num_classes"], rng,
                                            size=config["size"], frames=config["frames"], sprite=config["size"] // 2)
                        _write_mp4(tmp / split / cls / f"{i:03d}.mp4", clip, config["fps"])
                        bar.update(1)
        for split, n in zip(splits, config["per_class"]):
            lines = [f"{split}/{cls}/{i:03d}.mp4 {c}" for c, cls in enumerate(classes) for i in range(n)]
            (tmp / f"{split}.txt").write_text("\n".join(lines) + "\n")
        (tmp / "classes.txt").write_text("\n".join(classes) + "\n")  # names for the "list" layout reader
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        (tmp / _MARKER).write_text("ok\n")
        if root.exists() and not (root / _MARKER).is_file():  # an interrupted earlier run: replace it
            shutil.rmtree(root, ignore_errors=True)
        try:
            os.replace(tmp, root)
        except OSError:
            if not (root / _MARKER).is_file():  # no concurrent process completed it either: report it
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
