"""The conditional SVI guide's pieces against direct NumPy computations (no fits)."""

import jax
import numpy as np
from numpyro.infer import Predictive

from bayes_simfluence.bayes.guide import ConditionalGuide, site_statistics
from bayes_simfluence.bayes.model import ModelConfig

RNG = np.random.default_rng(0)
CURRICULA = np.array([[[0, 2], [1, -1], [2, 2]], [[3, 0], [-1, -1], [1, 3]]], dtype=np.int32)  # [2 runs, 3 steps, 2]
PREVIOUS = RNG.uniform(0.5, 1.5, size=(2, 3, 2))  # [runs, steps, 2 tests]
CHANGE = RNG.normal(0.0, 0.1, size=(2, 3, 2))
N_TRAIN = 5  # example 4 never appears


def test_site_statistics_are_each_examples_information_and_ridge_estimate():
    config = ModelConfig()
    stats = site_statistics(CURRICULA, PREVIOUS, CHANGE, N_TRAIN, config)
    residual = CHANGE - CHANGE.mean(axis=0, keepdims=True)
    info, score = np.zeros((N_TRAIN, 2, 2, 2)), np.zeros((N_TRAIN, 2, 2))
    values = []
    for r in range(2):
        for t in range(3):
            for i in CURRICULA[r, t]:
                if i < 0:
                    continue
                for m in range(2):
                    x = np.array([PREVIOUS[r, t, m], 1.0])
                    info[i, m] += np.outer(x, x)
                    score[i, m] += x * residual[r, t, m]
                values.append(residual[r, t])
    c11, c21, c22 = stats["factor"]
    rebuilt = np.stack([np.stack([c11**2, c11 * c21], -1), np.stack([c11 * c21, c21**2 + c22**2], -1)], -2)
    np.testing.assert_allclose(rebuilt, info + 1e-6 * np.eye(2), rtol=1e-10, atol=1e-12)
    assert np.allclose(info[4], 0) and np.all(np.isfinite(stats["factor"]))  # unseen: jitter only
    noise = np.var(np.array(values), axis=0)
    for i in range(N_TRAIN):
        for m in range(2):
            ridge = (info[i, m] + 1e-6 * np.eye(2)) + noise[m] / config.effect_scale_prior**2 * np.eye(2)
            expected = np.linalg.solve(ridge, score[i, m]) / config.effect_scale_prior
            np.testing.assert_allclose(stats["mean"][:, i, m], expected, rtol=1e-8, atol=1e-12)


def test_effects_given_hyperparameters_are_prior_times_site():
    """With the hyperparameters fixed, draws of ``(a_i, B_i)`` have the mean and covariance of
    ``N(m, (S / sigma^2)^-1) x N((mu_a, 0), s^2 I)`` computed densely, for random site parameters
    and a common level ``mu_a`` of ``a``."""
    config = ModelConfig()
    stats = site_statistics(CURRICULA, PREVIOUS, CHANGE, N_TRAIN, config)
    sigma, scale = np.array([0.3, 0.7]), np.array([0.05, 0.2])
    level = np.array([0.03, -0.02])
    guide = ConditionalGuide(config, stats, {}, {"noise_scale": sigma, "effect_scale": scale, "a_location": level},
                             n_steps=3)
    params = {"site_mean": RNG.normal(size=(2, N_TRAIN, 2)), "site_correction": 0.3 * RNG.normal(size=(3, N_TRAIN, 2))}
    n = 40000
    with jax.enable_x64(True):
        draws = Predictive(guide, params=params, num_samples=n, return_sites=["a", "B"])(jax.random.PRNGKey(0))
    w = np.stack([np.asarray(draws["a"]), np.asarray(draws["B"])], -1)  # [n, n_train, tests, 2]
    c, k = stats["factor"], params["site_correction"]
    for i in range(N_TRAIN):
        for m in range(2):
            chol = np.array([[c[0, i, m], 0.0], [c[1, i, m], c[2, i, m]]])
            correction = np.array([[np.exp(k[0, i, m]), 0.0], [k[1, i, m], np.exp(k[2, i, m])]])
            factor = chol @ correction
            site = factor @ factor.T / sigma[m] ** 2
            covariance = np.linalg.inv(site + np.eye(2) / scale[m] ** 2)
            mean = covariance @ (site @ (config.effect_scale_prior * params["site_mean"][:, i, m])
                                 + np.array([level[m], 0.0]) / scale[m] ** 2)
            drawn = w[:, i, m]
            error = np.sqrt(np.diag(covariance) / n)
            assert np.all(np.abs(drawn.mean(0) - mean) < 5 * error), (i, m, drawn.mean(0), mean)
            np.testing.assert_allclose(np.cov(drawn.T), covariance, rtol=0.05, atol=0.05 * np.sqrt(
                np.outer(np.diag(covariance), np.diag(covariance))).max())
