"""Video loader throughput: clips/s for random 16-frame clips (stride 2) cut to 16x112x112, on h264 files.

Every loader decodes a random clip of the same generated files and applies the same transform (short-side
resize to 112, centre crop; float (C, T, 112, 112)), in a DataLoader with 0 and 2 workers:
  raw-decord       decord.VideoReader per item + get_batch (no checks, no fallback: the floor)
  raw-pyav-seek    PyAV per item: seek to the clip start's time, decode forward, keep the clip's frames
  ours-decord      VideoClipDataset(backend="decord"): PyAV packet index + trust rules at open, then decord
  ours-decord-lru  the same with max_open_readers=8 (readers kept open across items)
  ours-pyav        VideoClipDataset(backend="pyav")
Full size: 240p (320x240) and 256p (340x256) files of 10 s at 25 fps (x264, GOP 25, 2 B-frames); a few minutes
on 2 cores. ``--small``: tiny files and few clips, seconds. Writes benchmarks/results/bench_loader[_small].{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from vidcsl.data.augment import clip_eval_transform
from vidcsl.data.sampling import random_clip
from vidcsl.data.video import VideoClipDataset, collate_skip_bad

RESULTS = Path(__file__).parent / "results"
T, STRIDE, SIZE = 16, 2, 112
FULL = dict(sizes=[(320, 240), (340, 256)], per_size=6, frames=250, clips=160, batch_size=8)
SMALL = dict(sizes=[(160, 120)], per_size=6, frames=64, clips=32, batch_size=4)


def make_videos(folder: Path, sizes: list[tuple[int, int]], per_size: int, frames: int, gop: int = 25,
                fps: int = 25) -> list[Path]:
    """h264 mp4 files with moving content (drifting gradients), ``per_size`` of each (width, height)."""
    paths = []
    for width, height in sizes:
        yy, xx = np.mgrid[0:height, 0:width]
        for v in tqdm(range(per_size), desc=f"writing {width}x{height} videos", unit="video"):
            path = folder / f"v{width}x{height}_{v:02d}.mp4"
            with av.open(str(path), "w") as container:
                stream = container.add_stream("libx264", rate=fps)
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                stream.options = {"g": str(gop), "bf": "2", "crf": "23", "preset": "veryfast"}
                for i in range(frames):
                    img = np.stack([(xx + 3 * i + 17 * v) % 256, (yy + 2 * i) % 256, (xx + yy + i) % 256], -1)
                    frame = av.VideoFrame.from_ndarray(img.astype(np.uint8), format="rgb24")
                    for packet in stream.encode(frame):
                        container.mux(packet)
                for packet in stream.encode():
                    container.mux(packet)
            paths.append(path)
    return paths


class RawLoader(Dataset):
    """A random clip per item, decoded by ``read(path, generator) -> uint8 (T, H, W, C)``, then the transform."""

    def __init__(self, paths: list[str], read):
        self.paths, self.read, self.transform = paths, read, clip_eval_transform(SIZE)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.transform(self.read(self.paths[i], np.random.default_rng(i))), 0


def read_raw_decord(path: str, rng: np.random.Generator) -> torch.Tensor:
    import decord

    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    idx = random_clip(len(vr), vr.get_avg_fps(), num_frames=T, stride=STRIDE, generator=rng)
    return torch.from_numpy(vr.get_batch(idx.tolist()).asnumpy())


def read_raw_pyav_seek(path: str, rng: np.random.Generator) -> torch.Tensor:
    """What a PyAV user writes without a packet index: seek by time, decode forward, pick frames by time."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        fps, tb, t0 = float(stream.average_rate), stream.time_base, stream.start_time or 0
        idx = random_clip(stream.frames, fps, num_frames=T, stride=STRIDE, generator=rng)
        container.seek(t0 + int(idx[0] / fps / tb), stream=stream, backward=True, any_frame=False)
        wanted, got = set(idx.tolist()), {}
        for frame in container.decode(stream):
            k = round(float((frame.pts - t0) * tb) * fps)
            if k in wanted:
                got[k] = frame.to_ndarray(format="rgb24")
            if k >= idx[-1]:
                break
    return torch.from_numpy(np.stack([got[k] for k in idx.tolist()]))


def measure(name: str, dataset: Dataset, workers: int, clips: int, batch_size: int) -> dict:
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=True,
                        generator=torch.Generator().manual_seed(0), collate_fn=collate_skip_bad)
    done, start = 0, None
    for batch in loader:
        if start is None:  # exclude worker start-up and the first batch
            start, done = time.perf_counter(), 0
            continue
        assert batch[0].shape[1:] == (3, T, SIZE, SIZE), batch[0].shape
        done += batch[0].shape[0]
        if done >= clips:
            break
    elapsed = time.perf_counter() - start if start is not None else float("nan")
    return {"loader": name, "workers": workers, "clips": done, "seconds": round(elapsed, 3),
            "clips_per_s": round(done / elapsed, 2) if done else 0.0}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="tiny files and few clips (seconds on a shared CPU)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    cfg = SMALL if args.small else FULL
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = [str(p) for p in make_videos(Path(tmp), cfg["sizes"], cfg["per_size"], cfg["frames"])]
        # enough items that a loader never runs dry before `clips` are counted
        reps = max(1, (cfg["clips"] + 2 * cfg["batch_size"]) // len(paths) + 1)
        items = paths * reps
        samples = [(p, 0) for p in items]
        ours = dict(num_frames=T, stride=STRIDE, transform=clip_eval_transform(SIZE))
        loaders = {
            "raw-decord": lambda: RawLoader(items, read_raw_decord),
            "raw-pyav-seek": lambda: RawLoader(items, read_raw_pyav_seek),
            "ours-decord": lambda: VideoClipDataset(samples, backend="decord", **ours),
            "ours-decord-lru": lambda: VideoClipDataset(samples, backend="decord", max_open_readers=8, **ours),
            "ours-pyav": lambda: VideoClipDataset(samples, backend="pyav", **ours),
        }
        for workers in args.workers:
            for name, make in tqdm(loaders.items(), desc=f"{workers} workers", unit="loader"):
                rows.append(measure(name, make(), workers, cfg["clips"], cfg["batch_size"]))
    sizes = ", ".join(f"{w}x{h}" for w, h in cfg["sizes"])
    meta = {"config": cfg, "clip": f"{T} frames at stride {STRIDE}, resized and centre-cropped to {SIZE}x{SIZE}",
            "files": f"h264 (x264 veryfast, GOP 25, 2 B-frames) mp4, {sizes}, {cfg['frames']} frames at 25 fps",
            "torch_threads": 1, "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2),
            "note": "compare rows of one run; figures from a shared CPU are not final"}
    args.out.mkdir(parents=True, exist_ok=True)
    tag = "_small" if args.small else ""
    (args.out / f"bench_loader{tag}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    base = {r["workers"]: r["clips_per_s"] for r in rows if r["loader"] == "raw-decord"}
    lines = [f"# Video loader throughput: {T}x{SIZE}x{SIZE} clips (stride {STRIDE}) from {meta['files']}", "",
             "| loader | workers | clips/s | vs raw-decord |", "|---|---|---|---|"]
    lines += [f"| {r['loader']} | {r['workers']} | {r['clips_per_s']} | "
              f"{r['clips_per_s'] / base[r['workers']]:.2f}x |" for r in rows]
    lines += ["", f"{meta['cpus']} CPUs, 1-minute load average {meta['load_average_1min']} at the end of the run "
              "(figures from a loaded machine are not final)."]
    (args.out / f"bench_loader{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
