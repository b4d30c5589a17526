"""The feature prior (effects regressed on the training examples' features) against oracles: the
dense marginal likelihood written out from the model's definition, the coefficients and effects of
the process that generated the runs, and the regression's predictive for examples no run used."""

import numpy as np
import pytest
from scipy import stats
from test_bayes_cg import shared_of
from test_bayes_grid import dense_features, grid_log_density, level_feature, step_covariance

import bayes_simfluence as bsf
from bayes_simfluence.bayes import grid, inference, krylov
from bayes_simfluence.bayes.data import model_data
from bayes_simfluence.bayes.model import ModelConfig
from bayes_simfluence.bayes.synthetic import _roll, model_runs
from bayes_simfluence.runs import Runs, RunsFormatError
from bayes_simfluence.synthetic import random_curricula
from bayes_simfluence.validation import InputError


def featured_data():
    """Small runs from the model, with empty batch slots, two per-example features and one per-pair
    feature (model data)."""
    runs, _ = model_runs(n_train=6, n_tests=2, n_runs=4, n_steps=9, batch_size=2, empty_fraction=0.2, seed=5)
    rng = np.random.default_rng(3)
    return model_data(runs.with_features(rng.normal(size=(6, 2)), rng.normal(size=(2, 6, 1))))


@pytest.fixture(scope="module")
def featured():
    return featured_data()


def cg_evidence(data, config, m, decay):
    n_features = krylov.n_features_of(config.variant, data.n_train)
    probes = np.sqrt(n_features) * np.eye(n_features)
    return grid.Evidence(*krylov.evidence(data, config, shared_of(data, config), np.array([m]),
                                          np.array([decay]), probes))


@pytest.mark.parametrize("variant", ["linear", "additive"])
@pytest.mark.parametrize("backend", ["grid", "cg"])
@pytest.mark.parametrize("decay", [0.0, 0.5])
def test_density_with_features_is_the_prior_times_the_dense_marginal_likelihood(featured, variant, backend, decay):
    """Written out from the model: ``w = phi beta + w'``, so ``y`` has covariance ``sigma^2 (Omega +
    level) + s^2 X X^T + sum_c (feature_prior sigma / rms_c)^2 (X phi_c)(X phi_c)^T``, each column
    ``X phi_c`` (``c`` over features and effect blocks) divided by its root mean square."""
    config = ModelConfig(memory="geometric", variant=variant, features=True)
    evidence_of = dense_evidence_of if backend == "grid" else cg_evidence
    for m in range(featured.n_tests):
        for sigma, scale in [(0.05, 0.02), (0.02, 0.3)]:
            got = grid_log_density(featured, config, m, decay, sigma, scale, evidence_of=evidence_of)
            assert got == pytest.approx(written_out_log_density(featured, config, m, decay, sigma, scale), abs=1e-6)


def written_out_log_density(data, config, m, decay, sigma, scale):
    """The log prior of ``(sigma, scale, decay)`` plus the log likelihood of test example ``m``'s
    changes under the dense covariance of the docstring above (without ``s^2 X X^T`` where the
    config has no residual effects)."""
    x = dense_features(data, m, decay, config.variant)
    blocks = 2 if config.variant == "linear" else 1
    columns = np.concatenate([x[:, b * data.n_train:(b + 1) * data.n_train] @ data.features[m]
                              for b in range(blocks)], axis=1)
    columns = columns / np.sqrt(np.mean(columns**2, axis=0))
    level = level_feature(data, m, decay) if config.has_a_location else np.zeros(len(x))
    cov = sigma**2 * (step_covariance(data, config) + grid.LEVEL_PRIOR**2 * np.outer(level, level)
                      + config.feature_prior**2 * columns @ columns.T)
    if config.residual_effects:
        cov = cov + scale**2 * x @ x.T
    log_lik = stats.multivariate_normal(np.zeros(len(cov)), cov).logpdf(data.change[:, :, m].reshape(-1))
    log_prior = (stats.halfnorm(scale=config.noise_prior).logpdf(sigma) + np.log(sigma)
                 + stats.halfnorm(scale=config.effect_scale_prior).logpdf(scale) + np.log(scale)
                 + stats.beta(1, config.memory_prior).logpdf(decay))
    return log_lik + log_prior


