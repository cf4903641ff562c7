"""CIFAR-10-C-style corruptions (Hendrycks & Dietterich 2019) as deterministic tensor functions, plus
temporal ones for clips.

Inputs are float tensors in [0,1]: images (B,C,H,W) or clips (B,C,T,H,W). Every corruption works on a
clip layout internally (an image is a 1-frame clip) and draws its randomness once per *clip* from a
seeded ``torch.Generator`` on the CPU, broadcast over frames: a clip gets the same corruption with the
same draw on every frame (a clip of T copies of an image corrupts to T copies of the corrupted image).
Severity parameters follow H&D's CIFAR-10-C tables (pixel units for 32 px images) except where noted:
``shot_noise`` uses Poisson's normal approximation (so one draw serves every frame), ``saturate`` only
increases saturation (H&D's table goes down then up, which is not "stronger with severity"), and grey
pixels stay grey under ``saturate``. Every corruption keeps shape, dtype and range, and is stronger
(larger mean |x_c - x|) with severity.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
Fn = Callable[[Tensor, int, torch.Generator], Tensor]


@dataclass(frozen=True)
class Corruption:
    """One registry entry: ``fn(clip (B,C,T,H,W) fp32, severity 1..5, cpu generator) -> clip``."""

    name: str
    family: str
    fn: Fn
    clips_only: bool = False


CORRUPTIONS: dict[str, Corruption] = {}


def _register(family: str, clips_only: bool = False):
    def deco(fn: Fn) -> Fn:
        CORRUPTIONS[fn.__name__] = Corruption(fn.__name__, family, fn, clips_only)
        return fn

    return deco


def corrupt(x: Tensor, name: str, severity: int, seed: int = 0) -> Tensor:
    """Apply corruption ``name`` at ``severity`` (1..5) to images or clips, deterministically for ``seed``."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; known: {sorted(CORRUPTIONS)}")
    if not isinstance(severity, int) or not 1 <= severity <= 5:
        raise ValueError(f"severity must be an int in 1..5, got {severity!r}")
    if x.dim() not in (4, 5) or not x.is_floating_point():
        raise ValueError(f"x must be float images (B,C,H,W) or clips (B,C,T,H,W), got {x.dtype} {tuple(x.shape)}")
    entry = CORRUPTIONS[name]
    if entry.clips_only and (x.dim() != 5 or x.shape[2] < 2):
        raise ValueError(f"{name} is temporal: it needs clips (B,C,T,H,W) with T >= 2, got {tuple(x.shape)}")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"x must lie in [0,1], got range [{x.min().item():.3g}, {x.max().item():.3g}]")
    clip = x.float() if x.dim() == 5 else x.float().unsqueeze(2)
    g = torch.Generator().manual_seed(int(seed))
    out = entry.fn(clip, severity, g).clamp(0, 1)
    out = out if x.dim() == 5 else out.squeeze(2)
    return out.to(x.dtype)


# ----------------------------------------------------------------------------------------- helpers
def _draw(shape, g: torch.Generator, like: Tensor, kind: str = "normal") -> Tensor:
    t = torch.empty(shape)
    t = t.normal_(generator=g) if kind == "normal" else t.uniform_(0, 1, generator=g)
    return t.to(like.device)


def _per_clip(x: Tensor, channels: bool = True) -> tuple[int, ...]:
    """Shape of a draw shared by all frames: (B, C or 1, 1, H, W)."""
    b, c, _, h, w = x.shape
    return (b, c if channels else 1, 1, h, w)


def _frames(x: Tensor) -> Tensor:
    b, c, t, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)


def _unframes(f: Tensor, like: Tensor) -> Tensor:
    b, c, t, h, w = like.shape
    return f.reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4)


