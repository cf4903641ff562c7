"""Dataset layouts: turn split files / CSVs / folders into (absolute path, label index) lists.

Supported: "ucf101", "hmdb51", "kinetics", "list", "folder" (see ``read_split``). Every path from a split file
resolves under ``root``; one that escapes it (``..`` or an absolute path elsewhere) is rejected with the file and
line, so a list cannot make the loader read arbitrary files.
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from pathlib import Path

LAYOUTS = ("ucf101", "hmdb51", "kinetics", "list", "folder")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".ogv")

Samples = list[tuple[str, int]]


def resolve_under(root: str | os.PathLike, rel: str, source: str | os.PathLike, line: int) -> str:
    """Absolute path of ``rel`` under ``root``; ValueError naming ``source:line`` if it escapes ``root``.

    The check is lexical (after normalising ``..``), so symlinked data folders inside root stay usable.
    """
    base = os.path.abspath(root)
    full = os.path.normpath(os.path.join(base, rel))
    if os.path.commonpath([base, full]) != base:
        raise ValueError(f"{source}:{line}: path {rel!r} escapes the dataset root {base}")
    return full


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: expected {path}")
    return path


def _first_existing(candidates: list[Path], what: str) -> Path:
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(f"{what} not found: expected one of " + ", ".join(str(c) for c in candidates))


def _lines(path: Path):
    """(line number, stripped text) of the non-blank, non-comment lines."""
    with open(path, encoding="utf-8") as fh:
        for n, raw in enumerate(fh, 1):
            text = raw.strip()
            if text and not text.startswith("#"):
                yield n, text


def _check_split(split: str, allowed: tuple[str, ...]) -> None:
    if split not in allowed:
        raise ValueError(f"split must be one of {allowed}, got {split!r}")


# -- UCF101 ------------------------------------------------------------------------------------------------
def _ucf101(root: Path, split: str, fold: int, splits_dir: Path | None) -> tuple[Samples, list[str]]:
    _check_split(split, ("train", "test"))
    dirs = [splits_dir] if splits_dir else [root / "ucfTrainTestlist", root]
    cls_file = _first_existing([d / "classInd.txt" for d in dirs], "UCF101 classInd.txt")
    classes: dict[int, str] = {}
    for n, text in _lines(cls_file):
        parts = text.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise ValueError(f"{cls_file}:{n}: expected '<index> <class>', got {text!r}")
        classes[int(parts[0])] = parts[1]
    if sorted(classes) != list(range(1, len(classes) + 1)):
        raise ValueError(f"{cls_file}: class indices must be 1..{len(classes)} (1-based, no gaps)")
    names = [classes[i] for i in range(1, len(classes) + 1)]
    by_name = {name.lower(): i for i, name in enumerate(names)}  # UCF101 folders differ in case (HandstandPushups)
    split_file = _first_existing([d / f"{split}list{fold:02d}.txt" for d in dirs], f"UCF101 {split} split {fold}")
    samples: Samples = []
    for n, text in _lines(split_file):
        parts = text.split()
        rel = parts[0]
        if split == "train":
            if len(parts) != 2 or not parts[1].isdigit():
                raise ValueError(f"{split_file}:{n}: expected '<path> <label 1..{len(names)}>', got {text!r}")
            label = int(parts[1]) - 1
            if not 0 <= label < len(names):
                raise ValueError(f"{split_file}:{n}: label {parts[1]} outside 1..{len(names)}")
        else:
            folder = rel.replace("\\", "/").split("/")[0]
            if folder.lower() not in by_name:
                raise ValueError(f"{split_file}:{n}: class folder {folder!r} is not in {cls_file}")
            label = by_name[folder.lower()]
        samples.append((resolve_under(root, rel, split_file, n), label))
    return samples, names


# -- HMDB51 ------------------------------------------------------------------------------------------------
_HMDB_FILE = re.compile(r"^(?P<cls>.+)_test_split(?P<fold>\d+)\.txt$")


def _hmdb51(root: Path, split: str, fold: int, splits_dir: Path | None) -> tuple[Samples, list[str]]:
    _check_split(split, ("train", "test"))
    wanted_tag = {"train": "1", "test": "2"}[split]
    dirs = [splits_dir] if splits_dir else [root / "testTrainMulti_7030_splits", root / "splits", root]
    found: dict[str, Path] = {}
    for d in dirs:
        if d.is_dir():
            for f in d.iterdir():
                m = _HMDB_FILE.match(f.name)
                if m and int(m["fold"]) == fold:
                    found[m["cls"]] = f
            if found:
                break
    if not found:
        raise FileNotFoundError(f"HMDB51 split files not found: expected <class>_test_split{fold}.txt in one of "
                                + ", ".join(str(d) for d in dirs))
    names = sorted(found)
    samples: Samples = []
    for label, name in enumerate(names):
        split_file = found[name]
        for n, text in _lines(split_file):
            parts = text.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise ValueError(f"{split_file}:{n}: expected '<video> 0|1|2', got {text!r}")
            if parts[1] == wanted_tag:
                samples.append((resolve_under(root, os.path.join(name, parts[0]), split_file, n), label))
    return samples, names


# -- Kinetics and plain CSV --------------------------------------------------------------------------------
_SPLIT_ALIASES = {"val": {"val", "validate", "validation"}, "validate": {"val", "validate", "validation"},
                  "validation": {"val", "validate", "validation"}}


def _kinetics_path(root: Path, row: dict, csv_file: Path, n: int) -> str:
    """root/<label>/<youtube_id>_<start:06d>_<end:06d>.mp4 (label folder with spaces or underscores)."""
    try:
        start, end = int(float(row["time_start"])), int(float(row["time_end"]))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{csv_file}:{n}: time_start/time_end must be numbers, got {row}") from err
    name = f"{row['youtube_id']}_{start:06d}_{end:06d}.mp4"
    label = row["label"].strip().strip('"')
    candidates = [os.path.join(label, name), os.path.join(label.replace(" ", "_"), name), name]
    paths = [resolve_under(root, c, csv_file, n) for c in candidates]
    return next((p for p in paths if os.path.exists(p)), paths[0])


def _kinetics(root: Path, split: str, csv_file: Path | None) -> tuple[Samples, list[str]]:
    if csv_file is None:
        csv_file = _first_existing([root / f"{split}.csv", root / "annotations" / f"{split}.csv"],
                                   f"Kinetics CSV for split {split!r}")
    csv_file = _require(Path(csv_file), "Kinetics CSV")
    with open(csv_file, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip() for f in (reader.fieldnames or [])]
        reader.fieldnames = fields
        rows = [(n, row) for n, row in enumerate(reader, 2)]
    standard = {"label", "youtube_id", "time_start", "time_end"} <= set(fields)
    simple = {"path", "label"} <= set(fields)
    if not (standard or simple):
        raise ValueError(f"{csv_file}: header must hold label,youtube_id,time_start,time_end[,split] or "
                         f"path,label; got {','.join(fields)}")
    if "split" in fields:
        allowed = _SPLIT_ALIASES.get(split, {split})
        present = sorted({(r.get("split") or "").strip() for _, r in rows})
        rows = [(n, r) for n, r in rows if (r.get("split") or "").strip() in allowed]
        if not rows:
            raise ValueError(f"{csv_file}: no rows for split {split!r} (splits present: {present})")
    for n, row in rows:
        if not (row.get("label") or "").strip():
            raise ValueError(f"{csv_file}:{n}: empty label (unlabelled test CSVs cannot be used)")
    labels = [row["label"].strip() for _, row in rows]
    if all(re.fullmatch(r"\d+", y) for y in labels):  # integer labels: class names are their decimal strings
        names = [str(i) for i in range(max(map(int, labels), default=-1) + 1)]
        index = {str(i): i for i in range(len(names))}
        index.update({y: int(y) for y in labels})
    else:
        names = sorted(set(labels))
        index = {name: i for i, name in enumerate(names)}
    samples: Samples = []
    for (n, row), y in zip(rows, labels):
        path = (_kinetics_path(root, row, csv_file, n) if standard
                else resolve_under(root, row["path"].strip(), csv_file, n))
        samples.append((path, index[y]))
    return samples, names


# -- plain list --------------------------------------------------------------------------------------------
def _list(root: Path, split: str, list_file: Path | None, classes_file: Path | None) -> tuple[Samples, list[str]]:
    if list_file is None:
        list_file = _first_existing([root / f"{split}.txt", root / f"{split}list.txt"], f"{split} list file")
    list_file = _require(Path(list_file), "list file")
    samples: Samples = []
    for n, text in _lines(list_file):
        parts = text.rsplit(maxsplit=1)  # paths may hold spaces; the label is the last field
        if len(parts) != 2 or not re.fullmatch(r"\d+", parts[1]):
            raise ValueError(f"{list_file}:{n}: expected '<relative/path> <label int>', got {text!r}")
        samples.append((resolve_under(root, parts[0], list_file, n), int(parts[1])))
    num = max((y for _, y in samples), default=-1) + 1
    if classes_file is None and (root / "classes.txt").is_file():
        classes_file = root / "classes.txt"
    if classes_file is not None:
        names = [text for _, text in _lines(_require(Path(classes_file), "classes file"))]
        if len(names) < num:
            raise ValueError(f"{classes_file}: names {len(names)} classes but {list_file} uses label {num - 1}")
    else:
        names = [str(i) for i in range(num)]
    return samples, names


# -- folder ------------------------------------------------------------------------------------------------
def _folder(root: Path, split: str) -> tuple[Samples, list[str]]:
    base = root / split if (root / split).is_dir() else root
    if not base.is_dir():
        raise FileNotFoundError(f"dataset folder not found: expected {base}")
    names = sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    samples: Samples = []
    for label, name in enumerate(names):
        for f in sorted((base / name).rglob("*")):
            if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS:
                samples.append((str(f.absolute()), label))
    if not samples:
        raise ValueError(f"{base}: no videos ({', '.join(VIDEO_EXTENSIONS)}) under <class>/ folders")
    return samples, names


def read_split(layout: str, root: str | os.PathLike, *, split: str = "train", fold: int = 1,
               list_file: str | os.PathLike | None = None, csv_file: str | os.PathLike | None = None,
               splits_dir: str | os.PathLike | None = None, classes_file: str | os.PathLike | None = None,
               drop_missing: bool = False) -> tuple[Samples, list[str]]:
    """Samples (absolute path, label index) and class names of one split of a dataset.

    - "ucf101": classInd.txt (1-based), trainlist0K.txt "path label", testlist0K.txt "path" (class from the
      folder); split files in ``splits_dir`` or root/ucfTrainTestlist or root.
    - "hmdb51": <class>_test_splitK.txt lines "video.avi 0|1|2" (1 train, 2 test), videos in root/<class>/;
      split files in ``splits_dir`` or root/testTrainMulti_7030_splits, root/splits, root.
    - "kinetics": ``csv_file`` (default root/<split>.csv) with label,youtube_id,time_start,time_end[,split]
      (files root/<label>/<id>_<start:06d>_<end:06d>.mp4) or path,label.
    - "list": ``list_file`` (default root/<split>.txt) lines "relative/path label_int"; class names from
      ``classes_file`` or root/classes.txt when present, else "0".."K-1".
    - "folder": root[/<split>]/<class>/<video>.
    ``drop_missing`` removes samples whose file does not exist (one summary warning) instead of leaving them for
    the loader to skip.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if fold < 1:
        raise ValueError(f"fold must be >= 1, got {fold}")
    root = Path(root).absolute()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root not found: expected a folder at {root}")
    sdir = Path(splits_dir) if splits_dir is not None else None
    if layout == "ucf101":
        samples, names = _ucf101(root, split, fold, sdir)
    elif layout == "hmdb51":
        samples, names = _hmdb51(root, split, fold, sdir)
    elif layout == "kinetics":
        samples, names = _kinetics(root, split, Path(csv_file) if csv_file is not None else None)
    elif layout == "list":
        samples, names = _list(root, split, Path(list_file) if list_file is not None else None,
                               Path(classes_file) if classes_file is not None else None)
    else:
        samples, names = _folder(root, split)
    if drop_missing:
        present = [s for s in samples if os.path.isfile(s[0])]
        if len(present) < len(samples):
            warnings.warn(f"{layout} {split}: {len(samples) - len(present)} of {len(samples)} listed videos are "
                          f"missing under {root} and were dropped", RuntimeWarning, stacklevel=2)
        samples = present
    return samples, names
