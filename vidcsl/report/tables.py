"""Markdown and CSV tables from lists of dicts, with one number format for every cell.

Markdown is for reading (fixed decimals); CSV is for machines (full precision by default), so the
numbers survive a round trip through ``read_csv``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

Row = dict[str, Any]


def _columns(rows: Sequence[Row], columns: Sequence[str] | None) -> list[str]:
    if columns is not None:
        return list(columns)
    seen: list[str] = []
    for row in rows:
        seen += [k for k in row if k not in seen]
    return seen


def format_value(value: Any, digits: int | None = 4) -> str:
    """Floats with ``digits`` decimals (``None``: shortest exact repr); NaN as ``nan``; None as empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) or (hasattr(value, "item") and hasattr(value, "dtype")):
        value = value.item() if hasattr(value, "item") else value
        if isinstance(value, float):
            if math.isnan(value):
                return "nan"
            return repr(value) if digits is None else f"{value:.{digits}f}"
    return str(value)


def to_markdown(rows: Sequence[Row], columns: Sequence[str] | None = None, digits: int = 4) -> str:
    """A GitHub-flavoured Markdown table; numbers right-aligned."""
    if not rows:
        raise ValueError("to_markdown needs at least one row")
    cols = _columns(rows, columns)
    cells = [[format_value(r.get(c), digits).replace("|", "\\|") for c in cols] for r in rows]
    numeric = [all(isinstance(r.get(c), int | float) and not isinstance(r.get(c), bool)
                   for r in rows if r.get(c) is not None) for c in cols]
    head = "| " + " | ".join(cols) + " |"
    rule = "|" + "|".join("---:" if num else ":---" for num in numeric) + "|"
    body = ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join([head, rule, *body]) + "\n"


def write_markdown(rows: Sequence[Row], path: str | Path, columns: Sequence[str] | None = None,
                   digits: int = 4, title: str | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (f"## {title}\n\n" if title else "") + to_markdown(rows, columns, digits)
    path.write_text(text)
    return path


def write_csv(rows: Sequence[Row], path: str | Path, columns: Sequence[str] | None = None,
              digits: int | None = None) -> Path:
    if not rows:
        raise ValueError("write_csv needs at least one row")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = _columns(rows, columns)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(cols)
        for r in rows:
            writer.writerow([format_value(r.get(c), digits) for c in cols])
    return path


def _parse(cell: str) -> Any:
    if cell == "":
        return None
    for cast in (int, float):
        try:
            return cast(cell)
        except ValueError:
            pass
    return cell


def read_csv(path: str | Path) -> list[Row]:
    """Rows back from ``write_csv``: ints and floats parsed, empty cells as None."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such CSV table: {path}")
    with path.open(newline="") as fh:
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(fh)]