def _filter(x: Tensor, kernels: Tensor) -> Tensor:
    """Convolve every channel and frame of clip b with ``kernels[b]`` (B or 1, k, k), edge-replicated."""
    b, c, t, h, w = x.shape
    k = kernels.shape[-1]
    kernels = kernels.to(x.device, x.dtype).expand(b, k, k)
    weight = kernels.repeat_interleave(c, dim=0).unsqueeze(1)  # (B*C, 1, k, k)
    inp = x.permute(2, 0, 1, 3, 4).reshape(t, b * c, h, w)
    pad = k // 2
    out = F.conv2d(F.pad(inp, (pad, pad, pad, pad), mode="replicate"), weight, groups=b * c)
    return out.reshape(t, b, c, h, w).permute(1, 2, 0, 3, 4)


def _gaussian_kernel(sigma: float) -> Tensor:
    radius = max(1, math.ceil(3 * sigma))
    r = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g1 = torch.exp(-(r**2) / (2 * sigma**2))
    k = g1[:, None] * g1[None, :]
    return (k / k.sum())[None]


# ------------------------------------------------------------------------------------------- noise
@_register("noise")
def gaussian_noise(x, s, g):
    c = [0.04, 0.06, 0.08, 0.09, 0.10][s - 1]
    return x + c * _draw(_per_clip(x), g, x)


@_register("noise")
def shot_noise(x, s, g):
    c = [500, 250, 100, 75, 50][s - 1]  # photons per unit intensity: Poisson(x*c)/c ~ N(x, x/c)
    return x + torch.sqrt(x / c) * _draw(_per_clip(x), g, x)


@_register("noise")
def impulse_noise(x, s, g):
    amount = [0.01, 0.02, 0.03, 0.05, 0.07][s - 1]
    u = _draw(_per_clip(x), g, x, "uniform")
    out = torch.where(u < amount / 2, torch.zeros_like(x), x)
    return torch.where(u > 1 - amount / 2, torch.ones_like(x), out)


@_register("noise")
def speckle_noise(x, s, g):
    c = [0.06, 0.1, 0.12, 0.16, 0.2][s - 1]
    return x + x * c * _draw(_per_clip(x), g, x)


# -------------------------------------------------------------------------------------------- blur
@_register("blur")
def gaussian_blur(x, s, g):
    return _filter(x, _gaussian_kernel([0.4, 0.6, 0.7, 0.8, 1.0][s - 1]))


@_register("blur")
def defocus_blur(x, s, g):
    radius, alias = [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)][s - 1]
    r = torch.arange(-math.ceil(radius) - 1, math.ceil(radius) + 2, dtype=torch.float32)
    disk = ((r[:, None] ** 2 + r[None, :] ** 2) <= radius**2).float()
    kernel = F.conv2d(disk[None, None], _gaussian_kernel(alias)[None], padding="same")[0]
    return _filter(x, kernel / kernel.sum())


@_register("blur")
def motion_blur(x, s, g):
    """A one-sided Gaussian-weighted streak of ``radius`` px in a random direction (per clip)."""
    radius, sigma = [(10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3)][s - 1]
    b = x.shape[0]
    angle = (torch.rand(b, generator=g) * 90 - 45) * math.pi / 180
    k = 2 * radius + 1
    t = torch.arange(0, radius + 1, dtype=torch.float32)
    weight = torch.exp(-(t**2) / (2 * sigma**2))
    kernels = torch.zeros(b, k, k)
    for i in range(b):  # bilinear splat of the streak's sample points onto the kernel grid
        px = radius + t * torch.cos(angle[i])
        py = radius + t * torch.sin(angle[i])
        x0, y0 = px.floor().long(), py.floor().long()
        fx, fy = px - x0, py - y0
        for dx, dy, wgt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
            xi, yi = (x0 + dx).clamp(0, k - 1), (y0 + dy).clamp(0, k - 1)
            kernels[i].index_put_((yi, xi), weight * wgt, accumulate=True)
    return _filter(x, kernels / kernels.sum((1, 2), keepdim=True))


def _zoom(frames: Tensor, factor: float) -> Tensor:
    """Zoom in on the centre by ``factor`` (bilinear), keeping the size."""
    n = frames.shape[0]
    theta = torch.tensor([[1 / factor, 0, 0], [0, 1 / factor, 0]], dtype=frames.dtype, device=frames.device)
    grid = F.affine_grid(theta.expand(n, 2, 3), list(frames.shape), align_corners=False)
    return F.grid_sample(frames, grid, mode="bilinear", padding_mode="border", align_corners=False)


