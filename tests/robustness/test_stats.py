"""Paired bootstrap and McNemar on synthetic per-sample outcomes with known answers."""

import math

import numpy as np
import pytest

from vidcsl.robustness.stats import (
    Interval,
    accuracy_difference,
    as_outcomes,
    gap_closed,
    mcnemar,
    paired_bootstrap,
)


def bernoulli(rng, p, shape):
    return rng.random(shape) < p


def test_clear_gap_is_resolved_and_no_gap_is_not():
    rng = np.random.default_rng(0)
    sl, csl = bernoulli(rng, 0.8, (3, 1000)), bernoulli(rng, 0.5, (3, 1000))
    same = bernoulli(rng, 0.5, (3, 1000))
    clear = paired_bootstrap({"sl": sl, "csl": csl}, accuracy_difference("sl", "csl"), n_boot=500)
    assert clear.excludes_zero and clear.low > 0.2 and clear.high < 0.4
    assert clear.low <= clear.estimate <= clear.high
    none = paired_bootstrap({"a": csl, "b": same}, accuracy_difference("a", "b"), n_boot=500)
    assert not none.excludes_zero and none.low < 0 < none.high


def test_pairing_narrows_the_interval_of_correlated_models():
    """Two models that agree on most samples: the paired interval of their difference is far narrower
    than the spread of either accuracy (an unpaired analysis could not resolve the 5-point difference)."""
    rng = np.random.default_rng(1)
    base = bernoulli(rng, 0.6, (1, 400))
    better = base | bernoulli(rng, 0.125, (1, 400))  # fixes about 5% of the samples, breaks none
    diff = paired_bootstrap({"a": better, "b": base}, accuracy_difference("a", "b"), n_boot=1000)
    assert diff.excludes_zero and diff.low > 0
    alone = paired_bootstrap({"a": base}, lambda acc: acc["a"], n_boot=1000)
    assert (diff.high - diff.low) < 0.6 * (alone.high - alone.low)


def test_bootstrap_width_matches_the_binomial_standard_error():
    rng = np.random.default_rng(2)
    x = bernoulli(rng, 0.3, (1, 2000))
    iv = paired_bootstrap({"x": x}, lambda acc: acc["x"], n_boot=2000, seed=3)
    p = x.mean()
    se = math.sqrt(p * (1 - p) / x.size)
    assert (iv.high - iv.low) / 2 == pytest.approx(1.96 * se, rel=0.15)


def test_seed_resampling_adds_training_variance():
    """Seeds that disagree widely (one seed good, one bad) must widen the interval beyond sample noise."""
    rng = np.random.default_rng(3)
    x = np.stack([bernoulli(rng, 0.9, 500), bernoulli(rng, 0.3, 500)])
    with_seeds = paired_bootstrap({"x": x}, lambda a: a["x"], n_boot=500)
    samples_only = paired_bootstrap({"x": x}, lambda a: a["x"], n_boot=500, resample_seeds=False)
    assert (with_seeds.high - with_seeds.low) > 5 * (samples_only.high - samples_only.low)


def test_gap_closed_estimate_and_undefined_ratio():
    rng = np.random.default_rng(4)
    sl, csl = bernoulli(rng, 0.8, (2, 800)), bernoulli(rng, 0.4, (2, 800))
    fn = bernoulli(rng, 0.6, (2, 800))
    iv = paired_bootstrap({"sl": sl, "csl": csl, "fn": fn}, gap_closed("sl", "csl", "fn"), n_boot=400)
    expected = (fn.mean() - csl.mean()) / (sl.mean() - csl.mean())
    assert iv.estimate == pytest.approx(expected)
    assert iv.excludes_zero and iv.low < 0.5 < iv.high
    same = paired_bootstrap({"sl": csl, "csl": csl, "fn": fn}, gap_closed("sl", "csl", "fn"), n_boot=100)
    assert same.estimate is None and same.low is None and not same.excludes_zero and same.n_valid == 0


def test_mcnemar_exact_p_value_by_hand():
    a = np.array([True] * 10 + [False] * 2 + [True] * 5)
    b = np.array([False] * 10 + [True] * 2 + [True] * 5)
    res = mcnemar(a, b)
    assert (res.only_a, res.only_b) == (10, 2)
    assert res.p_value == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert mcnemar(a, a).p_value == 1.0
    assert mcnemar(b, a).p_value == pytest.approx(res.p_value)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="same shape|one shape"):
        paired_bootstrap({"a": np.ones((2, 5), bool), "b": np.ones((2, 6), bool)}, accuracy_difference("a", "b"))
    with pytest.raises(ValueError, match="seeds, samples"):
        as_outcomes(np.ones((2, 2, 2), bool))
    assert isinstance(Interval(0.1, 0.0, 0.2, 0.95, 10, 10).as_dict()["resolved"], bool)


def test_resampled_accuracies_draw_alike_for_every_model():
    """The draw depends only on the seed and the shape: a model's replicates do not change with the other
    models resampled beside it (that is what keeps comparisons paired across calls)."""
    from vidcsl.robustness.stats import resampled_accuracies

    rng = np.random.default_rng(5)
    a, b = bernoulli(rng, 0.7, (3, 300)), bernoulli(rng, 0.4, (3, 300))
    alone = resampled_accuracies({"a": a}, n_boot=300, seed=7)
    both = resampled_accuracies({"a": a, "b": b, "same": a}, n_boot=300, seed=7)
    np.testing.assert_allclose(alone["a"], both["a"])
    np.testing.assert_allclose(both["same"], both["a"])  # identical outcomes: every replicate agrees
    assert both["a"].shape == (300,) and abs(both["a"].mean() - a.mean()) < 0.01
    ones = resampled_accuracies({"x": np.ones((2, 50), bool)}, n_boot=20)["x"]
    np.testing.assert_allclose(ones, 1.0)


def test_percentile_interval_and_undefined_estimate():
    from vidcsl.robustness.stats import percentile_interval

    iv = percentile_interval(0.5, np.linspace(0, 1, 1001), level=0.9)
    assert iv.low == pytest.approx(0.05) and iv.high == pytest.approx(0.95) and iv.excludes_zero
    nans = np.full(100, np.nan)
    nans[:40] = 1.0  # fewer than half of the replicates defined: no interval
    assert percentile_interval(1.0, nans).low is None
    assert percentile_interval(float("nan"), np.ones(100)).estimate is None


def test_seed_interval_is_student_t_over_seeds():
    from vidcsl.robustness.stats import seed_interval

    iv = seed_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t_{0.975, 2} * sd 1 / sqrt(3)
    assert iv.estimate == pytest.approx(2.0) and iv.low == pytest.approx(2 - half) and iv.high == pytest.approx(2 + half)
    paired = seed_interval([1.0, 2.0, 3.5], [0.5, 1.5, 3.0])  # differences 0.5 each: no spread
    assert paired.excludes_zero and paired.low == pytest.approx(0.5) and paired.n_valid == 3
    one = seed_interval([0.4], [0.1])
    assert one.estimate == pytest.approx(0.3) and one.low is None and not one.excludes_zero
