"""The collapsed/conjugate algebra against dense Gaussian computations written out directly."""

import jax
import numpy as np
import pytest
from scipy.stats import multivariate_normal

from bayes_simfluence.bayes import conjugate
from bayes_simfluence.bayes.data import model_data
from bayes_simfluence.bayes.inference import fitted_step_sums, split_weights
from bayes_simfluence.bayes.model import ModelConfig
from bayes_simfluence.bayes.synthetic import model_runs

SIGMA = np.array([0.02, 0.05])
SCALE = np.array([0.05, 0.02])
MU = np.array([[0.01, -0.02], [0.0, 0.03]])


@pytest.fixture(scope="module")
def data():
    runs, _ = model_runs(n_train=6, n_tests=2, n_runs=4, n_steps=7, batch_size=2, empty_fraction=0.2, seed=3)
    return model_data(runs)


def dense_problem(data, config, m, mu):
    """Design, prior mean and covariance of (w, d) for test example m, built densely."""
    counts = np.zeros((data.n_runs, data.n_steps, data.n_train))
    for r in range(data.n_runs):
        for t in range(data.n_steps):
            for i in data.curricula[r, t]:
                if i >= 0:
                    counts[r, t, i] += 1
    columns = []
    if config.has_multiplicative:
        columns.append(counts * data.previous[:, :, m, None])
    if config.has_additive:
        columns.append(counts)
    x = np.concatenate(columns, -1).reshape(data.n_runs * data.n_steps, -1)
    n_features = x.shape[1]
    prior_mean = conjugate.block_indicators(data.n_train, config).T @ mu[m]
    prior_cov = SCALE[m] ** 2 * np.eye(n_features)
    if config.step_component:
        z = np.tile(np.eye(data.n_steps), (data.n_runs, 1))
        diff = np.diff(np.eye(data.n_steps), axis=0)
        precision = diff.T @ diff / config.drift_smoothness**2
        precision[0, 0] += 1 / config.drift_initial**2
        x = np.concatenate([x, z], 1)
        prior_mean = np.concatenate([prior_mean, np.zeros(data.n_steps)])
        prior_cov = np.block([[prior_cov, np.zeros((n_features, data.n_steps))],
                              [np.zeros((data.n_steps, n_features)), SIGMA[m] ** 2 * np.linalg.inv(precision)]])
    y = data.change[:, :, m].reshape(-1)
    return x, y, prior_mean, prior_cov, n_features


def dense_posterior(x, y, prior_mean, prior_cov, sigma):
    precision = np.linalg.inv(prior_cov) + x.T @ x / sigma**2
    cov = np.linalg.inv(precision)
    return cov @ (np.linalg.solve(prior_cov, prior_mean) + x.T @ y / sigma**2), cov


CONFIGS = [ModelConfig(), ModelConfig(step_component=False), ModelConfig(variant="additive"),
           ModelConfig(variant="multiplicative", step_component=False)]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.variant}-step{c.step_component}")
def test_evidence_and_posterior_match_dense_gaussian(data, config):
    mu = np.zeros_like(MU) if config.step_component else MU
    stats = conjugate.collapsed_statistics(data, config)
    with jax.enable_x64(True):
        evidence = np.asarray(conjugate.log_evidence(stats, SIGMA, SCALE, mu))
    mean, cov = conjugate.posterior_given(stats, SIGMA, SCALE, mu)
    for m in range(data.n_tests):
        x, y, prior_mean, prior_cov, n_features = dense_problem(data, config, m, mu)
        marginal = multivariate_normal(x @ prior_mean, x @ prior_cov @ x.T + SIGMA[m] ** 2 * np.eye(len(y)))
        # float64 round-off only: the two computations share no code
        assert evidence[m] == pytest.approx(marginal.logpdf(y), abs=1e-8)
        dense_mean, dense_cov = dense_posterior(x, y, prior_mean, prior_cov, SIGMA[m])
        np.testing.assert_allclose(mean[m], dense_mean[:n_features], atol=1e-10)
        np.testing.assert_allclose(cov[m], dense_cov[:n_features, :n_features], atol=1e-12)


