"""Optimiser memory: the geometric kernel, lag 0 as plain Simfluence, and recovery of a known decay."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.handlers import condition, seed, trace

from bayes_simfluence.bayes.model import ModelConfig, simfluence_model
from bayes_simfluence.methods import FitContext, fit_method
from bayes_simfluence.rollout import remembered
from bayes_simfluence.runs import Runs
from bayes_simfluence.synthetic import random_curricula


def memory_runs(decay: float, n_train: int = 20, n_tests: int = 3, n_runs: int = 16, n_steps: int = 40,
                batch: int = 4, seed: int = 0) -> Runs:
    """Runs of the generating process with momentum-like memory, written as an explicit lag sum:
    the batch of step ``t - k`` acts at step ``t`` with weight ``(1 - decay) decay^k``."""
    rng = np.random.default_rng(seed)
    a = rng.normal(-0.01, 0.01, (n_tests, n_train))
    b = rng.normal(0.0, 0.02, (n_tests, n_train))
    curricula = random_curricula(n_runs, n_steps, batch, n_train, rng)
    losses = np.ones((n_runs, n_steps + 1, n_tests))
    for r in range(n_runs):
        for t in range(n_steps):
            sum_a, sum_b = np.zeros(n_tests), np.zeros(n_tests)
            for k in range(t + 1):
                weight = (1 - decay) * decay**k
                sum_a += weight * a[:, curricula[r, t - k]].sum(1)
                sum_b += weight * b[:, curricula[r, t - k]].sum(1)
            losses[r, t + 1] = (1 + sum_a) * losses[r, t] + sum_b - 0.005 + 0.005 * rng.standard_normal(n_tests)
    return Runs.create(curricula, losses, n_train=n_train)


def test_remembered_sums_are_the_explicit_lag_sum():
    rng = np.random.default_rng(0)
    sums, decay = rng.normal(size=(3, 12, 2)), np.array([0.0, 0.8])
    expected = np.zeros_like(sums)
    for t in range(12):
        for k in range(t + 1):
            expected[:, t] += (1 - decay) * decay**k * sums[:, t - k]
    with jax.enable_x64(True):
        out = np.asarray(remembered(jnp.asarray(sums), jnp.asarray(decay)))
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(out[..., 0], sums[..., 0])  # decay 0: every batch at its own step


def test_memory_at_lag_zero_is_the_plain_model():
    runs = memory_runs(0.0, n_runs=3, n_steps=6)
    losses = runs.losses / runs.losses.mean()
    args = (jnp.asarray(runs.curricula), jnp.asarray(losses[:, :-1]), jnp.asarray(np.diff(losses, axis=1)),
            runs.n_train)
    rng = np.random.default_rng(1)
    values = {"a": rng.normal(0, 0.02, (runs.n_train, runs.n_tests)), "B": rng.normal(0, 0.02, (runs.n_train, runs.n_tests)),
              "noise_scale": np.full(runs.n_tests, 0.3), "effect_scale": np.full(runs.n_tests, 0.05),
              "drift_innovation": rng.normal(size=(6, runs.n_tests)), "memory_decay": np.zeros(runs.n_tests)}
    with jax.enable_x64(True):
        sites = {}
        for memory in ("none", "geometric"):
            model = seed(condition(simfluence_model, values), 0)
            sites[memory] = trace(model).get_trace(*args, ModelConfig(memory=memory, collapse_drift=False))
        plain, remembering = sites["none"]["y"], sites["geometric"]["y"]
        np.testing.assert_allclose(remembering["fn"].log_prob(remembering["value"]),
                                   plain["fn"].log_prob(plain["value"]), rtol=1e-12)
        remembering_at = trace(seed(condition(simfluence_model, {**values, "memory_decay": np.full(runs.n_tests, 0.5)}),
                                    0)).get_trace(*args, ModelConfig(memory="geometric", collapse_drift=False))["y"]
        assert not np.allclose(remembering_at["fn"].loc, plain["fn"].loc)  # the decay does enter the mean


# both with 5000 steps: the same shapes and settings, so the memory fit compiles once for both
@pytest.mark.parametrize("decay, steps, tolerance", [(0.0, 5000, 0.05), (0.7, 5000, 0.06)])
@pytest.mark.slow
def test_memory_decay_is_recovered_from_runs_simulated_with_it(decay, steps, tolerance):
    runs = memory_runs(decay)
    posterior = fit_method("bayes-svi", runs, FitContext(options={"memory": "geometric", "num_steps": steps,
                                                                  "guard": False, "progress": False}))
    estimate = posterior.hyper["memory_decay"].mean(axis=(0, 1))
    assert np.all(np.abs(estimate - decay) < tolerance), estimate
    if decay == 0:
        return
    # and the posterior's roll-out follows the generating process better than plain Simfluence's
    plain = fit_method("bayes-svi", runs, FitContext(options={"memory": "none", "num_steps": steps, "guard": False,
                                                              "progress": False}))
    mse = {name: float(((p.simulate(runs.curricula, runs.initial_losses) - runs.losses) ** 2).mean())
           for name, p in (("memory", posterior), ("plain", plain))}
    assert mse["memory"] < 0.7 * mse["plain"], mse  # both include the runs' own accumulated noise
