"""Matrix-free products with the teacher-forced design of Simfluence-Linear, and ridge solves by
conjugate gradients: the path for pools whose normal equations do not fit in memory.

Row ``(r, t)`` of the design (see :mod:`bayes_simfluence.ridge`) is ``[L_{t-1} n_rt, n_rt]`` for
the linear variant, ``n_rt`` (additive) or ``L_{t-1} n_rt`` (multiplicative), ``n_rt [n_train]``
counting each example's slots in batch ``c_t``. A step touches only its batch, so ``X w`` and
``X^T r`` cost ``runs * steps * batch`` per test example (a gather and a scatter-add over the
slots), and the normal operator ``X^T X + ridge I`` is applied without forming it: memory is
``runs * steps * tests`` for the losses plus ``tests * features`` for the effects, against
``tests * features^2`` for the dense normal equations. The systems of the test examples are
independent and solved together (``vmap``), by conjugate gradients with a Jacobi preconditioner
(the exact diagonal of ``X^T X``), in float64.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

#: conjugate gradients stop at this relative residual ``||b - A x|| / ||b||``
CG_TOLERANCE = 1e-10
#: and after at most this many iterations
CG_MAX_ITERATIONS = 2000
#: :func:`solve_ridge_cg` starts its continuation at this many times the mean diagonal of ``X^T X``
CONTINUATION_START = 1.0
#: the common level's penalty, relative to its column's squared norm: none in effect, but the system
#: stays definite where a level's column is collinear with another's (losses that never move)
COMMON_JITTER = 1e-9


class Design(NamedTuple):
    """The teacher-forced regression of every test example, as arrays (rows: ``runs * steps``).

    Attributes:
        slots: ``[rows, batch]`` training-example indices, ``-1`` for empty slots.
        previous: ``[tests, rows]`` ``L_{t-1}``.
        target: ``[tests, rows]`` ``y = L_t - baseline_t L_{t-1}``.
    """

    slots: np.ndarray
    previous: np.ndarray
    target: np.ndarray


def design(curricula: np.ndarray, losses: np.ndarray, baseline: np.ndarray) -> Design:
    """The :class:`Design` of ``curricula [runs, steps, batch]``, ``losses [runs, steps + 1, tests]``
    with the multiplicative baseline ``[runs, steps]`` (:func:`bayes_simfluence.ridge.step_baseline`)."""
    n_tests = losses.shape[2]
    previous = losses[:, :-1, :].reshape(-1, n_tests)
    target = losses[:, 1:, :].reshape(-1, n_tests) - baseline.reshape(-1, 1) * previous
    return Design(curricula.reshape(-1, curricula.shape[2]), np.ascontiguousarray(previous.T),
                  np.ascontiguousarray(target.T))


#: the effect blocks of each variant, in the order of the features: ``a`` (its batch sum multiplies
#: ``L_{t-1}``), then ``B`` (its batch sum adds). With :func:`block_weights` this is the one
#: definition of the expected change's shape ``(sum a) L_{t-1} + sum B`` that the ridge, the exact,
#: grid and Krylov backends and the feature prior build their design from.
BLOCKS: dict[str, tuple[str, ...]] = {"linear": ("a", "B"), "additive": ("B",), "multiplicative": ("a",)}


def block_weights(previous: Array | np.ndarray, variant: str) -> list[Array | np.ndarray]:
    """What multiplies each block's batch sum in the expected change: ``previous`` (``L_{t-1}``, any
    shape; a JAX or a NumPy array) for ``a``, ones for ``B``; one array per block of ``BLOCKS[variant]``."""
    ones = jnp.ones_like if isinstance(previous, jax.Array) else np.ones_like
    return [previous if block == "a" else ones(previous) for block in BLOCKS[variant]]


def n_features_of(variant: str, n_train: int) -> int:
    """Features per test example: ``n_train`` per block of ``BLOCKS[variant]`` (``[a, B]`` for ``linear``)."""
    return len(BLOCKS[variant]) * n_train


def n_unknowns(variant: str, n_train: int, common_level: bool) -> int:
    """Unknowns of a ridge solve per test example: the features, and with ``common_level`` one level per
    block after them (:func:`effects_of`)."""
    return n_features_of(variant, n_train) + (len(BLOCKS[variant]) if common_level else 0)


def effects_of(solution: np.ndarray, n_features: int, n_train: int) -> np.ndarray:
    """``[..., n_features]`` the effects of a ridge solution ``[..., unknowns]``: ``w``, or where the
    solution carries a common level per block of ``n_train`` features (``[w, c]``), ``w + c`` on every
    example of the block."""
    if solution.shape[-1] == n_features:
        return solution
    return solution[..., :n_features] + np.repeat(solution[..., n_features:], n_train, axis=-1)


def _forward(w: Array, slots: Array, previous: Array, n_train: int, variant: str) -> Array:
    """``X w`` ``[rows]`` for one test example (``w [features]``)."""
    filled = slots >= 0
    index = jnp.where(filled, slots, 0)
    return sum(weight * jnp.where(filled, w[k * n_train:(k + 1) * n_train][index], 0.0).sum(-1)
               for k, weight in enumerate(block_weights(previous, variant)))


def _transpose(r: Array, slots: Array, previous: Array, n_train: int, variant: str) -> Array:
    """``X^T r`` ``[features]`` for one test example (``r [rows]``)."""
    filled = slots >= 0
    index = jnp.where(filled, slots, 0).reshape(-1)
    weights = jnp.where(filled, r[:, None], 0.0)  # [rows, batch]
    return jnp.concatenate([jnp.zeros(n_train, r.dtype).at[index].add((weights * weight[:, None]).reshape(-1))
                            for weight in block_weights(previous, variant)])


def _diagonal(slots: Array, previous: Array, n_train: int, variant: str) -> Array:
    """The exact diagonal of ``X^T X`` ``[features]``: ``sum_rows n_{row,i}^2 (L_{t-1}^2 or 1)``; each of
    the ``n`` slots an example fills in a row adds ``n`` times its square."""
    filled = slots >= 0
    repeats = (slots[:, :, None] == slots[:, None, :]).sum(-1)  # [rows, batch] slots holding the same example
    weights = jnp.where(filled, repeats, 0).astype(previous.dtype)
    index = jnp.where(filled, slots, 0).reshape(-1)
    return jnp.concatenate([jnp.zeros(n_train, previous.dtype).at[index].add((weights * weight[:, None] ** 2).reshape(-1))
                            for weight in block_weights(previous, variant)])


@partial(jax.jit, static_argnames=("n_train", "variant", "common_level"))
def _solve(slots: Array, previous: Array, target: Array, ridge: Array, start: Array, n_train: int,
           variant: str, common_level: bool) -> tuple[Array, Array]:
    """``(x [tests, unknowns], relative residual [tests])`` of the ridge's normal equations per test:
    ``(X^T X + ridge I) w = X^T y``, or with ``common_level`` the system in ``x = [w, c]`` whose effects
    are ``w + E c`` (``E [features, blocks]`` the block indicator) with only ``w`` penalised."""
    n_features = n_features_of(variant, n_train)
    n_blocks = len(BLOCKS[variant])

    def effects(x: Array) -> Array:
        return x[:n_features] + jnp.repeat(x[n_features:], n_train) if common_level else x

    def with_levels(gradient: Array) -> Array:  # X^T r -> [X^T r, E^T X^T r]
        return jnp.concatenate([gradient, gradient.reshape(n_blocks, n_train).sum(1)]) if common_level else gradient

    def one(previous_m: Array, target_m: Array, start_m: Array) -> tuple[Array, Array]:
        diagonal = _diagonal(slots, previous_m, n_train, variant) + ridge
        if common_level:  # ||X E_k||^2: the level's own column, each row weighted by its filled slots
            level_diagonal = jnp.maximum(jnp.stack([
                jnp.sum(_forward(jnp.zeros(n_features).at[k * n_train:(k + 1) * n_train].set(1.0), slots,
                                 previous_m, n_train, variant) ** 2) for k in range(n_blocks)]), 1e-300)
            diagonal = jnp.concatenate([diagonal, (1.0 + COMMON_JITTER) * level_diagonal])

        def normal(x: Array) -> Array:
            gradient = _transpose(_forward(effects(x), slots, previous_m, n_train, variant), slots, previous_m,
                                  n_train, variant)
            penalty = ridge * x[:n_features]
            if common_level:
                penalty = jnp.concatenate([penalty, COMMON_JITTER * level_diagonal * x[n_features:]])
            return with_levels(gradient) + penalty

        rhs = with_levels(_transpose(target_m, slots, previous_m, n_train, variant))
        x, _ = jax.scipy.sparse.linalg.cg(normal, rhs, x0=start_m, tol=CG_TOLERANCE, maxiter=CG_MAX_ITERATIONS,
                                          M=lambda v: v / diagonal)
        residual = jnp.linalg.norm(rhs - normal(x)) / jnp.maximum(jnp.linalg.norm(rhs), 1e-300)
        return x, residual

    return jax.vmap(one)(previous, target, start)


def ridge_cg(problem: Design, n_train: int, variant: str, ridge: float, start: np.ndarray | None = None,
             common_level: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(x [tests, unknowns], converged [tests])``: the ridge solution per test example by
    preconditioned conjugate gradients (:func:`effects_of` turns it into effects), and whether each
    reached :data:`CG_TOLERANCE` (within 1000x). Minimises ``||y - X w||^2 + ridge ||w||^2``, or with
    ``common_level`` ``||y - X (w + E c)||^2 + ridge ||w||^2``: the penalty shrinks each example's
    effects towards a level per block fitted without penalty. ``start``: a first guess ``[tests,
    unknowns]``, e.g. the solution at a nearby ridge. Features are ``[a (n_train), B (n_train)]`` for
    the linear variant, else ``n_train``."""
    shape = (problem.target.shape[0], n_unknowns(variant, n_train, common_level))
    start = np.zeros(shape) if start is None else start
    with jax.enable_x64(True):
        x, residual = _solve(jnp.asarray(problem.slots, jnp.int32), jnp.asarray(problem.previous, jnp.float64),
                             jnp.asarray(problem.target, jnp.float64), jnp.float64(ridge),
                             jnp.asarray(start, jnp.float64), n_train, variant, common_level)
        return np.asarray(x), np.asarray(residual) <= 1e3 * CG_TOLERANCE


