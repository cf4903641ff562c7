"""``vidcsl data check``: scan a video dataset for unreadable or too-short files before training on it, and with
``--verify`` find the files decord would misread (they are recorded and read with PyAV from then on)."""

from __future__ import annotations

import argparse
import math
import statistics
from collections import Counter

from tqdm import tqdm

from vidcsl.data.layouts import LAYOUTS, read_split
from vidcsl.data.sampling import ShortVideoError, clip_span, uniform_clips
from vidcsl.data.trust import load_record, record_path, update_record
from vidcsl.data.verify import verify_video
from vidcsl.data.video import BACKENDS, VideoReadError, open_video
from vidcsl.errors import UsageError


def check_video(path: str, *, backend: str, num_frames: int, stride: int,
                target_fps: float | None = None) -> dict:
    """Open ``path`` and decode its centre clip: {"path", "ok", "reason", "frames", "fps", "size", "pyav"}.

    "pyav" says why the decord backend reads this file with PyAV (None when decord reads it, or backend "pyav").
    """
    row = {"path": path, "ok": False, "reason": "", "frames": None, "fps": None, "size": None, "pyav": None}
    try:
        with open_video(path, backend) as reader:
            row["frames"], row["fps"] = reader.num_frames, reader.fps
            row["pyav"] = getattr(reader, "delegated", None)
            indices = uniform_clips(reader.num_frames, reader.fps, num_clips=1, num_frames=num_frames,
                                    stride=stride, target_fps=target_fps)[0]
            frames = reader.get_frames(indices)
            row["size"] = (int(frames.shape[1]), int(frames.shape[2]))
            row["ok"] = True
    except ShortVideoError as err:
        row["reason"] = f"short: {err}"
    except (VideoReadError, IndexError, ValueError) as err:
        row["reason"] = str(err).removeprefix(f"{path}: ")
    return row


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = lambda r: "| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths)) + " |"
    return "\n".join([fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, rows)])


FOLD_LAYOUTS = ("ucf101", "hmdb51")
_OPTION_LAYOUTS = {"--list-file": ("list",), "--csv-file": ("kinetics",), "--fold": FOLD_LAYOUTS}


def _check_args(args: argparse.Namespace) -> None:
    """Values argparse lets through but nothing can use, and options the layout would ignore: one line naming
    the option, before any work. Fills the defaults of ``--fold`` and ``--verify-frames``."""
    for flag, given, applies in (("--list-file", args.list_file, args.layout == "list"),
                                 ("--csv-file", args.csv_file, args.layout == "kinetics"),
                                 ("--fold", args.fold, args.layout in FOLD_LAYOUTS),
                                 ("--verify-frames", args.verify_frames, args.verify)):
        if given is not None and not applies:
            needs = "--verify" if flag == "--verify-frames" else f"--layout {' or '.join(_OPTION_LAYOUTS[flag])}"
            raise UsageError(f"{flag} has no effect without {needs}")
    args.fold = 1 if args.fold is None else args.fold
    args.verify_frames = 8 if args.verify_frames is None else args.verify_frames
    for flag, value in (("--num-frames", args.num_frames), ("--stride", args.stride), ("--fold", args.fold),
                        ("--verify-frames", args.verify_frames)):
        if value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    if args.target_fps is not None and not (math.isfinite(args.target_fps) and args.target_fps > 0):
        raise UsageError(f"--target-fps must be a positive number, got {args.target_fps}")


def _rule_name(reason: str) -> str:
    return reason.split(":", 1)[0]


def _verify(rows: list[dict], args: argparse.Namespace) -> None:
    """Compare decord with PyAV on every readable file, print the disagreements, update the record."""
    good = [r["path"] for r in rows if r["ok"]]
    verdicts = [verify_video(path, frames=args.verify_frames)
                for path in tqdm(good, desc="decord vs PyAV", unit="video")]
    disagree = [v for v in verdicts if v["status"] == "disagree"]
    rule_only = Counter(_rule_name(v["rule"]) for v in verdicts if v["status"] == "agree" and v["rule"])
    path = update_record({v["path"]: v["reason"] or None for v in verdicts if v["status"] != "bad"})
    print(f"\ndecord vs PyAV on {args.verify_frames} sampled frames of each of {len(good)} readable videos: "
          f"{len(disagree)} disagree; record updated: {path}")
    if disagree:
        print("the dataset reads these files with PyAV (the known cause, where a rule of vidcsl.data.trust "
              "already catches it):\n")
        print(_table([[v["path"], v["reason"], _rule_name(v["rule"]) if v["rule"] else "not caught by the rules"]
                      for v in disagree], ["file", "what decord returned", "known cause"]))
    if rule_only:
        print("\nread with PyAV by rule although the sampled frames agreed: "
              + ", ".join(f"{name} ({n})" for name, n in rule_only.most_common()))


