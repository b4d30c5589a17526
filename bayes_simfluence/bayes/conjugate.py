"""The exact Gaussian posterior of the effects given the hyperparameters, and the collapsed likelihood.

With a Normal likelihood, the teacher-forced model of :mod:`bayes_simfluence.bayes.model` is a
Bayesian linear regression per test example ``m``:

    y = X w + Z d + eps,   w = (a, B) ~ N(m0, s^2 I),   d ~ N(0, sigma^2 Q^{-1}),   eps ~ N(0, sigma^2 I)

with ``X`` the ``[L_{t-1} n_rt, n_rt]`` features (:mod:`bayes_simfluence.ridge`), ``Z`` the step
indicators (every run has every step, so ``Z^T Z = runs * I``) and ``Q`` the random-walk
precision in units of ``1 / sigma^2``. Integrating ``d`` out leaves ``y ~ N(X w, sigma^2 Omega)``
with ``Omega^{-1} = I - Z A^{-1} Z^T``, ``A = Q + runs I`` (tridiagonal), which does not depend on
any hyperparameter. Whitened statistics ``G = X^T Omega^{-1} X``, ``b = X^T Omega^{-1} y`` are
built once; one eigendecomposition ``G = U diag(lambda) U^T`` per test example then gives, for
any ``(sigma, s, mu)``, the marginal likelihood in ``O(features)`` and the posterior

    w | y ~ N(U diag(v) U^T (m0 / s^2 + b / sigma^2), U diag(v) U^T),   v = 1 / (1 / s^2 + lambda / sigma^2),

and ``d | w, y ~ N(A^{-1} Z^T (y - X w), sigma^2 A^{-1})``. This is both the fast path (NUTS on
the few hyperparameters, :mod:`bayes_simfluence.bayes.hyper_nuts`, then exact draws of the
effects) and the oracle the tests check NUTS and SVI against.

The statistics and the draws are computed by module-level jitted JAX programs in float64
(``jax.enable_x64`` inside; the device is JAX's default, a GPU when there is one), in chunks of
test examples padded to one shape, so a second fit of the same shapes compiles nothing: the
normal equations by scatter-adds over the batch slots (the count matrix is never dense), the
drift system by tridiagonal solves (``lax.linalg.tridiagonal_solve``) and its Cholesky factor by
a ``lax.scan``, ``jnp.linalg.eigh`` batched over a chunk. Results come back as host NumPy
arrays; :func:`posterior_given` (the tests' oracle) is plain NumPy.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax

from bayes_simfluence.bayes.backends import check_supported
from bayes_simfluence.bayes.chunking import chunked
from bayes_simfluence.bayes.data import ModelData
from bayes_simfluence.bayes.model import ModelConfig, drift_bands
from bayes_simfluence.budget import check as check_memory
from bayes_simfluence.design import block_weights


class DriftSystem(NamedTuple):
    """The step component's part of the collapsed model (depends only on runs, steps, config).

    Attributes:
        banded: ``[2, steps]`` ``A = Q + runs I`` in upper banded storage.
        cholesky: ``[2, steps]`` upper banded Cholesky factor ``U`` of ``A`` (``A = U^T U``).
        logdet_omega: ``log |Omega| = log |A| - log |Q|``.
    """

    banded: np.ndarray
    cholesky: np.ndarray
    logdet_omega: float


class CollapsedStats(NamedTuple):
    """Everything the collapsed likelihood and the exact draws need, per test example.

    Attributes:
        eigenvalues: ``[tests, features]`` of the whitened Gram ``G``.
        eigenvectors: ``[tests, features, features]`` ``U``.
        proj_target: ``[tests, features]`` ``U^T b``.
        proj_gram: ``[tests, 2, features]`` ``U^T G e_k`` for the block indicators ``e_a``, ``e_B``.
        proj_ones: ``[tests, 2, features]`` ``U^T e_k``.
        target_sq: ``[tests]`` ``y^T Omega^{-1} y``.
        target_blocks: ``[tests, 2]`` ``e_k^T b``.
        gram_blocks: ``[tests, 2, 2]`` ``e_k^T G e_l``.
        n_obs: observations per test example (``runs * steps``).
        logdet_omega: ``log |Omega|`` (0 without the step component).
    """

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    proj_target: np.ndarray
    proj_gram: np.ndarray
    proj_ones: np.ndarray
    target_sq: np.ndarray
    target_blocks: np.ndarray
    gram_blocks: np.ndarray
    n_obs: int
    logdet_omega: float


#: the fields of :class:`CollapsedStats` with a leading test axis
TEST_FIELDS = CollapsedStats._fields[:8]


def block_indicators(n_train: int, config: ModelConfig) -> np.ndarray:
    """``[2, features]`` indicators of the ``a`` and ``B`` blocks (a row of zeros for an absent part)."""
    parts = []
    if config.has_multiplicative:
        parts.append(np.eye(2)[:, :1].repeat(n_train, axis=1))
    if config.has_additive:
        parts.append(np.eye(2)[:, 1:].repeat(n_train, axis=1))
    return np.concatenate(parts, axis=1)


def drift_system(n_runs: int, n_steps: int, config: ModelConfig) -> DriftSystem:
    """``A = Q + runs I`` for the random walk ``d_1 ~ N(0, kappa^2)``, ``d_t - d_{t-1} ~ N(0, rho^2)``."""
    diagonal, off, logdet_omega = drift_bands(n_runs, n_steps, config)
    banded = np.zeros((2, n_steps))
    banded[0, 1:] = off
    banded[1] = diagonal
    with jax.enable_x64(True):
        cholesky = np.asarray(_banded_cholesky(banded))
    return DriftSystem(banded, cholesky, logdet_omega)


@jax.jit
def _banded_cholesky(banded: Array) -> Array:
    """``[2, steps]`` upper banded Cholesky factor of a symmetric positive definite tridiagonal matrix."""

    def column(previous: Array, entries: Array) -> tuple[Array, Array]:
        off = entries[0] / previous  # the first column has no entry above the diagonal (0 / inf)
        diagonal = jnp.sqrt(entries[1] - off**2)
        return diagonal, jnp.stack([off, diagonal])

    return lax.scan(column, jnp.asarray(jnp.inf, banded.dtype), banded.T)[1].T


def _solve_banded(banded: Array, rhs: Array, symmetric: bool) -> Array:
    """``M^{-1} rhs`` for ``rhs [steps, n]``, ``M`` from upper banded storage: the symmetric
    tridiagonal matrix (``A``) or the upper bidiagonal one (its Cholesky factor ``U``)."""
    upper = banded[0, 1:]
    zero = jnp.zeros(1, banded.dtype)
    lower = jnp.concatenate([zero, upper]) if symmetric else jnp.zeros_like(banded[1])
    return lax.linalg.tridiagonal_solve(lower, banded[1], jnp.concatenate([upper, zero]), rhs)


def _weighted_gram(slots: Array, weight: Array, n_train: int) -> Array:
    """``C^T diag(weight) C`` ``[n_train, n_train]``: ``C`` counts the training examples of each
    (run, step) from ``slots [runs, steps, batch]`` (empty slots at ``n_train``), ``weight [runs, steps]``."""
    flat, values = slots.reshape(-1, slots.shape[-1]), weight.reshape(-1, 1)

    def add(k: int, gram: Array) -> Array:  # the pairs (slot k, every slot) of every (run, step)
        return gram.at[flat[:, k, None], flat].add(values)

    gram = lax.fori_loop(0, flat.shape[1], add, jnp.zeros((n_train + 1, n_train + 1), weight.dtype))
    return gram[:n_train, :n_train]


def _count_sums(slots: Array, weight: Array, n_train: int, per_step: bool) -> Array:
    """``sum weight_rt n_rti`` over runs and steps ``[n_train]``, or over runs only ``[steps, n_train]``."""
    values = jnp.broadcast_to(weight[..., None], slots.shape)
    if not per_step:
        return jnp.zeros(n_train + 1, weight.dtype).at[slots].add(values)[:n_train]
    steps = jnp.broadcast_to(jnp.arange(slots.shape[1])[None, :, None], slots.shape)
    return jnp.zeros((slots.shape[1], n_train + 1), weight.dtype).at[steps, slots].add(values)[:, :n_train]


def _gram(slots: Array, previous: Array, plain: Array | None, variant: str, n_train: int) -> Array:
    """``X^T X`` of one test example; ``plain = C^T C`` (the ``B`` block, shared by every test example)."""
    if variant == "additive":
        return plain
    squared = _weighted_gram(slots, previous**2, n_train)
    if variant == "multiplicative":
        return squared
    cross = _weighted_gram(slots, previous, n_train)
    return jnp.block([[squared, cross], [cross.T, plain]])


def _test_equations(previous: Array, change: Array, slots: Array, plain: Array | None, banded: Array | None,
                    variant: str, n_train: int) -> tuple[Array, Array, Array]:
    """``(G, b, y^T Omega^{-1} y)`` of one test example from ``previous, change [runs, steps]``."""
    weights = block_weights(previous, variant)
    gram = _gram(slots, previous, plain, variant, n_train)
    moment = jnp.concatenate([_count_sums(slots, w * change, n_train, False) for w in weights])
    target_sq = jnp.sum(change**2)
    if banded is not None:  # whiten: subtract what the drift explains, S^T A^{-1} S with S = Z^T X
        features = jnp.concatenate([_count_sums(slots, w, n_train, True) for w in weights], axis=1)
        target_steps = change.sum(0)
        solved = _solve_banded(banded, features, symmetric=True)
        gram = gram - features.T @ solved
        moment = moment - solved.T @ target_steps
        target_sq = target_sq - target_steps @ _solve_banded(banded, target_steps[:, None], symmetric=True)[:, 0]
    return 0.5 * (gram + gram.T), moment, target_sq


@functools.partial(jax.jit, static_argnames=("variant", "n_train"))
def _chunk_statistics(curricula: Array, previous: Array, change: Array, banded: Array | None, indicators: Array, *,
                      variant: str, n_train: int) -> tuple[Array, ...]:
    """The per-test fields of :class:`CollapsedStats` for ``previous, change [runs, steps, chunk]``."""
    slots = jnp.where(curricula < 0, n_train, curricula)
    plain = _weighted_gram(slots, jnp.ones(curricula.shape[:2], previous.dtype), n_train) \
        if variant != "multiplicative" else None
    one = functools.partial(_test_equations, slots=slots, plain=plain, banded=banded, variant=variant, n_train=n_train)
    gram, moment, target_sq = jax.vmap(one, in_axes=(2, 2))(previous, change)
    eigenvalues, eigenvectors = jnp.linalg.eigh(gram)
    gram_e = jnp.einsum("mfg,kg->mkf", gram, indicators)  # G e_k
    return (jnp.clip(eigenvalues, 0.0, None), eigenvectors,
            jnp.einsum("mgf,mg->mf", eigenvectors, moment),
            jnp.einsum("mgf,mkg->mkf", eigenvectors, gram_e),
            jnp.einsum("mgf,kg->mkf", eigenvectors, indicators),
            target_sq,
            jnp.einsum("kf,mf->mk", indicators, moment),
            jnp.einsum("lf,mkf->mkl", indicators, gram_e))


def collapsed_statistics(data: ModelData, config: ModelConfig, chunk_size: int = 8,
                         progress: bool = False) -> CollapsedStats:
    """Whitened sufficient statistics and their eigendecomposition, in chunks of test examples.

    Memory: ``tests * features^2`` floats for the eigenvectors (on the host) plus a chunk of Gram
    matrices (on the device).
    """
    check_supported(config, "exact")
    indicators = block_indicators(data.n_train, config)
    size = max(min(chunk_size, data.n_tests), 1)
    n_features = indicators.shape[1]
    check_memory(8 * n_features**2 * (data.n_tests + 3 * size),
                 f"the exact path's eigendecompositions ({data.n_tests} x {n_features}^2 for n_train = {data.n_train})",
                 "n_train is the size of the pool the indices refer to: is it right?")
    system = drift_system(data.n_runs, data.n_steps, config) if config.step_component else None

    def part(start: int, index: np.ndarray) -> tuple:
        return _chunk_statistics(data.curricula, data.previous[..., index], data.change[..., index],
                                 None if system is None else system.banded, indicators,
                                 variant=config.variant, n_train=data.n_train)

    with jax.enable_x64(True):
        fields = chunked(part, data.n_tests, size, progress=progress, desc="exact: eigendecompositions", unit="chunk")
    return CollapsedStats(*fields, n_obs=data.n_runs * data.n_steps,
                          logdet_omega=system.logdet_omega if system is not None else 0.0)


def log_evidence(stats: CollapsedStats, sigma: Array, scale: Array, mu: Array) -> Array:
    """``[tests]`` log marginal likelihood ``log p(y | sigma, s, mu)`` on the standardised scale.

    Args:
        sigma, scale: ``[tests]``; mu: ``[tests, 2]`` population locations of ``a`` and ``B``.
            Also for one test example (``stats`` fields without their test axis, scalar
            ``sigma`` and ``scale``, ``mu [2]``), as the per-test NUTS evaluates it.
    """
    lam = jnp.asarray(stats.eigenvalues)
    s2, v2 = scale[..., None] ** 2, sigma[..., None] ** 2
    residual_sq = (stats.target_sq - 2.0 * jnp.sum(mu * stats.target_blocks, -1)
                   + jnp.einsum("...k,...kl,...l->...", mu, stats.gram_blocks, mu))
    projected = stats.proj_target - jnp.einsum("...k,...kf->...f", mu, stats.proj_gram)
    shrunk = jnp.sum(s2 / (v2 + s2 * lam) * projected**2, axis=-1)
    n = stats.n_obs
    return (-0.5 * n * jnp.log(2.0 * jnp.pi * sigma**2) - 0.5 * stats.logdet_omega
            - 0.5 * jnp.sum(jnp.log1p(s2 * lam / v2), axis=-1)
            - 0.5 * (residual_sq - shrunk) / sigma**2)


def posterior_given(stats: CollapsedStats, sigma: np.ndarray, scale: np.ndarray,
                    mu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact posterior of ``w = (a, B)`` given the hyperparameters (the test oracle, in NumPy).

    Args:
        sigma, scale: ``[tests]``; mu: ``[tests, 2]``.

    Returns:
        ``(mean [tests, features], cov [tests, features, features])`` on the standardised scale.
    """
    variance = 1.0 / (1.0 / scale[:, None] ** 2 + stats.eigenvalues / sigma[:, None] ** 2)
    prior_coords = np.einsum("mk,mkf->mf", mu, stats.proj_ones)
    coords = variance * (prior_coords / scale[:, None] ** 2 + stats.proj_target / sigma[:, None] ** 2)
    u = stats.eigenvectors
    return np.einsum("mfg,mg->mf", u, coords), np.einsum("mfg,mg,mhg->mfh", u, variance, u)


