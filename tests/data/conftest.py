"""Tiny videos made with PyAV whose frames encode their own index, plus broken files.

Frame i shows the bits of i as six big blocks (dark = 0, light = 1) right of a saturated red strip on the left
quarter, so a decoded frame tells which frame it is (``decoded_index``), robustly after lossy coding, and whether
it was flipped. Files are made once per session.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

BITS, ROWS = 6, 2  # frame indices 0..63 as a 2 x 3 grid of blocks
DARK, LIGHT = 32, 224


def _blocks(height: int, width: int):
    """(rows, columns) slices of each bit's block, in bit order."""
    x0, cols = width // 4, BITS // ROWS
    bw, bh = (width - x0) // cols, height // ROWS
    for b in range(BITS):
        r, c = divmod(b, cols)
        yield slice(r * bh, (r + 1) * bh), slice(x0 + c * bw, x0 + (c + 1) * bw)


def frame_pixels(i: int, height: int, width: int) -> np.ndarray:
    if not 0 <= i < 2**BITS:
        raise ValueError(f"frame index {i} does not fit in {BITS} bits")
    img = np.zeros((height, width, 3), np.uint8)
    img[:, : width // 4] = (255, 0, 0)
    for b, (rows, cols) in enumerate(_blocks(height, width)):
        img[rows, cols] = LIGHT if (i >> b) & 1 else DARK
    return img


def decoded_index(frames: torch.Tensor) -> list[int]:
    """Frame indices read back from uint8 (T, H, W, C) frames (the centre half of each bit's block)."""
    frames = torch.as_tensor(frames)
    out = torch.zeros(frames.shape[0], dtype=torch.int64)
    for b, (rows, cols) in enumerate(_blocks(frames.shape[1], frames.shape[2])):
        h, w = rows.stop - rows.start, cols.stop - cols.start
        inner = frames[:, rows.start + h // 4: rows.stop - h // 4, cols.start + w // 4: cols.stop - w // 4]
        out += (inner.float().mean(dim=(1, 2, 3)) > (DARK + LIGHT) / 2).long() << b
    return out.tolist()


def _codec_options(codec: str, gop: int, bframes: int, open_gop: bool) -> tuple[dict, int | None]:
    """Encoder options (keyframe every ``gop`` frames, ``bframes`` B-frames) and a bit rate where one is needed."""
    if codec == "libx264":
        opts = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0", "bf": str(bframes), "crf": "12"}
        return ({**opts, "x264-params": "open-gop=1"} if open_gop else opts), None
    if codec == "libx265":
        params = f"keyint={gop}:min-keyint={gop}:bframes={bframes}:open-gop={int(open_gop)}:log-level=error"
        return {"x265-params": params}, None
    if codec in ("libvpx-vp9", "libvpx"):
        return {"g": str(gop), "deadline": "realtime", "cpu-used": "8"}, 1_000_000
    if codec == "mjpeg":
        return {}, None
    # mpeg4, mpeg2video; sc_threshold off: flat frames would otherwise all become keyframes
    opts = {"g": str(gop), "sc_threshold": "1000000000", "bf": str(bframes)}
    return ({**opts, "flags": "+cgop"} if not open_gop else opts), 2_000_000


def write_video(path: Path, num_frames: int = 40, *, codec: str = "libx264", fmt: str | None = None, gop: int = 12,
                fps: int = 25, height: int = 48, width: int = 64, bframes: int = 2, open_gop: bool = False,
                faststart: bool = False, pts=None) -> Path:
    """Encode frames 0..num_frames-1 with PyAV. ``fmt`` forces a container (e.g. "h264" for a raw stream);
    ``pts(i)`` gives frame i's timestamp in 1/(10 fps) units (irregular spacing or an offset start)."""
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", format=fmt, options=options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        stream.options, bit_rate = _codec_options(codec, gop, bframes, open_gop)
        if bit_rate:
            stream.bit_rate = bit_rate
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(frame_pixels(i, height, width), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts(i), Fraction(1, 10 * fps)
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
    """Good files by name: h264 short/long GOP, mpeg4 and h264 with B-frames in AVI, hevc with B-frames (open GOP),
    odd width, 50 fps, a 3-frame file."""
    d = tmp_path_factory.mktemp("videos")
    return {
        "h264_gop12": write_video(d / "h264_gop12.mp4"),
        "h264_gop250": write_video(d / "h264_gop250.mp4", num_frames=60, gop=250),
        "h264_gop1": write_video(d / "h264_gop1.mp4", gop=1, bframes=0),
        "mpeg4_gop8": write_video(d / "mpeg4_gop8.avi", codec="mpeg4", gop=8),
        "h264_bframes_avi": write_video(d / "h264_bframes.avi", gop=8),  # AVI keeps no display times
        "hevc_bframes": write_video(d / "hevc_bframes.mkv", codec="libx265", gop=8, open_gop=True),
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
