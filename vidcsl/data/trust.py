"""Which files decord may read: rules on what one demux pass tells about a stream, and the verify record.

decord 0.6.0 numbers frames by presentation time, but it takes a keyframe's position in *decode* order for its
position in presentation order, seeks by presentation timestamp, and then counts decoded frames. That is right
for the common case (h264/hevc/vp9/mpeg4 in mp4, mov, mkv or webm with closed GOPs) and silently wrong where a
rule below holds; the measured cases are listed in docs/data.md. Files a rule flags are read with PyAV instead,
which identifies every decoded frame by its timestamp (or, without timestamps, by decoder output order).

The rules are a cheap first line. ``vidcsl data check --verify`` is the second: it decodes sampled frames of
every file with both readers and records the files where they disagree in ``decord_verify.json`` under the
cache folder (``$VIDCSL_DATA``, else ``~/.cache/vidcsl``); the decord reader consults that record at open.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vidcsl.data.embedded import default_cache_dir
from vidcsl.errors import DataError

RECORD_NAME = "decord_verify.json"
RECORD_VERSION = 1


@dataclass(frozen=True)
class StreamFacts:
    """What demuxing a video stream's packets (no decoding) says about it."""

    format: str  # FFmpeg demuxer, first name ("mov" for mp4, "matroska" for mkv/webm, "avi", "mpegts", ...)
    codec: str
    b_frames: bool  # the decoder may reorder frames
    timestamps: bool  # every packet carries a distinct presentation timestamp
    decode_order_times: bool  # the timestamps follow decode order although the decoder reorders (no display times)
    open_gop: bool  # a keyframe's decode position differs from its presentation position


# name -> (condition, why decord gets such files wrong); checked in this order, the first match is the reason
DECORD_RULES: dict[str, tuple[Callable[[StreamFacts], bool], str]] = {
    "no timestamps": (lambda f: not f.timestamps,
                      "packets carry no usable presentation timestamps (e.g. a raw .h264 / .hevc stream): decord "
                      "cannot number the frames"),
    "decode-order timestamps": (lambda f: f.decode_order_times,
                                "the container stores decode times only (B-frames without display times): decord's "
                                "frame numbers follow decode order"),
    "open GOP": (lambda f: f.open_gop,
                 "open GOP (frames decoded after a keyframe are shown before it): decord seeks to the wrong keyframe"),
    "AVI": (lambda f: f.format == "avi",
            "AVI container: decord returns wrong frames after seeking (measured for h264 and mpeg4 with B-frames)"),
    "MPEG-PS/TS": (lambda f: f.format in ("mpeg", "mpegts"),
                   "MPEG program/transport stream: no seek index, decord's timestamp seeks land on the wrong frame"),
}


def decord_misreads(facts: StreamFacts) -> str | None:
    """Why decord would return wrong frames for a stream with these facts (a rule name and reason), or None."""
    for name, (applies, why) in DECORD_RULES.items():
        if applies(facts):
            return f"{name}: {why}"
    return None


# -- the verify record ----------------------------------------------------------------------------------------
def record_path() -> Path:
    """Where ``data check --verify`` records the files decord misreads: ``<cache folder>/decord_verify.json``."""
    return default_cache_dir() / RECORD_NAME


def _file_key(path: str | os.PathLike) -> tuple[str, int, int]:
    """(real path, size, modification time): an entry only applies to the very file that was verified."""
    real = os.path.realpath(path)
    st = os.stat(real)
    return real, st.st_size, st.st_mtime_ns


def load_record(path: Path | None = None) -> dict[str, dict]:
    """The record's entries: real path -> {"size", "mtime_ns", "reason"}; empty when there is no record."""
    path = path or record_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise DataError(f"{path}: cannot read the decord verify record ({err.strerror})") from None
    try:
        raw = json.loads(text)
        files = raw["files"]
        if raw.get("version") != RECORD_VERSION or not isinstance(files, dict):
            raise ValueError(f"version {raw.get('version')!r}")
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise DataError(f"{path}: not a decord verify record ({err}); delete it and rerun "
                        f"'vidcsl data check --verify'") from None
    return files


def update_record(verdicts: dict[str, str | None], path: Path | None = None) -> Path:
    """Record ``verdicts`` (video path -> why decord misreads it, or None when it reads it right); atomic write.

    Entries of other files are kept, so several datasets can share one record.
    """
    path = path or record_path()
    files = load_record(path)
    for video, reason in verdicts.items():
        real, size, mtime = _file_key(video)
        if reason is None:
            files.pop(real, None)
        else:
            files[real] = {"size": size, "mtime_ns": mtime, "reason": reason}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"version": RECORD_VERSION, "files": dict(sorted(files.items()))}, fh, indent=1)
        os.replace(tmp, path)
    except OSError as err:
        raise DataError(f"{path}: cannot write the decord verify record ({err.strerror})") from None
    _loaded.clear()
    return path


_loaded: dict[tuple, dict[str, dict]] = {}  # (record path, mtime, size) -> entries: loaded once per process


def recorded_misread(video: str | os.PathLike) -> str | None:
    """The recorded reason decord misreads ``video``, if ``data check --verify`` found it (and it is unchanged)."""
    path = record_path()
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _loaded:
        _loaded.clear()
        _loaded[key] = load_record(path)
    files = _loaded[key]
    if not files:
        return None
    try:
        real, size, mtime = _file_key(video)
    except OSError:
        return None
    entry = files.get(real)
    if entry is None or entry.get("size") != size or entry.get("mtime_ns") != mtime:
        return None
    return f"verified: {entry.get('reason', 'decord and PyAV disagree')}"
