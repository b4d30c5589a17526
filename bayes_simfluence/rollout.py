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
    rows = jnp.concatenate([effects, jnp.zeros_like(effects[:, :1])], axis=1).T  # [n_train + 1, tests]
    slots = jnp.where(curricula < 0, n_train, curricula)
    # One row gather per batch slot, accumulated: XLA fuses the adds, and the gradient is a few
    # row scatter-adds. A single gather of every slot followed by a sum over the batch axis
    # materialises [runs, steps, batch, tests]; its gradient was 10x slower (N=1000, T=1000,
    # R=16, M=64, float64 on CPU).
    total = jnp.zeros(curricula.shape[:2] + (effects.shape[0],), effects.dtype)
    for slot in range(curricula.shape[-1]):
        total = total + rows[slots[..., slot]]
    return total


def geometric_memory(x: Array, decay: Array, axis: int = -1) -> Array:
    """The geometric memory kernel along the steps axis ``axis``: ``m_t = (1 - decay) x_t + decay m_{t-1}``
    from ``m_0 = 0`` (one ``lax.scan``: jit- and vmap-friendly, ``decay`` may be traced).

    Args:
        x: the steps along ``axis``.
        decay: in ``[0, 1)``, broadcasting against ``x`` without ``axis`` (a scalar, or one per column).
    """
    return _scan_memory(x, decay, 1.0 - decay, axis)


def _scan_memory(x: Array, keep: Array, gain: Array, axis: int) -> Array:
    """:func:`geometric_memory` with its factors ``keep = decay`` and ``gain = 1 - decay`` given."""
    def step(memory: Array, current: Array) -> tuple[Array, Array]:
        memory = gain * current + keep * memory
        return memory, memory

    steps_first = jnp.moveaxis(x, axis, 0)
    _, out = jax.lax.scan(step, jnp.zeros_like(steps_first[0]), steps_first)
    return jnp.moveaxis(out, 0, axis)


def remembered(sums: Array, decay: Array) -> Array:
    """Spread each step's batch sums over the following steps with a geometric memory kernel.

    ``m_t = (1 - decay) s_t + decay m_{t-1}`` from ``m_0 = 0`` (:func:`geometric_memory` along the
    steps): a batch acts with weight ``(1 - decay) decay^k`` at ``k`` steps after its own, so its
    weights sum to 1 over an unbounded horizon (the total effect of an example is the same as
    without memory) and ``decay = 0`` is plain Simfluence (all weight at lag 0). Optimisers with
    momentum apply a batch's gradient over the next ``~1 / (1 - beta_1)`` steps, which this kernel
    follows.

    Args:
        sums: ``[runs, steps, tests]`` per-step batch sums (:func:`batch_sums`).
        decay: ``[tests]`` memory decay in ``[0, 1)``.

    Returns:
        ``[runs, steps, tests]`` remembered sums.
    """
    # each factor from its own broadcast of decay, as the fits' compiled programs have always had it
    # (one shared broadcast fuses differently under autodiff: bayes-svi's float32 fits moved by an ulp)
    return _scan_memory(sums, decay[None, :], 1.0 - decay[None, :], 1)


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
