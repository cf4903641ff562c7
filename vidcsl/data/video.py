"""Video clip streaming: decord / PyAV readers, the clip dataset, and a collate that drops bad samples.

Readers decode only the frames a clip needs and return uint8 (T, H, W, C) tensors; both backends number frames
by presentation time, so the same indices give the same frames (files decord would misread are read by PyAV:
see :mod:`vidcsl.data.trust` and docs/data.md). The dataset opens readers lazily in the process that uses them
(each DataLoader worker has its own), and a file that cannot give a clip is skipped, never fatal.
"""

from __future__ import annotations

import collections
import itertools
import os
import re
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from vidcsl.data.epoch import SharedEpoch
from vidcsl.data.sampling import random_clip, two_clips, uniform_clips
from vidcsl.data.trust import StreamFacts, decord_misreads, recorded_misread
from vidcsl.errors import DataError

BACKENDS = ("decord", "pyav")
SAMPLERS = ("random", "uniform", "two_clip")


class VideoReadError(DataError):
    """A video file cannot be opened or decoded; the message names the file and the reason."""


class BadVideoWarning(RuntimeWarning):
    """Emitted once per file (per process) when the dataset skips it."""


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise VideoReadError(f"{path}: file not found")
    if os.path.getsize(path) == 0:
        raise VideoReadError(f"{path}: empty file (0 bytes)")


def _unique_sorted(indices: Sequence[int], num_frames: int, path: str) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique indices and the inverse map back to the requested order; range-checked."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise ValueError(f"{path}: no frame indices requested")
    if idx.min() < 0 or idx.max() >= num_frames:
        raise IndexError(f"{path}: frame indices {idx.min()}..{idx.max()} outside 0..{num_frames - 1}")
    return np.unique(idx, return_inverse=True)