@_register("blur")
def zoom_blur(x, s, g):
    top = [1.06, 1.11, 1.16, 1.21, 1.26][s - 1]
    factors = torch.arange(1.0, top - 1e-6, 0.01).tolist()
    f = _frames(x)
    acc = f.clone()
    for z in factors:
        acc += _zoom(f, z)
    return _unframes(acc / (len(factors) + 1), x)


# ----------------------------------------------------------------------------------------- weather
def plasma_fractal(batch: int, size: int, wibbledecay: float, g: torch.Generator) -> Tensor:
    """Diamond-square fractal noise, (batch, size, size) in [0,1]; ``size`` a power of two."""
    grid = torch.zeros(batch, size, size)
    step, wibble = size, 100.0

    def jitter(total: Tensor) -> Tensor:
        return total / 4 + wibble * (torch.rand(total.shape, generator=g) * 2 - 1) * wibble

    while step >= 2:
        half = step // 2
        corners = grid[:, 0::step, 0::step]
        square = corners + corners.roll(-1, 1)
        square = square + square.roll(-1, 2)
        grid[:, half::step, half::step] = jitter(square)
        centres, corners = grid[:, half::step, half::step], grid[:, 0::step, 0::step]
        grid[:, 0::step, half::step] = jitter(centres + centres.roll(1, 1) + corners + corners.roll(-1, 2))
        grid[:, half::step, 0::step] = jitter(centres + centres.roll(1, 2) + corners + corners.roll(-1, 1))
        step, wibble = half, wibble / wibbledecay
    grid = grid - grid.amin((1, 2), keepdim=True)
    return grid / grid.amax((1, 2), keepdim=True).clamp_min(1e-12)


@_register("weather")
def fog(x, s, g):
    amount, decay = [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)][s - 1]
    b, _, _, h, w = x.shape
    size = max(32, 1 << math.ceil(math.log2(max(h, w))))
    plasma = plasma_fractal(b, size, decay, g)[:, :h, :w].to(x.device)
    peak = x.amax(dim=(1, 3, 4), keepdim=True)  # per frame, as H&D per image
    return (x + amount * plasma[:, None, None]) * peak / (peak + amount)


@_register("weather")
def brightness(x, s, g):
    """HSV value + c with hue and saturation kept: every channel scales by V'/V (black becomes grey c)."""
    c = [0.05, 0.1, 0.15, 0.2, 0.3][s - 1]
    v = x.amax(1, keepdim=True)
    v_new = (v + c).clamp(0, 1)
    return torch.where(v > 0, x * v_new / v.clamp_min(1e-12), v_new.expand_as(x))


@_register("weather")
def contrast(x, s, g):
    c = [0.75, 0.5, 0.4, 0.3, 0.15][s - 1]
    mean = x.mean(dim=(1, 3, 4), keepdim=True)  # per frame, as H&D per image
    return (x - mean) * c + mean


# ----------------------------------------------------------------------------------------- digital
@_register("digital")
def jpeg_compression(x, s, g):
    from torchvision.io import decode_jpeg, encode_jpeg

    quality = [80, 65, 58, 50, 40][s - 1]
    if x.shape[1] not in (1, 3):
        raise ValueError(f"jpeg_compression needs 1 or 3 channels, got {x.shape[1]}")
    frames = (_frames(x) * 255).round().to(torch.uint8).cpu()
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its image codecs, which still work
        warnings.simplefilter("ignore", DeprecationWarning)
        decoded = decode_jpeg(encode_jpeg(list(frames), quality=quality))
    out = torch.stack(decoded).float().div(255).to(x.device)
    return _unframes(out, x)


