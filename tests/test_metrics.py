"""Evaluation metrics against closed forms and reference implementations."""

import numpy as np
import pytest
from scipy import stats

from bayes_simfluence import metrics


def trajectories(seed=0, runs=6, steps=4, tests=3):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(runs, steps + 1, tests)), rng.normal(size=(runs, steps + 1, tests))


def test_mse_ignores_step_zero_and_breaks_down_per_test():
    predicted, observed = trajectories()
    predicted[:, 0] += 100.0
    per_test = metrics.all_steps_mse(predicted, observed, per_test=True)
    assert per_test.shape == (3,)
    assert metrics.all_steps_mse(predicted, observed) == pytest.approx(np.mean((predicted - observed)[:, 1:] ** 2))
    assert metrics.final_step_mse(predicted, observed) == pytest.approx(np.mean((predicted - observed)[:, -1] ** 2))


def test_pooled_spearman_matches_scipy():
    predicted, observed = trajectories()
    expected = stats.spearmanr(predicted[:, -1].ravel(), observed[:, -1].ravel()).statistic
    assert metrics.spearman(predicted, observed) == pytest.approx(expected)


def test_spearman_across_runs_per_test_and_nan_safe():
    predicted, observed = trajectories()
    predicted[:, -1, 2] = 1.0  # constant prediction for test 2: undefined
    rho, undefined = metrics.spearman_across_runs(predicted, observed)
    for m in range(2):
        assert rho[m] == pytest.approx(stats.spearmanr(predicted[:, -1, m], observed[:, -1, m]).statistic)
    assert np.isnan(rho[2]) and undefined == 1
    mean, count = metrics.spearman_runs(predicted, observed)
    assert mean == pytest.approx(np.mean(rho[:2])) and count == 1


def test_coverage_of_calibrated_gaussian_draws():
    rng = np.random.default_rng(1)
    observed = rng.normal(size=(50, 21, 20))
    draws = rng.normal(size=(400, 50, 21, 20))
    # 20000 points: binomial sd of the coverage is about 0.004, so 0.02 is 5 sd
    assert metrics.coverage(draws, observed, 0.9) == pytest.approx(0.9, abs=0.02)
    assert metrics.coverage(draws, observed, 0.5) == pytest.approx(0.5, abs=0.02)
    assert metrics.coverage(0.1 * draws, observed, 0.9) < 0.3


def test_crps_agrees_with_the_gaussian_closed_form():
    rng = np.random.default_rng(2)
    observed = rng.normal(size=(4, 3, 5)) * 0.5
    draws = rng.normal(size=(4000, 4, 3, 5))
    z = observed[:, 1:]
    closed = z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / np.sqrt(np.pi)
    # Monte Carlo error of the fair ensemble CRPS with 4000 draws averaged over 40 points: < 0.005
    assert metrics.crps(draws, observed) == pytest.approx(closed.mean(), abs=0.01)


def test_crps_is_the_fair_pairwise_ensemble_score():
    rng = np.random.default_rng(3)
    observed, draws = rng.normal(size=(2, 4, 3)), rng.normal(size=(7, 2, 4, 3))
    x, y = draws[:, :, 1:], observed[:, 1:]
    m = len(draws)
    pairwise = np.abs(x[:, None] - x[None]).sum(axis=(0, 1)) / (2 * m * (m - 1))
    fair = np.abs(x - y).mean(axis=0) - pairwise
    assert metrics.crps(draws, observed) == pytest.approx(fair.mean(), rel=1e-12)


def test_shape_mismatch_is_refused():
    predicted, observed = trajectories()
    with pytest.raises(ValueError, match="shape"):
        metrics.all_steps_mse(predicted[:, :-1], observed)
    with pytest.raises(ValueError, match="level must be in"):
        metrics.coverage(predicted[None], observed, 90)


