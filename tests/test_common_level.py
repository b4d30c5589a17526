"""The common level of the multiplicative effects, against the generating process.

Runs are drawn by ``experiments/common_level.py`` with NumPy (every example shares a decay:
``a ~ N(-0.002, 0.002)``, ``B ~ N(0.001, 0.004)``); the truth is that process's own counterfactual
(the average example's true effects in the example's slots), not the model's convention.
"""

import numpy as np
import pytest

from bayes_simfluence.bayes import guard
from bayes_simfluence.bayes.data import model_data
from bayes_simfluence.bayes.grid import run_grid
from bayes_simfluence.bayes.inference import run_exact
from bayes_simfluence.bayes.methods import state_check
from bayes_simfluence.bayes.model import ModelConfig
from experiment_module import load_experiment

common_level = load_experiment("common_level")


@pytest.fixture(scope="module")
def world():
    return common_level.generate(seed=1)


def test_the_generator_is_simfluence_linear(world):
    """The truth's own roll-out reproduces the runs up to their noise (0.003 a step)."""
    runs, truth = world
    expected = common_level.roll(truth["a"], truth["B"], runs.curricula[0], truth["initial"])
    assert np.sqrt(np.mean((expected - runs.losses[0]) ** 2)) < 0.03
    assert truth["a"].mean() < -0.0015  # every example shares a decay


def test_learned_level_gives_calibrated_attributions_where_the_fixed_level_did_not(world):
    """Without the guard (no stacking, no run state): the learned level's 90% intervals cover the
    generating effects at the right magnitude; the level fixed at 0 (the model before) inflates them
    and its intervals miss."""
    runs, truth = world
    learned = common_level.score(common_level.fit(runs, {"guard": False}), runs, truth, n_draws=200)
    fixed = common_level.score(common_level.fit(runs, {"guard": False, "common_level": False}), runs, truth,
                               n_draws=200)
    assert 0.85 <= learned["coverage_90"] <= 0.99 and min(learned["coverage_by_test"]) >= 0.8, learned
    assert 0.9 <= learned["slope"] <= 1.1 and learned["spearman"] > 0.99, learned
    assert learned["brier"] <= fixed["brier"] + 0.005
    assert fixed["coverage_90"] < 0.7 and fixed["slope"] > 1.1, fixed


def test_grid_and_exact_paths_agree_on_the_level(world):
    """The same model on two backends (no memory, the exact path's model): the pool mean of ``a``
    per test example, grid (level integrated out with a flat prior) against NUTS on the
    hyperparameters with exact effects (level ``Normal(0, 0.1)``); both cover the generating mean."""
    runs, truth = world
    data = model_data(runs.select_tests([0, 1]))
    config = ModelConfig()
    grid_draws = run_grid(data, config, num_draws=400, progress=False).draws["a"][0].mean(-1)  # [draws, tests]
    exact = run_exact(data, config, num_warmup=300, num_samples=200, progress=False)
    exact_draws = exact.draws["a"].reshape((-1,) + exact.draws["a"].shape[2:]).mean(-1)
    assert exact.draws["a_location"].shape[-1] == 2
    for m in range(2):
        sd = exact_draws[:, m].std()
        assert abs(grid_draws[:, m].mean() - exact_draws[:, m].mean()) < 0.3 * sd
        assert grid_draws[:, m].std() == pytest.approx(sd, rel=0.2)
        for draws in (grid_draws[:, m], exact_draws[:, m]):
            lower, upper = np.quantile(draws, [0.01, 0.99])
            assert lower < truth["a"][m].mean() < upper


def _stacking(per_run_mse: np.ndarray) -> guard.Stacking:
    """A guard result whose held-out residuals have the given all-steps MSE per run."""
    residuals = np.sqrt(per_run_mse)[:, None, None] * np.ones((len(per_run_mse), 5, 3))
    return guard.Stacking(np.ones(3), {}, residuals)


def test_the_run_state_is_kept_only_where_held_out_runs_favour_it():
    rng = np.random.default_rng(0)
    without = rng.uniform(1.0, 2.0, 40)
    better = _stacking(without - 0.1 + 0.02 * rng.standard_normal(40))
    same = _stacking(without + 0.02 * rng.standard_normal(40))
    assert state_check(better, _stacking(without))["kept"]
    check = state_check(same, _stacking(without))
    assert not check["kept"] and "do not say it helps" in check["reason"] and check["runs"] == 40


@pytest.mark.slow
def test_default_fit_keeps_attributions_calibrated_with_the_guard(world):
    """The default ``bayes`` (guard on, run state auto): on runs with no shared state the state is
    dropped by the held-out check, and the attributions cover at the right magnitude."""
    runs, truth = world
    posterior = common_level.fit(runs, {})
    assert not posterior.info["run_state_check"]["kept"] and posterior.state is None
    scores = common_level.score(posterior, runs, truth, n_draws=200)
    assert scores["coverage_90"] >= 0.85 and 0.9 <= scores["slope"] <= 1.1, scores
