"""Dataset layouts: turn split files / CSVs / JSON / folders into (absolute path, label index) lists.

Supported (``LAYOUTS``, name -> reader): "ucf101", "hmdb51", "kinetics", "ssv2", "list", "folder" (see
``read_split`` and docs/data.md for the folder structures). Every path from a split file resolves under ``root``;
one that escapes it (``..`` or an absolute path elsewhere) is rejected with the file and line, so a list cannot
make the loader read arbitrary files. Every problem with the files raises :class:`vidcsl.errors.DataError`
naming the file (and line or entry) and what is wrong.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vidcsl.errors import DataError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".ogv")

Samples = list[tuple[str, int]]


@dataclass(frozen=True)
class SplitFiles:
    """Where a split's annotation files are, when not at their default places under the root."""

    fold: int = 1
    list_file: Path | None = None
    csv_file: Path | None = None
    splits_dir: Path | None = None
    classes_file: Path | None = None


def resolve_under(root: str | os.PathLike, rel: str, source: str | os.PathLike, line: int | str) -> str:
    """Absolute path of ``rel`` under ``root``; DataError naming ``source:line`` if it escapes ``root``.

    The check is lexical (after normalising ``..``), so symlinked data folders inside root stay usable.
    """
    base = os.path.abspath(root)
    full = os.path.normpath(os.path.join(base, rel))
    if os.path.commonpath([base, full]) != base:
        raise DataError(f"{source}:{line}: path {rel!r} escapes the dataset root {base}")
    return full


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"{what} not found: expected {path}")
    return path


def _first_existing(candidates: list[Path], what: str) -> Path:
    for c in candidates:
        if c.is_file():
            return c
    raise DataError(f"{what} not found: expected one of " + ", ".join(str(c) for c in candidates))


