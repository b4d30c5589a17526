"""The run state (``-o run_state``, on by default where bayes-grid runs its guard): exact integration against dense Gaussian algebra, recovery
and counterfactuals against the generating process, and its plumbing (files, slices, refusals)."""

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from bayes_simfluence.attributions import with_average_example
from bayes_simfluence.bayes import grid
from bayes_simfluence.bayes.blocks import fit_in_blocks
from bayes_simfluence.bayes.data import model_data
from bayes_simfluence.bayes.methods import fit_bayes, resolve_run_state
from bayes_simfluence.bayes.model import ModelConfig, drift_bands
from bayes_simfluence.bayes.posterior import BayesianSimfluence
from bayes_simfluence.bayes.run_state import StateTrajectory, estimate_run_state, host_features, host_path
from bayes_simfluence.methods import FitContext
from bayes_simfluence.runs import Runs
from bayes_simfluence.synthetic import random_curricula
from bayes_simfluence.validation import InputError

N_TRAIN, N_TESTS, BATCH, STEPS = 24, 8, 4, 12
TRUE_RECENCY = 0.5


def labels() -> np.ndarray:
    return np.where(np.arange(N_TRAIN) % 2 == 0, 1.0, -1.0)


def generate(curricula: np.ndarray, rng: np.random.Generator | None, effects: np.ndarray) -> np.ndarray:
    """``[runs, steps + 1, tests]`` losses of a process with a shared run state: every batch pushes
    ``z`` by its label sum (forgotten at :data:`TRUE_RECENCY`); test example ``m`` of class ``y_m``
    moves by ``0.03 y_m dz + 0.01 d(z^2)`` besides independent per-example effects and a common
    decrease. ``rng=None``: no noise (the expected trajectory)."""
    y, test_class = labels(), np.where(np.arange(N_TESTS) % 2 == 0, 1.0, -1.0)
    z = host_path(curricula, y, TRUE_RECENCY)
    n_runs = len(curricula)
    losses = np.ones((n_runs, STEPS + 1, N_TESTS))
    filled = np.where(curricula >= 0, curricula, 0)
    for t in range(STEPS):
        effect = effects[:, filled[:, t]].sum(-1).T  # [runs, tests]
        state = 0.03 * test_class * np.diff(z[:, t:t + 2], axis=1) + 0.01 * np.diff(z[:, t:t + 2] ** 2, axis=1)
        noise = 0.0 if rng is None else rng.normal(0.0, 0.005, (n_runs, N_TESTS))
        losses[:, t + 1] = losses[:, t] + effect + state - 0.02 + noise
    return losses


@pytest.fixture(scope="module")
def state_world():
    rng = np.random.default_rng(3)
    effects = rng.normal(0.0, 0.01, (N_TESTS, N_TRAIN))
    train_curricula = random_curricula(30, STEPS, BATCH, N_TRAIN, rng)
    new_curricula = random_curricula(40, STEPS, BATCH, N_TRAIN, rng)
    train = Runs.create(train_curricula, generate(train_curricula, rng, effects), n_train=N_TRAIN)
    return train, new_curricula, generate(new_curricula, None, effects)


def test_estimate_recovers_the_generating_direction_and_recency(state_world):
    train = state_world[0]
    state = estimate_run_state(train, model_data(train).scale)
    assert abs(np.corrcoef(state.direction, labels())[0, 1]) > 0.9
    assert abs(state.recency - TRUE_RECENCY) <= 0.15
    assert np.sqrt(np.mean(state.direction**2)) == pytest.approx(1.0)


@pytest.mark.slow
def test_run_state_predicts_the_generating_mean_loss_where_the_plain_model_cannot(state_world):
    """Counterfactual oracle: the generating process's expected mean final loss on 40 new curricula."""
    train, new_curricula, expected = state_world
    truth = expected[:, -1].mean(-1)
    initial = expected[:, 0]
    correlation = {}
    for run_state in (False, True):
        posterior = fit_bayes("grid", train, {"run_state": run_state, "guard": False, "progress": False})
        predicted = posterior.simulate(new_curricula, initial)[:, -1].mean(-1)
        correlation[run_state] = np.corrcoef(predicted, truth)[0, 1]
    # 0.94 with the common level of a fixed at 0; learned, it shares the across-run variation of
    # L_{t-1} with the state (mu_a -0.03 here, where the truth has none): 0.88, the plain model 0.45
    assert correlation[True] > 0.85
    assert correlation[True] > correlation[False] + 0.2, correlation