@jax.jit
def _effects_chunk(key: Array, start: Array, stats: CollapsedStats, sigma: Array, scale: Array,
                   mu: Array) -> Array:
    """``[draws, chunk, features]`` draws of ``w`` for one chunk of test examples."""
    variance = 1.0 / (1.0 / scale[..., None] ** 2 + stats.eigenvalues / sigma[..., None] ** 2)
    prior_coords = jnp.einsum("dmk,mkf->dmf", mu, stats.proj_ones)
    coords = variance * (prior_coords / scale[..., None] ** 2 + stats.proj_target / sigma[..., None] ** 2)
    noise = jax.random.normal(jax.random.fold_in(key, start), variance.shape, variance.dtype)
    return jnp.einsum("mfg,dmg->dmf", stats.eigenvectors, coords + jnp.sqrt(variance) * noise)


def draw_effects(stats: CollapsedStats, sigma: np.ndarray, scale: np.ndarray, mu: np.ndarray,
                 key: Array, chunk_size: int = 8) -> np.ndarray:
    """``[draws, tests, features]`` exact draws of ``w`` for hyperparameter draws, in chunks of test examples.

    Args:
        sigma, scale: ``[draws, tests]``; mu: ``[draws, tests, 2]``; key: a JAX random key.
    """
    n_tests = stats.eigenvalues.shape[0]

    def part(start: int, index: np.ndarray) -> Array:
        chunk = stats._replace(**{name: getattr(stats, name)[index] for name in TEST_FIELDS})
        return _effects_chunk(key, start, chunk, *(np.asarray(x, np.float64)[:, index] for x in (sigma, scale, mu)))

    with jax.enable_x64(True):
        return chunked(part, n_tests, max(min(chunk_size, n_tests), 1), axis=1)


