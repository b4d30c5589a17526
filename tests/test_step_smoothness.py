"""The paired LDS of ``experiments/step_smoothness.py`` on cases whose Spearman correlations are known."""

import numpy as np
import pytest
from experiment_module import load_experiment

smoothness = load_experiment("step_smoothness")


@pytest.fixture(scope="module")
def observed():
    return np.random.default_rng(0).normal(size=(30, 4, 3))  # [runs, steps + 1, tests]


def test_a_monotone_prediction_ranks_perfectly_and_a_reversed_one_backwards(observed):
    lds, baseline, difference, interval = smoothness.paired_lds(np.exp(observed), -observed, observed)
    assert (lds, baseline, difference) == pytest.approx((1.0, -1.0, 2.0))
    # every resample keeps both correlations (ties aside): the interval is the point
    assert interval == pytest.approx([2.0, 2.0])


def test_the_same_prediction_differs_by_nothing_on_every_resample(observed):
    noisy = observed + np.random.default_rng(1).normal(size=observed.shape)
    lds, baseline, difference, interval = smoothness.paired_lds(noisy, noisy.copy(), observed)
    assert lds == baseline and difference == 0.0 and interval == [0.0, 0.0]
    assert 0.3 < lds < 0.95


def test_the_interval_holds_the_difference_of_a_better_and_a_worse_prediction(observed):
    rng = np.random.default_rng(2)
    better, worse = observed + 0.3 * rng.normal(size=observed.shape), observed + 2.0 * rng.normal(size=observed.shape)
    _, _, difference, (low, high) = smoothness.paired_lds(better, worse, observed)
    assert 0 < low < difference < high