def _cancelling_runs(n_runs, seed=0):
    """Runs whose test examples' final losses move with a run-level push ``z`` in opposite
    directions by class (7 up, 13 down) plus a square that every example shares, the mechanism
    of ``experiments/label_imbalance.py``: ``L_j = 1 + y_j z + 0.4 z^2``. Returns ``(truth,
    per-example linear, constant)`` trajectories ``[runs, 2, 20]`` (step 0 and the final step)."""
    z = np.random.default_rng(seed).normal(size=(n_runs, 1))
    y = np.r_[np.ones(7), -np.ones(13)]
    final = 1.0 + y * z + 0.4 * z**2
    start = np.ones_like(final)
    stack = lambda last: np.stack([start, last], axis=1)  # noqa: E731
    return stack(final), stack(1.0 + y * z), stack(np.full_like(final, 1.1))


def test_spearman_of_the_mean_loss_sees_what_per_example_ranks_miss():
    truth, linear, constant = _cancelling_runs(40)
    # every test example's final loss is ranked almost perfectly by the per-example linear part ...
    assert metrics.spearman_runs(linear, truth)[0] > 0.95
    # ... but the runs' mean test loss is not: the linear parts cancel down to -0.3 z, the square is missed (0.63)
    value = metrics.spearman_mean_loss(linear, truth)
    assert value == pytest.approx(stats.spearmanr(linear[:, -1].mean(-1), truth[:, -1].mean(-1)).statistic)
    assert value < 0.7
    assert metrics.spearman_mean_loss(truth, truth) == pytest.approx(1.0)
    assert np.isnan(metrics.spearman_mean_loss(constant, truth))  # a curriculum-blind mean: undefined
    assert np.isnan(metrics.spearman_mean_loss(truth[:2], truth[:2]))  # too few runs
    assert all(np.isnan(metrics.run_bootstrap_interval(constant, truth)))


def test_the_run_bootstrap_interval_covers_the_value_on_many_more_runs():
    truth, linear, _ = _cancelling_runs(40, seed=1)
    low, high = metrics.run_bootstrap_interval(linear, truth)
    big_truth, big_linear, _ = _cancelling_runs(20000, seed=2)
    population = metrics.spearman_mean_loss(big_linear, big_truth)
    assert low < metrics.spearman_mean_loss(linear, truth) < high
    assert low < population < high and 0.1 < high - low < 0.8  # runs resampled: an interval of 40 runs' width


def _two_predictors(n_runs: int, noise_a: float, noise_b: float, rng: np.random.Generator, n_tests: int = 5):
    """Final losses ``[runs, 2, tests]`` (step 0 and the end) of runs whose outcome is a signal plus
    noise 0.5, and two predictors that see the signal through their own independent noise."""
    signal = rng.standard_normal((n_runs, n_tests))

    def runs(values):
        return np.stack([np.zeros_like(values), values], axis=1)

    return tuple(runs(signal + sd * rng.standard_normal(signal.shape)) for sd in (0.5, noise_a, noise_b))


def test_the_paired_lds_difference_interval_covers_zero_at_its_level_and_finds_a_real_gap():
    """Two predictors of equal skill: the 90% interval of their LDS difference covers 0 in about 90%
    of 300 replications of 40 runs; unequal skill: it holds the population difference (from 20,000
    runs) and lies above 0; a simulator against itself: exactly 0."""
    rng = np.random.default_rng(0)
    covers = []
    for _ in range(300):
        observed, a, b = _two_predictors(40, 1.0, 1.0, rng)
        difference, low, high = metrics.lds_difference_interval(a, b, observed, n_boot=500, seed=int(rng.integers(1 << 30)))
        assert low <= difference <= high
        covers.append(low <= 0 <= high)
    assert 0.84 <= np.mean(covers) <= 0.96
    observed, a, b = _two_predictors(40, 0.3, 1.0, rng)
    difference, low, high = metrics.lds_difference_interval(a, b, observed)
    big_observed, big_a, big_b = _two_predictors(20000, 0.3, 1.0, rng)
    population = metrics.spearman_runs(big_a, big_observed)[0] - metrics.spearman_runs(big_b, big_observed)[0]
    assert 0 < low < population < high
    assert metrics.lds_difference_interval(a, a, observed) == (0.0, 0.0, 0.0)
