"""bayes-grid (grid hyperparameters, exact effects) against dense Gaussian algebra written out
from the model's definition: the remembered features, the marginal likelihood and the posterior
of the effects given the hyperparameters. Its calibration as a whole is simulation-based
(``tests/test_sbc.py``, ``experiments/sbc.py --method grid``)."""

import jax
import numpy as np
import pytest
from scipy import stats

from bayes_simfluence.bayes import grid
from bayes_simfluence.bayes.data import ModelData, model_data
from bayes_simfluence.bayes.model import ModelConfig
from bayes_simfluence.bayes.synthetic import model_runs
from bayes_simfluence.synthetic import random_curricula
from bayes_simfluence.validation import InputError

CONFIG = ModelConfig(memory="geometric")


@pytest.fixture(scope="module")
def data():
    runs, _ = model_runs(n_train=6, n_tests=2, n_runs=4, n_steps=9, batch_size=2, empty_fraction=0.2, seed=5)
    return model_data(runs)


def dense_features(data, m, decay, variant="linear"):
    """``[runs * steps, features]`` of test example ``m``: each slot's count, remembered with weight
    ``(1 - decay) decay^k`` ``k`` steps later (an explicit sum over lags, not a recursion)."""
    counts = (data.curricula[..., None] == np.arange(data.n_train)).sum(2).astype(float)  # empty slots (-1) match none
    remembered = np.zeros_like(counts)
    for t in range(data.n_steps):
        for k in range(t + 1):
            remembered[:, t] += (1 - decay) * decay**k * counts[:, t - k]
    parts = {"linear": [remembered * data.previous[:, :, m, None], remembered], "additive": [remembered],
             "multiplicative": [remembered * data.previous[:, :, m, None]]}[variant]
    return np.concatenate(parts, -1).reshape(data.n_runs * data.n_steps, -1)


def level_feature(data, m, decay):
    """``[runs * steps]`` the common level's feature ``L_{t-1} sum_i`` (remembered counts) at unit
    root mean square: ``mu_a`` acts through it on every slot's ``L_{t-1}`` term."""
    x = dense_features(data, m, decay, "multiplicative").sum(1)
    return x / np.sqrt(np.mean(x**2))


def step_covariance(data, config):
    """``Omega = I + Z Q^{-1} Z^T`` (units of ``sigma^2``) from the random walk's covariance."""
    steps = np.arange(data.n_steps)
    walk = config.drift_initial**2 + config.drift_smoothness**2 * np.minimum.outer(steps, steps)
    z = np.tile(np.eye(data.n_steps), (data.n_runs, 1))
    return np.eye(data.n_runs * data.n_steps) + z @ walk @ z.T


def dense_evidence(data, config, m, decay):
    return grid.dense_evidence(grid.pair_statistics(data, config, np.array([m]), np.array([decay])))


def grid_log_density(data, config, m, decay, sigma, scale, evidence_of=dense_evidence):
    """The grid's log density at one point ``(decay, sigma, scale)`` of test example ``m``, over the
    evidence of ``evidence_of(data, config, m, decay)`` (the dense path's by default)."""
    evidence = evidence_of(data, config, m, decay)
    shaped = grid.Evidence(*(x[:, None] for x in evidence))
    _, _, logdet_omega = grid.drift_bands(data.n_runs, data.n_steps, config)
    logdet_omega = np.array([[logdet_omega + evidence.nuisance_logdet[0]]])
    priors = np.array([config.noise_prior, config.effect_scale_prior, config.memory_prior])
    log_tau = np.array([[np.log(scale / sigma)]])

    def at(delta):
        with jax.enable_x64(True):
            return grid._log_density(shaped, np.array([[decay]]), log_tau, np.array([[delta]]),
                                     data.n_runs * data.n_steps, logdet_omega, priors, has_memory=config.has_memory)

    _, log_sigma_hat = at(0.0)
    return float(at(np.log(sigma) - float(log_sigma_hat[0, 0, 0]))[0][0, 0, 0, 0])


