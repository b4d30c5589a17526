"""Matrix-free ridge by conjugate gradients against the dense normal equations (the oracle: they
are checked against direct least squares in test_point_simulators), on runs with repeated examples
in a batch, empty slots and the decay every example shares."""

from __future__ import annotations

import numpy as np
import pytest

from bayes_simfluence import design, ridge
from bayes_simfluence.cross_validation import choose_ridge
from bayes_simfluence.simulators import SimfluenceLinear
from bayes_simfluence.synthetic import synthetic_runs


@pytest.fixture(scope="module")
def runs():
    runs, _ = synthetic_runs(n_train=40, n_tests=3, n_runs=12, n_steps=30, batch_size=4, effect_scale=0.05,
                             noise_scale=0.005, seed=1)
    curricula = runs.curricula.copy()
    curricula[0, 2, 1] = curricula[0, 2, 0]  # an example twice in one batch
    curricula[1, 3, 2:] = -1  # a half-empty batch
    return type(runs).create(curricula, runs.losses, n_train=runs.n_train)


@pytest.mark.parametrize("common_level", [False, True])
@pytest.mark.parametrize("variant", ridge.VARIANTS)
@pytest.mark.parametrize("strength", [1e-3, 0.1, 10.0])
def test_conjugate_gradients_solve_the_normal_equations(runs, variant, strength, common_level):
    dense = ridge.solve_ridge(ridge.normal_equations(runs.curricula, runs.losses, runs.n_train, variant), strength,
                              common_level)
    problem = design.design(runs.curricula, runs.losses, ridge.step_baseline(runs.curricula, variant, "per_slot"))
    solved = design.solve_ridge_cg(problem, runs.n_train, variant, strength, common_level)
    np.testing.assert_allclose(solved, dense, rtol=0, atol=1e-7 * np.abs(dense).max())


@pytest.mark.parametrize("variant", ridge.VARIANTS)
def test_the_diagonal_counts_repeated_slots_squared(runs, variant):
    equations = ridge.normal_equations(runs.curricula, runs.losses, runs.n_train, variant)
    problem = design.design(runs.curricula, runs.losses, ridge.step_baseline(runs.curricula, variant, "per_slot"))
    assert design.mean_diagonal(problem, runs.n_train, variant) == pytest.approx(
        np.mean(np.diagonal(equations.gram, axis1=1, axis2=2)), rel=1e-12)


def test_above_the_dense_limit_the_fit_and_its_cross_validation_are_unchanged(runs, monkeypatch):
    """Forcing the matrix-free path gives the dense path's ridge choice and effects."""
    dense = SimfluenceLinear().fit(runs)
    monkeypatch.setattr(ridge, "DENSE_MAX_FEATURES", 0)
    assert not ridge.is_dense("linear", runs.n_train)
    chosen, report = choose_ridge(runs, "linear")
    assert chosen == pytest.approx(dense.ridge_selected, rel=1e-9)
    walked = dict(zip(np.round(np.log10(report["ridge_grid"]), 6), report["cv_mse"]))
    full = dict(zip(np.round(np.log10(dense.cv_report["ridge_grid"]), 6), dense.cv_report["cv_mse"]))
    assert set(walked) < set(full)  # walked down from the strongest, left after two worse strengths
    np.testing.assert_allclose([walked[k] for k in walked], [full[k] for k in walked], rtol=1e-6)
    matrix_free = SimfluenceLinear().fit(runs)
    np.testing.assert_allclose(matrix_free.multiplicative, dense.multiplicative, atol=1e-7)
    np.testing.assert_allclose(matrix_free.additive, dense.additive, atol=1e-7)
