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


def resampled_accuracies(outcomes: Mapping[str, np.ndarray], *, n_boot: int = 2000, seed: int = 0,
                         resample_seeds: bool = True, chunk: int = 500) -> dict[str, np.ndarray]:
    """Each model's accuracy in ``n_boot`` paired resamples of seeds and samples: ``{name: (n_boot,)}``.

    Replicate ``b`` draws ``S`` seeds and ``N`` samples with replacement (the same draw for every model, so
    the pairing is kept) and gives each model the mean of its outcomes over the drawn (seed, sample) pairs.
    The draws depend only on ``seed`` and the shape ``(S, N)``, so two calls with the same shape resample
    alike. Draws are multinomial counts (how often each sample / seed was drawn): the accuracy of a
    replicate is then one small matrix product, cheap even for a whole test set.
    """
    if n_boot < 1:
        raise ValueError(f"need n_boot >= 1, got {n_boot}")
    arrays = _check_paired(outcomes)
    n_seeds, n_samples = next(iter(arrays.values())).shape
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in arrays}
    ok = {k: v.T.astype(np.float32) for k, v in arrays.items()}  # (samples, seeds)
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        samples = rng.multinomial(n_samples, np.full(n_samples, 1 / n_samples), size=b).astype(np.float32)
        seeds = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=b) if resample_seeds and n_seeds > 1 \
            else np.ones((b, n_seeds))
        for k, v in ok.items():
            parts[k].append(((samples @ v) * seeds).sum(1) / (n_samples * n_seeds))
    return {k: np.concatenate(v).astype(float) for k, v in parts.items()}


def percentile_interval(estimate: float, replicates: np.ndarray, *, level: float = 0.95) -> Interval:
    """The percentile interval of bootstrap ``replicates`` around ``estimate``; non-finite replicates (an
    undefined ratio) are left out, and with fewer than half of them finite (or a non-finite estimate) the
    interval is undefined (``low`` = ``high`` = None)."""
    if not 0 < level < 1:
        raise ValueError(f"need 0 < level < 1, got {level}")
    replicates = np.asarray(replicates, dtype=float)
    n_boot = int(replicates.size)
    finite = replicates[np.isfinite(replicates)]
    if not math.isfinite(estimate) or finite.size < max(10, n_boot // 2):
        return Interval(estimate if math.isfinite(estimate) else None, None, None, level, n_boot, int(finite.size))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return Interval(float(estimate), float(low), float(high), level, n_boot, int(finite.size))


def point_estimate(outcomes: Mapping[str, np.ndarray], statistic: Statistic) -> float:
    """``statistic`` of the models' accuracies over all their outcomes."""
    return float(statistic({k: np.asarray([as_outcomes(v).mean()]) for k, v in outcomes.items()})[0])


def paired_bootstrap(outcomes: Mapping[str, np.ndarray], statistic: Statistic, *, n_boot: int = 2000,
                     level: float = 0.95, seed: int = 0, resample_seeds: bool = True) -> Interval:
    """Percentile interval of ``statistic`` over paired resamples of seeds and samples.

    ``outcomes`` maps a model name to its ``(seeds, samples)`` bool outcomes (same shape for all).
    ``statistic`` receives each model's accuracy as an array over replicates and returns one value per
    replicate (vectorised, e.g. ``lambda a: a["sl"] - a["csl"]``); non-finite values (an undefined ratio)
    are left out and counted in ``n_valid``. With one seed, or ``resample_seeds=False``, only samples
    are resampled.
    """
    if not 0 < level < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < level < 1, got {n_boot}, {level}")
    acc = resampled_accuracies(outcomes, n_boot=n_boot, seed=seed, resample_seeds=resample_seeds)
    with np.errstate(divide="ignore", invalid="ignore"):
        return percentile_interval(point_estimate(outcomes, statistic), np.asarray(statistic(acc), dtype=float),
                                   level=level)


def seed_interval(a: np.ndarray | list, b: np.ndarray | list | None = None, *, level: float = 0.95) -> Interval:
    """Student-t interval over training seeds of a per-seed quantity (``a``) or of a paired difference
    ``a - b`` (seed s of ``a`` with seed s of ``b``): for numbers measured once per model, such as
    uniformity, which have no per-sample outcomes to resample. Undefined with fewer than two seeds
    (``n_boot`` = 0, ``n_valid`` = the number of seeds)."""
    values = np.asarray(a, dtype=float) - (0.0 if b is None else np.asarray(b, dtype=float))
    values = values[np.isfinite(values)]
    n = int(values.size)
    if n == 0:
        return Interval(None, None, None, level, 0, 0)
    mean = float(values.mean())
    if n < 2:
        return Interval(mean, None, None, level, 0, n)
    from scipy.stats import t

    half = float(t.ppf(0.5 + level / 2, n - 1)) * float(values.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, level, 0, n)


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