def dense_evidence_of(data, config, m, decay):
    return grid.dense_evidence(grid.pair_statistics(data, config, np.array([m]), np.array([decay])))


def test_without_features_or_with_none_the_fit_is_the_one_without_the_feature_prior():
    """Features switched off, or zero features, leave the fit exactly as it was."""
    runs, _ = model_runs(n_train=10, n_tests=2, n_runs=6, n_steps=20, batch_size=2, seed=2)
    rng = np.random.default_rng(0)
    plain = grid.run_grid(model_data(runs), ModelConfig(), num_draws=20, progress=False).draws
    off = grid.run_grid(model_data(runs.with_features(rng.normal(size=(10, 3)))), ModelConfig(), num_draws=20,
                        progress=False).draws
    empty = grid.run_grid(model_data(runs.with_features(np.zeros((10, 0)))), ModelConfig(features=True),
                          num_draws=20, progress=False).draws
    for other in (off, empty):
        assert set(other) == set(plain)
        for name in plain:
            np.testing.assert_array_equal(other[name], plain[name])


def featured_runs(n_train=40, n_unseen=8, n_tests=2, n_runs=16, n_steps=40, batch_size=4, beta=(0.02, -0.01),
                  residual=0.002, noise=0.01, seed=0):
    """Runs whose additive effects are ``B = phi beta + residual`` (standardised ``phi [n_train, 2]``) and
    whose multiplicative ones are small noise, with a decay every example shares (the step
    component); the last ``n_unseen`` examples appear in no run. Returns ``(runs, B, phi)``."""
    rng = np.random.default_rng(seed)
    phi = rng.normal(size=(n_train, len(beta)))
    phi = (phi - phi.mean(0)) / phi.std(0)
    b = phi @ np.array(beta) + residual * rng.normal(size=(n_tests, n_train))
    a = 0.002 * rng.normal(size=(n_tests, n_train))
    drift = -0.01 + np.cumsum(rng.normal(0.0, 0.001, (n_tests, n_steps)), axis=1)
    curricula = random_curricula(n_runs, n_steps, batch_size, n_train - n_unseen, rng)
    losses = _roll(a, b, drift, curricula, np.ones((n_runs, n_tests)), noise * rng.normal(size=(n_runs, n_steps, n_tests)))
    return Runs.create(curricula, losses, n_train=n_train, train_features=phi), b, phi


RUNNERS = {"bayes-grid": grid.run_grid, "bayes-cg": krylov.run_cg, "bayes-svi": inference.run_svi}


@pytest.mark.parametrize("method", list(RUNNERS))
def test_feature_coefficients_and_unseen_examples_follow_the_generating_process(method):
    """The coefficients the runs were generated with are recovered; an example no run used gets
    ``B = phi beta`` plus the residual's prior spread: its draws, less the regression part, are
    ``N(0, s^2)`` draw by draw, and its posterior mean tracks the generating effect, which the fit
    without features cannot know (there it is the prior's 0)."""
    runs, b, phi = featured_runs()
    posterior = bsf.fit(runs, method=method, guard=False, memory="none", num_draws=300, progress=False)
    assert posterior.config.features and "features_off" not in posterior.info
    scale = posterior.scale
    data = model_data(runs)
    fit = RUNNERS[method](data, ModelConfig(memory="none", features=True), num_draws=300, progress=False)
    beta = fit.draws["feature_B"][0]  # [draws, tests, 2], standardised loss units
    truth = np.array([0.02, -0.01])[None, :] / scale[:, None]
    mean, sd = beta.mean(0), beta.std(0)
    assert np.all(np.abs(mean - truth) < 4 * sd + 0.1 * np.abs(truth)), (mean, truth, sd)
    assert np.all(sd < 0.25 * np.abs(truth))
    unseen = np.arange(32, 40)
    b_draws = fit.draws["B"][0][:, :, unseen]  # [draws, tests, unseen]
    regression = np.einsum("ik,dmk->dmi", data.features[0][unseen], beta)
    z = (b_draws - regression) / fit.draws["effect_scale"][0][..., None]
    assert stats.kstest(z.reshape(-1), "norm").pvalue > 1e-3 and abs(z.std() - 1.0) < 0.04, z.std()
    estimate = posterior.additive_effects().mean(0)[:, unseen]  # loss units
    assert np.corrcoef(estimate.reshape(-1), b[:, unseen].reshape(-1))[0, 1] > 0.9
    blind = bsf.fit(runs, method=method, guard=False, memory="none", features=False, num_draws=100, progress=False)
    unknown = blind.additive_effects().mean(0)[:, unseen]
    assert np.abs(unknown).max() < 0.2 * np.abs(b[:, unseen]).max()


