"""NUTS and SVI against the exact conjugate posterior; NUTS diagnostics on the reference problem."""

import dataclasses
import jax
import numpy as np
import pytest
from numpyro.diagnostics import effective_sample_size
from scipy.stats import halfnorm, norm

from bayes_simfluence.bayes import conjugate, diagnostics
from bayes_simfluence.bayes.data import model_data
from bayes_simfluence.bayes.inference import (elbo_converged, fitted_step_sums, run_exact, run_nuts, run_svi,
                                              split_weights)
from bayes_simfluence.bayes.model import ModelConfig
from bayes_simfluence.bayes.posterior import BayesianSimfluence
from bayes_simfluence.bayes.synthetic import model_runs
from bayes_simfluence.synthetic import random_curricula

CONFIG = ModelConfig()  # the default: linear, step component; centred for NUTS, non-centred for SVI


@pytest.fixture(scope="module")
def small():
    """The reference synthetic problem: 10 training examples, 2 test examples, ragged batches."""
    runs, truth = model_runs(n_train=10, n_tests=2, n_runs=8, n_steps=16, batch_size=2, empty_fraction=0.2,
                             effect_scale=0.01, noise_scale=0.01, seed=11)
    return runs, model_data(runs)


@pytest.fixture(scope="module")
def other():
    """The reference problem's shapes with other runs (for checks that nothing recompiles)."""
    return model_data(model_runs(n_train=10, n_tests=2, n_runs=8, n_steps=16, batch_size=2, empty_fraction=0.2,
                                 effect_scale=0.01, noise_scale=0.01, seed=12)[0])


@pytest.fixture(scope="module")
def fixed_hyper(small):
    _, data = small
    return {"noise_scale": np.full(data.n_tests, 0.01), "effect_scale": np.full(data.n_tests, 0.01),
            "a_location": np.zeros(data.n_tests)}  # the oracle's prior mean of (a, B): 0


@pytest.fixture(scope="module")
def exact(small, fixed_hyper):
    _, data = small
    stats = conjugate.collapsed_statistics(data, CONFIG)
    return conjugate.posterior_given(stats, fixed_hyper["noise_scale"], fixed_hyper["effect_scale"],
                                     np.zeros((data.n_tests, 2)))


def effect_draws(result):
    """``[chains, draws, tests, 2 n_train]`` of ``w = (a, B)``."""
    return np.concatenate([result.draws["a"], result.draws["B"]], axis=-1)


def test_nuts_matches_the_exact_posterior_within_monte_carlo_error(small, fixed_hyper, exact):
    _, data = small
    result = run_nuts(data, CONFIG, num_warmup=400, num_samples=500, num_chains=2, seed=1, progress=False,
                      fixed=fixed_hyper)
    w = effect_draws(result)
    ess = np.asarray(effective_sample_size(w))  # [tests, features]
    mean, cov = exact
    sd = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
    z = (w.mean((0, 1)) - mean) / (sd / np.sqrt(ess))
    assert np.abs(z).max() < 4.0  # 40 parameters: a 4-sigma excursion has probability < 0.3%
    flat = w.reshape(-1, *w.shape[2:])
    # sample sd of Gaussian draws: relative standard error 1 / sqrt(2 ess), with the ESS of the
    # squared deviations (NUTS draws can be antithetic for the mean but not for the variance)
    ess_sq = np.asarray(effective_sample_size((w - mean) ** 2))
    ratio = flat.std(0) / sd
    assert np.all(np.abs(ratio - 1) < 4 / np.sqrt(2 * ess_sq))
    for m in range(data.n_tests):
        exact_corr = cov[m] / np.outer(sd[m], sd[m])
        assert np.abs(np.corrcoef(flat[:, m].T) - exact_corr).max() < 4 / np.sqrt(ess_sq[m].min())


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_full_rank_svi_matches_the_exact_posterior(small, fixed_hyper, exact, precision):
    """All latents are real-valued and the posterior is Gaussian: the optimal full-rank guide is
    exact, and float32 optimisation (the default) is as close to it as float64."""
    _, data = small
    result = run_svi(data, CONFIG, guide="mvn", num_steps=6000, learning_rate=0.02, num_draws=4000, seed=2,
                     precision=precision, progress=False, fixed=fixed_hyper)
    assert result.draws["a"].dtype == np.float64 and result.info["precision"] == precision
    w = effect_draws(result)[0]
    mean, cov = exact
    sd = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
    # guide draws are independent (MC error sd / sqrt(4000) = 0.016 sd); the rest allows for the
    # optimiser's own noise around the optimum
    assert np.abs((w.mean(0) - mean) / sd).max() < 0.15
    np.testing.assert_allclose(w.std(0), sd, rtol=0.15)