class PyAVReader:
    """Seek-and-decode reader on PyAV with bounded memory; the reference the decord reader is checked against.

    Opening demuxes the packet headers once (no decoding) to number frames by presentation time and to locate
    keyframes. ``get_frames`` seeks to the keyframe at or before each wanted run, decodes forward and identifies
    every decoded frame by its timestamp, keeping only the wanted ones (memory O(T) however long the video). A
    seek that lands after the wanted frame (containers without a seek index, e.g. MPEG-TS) is retried from an
    earlier keyframe, then from the start of the file. Streams without usable timestamps (none, duplicated, or
    decode times only) are read sequentially: the n-th frame out of the decoder is frame n (``sequential``).
    """

    def __init__(self, path: str):
        _check_file(path)
        self.path = path
        self._container = None
        self._open()
        try:
            if not self._container.streams.video:
                raise VideoReadError(f"{path}: no video stream")
            self._index_packets()
            rate = self._stream.average_rate or self._stream.guessed_rate
            self.fps = float(rate) if rate else float("nan")
        except Exception as err:
            self.close()
            if isinstance(err, VideoReadError):
                raise
            raise VideoReadError(f"{path}: cannot index packets ({_first_line(err)})") from err

    def _open(self) -> None:
        """(Re)open the container: a fresh demuxer starts at the first byte, which no seek can promise."""
        import av

        self.close()
        try:
            self._container = av.open(self.path)
        except Exception as err:  # noqa: BLE001 - any open failure means an unreadable file
            raise VideoReadError(f"{self.path}: cannot open ({_first_line(err)})") from err
        if self._container.streams.video:
            self._stream = self._container.streams.video[0]

    def _index_packets(self) -> None:
        pts, keys = [], []
        for packet in self._container.demux(self._stream):
            if packet.size == 0:  # flush packet
                continue
            pts.append(packet.pts)
            keys.append(packet.is_keyframe)
        if not pts:
            raise VideoReadError(f"{self.path}: video stream holds no frames")
        self.num_frames = len(pts)
        _check_declared(self.path, self._stream.frames or 0, self.num_frames)
        ctx = self._stream.codec_context
        codec, b_frames = ctx.name, bool(ctx.has_b_frames)
        timestamps = None not in pts and len(set(pts)) == len(pts)
        open_gop = decode_order_times = False
        self._keyframes = np.zeros(1, np.int64)
        if timestamps:
            stamps = np.asarray(pts, dtype=np.int64)
            order = np.argsort(stamps, kind="stable")
            rank = np.empty_like(order)
            rank[order] = np.arange(len(order))
            self._pts = stamps[order]
            self._pts_to_index = {int(p): i for i, p in enumerate(self._pts)}
            key_at = np.flatnonzero(np.asarray(keys))  # decode positions of the keyframes
            open_gop = bool(np.any(rank[key_at] != key_at))
            self._keyframes = np.union1d([0], rank[key_at])
            # B-frames but packet times in decode order: the container (e.g. h264 in AVI) stores no display times
            decode_order_times = b_frames and bool(np.all(np.diff(stamps) > 0)) and self._has_reorder()
        self.sequential = not timestamps or decode_order_times
        self.facts = StreamFacts(format=self._container.format.name.split(",")[0], codec=codec,
                                 b_frames=b_frames, timestamps=timestamps,
                                 decode_order_times=decode_order_times, open_gop=open_gop)

    def _has_reorder(self) -> bool:
        """Whether the decoder's output times disagree with the sorted packet times (checked on the first frames)."""
        self._open()
        got = []
        for frame in self._container.decode(self._stream):
            got.append(frame.pts)
            if len(got) == min(16, self.num_frames):
                break
        return got != [int(p) for p in self._pts[: len(got)]]

    def _keyframe_slot(self, index: int) -> int:
        """Position in ``_keyframes`` of the last keyframe at or before frame ``index``."""
        return int(np.searchsorted(self._keyframes, index, side="right")) - 1

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        """Frames at ``indices`` (any order, repeats allowed) as uint8 (T, H, W, C)."""
        wanted, inverse = _unique_sorted(indices, self.num_frames, self.path)
        found: dict[int, np.ndarray] = {}
        try:
            if self.sequential:
                self._decode_in_output_order(wanted, found)
            else:
                pos, more = 0, True
                while more and pos < len(wanted):
                    pos, more = self._read_run(wanted, pos, found)
        except VideoReadError:
            raise
        except Exception as err:
            raise VideoReadError(f"{self.path}: decode failed ({_first_line(err)})") from err
        missing = [int(w) for w in wanted if int(w) not in found]
        if missing:
            raise VideoReadError(f"{self.path}: frames {missing[:5]} could not be decoded (truncated?)")
        stacked = np.stack([found[int(w)] for w in wanted])
        return torch.from_numpy(stacked[inverse])

    def _frames_from(self, slot: int | None):
        """(index, frame) of the frames decoded after seeking to keyframe ``slot`` (None: from the first byte)."""
        if slot is None:
            self._open()
        else:
            target = int(self._pts[self._keyframes[slot]])
            self._container.seek(target, stream=self._stream, backward=True, any_frame=False)
        for frame in self._container.decode(self._stream):
            stamp = frame.pts if frame.pts is not None else frame.dts
            i = self._pts_to_index.get(int(stamp)) if stamp is not None else None
            if i is not None:
                yield i, frame

    def _read_run(self, wanted: np.ndarray, pos: int, found: dict[int, np.ndarray]) -> tuple[int, bool]:
        """Decode ``wanted[pos:]`` from the keyframe before ``wanted[pos]`` until re-seeking is cheaper than
        decoding on. Returns the next position and False when the stream ended."""
        slot = self._keyframe_slot(int(wanted[pos]))
        for start in (slot, slot - 1, None):  # the keyframe; one earlier; the first byte of the file
            if start is not None and start < 0:
                continue
            frames = self._frames_from(start)
            first = next(frames, None)
            if first is not None and first[0] <= wanted[pos]:
                break
        else:
            raise VideoReadError(f"{self.path}: frame {int(wanted[pos])} not produced by the decoder")
        for i, frame in itertools.chain([first], frames):
            if i < wanted[pos]:
                continue
            if i > wanted[pos]:
                raise VideoReadError(f"{self.path}: frame {int(wanted[pos])} not produced by the decoder")
            found[i] = frame.to_ndarray(format="rgb24")
            pos += 1
            if pos == len(wanted):
                return pos, True
            if self._keyframes[self._keyframe_slot(int(wanted[pos]))] > i + 1:  # a keyframe is closer: seek
                return pos, True
        return pos, False

    def _decode_in_output_order(self, wanted: np.ndarray, found: dict[int, np.ndarray]) -> None:
        self._open()
        targets = set(wanted.tolist())
        for i, frame in enumerate(self._container.decode(self._stream)):
            if i in targets:
                found[i] = frame.to_ndarray(format="rgb24")
                if len(found) == len(targets):
                    break

    def close(self) -> None:
        container = getattr(self, "_container", None)
        if container is not None:
            container.close()
            self._container = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class DecordReader:
    """decord ``VideoReader`` (one thread) with ``get_batch``, for the files decord reads right.

    Opening indexes the file's packets with :class:`PyAVReader` first (a few ms, no decoding). The file is read
    by that PyAV reader instead of decord when decord would return wrong frames: a rule of
    :data:`vidcsl.data.trust.DECORD_RULES` holds, ``vidcsl data check --verify`` recorded a disagreement, decord
    cannot open the file, or decord counts a different number of frames. ``delegated`` says why (None when
    decord reads the file). decord 0.6.0 also fails ``get_batch`` for some frame widths (e.g. 48: a row-padding
    size check); such reads fall back to PyAV too.
    """

    def __init__(self, path: str):
        import decord

        self.path = path
        self._reader = None
        self._fallback: PyAVReader | None = PyAVReader(path)  # raises VideoReadError for broken files
        self.facts = self._fallback.facts
        self.num_frames, self.fps = self._fallback.num_frames, self._fallback.fps
        self.delegated = decord_misreads(self.facts) or recorded_misread(path)
        if self.delegated:
            return
        try:
            reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
        except Exception as err:  # noqa: BLE001 - e.g. "Failed to measure duration/frame-count" (raw streams)
            self.delegated = f"decord cannot open it ({_first_line(err)})"
            return
        if len(reader) != self.num_frames:
            self.delegated = f"decord counts {len(reader)} frames, the container holds {self.num_frames}"
            return
        self._reader = reader
        self._fallback.close()
        self._fallback = None

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        """Frames at ``indices`` (any order, repeats allowed) as uint8 (T, H, W, C)."""
        wanted, inverse = _unique_sorted(indices, self.num_frames, self.path)
        if self._fallback is not None:
            return self._fallback.get_frames(indices)
        try:
            batch = self._reader.get_batch(wanted.tolist()).asnumpy()
        except Exception as err:  # noqa: BLE001
            if "size must exactly match" in str(err):  # decord's row-padding bug
                self.delegated = "decord's get_batch fails at this frame width"
                self._fallback = PyAVReader(self.path)
                return self._fallback.get_frames(indices)
            raise VideoReadError(f"{self.path}: decode failed ({_first_line(err)})") from err
        return torch.from_numpy(batch[inverse])

    def close(self) -> None:
        self._reader = None
        if self._fallback is not None:
            self._fallback.close()
            self._fallback = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _check_declared(path: str, declared: int, held: int) -> None:
    """A container that promises more frames than it holds has lost its tail (e.g. an AVI cut short)."""
    if declared > held + max(1, declared // 100):
        raise VideoReadError(f"{path}: truncated (header declares {declared} frames, file holds {held})")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    if not text:
        return type(err).__name__
    # decord prefixes its messages with "[hh:mm:ss] /its/source.cc:123: [the file] "
    line = re.sub(r"^\[[\d:]+\] \S+:\d+: (\[[^\]]*\] )?", "", text[0])
    return f"{type(err).__name__}: {line[:200]}"


def open_video(path: str | os.PathLike, backend: str = "decord") -> DecordReader | PyAVReader:
    """Open ``path`` with ``backend`` ("decord" or "pyav"); raises VideoReadError naming file and reason."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return (DecordReader if backend == "decord" else PyAVReader)(os.fspath(path))


def to_float_clip(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (T, H, W, C) -> float (C, T, H, W) in [0, 1]: the default transform (no augmentation)."""
    return frames.permute(3, 0, 1, 2).float().div_(255.0)


class VideoClipDataset(Dataset):
    """Clips of labelled videos.

    ``dataset[i]`` is ``(x, label)`` with x float (C, T, H, W) in [0, 1] for sampler "random"; ``((x1, x2),
    label)`` for "two_clip" (two augmentation draws); for "uniform", x is (K, C, T, H, W) when ``num_clips`` > 1
    (and (K*crops, ...) when the transform returns crops). A file that cannot give a clip returns None, warns once
    per path and is recorded in ``self.bad`` (this process only; the collate counts what it drops).

    Randomness is drawn per item from (seed, epoch, index), so the clips and augmentations do not depend on the
    number of workers; call ``set_epoch`` before each epoch for fresh draws (workers that persist across epochs see
    it: the epoch is shared with them, :class:`vidcsl.data.epoch.SharedEpoch`).
    ``max_open_readers`` > 0 keeps an LRU of open readers per process; 0 opens and closes one per item.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], *, num_frames: int = 8, stride: int = 2,
                 target_fps: float | None = None, sampler: str = "random", num_clips: int = 1,
                 max_gap_s: float | None = None, same_time: bool = False,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None, backend: str = "decord",
                 seed: int = 0, max_open_readers: int = 0):
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if num_frames < 1 or stride < 1 or num_clips < 1:
            raise ValueError(f"num_frames, stride and num_clips must be >= 1, got {num_frames}, {stride}, "
                             f"{num_clips}")
        if max_open_readers < 0:
            raise ValueError(f"max_open_readers must be >= 0, got {max_open_readers}")
        self.samples = [(os.fspath(p), int(y)) for p, y in samples]
        self.num_frames, self.stride, self.target_fps = num_frames, stride, target_fps
        self.sampler, self.num_clips, self.max_gap_s, self.same_time = sampler, num_clips, max_gap_s, same_time
        self.transform = transform or to_float_clip
        self.backend, self.seed, self._epoch = backend, seed, SharedEpoch()
        self.max_open_readers = max_open_readers
        self.bad: dict[str, str] = {}
        self._readers: collections.OrderedDict[str, DecordReader | PyAVReader] = collections.OrderedDict()
        self._owner_pid = os.getpid()

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def epoch(self) -> int:
        return self._epoch.get()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.set(epoch)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_readers"] = collections.OrderedDict()  # open readers never cross a process boundary
        return state

    # -- readers -------------------------------------------------------------------------------------------
    def _open(self, path: str):
        if os.getpid() != self._owner_pid:  # forked worker: drop anything inherited
            self._readers = collections.OrderedDict()
            self._owner_pid = os.getpid()
        if self.max_open_readers == 0:
            return open_video(path, self.backend)
        reader = self._readers.pop(path, None) or open_video(path, self.backend)
        self._readers[path] = reader
        while len(self._readers) > self.max_open_readers:
            self._readers.popitem(last=False)[1].close()
        return reader

    def _release(self, path: str, reader, broken: bool) -> None:
        if self.max_open_readers == 0 or broken:
            self._readers.pop(path, None)
            reader.close()

    # -- sampling ------------------------------------------------------------------------------------------
    def _generator(self, index: int) -> torch.Generator:
        state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(2)
        return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))

    def _indices(self, video_frames: int, fps: float, gen: torch.Generator) -> np.ndarray:
        common = dict(num_frames=self.num_frames, stride=self.stride, target_fps=self.target_fps)
        if self.sampler == "random":
            return random_clip(video_frames, fps, generator=gen, **common)[None]
        if self.sampler == "uniform":
            return uniform_clips(video_frames, fps, num_clips=self.num_clips, **common)
        return two_clips(video_frames, fps, generator=gen, max_gap_s=self.max_gap_s, same_time=self.same_time,
                         **common)

    def _mark_bad(self, path: str, reason: str) -> None:
        if path not in self.bad:
            self.bad[path] = reason
            warnings.warn(f"skipping video {path}: {reason}", BadVideoWarning, stacklevel=3)

    def _apply(self, clip: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if getattr(self.transform, "accepts_generator", False):
            return self.transform(clip, generator=gen)
        return self.transform(clip)

    def read_clips(self, index: int) -> tuple[torch.Tensor, np.ndarray] | None:
        """Decode the clips of item ``index``: uint8 (K, T, H, W, C) and their frame indices, or None if bad."""
        path = self.samples[index][0]
        gen = self._generator(index)
        reader = None
        try:
            reader = self._open(path)
            indices = self._indices(reader.num_frames, reader.fps, gen)
            frames = reader.get_frames(indices.reshape(-1))
        except (ValueError, IndexError) as err:  # VideoReadError, ShortVideoError, unknown fps with target_fps
            self._mark_bad(path, str(err).removeprefix(f"{path}: "))
            if reader is not None:
                self._release(path, reader, broken=True)
            return None
        self._release(path, reader, broken=False)
        return frames.reshape(*indices.shape, *frames.shape[1:]), indices

    def __getitem__(self, index: int):
        read = self.read_clips(index)
        if read is None:
            return None
        clips, _ = read
        label = self.samples[index][1]
        gen = self._generator(index)
        gen.manual_seed(gen.initial_seed() ^ 0x5EED)  # augmentation stream distinct from the sampling stream
        if self.sampler == "two_clip":
            return (self._apply(clips[0], gen), self._apply(clips[1], gen)), label
        views = [self._apply(c, gen) for c in clips]
        if self.sampler == "random" or (self.num_clips == 1 and views[0].dim() == 4):
            return views[0], label
        return torch.cat([v if v.dim() == 5 else v[None] for v in views]), label

    def close(self) -> None:
        """Close the readers this process holds open."""
        while self._readers:
            self._readers.popitem()[1].close()


class CollatedBatch(list):
    """default_collate's output list, plus ``dropped``: how many samples of this batch were bad (None)."""

    def __init__(self, items, dropped: int):
        super().__init__(items)
        self.dropped = dropped


def collate_skip_bad(batch: list) -> CollatedBatch | None:
    """Drop None samples and default-collate the rest; None when every sample was bad (skip that batch).

    The trainer reads ``getattr(batch, "dropped", 0)`` to count skipped samples in the main process (worker-side
    ``dataset.bad`` dicts are not visible there).
    """
    kept = [b for b in batch if b is not None]
    if not kept:
        return None
    return CollatedBatch(default_collate(kept), len(batch) - len(kept))