@pytest.mark.parametrize("decay, sigma, scale", [(0.0, 0.05, 0.02), (0.4, 0.03, 0.05), (0.85, 0.1, 0.004)])
def test_grid_density_is_the_prior_times_the_dense_marginal_likelihood(data, decay, sigma, scale):
    """With the common level ``mu_a`` integrated out under its prior ``N(0, (LEVEL_PRIOR sigma)^2)``
    on the unit-RMS feature."""
    for m in range(data.n_tests):
        x, level = dense_features(data, m, decay), level_feature(data, m, decay)
        cov = (sigma**2 * (step_covariance(data, CONFIG) + grid.LEVEL_PRIOR**2 * np.outer(level, level))
               + scale**2 * x @ x.T)
        log_lik = stats.multivariate_normal(np.zeros(len(cov)), cov).logpdf(data.change[:, :, m].reshape(-1))
        # priors of sigma, s (HalfNormal) and the decay (Beta), with the Jacobian sigma * s of the log scales
        log_prior = (stats.halfnorm(scale=CONFIG.noise_prior).logpdf(sigma) + np.log(sigma)
                     + stats.halfnorm(scale=CONFIG.effect_scale_prior).logpdf(scale) + np.log(scale)
                     + stats.beta(1, CONFIG.memory_prior).logpdf(decay))
        assert grid_log_density(data, CONFIG, m, decay, sigma, scale) == pytest.approx(log_lik + log_prior, abs=1e-6)
    without = ModelConfig(memory="geometric", common_level=False)  # the level fixed at 0
    x = dense_features(data, 0, decay)
    log_lik = stats.multivariate_normal(np.zeros(len(x)), sigma**2 * step_covariance(data, without)
                                        + scale**2 * x @ x.T).logpdf(data.change[:, :, 0].reshape(-1))
    log_prior = (stats.halfnorm(scale=CONFIG.noise_prior).logpdf(sigma) + np.log(sigma)
                 + stats.halfnorm(scale=CONFIG.effect_scale_prior).logpdf(scale) + np.log(scale)
                 + stats.beta(1, CONFIG.memory_prior).logpdf(decay))
    assert grid_log_density(data, without, 0, decay, sigma, scale) == pytest.approx(log_lik + log_prior, abs=1e-6)


def test_log_evidence_is_the_marginal_likelihood_integrated_densely(data):
    """The fit's ``log_evidence`` against ``log p(y) = log int p(y | sigma, s) p(sigma) p(s)``, the
    dense Gaussian marginal (the common level integrated out as above) integrated numerically over
    ``(log sigma, log s)`` on a fine uniform grid of its own, without the fit's coordinates."""
    config = ModelConfig()  # no memory: the evidence is a double integral
    fit = grid.run_grid(data, config, num_draws=20, seed=0, progress=False)
    y_all = data.change.reshape(data.n_runs * data.n_steps, data.n_tests)
    for m in range(data.n_tests):
        x, level = dense_features(data, m, 0.0), level_feature(data, m, 0.0)
        base = step_covariance(data, config) + grid.LEVEL_PRIOR**2 * np.outer(level, level)

        def log_joint(log_sigma, log_scale):
            sigma, scale = np.exp(log_sigma), np.exp(log_scale)
            cov = sigma[:, None, None] ** 2 * base + scale[:, None, None] ** 2 * (x @ x.T)
            _, logdet = np.linalg.slogdet(cov)
            quad = np.einsum("i,nij,j->n", y_all[:, m], np.linalg.inv(cov), y_all[:, m])
            log_lik = -0.5 * (len(base) * np.log(2 * np.pi) + logdet + quad)
            return (log_lik + stats.halfnorm(scale=config.noise_prior).logpdf(sigma) + log_sigma
                    + stats.halfnorm(scale=config.effect_scale_prior).logpdf(scale) + log_scale)

        def integral(sigmas, scales):
            u, v = np.meshgrid(sigmas, scales, indexing="ij")
            density = log_joint(u.reshape(-1), v.reshape(-1)).reshape(u.shape)
            return density, (np.log(np.exp(density - density.max()).sum()) + density.max()
                             + np.log((sigmas[1] - sigmas[0]) * (scales[1] - scales[0])))

        coarse_sigmas, coarse_scales = np.linspace(-9, 1, 101), np.linspace(-45, 0, 181)
        density, _ = integral(coarse_sigmas, coarse_scales)
        near = density > density.max() - 30  # the box holding every cell within 30 log units of the best
        rows, cols = np.flatnonzero(near.any(1)), np.flatnonzero(near.any(0))
        assert 0 < rows[0] and rows[-1] < 100 and 0 < cols[0] and cols[-1] < 180  # inside the coarse box
        _, log_evidence = integral(np.linspace(coarse_sigmas[rows[0] - 1], coarse_sigmas[rows[-1] + 1], 150),
                                   np.linspace(coarse_scales[cols[0] - 1], coarse_scales[cols[-1] + 1], 300))
        assert fit.info["log_evidence"][m] == pytest.approx(log_evidence, abs=0.005)