def _dense_setup(seed: int = 0):
    """Small runs for the dense oracle: ``(data, config, state, X [n, features], F [n, 3] scaled, y [n])``
    of test example 0 at memory decay 0.3; ``F``'s first column is the common level's feature
    ``L_{t-1} sum_i m_ti`` (unit root mean square), then the two state features."""
    rng = np.random.default_rng(seed)
    effects = rng.normal(0.0, 0.01, (N_TESTS, N_TRAIN))
    curricula = random_curricula(6, STEPS, BATCH, N_TRAIN, rng)
    runs = Runs.create(curricula, generate(curricula, rng, effects), n_train=N_TRAIN)
    data = model_data(runs)
    config = ModelConfig(memory="geometric", run_state=True, state_prior=3.0)
    state = estimate_run_state(runs, data.scale)
    decay = 0.3
    counts = grid.dense_counts(curricula, N_TRAIN)
    memory = np.zeros_like(counts)
    for t in range(STEPS):  # m_t = (1 - decay) n_t + decay m_{t-1}
        memory[:, t] = (1 - decay) * counts[:, t] + decay * (memory[:, t - 1] if t else 0.0)
    previous = data.previous[..., 0]
    x = np.concatenate([previous[..., None] * memory, memory], axis=-1).reshape(-1, 2 * N_TRAIN)
    level = (previous * memory.sum(-1)).reshape(-1)
    f = np.column_stack([level / np.sqrt(np.mean(level**2)),
                         (host_features(curricula, state) / state.feature_scale).reshape(-1, 2)])
    return data, config, state, decay, x, f, data.change[..., 0].reshape(-1)


def _drift_covariance(config: ModelConfig) -> np.ndarray:
    """``[n, n]`` covariance of the step component over the flattened (run, step) rows, per sigma^2:
    ``d_1 ~ N(0, kappa^2)``, increments ``N(0, rho^2)``."""
    steps = np.arange(STEPS)
    per_step = config.drift_initial**2 + config.drift_smoothness**2 * np.minimum.outer(steps, steps)
    return np.tile(per_step, (6, 6))


def test_integrated_state_matches_the_dense_marginal_likelihood():
    data, config, state, decay, x, f, y = _dense_setup()
    stats = grid.pair_statistics(data, config, np.array([0]), np.array([decay]), state=state)
    _, _, logdet_omega = drift_bands(data.n_runs, data.n_steps, config)
    logdet = logdet_omega + stats.nuisance_logdet[0]
    n = len(y)
    for sigma, scale in ((0.01, 0.02), (0.05, 0.005)):
        e, p = stats.eigenvalues[0], stats.projected[0]
        tau2 = (scale / sigma) ** 2
        quadratic = stats.target_sq[0] - np.sum(p**2 / (e + 1.0 / tau2))
        from_stats = -0.5 * (n * np.log(2 * np.pi * sigma**2) + logdet + np.sum(np.log1p(tau2 * e))
                             + quadratic / sigma**2)
        priors = np.array([grid.LEVEL_PRIOR, config.state_prior, config.state_prior])
        covariance = (scale**2 * x @ x.T + sigma**2 * (np.eye(n) + _drift_covariance(config)
                                                        + (f * priors**2) @ f.T))
        dense = multivariate_normal(np.zeros(n), covariance).logpdf(y)
        assert from_stats == pytest.approx(dense, abs=1e-6 * abs(dense))


