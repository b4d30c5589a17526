"""Fitting test examples in blocks, here and as Ray tasks (``fit --test-blocks``, ``fit --ray``)."""


import numpy as np
import pytest

from bayes_simfluence.bayes.blocks import block_indices, fit_in_blocks
from bayes_simfluence.bayes.posterior import BayesianSimfluence
from bayes_simfluence.bayes.synthetic import model_runs
from bayes_simfluence.cli import main
from bayes_simfluence.methods import FitContext, fit_method

EXACT = {"num_warmup": 150, "num_samples": 100, "progress": False, "guard": False}


@pytest.fixture(scope="module")
def runs():
    return model_runs(n_train=12, n_tests=5, n_runs=10, n_steps=15, effect_scale=0.02, seed=8)[0]


def test_blocks_cover_every_test_example_once_in_order():
    parts = block_indices(7, 3)
    assert [len(p) for p in parts] == [3, 2, 2] and np.array_equal(np.concatenate(parts), np.arange(7))
    assert len(block_indices(2, 5)) == 2
    with pytest.raises(ValueError, match="must be >= 1"):
        block_indices(3, 0)


@pytest.mark.slow
def test_a_blocked_fit_agrees_with_the_joint_fit_within_monte_carlo_error(runs):
    context = FitContext(options=EXACT)
    joint = fit_method("bayes-exact", runs, context)
    blocked = fit_in_blocks("bayes-exact", runs, context, blocks=2, progress=False)
    assert list(blocked.test_ids) == list(joint.test_ids) and blocked.a.shape == joint.a.shape
    # each (test, training example) effect: means differ by Monte Carlo error of two sets of 200 draws
    for name in ("a", "b"):
        joint_draws, blocked_draws = getattr(joint, name), getattr(blocked, name)
        sd = joint_draws.std(axis=(0, 1))
        error = np.abs(joint_draws.mean(axis=(0, 1)) - blocked_draws.mean(axis=(0, 1))) / np.maximum(sd, 1e-12)
        assert np.median(error) < 0.3 and error.max() < 1.0, (name, error.max())


def test_blocks_keep_the_guards_run_residuals_so_the_predictive_is_still_for_a_new_run(runs):
    """Each block's guard leaves held-out residuals ``[runs, steps, block tests]`` (one row per
    training run in every block); the merged posterior must keep them, test examples in order,
    or its default predictive silently falls back to the per-step noise."""
    options = {"num_draws": 30, "progress": False, "guard_folds": 2}
    blocked = fit_in_blocks("bayes-grid", runs, FitContext(options=options), blocks=2, progress=False)
    assert blocked.predictive_kind() == "new-run"
    # the run state is estimated from all test examples at once, so blocks fit without it and say so
    assert blocked.state is None and "test blocks" in blocked.info["run_state_off"]
    parts = [fit_method("bayes-grid", runs.select_tests(index), FitContext(options={**options, "run_state": False}))
             for index in block_indices(runs.n_tests, 2)]
    np.testing.assert_array_equal(blocked.run_residuals, np.concatenate([p.run_residuals for p in parts], axis=2))
    assert blocked.run_residuals.shape == (runs.n_runs, runs.n_steps, runs.n_tests)


def test_only_bayesian_methods_fit_in_blocks(runs):
    with pytest.raises(ValueError, match="for the Bayesian methods"):
        fit_in_blocks("linear", runs, FitContext(), blocks=2)


def test_fit_on_ray_equals_the_same_blocks_fitted_here(runs, local_ray, tmp_path):
    """Through the command line, saved and read back (blocks merge as tests/test_guard.py checks); with
    the guard, so its cross-fits and residuals travel too (bayes-grid: seconds, where NUTS took minutes)."""
    runs.save(tmp_path / "runs.npz")
    options = {"num_draws": 40, "guard_folds": 2, "progress": False}
    common = ["fit", "--train", str(tmp_path / "runs.npz"), "-m", "bayes-grid", "--test-blocks", "2",
              *[part for key, value in options.items() for part in ("-o", f"{key}={value}")]]
    assert main([*common, "--out", str(tmp_path / "here.nc")]) == 0
    assert main([*common, "--ray", "--max-retries", "1", "--out", str(tmp_path / "ray.nc")]) == 0
    here, on_ray = (BayesianSimfluence.load(tmp_path / name) for name in ("here.nc", "ray.nc"))
    for name in ("a", "b", "drift", "sigma", "scale", "run_residuals", "stacking_weight"):
        np.testing.assert_array_equal(getattr(on_ray, name), getattr(here, name), err_msg=name)
    assert list(on_ray.test_ids) == list(runs.test_ids)
    assert [block["tests"] for block in on_ray.info["blocks"]] == [3, 2]