@pytest.mark.filterwarnings("ignore:SVI")
def test_backends_without_the_feature_prior_refuse_it_or_say_they_left_it_out():
    runs, _, _ = featured_runs(n_train=12, n_unseen=2, n_runs=6, n_steps=10)
    with pytest.raises(InputError, match=r"features: bayes-exact has no feature prior \(bayes-grid, bayes-cg, "
                                         r"bayes-svi and bayes-nuts have\)"):
        bsf.fit(runs, method="bayes-exact", features=True, guard=False, progress=False)
    posterior = bsf.fit(runs, method="bayes-exact", guard=False, num_warmup=5, num_samples=5, progress=False)
    assert "bayes-exact has no feature prior" in posterior.info["features_off"]
    assert not posterior.config.features
    with pytest.raises(InputError, match="guide=conditional has no feature prior"):
        bsf.fit(runs, method="bayes-svi", guide="conditional", features=True, guard=False, num_steps=5, progress=False)
    posterior = bsf.fit(runs, method="bayes-svi", guide="conditional", guard=False, num_steps=5, num_draws=5,
                        progress=False)
    assert "conditional guide has no feature prior" in posterior.info["features_off"]
    assert not posterior.config.features
    assert bsf.fit(runs, method="bayes-svi", guard=False, num_steps=5, num_draws=5, progress=False).config.features
    plain = Runs.create(runs.curricula, runs.losses, runs.n_train)
    with pytest.raises(InputError, match="features=true: the runs carry no 'train_features'"):
        bsf.fit(plain, method="bayes-grid", features=True, guard=False, progress=False)


def test_random_features_leave_held_out_error_unchanged():
    """Uninformative features cost nothing: on runs whose effects have no feature structure, the
    posterior mean's roll-outs of fresh runs are as good with three random features as without."""
    runs, _ = model_runs(n_train=30, n_tests=3, n_runs=28, n_steps=40, batch_size=4, seed=8)
    train, fresh = runs.split(12)
    random = train.with_features(np.random.default_rng(1).normal(size=(30, 3)))
    errors = []
    for candidate in (train, random):
        posterior = bsf.fit(candidate, method="bayes-grid", guard=False, memory="none", num_draws=100, progress=False)
        predicted = posterior.simulate(fresh.curricula, fresh.initial_losses)
        errors.append(float(np.mean((predicted - fresh.losses) ** 2)))
    assert errors[1] == pytest.approx(errors[0], rel=0.05)