def solve_ridge_cg(problem: Design, n_train: int, variant: str, ridge: float, common_level: bool = True
                   ) -> np.ndarray:
    """``[tests, features]`` the effects of :func:`ridge_cg`'s solution, reached by continuation where
    the ridge is weak: solved first at strengths a decade apart from :data:`CONTINUATION_START` times
    the mean diagonal of ``X^T X`` down to ``ridge``, each solve starting from the last (a weak ridge
    on an underdetermined design, more effects than observed steps, needs thousands of iterations
    from zero).

    Raises:
        RuntimeError: conjugate gradients stopped short at ``ridge`` itself.
    """
    top = CONTINUATION_START * mean_diagonal(problem, n_train, variant)
    decades = int(np.ceil(np.log10(top / ridge))) if ridge > 0 else 0
    solution = None
    for k in range(max(decades, 0), -1, -1):
        solution, converged = ridge_cg(problem, n_train, variant, ridge * 10.0**k, start=solution,
                                       common_level=common_level)
    if not converged.all():
        raise RuntimeError(f"the ridge solve by conjugate gradients did not converge for {int((~converged).sum())} "
                           f"test example(s) at ridge {ridge:g}; is the ridge tiny with examples never seen?")
    return effects_of(solution, n_features_of(variant, n_train), n_train)


def mean_diagonal(problem: Design, n_train: int, variant: str) -> float:
    """The mean diagonal of ``X^T X`` over features and test examples (the scale of ridge strengths)."""
    with jax.enable_x64(True):
        diagonal = jax.vmap(lambda p: _diagonal(jnp.asarray(problem.slots), p, n_train, variant))(
            jnp.asarray(problem.previous, jnp.float64))
        return float(jnp.mean(diagonal))
