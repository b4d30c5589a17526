"""NUTS and SVI against the exact conjugate posterior; NUTS diagnostics on the reference problem."""

import numpy as np
import pytest
from numpyro.diagnostics import effective_sample_size

from bayes_simfluence.bayes import conjugate, diagnostics
from bayes_simfluence.bayes.data import model_data
from bayes_simfluence.bayes.inference import elbo_converged, run_nuts, run_svi
from bayes_simfluence.bayes.model import ModelConfig
from bayes_simfluence.bayes.posterior import BayesianSimfluence
from bayes_simfluence.bayes.synthetic import model_runs

CONFIG = ModelConfig()  # the default: linear, step component; centred for NUTS, non-centred for SVI


@pytest.fixture(scope="module")
def small():
    """The reference synthetic problem: 10 training examples, 2 test examples, ragged batches."""
    runs, truth = model_runs(n_train=10, n_tests=2, n_runs=8, n_steps=16, batch_size=2, empty_fraction=0.2,
                             effect_scale=0.01, noise_scale=0.01, seed=11)
    return runs, model_data(runs)


@pytest.fixture(scope="module")
def fixed_hyper(small):
    _, data = small
    return {"noise_scale": np.full(data.n_tests, 0.01), "effect_scale": np.full(data.n_tests, 0.01)}


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


def test_full_rank_svi_matches_the_exact_posterior(small, fixed_hyper, exact):
    """All latents are real-valued and the posterior is Gaussian: the optimal full-rank guide is exact."""
    _, data = small
    result = run_svi(data, CONFIG, guide="mvn", num_steps=6000, learning_rate=0.02, num_draws=4000, seed=2,
                     progress=False, fixed=fixed_hyper)
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
    idata = diagnostics.to_inference_data(posterior)
    assert diagnostics.count_divergences(idata) == 0
    table = diagnostics.summary(idata, var_names=["a", "B", "noise_scale", "effect_scale", "step_drift"])
    assert table["r_hat"].max() < 1.01
    assert table["ess_bulk"].min() > 400


def test_elbo_convergence_check():
    rng = np.random.default_rng(0)
    flat = 100.0 + rng.normal(0, 1.0, 1000)
    assert elbo_converged(flat)[0]
    falling = 1e4 * np.exp(-np.arange(1000) / 300) + rng.normal(0, 1.0, 1000)
    converged, check = elbo_converged(falling)
    assert not converged and check["elbo_change"] > 0


def test_a_second_svi_fit_of_the_same_shapes_compiles_nothing(small):
    from bayes_simfluence.bayes import inference

    runs, data = small
    programs = (inference._svi_init, inference._svi_steps, inference._svi_draws)
    first = run_svi(data, CONFIG, num_steps=40, num_draws=10, progress=False)
    compiled = [program._cache_size() for program in programs]
    other = model_data(model_runs(n_train=10, n_tests=2, n_runs=8, n_steps=16, batch_size=2, empty_fraction=0.2,
                                  effect_scale=0.01, noise_scale=0.01, seed=12)[0])
    second = run_svi(other, CONFIG, num_steps=40, num_draws=10, seed=3, progress=False)
    assert [program._cache_size() for program in programs] == compiled
    assert not np.allclose(first.draws["B"], second.draws["B"])  # and it really fitted the other runs
