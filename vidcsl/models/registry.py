"""One entry point for every encoder: ``build_encoder(name)``.

Every encoder takes *pixels in [0, 1]* ((B, 3, H, W) images or (B, 3, T, H, W) clips) and normalises them
itself with registered ``mean``/``std`` buffers. Attacks therefore perturb and clip in pixel space, and the
epsilon of an attack means the same thing for every backbone. Each returns pooled features
(B, feature_dim) and exposes ``.feature_dim`` and ``.is_video``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from vidcsl.models import resnet_cifar, small, video

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
KINETICS_MEAN, KINETICS_STD = (0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989)


class Encoder(nn.Module):
    """A backbone behind its own pixel normalisation: ``features = backbone((x - mean) / std)``."""

    def __init__(self, backbone: nn.Module, feature_dim: int, *, is_video: bool, name: str,
                 mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        mean_t, std_t = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
        if mean_t.shape != (3,) or std_t.shape != (3,) or bool((std_t <= 0).any()):
            raise ValueError(f"mean/std must be 3 values each (std > 0), got mean={mean}, std={std}")
        self.backbone = backbone
        self.feature_dim = int(feature_dim)
        self.is_video = is_video
        self.name = name
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        want = 5 if self.is_video else 4
        if x.ndim != want or x.shape[1] != 3:
            layout = "(B, 3, T, H, W) clips" if self.is_video else "(B, 3, H, W) images"
            raise ValueError(f"encoder {self.name!r} expects {layout} in [0, 1], got shape {tuple(x.shape)}")
        shape = (1, 3) + (1,) * (x.ndim - 2)
        x = (x - self.mean.view(shape)) / self.std.view(shape)
        return self.backbone(x)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, feature_dim={self.feature_dim}, is_video={self.is_video}"


def _from_module(factory: Callable[..., nn.Module]) -> Callable[..., tuple[nn.Module, int]]:
    def build(**kwargs):
        m = factory(**kwargs)
        return m, m.feature_dim
    return build


# name -> (builder returning (backbone, feature_dim), is_video, default mean, default std)
_REGISTRY: dict[str, tuple[Callable[..., tuple[nn.Module, int]], bool, tuple, tuple]] = {
    "resnet18_cifar": (_from_module(resnet_cifar.resnet18_cifar), False, CIFAR_MEAN, CIFAR_STD),
    "resnet50_cifar": (_from_module(resnet_cifar.resnet50_cifar), False, CIFAR_MEAN, CIFAR_STD),
    "small_cnn": (_from_module(small.SmallCNN), False, CIFAR_MEAN, CIFAR_STD),
    "r3d_18": (lambda: video.build_torchvision_video("r3d_18"), True, KINETICS_MEAN, KINETICS_STD),
    "r2plus1d_18": (lambda: video.build_torchvision_video("r2plus1d_18"), True, KINETICS_MEAN, KINETICS_STD),
    "mc3_18": (lambda: video.build_torchvision_video("mc3_18"), True, KINETICS_MEAN, KINETICS_STD),
    "x3d_xs": (lambda: video.build_x3d("x3d_xs"), True, KINETICS_MEAN, KINETICS_STD),
    "x3d_s": (lambda: video.build_x3d("x3d_s"), True, KINETICS_MEAN, KINETICS_STD),
    "slow_r50": (video.build_slow_r50, True, KINETICS_MEAN, KINETICS_STD),
    "small_cnn3d": (_from_module(small.SmallCNN3D), True, KINETICS_MEAN, KINETICS_STD),
}
ENCODERS: tuple[str, ...] = tuple(_REGISTRY)


def build_encoder(name: str, *, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                  **kwargs) -> Encoder:
    """Build encoder ``name`` (one of ``ENCODERS``); extra kwargs go to its builder (e.g. ``width=32`` for
    the CIFAR ResNets, ``channels=(...)`` for the small CNNs)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown encoder {name!r}; valid: {', '.join(ENCODERS)}")
    builder, is_video, default_mean, default_std = _REGISTRY[name]
    try:
        backbone, dim = builder(**kwargs)
    except TypeError as exc:
        raise ValueError(f"bad options {sorted(kwargs)} for encoder {name!r}: {exc}") from exc
    return Encoder(backbone, dim, is_video=is_video, name=name,
                   mean=default_mean if mean is None else mean, std=default_std if std is None else std)


def is_video_encoder(name: str) -> bool:
    """Whether encoder ``name`` takes clips, without building it."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown encoder {name!r}; valid: {', '.join(ENCODERS)}")
    return _REGISTRY[name][1]
