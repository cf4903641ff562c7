"""``vidcsl data check --verify``: decode sampled frames of a file with decord and with PyAV and compare them.

PyAV is the reference (it identifies every decoded frame by its timestamp). decord reads the sampled frames one
at a time in random order (each read a seek, the hardest case) and once as one sorted batch (a clip read).
A file where any frame differs is reported with what decord returned instead, and recorded so that the decord
reader hands it to PyAV (:func:`vidcsl.data.trust.update_record`).
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from vidcsl.data.trust import decord_misreads
from vidcsl.data.video import PyAVReader, VideoReadError, _first_line

TOLERANCE = 2.0  # mean absolute difference (of 255 levels) up to which two decodes count as the same frame
WINDOW = 8  # frames either side searched to name the frame decord returned instead


def sample_indices(num_frames: int, count: int, seed: int = 0) -> list[int]:
    """``count`` distinct frames (all when fewer): the first, the last and random others, in random order."""
    rng = np.random.default_rng(seed)
    if num_frames <= count:
        picked = np.arange(num_frames)
    else:
        inner = rng.choice(np.arange(1, num_frames - 1), size=count - 2, replace=False) if count > 2 else []
        picked = np.concatenate([[0, num_frames - 1], inner])[:count]
    return rng.permutation(picked).astype(int).tolist()


def _mean_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference per frame of two uint8 (T, H, W, C) stacks."""
    return (a.float() - b.float()).abs().mean(dim=(1, 2, 3))


def _decord_frames(path: str, indices: list[int], num_frames: int) -> tuple[list[torch.Tensor], str]:
    """decord's frames at ``indices`` read one by one, and again as one sorted batch; or [] and why not."""
    import decord

    try:
        reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    except Exception as err:  # noqa: BLE001 - decord's own error type
        return [], f"decord cannot open it ({_first_line(err)})"
    if len(reader) != num_frames:
        return [], f"decord counts {len(reader)} frames, PyAV {num_frames}"
    try:
        singles = torch.stack([torch.from_numpy(reader.get_batch([i]).asnumpy()[0]) for i in indices])
        order = np.argsort(indices)
        batch = torch.from_numpy(reader.get_batch(sorted(indices)).asnumpy())[np.argsort(order)]
    except Exception as err:  # noqa: BLE001
        return [], f"decord fails to decode ({_first_line(err)})"
    return [singles, batch], ""


def _explain(ref: PyAVReader, got: torch.Tensor, indices: list[int], wrong: list[int], truth: torch.Tensor) -> str:
    """'17 -> 19, ...' (asked for frame 17, got frame 19): the nearby PyAV frame decord's frame matches, if any."""
    parts = []
    for k in sorted(wrong, key=lambda k: indices[k])[:3]:
        i = indices[k]
        lo, hi = max(0, i - WINDOW), min(ref.num_frames, i + WINDOW + 1)
        diff = _mean_diff(ref.get_frames(range(lo, hi)), got[k][None].expand(hi - lo, *got.shape[1:]))
        j = int(diff.argmin())
        if float(diff[j]) <= TOLERANCE:
            parts.append(f"{i} -> {lo + j}")
        else:
            parts.append(f"{i} differs by {float(_mean_diff(got[k][None], truth[k][None])):.1f} levels")
    more = f", +{len(wrong) - len(parts)} more" if len(wrong) > len(parts) else ""
    return f"wrong frames ({len(wrong)} of {len(indices)}): {', '.join(parts)}{more}"


def verify_video(path: str, *, frames: int = 8, seed: int = 0) -> dict:
    """Compare decord with PyAV on ``frames`` sampled frames of ``path``.

    Returns {"path", "status", "reason", "rule"}: status "agree", "disagree" (reason: what decord got wrong) or
    "bad" (PyAV cannot read the file: reason); rule: the :data:`~vidcsl.data.trust.DECORD_RULES` entry that
    already sends the file to PyAV, or None.
    """
    row = {"path": path, "status": "bad", "reason": "", "rule": None}
    try:
        with PyAVReader(path) as ref:
            row["rule"] = decord_misreads(ref.facts)
            indices = sample_indices(ref.num_frames, frames, seed + zlib.crc32(path.encode()))
            truth = ref.get_frames(indices)
            reads, why = _decord_frames(path, indices, ref.num_frames)
            if reads:
                off = [_mean_diff(read, truth) > TOLERANCE for read in reads]
                got = torch.where(off[0][:, None, None, None], reads[0], reads[1])  # the wrong read, if any
                wrong = torch.nonzero(off[0] | off[1]).flatten().tolist()
                why = _explain(ref, got, indices, wrong, truth) if wrong else ""
    except VideoReadError as err:
        row["reason"] = str(err).removeprefix(f"{path}: ")
        return row
    row["status"], row["reason"] = ("disagree", why) if why else ("agree", "")
    return row
