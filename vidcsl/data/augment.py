"""Clip augmentations: one parameter draw per clip, applied identically to every frame.

Inputs are uint8 (T, H, W, C) clips as the readers return them; internally frames are (T, C, H, W) so T acts as
the batch dimension of torchvision's v2 functional ops and one draw covers all frames. The composed transforms
return float (C, T, H, W) in [0, 1] (or (K, C, T, H, W) for K crops). No normalisation: the model owns it.
Every random op takes an optional ``torch.Generator`` so a dataset can make draws reproducible per item.
"""

from __future__ import annotations

import math

import torch
from torchvision.transforms.v2 import functional as F


def _rand(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator))


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * _rand(generator)


def to_frames_first(clip: torch.Tensor) -> torch.Tensor:
    """uint8 (T, H, W, C) -> (T, C, H, W) (a view)."""
    if clip.dim() != 4 or clip.shape[-1] not in (1, 3):
        raise ValueError(f"expected a clip of shape (T, H, W, C) with C in (1, 3), got {tuple(clip.shape)}")
    return clip.permute(0, 3, 1, 2)


def to_float_ctwh(frames: torch.Tensor) -> torch.Tensor:
    """(..., T, C, H, W) uint8 or float -> float (..., C, T, H, W) in [0, 1]."""
    out = frames.float().div(255.0) if frames.dtype == torch.uint8 else frames.float().clamp(0, 1)
    return out.transpose(-4, -3).contiguous()


# -- colour ops with one factor per sample ------------------------------------------------------------------
# torchvision's functional colour ops take one factor for a whole tensor. These take a batch (N, ..., C, H, W)
# and N factors, one per sample, and compute per sample what torchvision computes: the same float32 operations
# in the same order, so the results are bit-identical (tests/data/test_augment.py checks it; the one exception:
# the contrast of a float image, whose mean may be summed in another order). A batch of images costs a few
# tensor ops instead of a few dozen per image.
def _per_sample(factors, x: torch.Tensor) -> torch.Tensor:
    """N factors (python floats) -> float32 (N, 1, ..., 1) broadcasting over the other dims of ``x``."""
    return torch.tensor(factors, dtype=torch.float32).view(-1, *([1] * (x.dim() - 1)))


def _luma(x: torch.Tensor) -> torch.Tensor:
    """torchvision's grayscale in float (``_rgb_to_grayscale_image(..., preserve_dtype=False)``), floored for
    integer images as its contrast and saturation do: (..., 1, H, W)."""
    r, g, b = x.unbind(dim=-3)
    gray = r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(-3)
    return gray if x.is_floating_point() else gray.floor_()