@jax.jit
def _drift_draws(key: Array, banded: Array, cholesky: Array, target_steps: Array, fitted_steps: Array,
                 sigma: Array) -> Array:
    rhs = (target_steps[None] - fitted_steps).reshape(-1, target_steps.shape[-1]).T  # [steps, draws * tests]
    noise = _solve_banded(cholesky, jax.random.normal(key, rhs.shape, rhs.dtype), symmetric=False)  # ~ N(0, A^{-1})
    draws = _solve_banded(banded, rhs, symmetric=True) + sigma.reshape(-1) * noise
    return draws.T.reshape(fitted_steps.shape)


def draw_drift(system: DriftSystem, target_steps: np.ndarray, fitted_steps: np.ndarray,
               sigma: np.ndarray, key: Array) -> np.ndarray:
    """``[draws, tests, steps]`` exact draws of ``d | w, y``.

    Args:
        target_steps: ``[tests, steps]`` ``Z^T y``; fitted_steps: ``[draws, tests, steps]``
            ``Z^T X w`` for each draw of ``w``; sigma: ``[draws, tests]``; key: a JAX random key.
    """
    with jax.enable_x64(True):
        return np.asarray(_drift_draws(key, system.banded, system.cholesky, np.asarray(target_steps, np.float64),
                                       np.asarray(fitted_steps, np.float64), np.asarray(sigma, np.float64)))
