"""The fitted Bayesian simulator: recovery, calibration, trajectories, ArviZ, save/load, errors."""

import dataclasses

import numpy as np
import pytest

from bayes_simfluence.bayes import diagnostics, posterior_io
from bayes_simfluence.bayes.methods import fit_bayes, parse_options
from bayes_simfluence.bayes.posterior import MEAN_DRAWS
from bayes_simfluence.bayes.model import step_mean
from bayes_simfluence.bayes.synthetic import model_runs
from bayes_simfluence.methods import FitContext, fit_method, load_simulator
from bayes_simfluence.metrics import coverage
from bayes_simfluence.runs import RunsFormatError


@pytest.fixture(scope="module")
def problem():
    runs, truth = model_runs(n_train=20, n_tests=3, n_runs=36, n_steps=30, batch_size=4, effect_scale=0.01,
                             noise_scale=0.01, seed=5)
    train, held = runs.split(20)
    posterior = fit_bayes("exact", train, {"progress": False, "num_samples": 200, "guard_folds": 2}, seed=0)
    return train, held, truth, posterior


def test_parameters_are_recovered(problem):
    _, _, truth, posterior = problem
    draws = posterior.parameter_draws()
    for name, true in (("a", truth.a), ("B", truth.b)):
        lower, upper = np.quantile(draws[name], [0.05, 0.95], axis=0)
        inside = ((true >= lower) & (true <= upper)).mean()
        assert inside > 0.8, (name, inside)  # 60 parameters, nominal 90%
    # a + B is the effect at L = 1, well identified even where a and B are not separately
    total_mean = (draws["a"] + draws["B"]).mean(0)
    assert np.corrcoef(total_mean.ravel(), (truth.a + truth.b).ravel())[0, 1] > 0.9
    np.testing.assert_allclose(draws["sigma"].mean(0), truth.sigma, rtol=0.1)
    # the step component absorbs what every batch does on average (effects are deviations from
    # it), so compare the identifiable per-step change averaged over the runs
    train = problem[0]

    def average_change(a, b, drift):
        mean = step_mean(a, b, drift, train.curricula, train.losses[:, :-1])
        return np.asarray(mean).mean(0)

    fitted = average_change(draws["a"].mean(0), draws["B"].mean(0), draws["drift"].mean(0))
    # a per-step average over the runs carries noise sd sigma / sqrt(runs); allow 4 of those
    tolerance = 4 * truth.sigma.max() / np.sqrt(train.n_runs)
    np.testing.assert_allclose(fitted, average_change(truth.a, truth.b, truth.drift), atol=tolerance)


def test_ninety_percent_bands_cover_heldout_runs_drawn_from_the_model(problem):
    _, held, _, posterior = problem
    draws = posterior.simulate_draws(held.curricula, held.initial_losses, 400, seed=1)
    assert 0.85 <= coverage(draws, held.losses, 0.9) <= 0.95
    no_noise = posterior.simulate_draws(held.curricula, held.initial_losses, 400, seed=1, predictive="parameters")
    assert coverage(no_noise, held.losses, 0.9) < coverage(draws, held.losses, 0.9)