def _back_to(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Clamp to the dtype's range and cast back (integer images truncate, as torchvision does)."""
    out = out.clamp_(0, 1.0 if like.is_floating_point() else 255)
    return out if like.is_floating_point() else out.to(like.dtype)


def _blend(x: torch.Tensor, other: torch.Tensor, factors) -> torch.Tensor:
    """``x * f + other * (1 - f)`` per sample, one sample at a time: torchvision's ``_blend`` passes ``1 - f`` as
    a scalar ``alpha`` (a fused multiply-add), which a per-sample tensor cannot reproduce bit for bit."""
    out = torch.empty(x.shape, dtype=torch.float32)
    for i, f in enumerate(factors):
        torch.add(x[i].mul(float(f)), other[i], alpha=1.0 - float(f), out=out[i])
    return _back_to(out, x)


def adjust_brightness_each(x: torch.Tensor, factors) -> torch.Tensor:
    """Per-sample ``F.adjust_brightness``: (N, ..., C, H, W) uint8 or float in [0, 1], N factors >= 0."""
    return _back_to(x.mul(_per_sample(factors, x)), x)


def adjust_contrast_each(x: torch.Tensor, factors) -> torch.Tensor:
    """Per-sample ``F.adjust_contrast``: blend with the mean grey level of each image (each frame of a clip)."""
    mean = _luma(x).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(x, mean, factors)


def adjust_saturation_each(x: torch.Tensor, factors) -> torch.Tensor:
    """Per-sample ``F.adjust_saturation``: blend with the grey image."""
    return _blend(x, _luma(x), factors)


def adjust_hue_each(x: torch.Tensor, factors) -> torch.Tensor:
    """Per-sample ``F.adjust_hue``: shift the hue of sample i by factors[i] in [-0.5, 0.5] (through HSV)."""
    from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv

    img = F.to_dtype(x, torch.float32, scale=True)
    h, s, v = _rgb_to_hsv(img).unbind(dim=-3)
    h = h.add_(_per_sample(factors, h)).remainder_(1.0)
    return F.to_dtype(_hsv_to_rgb(torch.stack((h, s, v), dim=-3)), x.dtype, scale=True)


COLOUR_OPS_EACH = (adjust_brightness_each, adjust_contrast_each, adjust_saturation_each, adjust_hue_each)


def color_jitter_each(x: torch.Tensor, orders: list, factors: list) -> torch.Tensor:
    """Colour jitter with per-sample draws, as torchvision's ColorJitter applies it to each sample alone.

    ``orders[i]``: the order of the four ops for sample i (brightness, contrast, saturation, hue = 0..3);
    ``factors[i]``: their four factors (None = that op is off). Samples are grouped by the op they apply at
    each position, so every op runs once per position on the samples that need it.
    """
    x = x.clone()
    for position in range(4):
        for op, adjust in enumerate(COLOUR_OPS_EACH):
            rows = [i for i, order in enumerate(orders) if order[position] == op and factors[i][op] is not None]
            if rows:
                index = torch.tensor(rows)
                x[index] = adjust(x[index], [factors[i][op] for i in rows])
    return x


# -- random ops on (T, C, H, W) ----------------------------------------------------------------------------
class RandomResizedCrop:
    """torchvision's RandomResizedCrop parameter draw (area ``scale``, aspect ``ratio``), one box per clip."""

    def __init__(self, size: int | tuple[int, int], scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        if not (0 < scale[0] <= scale[1] <= 1) or not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"need 0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1]; "
                             f"got scale={scale}, ratio={ratio}")
        self.scale, self.ratio = scale, ratio

    def params(self, height: int, width: int, generator=None) -> tuple[int, int, int, int]:
        """(top, left, h, w) of the crop box."""
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * _uniform(*self.scale, generator)
            aspect = math.exp(_uniform(*log_ratio, generator))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
                left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
                return top, left, h, w
        # fallback: centre crop at the nearest allowed aspect ratio
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            h, w = height, int(round(height * self.ratio[1]))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, frames: torch.Tensor, generator=None) -> torch.Tensor:
        top, left, h, w = self.params(frames.shape[-2], frames.shape[-1], generator)
        return F.resized_crop(frames, top, left, h, w, list(self.size), antialias=True)


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, frames: torch.Tensor, generator=None) -> torch.Tensor:
        return F.horizontal_flip(frames) if _rand(generator) < self.p else frames


class ColorJitter:
    """Brightness/contrast/saturation/hue factors drawn once, applied in a random order, with probability p."""

    def __init__(self, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, p: float = 0.8):
        if not 0 <= hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {hue}")
        self.brightness, self.contrast, self.saturation, self.hue, self.p = brightness, contrast, saturation, hue, p

    def __call__(self, frames: torch.Tensor, generator=None) -> torch.Tensor:
        if _rand(generator) >= self.p:
            return frames
        ops = []
        if self.brightness:
            f = _uniform(max(0.0, 1 - self.brightness), 1 + self.brightness, generator)
            ops.append(lambda x, f=f: F.adjust_brightness(x, f))
        if self.contrast:
            f = _uniform(max(0.0, 1 - self.contrast), 1 + self.contrast, generator)
            ops.append(lambda x, f=f: F.adjust_contrast(x, f))
        if self.saturation:
            f = _uniform(max(0.0, 1 - self.saturation), 1 + self.saturation, generator)
            ops.append(lambda x, f=f: F.adjust_saturation(x, f))
        if self.hue:
            f = _uniform(-self.hue, self.hue, generator)
            ops.append(lambda x, f=f: F.adjust_hue(x, f))
        for i in torch.randperm(len(ops), generator=generator).tolist():
            frames = ops[i](frames)
        return frames