def dense_posterior(data, config, m, decay, sigma, scale):
    """``(mean, cov)`` of the effects ``(a', B)`` and, where the model learns it, the common level's
    coefficient on its unit-RMS feature (last), given the hyperparameters, written out densely."""
    x = dense_features(data, m, decay, config.variant)
    prior_precision = np.full(x.shape[1], 1 / scale**2)
    if config.has_a_location:
        x = np.column_stack([x, level_feature(data, m, decay)])
        prior_precision = np.append(prior_precision, 1 / (grid.LEVEL_PRIOR * sigma) ** 2)
    omega_inv = np.linalg.inv(step_covariance(data, config))
    y = data.change[:, :, m].reshape(-1)
    cov = np.linalg.inv(x.T @ omega_inv @ x / sigma**2 + np.diag(prior_precision))
    return cov @ x.T @ omega_inv @ y / sigma**2, cov


@pytest.mark.parametrize("variant", ["linear", "additive"])
def test_draws_given_the_hyperparameters_follow_the_dense_posterior_of_the_effects(data, variant):
    """``a' = a - mu_a`` and ``B`` with the level integrated out (the linear variant has one): the
    marginal of the dense joint posterior of ``(a', B, mu_a)``."""
    config = ModelConfig(memory="geometric", variant=variant)
    m, decay, sigma, scale, n = 1, 0.6, 0.04, 0.03, 40000
    mean, cov = dense_posterior(data, config, m, decay, sigma, scale)
    n_features = dense_features(data, m, decay, variant).shape[1]
    mean, cov = mean[:n_features], cov[:n_features, :n_features]
    stats_ = grid.pair_statistics(data, config, np.full(n, m), np.full(n, decay), vectors=True)
    with jax.enable_x64(True):
        draws = np.asarray(grid._effect_draws(jax.random.PRNGKey(0), stats_.eigenvalues, stats_.vectors,
                                              stats_.projected, np.full(n, sigma), np.full(n, scale)))
    sd = np.sqrt(np.diag(cov))
    assert np.all(np.abs(draws.mean(0) - mean) < 5 * sd / np.sqrt(n))
    assert np.allclose(np.cov(draws.T), cov, atol=0.03 * sd.max() ** 2)


def test_grid_path_needs_the_step_component_and_the_normal_likelihood(data):
    with pytest.raises(InputError, match="step component"):
        grid.run_grid(data, ModelConfig(memory="geometric", step_component=False), num_draws=5, progress=False)
    with pytest.raises(InputError, match=r"likelihoods \[.normal.\], not student_t"):
        grid.run_grid(data, ModelConfig(memory="geometric", likelihood="student_t"), num_draws=5, progress=False)