def test_state_draws_match_the_exact_joint_posterior():
    data, config, state, decay, x, f, y = _dense_setup(seed=1)
    sigma, scale = 0.01, 0.02
    n = len(y)
    omega = np.eye(n) + _drift_covariance(config)
    features = np.concatenate([x, f], axis=1)
    prior_precision = np.concatenate([np.full(x.shape[1], 1 / scale**2), [1 / (sigma * grid.LEVEL_PRIOR)**2],
                                      np.full(2, 1 / (sigma * config.state_prior)**2)])
    solved = np.linalg.solve(omega, features)
    covariance = np.linalg.inv(features.T @ solved / sigma**2 + np.diag(prior_precision))
    mean = covariance @ (solved.T @ y) / sigma**2
    stats = grid.pair_statistics(data, config, np.array([0]), np.array([decay]), vectors=True, state=state)
    n_draws = 4000
    which = np.zeros(n_draws, dtype=int)
    sigmas, scales = np.full(n_draws, sigma), np.full(n_draws, scale)
    import jax
    effects = grid._draw_effects(jax.random.PRNGKey(0), stats, which, sigmas, scales)
    coefficients = grid.draw_nuisance(np.random.default_rng(0), stats, which, effects, sigmas, config)
    draws = np.concatenate([effects, coefficients], axis=1)
    sd = np.sqrt(np.diag(covariance))
    for k in (0, N_TRAIN, 2 * N_TRAIN, 2 * N_TRAIN + 1, 2 * N_TRAIN + 2):  # a', B, the level, both state coefficients
        assert abs(draws[:, k].mean() - mean[k]) < 5 * sd[k] / np.sqrt(n_draws)
        assert draws[:, k].std() == pytest.approx(sd[k], rel=0.1)
    exact_corr = covariance[2 * N_TRAIN, N_TRAIN] / (sd[2 * N_TRAIN] * sd[N_TRAIN])
    assert np.corrcoef(draws[:, 2 * N_TRAIN], draws[:, N_TRAIN])[0, 1] == pytest.approx(exact_corr, abs=0.06)


@pytest.fixture(scope="module")
def state_posterior(state_world):
    return fit_bayes("grid", state_world[0], {"run_state": True, "guard": False, "progress": False,
                                              "num_draws": 40})


def test_roll_out_adds_the_state_term_of_each_draw(state_posterior, state_world):
    """The posterior's roll-out against the recurrence written out in NumPy for one draw."""
    curricula, initial = state_world[1][:3], state_world[2][:3, 0]
    draw = state_posterior.parameter_draws(1, seed=5)
    trajectory = state_posterior.simulate_draws(curricula, initial, 1, seed=5, predictive="parameters")[0]
    features = host_features(curricula, state_posterior.run_state)  # [runs, steps, 2]
    filled = np.where(curricula >= 0, curricula, 0)
    loss, memory_a, memory_b = initial.copy(), 0.0, 0.0
    decay = draw["decay"][0]
    for t in range(STEPS):
        memory_a = (1 - decay) * draw["a"][0][:, filled[:, t]].sum(-1).T + decay * memory_a
        memory_b = (1 - decay) * draw["B"][0][:, filled[:, t]].sum(-1).T + decay * memory_b
        loss = loss + memory_a * loss + memory_b + draw["drift"][0][:, t] + features[:, t] @ draw["state"][0].T
        np.testing.assert_allclose(trajectory[:, t + 1], loss, rtol=1e-9, atol=1e-12)


def test_state_survives_save_load_slices_and_the_average_example(state_posterior, state_world, tmp_path):
    curricula, initial = state_world[1][:4], state_world[2][:4, 0]
    expected = state_posterior.simulate(curricula, initial)
    state_posterior.save(tmp_path / "posterior.nc")
    loaded = BayesianSimfluence.load(tmp_path / "posterior.nc")
    np.testing.assert_allclose(loaded.simulate(curricula, initial), expected)
    assert loaded.state_recency == state_posterior.state_recency
    sliced = state_posterior.select_tests(np.array([1, 3]))
    np.testing.assert_allclose(sliced.simulate(curricula, initial[:, [1, 3]]), expected[..., [1, 3]])
    averaged = with_average_example(state_posterior)
    assert averaged.state_direction[-1] == pytest.approx(state_posterior.state_direction.mean())
    np.testing.assert_allclose(averaged.simulate(curricula, initial), expected)


def test_run_state_is_refused_where_it_does_not_exist(state_world):
    train = state_world[0]
    with pytest.raises(InputError, match="bayes-svi has no run state"):
        fit_bayes("svi", train, {"run_state": True, "progress": False})
    with pytest.raises(InputError, match="without test blocks"):
        fit_in_blocks("bayes-grid", train, FitContext(options={"run_state": "true"}), blocks=2)
    with pytest.raises(InputError, match="at least 5 runs"):
        estimate_run_state(train.select_runs(np.arange(4)), model_data(train).scale)


