"""Tiny videos made with PyAV whose frames encode their own index, plus broken files.

Frame i is a flat grey of level ``8 + 4 i`` with a saturated red strip on the left quarter, so a decoded frame
tells which frame it is (``decoded_index``) and whether it was flipped. Files are made once per session.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

LEVEL0, LEVEL_STEP = 8, 4  # grey level of frame i: 8 + 4 i (60 frames stay below 255)


def frame_pixels(i: int, height: int, width: int) -> np.ndarray:
    img = np.full((height, width, 3), LEVEL0 + LEVEL_STEP * i, np.uint8)
    img[:, : width // 4] = (255, 0, 0)
    return img


def decoded_index(frames: torch.Tensor) -> list[int]:
    """Frame indices read back from uint8 (T, H, W, C) frames (grey level of the right half)."""
    w = frames.shape[2]
    grey = frames[:, :, w // 2:, :].float().mean(dim=(1, 2, 3))
    return [int(round((g - LEVEL0) / LEVEL_STEP)) for g in grey.tolist()]


def write_video(path: Path, num_frames: int = 40, *, codec: str = "libx264", gop: int = 12, fps: int = 25,
                height: int = 48, width: int = 64, bframes: int = 2, faststart: bool = False) -> Path:
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx265":
            stream.options = {"x265-params": f"keyint={gop}:min-keyint={gop}:bframes={bframes}:log-level=error"}
        elif codec == "libx264":
            stream.options = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0", "bf": str(bframes),
                              "crf": "8"}
        else:  # sc_threshold off: flat frames would otherwise all become keyframes
            stream.options = {"g": str(gop), "sc_threshold": "1000000000", "bf": str(bframes)}
            stream.bit_rate = 4_000_000
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(frame_pixels(i, height, width), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def keyframe_count(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(p.is_keyframe for p in c.demux(video=0) if p.size)


@pytest.fixture(scope="session")
def videos(tmp_path_factory) -> dict[str, Path]:
    """Good files by name: h264 short/long GOP, mpeg4 and h264 with B-frames in AVI, hevc with B-frames,
    odd width, 50 fps, a 3-frame file."""
    d = tmp_path_factory.mktemp("videos")
    return {
        "h264_gop12": write_video(d / "h264_gop12.mp4"),
        "h264_gop250": write_video(d / "h264_gop250.mp4", num_frames=60, gop=250),
        "h264_gop1": write_video(d / "h264_gop1.mp4", gop=1, bframes=0),
        "mpeg4_gop8": write_video(d / "mpeg4_gop8.avi", codec="mpeg4", gop=8),
        "h264_bframes_avi": write_video(d / "h264_bframes.avi", gop=8),  # AVI keeps no display times
        "hevc_bframes": write_video(d / "hevc_bframes.mkv", codec="libx265", gop=8),
        "width48": write_video(d / "width48.mp4", num_frames=30, height=32, width=48),
        "fps50": write_video(d / "fps50.mp4", num_frames=60, fps=50),
        "three": write_video(d / "three.mp4", num_frames=3),
    }


@pytest.fixture(scope="session")
def bad_videos(tmp_path_factory) -> dict[str, Path]:
    """Broken files by name: missing, zero bytes, junk, truncated mp4 (no index), truncated faststart mp4
    (index intact, data cut), truncated AVI (header promises more frames than the file holds)."""
    d = tmp_path_factory.mktemp("bad")
    (d / "zero.mp4").write_bytes(b"")
    (d / "junk.mp4").write_bytes(b"this is not a video" * 10)

    def cut(src: Path, dst: Path, keep: float) -> Path:
        data = src.read_bytes()
        dst.write_bytes(data[: int(len(data) * keep)])
        return dst

    full = write_video(d / "full.mp4", num_frames=40)
    fast = write_video(d / "fast.mp4", num_frames=40, faststart=True)
    avi = write_video(d / "full.avi", codec="mpeg4", num_frames=40)
    return {
        "missing": d / "missing.mp4",
        "zero": d / "zero.mp4",
        "junk": d / "junk.mp4",
        "truncated_mp4": cut(full, d / "truncated.mp4", 0.5),
        "truncated_faststart": cut(fast, d / "truncated_fast.mp4", 0.5),
        "truncated_avi": cut(avi, d / "truncated.avi", 0.5),
    }


@pytest.fixture(scope="session")
def frame_index():
    """The function mapping decoded uint8 (T, H, W, C) frames to the indices they encode."""
    return decoded_index


@pytest.fixture(scope="session")
def make_video():
    return write_video


@pytest.fixture(scope="session")
def count_keyframes():
    return keyframe_count
