"""Simulation-based calibration (``experiments/sbc.py``): the generating process is the model, the
truth's own roll-out agrees with the package's, and the rank test tells a calibrated posterior
from a too narrow or too wide one (exactly on a conjugate model; on the SVI path's real draws)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayes_simfluence.bayes.model import ModelConfig, step_mean
from bayes_simfluence.synthetic import random_curricula
from experiment_module import load_experiment


sbc = load_experiment("sbc")
CONFIG = ModelConfig(memory="geometric", **sbc.PRIOR_OPTIONS)
SIZES = sbc.Sizes(n_train=8, n_tests=2, n_runs=3, n_steps=7, batch_size=3)


@pytest.mark.parametrize("memory", ["geometric", "none"])
def test_generated_changes_are_the_teacher_forced_mean_plus_the_noise(memory):
    config = ModelConfig(memory=memory, **sbc.PRIOR_OPTIONS)
    params = {k: v[0] for k, v in sbc.prior_draws(config, SIZES, 1, jax.random.PRNGKey(3)).items()}
    assert ("memory_decay" in params) == (memory == "geometric")
    rng = np.random.default_rng(0)
    curricula = random_curricula(SIZES.n_runs, SIZES.n_steps, SIZES.batch_size, SIZES.n_train, rng, empty_fraction=0.3)
    noise = sbc.step_noise(params["noise_scale"], config, (SIZES.n_runs, SIZES.n_steps), rng)
    losses = sbc.generate_losses(params, curricula, np.ones((SIZES.n_runs, SIZES.n_tests)), noise)
    with jax.enable_x64(True):
        decay = jnp.asarray(params["memory_decay"]) if memory == "geometric" else None
        mean = step_mean(jnp.asarray(params["a"]), jnp.asarray(params["B"]), jnp.asarray(params["drift"]),
                         jnp.asarray(curricula), jnp.asarray(losses[:, :-1]), decay)
    np.testing.assert_allclose(np.diff(losses, axis=1) - np.asarray(mean), noise, rtol=0, atol=1e-12)


def test_data_are_on_the_standardised_scale_from_one():
    params = {k: v[0] for k, v in sbc.prior_draws(CONFIG, SIZES, 1, jax.random.PRNGKey(0)).items()}
    data, losses, state = sbc.simulate_data(params, CONFIG, SIZES, np.random.default_rng(0))
    assert state is None and "state" not in params
    np.testing.assert_array_equal(data.scale, 1.0)
    np.testing.assert_array_equal(losses[:, 0], 1.0)
    np.testing.assert_allclose(data.previous[:, 1:], losses[:, 1:-1])
    np.testing.assert_allclose(data.change, np.diff(losses, axis=1))


def test_truth_roll_out_agrees_with_the_package_roll_out_of_the_same_parameters():
    params = {k: v[0] for k, v in sbc.prior_draws(CONFIG, SIZES, 1, jax.random.PRNGKey(1)).items()}
    pair = random_curricula(2, SIZES.n_steps, SIZES.batch_size, SIZES.n_train, np.random.default_rng(2))
    truth = sbc.true_decisions(params, pair)
    drawn = sbc.drawn_decisions({k: v[None] for k, v in params.items()}, pair)
    for name in ("final_loss", "paired_difference"):
        np.testing.assert_allclose(drawn[name][0], truth[name], rtol=1e-12, atol=1e-12)
    assert np.all(truth["paired_difference"] != 0)  # the curricula do matter


def test_with_the_run_state_the_generated_changes_carry_its_term_and_both_roll_outs_agree():
    """The generator adds ``g . f_t`` (features of the replication's own state, scaled to root mean
    square 1 over its runs) to each step; the package's roll-out of the same draw, with the state's
    features from ``host_features``, gives the same decisions, and the state changes them."""
    config = ModelConfig(memory="geometric", run_state=True, **sbc.PRIOR_OPTIONS)
    params = {k: v[0] for k, v in sbc.prior_draws(config, SIZES, 1, jax.random.PRNGKey(4)).items()}
    params["noise_scale"] = np.full(SIZES.n_tests, 0.05)  # a visible state term (g scales with sigma)
    data, losses, state = sbc.simulate_data(params, config, SIZES, np.random.default_rng(5))
    assert params["state"].shape == (SIZES.n_tests, 2) and state.recency == sbc.STATE_RECENCY
    assert np.sqrt(np.mean(state.direction**2)) == pytest.approx(1.0)
    scaled = sbc.host_features(data.curricula, state) / state.feature_scale
    np.testing.assert_allclose(np.sqrt((scaled**2).mean(axis=(0, 1))), 1.0)
    plain = sbc.generate_losses(params, data.curricula, np.ones((SIZES.n_runs, SIZES.n_tests)),
                                np.zeros((SIZES.n_runs, SIZES.n_steps, SIZES.n_tests)))
    assert np.abs(losses - plain).max() > 1e-3  # the state and the noise moved the runs
    pair = random_curricula(2, SIZES.n_steps, SIZES.batch_size, SIZES.n_train, np.random.default_rng(6))
    truth = sbc.true_decisions(params, pair, state)
    drawn = sbc.drawn_decisions({k: v[None] for k, v in params.items()}, pair, state)
    without = sbc.true_decisions(params, pair)
    for name in ("final_loss", "paired_difference"):
        np.testing.assert_allclose(drawn[name][0], truth[name], rtol=1e-12, atol=1e-12)
        assert np.all(np.abs(truth[name] - without[name]) > 1e-6)


def _conjugate(n: int, n_draws: int, spread: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """theta ~ N(0, 1), y ~ N(theta, 1): exact posterior N(y / 2, 1 / 2), its draws' spread scaled by ``spread``."""
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal(n)
    y = theta + rng.standard_normal(n)
    draws = y[:, None] / 2 + spread * np.sqrt(0.5) * rng.standard_normal((n, n_draws))
    return theta, draws