def test_nuts_on_the_reference_problem_converges_without_divergences(small):
    runs, data = small
    result = run_nuts(data, CONFIG, num_warmup=500, num_samples=500, num_chains=4, seed=3, progress=False)
    posterior = BayesianSimfluence.from_fit(result, data, runs, CONFIG)
    idata = posterior.to_arviz()
    assert diagnostics.count_divergences(idata) == 0
    table = diagnostics.summary(idata, var_names=["a", "B", "noise_scale", "effect_scale", "drift"])
    assert table["r_hat"].max() < 1.01
    assert table["ess_bulk"].min() > 400


def test_elbo_convergence_check():
    rng = np.random.default_rng(0)
    flat = 100.0 + rng.normal(0, 1.0, 1000)
    assert elbo_converged(flat)[0]
    falling = 1e4 * np.exp(-np.arange(1000) / 300) + rng.normal(0, 1.0, 1000)
    converged, check = elbo_converged(falling)
    assert not converged and check["elbo_change"] > 0


def test_a_second_svi_fit_of_the_same_shapes_compiles_nothing(small, other):
    from bayes_simfluence.bayes import inference

    runs, data = small
    programs = (inference._svi_init, inference._svi_steps, inference._svi_draws)
    first = run_svi(data, CONFIG, num_steps=40, num_draws=10, progress=False)
    compiled = [program._cache_size() for program in programs]
    second = run_svi(other, CONFIG, num_steps=40, num_draws=10, seed=3, progress=False)
    assert [program._cache_size() for program in programs] == compiled
    assert not np.allclose(first.draws["B"], second.draws["B"])  # and it really fitted the other runs


@pytest.mark.parametrize("features", [False, True])
def test_cross_fits_start_from_the_fitted_hyperparameters_and_the_initial_effects(small, features):
    """``run_svi(warm_start=cross_fit_start(fit))``: with a negligible learning rate the warm fit
    keeps exactly the parameters it was given (the fitted hyperparameters and feature coefficients,
    pooled over every training example; the effects where the fit started), and its hyperparameter
    draws have the given fit's distribution (the parameters went in on the scale they came out: a
    constrained/unconstrained mix-up moves the effect scale by orders of magnitude)."""
    from bayes_simfluence.bayes.inference import cross_fit_start

    _, data = small
    config = dataclasses.replace(CONFIG, features=features)
    if features:
        data = data._replace(features=np.random.default_rng(0).normal(size=(data.n_tests, data.n_train, 2)))
    source = run_svi(data, config, num_steps=300, num_draws=10, progress=False)
    start = cross_fit_start(source)
    assert set(start) == set(source.guide_params)
    assert features == ("feature_B_auto_loc" in start)
    pooled = ("noise_scale", "effect_scale", "a_location", "feature_a", "feature_B")
    for name, value in start.items():
        origin = source.guide_params if name.split("_auto_")[0] in pooled else source.initial_guide_params
        np.testing.assert_array_equal(value, origin[name], err_msg=name)
    assert not np.allclose(source.guide_params["B_rotated_auto_loc"], start["B_rotated_auto_loc"])
    warm = run_svi(data, config, warm_start=start, seed=5, num_steps=1, learning_rate=1e-12, num_draws=2000,
                   progress=False)
    assert warm.info["warm_start"]
    for name, value in warm.guide_params.items():
        np.testing.assert_allclose(value, start[name], rtol=1e-5, atol=1e-7, err_msg=name)
    # the draws: log effect scale ~ N(loc, softplus(raw scale)) under the given parameters (the
    # optimiser keeps AutoNormal's scales unconstrained), 2000 draws
    log_scale = np.log(warm.draws["effect_scale"][0])
    spread = np.log1p(np.exp(start["effect_scale_auto_scale"]))
    np.testing.assert_allclose(log_scale.mean(0), start["effect_scale_auto_loc"], atol=0.1 * spread.max())
    np.testing.assert_allclose(log_scale.std(0), spread, rtol=0.1)
    for guide in ("mvn", "lowrank", "conditional"):  # they cannot start part-way
        assert cross_fit_start(source._replace(info={**source.info, "guide": guide})) is None