@_register("digital")
def pixelate(x, s, g):
    """k x k block averages. ImageNet-C's downscale factors (0.6..0.25, i.e. 1.7..4 px cells) rounded to
    whole-pixel blocks: fractional cells are irregular and made severity 2 weaker than severity 1."""
    k = [2, 3, 4, 5, 6][s - 1]
    f = _frames(x)
    h, w = f.shape[-2:]
    cells = F.avg_pool2d(f, k, stride=k, ceil_mode=True)
    up = cells.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)[..., :h, :w]
    return _unframes(up, x)


@_register("digital")
def saturate(x, s, g):
    """HSV saturation S' = S*a + b (hue and value kept); needs RGB."""
    a, b = [(1.5, 0.0), (2, 0.0), (3, 0.05), (5, 0.1), (10, 0.2)][s - 1]
    if x.shape[1] != 3:
        raise ValueError(f"saturate needs RGB (3 channels), got {x.shape[1]}")
    v, m = x.amax(1, keepdim=True), x.amin(1, keepdim=True)
    sat = (v - m) / v.clamp_min(1e-12)
    sat_new = (sat * a + b).clamp(0, 1)
    scale = torch.where(sat > 0, sat_new / sat.clamp_min(1e-12), torch.ones_like(sat))
    return v - scale * (v - x)


