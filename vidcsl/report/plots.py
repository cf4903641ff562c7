"""The report's figures (matplotlib, Agg backend): accuracy vs eps, curves with interval error bars,
the uniformity / alignment vs robustness scatter, uniformity histograms, per-corruption bars, a histogram
from counts. Each function writes one PNG and returns its path."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"plots are written as PNG; got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_accuracy_vs_eps(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | Path,
                         *, title: str = "Robust accuracy vs eps", eps_scale: float = 255.0,
                         xlabel: str = "eps (x/255)") -> Path:
    """One line per model: ``curves[name] = (eps values, accuracies)``; eps shown times ``eps_scale``."""
    if not curves:
        raise ValueError("plot_accuracy_vs_eps needs at least one curve")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, (eps, acc) in curves.items():
        if len(eps) != len(acc):
            raise ValueError(f"curve {name!r}: {len(eps)} eps values but {len(acc)} accuracies")
        ax.plot([e * eps_scale for e in eps], acc, marker="o", label=name)
    ax.set(xlabel=xlabel, ylabel="accuracy", title=title, ylim=(0, None))
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


Curve = tuple[Sequence[float], Sequence[float | None], Sequence[float | None], Sequence[float | None]]


def _none_nan(values: Sequence[float | None]) -> list[float]:
    return [float("nan") if v is None else float(v) for v in values]


def plot_interval_panels(panels: Sequence[tuple[str, str, Mapping[str, Curve]]], path: str | Path, *,
                         ylabel: str, ylim: tuple[float, float] | None = None, zero_line: bool = False,
                         title: str | None = None) -> Path:
    """Side-by-side panels ``(title, xlabel, {name: (x, estimate, low, high)})``: one line per name with
    its interval as error bars (missing values, None, are left out of the line)."""
    if not panels:
        raise ValueError("plot_interval_panels needs at least one panel")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
    for ax, (name, xlabel, curves) in zip(axes[0], panels):
        for label, (x, y, low, high) in curves.items():
            y, low, high = _none_nan(y), _none_nan(low), _none_nan(high)
            err = [[max(0.0, a - b) if a == a and b == b else 0.0 for a, b in zip(y, low)],
                   [max(0.0, b - a) if a == a and b == b else 0.0 for a, b in zip(y, high)]]
            ax.errorbar(list(x), y, yerr=err, marker="o", markersize=3, capsize=2, label=label)
        if zero_line:
            ax.axhline(0, color="grey", linewidth=0.8)
        ax.set(xlabel=xlabel, ylabel=ylabel, title=name)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_mechanism(points: Mapping[str, Mapping[str, float | None | str]], path: str | Path, *,
                   robust_label: str = "robust accuracy") -> Path:
    """Uniformity and alignment (x, error bar: sd over seeds) against robust accuracy (y, error bar: its
    interval), one point per variant, coloured by ``group``: ``points[name]`` has ``uniformity``,
    ``uniformity_sd``, ``alignment``, ``alignment_sd``, ``y``, ``low``, ``high``, ``group``."""
    if not points:
        raise ValueError("plot_mechanism needs at least one point")
    groups = list(dict.fromkeys(str(p["group"]) for p in points.values()))
    colours = {g: plt.cm.tab10(i % 10) for i, g in enumerate(groups)}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, xlabel in ((axes[0], "uniformity", "uniformity (lower = more uniform)"),
                               (axes[1], "alignment", "alignment (lower = positives closer)")):
        seen = set()
        for name, p in points.items():
            x, y = p.get(metric), p.get("y")
            if x is None or y is None:
                continue
            low, high = p.get("low"), p.get("high")
            yerr = [[y - low], [high - y]] if low is not None and high is not None else None
            xerr = p.get(f"{metric}_sd")
            g = str(p["group"])
            ax.errorbar([x], [y], xerr=None if xerr is None else [xerr], yerr=yerr, fmt="o", capsize=2,
                        color=colours[g], label=None if g in seen else g)
            seen.add(g)
            ax.annotate(name, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set(xlabel=xlabel, ylabel=robust_label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def pairwise_values(z: torch.Tensor, kind: str = "distance", max_points: int = 1000, seed: int = 0) -> torch.Tensor:
    """Pairwise distances or cosine similarities (i<j) of a random subset of at most ``max_points`` rows
    (bounded memory: at most max_points^2/2 values)."""
    if kind not in ("distance", "similarity"):
        raise ValueError(f"kind must be 'distance' or 'similarity', got {kind!r}")
    z = z.detach().float().cpu()
    if z.shape[0] > max_points:
        z = z[torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(seed))[:max_points]]
    if kind == "distance":
        return torch.pdist(z)
    zn = torch.nn.functional.normalize(z, dim=1)
    i, j = torch.triu_indices(len(zn), len(zn), 1)
    return (zn[i] * zn[j]).sum(1)


def plot_uniformity_histogram(embeddings: Mapping[str, torch.Tensor], path: str | Path, *, kind: str = "distance",
                              bins: int = 50, max_points: int = 1000, title: str | None = None) -> Path:
    """Overlaid histograms (densities) of pairwise distances / similarities, one per model."""
    if not embeddings:
        raise ValueError("plot_uniformity_histogram needs at least one embedding set")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, z in embeddings.items():
        ax.hist(pairwise_values(z, kind, max_points).numpy(), bins=bins, density=True, alpha=0.5, label=name)
    ax.set(xlabel=f"pairwise {kind}", ylabel="density", title=title or f"Pairwise {kind}s of embeddings")
    ax.legend()
    return _save(fig, path)


def plot_corruption_bars(results: Mapping[str, Mapping[str, float]], path: str | Path, *,
                         ylabel: str = "accuracy", title: str = "Accuracy per corruption") -> Path:
    """Grouped bars: ``results[model][corruption] = value``; corruptions on the x axis."""
    if not results:
        raise ValueError("plot_corruption_bars needs at least one model")
    names = list(dict.fromkeys(c for per in results.values() for c in per))
    width = 0.8 / len(results)
    fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(names) * len(results) + 2), 3.8))
    for k, (model, per) in enumerate(results.items()):
        xs = [i + k * width - 0.4 + width / 2 for i in range(len(names))]
        ax.bar(xs, [per.get(c, float("nan")) for c in names], width=width, label=model)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set(ylabel=ylabel, title=title)
    ax.legend()
    return _save(fig, path)


def plot_histogram(counts: Sequence[float], edges: Sequence[float], path: str | Path, *, xlabel: str,
                   ylabel: str = "count", title: str | None = None) -> Path:
    """A histogram already binned: ``len(edges) == len(counts) + 1``."""
    if len(edges) != len(counts) + 1:
        raise ValueError(f"a histogram needs one more edge than counts, got {len(edges)} and {len(counts)}")
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    ax.stairs(counts, edges, fill=True)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title or "")
    return _save(fig, path)
