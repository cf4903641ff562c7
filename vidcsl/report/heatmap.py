"""A heat-map PNG of a rows x columns table of accuracies (the source x target matrix of ``vidcsl
nonrobust``): one coloured cell per value, the value written in it, missing cells grey."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from vidcsl.report.plots import _save  # noqa: E402


def plot_heatmap(values: Sequence[Sequence[float | None]], rows: Sequence[str], columns: Sequence[str],
                 path: str | Path, *, title: str, vmin: float = 0.0, vmax: float = 1.0,
                 colorbar: str = "accuracy", reference: float | None = None) -> Path:
    """``values[i][j]`` at row ``rows[i]``, column ``columns[j]`` (None / NaN = not measured, grey).
    ``reference`` (e.g. chance) is named in the colour bar's label."""
    if len(values) != len(rows) or any(len(r) != len(columns) for r in values):
        raise ValueError(f"heat-map needs {len(rows)} rows of {len(columns)} values, got "
                         f"{[len(r) for r in values]}")
    if not rows or not columns:
        raise ValueError("heat-map needs at least one row and one column")
    grid = [[math.nan if v is None else float(v) for v in r] for r in values]
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(columns), 1.0 + 0.5 * len(rows)))
    im = ax.imshow(grid, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(columns)), labels=list(columns), rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), labels=list(rows))
    for i, r in enumerate(grid):
        for j, v in enumerate(r):
            text = "n/a" if math.isnan(v) else f"{v:.2f}"
            light = not math.isnan(v) and v < vmin + 0.6 * (vmax - vmin)
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if light else "black")
    label = colorbar if reference is None else f"{colorbar} (chance {reference:.2f})"
    fig.colorbar(im, ax=ax, label=label)
    ax.set(xlabel="trained on the set: target paradigm", ylabel="synthetic set <- source", title=title)
    return _save(fig, path)
