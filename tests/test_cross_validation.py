"""The ridge strength's cross-validation: the matrix-free path (conjugate gradients, warm-started
down the grid) against the dense normal equations on an underdetermined design (more effects than
the observed steps of each fold's fit, as at 10,000 training examples), and the choice from the
table of held-out errors when some of them are not finite."""

from __future__ import annotations

import numpy as np
import pytest

from bayes_simfluence import ridge
from bayes_simfluence.cross_validation import _best, _scores, choose_ridge
from bayes_simfluence.synthetic import synthetic_runs


@pytest.fixture(scope="module")
def underdetermined():
    """200 effects per test example; each fold's fit sees 6 runs x 20 steps = 120 teacher-forced steps."""
    runs, _ = synthetic_runs(n_train=100, n_tests=3, n_runs=8, n_steps=20, batch_size=8, effect_scale=0.05,
                             noise_scale=0.005, seed=2)
    assert ridge.is_dense("linear", runs.n_train)
    return runs


def _by_decade(report: dict, scale: float) -> dict[float, float]:
    return dict(zip(np.round(np.log10(np.array(report["ridge_grid"]) / scale), 6), report["cv_mse"]))


def test_matrix_free_cross_validation_matches_the_dense_one_when_underdetermined(underdetermined, monkeypatch):
    dense, dense_report = choose_ridge(underdetermined, "linear")
    monkeypatch.setattr(ridge, "DENSE_MAX_FEATURES", 0)
    matrix_free, report = choose_ridge(underdetermined, "linear")
    assert matrix_free == pytest.approx(dense, rel=1e-9)
    scale = dense_report["ridge_grid"][0] / 1e-6  # the dense path tried the whole grid, from 1e-6 x scale
    full, walked = _by_decade(dense_report, scale), _by_decade(report, scale)
    assert set(walked) <= set(full) and len(walked) >= 5
    assert min(full, key=full.get) == min(walked, key=walked.get)  # an interior minimum, found by the walk
    assert -6 < min(full, key=full.get) < 4
    np.testing.assert_allclose([walked[k] for k in walked], [full[k] for k in walked], rtol=1e-6)
    assert report["cv_failures"] == [0] * len(walked)


@pytest.mark.parametrize("common_level, tolerance", [(False, 1e-4), (True, 5e-4)])
def test_matrix_free_cross_validation_matches_the_dense_one_at_the_weakest_ridges(underdetermined, monkeypatch,
                                                                                 common_level, tolerance):
    """Where conjugate gradients converge slowest: 1e-6 x scale and its half decades. Their stopping rule
    bounds the residual, ``||r|| <= 1e-10 ||X^T y||``; the error along directions ``X`` hardly sees is
    up to ``||r|| / ridge``, about ``1e-10 x scale / ridge = 1e-4`` of the effects here (measured: 2e-5
    of the CV error with the fixed centre, 2e-4 with the unpenalised common level, which leaves the
    system less well conditioned)."""
    _, dense_report = choose_ridge(underdetermined, "linear", relative_grid=(1e-6,), common_level=common_level)
    monkeypatch.setattr(ridge, "DENSE_MAX_FEATURES", 0)
    _, report = choose_ridge(underdetermined, "linear", relative_grid=(1e-6,), common_level=common_level)
    assert report["ridge_grid"] == pytest.approx(dense_report["ridge_grid"], rel=1e-9)
    assert report["cv_failures"] == [0, 0, 0]
    np.testing.assert_allclose(report["cv_mse"], dense_report["cv_mse"], rtol=tolerance)


def test_a_test_example_failing_at_every_strength_does_not_pick_the_weakest():
    """Before, every score was infinite and the weakest strength was taken (the walk down never stopped)."""
    errors = {0.01: np.array([np.inf, 5.0, 5.0]), 0.1: np.array([np.inf, 1.0, 1.5]),
              1.0: np.array([np.inf, 2.0, 1.0]), 10.0: np.array([np.inf, 3.0, 3.0])}
    assert _best(errors) == 0.1
    scores = _scores(errors, sorted(errors))
    assert scores[1] == pytest.approx(np.log(1.5) / 2) and scores[2] == pytest.approx(np.log(2.0) / 2)


def test_strengths_failing_more_test_examples_are_not_chosen():
    errors = {0.01: np.array([0.1, np.inf, 0.1]), 0.1: np.array([1.0, 1.0, 1.0]), 1.0: np.array([2.0, 2.0, np.inf])}
    assert _best(errors) == 0.1
    assert np.isinf(_scores(errors, sorted(errors))[[0, 2]]).all()


def test_when_every_strength_fails_a_different_test_example_the_strongest_is_taken():
    errors = {0.01: np.array([np.inf, 1.0, 1.0]), 0.1: np.array([1.0, np.inf, 1.0]),
              1.0: np.array([1.0, 1.0, np.inf]), 10.0: np.array([np.inf, np.inf, 1.0])}
    assert _best(errors) == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 2])
def test_the_common_level_beats_the_fixed_centre_on_fresh_runs_where_examples_are_seen_rarely(seed):
    """Runs of the generating process (every example's effects around a decay all of them share), 400
    examples each seen about 12 times by the fit: shrinking towards the fixed centre shrinks the shared
    decay with the per-example noise, so the CV falls to the weakest strength; shrinking towards a
    fitted common level finds an interior strength that predicts 4 fresh runs better (measured 1.3-2.9x
    lower all-steps MSE over seeds 0-2) and better than ignoring the curriculum."""
    from bayes_simfluence.simulators import SimfluenceLinear

    runs, _ = synthetic_runs(n_train=400, n_tests=8, n_runs=16, n_steps=50, batch_size=8, effect_scale=0.05,
                             noise_scale=0.005, seed=seed)
    train, held = runs.split(4)

    def heldout_mse(simulator) -> float:
        predicted = simulator.simulate(held.curricula, held.initial_losses)
        return float(np.mean((predicted[:, 1:] - held.losses[:, 1:]) ** 2))

    fixed, common = (SimfluenceLinear(common_level=level).fit(train) for level in (False, True))
    assert fixed.ridge_selected == min(fixed.cv_report["ridge_grid"])  # the fixed centre's failure
    assert common.ridge_selected > 1e3 * min(common.cv_report["ridge_grid"])
    blind = float(np.mean((train.losses.mean(0)[None, 1:] - held.losses[:, 1:]) ** 2))
    assert heldout_mse(common) < 0.8 * heldout_mse(fixed)
    assert heldout_mse(common) < 0.5 * blind
