"""Leave-runs-out cross-validation of the ridge strength of the point simulators."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from bayes_simfluence import ridge as ridge_lib
from bayes_simfluence.rollout import batch_sums, roll_out
from bayes_simfluence.runs import Runs

RELATIVE_GRID: tuple[float, ...] = tuple(10.0 ** np.arange(-6, 3))


def choose_ridge(
    runs: Runs,
    variant: str,
    n_folds: int = 4,
    max_tests: int = 8,
    relative_grid: tuple[float, ...] = RELATIVE_GRID,
) -> tuple[float, dict]:
    """Pick the ridge strength minimising held-out all-steps MSE of simulated trajectories.

    Runs are split into ``n_folds`` contiguous folds; each fold is simulated (rolled out from its
    observed ``L_0``, not teacher-forced) by the model fitted on the other folds. The grid is
    ``relative_grid * scale`` with ``scale`` the mean diagonal of ``X^T X`` (so it adapts to how
    often examples are seen and to the loss scale). One strength is shared by all test examples;
    it is chosen on at most ``max_tests`` evenly spaced test examples to bound the cost.

    Returns:
        ``(ridge, report)`` with the report holding the grid and the mean held-out MSE of each value.
    """
    if runs.n_runs < 2:
        raise ValueError(
            f"cross-validating the ridge needs at least 2 runs, got {runs.n_runs}; pass ridge= explicitly"
        )
    n_folds = min(n_folds, runs.n_runs)
    tests = np.unique(np.linspace(0, runs.n_tests - 1, min(max_tests, runs.n_tests)).round().astype(int))
    subset = runs.select_tests(tests)
    folds = np.array_split(np.arange(runs.n_runs), n_folds)
    total = ridge_lib.normal_equations(subset.curricula, subset.losses, runs.n_train, variant)
    scale = float(np.mean(np.diagonal(total.gram, axis1=1, axis2=2)))
    grid = [rho * max(scale, 1e-12) for rho in relative_grid]

    errors = np.zeros((len(grid), n_folds))
    for f, fold in enumerate(folds):
        held = subset.select_runs(fold)
        train_eq = total - ridge_lib.normal_equations(held.curricula, held.losses, runs.n_train, variant)
        for g, strength in enumerate(grid):
            weights = ridge_lib.solve_ridge(train_eq, strength)
            centred_a, additive = ridge_lib.split_effects(weights, variant, runs.n_train)
            predicted = _roll_out_effects(centred_a, additive, variant, held)
            error = np.mean((predicted[:, 1:] - held.losses[:, 1:]) ** 2)
            errors[g, f] = error if np.isfinite(error) else np.inf
    mean_error = errors.mean(axis=1)
    best = int(np.argmin(mean_error))
    report = {
        "ridge_grid": grid,
        "cv_mse": [float(e) for e in mean_error],
        "ridge": grid[best],
        "folds": n_folds,
        "cv_tests": tests.tolist(),
    }
    return grid[best], report


def _roll_out_effects(centred_a: np.ndarray, additive: np.ndarray, variant: str, runs: Runs) -> np.ndarray:
    """``[runs, steps + 1, tests]`` roll-out with per-slot centring (``A = 1/batch + a``)."""
    curricula = jnp.asarray(runs.curricula)
    beta = batch_sums(jnp.asarray(additive), curricula)
    if variant == "additive":
        alpha = jnp.ones_like(beta)
    else:
        alpha = batch_sums(jnp.asarray(centred_a + 1.0 / runs.batch_size), curricula)
    return np.asarray(roll_out(alpha, beta, jnp.asarray(runs.initial_losses, dtype=beta.dtype)))