@_register("digital")
def elastic_transform(x, s, g):
    """Smooth random displacement field (blurred uniform noise), peak ``alpha`` x image size."""
    alpha = [0.02, 0.035, 0.05, 0.07, 0.09][s - 1]
    b, _, t, h, w = x.shape
    field = torch.rand(b, 2, h, w, generator=g) * 2 - 1
    sigma = max(1.0, 0.08 * min(h, w))
    field = _filter(field.unsqueeze(2), _gaussian_kernel(sigma))[:, :, 0]
    field = field / field.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
    disp = (alpha * 2 * field).permute(0, 2, 3, 1).to(x.device)  # in grid units ([-1,1] spans the image)
    ident = F.affine_grid(torch.eye(2, 3, device=x.device).expand(b, 2, 3), [b, 1, h, w], align_corners=False)
    grid = (ident + disp).repeat_interleave(t, dim=0)
    out = F.grid_sample(_frames(x), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return _unframes(out, x)


# ---------------------------------------------------------------------------------------- temporal
def _gather_frames(x: Tensor, index: Tensor) -> Tensor:
    """index (B, T) of source frames for every output frame."""
    b, c, t, h, w = x.shape
    idx = index.to(x.device).view(b, 1, t, 1, 1).expand(b, c, t, h, w)
    return x.gather(2, idx)


@_register("temporal", clips_only=True)
def frame_drop(x, s, g):
    """Each frame after the first is lost with probability p and replaced by the last kept one."""
    p = [0.1, 0.2, 0.3, 0.45, 0.6][s - 1]
    b, t = x.shape[0], x.shape[2]
    kept = torch.rand(b, t, generator=g) >= p
    kept[:, 0] = True
    ar = torch.arange(t).expand(b, t)
    index = torch.where(kept, ar, torch.zeros_like(ar)).cummax(1).values
    return _gather_frames(x, index)


@_register("temporal", clips_only=True)
def frame_shuffle(x, s, g):
    """Local shuffle: frame order sorted by t + w*U(0,1), so frames move by less than w positions."""
    window = [2, 3, 4, 6, 8][s - 1]
    b, t = x.shape[0], x.shape[2]
    keys = torch.arange(t).float() + window * torch.rand(b, t, generator=g)
    return _gather_frames(x, keys.argsort(1))


@_register("temporal", clips_only=True)
def temporal_jitter(x, s, g):
    """Every frame is replaced by a neighbour t + round(N(0, sigma)) (repeats and skips)."""
    sigma = [0.5, 1, 1.5, 2, 3][s - 1]
    b, t = x.shape[0], x.shape[2]
    index = (torch.arange(t).float() + sigma * torch.randn(b, t, generator=g)).round().long().clamp(0, t - 1)
    return _gather_frames(x, index)


# H.264 quantiser by severity. A constant quantiser sets the bitrate (lower for higher QP) and is
# reproducible; x264's bitrate-targeted mode gave output that depended on earlier encodes in the
# same process in this build, and cannot reach low bitrates on tiny frames anyway.
REENCODE_QP = (28, 34, 40, 46, 51)


def _rgb_to_yuv420(rgb: Tensor) -> Tensor:
    """(T,3,H,W) in [0,1], H and W even -> (T, 3H/2, W) uint8 planar I420 (full-range BT.601).

    Done here rather than by swscale, whose output for small frames was not reproducible across calls.
    """
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    u = F.avg_pool2d(((b - y) * 0.564 + 0.5).unsqueeze(1), 2)[:, 0]
    v = F.avg_pool2d(((r - y) * 0.713 + 0.5).unsqueeze(1), 2)[:, 0]
    t, h, w = y.shape
    chroma = torch.cat([u.reshape(t, h // 4, w), v.reshape(t, h // 4, w)], dim=1)
    return (torch.cat([y, chroma], dim=1) * 255).round().clamp(0, 255).to(torch.uint8)


def _yuv420_to_rgb(yuv: Tensor, h: int, w: int) -> Tensor:
    """Inverse of ``_rgb_to_yuv420``: (T, 3H/2, W) uint8 -> (T,3,H,W) in [0,1]."""
    t = yuv.shape[0]
    f = yuv.float() / 255
    y = f[:, :h]
    u = f[:, h:h + h // 4].reshape(t, 1, h // 2, w // 2) - 0.5
    v = f[:, h + h // 4:].reshape(t, 1, h // 2, w // 2) - 0.5
    u = F.interpolate(u, scale_factor=2, mode="nearest")[:, 0]
    v = F.interpolate(v, scale_factor=2, mode="nearest")[:, 0]
    r = y + v / 0.713
    b = y + u / 0.564
    g = (y - 0.299 * r - 0.114 * b) / 0.587
    return torch.stack([r, g, b], dim=1).clamp(0, 1)


def _h264_roundtrip(yuv: Tensor, width: int, height: int, qp: int, fps: int = 25) -> Tensor:
    """Encode I420 frames (T, 3H/2, W) to an in-memory mp4 with libx264 at quantiser ``qp``; decode back."""
    import av

    buf = io.BytesIO()
    arrays = [a.copy() for a in yuv.numpy()]  # PyAV may wrap without owning: keep them alive
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options={"threads": "1", "qp": str(qp)})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for a in arrays:
            for packet in stream.encode(av.VideoFrame.from_ndarray(a, format="yuv420p")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    buf.seek(0)
    with av.open(buf, "r") as container:
        decoded = [torch.from_numpy(f.to_ndarray(format="yuv420p").copy()) for f in container.decode(video=0)]
    return torch.stack(decoded)


@_register("temporal", clips_only=True)
def reencode(x, s, g):
    """Round trip through H.264 (libx264, yuv420p, in-memory mp4), bitrate falling with severity (via QP)."""
    b, c, t, h, w = x.shape
    if c != 3:
        raise ValueError(f"reencode needs RGB clips (3 channels), got {c}")
    hh, ww = -(-h // 16) * 16, -(-w // 16) * 16  # whole macroblocks: no codec-side padding
    out = torch.empty_like(x)
    for i in range(b):
        frames = F.pad(x[i].permute(1, 0, 2, 3).cpu(), (0, ww - w, 0, hh - h), mode="replicate")
        decoded = _h264_roundtrip(_rgb_to_yuv420(frames), ww, hh, REENCODE_QP[s - 1])
        if decoded.shape[0] != t:
            raise RuntimeError(f"reencode: decoded {decoded.shape[0]} frames from a {t}-frame clip")
        out[i] = _yuv420_to_rgb(decoded, hh, ww)[:, :, :h, :w].permute(1, 0, 2, 3).to(x.device)
    return out


FAMILIES: dict[str, list[str]] = {}
for _c in CORRUPTIONS.values():
    FAMILIES.setdefault(_c.family, []).append(_c.name)
IMAGE_CORRUPTIONS = [n for n, c in CORRUPTIONS.items() if not c.clips_only]
VIDEO_CORRUPTIONS = list(CORRUPTIONS)