def remembering_runs(decay, n_train=8, n_tests=2, n_runs=12, n_steps=30, batch_size=2, seed=1):
    """``ModelData`` from ``L_t = (1 + m^a_t) L_{t-1} + m^B_t + d + noise`` with the batch sums
    remembered geometrically (``m_t = (1 - decay) s_t + decay m_{t-1}``), from ``L_0 = 1``."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(0, 0.02, (2, n_tests, n_train))
    curricula = random_curricula(n_runs, n_steps, batch_size, n_train, rng).astype(np.int32)
    losses = np.ones((n_runs, n_steps + 1, n_tests))
    memory_a, memory_b = np.zeros((2, n_runs, n_tests))
    for t in range(n_steps):
        memory_a = (1 - decay) * a[:, curricula[:, t]].sum(-1).T + decay * memory_a
        memory_b = (1 - decay) * b[:, curricula[:, t]].sum(-1).T + decay * memory_b
        losses[:, t + 1] = ((1 + memory_a) * losses[:, t] + memory_b - 0.01
                            + 0.005 * rng.standard_normal((n_runs, n_tests)))
    return ModelData(curricula, losses[:, :-1], np.diff(losses, axis=1), np.ones(n_tests), n_train)


def test_a_fit_has_the_layout_of_the_other_paths_and_finds_the_generating_memory():
    """Runs simulated with a strong memory (decay 0.7): the grid's draws of the decay cover it,
    and the draws have the ``[chains, draws, tests, ...]`` layout every posterior reads."""
    data = remembering_runs(0.7)
    fit = grid.run_grid(data, CONFIG, num_draws=300, seed=0, progress=False)
    assert fit.draws["a"].shape == (1, 300, 2, 8) and fit.draws["drift"].shape == (1, 300, 2, 30)
    low, high = np.percentile(fit.draws["memory_decay"][0], [0.5, 99.5], axis=0)
    assert np.all((low < 0.7) & (0.7 < high)), (low, high)
    assert np.all(high - low < 0.3), (low, high)
    assert fit.info["method"] == "grid" and fit.info["edge_mass"] < 1e-3


def test_the_default_bayesian_method_runs_the_grid_where_it_is_cheap_then_cg_and_svi_elsewhere():
    from bayes_simfluence.bayes.krylov import krylov_cost
    from bayes_simfluence.bayes.methods import AUTO_CG_ROWS_PER_TEST, AUTO_GRID_FLOPS_PER_TEST, default_path
    from bayes_simfluence.runs import Runs

    def shaped(n_train, n_runs, n_steps):
        curricula = np.zeros((n_runs, n_steps, 4), np.int32)
        return Runs.create(curricula, np.ones((n_runs, n_steps + 1, 2)), n_train=n_train)

    small, large = shaped(45, 40, 27), shaped(1000, 16, 1000)  # the retraining study's MLP; bench_scale's cell
    assert grid.grid_cost(45, 40 * 27, CONFIG) < AUTO_GRID_FLOPS_PER_TEST < grid.grid_cost(1000, 16 * 1000, CONFIG)
    assert default_path(small, {})[0] == "grid" and default_path(large, {})[0] == "svi"
    assert "per test example, over 1e+10" in default_path(large, {})[1]
    middle = shaped(200, 40, 120)  # a GPTfluence-sized pool: the grid costs too much, its matrix-free twin does not
    assert krylov_cost(200, 40 * 120, CONFIG) <= AUTO_CG_ROWS_PER_TEST < krylov_cost(1000, 16 * 1000, CONFIG)
    assert default_path(middle, {})[0] == "cg" and "bayes-cg:" in default_path(middle, {})[1]
    assert "and bayes-cg" in default_path(large, {})[1]
    assert default_path(small, {"likelihood": "student_t", "guard": False}) == \
        ("svi", "bayes-grid fits the likelihoods ['normal'], not student_t")
    assert default_path(small, {"step": False})[0] == "svi"


@pytest.mark.parametrize("sd_decay, sd_delta, tilt", [(0.002, 0.005, 1.0), (0.002, 0.01, 5.0), (0.002, 0.002, 3.0),
                                                      (0.002, 0.01, 3.0)])
def test_refinement_resolves_sharp_tilted_posteriors_and_keeps_their_moments(sd_decay, sd_delta, tilt):
    """The stages on an analytic posterior (a Gaussian in ``(decay, delta)``, ``delta`` tilted along the
    decay, the tau axis one point as without residual effects), four test examples at once: all
    resolve within the refinements and the last grid's decay marginal has the posterior's mean and sd.
    These are the shapes of thousands of observations (5,000 examples under Adam) on which
    re-boxing every axis at every stage kept widening a resolved axis while zooming another, and
    stopped unresolved after all 10 refinements (each of these cases left some test example
    unresolved that way). Ridges much thinner than their tilt (``tilt sd_decay / sd_delta`` of 10 and
    more) stay beyond an axis-aligned grid: there the grid may still warn."""
    config = ModelConfig(memory="geometric", features=True, residual_effects=False)
    centre = np.array([0.3, 0.55, 0.87, 0.95])[:, None, None, None]  # [tests, 1, 1, 1]

    def evaluate(stage_grid, stage):
        decay, delta = stage_grid.decay[:, :, None, None], stage_grid.delta[:, None, None, :]
        log_density = (-0.5 * ((decay - centre) / sd_decay) ** 2
                       - 0.5 * ((delta - tilt * (decay - centre)) / sd_delta) ** 2)
        return np.broadcast_to(log_density, log_density.shape[:2] + stage_grid.log_tau.shape[1:] + delta.shape[3:]), None

    fine, log_density, _, refinements, done = grid.refine(grid._coarse_grid(4, 4800, config, grid.DENSE), evaluate,
                                                          grid.DENSE)
    assert done.all() and refinements < grid.DENSE.max_refinements, refinements
    weights = grid._weights(log_density).sum(axis=(2, 3))  # [tests, decays]
    mean = (weights * fine.decay).sum(1)
    sd = np.sqrt((weights * (fine.decay - mean[:, None]) ** 2).sum(1))
    np.testing.assert_allclose(mean, centre.reshape(-1), atol=0.2 * sd_decay)
    np.testing.assert_allclose(sd, sd_decay, rtol=0.15)
