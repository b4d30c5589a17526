"""The model without per-example residual effects (``-o residual=false``): effects are the common
level and the feature regression alone.

Oracles: runs generated with additive effects ``B = phi beta`` exactly (no residual; the
multiplicative ones small noise) and, for the check that the option does something, runs whose
effects have a large residual the features cannot explain. Fresh runs from the same generating
process score the roll-outs.
"""

import numpy as np
import pytest
from test_feature_prior import featured_runs

import bayes_simfluence as bsf
from bayes_simfluence.bayes.posterior import BayesianSimfluence
from bayes_simfluence.validation import InputError

BETA = (0.02, -0.01)


def fresh_error(posterior, fresh) -> float:
    predicted = posterior.simulate(fresh.curricula, fresh.initial_losses)
    return float(np.mean((predicted - fresh.losses) ** 2))


@pytest.mark.parametrize("method", ["bayes-grid", "bayes-cg"])
def test_without_residuals_the_effects_are_the_generating_regression(method, tmp_path):
    """On runs whose additive effects are the regression exactly: every draw's ``B`` is its level plus
    ``phi beta`` (no residual left), the coefficients are the generating ones, fresh runs roll out as
    well as with the residuals, and the setting survives save and load."""
    runs, b, phi = featured_runs(residual=0.0, n_runs=24, beta=BETA, seed=3)
    train, fresh = runs.split(16)
    options = dict(method=method, guard=False, memory="none", num_draws=200, progress=False)
    without = bsf.fit(train, residual=False, **options)
    assert not without.config.residual_effects
    effects = without.additive_effects()  # [draws, tests, n_train], loss units
    centred = effects - effects.mean(axis=2, keepdims=True)
    coefficients, *_ = np.linalg.lstsq(phi - phi.mean(0), centred.reshape(-1, phi.shape[0]).T, rcond=None)
    left = centred - np.einsum("ik,kn->ni", phi - phi.mean(0), coefficients).reshape(centred.shape)
    assert np.abs(left).max() < 1e-6 * np.abs(centred).max()  # nothing but the regression per draw
    slopes = coefficients.T.reshape(effects.shape[:2] + (2,))  # [draws, tests, 2]
    mean, sd = slopes.mean(0), slopes.std(0)
    assert np.all(np.abs(mean - np.array(BETA)) < 4 * sd + 0.05 * np.abs(np.array(BETA))), (mean, sd)
    full = bsf.fit(train, **options)
    assert np.mean(full.hyper["effect_scale"]) > 1e3 * np.mean(without.hyper["effect_scale"])
    assert fresh_error(without, fresh) <= 1.05 * fresh_error(full, fresh)
    without.save(tmp_path / "posterior.nc")
    assert not BayesianSimfluence.load(tmp_path / "posterior.nc").config.residual_effects


def test_residuals_the_features_cannot_explain_are_lost_without_them():
    """The option changes the model: where each example's own effect is large and unrelated to the
    features, the fit without residuals rolls fresh runs out clearly worse."""
    runs, _, _ = featured_runs(residual=0.03, n_runs=24, beta=BETA, seed=4)
    train, fresh = runs.split(16)
    options = dict(method="bayes-grid", guard=False, memory="none", num_draws=100, progress=False)
    assert fresh_error(bsf.fit(train, residual=False, **options), fresh) > 1.5 * fresh_error(bsf.fit(train, **options), fresh)


def test_backends_that_fit_only_residual_effects_refuse_the_option():
    runs, _, _ = featured_runs(n_train=12, n_unseen=2, n_runs=6, n_steps=10)
    for method in ("bayes-svi", "bayes-nuts", "bayes-exact"):
        with pytest.raises(InputError, match=rf"residual: {method} fits only the model with per-example residual "
                                             r"effects \(bayes-grid and bayes-cg fit it without\)"):
            bsf.fit(runs, method=method, residual=False, guard=False, progress=False)
