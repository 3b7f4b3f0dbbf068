"""The experiment's statistics on data whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.stats import (
    bootstrap_mean,
    difference_of_means,
    length_residuals,
    paired_difference,
    positive_share,
    spearman,
    stratified_difference,
)


def test_a_constant_sample_has_a_zero_width_interval():
    interval = bootstrap_mean([0.25] * 50)
    assert interval.mean == interval.ci_low == interval.ci_high == 0.25 and interval.excludes_zero


def test_the_interval_of_a_mean_matches_its_standard_error():
    x = np.random.default_rng(7).normal(1.0, 1.0, size=400)
    interval = bootstrap_mean(x, seed=3)
    half_width = (interval.ci_high - interval.ci_low) / 2
    expected = 1.96 * x.std(ddof=1) / math.sqrt(x.size)  # the normal approximation, ~0.098
    assert interval.ci_low < x.mean() < interval.ci_high
    assert 0.8 * expected < half_width < 1.2 * expected
    assert interval.excludes_zero and interval.n == 400


def test_the_same_inputs_give_the_same_interval():
    x = list(np.random.default_rng(1).normal(size=60))
    assert bootstrap_mean(x, seed=5) == bootstrap_mean(x, seed=5)
    assert paired_difference([x], [[0.0] * 60], seed=2) == paired_difference([x], [[0.0] * 60], seed=2)


def test_a_paired_difference_removes_what_the_rows_share():
    # Rows differ a lot in difficulty (spread 1.0); b is a + 0.1 on every row: the paired interval is tight around -0.1.
    rng = np.random.default_rng(0)
    difficulty = rng.normal(3.0, 1.0, size=80)
    a = difficulty + rng.normal(0, 0.01, size=80)
    b = difficulty + 0.1
    paired = paired_difference([a], [b])
    unpaired = difference_of_means(a, b)
    assert paired.ci_low < -0.1 < paired.ci_high or abs(paired.mean + 0.1) < 0.005
    assert paired.ci_high < 0 and paired.excludes_zero
    assert (paired.ci_high - paired.ci_low) < 0.1 * (unpaired.ci_high - unpaired.ci_low)
    assert not unpaired.excludes_zero  # the same data compared without pairing cannot tell


def test_a_paired_difference_is_the_mean_over_units_and_rows():
    a = [[1.0, 2.0, 3.0], [2.0, 2.0, 2.0]]
    b = [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
    interval = paired_difference(a, b)
    assert interval.mean == pytest.approx(((1 + 2 + 3) / 3 + 1) / 2)
    assert interval.units == 2 and interval.n == 3


def test_training_noise_between_units_widens_the_interval():
    # Same per-row noise; in the second case the two training units disagree by +-0.3 on every row.
    rng = np.random.default_rng(4)
    noise = rng.normal(0, 0.05, size=(2, 60))
    calm = paired_difference(noise + 0.1, np.zeros((2, 60)))
    shaky = paired_difference(noise + 0.1 + np.array([[0.3], [-0.3]]), np.zeros((2, 60)))
    assert calm.excludes_zero and not shaky.excludes_zero
    assert (shaky.ci_high - shaky.ci_low) > 5 * (calm.ci_high - calm.ci_low)


def test_paired_difference_rejects_mismatched_input():
    with pytest.raises(ValueError):
        paired_difference([[1.0, 2.0]], [[1.0]])
    with pytest.raises(ValueError):
        bootstrap_mean([1.0], confidence=1.5)


def test_difference_of_means_and_strata():
    rng = np.random.default_rng(2)
    a, b = rng.normal(0.5, 0.2, size=200), rng.normal(0.0, 0.2, size=200)
    diff = difference_of_means(a, b)
    assert diff.ci_low < 0.5 < diff.ci_high or abs(diff.mean - 0.5) < 0.05
    assert diff.excludes_zero
    strata = stratified_difference([(a[:100], b[:100]), (a[100:] - 0.5, b[100:])])  # one stratum shifted, one not
    assert strata.units == 2 and strata.mean == pytest.approx(
        ((a[:100].mean() - b[:100].mean()) + (a[100:].mean() - 0.5 - b[100:].mean())) / 2
    )


def test_positive_share_and_spearman():
    assert positive_share([0.1, -0.2, 0.0, 3.0]) == [1.0, 0.0, 0.0, 1.0]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)  # ties share a rank
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_length_residuals_remove_a_length_effect():
    rng = np.random.default_rng(9)
    lengths = rng.integers(20, 2000, size=300)
    values = -0.01 * np.log(lengths) + rng.normal(0, 0.001, size=300)
    assert spearman(values, lengths) < -0.9
    residuals = length_residuals(values, lengths)
    assert abs(spearman(residuals, lengths)) < 0.2
    assert np.mean(residuals) == pytest.approx(np.mean(values))  # the level is kept: groups compare at equal length