def _read_text(path: Path) -> str:
    """A text file's contents; unreadable or non-UTF-8 files raise DataError naming the file."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not a UTF-8 text file (byte {err.start})") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None


def _lines(path: Path):
    """(line number, stripped text) of the non-blank, non-comment lines."""
    for n, raw in enumerate(_read_text(path).splitlines(), 1):
        text = raw.strip()
        if text and not text.startswith("#"):
            yield n, text


def _check_split(split: str, allowed: tuple[str, ...], layout: str) -> None:
    if split not in allowed:
        raise DataError(f"{layout} has splits {allowed}, got split {split!r}")


# -- UCF101 ------------------------------------------------------------------------------------------------
def _ucf101(root: Path, split: str, files: SplitFiles) -> tuple[Samples, list[str]]:
    _check_split(split, ("train", "test"), "ucf101")
    dirs = [files.splits_dir] if files.splits_dir else [root / "ucfTrainTestlist", root]
    cls_file = _first_existing([d / "classInd.txt" for d in dirs], "UCF101 classInd.txt")
    classes: dict[int, str] = {}
    for n, text in _lines(cls_file):
        parts = text.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise DataError(f"{cls_file}:{n}: expected '<index> <class>', got {text!r}")
        classes[int(parts[0])] = parts[1]
    if sorted(classes) != list(range(1, len(classes) + 1)):
        raise DataError(f"{cls_file}: class indices must be 1..{len(classes)} (1-based, no gaps)")
    names = [classes[i] for i in range(1, len(classes) + 1)]
    by_name = {name.lower(): i for i, name in enumerate(names)}  # UCF101 folders differ in case (HandstandPushups)
    split_file = _first_existing([d / f"{split}list{files.fold:02d}.txt" for d in dirs],
                                 f"UCF101 {split} split {files.fold}")
    samples: Samples = []
    for n, text in _lines(split_file):
        parts = text.split()
        rel = parts[0]
        if split == "train":
            if len(parts) != 2 or not parts[1].isdigit():
                raise DataError(f"{split_file}:{n}: expected '<path> <label 1..{len(names)}>', got {text!r}")
            label = int(parts[1]) - 1
            if not 0 <= label < len(names):
                raise DataError(f"{split_file}:{n}: label {parts[1]} outside 1..{len(names)}")
        else:
            folder = rel.replace("\\", "/").split("/")[0]
            if folder.lower() not in by_name:
                raise DataError(f"{split_file}:{n}: class folder {folder!r} is not in {cls_file}")
            label = by_name[folder.lower()]
        samples.append((resolve_under(root, rel, split_file, n), label))
    return samples, names


# -- HMDB51 ------------------------------------------------------------------------------------------------
_HMDB_FILE = re.compile(r"^(?P<cls>.+)_test_split(?P<fold>\d+)\.txt$")


def _hmdb51(root: Path, split: str, files: SplitFiles) -> tuple[Samples, list[str]]:
    _check_split(split, ("train", "test"), "hmdb51")
    wanted_tag = {"train": "1", "test": "2"}[split]
    dirs = [files.splits_dir] if files.splits_dir else [root / "testTrainMulti_7030_splits", root / "splits", root]
    found: dict[str, Path] = {}
    for d in dirs:
        if d.is_dir():
            for f in d.iterdir():
                m = _HMDB_FILE.match(f.name)
                if m and int(m["fold"]) == files.fold:
                    found[m["cls"]] = f
            if found:
                break
    if not found:
        raise DataError(f"HMDB51 split files not found: expected <class>_test_split{files.fold}.txt in one of "
                        + ", ".join(str(d) for d in dirs))
    names = sorted(found)
    samples: Samples = []
    for label, name in enumerate(names):
        split_file = found[name]
        for n, text in _lines(split_file):
            parts = text.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise DataError(f"{split_file}:{n}: expected '<video> 0|1|2', got {text!r}")
            if parts[1] == wanted_tag:
                samples.append((resolve_under(root, os.path.join(name, parts[0]), split_file, n), label))
    return samples, names


# -- Kinetics and plain CSV --------------------------------------------------------------------------------
_VAL_NAMES = ("val", "validate", "validation")
_SPLIT_ALIASES = {name: set(_VAL_NAMES) for name in _VAL_NAMES}


def _kinetics_path(root: Path, row: dict, split: str, csv_file: Path, n: int) -> str:
    """The first existing of root/[<split folder>/][<label>/]<youtube_id>_<start:06d>_<end:06d>.mp4.

    Label folders may use spaces or underscores; split folders are named after the split or its aliases
    (train, val / validate / validation, test). When none exists, the first candidate is returned (the loader
    then skips it as missing).
    """
    try:
        start, end = int(float(row["time_start"])), int(float(row["time_end"]))
    except (TypeError, ValueError):
        raise DataError(f"{csv_file}:{n}: time_start/time_end must be numbers, got {row}") from None
    name = f"{row['youtube_id']}_{start:06d}_{end:06d}.mp4"
    label = row["label"].strip().strip('"')
    labelled = [os.path.join(label, name), os.path.join(label.replace(" ", "_"), name), name]
    split_dirs = ["", *sorted(_SPLIT_ALIASES.get(split, {split}))]
    candidates = [os.path.join(d, c) for c in labelled for d in split_dirs]
    paths = [resolve_under(root, c, csv_file, n) for c in candidates]
    return next((p for p in paths if os.path.exists(p)), paths[0])


def _kinetics(root: Path, split: str, files: SplitFiles) -> tuple[Samples, list[str]]:
    csv_file = files.csv_file
    if csv_file is None:
        csv_file = _first_existing([root / f"{split}.csv", root / "annotations" / f"{split}.csv"],
                                   f"Kinetics CSV for split {split!r}")
    csv_file = _require(Path(csv_file), "Kinetics CSV")
    try:
        reader = csv.DictReader(io.StringIO(_read_text(csv_file), newline=""))
        fields = [f.strip() for f in (reader.fieldnames or [])]
        reader.fieldnames = fields
        rows = [(n, row) for n, row in enumerate(reader, 2)]
    except csv.Error as err:
        raise DataError(f"{csv_file}: not a CSV file ({err})") from None
    standard = {"label", "youtube_id", "time_start", "time_end"} <= set(fields)
    simple = {"path", "label"} <= set(fields)
    if not (standard or simple):
        raise DataError(f"{csv_file}: header must hold label,youtube_id,time_start,time_end[,split] or "
                        f"path,label; got {','.join(fields)}")
    if "split" in fields:
        allowed = _SPLIT_ALIASES.get(split, {split})
        present = sorted({(r.get("split") or "").strip() for _, r in rows})
        rows = [(n, r) for n, r in rows if (r.get("split") or "").strip() in allowed]
        if not rows:
            raise DataError(f"{csv_file}: no rows for split {split!r} (splits present: {present})")
    for n, row in rows:
        if not (row.get("label") or "").strip():
            raise DataError(f"{csv_file}:{n}: empty label (unlabelled test CSVs cannot be used)")
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
        path = (_kinetics_path(root, row, split, csv_file, n) if standard
                else resolve_under(root, row["path"].strip(), csv_file, n))
        samples.append((path, index[y]))
    return samples, names


# -- Something-Something v2 ----------------------------------------------------------------------------------
_SSV2_SPLITS = {"train": "train", "val": "validation", "validation": "validation"}


def _json(path: Path):
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None


def ssv2_class_name(template: str) -> str:
    """The class of an SSv2 entry: its template without the brackets ("Putting [something] on [something]" ->
    "Putting something on something"), the key of labels.json. pytorchvideo's ``Ssv2`` dataset and the SSv2
    label lists of mmaction2 and TSM map entries to classes the same way."""
    return template.replace("[", "").replace("]", "")


def _ssv2(root: Path, split: str, files: SplitFiles) -> tuple[Samples, list[str]]:
    """Something-Something v2 (Goyal et al., "The 'something something' video database", ICCV 2017)."""
    if split not in _SSV2_SPLITS:
        raise DataError(f"ssv2 has splits train and validation (val); got {split!r} (the test split is unlabelled)")
    dirs = [files.splits_dir] if files.splits_dir else [root / "labels", root / "annotations", root]
    labels_file = _first_existing([d / n for d in dirs for n in ("labels.json", "something-something-v2-labels.json")],
                                  "SSv2 labels.json")
    stem = _SSV2_SPLITS[split]
    split_file = _first_existing([d / n for d in dirs for n in (f"{stem}.json", f"something-something-v2-{stem}.json")],
                                 f"SSv2 {stem}.json")
    table = _json(labels_file)
    if not isinstance(table, dict) or not table:
        raise DataError(f"{labels_file}: expected an object mapping each template to its class index")
    try:
        index = {str(k): int(v) for k, v in table.items()}
    except (TypeError, ValueError):
        raise DataError(f"{labels_file}: class indices must be integers (or integer strings)") from None
    if sorted(index.values()) != list(range(len(index))):
        raise DataError(f"{labels_file}: class indices must be 0..{len(index) - 1}, each once")
    names = sorted(index, key=index.get)
    entries = _json(split_file)
    if not isinstance(entries, list):
        raise DataError(f"{split_file}: expected a list of {{\"id\", \"template\", ...}} entries")
    video_dir = root / "20bn-something-something-v2" if (root / "20bn-something-something-v2").is_dir() else root
    samples: Samples = []
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict) or "id" not in entry or "template" not in entry:
            raise DataError(f"{split_file}: entry {n} must hold \"id\" and \"template\", got {entry!r:.100}")
        name = ssv2_class_name(str(entry["template"]))
        if name not in index:
            raise DataError(f"{split_file}: entry {n} (id {entry['id']}): template {name!r} is not in {labels_file}")
        samples.append((resolve_under(video_dir, f"{entry['id']}.webm", split_file, f"entry {n}"), index[name]))
    return samples, names


# -- plain list --------------------------------------------------------------------------------------------
def _list(root: Path, split: str, files: SplitFiles) -> tuple[Samples, list[str]]:
    list_file = files.list_file
    if list_file is None:
        list_file = _first_existing([root / f"{split}.txt", root / f"{split}list.txt"], f"{split} list file")
    list_file = _require(Path(list_file), "list file")
    samples: Samples = []
    for n, text in _lines(list_file):
        parts = text.rsplit(maxsplit=1)  # paths may hold spaces; the label is the last field
        if len(parts) != 2 or not re.fullmatch(r"\d+", parts[1]):
            raise DataError(f"{list_file}:{n}: expected '<relative/path> <label int>', got {text!r}")
        samples.append((resolve_under(root, parts[0], list_file, n), int(parts[1])))
    num = max((y for _, y in samples), default=-1) + 1
    classes_file = files.classes_file
    if classes_file is None and (root / "classes.txt").is_file():
        classes_file = root / "classes.txt"
    if classes_file is not None:
        names = [text for _, text in _lines(_require(Path(classes_file), "classes file"))]
        if len(names) < num:
            raise DataError(f"{classes_file}: names {len(names)} classes but {list_file} uses label {num - 1}")
    else:
        names = [str(i) for i in range(num)]
    return samples, names


# -- folder ------------------------------------------------------------------------------------------------
def _folder(root: Path, split: str, files: SplitFiles) -> tuple[Samples, list[str]]:
    base = root / split if (root / split).is_dir() else root
    names = sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    samples: Samples = []
    for label, name in enumerate(names):
        for f in sorted((base / name).rglob("*")):
            if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS:
                samples.append((str(f.absolute()), label))
    if not samples:
        raise DataError(f"{base}: no videos ({', '.join(VIDEO_EXTENSIONS)}) under <class>/ folders")
    return samples, names


LAYOUTS: dict[str, Callable[[Path, str, SplitFiles], tuple[Samples, list[str]]]] = {
    "ucf101": _ucf101, "hmdb51": _hmdb51, "kinetics": _kinetics, "ssv2": _ssv2, "list": _list, "folder": _folder,
}


def _path(value: str | os.PathLike | None) -> Path | None:
    return Path(value) if value is not None else None


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
      (files root/[<split>/][<label>/]<id>_<start:06d>_<end:06d>.mp4) or path,label.
    - "ssv2": labels.json (template -> class index) and train.json / validation.json (lists of {"id",
      "template", ...}; official "something-something-v2-*.json" names too) in ``splits_dir`` or root/labels,
      root/annotations, root; videos root[/20bn-something-something-v2]/<id>.webm. Splits: train, validation.
    - "list": ``list_file`` (default root/<split>.txt) lines "relative/path label_int"; class names from
      ``classes_file`` or root/classes.txt when present, else "0".."K-1".
    - "folder": root[/<split>]/<class>/<video>.
    ``drop_missing`` removes samples whose file does not exist (one summary warning) instead of leaving them for
    the loader to skip. A split with no samples left raises DataError.
    """
    if layout not in LAYOUTS:
        raise DataError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
    if fold < 1:
        raise DataError(f"fold must be >= 1, got {fold}")
    root = Path(root).absolute()
    if not root.is_dir():
        raise DataError(f"dataset root not found: expected a folder at {root}")
    files = SplitFiles(fold=fold, list_file=_path(list_file), csv_file=_path(csv_file),
                       splits_dir=_path(splits_dir), classes_file=_path(classes_file))
    samples, names = LAYOUTS[layout](root, split, files)
    if not samples:
        raise DataError(f"{layout} {split} under {root}: the split lists no videos")
    if drop_missing:
        present = [s for s in samples if os.path.isfile(s[0])]
        if not present:
            raise DataError(f"{layout} {split}: none of the {len(samples)} listed videos exists under {root}")
        if len(present) < len(samples):
            warnings.warn(f"{layout} {split}: {len(samples) - len(present)} of {len(samples)} listed videos are "
                          f"missing under {root} and were dropped", RuntimeWarning, stacklevel=2)
        samples = present
    return samples, names