def test_exact_draws_of_effects_and_drift_have_the_dense_moments(data):
    config = ModelConfig()
    mu = np.zeros_like(MU)
    stats = conjugate.collapsed_statistics(data, config)
    n = 4000
    effects_key, drift_key = jax.random.split(jax.random.PRNGKey(0))
    tile = lambda v: np.broadcast_to(v, (n,) + v.shape).copy()  # noqa: E731
    weights = conjugate.draw_effects(stats, tile(SIGMA), tile(SCALE), tile(mu), effects_key, chunk_size=1)
    effects = split_weights(weights, data.n_train, config)
    fitted = fitted_step_sums(effects["a"], effects["B"], data)
    system = conjugate.drift_system(data.n_runs, data.n_steps, config)
    drift = conjugate.draw_drift(system, data.change.sum(0).T, fitted, tile(SIGMA), drift_key)
    for m in range(data.n_tests):
        x, y, prior_mean, prior_cov, n_features = dense_problem(data, config, m, mu)
        dense_mean, dense_cov = dense_posterior(x, y, prior_mean, prior_cov, SIGMA[m])
        joint = np.concatenate([weights[:, m], drift[:, m]], axis=1)
        sd = np.sqrt(np.diag(dense_cov))
        # independent exact draws: the sample mean has standard error sd / sqrt(n)
        z = (joint.mean(0) - dense_mean) / (sd / np.sqrt(n))
        assert np.abs(z).max() < 4.5
        # sample sd: relative standard error about 1 / sqrt(2 n) = 1.1%
        np.testing.assert_allclose(joint.std(0), sd, rtol=0.06)


def test_exact_path_refuses_the_student_t_likelihood(data):
    with pytest.raises(ValueError, match=r"-o likelihood: bayes-exact fits the likelihoods \['normal'\], not student_t"):
        conjugate.collapsed_statistics(data, ModelConfig(likelihood="student_t"))


def test_chunks_of_test_examples_are_padded_to_one_shape():
    """Three test examples in chunks of two (the last one padded) give the statistics and the
    draws of one chunk of three, and compile one statistics program for both chunks."""
    runs, _ = model_runs(n_train=5, n_tests=3, n_runs=4, n_steps=6, batch_size=2, empty_fraction=0.2, seed=4)
    data = model_data(runs)
    config = ModelConfig()
    sigma, scale, mu = np.array([0.02, 0.05, 0.03]), np.array([0.05, 0.02, 0.04]), np.zeros((3, 2))
    whole = conjugate.collapsed_statistics(data, config, chunk_size=3)
    compiled = conjugate._chunk_statistics._cache_size()
    chunked = conjugate.collapsed_statistics(data, config, chunk_size=2)
    assert conjugate._chunk_statistics._cache_size() == compiled + 1
    for name in ("eigenvalues", "target_sq", "target_blocks", "gram_blocks"):
        np.testing.assert_allclose(getattr(chunked, name), getattr(whole, name), atol=1e-12, err_msg=name)
    mean, cov = conjugate.posterior_given(whole, sigma, scale, mu)
    np.testing.assert_allclose(conjugate.posterior_given(chunked, sigma, scale, mu)[0], mean, atol=1e-10)
    n = 4000
    tile = lambda v: np.broadcast_to(v, (n,) + v.shape).copy()  # noqa: E731
    weights = conjugate.draw_effects(chunked, tile(sigma), tile(scale), tile(mu), jax.random.PRNGKey(1), chunk_size=2)
    sd = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
    assert np.abs((weights.mean(0) - mean) / (sd / np.sqrt(n))).max() < 4.5
    np.testing.assert_allclose(weights.std(0), sd, rtol=0.06)
