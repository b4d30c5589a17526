"""bayes-cg (matrix-free Lanczos evidence, perturb-and-MAP draws) against dense Gaussian algebra
written out from the model's definition (the oracles of ``tests/test_bayes_grid.py``), and
against bayes-grid where both run."""

import jax
import numpy as np
import pytest
from test_bayes_grid import (dense_features, dense_posterior, grid_log_density, level_feature, remembering_runs,
                             step_covariance)

from bayes_simfluence.bayes import grid, krylov
from bayes_simfluence.bayes.data import model_data
from bayes_simfluence.bayes.model import ModelConfig
from bayes_simfluence.bayes.synthetic import model_runs
from bayes_simfluence.validation import InputError

CONFIGS = [ModelConfig(memory="geometric"), ModelConfig(memory="geometric", common_level=False),
           ModelConfig(variant="additive", memory="geometric"), ModelConfig(memory="none")]


@pytest.fixture(scope="module")
def data():
    runs, _ = model_runs(n_train=6, n_tests=2, n_runs=4, n_steps=9, batch_size=2, empty_fraction=0.2, seed=5)
    return model_data(runs)


def shared_of(data, config):
    return krylov.shared_arrays(data, config, grid.scaled_state_features(data, None),
                                grid.nuisance_priors(config, 0, grid.n_feature_columns(data, config)))


def krylov_evidence(data, config, m, decay, probes=None):
    """The Lanczos evidence of one pair; ``probes`` default to the scaled unit vectors, with which
    the trace estimate is exact (each probe's rule is exact once the Krylov space is exhausted)."""
    n_features = krylov.n_features_of(config.variant, data.n_train)
    probes = np.sqrt(n_features) * np.eye(n_features) if probes is None else probes
    return grid.Evidence(*krylov.evidence(data, config, shared_of(data, config), np.array([m]), np.array([decay]),
                                          probes))


@pytest.mark.parametrize("config", CONFIGS, ids=["linear", "no-level", "additive", "no-memory"])
@pytest.mark.parametrize("decay", [0.0, 0.4, 0.85])
def test_lanczos_evidence_gives_the_dense_log_density(data, config, decay):
    """With as many Lanczos steps as features and exact probes, the quadratures are exact: the grid's
    log density over them is the dense one (the prior times the marginal likelihood written out
    from the model, ``test_bayes_grid``) at every ``(sigma, s)``."""
    decay = decay if config.has_memory else 0.0
    for m in range(data.n_tests):
        for sigma, scale in [(0.05, 0.02), (0.02, 0.3), (0.2, 1e-3)]:
            dense = grid_log_density(data, config, m, decay, sigma, scale)
            assert grid_log_density(data, config, m, decay, sigma, scale,
                                    evidence_of=krylov_evidence) == pytest.approx(dense, abs=1e-8)


@pytest.mark.parametrize("features", [False, True], ids=["plain", "feature-prior"])
def test_products_by_gathers_equal_those_by_the_dense_count_matrix(data, monkeypatch, features):
    """Large pools apply the design by gathers and scatter-adds over the batch slots, small ones by the
    dense count matrix: the same evidence and the same draws (with the feature prior, its columns too)."""
    config = ModelConfig(memory="geometric", features=features)
    if features:
        data = data._replace(features=np.random.default_rng(0).normal(size=(data.n_tests, data.n_train, 2)))
    monkeypatch.setattr(krylov, "DENSE_TRAIN_PER_SLOT", data.n_train)
    assert krylov.uses_dense_counts(data)
    dense = krylov_evidence(data, config, 1, 0.6)
    args = (np.full(3, 1), np.full(3, 0.6), np.full(3, 0.04), np.full(3, 0.03))
    dense_draws = krylov.draw_effects(data, config, shared_of(data, config), *args, seed=3)
    monkeypatch.setattr(krylov, "DENSE_TRAIN_PER_SLOT", 0)
    assert not krylov.uses_dense_counts(data)
    sparse = krylov_evidence(data, config, 1, 0.6)
    for tau2 in (1e-3, 1.0, 1e3):  # the rules' nodes differ in rounding; what they integrate does not
        for evidence in (dense, sparse):
            assert np.sum(evidence.logdet_weights * np.log1p(tau2 * evidence.logdet_nodes)) == pytest.approx(
                np.sum(dense.logdet_weights * np.log1p(tau2 * dense.logdet_nodes)), rel=1e-8)
            assert np.sum(evidence.quad_weights / (evidence.quad_nodes + 1 / tau2)) == pytest.approx(
                np.sum(dense.quad_weights / (dense.quad_nodes + 1 / tau2)), rel=1e-8)
    np.testing.assert_allclose(sparse.target_sq, dense.target_sq, rtol=1e-10)
    for a, b in zip(dense_draws, krylov.draw_effects(data, config, shared_of(data, config), *args, seed=3)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-12)