def grid_log_posterior(stats, config, points):
    """Log posterior density of ``(log sigma, log s[, mu_B])`` at ``points [n, 2 or 3]`` for one
    test example: the collapsed evidence (checked against dense Gaussians in
    tests/test_bayes_conjugate.py) plus the priors written out with SciPy, with the Jacobian."""
    one = stats._replace(**{name: getattr(stats, name)[0] for name in conjugate.TEST_FIELDS})
    sigma, scale = np.exp(points[:, 0]), np.exp(points[:, 1])
    mu = np.zeros((len(points), 2))
    log_prior = (halfnorm.logpdf(sigma, scale=config.noise_prior) + halfnorm.logpdf(scale, scale=config.effect_scale_prior)
                 + points[:, 0] + points[:, 1])
    if points.shape[1] == 3:
        mu[:, 0 if config.has_a_location else 1] = points[:, 2]
        log_prior = log_prior + norm.logpdf(points[:, 2], scale=config.location_prior)
    with jax.enable_x64(True):
        return log_prior + np.concatenate([np.asarray(conjugate.log_evidence(one, sigma[i:i + 100_000], scale[i:i + 100_000],
                                                                             mu[i:i + 100_000]))
                                           for i in range(0, len(points), 100_000)])


def grid(lows, highs, n):
    axes = [np.linspace(low, high, n) for low, high in zip(lows, highs)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(axes)), [a[1] - a[0] for a in axes]


def quadrature_moments(stats, config):
    """Posterior mean and variance of each hyperparameter (constrained) by quadrature: a coarse
    grid finds where the density is within e^-25 of its maximum, a fine one integrates there."""
    dims = 3 if config.has_a_location or config.has_b_location else 2
    points, _ = grid([np.log(1e-4), np.log(1e-5), -0.5][:dims], [np.log(3.0), 0.0, 0.5][:dims], 60)
    log_p = grid_log_posterior(stats, config, points)
    cell = (np.array([np.log(3.0), 0.0, 0.5]) - np.array([np.log(1e-4), np.log(1e-5), -0.5]))[:dims] / 59
    kept = points[log_p > log_p.max() - 25]
    points, _ = grid(kept.min(0) - cell, kept.max(0) + cell, 400 if dims == 2 else 100)
    log_p = grid_log_posterior(stats, config, points)
    weight = np.exp(log_p - log_p.max())
    weight /= weight.sum()
    values = np.column_stack([np.exp(points[:, :2]), points[:, 2:]])
    mean = weight @ values
    return mean, weight @ (values - mean) ** 2


@pytest.mark.parametrize("config", [CONFIG, ModelConfig(variant="additive", step_component=False)],
                         ids=["sigma-s-level", "sigma-s-location"])
def test_exact_hyperparameter_posterior_matches_quadrature(small, config):
    """One test example: the NUTS marginals of the exact path against a fine grid."""
    _, data = small
    one = data.select_tests([0])
    result = run_exact(one, config, num_warmup=500, num_samples=2000, num_chains=4, seed=4, progress=False)
    assert result.info["divergences"] == 0
    mean, variance = quadrature_moments(conjugate.collapsed_statistics(one, config), config)
    names = ["noise_scale", "effect_scale", "a_location" if config.has_a_location else "B_location"][: len(mean)]
    for name, grid_mean, grid_variance in zip(names, mean, variance):
        x = result.draws[name][..., 0]  # [chains, draws]
        ess = float(effective_sample_size(x[..., None])[0])
        z = (x.mean() - grid_mean) / np.sqrt(grid_variance / ess)
        squared = (x - grid_mean) ** 2
        ess_sq = float(effective_sample_size(squared[..., None])[0])
        z_var = (squared.mean() - grid_variance) / (squared.std() / np.sqrt(ess_sq))
        assert abs(z) < 4 and abs(z_var) < 4, (name, z, z_var, ess, ess_sq)


def test_exact_fit_of_some_test_examples_agrees_with_the_joint_fit():
    """Test examples share nothing: fitting two of four alone gives them the same posterior."""
    runs, _ = model_runs(n_train=8, n_tests=4, n_runs=8, n_steps=12, batch_size=2, effect_scale=0.01,
                         noise_scale=0.01, seed=13)
    data = model_data(runs)
    subset = [1, 3]
    joint = run_exact(data, CONFIG, num_warmup=300, num_samples=1000, num_chains=2, seed=5, progress=False)
    alone = run_exact(data.select_tests(subset), CONFIG, num_warmup=300, num_samples=1000, num_chains=2, seed=6,
                      progress=False)
    for name in ("noise_scale", "effect_scale", "a", "B", "drift"):
        pair = [joint.draws[name][:, :, subset], alone.draws[name]]
        errors = [np.asarray(effective_sample_size(x)) for x in pair]
        se2 = [x.var((0, 1)) / ess for x, ess in zip(pair, errors)]
        z = (pair[0].mean((0, 1)) - pair[1].mean((0, 1))) / np.sqrt(se2[0] + se2[1])
        assert np.abs(z).max() < 4.5, (name, np.abs(z).max())


