"""Runs drawn from the Bayesian model, and runs that decay like real training runs.

- :func:`model_runs`: the generative process the Bayesian model assumes (effects around a
  population, optional random-walk step component, Gaussian noise), with known truth; used to
  check recovery and calibration.
- :func:`decaying_runs`: closer to real runs: every run's loss decays by a common schedule
  ``L_t = (1 - g_t) L_{t-1}`` with ``g_t`` shrinking over training, plus small per-example effects
  and noise. The schedule is multiplicative, so neither the plain model nor the step component
  (additive per step) contains it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from bayes_simfluence.rollout import batch_sums
from bayes_simfluence.runs import Runs
from bayes_simfluence.synthetic import random_curricula


@dataclass(frozen=True)
class ModelTruth:
    """Parameters runs were drawn with (loss units).

    Attributes:
        a, b: ``[tests, n_train]`` effects (``alpha = 1 + sum a``, ``beta = sum B + drift``).
        drift: ``[tests, steps]`` step component (zeros when absent).
        sigma: ``[tests]`` noise scale.
    """

    a: np.ndarray
    b: np.ndarray
    drift: np.ndarray
    sigma: np.ndarray


def _roll(a: np.ndarray, b: np.ndarray, drift: np.ndarray, curricula: np.ndarray, initial: np.ndarray,
          noise: np.ndarray) -> np.ndarray:
    """``[runs, steps + 1, tests]`` roll-out with per-step ``noise [runs, steps, tests]``.

    Step-by-step NumPy in float64, kept independent of the jitted roll-out it checks.
    """
    alpha = 1.0 + np.asarray(batch_sums(jnp.asarray(a), jnp.asarray(curricula)), dtype=np.float64)
    beta = np.asarray(batch_sums(jnp.asarray(b), jnp.asarray(curricula)), dtype=np.float64) + drift.T[None]
    losses = np.empty((curricula.shape[0], curricula.shape[1] + 1, a.shape[0]))
    losses[:, 0] = initial
    for t in range(curricula.shape[1]):
        losses[:, t + 1] = alpha[:, t] * losses[:, t] + beta[:, t] + noise[:, t]
    return losses


def model_runs(n_train: int = 20, n_tests: int = 3, n_runs: int = 16, n_steps: int = 40, batch_size: int = 4,
               effect_scale: float = 0.01, location: float = -0.002, noise_scale: float = 0.01,
               step_component: bool = True, drift_scale: float = 0.01, empty_fraction: float = 0.0,
               seed: int = 0) -> tuple[Runs, ModelTruth]:
    """Runs from the Bayesian model with ``L_0 = 1`` for every run and test example.

    ``a ~ N(location, effect_scale)``, ``B ~ N(-location, effect_scale)``, drift a random walk
    starting at ``-drift_scale`` with steps ``drift_scale / 10`` (when ``step_component``),
    noise ``N(0, noise_scale)``. With ``L_0 = 1`` the loss scale stays near 1, so these
    values are on the model's standardised scale.
    """
    rng = np.random.default_rng(seed)
    a = rng.normal(location, effect_scale, (n_tests, n_train))
    b = rng.normal(-location, effect_scale, (n_tests, n_train))
    drift = np.zeros((n_tests, n_steps))
    if step_component:
        drift = -drift_scale + np.cumsum(rng.normal(0.0, drift_scale / 10, (n_tests, n_steps)), axis=1)
    sigma = np.full(n_tests, noise_scale)
    curricula = random_curricula(n_runs, n_steps, batch_size, n_train, rng, empty_fraction)
    noise = sigma * rng.standard_normal((n_runs, n_steps, n_tests))
    losses = _roll(a, b, drift, curricula, np.ones((n_runs, n_tests)), noise)
    runs = Runs.create(curricula, losses, n_train=n_train, meta={"source": "bayes.synthetic.model_runs",
                                                                 "seed": seed})
    return runs, ModelTruth(a, b, drift, sigma)


def decaying_runs(n_train: int = 100, n_tests: int = 8, n_runs: int = 16, n_steps: int = 100, batch_size: int = 8,
                  initial_rate: float = 0.05, decay_steps: float = 30.0, effect_scale: float = 0.003,
                  noise_scale: float = 0.02, run_rate_sd: float = 0.0, seed: int = 0) -> tuple[Runs, ModelTruth]:
    """Runs whose loss decays by a common schedule, with small per-example effects and noise.

    ``L_t = (1 - g_t + sum a) L_{t-1} + sum B + noise``, ``g_t = initial_rate * exp(-t / decay_steps)``,
    ``L_0 ~ U(2, 4)`` per test example (shared by its runs), ``a, B ~ N(0, effect_scale)``
    (``B`` times ``L_0``), noise ``N(0, noise_scale * L_0)``. Returned truth has the schedule
    folded into nothing: ``drift`` is zeros, the schedule is not a model parameter.

    ``run_rate_sd > 0`` gives every run its own schedule, ``g_t (1 + u_r)`` with
    ``u_r ~ N(0, run_rate_sd)``: a run-level latent shared by all test examples that no curriculum
    explains (as a real run's seed or data order would), so two runs differ by more than their
    curricula. Drawn last: the other draws of a seed are unchanged.
    """
    rng = np.random.default_rng(seed)
    initial = rng.uniform(2.0, 4.0, n_tests)
    a = rng.normal(0.0, effect_scale, (n_tests, n_train))
    b = rng.normal(0.0, effect_scale, (n_tests, n_train)) * initial[:, None]
    rate = initial_rate * np.exp(-np.arange(n_steps) / decay_steps)
    curricula = random_curricula(n_runs, n_steps, batch_size, n_train, rng)
    sigma = noise_scale * initial
    noise = sigma * rng.standard_normal((n_runs, n_steps, n_tests))
    run_rate = 1.0 + run_rate_sd * rng.standard_normal(n_runs) if run_rate_sd > 0 else np.ones(n_runs)
    alpha = 1.0 - run_rate[:, None, None] * rate[None, :, None] + np.asarray(batch_sums(jnp.asarray(a), jnp.asarray(curricula)), np.float64)
    beta = np.asarray(batch_sums(jnp.asarray(b), jnp.asarray(curricula)), np.float64) + noise
    losses = np.empty((n_runs, n_steps + 1, n_tests))
    losses[:, 0] = initial
    for t in range(n_steps):
        losses[:, t + 1] = alpha[:, t] * losses[:, t] + beta[:, t]
    runs = Runs.create(curricula, losses, n_train=n_train, meta={"source": "bayes.synthetic.decaying_runs",
                                                                 "seed": seed})
    return runs, ModelTruth(a, b, np.zeros((n_tests, n_steps)), sigma)
