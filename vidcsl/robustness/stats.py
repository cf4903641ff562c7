"""Paired statistics over test samples and seeds: bootstrap intervals and McNemar's test.

A robustness comparison is paired twice: every model of a track is evaluated on the same test samples,
and variant ``v`` trained with seed ``s`` shares its seed (data order, initialisation) with every other
variant's seed ``s``. Outcomes are therefore kept per sample as a bool array of shape ``(seeds, samples)``
per model, and uncertainty comes from resampling both axes together:

* :func:`paired_bootstrap` draws seeds and samples with replacement (the same draw for every model, so
  the pairing is kept) and recomputes a statistic of the models' accuracies; the percentile interval is
  reported. Resampling seeds captures training variance; resampling samples captures test-set variance.
* :func:`mcnemar` tests whether two models differ on the same samples (exact binomial form), pooling the
  discordant pairs over seeds.

A difference is called *resolved* only when its interval excludes 0 (:attr:`Interval.excludes_zero`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import numpy as np

Statistic = Callable[[Mapping[str, np.ndarray]], np.ndarray]


@dataclass(frozen=True)
class Interval:
    """A point estimate with a bootstrap percentile interval (``low``/``high`` None when undefined)."""

    estimate: float | None
    low: float | None
    high: float | None
    level: float
    n_boot: int
    n_valid: int  # replicates where the statistic was defined (e.g. a ratio's denominator was not 0)

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of 0: the sign of the statistic is resolved."""
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)

    def as_dict(self) -> dict[str, float | int | bool | None]:
        return {**asdict(self), "resolved": self.excludes_zero}


def as_outcomes(values: np.ndarray | list) -> np.ndarray:
    """Per-sample outcomes as a bool array ``(seeds, samples)``; a 1-D array is one seed."""
    arr = np.asarray(values, dtype=bool)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"outcomes must be (seeds, samples) with both >= 1, got shape {arr.shape}")
    return arr


def _check_paired(outcomes: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    arrays = {name: as_outcomes(v) for name, v in outcomes.items()}
    shapes = {a.shape for a in arrays.values()}
    if len(shapes) != 1:
        raise ValueError(f"paired outcomes need one shape (seeds, samples) for every model, got "
                         f"{ {k: v.shape for k, v in arrays.items()} }")
    return arrays


def paired_bootstrap(outcomes: Mapping[str, np.ndarray], statistic: Statistic, *, n_boot: int = 2000,
                     level: float = 0.95, seed: int = 0, resample_seeds: bool = True,
                     chunk: int = 250) -> Interval:
    """Percentile interval of ``statistic`` over paired resamples of seeds and samples.

    ``outcomes`` maps a model name to its ``(seeds, samples)`` bool outcomes (same shape for all).
    ``statistic`` receives each model's accuracy as an array over replicates and returns one value per
    replicate (vectorised, e.g. ``lambda a: a["sl"] - a["csl"]``); non-finite values (an undefined ratio)
    are left out and counted in ``n_valid``. With one seed, or ``resample_seeds=False``, only samples
    are resampled.
    """
    if n_boot < 1 or not 0 < level < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < level < 1, got {n_boot}, {level}")
    arrays = _check_paired(outcomes)
    n_seeds, n_samples = next(iter(arrays.values())).shape
    estimate = float(statistic({k: np.asarray([v.mean()]) for k, v in arrays.items()})[0])
    rng = np.random.default_rng(seed)
    values = []
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        seeds = rng.integers(0, n_seeds, size=(b, n_seeds)) if resample_seeds and n_seeds > 1 \
            else np.broadcast_to(np.arange(n_seeds), (b, n_seeds))
        samples = rng.integers(0, n_samples, size=(b, n_samples))
        acc = {k: v[seeds[:, :, None], samples[:, None, :]].mean(axis=(1, 2)) for k, v in arrays.items()}
        values.append(np.asarray(statistic(acc), dtype=float))
    stats = np.concatenate(values)
    finite = stats[np.isfinite(stats)]
    if not math.isfinite(estimate) or finite.size < max(10, n_boot // 2):
        return Interval(estimate if math.isfinite(estimate) else None, None, None, level, n_boot, int(finite.size))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return Interval(estimate, float(low), float(high), level, n_boot, int(finite.size))


def accuracy_difference(a: str, b: str) -> Statistic:
    """``acc[a] - acc[b]`` (e.g. the robustness gap RA_sl - RA_csl)."""
    return lambda acc: acc[a] - acc[b]


def gap_closed(sl: str, csl: str, fn: str) -> Statistic:
    """``(acc[fn] - acc[csl]) / (acc[sl] - acc[csl])``: the part of the SL-vs-CSL gap an FN variant closes.

    Undefined (NaN) where the gap is 0 in a replicate; such replicates are left out by the bootstrap.
    """
    def stat(acc: Mapping[str, np.ndarray]) -> np.ndarray:
        gap = acc[sl] - acc[csl]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(gap != 0, (acc[fn] - acc[csl]) / np.where(gap != 0, gap, 1.0), np.nan)

    return stat


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test of two models on the same samples (discordant pairs pooled over seeds)."""

    only_a: int  # samples model a gets right and model b wrong
    only_b: int
    p_value: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def mcnemar(a: np.ndarray, b: np.ndarray) -> McNemar:
    """Two-sided exact (binomial) McNemar test: under H0 the discordant pairs split 50/50.

    ``a`` and ``b`` are paired outcomes ``(seeds, samples)`` (seed ``s`` of ``a`` paired with seed ``s``
    of ``b``). The exact form is valid for any count, unlike the chi-square approximation.
    """
    a, b = _check_paired({"a": a, "b": b}).values()
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return McNemar(only_a, only_b, 1.0)
    from scipy.stats import binom

    return McNemar(only_a, only_b, float(min(1.0, 2 * binom.cdf(k, n, 0.5))))