def test_auto_turns_the_state_on_exactly_where_bayes_grid_runs_its_guard(state_world):
    train = state_world[0]  # 30 runs
    assert resolve_run_state("grid", train, "auto", True, 4) == (True, None)
    assert resolve_run_state("grid", train, " AUTO ", True, 4) == (True, None)
    assert resolve_run_state("grid", train.select_runs(np.arange(8)), "auto", True, 4) == (True, None)
    for method, runs, use_guard, folds, reason in (("svi", train, True, 4, "bayes-svi has no run state"),
                                            ("nuts", train, True, 4, "bayes-nuts has no run state"),
                                            ("grid", train, False, 4, "no guard"),
                                            ("grid", train.select_runs(np.arange(7)), True, 4, "7 runs, fewer than the guard needs (8)"),
                                            ("cg", train.select_runs(np.arange(8)), True, 2,
                                             "the guard's cross-fits see 4 runs, fewer than the run state needs (5)")):
        on, why = resolve_run_state(method, runs, "auto", use_guard, folds)
        assert not on and reason in why
    assert resolve_run_state("grid", train, "false", True, 4) == (False, None)  # explicit choices stand
    assert resolve_run_state("svi", train, True, True, 4) == (True, None)  # (and are refused later, below)
    with pytest.raises(InputError, match="run_state"):
        resolve_run_state("grid", train, "sometimes", True, 4)


def test_fit_command_says_what_run_state_it_estimated(state_world, tmp_path, capsys):
    from bayes_simfluence.cli import main

    train_path = tmp_path / "train.npz"
    state_world[0].save(train_path)
    assert main(["fit", "--train", str(train_path), "--method", "bayes", "-o", "run_state=true", "-o", "guard=false",
                 "-o", "num_draws=20", "-o", "progress=false", "--out", str(tmp_path / "posterior.nc")]) == 0
    out = capsys.readouterr().out
    assert "fitted 'bayes' (as bayes-grid: " in out and "run state: recency 0." in out
    # by default (auto), without the guard: off, and fit says why
    assert main(["fit", "--train", str(train_path), "--method", "bayes-grid", "-o", "guard=false", "-o", "num_draws=20",
                 "-o", "progress=false", "--out", str(tmp_path / "plain.nc")]) == 0
    assert "run state: off (no guard: -o guard=false)" in capsys.readouterr().out
    assert BayesianSimfluence.load(tmp_path / "plain.nc").state is None


def test_state_only_model_predicts_a_process_driven_by_the_state_alone():
    """Oracle: the generating process without per-example effects, on 40 new curricula."""
    rng = np.random.default_rng(11)
    no_effects = np.zeros((N_TESTS, N_TRAIN))
    curricula = random_curricula(30, STEPS, BATCH, N_TRAIN, rng)
    new_curricula = random_curricula(40, STEPS, BATCH, N_TRAIN, rng)
    expected = generate(new_curricula, None, no_effects)
    model = StateTrajectory().fit(Runs.create(curricula, generate(curricula, rng, no_effects), n_train=N_TRAIN))
    predicted = model.simulate(new_curricula, expected[:, 0])
    spread = expected[:, -1].std(axis=0)  # [tests] across curricula
    # the plug-in recency (0.55 here, true 0.5) is most of the error; the mean trajectory would
    # miss by the whole spread and not correlate at all
    assert np.all(np.sqrt(((predicted[:, -1] - expected[:, -1]) ** 2).mean(axis=0)) < 0.35 * spread)
    assert np.corrcoef(predicted[:, -1].mean(-1), expected[:, -1].mean(-1))[0, 1] > 0.95


@pytest.mark.slow
def test_guarded_fit_stacks_against_the_state_only_model_and_its_draws_average_to_its_mean(state_world, tmp_path):
    train, new_curricula, expected = state_world
    posterior = fit_bayes("grid", train, {"guard_folds": 2, "num_draws": 40, "progress": False})  # the state by default
    assert "state-only" in posterior.info["guard"]["blind"] and posterior.blind_state.shape == (N_TESTS, 2)
    curricula, initial = new_curricula[:4], expected[:4, 0]
    mean = posterior.simulate(curricula, initial)
    draws = posterior.simulate_draws(curricula, initial, 4000, seed=2, predictive="parameters")
    error = np.abs(draws.mean(0) - mean)
    assert np.all(error <= 6 * draws.std(0) / np.sqrt(len(draws)) + 1e-9)
    posterior.save(tmp_path / "guarded.nc")
    loaded = BayesianSimfluence.load(tmp_path / "guarded.nc")
    np.testing.assert_allclose(loaded.simulate(curricula, initial), mean)
    np.testing.assert_allclose(loaded.select_tests(np.array([2])).simulate(curricula, initial[:, [2]]), mean[..., [2]])