def test_features_travel_with_the_runs_and_bad_ones_are_named(tmp_path):
    runs, _ = model_runs(n_train=6, n_tests=3, n_runs=4, n_steps=5, batch_size=2, seed=1)
    rng = np.random.default_rng(0)
    featured = runs.with_features(rng.normal(size=(6, 2)), rng.normal(size=(3, 6, 1)))
    featured.save(tmp_path / "runs.npz")
    loaded = Runs.load(tmp_path / "runs.npz")
    np.testing.assert_array_equal(loaded.train_features, featured.train_features)
    np.testing.assert_array_equal(loaded.pair_features, featured.pair_features)
    assert loaded.n_features == 3 and "features=3" in repr(loaded)
    picked = loaded.select_tests([2, 0]).select_runs([1, 3]).first_steps(3)
    np.testing.assert_array_equal(picked.pair_features, featured.pair_features[[2, 0]])
    np.testing.assert_array_equal(picked.train_features, featured.train_features)
    with pytest.raises(RunsFormatError, match=r"'train_features' must have shape \[n_train, k\]"):
        runs.with_features(np.zeros((5, 2)))
    with pytest.raises(RunsFormatError, match=r"'pair_features' must have shape \[tests, n_train, j\]"):
        runs.with_features(pair_features=np.zeros((6, 3, 1)))
    with pytest.raises(RunsFormatError, match="'train_features' holds a non-finite value at \\[1, 0\\]"):
        runs.with_features(np.where(np.arange(12).reshape(6, 2) == 2, np.nan, 1.0))
    standardised = model_data(featured).features
    assert standardised.shape == (3, 6, 3)
    np.testing.assert_allclose(standardised.mean(1), 0.0, atol=1e-12)
    np.testing.assert_allclose(standardised.std(1), 1.0)


def test_effects_the_features_explain_leave_the_noise_and_residual_scales_sane():
    """Effects exactly ``phi beta`` (no residual), a fifth of the pool in no run: the residual scale's
    posterior runs towards 0, and the noise scale stays the generating one."""
    runs, _, _ = featured_runs(n_train=60, n_unseen=12, n_runs=24, n_steps=60, residual=0.0, seed=4)
    fit = grid.run_grid(model_data(runs), ModelConfig(memory="none", features=True), num_draws=200, progress=False)
    sigma = fit.draws["noise_scale"][0] * model_data(runs).scale  # loss units; generated with 0.01
    assert np.all((sigma > 0.008) & (sigma < 0.012))
    assert np.all(fit.draws["effect_scale"][0] < 0.01)
    assert np.all(np.isfinite(fit.draws["B"])) and np.abs(fit.draws["B"]).max() < 0.2


def test_refined_grids_stay_in_the_log_tau_range_and_rounding_in_the_null_space_is_dropped():
    """Where the posterior runs to an end of ``log tau``, the next grid moves that way but stops at
    :data:`LOG_TAU_RANGE`: at ``tau = e^33`` rounding errors of ``b`` along the Gram's null space
    (examples no run used), divided by ``tau^-2``, drove the noise scale to 1e-152 on a real set. The
    dense evidence drops those components."""
    points = np.tile(np.linspace(*grid.LOG_TAU_RANGE, 29), (2, 1))
    log_tau_density = np.stack([points[0], -points[1]])  # test 0 rises to the top end, test 1 to the bottom
    log_density = np.broadcast_to(log_tau_density[:, None, :, None], (2, 1, 29, 3))
    coarse = grid._Grid(np.zeros((2, 1)), points, np.tile(np.linspace(-0.1, 0.1, 3), (2, 1)))
    refined = grid._refined(coarse, log_density, (1, 10, 3))
    assert refined.log_tau.max() <= grid.LOG_TAU_RANGE[1] and refined.log_tau.min() >= grid.LOG_TAU_RANGE[0]
    assert refined.log_tau[0].max() > 10 and refined.log_tau[1].min() < -14  # each reaches its end
    eigenvalues = np.array([[0.0, 1e-15, 2.0, 5.0]])
    stats = grid.GridStats(eigenvalues, None, np.array([[1e-9, 1e-9, 0.3, 0.4]]), np.array([1.0]),
                           *(np.zeros((1, 0, 4)), np.zeros((1, 0)), np.zeros((1, 0, 0)), np.zeros(1), np.ones(1),
                             np.zeros((1, 0))))
    np.testing.assert_allclose(grid.dense_evidence(stats).quad_weights, [[0.0, 0.0, 0.09, 0.16]])