def run_check(args: argparse.Namespace) -> int:
    _check_args(args)
    if args.verify:
        load_record()  # a record that cannot be updated fails now, not after the whole scan
    samples, classes = read_split(args.layout, args.root, split=args.split, fold=args.fold,
                                  list_file=args.list_file, csv_file=args.csv_file)
    rows = [check_video(path, backend=args.backend, num_frames=args.num_frames, stride=args.stride,
                        target_fps=args.target_fps)
            for path, _ in tqdm(samples, desc=f"checking {args.layout} {args.split}", unit="video")]
    good = [r for r in rows if r["ok"]]
    bad = [r for r in rows if not r["ok"]]
    span = clip_span(args.num_frames, args.stride)
    fold = f" (fold {args.fold})" if args.layout in FOLD_LAYOUTS else ""
    print(f"{args.layout} {args.split}{fold}: {len(samples)} videos, {len(classes)} classes, "
          f"{len(good)} readable, {len(bad)} bad (clip = {args.num_frames} frames at stride {args.stride}, "
          f"{span} source frames{' at source fps' if args.target_fps is None else ''})")
    if good:
        fps = [r["fps"] for r in good]
        frames = [r["frames"] for r in good]
        sizes = Counter(f"{w}x{h}" for h, w in (r["size"] for r in good))
        print("\nstatistic | min | median | max\n---|---|---|---")
        print(f"fps | {min(fps):.2f} | {statistics.median(fps):.2f} | {max(fps):.2f}")
        print(f"frames | {min(frames)} | {statistics.median(frames):g} | {max(frames)}")
        print("\nresolution (WxH): " + ", ".join(f"{s} ({n})" for s, n in sizes.most_common(10)))
        delegated = Counter(_rule_name(r["pyav"]) for r in good if r["pyav"])
        if delegated:
            print(f"\ndecord backend: {sum(delegated.values())} of {len(good)} files are read with PyAV: "
                  + ", ".join(f"{name} ({n})" for name, n in delegated.most_common()))
    if bad:
        print("\n" + _table([[r["path"], r["reason"]] for r in bad], ["bad file", "reason"]))
    if args.verify:
        _verify(rows, args)
    return 1 if bad else 0


def add_commands(subparsers) -> None:
    """Register ``data check``."""
    data = subparsers.add_parser("data", help="inspect video datasets")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    check = sub.add_parser("check", help="find unreadable or too-short videos; print fps/resolution statistics",
                           description="Decode the centre clip of every video of a split. Exit code 1 if any "
                                       "file is bad. --verify also compares decord with PyAV on sampled frames of "
                                       f"every readable file and records the files decord misreads in "
                                       f"{record_path()} ($VIDCSL_DATA moves it); the decord reader reads them "
                                       "with PyAV. See docs/data.md.")
    check.add_argument("root", help="dataset root folder")
    check.add_argument("--layout", required=True, choices=list(LAYOUTS))
    check.add_argument("--split", default="train")
    check.add_argument("--fold", type=int, default=None, help="ucf101 / hmdb51 split number (default 1)")
    check.add_argument("--list-file", default=None, help="list layout: 'path label' file (default root/<split>.txt)")
    check.add_argument("--csv-file", default=None, help="kinetics layout: CSV (default root/<split>.csv)")
    check.add_argument("--backend", default="decord", choices=BACKENDS,
                       help="reader to check with (default decord, as in training: files it would misread go to PyAV)")
    check.add_argument("--num-frames", type=int, default=8)
    check.add_argument("--stride", type=int, default=2)
    check.add_argument("--target-fps", type=float, default=None)
    check.add_argument("--verify", action="store_true",
                       help="compare decord with PyAV on sampled frames and record the files where they disagree")
    check.add_argument("--verify-frames", type=int, default=None, help="frames sampled per file by --verify (8)")
    check.set_defaults(func=run_check)
    data.set_defaults(func=lambda args: data.print_help() or 2)