class RandomGrayscale:
    def __init__(self, p: float = 0.2):
        self.p = p

    def __call__(self, frames: torch.Tensor, generator=None) -> torch.Tensor:
        if _rand(generator) >= self.p:
            return frames
        return F.rgb_to_grayscale(frames, num_output_channels=frames.shape[-3])


class RandomGaussianBlur:
    """Gaussian blur with sigma ~ U(sigma) and probability p; kernel ~10% of the frame side (odd), as SimCLR."""

    def __init__(self, p: float = 0.5, sigma=(0.1, 2.0), kernel_size: int | None = None):
        self.p, self.sigma, self.kernel_size = p, sigma, kernel_size

    def __call__(self, frames: torch.Tensor, generator=None) -> torch.Tensor:
        if _rand(generator) >= self.p:
            return frames
        k = self.kernel_size or max(3, int(0.1 * min(frames.shape[-2:])) // 2 * 2 + 1)
        s = _uniform(*self.sigma, generator)
        return F.gaussian_blur(frames, [k, k], [s, s])


# -- deterministic ops -------------------------------------------------------------------------------------
def short_side_resize(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (..., H, W) so the shorter side equals ``size``, keeping the aspect ratio."""
    h, w = frames.shape[-2:]
    if min(h, w) == size:
        return frames
    if h <= w:
        new = (size, max(size, int(round(w * size / h))))
    else:
        new = (max(size, int(round(h * size / w))), size)
    return F.resize(frames, list(new), antialias=True)


def three_crops(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Three ``size`` crops spread along the longer side (start, centre, end): (3, T, C, size, size)."""
    h, w = frames.shape[-2:]
    if min(h, w) < size:
        raise ValueError(f"frames {h}x{w} are smaller than the crop size {size}")
    if w >= h:
        boxes = [((h - size) // 2, left) for left in (0, (w - size) // 2, w - size)]
    else:
        boxes = [(top, (w - size) // 2) for top in (0, (h - size) // 2, h - size)]
    return torch.stack([F.crop(frames, t, l, size, size) for t, l in boxes])


# -- composed transforms -----------------------------------------------------------------------------------
class ClipTransform:
    """uint8 (T, H, W, C) clip -> float (C, T, H, W) in [0, 1] through ``ops`` on (T, C, H, W) frames."""

    accepts_generator = True  # VideoClipDataset passes its per-item generator

    def __init__(self, ops: list, finish=None):
        self.ops, self.finish = ops, finish

    def __call__(self, clip: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        frames = to_frames_first(clip)
        for op in self.ops:
            frames = op(frames, generator)
        if self.finish is not None:
            frames = self.finish(frames)
        return to_float_ctwh(frames)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(type(op).__name__ for op in self.ops)})"


def clip_train_transform(size: int, strength: float = 1.0, *, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3),
                         flip_p: float = 0.5, jitter_p: float = 0.8, grayscale_p: float = 0.2,
                         blur_p: float = 0.5) -> ClipTransform:
    """SimCLR/CVRL-style clip augmentation; ``strength`` scales the colour jitter (0.8s, 0.8s, 0.8s, 0.2s)."""
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    s = strength
    ops = [RandomResizedCrop(size, scale=scale, ratio=ratio), RandomHorizontalFlip(flip_p),
           ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, min(0.5, 0.2 * s), p=jitter_p), RandomGrayscale(grayscale_p),
           RandomGaussianBlur(blur_p)]
    return ClipTransform(ops)


class _ShortSideResize:
    def __init__(self, size: int):
        self.size = size

    def __call__(self, frames: torch.Tensor, generator=None) -> torch.Tensor:
        return short_side_resize(frames, self.size)


class _Crops:
    """Centre crop, or three crops along the long side (a class, not a lambda, so transforms pickle)."""

    def __init__(self, size: int, crops: int):
        self.size, self.crops = size, crops

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        if self.crops == 1:
            return F.center_crop(frames, [self.size, self.size])
        return three_crops(frames, self.size)


def clip_eval_transform(size: int, crops: int = 1) -> ClipTransform:
    """Short-side resize to ``size`` then a centre crop (float (C, T, size, size)) or 3 crops (3, C, T, ...)."""
    if crops not in (1, 3):
        raise ValueError(f"crops must be 1 or 3, got {crops}")
    return ClipTransform([_ShortSideResize(size)], finish=_Crops(size, crops))