def test_a_second_exact_fit_of_the_same_shapes_compiles_nothing(small, other):
    from bayes_simfluence.bayes import hyper_nuts, inference

    runs, data = small
    programs = (conjugate._chunk_statistics, conjugate._banded_cholesky, conjugate._effects_chunk,
                conjugate._drift_draws, hyper_nuts._run_chains, inference._step_sums)
    first = run_exact(data, CONFIG, num_warmup=50, num_samples=20, progress=False)
    compiled = [program._cache_size() for program in programs]
    second = run_exact(other, CONFIG, num_warmup=50, num_samples=20, seed=3, progress=False)
    assert [program._cache_size() for program in programs] == compiled
    assert not np.allclose(first.draws["B"], second.draws["B"])  # and it really fitted the other runs
    assert first.sample_stats["diverging"].shape == first.sample_stats["num_steps"].shape == (2, 20)


def decision_summaries(draws: dict, data, curricula: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``([draws], [draws])``: the mean final loss under ``curricula[0]`` and the paired difference
    ``curricula[1] - curricula[0]``, rolled out (standardised scale) from the data's first ``L_0``.

    Args:
        draws: ``"a"``, ``"B"`` ``[chains, draws, tests, n_train]``, ``"drift"`` ``[chains, draws, tests, steps]``.
        curricula: ``[2, steps, batch]``.
    """
    a, b, drift = (np.asarray(draws[k]).reshape((-1,) + draws[k].shape[2:]) for k in ("a", "B", "drift"))
    start = data.previous[0, 0]
    finals = []
    for curriculum in curricula:
        count = np.zeros((curriculum.shape[0], data.n_train))
        for t, batch in enumerate(curriculum):
            np.add.at(count[t], batch[batch >= 0], 1.0)
        alpha = 1.0 + np.einsum("ti,kmi->ktm", count, a)  # plain NumPy: independent of the package's roll-out
        beta = np.einsum("ti,kmi->ktm", count, b) + np.swapaxes(drift, 1, 2)
        loss = np.broadcast_to(start, alpha.shape[::2]).copy()
        for t in range(curriculum.shape[0]):
            loss = alpha[:, t] * loss + beta[:, t]
        finals.append(loss.mean(-1))
    return finals[0], finals[1] - finals[0]


@pytest.mark.parametrize("guide", ["normal", "conditional"])
def test_default_svi_matches_the_exact_sd_of_decisions(small, fixed_hyper, guide):
    """The default guide (mean-field, non-centred and rotated ``B``, step component integrated out)
    and the conditional guide against the exact joint posterior of ``(a, B, d)``: the sd of a final
    loss and of a paired two-curriculum difference within 10% (issue 9: before, 2.6x and 0.3x)."""
    _, data = small
    config = ModelConfig()
    stats = conjugate.collapsed_statistics(data, config)
    draws = 8000
    sigma, scale = (np.tile(fixed_hyper[k], (draws, 1)) for k in ("noise_scale", "effect_scale"))
    weights = conjugate.draw_effects(stats, sigma, scale, np.zeros((draws, data.n_tests, 2)), jax.random.PRNGKey(7), 8)
    exact = split_weights(np.asarray(weights), data.n_train, config)
    system = conjugate.drift_system(data.n_runs, data.n_steps, config)
    fitted = fitted_step_sums(exact["a"], exact["B"], data)
    exact["drift"] = conjugate.draw_drift(system, data.change.sum(0).T, fitted, sigma, jax.random.PRNGKey(8))
    exact = {k: v[None] for k, v in exact.items()}
    curricula = random_curricula(2, data.n_steps, 2, data.n_train, np.random.default_rng(3))  # full batches
    final, difference = decision_summaries(exact, data, curricula)
    result = run_svi(data, config, guide=guide, num_steps=4000, num_draws=draws, seed=4, progress=False,
                     fixed=fixed_hyper)
    svi_final, svi_difference = decision_summaries(result.draws, data, curricula)
    # sd of 8000 independent draws: relative standard error 0.8%; the rest is the guide's own error
    assert svi_final.std() / final.std() == pytest.approx(1.0, abs=0.1)
    assert svi_difference.std() / difference.std() == pytest.approx(1.0, abs=0.1)
    assert abs(svi_difference.mean() - difference.mean()) < 0.25 * difference.std()
