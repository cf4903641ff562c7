"""Clip samplers: pure functions from (frames in the video, fps) to source frame indices.

A clip is T frames at a temporal stride s. The stride is measured at ``target_fps`` when given (so a 60 fps and a
30 fps video yield clips covering the same duration) and mapped to source frame indices; without ``target_fps`` the
stride is in source frames. Every function takes an explicit generator (``torch.Generator`` or
``numpy.random.Generator``) so the draw is deterministic and testable; none decodes anything.
"""

from __future__ import annotations

import math

import numpy as np
import torch

Generator = torch.Generator | np.random.Generator


class ShortVideoError(ValueError):
    """The video holds fewer frames than one clip spans."""


def _step(fps: float | None, target_fps: float | None) -> float:
    """Source frames per target frame (1 when no frame-rate normalisation is asked for)."""
    if target_fps is None:
        return 1.0
    if target_fps <= 0:
        raise ValueError(f"target_fps must be positive, got {target_fps}")
    if fps is None or not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"cannot normalise frame rate: the video's fps is unknown ({fps})")
    return fps / target_fps


def _check(num_frames: int, stride: int) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames (frames per clip) must be >= 1, got {num_frames}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")


def frame_offsets(num_frames: int, stride: int, fps: float | None = None,
                  target_fps: float | None = None) -> np.ndarray:
    """Offsets (source frames) of the T frames of a clip from its first frame."""
    _check(num_frames, stride)
    step = _step(fps, target_fps) * stride
    # round half up of k*step; a tiny epsilon protects exact halves from float noise
    return np.floor(np.arange(num_frames) * step + 0.5 + 1e-9).astype(np.int64)


def clip_span(num_frames: int, stride: int, fps: float | None = None, target_fps: float | None = None) -> int:
    """Number of source frames one clip covers, first to last inclusive."""
    return int(frame_offsets(num_frames, stride, fps, target_fps)[-1]) + 1


def _max_start(video_frames: int, span: int) -> int:
    if video_frames < span:
        raise ShortVideoError(f"video has {video_frames} frames, fewer than the {span} one clip spans")
    return video_frames - span


def _randint(generator: Generator, low: int, high: int) -> int:
    """Uniform integer in [low, high] inclusive from either kind of generator."""
    if isinstance(generator, np.random.Generator):
        return int(generator.integers(low, high + 1))
    if isinstance(generator, torch.Generator):
        return int(torch.randint(low, high + 1, (1,), generator=generator).item())
    raise TypeError(f"generator must be a torch.Generator or numpy.random.Generator, got {type(generator)!r}")


def random_clip(video_frames: int, fps: float | None, *, num_frames: int, stride: int,
                generator: Generator, target_fps: float | None = None) -> np.ndarray:
    """One clip at a uniformly random start: indices of shape (T,)."""
    offsets = frame_offsets(num_frames, stride, fps, target_fps)
    start = _randint(generator, 0, _max_start(video_frames, int(offsets[-1]) + 1))
    return start + offsets


def uniform_clips(video_frames: int, fps: float | None, *, num_clips: int, num_frames: int, stride: int,
                  target_fps: float | None = None) -> np.ndarray:
    """K clips with evenly spaced starts from the first to the last possible one: shape (K, T).

    K = 1 gives the centre clip (the usual single-view evaluation).
    """
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    offsets = frame_offsets(num_frames, stride, fps, target_fps)
    last = _max_start(video_frames, int(offsets[-1]) + 1)
    if num_clips == 1:
        starts = np.array([last // 2])
    else:
        starts = np.floor(np.linspace(0, last, num_clips) + 0.5).astype(np.int64)
    return starts[:, None] + offsets[None, :]


def two_clips(video_frames: int, fps: float | None, *, num_frames: int, stride: int, generator: Generator,
              target_fps: float | None = None, max_gap_s: float | None = None,
              same_time: bool = False) -> np.ndarray:
    """Two clips of one video for contrastive positives: shape (2, T).

    CVRL-style: the first start is uniform; the second is uniform among starts at most ``max_gap_s`` seconds
    (start to start) from the first, or anywhere when ``max_gap_s`` is None. ``same_time`` returns the same
    indices twice (positives differ by augmentation only).
    """
    offsets = frame_offsets(num_frames, stride, fps, target_fps)
    last = _max_start(video_frames, int(offsets[-1]) + 1)
    first = _randint(generator, 0, last)
    if same_time:
        second = first
    elif max_gap_s is None:
        second = _randint(generator, 0, last)
    else:
        if max_gap_s < 0:
            raise ValueError(f"max_gap_s must be >= 0, got {max_gap_s}")
        if fps is None or not math.isfinite(fps) or fps <= 0:
            raise ValueError(f"max_gap_s needs the video's fps, which is unknown ({fps})")
        gap = int(math.floor(max_gap_s * fps + 1e-9))
        second = _randint(generator, max(0, first - gap), min(last, first + gap))
    return np.stack([first + offsets, second + offsets])