def test_ranks_are_uniform_for_exact_draws_and_not_for_too_narrow_or_wide_ones():
    n, n_draws = 1000, sbc.N_DRAWS
    exact = sbc.uniformity(sbc.ranks(*_conjugate(n, n_draws, 1.0), np.random.default_rng(0)), n_draws)
    assert exact["p_value"] > 0.01 and sbc.reading(exact) == "uniform within noise", exact
    narrow = sbc.uniformity(sbc.ranks(*_conjugate(n, n_draws, 0.5), np.random.default_rng(0)), n_draws)
    assert narrow["p_value"] < 1e-6 and "too narrow" in sbc.reading(narrow), narrow
    wide = sbc.uniformity(sbc.ranks(*_conjugate(n, n_draws, 2.0), np.random.default_rng(0)), n_draws)
    assert wide["p_value"] < 1e-6 and "too wide" in sbc.reading(wide), wide
    assert sum(exact["counts"]) == n


def test_ranks_count_draws_below_and_break_ties_at_random():
    draws = np.array([[0.0, 1.0, 1.0, 1.0, 2.0]])
    np.testing.assert_array_equal(sbc.ranks(np.array([5.0]), draws, np.random.default_rng(0)), [5])
    np.testing.assert_array_equal(sbc.ranks(np.array([-1.0]), draws, np.random.default_rng(0)), [0])
    tied = [sbc.ranks(np.array([1.0]), draws, np.random.default_rng(s))[0] for s in range(200)]
    assert set(tied) == {1, 2, 3, 4}
    with pytest.raises(ValueError, match="equal bins"):
        sbc.rank_counts(np.arange(10), 10)
    lo, hi = sbc.uniform_band(600)
    assert lo < 60 < hi


@pytest.mark.slow
def test_sbc_of_the_default_path_passes_and_detects_a_deliberately_narrowed_posterior():
    """60 replications of ``-m bayes``'s path at this size, bayes-grid (about 20 s on 2 CPU cores):
    the ranks of every quantity (hyperparameters, effects, decisions) pass the uniformity test,
    and the same draws of the paired difference shrunk to half their spread around their mean
    fail it, piled at the ends. (SVI's guides fail it: ``experiments/results/sbc.md``.)"""
    replications = 60
    config, fit_kwargs = sbc.parse_options({**sbc.PRIOR_OPTIONS, "num_draws": sbc.N_DRAWS}, "grid")
    fit_kwargs.pop("progress")
    truth, draws, infos = sbc.run_sbc(replications, config, {**fit_kwargs, "method": "grid"}, progress=False)
    assert len(infos) == replications and all(np.isfinite(info["max_abs_loss"]) for info in infos)
    assert max(info["edge_mass"] for info in infos) < 1e-3
    assert set(truth) == {"noise_scale", "effect_scale", "memory_decay", "a[0]", "B[0]", "a[1]", "B[1]",
                          "a[0]-mean", "B[0]-mean", "a[1]-mean", "B[1]-mean", "final_loss", "paired_difference"}
    threshold = sbc.LEVEL / len(truth)
    results = sbc.summarise(truth, draws, sbc.N_DRAWS)
    assert all(q["p_value"] > threshold for q in results.values()), \
        {k: (q["p_value"], q["reading"]) for k, q in results.items()}
    name = "paired_difference"
    assert draws[name].shape == (replications, sbc.N_DRAWS, sbc.Sizes().n_tests)
    mean = draws[name].mean(1, keepdims=True)
    narrowed = sbc.summarise({name: truth[name]}, {name: mean + 0.5 * (draws[name] - mean)}, sbc.N_DRAWS)[name]
    assert sum(narrowed["counts"]) == replications * sbc.Sizes().n_tests
    assert narrowed["p_value"] < threshold and "too narrow" in narrowed["reading"], narrowed


@pytest.mark.slow
def test_sbc_of_bayes_grid_with_the_run_state_passes_given_its_direction_and_recency():
    """60 replications with ``-o run_state=true`` (the state's direction and recency handed to the
    fit; about 30 s): every quantity, the state's coefficients and the decisions that carry their
    term included, passes the uniformity test."""
    replications = 60
    config, fit_kwargs = sbc.parse_options({**sbc.PRIOR_OPTIONS, "num_draws": sbc.N_DRAWS, "run_state": True}, "grid")
    fit_kwargs.pop("progress")
    truth, draws, _ = sbc.run_sbc(replications, config, {**fit_kwargs, "method": "grid"}, progress=False)
    assert {"g1", "g2", "final_loss", "paired_difference"} <= set(truth)
    threshold = sbc.LEVEL / len(truth)
    results = sbc.summarise(truth, draws, sbc.N_DRAWS)
    assert all(q["p_value"] > threshold for q in results.values()), \
        {k: (q["p_value"], q["reading"]) for k, q in results.items()}
