"""Markdown and CSV tables, with one number format for every cell.

Two shapes of input: lists of dicts (``to_markdown``, ``write_csv``) and a header plus rows of cells
(``markdown_table``, ``write_csv_rows``: what the evaluation and study reports use). Markdown is for
reading (fixed decimals; ``fmt`` prints a missing value as ``n/a``); CSV is for machines (full precision by
default), so the numbers survive a round trip through ``read_csv``.
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


def fmt(value: Any, digits: int = 4) -> str:
    """A number as the reports print it (``n/a`` for None / NaN / inf): JSON and Markdown must agree."""
    if value is None:
        return "n/a"
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    if isinstance(value, int) or getattr(getattr(value, "dtype", None), "kind", "") in ("i", "u"):
        return str(int(value))
    number = float(value)
    return f"{number:.{digits}f}" if math.isfinite(number) else "n/a"


def to_markdown(rows: Sequence[Row], columns: Sequence[str] | None = None, digits: int = 4) -> str:
    """A GitHub-flavoured Markdown table; numbers right-aligned. No rows: the header alone (needs ``columns``)."""
    if not rows and columns is None:
        raise ValueError("to_markdown needs at least one row or the columns")
    cols = _columns(rows, columns)
    cells = [[format_value(r.get(c), digits).replace("|", "\\|") for c in cols] for r in rows]
    given = [[r.get(c) for r in rows if r.get(c) is not None] for c in cols]
    numeric = [bool(vs) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in vs) for vs in given]
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


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 4) -> str:
    """A Markdown table from a header and rows of cells; cells printed with :func:`fmt` unless already text."""
    cell = lambda v: v if isinstance(v, str) else fmt(v, digits)  # noqa: E731
    return to_markdown([dict(zip(headers, (cell(v) for v in row))) for row in rows], headers).rstrip("\n")


def write_csv_rows(path: str | Path, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    """A CSV file from a header and rows of cells (full precision; None as an empty cell)."""
    return write_csv([dict(zip(headers, row)) for row in rows], path, headers)


def write_csv(rows: Sequence[Row], path: str | Path, columns: Sequence[str] | None = None,
              digits: int | None = None) -> Path:
    if not rows and columns is None:
        raise ValueError("write_csv needs at least one row or the columns")
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
