"""Synthetic runs drawn from Simfluence-Linear itself, with known effects.

Used by tests and by users to check that fitting recovers the truth before trusting it on
real runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from bayes_simfluence.rollout import batch_sums
from bayes_simfluence.runs import Runs


@dataclass(frozen=True)
class SyntheticTruth:
    """The effects runs were drawn from (paper form).

    Attributes:
        multiplicative: ``A [tests, n_train]``; ``alpha(c_t) = sum_{i in c_t} A_i``.
        additive: ``B [tests, n_train]``; ``beta(c_t) = sum_{i in c_t} B_i``.
        noise_scale: standard deviation of the Gaussian noise added at every step.
    """

    multiplicative: np.ndarray
    additive: np.ndarray
    noise_scale: float


def random_curricula(n_runs: int, n_steps: int, batch_size: int, n_train: int,
                     rng: np.random.Generator, empty_fraction: float = 0.0) -> np.ndarray:
    """``[runs, steps, batch]`` random orderings of the pool, reshuffled each epoch.

    ``empty_fraction`` of slots are set to ``-1`` (ragged batches), never a whole batch.
    """
    slots = n_steps * batch_size
    n_epochs = -(-slots // n_train)
    orders = np.stack([
        np.concatenate([rng.permutation(n_train) for _ in range(n_epochs)])[:slots] for _ in range(n_runs)
    ])
    curricula = orders.reshape(n_runs, n_steps, batch_size)
    if empty_fraction > 0:
        empty = rng.random(curricula.shape) < empty_fraction
        empty[..., 0] = False
        curricula = np.where(empty, -1, curricula)
    return curricula


def simulate_with_noise(A: np.ndarray, B: np.ndarray, curricula: np.ndarray, initial_losses: np.ndarray,
                        noise_scale: float, rng: np.random.Generator) -> np.ndarray:
    """``[runs, steps + 1, tests]`` roll-out of ``L_t = alpha L_{t-1} + beta + noise``."""
    alpha = np.asarray(batch_sums(jnp.asarray(A), jnp.asarray(curricula)), dtype=np.float64)
    beta = np.asarray(batch_sums(jnp.asarray(B), jnp.asarray(curricula)), dtype=np.float64)
    noise = noise_scale * rng.standard_normal(alpha.shape)
    n_runs, n_steps, n_tests = alpha.shape
    losses = np.empty((n_runs, n_steps + 1, n_tests))
    losses[:, 0] = initial_losses
    # A plain loop over steps is fine here: this is test-data generation in float64, kept
    # independent of the jitted roll-out it is used to check.
    for t in range(n_steps):
        losses[:, t + 1] = alpha[:, t] * losses[:, t] + beta[:, t] + noise[:, t]
    return losses


def synthetic_runs(
    n_train: int = 20,
    n_tests: int = 4,
    n_runs: int = 16,
    n_steps: int = 40,
    batch_size: int = 4,
    noise_scale: float = 0.01,
    effect_scale: float = 0.02,
    empty_fraction: float = 0.0,
    seed: int = 0,
) -> tuple[Runs, SyntheticTruth]:
    """Draw runs from Simfluence-Linear with random effects.

    Effects: ``A_i = (1 - d_i) / batch`` with ``d_i ~ N(effect_scale, effect_scale)`` (most examples
    shrink the loss a little, some raise it) and ``B_i ~ N(0, effect_scale / batch)``; every
    run starts from the same ``L_0 ~ U(1, 3)`` per test example, as runs from the same initial
    weights do.
    """
    rng = np.random.default_rng(seed)
    d = rng.normal(effect_scale, effect_scale, size=(n_tests, n_train))
    A = (1.0 - d) / batch_size
    B = rng.normal(0.0, effect_scale / batch_size, size=(n_tests, n_train))
    curricula = random_curricula(n_runs, n_steps, batch_size, n_train, rng, empty_fraction)
    initial = np.broadcast_to(rng.uniform(1.0, 3.0, size=n_tests), (n_runs, n_tests))
    losses = simulate_with_noise(A, B, curricula, initial, noise_scale, rng)
    runs = Runs.create(curricula, losses, n_train=n_train, meta={
        "source": "synthetic", "seed": seed, "noise_scale": noise_scale, "effect_scale": effect_scale,
    })
    return runs, SyntheticTruth(A, B, noise_scale)
