"""Video loader throughput: clips/s and frames/s for random 16-frame clips at stride 2.

Compares, on the same generated h264 files and DataLoader settings (0/1/2 workers):
  raw-decord      open decord.VideoReader per item + get_batch (the floor: no checks, no fallback)
  ours-decord     VideoClipDataset(backend="decord"), open/close a reader per item
  ours-decord-lru VideoClipDataset(backend="decord", max_open_readers=8)
  ours-pyav       VideoClipDataset(backend="pyav")
  pytorchvideo    pytorchvideo.data.LabeledVideoDataset (PyAV decoder, RandomClipSampler), 16 of the 32
                  decoded frames kept
Writes benchmarks/results/bench_loader.{json,md}. ``--small`` is a seconds-long smoke run for a shared CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from vidcsl.data.sampling import random_clip
from vidcsl.data.video import VideoClipDataset, collate_skip_bad

RESULTS = Path(__file__).parent / "results"
T, STRIDE = 16, 2


def make_videos(folder: Path, count: int, frames: int, height: int, width: int, fps: int = 25) -> list[Path]:
    """h264 mp4 files with moving noise-free content (a drifting gradient), GOP 12, B-frames."""
    paths = []
    yy, xx = np.mgrid[0:height, 0:width]
    for v in tqdm(range(count), desc="writing videos", unit="video"):
        path = folder / f"v{v:03d}.mp4"
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"g": "12", "bf": "2", "crf": "23", "preset": "veryfast"}
            for i in range(frames):
                img = np.stack([(xx + 3 * i + 17 * v) % 256, (yy + 2 * i) % 256, (xx + yy + i) % 256], -1)
                for packet in stream.encode(av.VideoFrame.from_ndarray(img.astype(np.uint8), format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        paths.append(path)
    return paths


class RawDecord(Dataset):
    """The plain decord loop: open, sample, get_batch, convert; nothing else."""

    def __init__(self, paths):
        self.paths = [str(p) for p in paths]

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        import decord

        vr = decord.VideoReader(self.paths[i], ctx=decord.cpu(0), num_threads=1)
        idx = random_clip(len(vr), vr.get_avg_fps(), num_frames=T, stride=STRIDE, generator=np.random.default_rng())
        x = torch.from_numpy(vr.get_batch(idx.tolist()).asnumpy()).permute(3, 0, 1, 2).float().div_(255)
        return x, 0


def _pytorchvideo(paths, fps: int):
    from pytorchvideo.data import LabeledVideoDataset
    from pytorchvideo.data.clip_sampling import RandomClipSampler

    def subsample(sample: dict):
        video = sample["video"]  # (C, T', H, W) float 0..255, T' ~ T * STRIDE decoded frames
        keep = torch.linspace(0, video.shape[1] - 1, T).round().long()
        return video[:, keep].div(255), sample["label"]

    return LabeledVideoDataset([(str(p), {"label": 0}) for p in paths], RandomClipSampler(Fraction(T * STRIDE, fps)),
                               transform=subsample, decode_audio=False, decoder="pyav")


def measure(name: str, make_dataset, workers: int, clips: int, batch_size: int) -> dict:
    dataset = make_dataset()
    iterable = not hasattr(dataset, "__getitem__") or name == "pytorchvideo"
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                        shuffle=not iterable, collate_fn=None if name in ("raw-decord", "pytorchvideo")
                        else collate_skip_bad)
    done, start = 0, None
    for batch in loader:
        if start is None:  # exclude worker start-up and the first batch
            start, done = time.perf_counter(), 0
            continue
        done += batch[0].shape[0]
        if done >= clips:
            break
    elapsed = time.perf_counter() - start if start is not None else float("nan")
    return {"loader": name, "workers": workers, "clips": done, "seconds": round(elapsed, 3),
            "clips_per_s": round(done / elapsed, 2) if done else 0.0,
            "frames_per_s": round(done * T / elapsed, 1) if done else 0.0}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="tiny files and few clips (seconds on a shared CPU)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.small:
        cfg = dict(count=8, frames=64, height=120, width=160, clips=48, batch_size=4)
    else:
        cfg = dict(count=32, frames=250, height=240, width=320, clips=512, batch_size=8)
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_videos(Path(tmp), cfg["count"], cfg["frames"], cfg["height"], cfg["width"])
        # enough items that a loader never runs dry before `clips` are counted
        reps = max(1, (cfg["clips"] + 2 * cfg["batch_size"]) // len(paths) + 1)
        samples = [(str(p), 0) for p in paths] * reps
        loaders = {
            "raw-decord": lambda: RawDecord([p for p, _ in samples]),
            "ours-decord": lambda: VideoClipDataset(samples, num_frames=T, stride=STRIDE, backend="decord"),
            "ours-decord-lru": lambda: VideoClipDataset(samples, num_frames=T, stride=STRIDE, backend="decord",
                                                        max_open_readers=8),
            "ours-pyav": lambda: VideoClipDataset(samples, num_frames=T, stride=STRIDE, backend="pyav"),
            "pytorchvideo": lambda: _pytorchvideo([p for p, _ in samples], 25),
        }
        for workers in args.workers:
            for name, make in tqdm(loaders.items(), desc=f"{workers} workers", unit="loader"):
                rows.append(measure(name, make, workers, cfg["clips"], cfg["batch_size"]))
    meta = {"config": cfg, "clip": f"{T} frames, stride {STRIDE}", "torch_threads": 1,
            "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "note": "shared CPU: compare rows of one run, not runs"}
    args.out.mkdir(parents=True, exist_ok=True)
    tag = "_small" if args.small else ""
    (args.out / f"bench_loader{tag}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [f"# Video loader throughput ({cfg['count']} videos {cfg['width']}x{cfg['height']}, "
             f"{cfg['frames']} frames, h264 GOP 12; clip {T}x stride {STRIDE})", "",
             "| loader | workers | clips/s | frames/s |", "|---|---|---|---|"]
    lines += [f"| {r['loader']} | {r['workers']} | {r['clips_per_s']} | {r['frames_per_s']} |" for r in rows]
    (args.out / f"bench_loader{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
