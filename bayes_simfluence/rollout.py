"""Batch sums of per-example effects and the roll-out of the Simfluence recurrence.

Shapes follow the package convention ``[draws, runs, steps, tests]``; ``n_train`` indexes
training examples and ``-1`` in a curriculum marks an empty batch slot.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array


def batch_sums(effects: Array, curricula: Array) -> Array:
    """Sum per-training-example effects over each batch.

    Args:
        effects: ``[tests, n_train]`` effect of each training example on each test example.
        curricula: ``[runs, steps, batch]`` int indices, ``-1`` for an empty slot.

    Returns:
        ``[runs, steps, tests]``: ``sum_{i in c_t} effects[m, i]`` (empty slots add 0; an
        example that appears twice in a batch counts twice).
    """
    n_train = effects.shape[-1]
    padded = jnp.concatenate([effects, jnp.zeros_like(effects[:, :1])], axis=1)
    slots = jnp.where(curricula < 0, n_train, curricula)
    gathered = jnp.take(padded, slots, axis=1)  # [tests, runs, steps, batch]
    return jnp.moveaxis(gathered.sum(-1), 0, -1)


def slot_counts(curricula: Array) -> Array:
    """``[runs, steps]`` number of filled (non ``-1``) slots in each batch."""
    return (curricula >= 0).sum(-1)


@jax.jit
def roll_out(alpha: Array, beta: Array, initial_losses: Array) -> Array:
    """Roll ``L_t = alpha_t * L_{t-1} + beta_t`` forward from ``L_0``.

    Args:
        alpha: ``[runs, steps, tests]`` multiplicative factor of each step.
        beta: ``[runs, steps, tests]`` additive term of each step.
        initial_losses: ``[runs, tests]`` losses ``L_0``.

    Returns:
        ``[runs, steps + 1, tests]`` trajectory starting with ``initial_losses``.
    """

    def step(previous: Array, coefficients: tuple[Array, Array]) -> tuple[Array, Array]:
        step_alpha, step_beta = coefficients
        current = step_alpha * previous + step_beta
        return current, current

    _, trajectory = jax.lax.scan(
        step, initial_losses, (jnp.swapaxes(alpha, 0, 1), jnp.swapaxes(beta, 0, 1))
    )
    return jnp.concatenate([initial_losses[:, None, :], jnp.swapaxes(trajectory, 0, 1)], axis=1)
