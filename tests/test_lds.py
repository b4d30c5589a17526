"""LDS and the bootstrap intervals against a known truth (against dattri's implementation:
tests/collect/test_dattri_lds.py, where torch is installed)."""

import numpy as np
import pytest

from bayes_simfluence import metrics
from bayes_simfluence.evaluation import score_simulator
from bayes_simfluence.simulators import SimfluenceLinear
from bayes_simfluence.synthetic import synthetic_runs


def _subset_runs(rng, n_runs=30, n_train=20, subset=12, n_tests=5):
    """Random-subset runs whose predicted final loss is a sum of per-example scores (a linear datamodel)."""
    scores = rng.normal(size=(n_train, n_tests))
    indices = np.stack([rng.choice(n_train, subset, replace=False) for _ in range(n_runs)])  # [runs, subset]
    predicted_final = scores[indices].sum(1)  # [runs, tests]
    observed_final = predicted_final + rng.normal(scale=2.0, size=predicted_final.shape)
    as_trajectory = lambda final: np.stack([np.zeros_like(final), final], axis=1)  # [runs, 2, tests]
    return scores, indices, as_trajectory(predicted_final), as_trajectory(observed_final)


def test_lds_of_the_generating_datamodel_matches_the_noise_level_in_a_simulation():
    """Known value: with signal sd s and noise sd 2 the rank correlation is about (6/pi) asin(r/2), r = corr."""
    rng = np.random.default_rng(1)
    values = [metrics.spearman_runs(*_subset_runs(rng, n_runs=400)[2:])[0] for _ in range(5)]
    signal_sd = np.sqrt(12 * (1 - 12 / 20))  # sd of a sum of 12 of 20 standard normals around their mean
    r = signal_sd / np.sqrt(signal_sd**2 + 4.0)
    assert np.mean(values) == pytest.approx(6 / np.pi * np.arcsin(r / 2), abs=0.03)


def test_bootstrap_interval_covers_the_true_mean_at_its_level():
    rng = np.random.default_rng(2)
    covered = []
    for trial in range(300):
        per_test = rng.gamma(2.0, 1.0, size=40)  # skewed per-test values; true mean 2.0
        low, high = metrics.bootstrap_intervals({"m": per_test}, level=0.9, n_boot=500, seed=trial)["m"]
        covered.append(low <= 2.0 <= high)
    assert 0.83 <= np.mean(covered) <= 0.95


def test_score_simulator_reports_lds_only_under_the_random_subset_protocol():
    runs, _ = synthetic_runs(n_train=12, n_tests=4, n_runs=12, n_steps=10, batch_size=2, seed=3)
    train, held = runs.split(4)
    linear = SimfluenceLinear(ridge=0.1).fit(train)
    plain = score_simulator(linear, held)
    assert "lds" not in plain and "spearman_runs_interval" in plain
    low, high = plain["all_steps_mse_interval"]
    assert low <= plain["all_steps_mse"] <= high
    declared = score_simulator(linear, held, random_subsets=True)
    assert declared["lds"] == declared["spearman_runs"] and declared["lds_interval"] == declared["spearman_runs_interval"]


def test_evaluate_reports_each_method_s_lds_against_the_ridge_paired_over_held_out_runs():
    """With ``linear`` among the methods and 12 held-out random-subset runs, every other method with an
    LDS gets its difference from ``linear``'s on the same runs (the two LDS subtracted) with a paired
    interval around it, in the results and as a line under the table; with fewer than 10 held-out
    runs, or without ``linear``, none."""
    from bayes_simfluence.evaluation import MIN_PAIRED_RUNS, evaluate_methods, format_table

    runs, _ = synthetic_runs(n_train=12, n_tests=4, n_runs=36, n_steps=10, batch_size=2, seed=4)
    train, held = runs.split(12)
    results = evaluate_methods(["additive", "linear"], train, held, random_subsets=True)
    paired = results["additive"]["lds_minus_linear"]
    assert paired["difference"] == pytest.approx(results["additive"]["lds"] - results["linear"]["lds"])
    assert paired["interval"][0] <= paired["difference"] <= paired["interval"][1] and paired["heldout_runs"] == 12
    assert "lds_minus_linear" not in results["linear"]
    assert "additive lds minus linear's: " in format_table(results)
    few = evaluate_methods(["additive", "linear"], train, held.select_runs(slice(0, MIN_PAIRED_RUNS - 1)),
                           random_subsets=True)
    alone = evaluate_methods(["additive"], train, held, random_subsets=True)
    assert "lds_minus_linear" not in few["additive"] and "lds_minus_linear" not in alone["additive"]
    assert "lds minus" not in format_table(few)