def test_draws_do_not_depend_on_the_chunk_size(data, monkeypatch):
    """Each draw's random numbers come from its own index, so neither the chunk size nor whether a
    chunk's pairs go one after another (CPUs) or all at once (accelerators) changes a number."""
    config = ModelConfig(memory="geometric")
    n = 5
    args = (np.arange(n) % data.n_tests, np.linspace(0.2, 0.7, n), np.full(n, 0.04), np.full(n, 0.03))
    draws = {}
    monkeypatch.setattr(krylov, "DENSE_TRAIN_PER_SLOT", 0)  # by the slots: one at a time on CPUs
    for budget, backends in ((1, ()), (2**40, ("cpu",)), (2**40, ())):
        monkeypatch.setattr(krylov, "CHUNK_BYTES", budget)
        monkeypatch.setattr(krylov, "SEQUENTIAL_BACKENDS", backends)
        assert krylov._chunk_size(data, 8) == (1 if budget == 1 else 64)
        draws[budget, backends] = krylov.draw_effects(data, config, shared_of(data, config), *args, seed=5)
    for one, mapped, whole in zip(*draws.values()):
        np.testing.assert_allclose(one, whole, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(mapped, whole, rtol=1e-9, atol=1e-12)
    assert not np.allclose(draws[1, ()][0][0], draws[1, ()][0][1])  # and different draws differ


def test_rademacher_probes_estimate_the_log_determinant_without_bias(data):
    """The default probes' trace estimate scatters around the exact log-determinant, within what
    Hutchinson's estimator's variance allows (``2 sum_{i != j} f(G)_ij^2`` over the probes)."""
    config, tau2 = ModelConfig(memory="geometric"), 30.0
    exact = krylov_evidence(data, config, 0, 0.5)
    truth = np.sum(exact.logdet_weights * np.log1p(tau2 * exact.logdet_nodes))
    n_features = krylov.n_features_of(config.variant, data.n_train)
    estimates = []
    assert n_features <= krylov.EXACT_TRACE_FEATURES  # a fit here would use exact probes: draw Rademacher ones
    large = krylov.probes_of(krylov.EXACT_TRACE_FEATURES + 1)
    assert large.shape[0] == krylov.PROBES and set(np.unique(large)) == {-1.0, 1.0}
    for seed in range(40):
        probes = np.random.default_rng(seed).choice([-1.0, 1.0], size=(krylov.PROBES, n_features))
        rough = krylov_evidence(data, config, 0, 0.5, probes)
        estimates.append(np.sum(rough.logdet_weights * np.log1p(tau2 * rough.logdet_nodes)))
    x = dense_features(data, 0, 0.5)
    covariance = step_covariance(data, config) + grid.LEVEL_PRIOR**2 * np.outer(level_feature(data, 0, 0.5),
                                                                                  level_feature(data, 0, 0.5))
    gram = x.T @ np.linalg.solve(covariance, x)
    values, vectors = np.linalg.eigh(gram)
    f = vectors @ np.diag(np.log1p(tau2 * np.maximum(values, 0))) @ vectors.T
    assert truth == pytest.approx(np.trace(f), rel=1e-8)
    sd = np.sqrt(2 * (np.sum(f**2) - np.sum(np.diag(f) ** 2)) / krylov.PROBES)
    assert abs(np.mean(estimates) - truth) < 4 * sd / np.sqrt(len(estimates))
    assert 0.5 * sd < np.std(estimates) < 1.5 * sd


@pytest.mark.parametrize("variant", ["linear", "additive"])
def test_perturb_and_map_draws_follow_the_dense_posterior_of_the_effects(data, variant):
    """Given the hyperparameters, the draws of ``a' = a - mu_a`` and ``B`` (the level integrated
    out) and of the level's coefficient follow the dense joint posterior of ``(a', B, mu_a)``."""
    config = ModelConfig(memory="geometric", variant=variant)
    m, decay, sigma, scale, n = 1, 0.6, 0.04, 0.03, 6000
    mean, cov = dense_posterior(data, config, m, decay, sigma, scale)
    shared = krylov.shared_arrays(data, config, np.zeros(data.curricula.shape[:2] + (0,)),
                                  grid.nuisance_priors(config, 0))
    w, nuisance, _, _, residual = krylov.draw_effects(
        data, config, shared, np.full(n, m), np.full(n, decay), np.full(n, sigma), np.full(n, scale), seed=3)
    assert residual.max() < 1e3 * krylov.DRAW_TOLERANCE
    draws = np.column_stack([w, nuisance[:, :1]]) if config.has_a_location else w  # on the unit-RMS feature
    sd = np.sqrt(np.diag(cov))
    assert np.all(np.abs(draws.mean(0) - mean) < 4.5 * sd / np.sqrt(n))
    assert np.allclose(np.cov(draws.T), cov, atol=0.06 * sd.max() ** 2)


def test_bayes_cg_agrees_with_bayes_grid_where_both_run():
    """On runs drawn from the model (with optimiser memory, the common level and the step
    component), the two backends' posteriors of the effects, the noise and the decay agree within
    Monte Carlo error, and so do their log evidences; bayes-cg's only approximations are its
    quadratures."""
    data = remembering_runs(0.5, n_train=10, n_tests=3, n_runs=8, n_steps=20, batch_size=3, seed=2)
    config = ModelConfig(memory="geometric")
    n = 400
    dense_fit = grid.run_grid(data, config, num_draws=n, seed=0, progress=False)
    dense = dense_fit.draws
    fit = krylov.run_cg(data, config, num_draws=n, seed=1, progress=False)
    assert fit.info["cg_unconverged"] == 0
    np.testing.assert_allclose(fit.info["log_evidence"], dense_fit.info["log_evidence"], atol=0.01)
    for name in ("a", "B", "noise_scale", "memory_decay"):
        ours, theirs = fit.draws[name][0], dense[name][0]
        sd = np.sqrt((ours.var(0) + theirs.var(0)) / 2)
        assert np.all(np.abs(ours.mean(0) - theirs.mean(0)) < 0.35 * sd + 1e-12), name
        assert np.all(np.abs(np.log(ours.std(0) / theirs.std(0))) < 0.35), name


def test_bayes_cg_needs_the_step_component_and_the_normal_likelihood(data):
    with pytest.raises(InputError, match="bayes-cg needs the step component"):
        krylov.run_cg(data, ModelConfig(step_component=False), num_draws=5, progress=False)
    with pytest.raises(InputError, match=r"bayes-cg fits the likelihoods \[.normal.\], not student_t"):
        krylov.run_cg(data, ModelConfig(likelihood="student_t"), num_draws=5, progress=False)
    with jax.enable_x64(False):  # the fit sets its own precision
        assert krylov.run_cg(data, ModelConfig(), num_draws=3, progress=False).draws["a"].dtype == np.float64


def test_bayes_cg_fits_with_its_guard_and_run_state_saves_and_reloads(tmp_path):
    """``-m bayes-cg`` end to end, as bayes-grid runs: the guard's cross-fits, the run state where
    they favour it, a saved posterior that loads and simulates as the fitted one."""
    import bayes_simfluence as bsf

    runs, _ = model_runs(n_train=12, n_tests=2, n_runs=16, n_steps=15, batch_size=3, seed=4)
    posterior = bsf.fit(runs, method="bayes-cg", num_draws=60)
    assert posterior.info["method"] == "cg" and "guard" in posterior.info
    path = tmp_path / "cg.nc"
    posterior.save(path)
    again = bsf.load(path)
    curricula, initial = runs.curricula[:2], runs.losses[:2, 0]
    np.testing.assert_allclose(again.simulate(curricula, initial), posterior.simulate(curricula, initial))