def test_trajectories_mean_bands_and_pairing(problem):
    _, held, _, posterior = problem
    curricula, initial = held.curricula[:3], held.initial_losses[:3]
    mean = posterior.simulate(curricula, initial)
    assert mean.shape == (3, held.n_steps + 1, held.n_tests)
    np.testing.assert_allclose(mean[:, 0], initial)
    # the guard's stack mixes draws at random (tests/test_guard.py); the posterior's own draws:
    assert posterior.stacking_weight is not None
    unstacked = dataclasses.replace(posterior, stacking_weight=None)
    every = unstacked.simulate_draws(curricula, initial, posterior.n_draws, seed=4, predictive="parameters")
    assert posterior.n_draws > len(posterior.mean_draw_indices()) == MEAN_DRAWS
    # the mean of 100 stored draws is within Monte Carlo error of the mean over all of them
    spread = every.std(0) / np.sqrt(MEAN_DRAWS)
    assert np.all(np.abs(unstacked.simulate(curricula, initial) - every.mean(0)) <= 4 * spread + 1e-12)
    again = posterior.simulate_draws(curricula, initial, 50, seed=4)
    np.testing.assert_array_equal(again, posterior.simulate_draws(curricula, initial, 50, seed=4))
    shuffled = held.curricula[3:6]
    # paired: another curriculum with the same seed uses the same parameter draws
    np.testing.assert_array_equal(posterior.parameter_draws(50, seed=4)["a"],
                                  posterior.parameter_draws(50, seed=4)["a"])
    difference = posterior.simulate_draws(shuffled, initial, 50, seed=4) - again
    assert difference.shape == again.shape
    bands = posterior.bands(curricula, initial, levels=(0.5, 0.9), n_draws=50, seed=4, runs_per_chunk=2)
    assert np.all(bands.lower[0.9] <= bands.lower[0.5]) and np.all(bands.lower[0.5] <= bands.median)
    assert np.all(bands.median <= bands.upper[0.5]) and np.all(bands.upper[0.5] <= bands.upper[0.9])
    narrow = posterior.bands(curricula, initial, levels=(0.9,), n_draws=50, seed=4, predictive="parameters")
    assert np.mean(narrow.upper[0.9] - narrow.lower[0.9]) < np.mean(bands.upper[0.9] - bands.lower[0.9])
    longer = np.concatenate([curricula, curricula], axis=1)
    assert posterior.simulate_draws(longer, initial, 5).shape == (5, 3, 2 * held.n_steps + 1, held.n_tests)


def test_arviz_conversion_has_named_dims_and_ids(problem):
    train, _, _, posterior = problem
    idata = posterior.to_arviz(train, log_likelihood=True, n_draws=50)
    group = idata.posterior
    assert group["a"].dims == ("chain", "draw", "test_example", "train_example")
    assert group["drift"].dims == ("chain", "draw", "test_example", "step")
    assert list(group["train_example"].values) == list(train.train_ids)
    assert list(group["test_example"].values) == list(train.test_ids)
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "run", "step", "test_example")
    elpd = diagnostics.loo(idata)
    assert np.isfinite(elpd.elpd) and elpd.se > 0 and elpd.n_data_points == elpd.pointwise.size == train.losses[:, 1:].size
    assert np.isclose(elpd.pointwise.sum(), elpd.elpd)
    check = diagnostics.posterior_predictive_check(posterior, train, n_draws=100)
    assert 0.8 <= check["coverage_90"] <= 1.0 and check["p_final"].shape == (train.n_tests,)


def test_save_and_load_round_trip(problem, tmp_path):
    train, held, _, posterior = problem
    path = tmp_path / "posterior.nc"
    posterior.save(path)
    loaded = load_simulator(path)
    curricula, initial = held.curricula[:3], held.initial_losses[:3]
    np.testing.assert_allclose(loaded.simulate(curricula, initial), posterior.simulate(curricula, initial))
    np.testing.assert_array_equal(loaded.simulate_draws(curricula, initial, 50, seed=4),
                                  posterior.simulate_draws(curricula, initial, 50, seed=4))
    assert loaded.config == posterior.config and loaded.info == posterior.info
    not_ours = tmp_path / "other.nc"
    not_ours.write_bytes(b"CDF\x01 not really")
    assert not posterior_io.is_posterior_file(not_ours)
    with pytest.raises(ValueError, match="NetCDF"):
        posterior.save(tmp_path / "posterior.npz")


def test_fit_method_parses_options_strictly(problem):
    train = problem[0]
    context = FitContext(seed=3, options={"step": "false", "num_samples": 30, "num_warmup": 100,
                                          "progress": False, "guard": "false"})
    simulator = fit_method("bayes-exact", train, context)
    assert simulator.name == "bayes-exact" and simulator.drift is None and "a_location" in simulator.hyper
    assert simulator.n_draws == 60 and simulator.info["seed"] == 3
    for options, message in (({"num_draws": "30"}, "-o num_draws: expected an integer"),
                             ({"num_draws": 30.5}, "expected an integer"), ({"num_draws": True}, "integer"),
                             ({"learning_rate": "fast"}, "-o learning_rate: expected a number"),
                             ({"nosuch": 1}, "-o nosuch")):
        with pytest.raises(ValueError, match=message):
            fit_method("bayes-svi", train, FitContext(options=options))


def test_bad_inputs_give_clear_errors(problem):
    _, held, _, posterior = problem
    with pytest.raises(RunsFormatError, match="initial_losses"):
        posterior.simulate(held.curricula, held.initial_losses[:, :1])
    bad = held.curricula.copy()
    bad[0, 0, 0] = 99
    with pytest.raises(RunsFormatError, match="training examples"):
        posterior.simulate_draws(bad, held.initial_losses, 3)
    for n_draws, wanted in ((-3, "expected an integer >= 1, got -3"), (1.5, "expected an integer, got 1.5")):
        with pytest.raises(ValueError, match=f"n_draws: {wanted}"):
            posterior.simulate_draws(held.curricula, held.initial_losses, n_draws)
    with pytest.raises(ValueError, match="predictive must be one of"):
        posterior.simulate_draws(held.curricula, held.initial_losses, 3, predictive="bogus")
    with pytest.raises(ValueError, match="levels"):
        posterior.bands(held.curricula, held.initial_losses, levels=(0.9, 1.5))
    with pytest.raises(ValueError, match="variant"):
        parse_options({"variant": "quadratic"}, "svi")
    with pytest.raises(ValueError, match="true or false"):
        parse_options({"step": "maybe"}, "exact")
    with pytest.raises(ValueError, match="integer"):
        parse_options({"num_samples": 2.5}, "nuts")
    with pytest.raises(ValueError, match="-o ridge: method 'bayes-svi' does not read this option"):
        parse_options({"ridge": 0.1}, "svi")
    with pytest.raises(ValueError, match=r"-o likelihood: bayes-exact fits the likelihoods \['normal'\], not student_t"):
        fit_bayes("exact", held, {"likelihood": "student_t", "progress": False})


def test_new_curricula_of_the_same_shape_reuse_the_compiled_roll_out(problem):
    from bayes_simfluence.bayes.posterior import _roll_out_chunk

    _, held, _, posterior = problem
    curricula, initial = held.curricula[:2], held.initial_losses[:2]
    first = posterior.simulate_draws(curricula, initial, 20, seed=1)
    compiled = _roll_out_chunk._cache_size()
    shuffled = np.random.default_rng(0).permutation(curricula.reshape(-1)).reshape(curricula.shape)
    second = posterior.simulate_draws(shuffled, initial, 20, seed=1)
    posterior.simulate_draws(held.curricula[2:4], held.initial_losses[2:4], 20, seed=5)
    assert _roll_out_chunk._cache_size() == compiled  # nothing compiled for new curricula of the same shape
    assert not np.allclose(first, second)  # and they were really simulated


def test_selecting_test_examples_simulates_only_those_with_the_same_draws(problem):
    _, held, _, posterior = problem
    tests = np.array([2, 0])
    curricula, initial = held.curricula[:2], held.initial_losses[:2]
    full = posterior.simulate_draws(curricula, initial, 30, seed=3, predictive="parameters")
    part = posterior.select_tests(tests)
    np.testing.assert_allclose(part.simulate_draws(curricula, initial[:, tests], 30, seed=3, predictive="parameters"),
                               full[..., tests], rtol=1e-10)
    np.testing.assert_allclose(part.simulate(curricula, initial[:, tests]),
                               posterior.simulate(curricula, initial)[..., tests], rtol=1e-10)
    assert list(part.test_ids) == [posterior.test_ids[2], posterior.test_ids[0]]
