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
the few hyperparameters, then exact draws of the effects) and the oracle the tests check NUTS
and SVI against. Everything here is float64 NumPy/SciPy except the JAX likelihood.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import scipy.linalg
from jax import Array
from tqdm.auto import tqdm

from bayes_simfluence import ridge as ridge_lib
from bayes_simfluence.bayes.data import ModelData
from bayes_simfluence.bayes.model import ModelConfig


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
    rho2, kappa2 = config.drift_smoothness**2, config.drift_initial**2
    diagonal = np.full(n_steps, 2.0 / rho2)
    diagonal[-1] = 1.0 / rho2
    diagonal[0] = (1.0 if n_steps > 1 else 0.0) / rho2 + 1.0 / kappa2
    banded = np.zeros((2, n_steps))
    banded[0, 1:] = -1.0 / rho2
    banded[1] = diagonal + n_runs
    cholesky = scipy.linalg.cholesky_banded(banded, lower=False)
    logdet_a = 2.0 * np.log(cholesky[1]).sum()
    logdet_q = -np.log(kappa2) - (n_steps - 1) * np.log(rho2)
    return DriftSystem(banded, cholesky, float(logdet_a - logdet_q))


def standard_losses(data: ModelData) -> np.ndarray:
    """``[runs, steps + 1, tests]`` standardised losses rebuilt from ``data``."""
    return np.concatenate([data.previous, data.previous[:, -1:] + data.change[:, -1:]], axis=1)


def step_features(data: ModelData, config: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """``S = Z^T X`` ``[tests, steps, features]`` and ``Z^T y`` ``[tests, steps]``: sums over runs per step."""
    counts = np.zeros((data.n_runs, data.n_steps, data.n_train + 1))
    slots = np.where(data.curricula < 0, data.n_train, data.curricula)
    np.add.at(counts, (np.arange(data.n_runs)[:, None, None], np.arange(data.n_steps)[None, :, None], slots), 1.0)
    counts = counts[..., : data.n_train]  # [runs, steps, n_train]
    blocks = []
    if config.has_multiplicative:
        blocks.append(np.einsum("rtm,rti->mti", data.previous, counts))
    if config.has_additive:
        blocks.append(np.broadcast_to(counts.sum(0), (data.n_tests,) + counts.shape[1:]))
    return np.concatenate(blocks, axis=-1), data.change.sum(0).T


def collapsed_statistics(data: ModelData, config: ModelConfig, chunk_size: int = 8,
                         progress: bool = False) -> CollapsedStats:
    """Whitened sufficient statistics and their eigendecomposition, in chunks of test examples.

    Memory: ``tests * features^2`` floats for the eigenvectors plus a chunk of Gram matrices.
    """
    if config.likelihood != "normal":
        raise ValueError("the exact (conjugate) path needs likelihood='normal'; use SVI or NUTS for 'student_t'")
    if config.has_memory:
        raise ValueError("the exact (conjugate) path has no optimiser memory (its features would be dense); "
                         "use bayes-svi or bayes-nuts for memory='geometric'")
    indicators = block_indicators(data.n_train, config)
    system = drift_system(data.n_runs, data.n_steps, config) if config.step_component else None
    losses = standard_losses(data)
    pieces = []
    starts = range(0, data.n_tests, chunk_size)
    for start in tqdm(starts, desc="exact: eigendecompositions", disable=not progress, unit="chunk"):
        chunk = slice(start, start + chunk_size)
        equations = ridge_lib.normal_equations(data.curricula, losses[..., chunk], data.n_train,
                                               config.variant, centring="per_step")
        gram, moment, target_sq = equations.gram, equations.moment, equations.target_sq
        if system is not None:
            features, target_steps = step_features(data.select_tests(chunk), config)
            solved = _solve_drift(system, np.moveaxis(features, 0, 1))  # [steps, chunk, features]
            solved = np.moveaxis(solved, 1, 0)
            gram = gram - np.matmul(np.swapaxes(features, 1, 2), solved)
            moment = moment - np.matmul(np.swapaxes(solved, 1, 2), target_steps[..., None])[..., 0]
            target_sq = target_sq - np.einsum("mt,tm->m", target_steps, _solve_drift(system, target_steps.T))
        gram = 0.5 * (gram + np.swapaxes(gram, 1, 2))
        eigenvalues, eigenvectors = np.linalg.eigh(gram)
        eigenvalues = np.clip(eigenvalues, 0.0, None)
        ut = np.swapaxes(eigenvectors, 1, 2)
        gram_e = np.swapaxes(np.matmul(gram, indicators.T), 1, 2)  # [chunk, 2, features]
        pieces.append((
            eigenvalues, eigenvectors,
            np.matmul(ut, moment[..., None])[..., 0],
            np.swapaxes(np.matmul(ut, np.swapaxes(gram_e, 1, 2)), 1, 2),
            np.swapaxes(np.matmul(ut, indicators.T), 1, 2),
            target_sq,
            np.einsum("kf,mf->mk", indicators, moment),
            np.einsum("lf,mkf->mkl", indicators, gram_e),
        ))
    arrays = [np.concatenate(parts) for parts in zip(*pieces)]
    return CollapsedStats(*arrays, n_obs=data.n_runs * data.n_steps,
                          logdet_omega=system.logdet_omega if system is not None else 0.0)


def _solve_drift(system: DriftSystem, rhs: np.ndarray) -> np.ndarray:
    """``A^{-1} rhs`` for ``rhs [steps, ...]``."""
    flat = rhs.reshape(rhs.shape[0], -1)
    return scipy.linalg.cho_solve_banded((system.cholesky, False), flat).reshape(rhs.shape)


def _prior_mean_coordinates(stats_ones: Array, mu: Array) -> Array:
    """``U^T m0`` ``[..., tests, features]`` for locations ``mu [..., tests, 2]``."""
    return jnp.einsum("...mk,mkf->...mf", mu, stats_ones)


def log_evidence(stats: CollapsedStats, sigma: Array, scale: Array, mu: Array) -> Array:
    """``[tests]`` log marginal likelihood ``log p(y | sigma, s, mu)`` on the standardised scale.

    Args:
        sigma, scale: ``[tests]``; mu: ``[tests, 2]`` population locations of ``a`` and ``B``.
    """
    lam = jnp.asarray(stats.eigenvalues)
    s2, v2 = scale[:, None] ** 2, sigma[:, None] ** 2
    blocks = jnp.asarray(stats.gram_blocks)
    residual_sq = (jnp.asarray(stats.target_sq) - 2.0 * jnp.sum(mu * jnp.asarray(stats.target_blocks), -1)
                   + jnp.einsum("mk,mkl,ml->m", mu, blocks, mu))
    projected = jnp.asarray(stats.proj_target) - jnp.einsum("mk,mkf->mf", mu, jnp.asarray(stats.proj_gram))
    shrunk = jnp.sum(s2 / (v2 + s2 * lam) * projected**2, axis=-1)
    n = stats.n_obs
    return (-0.5 * n * jnp.log(2.0 * jnp.pi * sigma**2) - 0.5 * stats.logdet_omega
            - 0.5 * jnp.sum(jnp.log1p(s2 * lam / v2), axis=-1)
            - 0.5 * (residual_sq - shrunk) / sigma**2)


def posterior_given(stats: CollapsedStats, sigma: np.ndarray, scale: np.ndarray,
                    mu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact posterior of ``w = (a, B)`` given the hyperparameters (the test oracle).

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


def draw_effects(stats: CollapsedStats, sigma: np.ndarray, scale: np.ndarray, mu: np.ndarray,
                 rng: np.random.Generator, chunk_size: int = 8) -> np.ndarray:
    """``[draws, tests, features]`` exact draws of ``w`` for hyperparameter draws.

    Args:
        sigma, scale: ``[draws, tests]``; mu: ``[draws, tests, 2]``.
    """
    variance = 1.0 / (1.0 / scale[..., None] ** 2 + stats.eigenvalues / sigma[..., None] ** 2)
    prior_coords = np.einsum("dmk,mkf->dmf", mu, stats.proj_ones)
    coords = variance * (prior_coords / scale[..., None] ** 2 + stats.proj_target / sigma[..., None] ** 2)
    coords = coords + np.sqrt(variance) * rng.standard_normal(variance.shape)
    out = np.empty_like(coords)
    for start in range(0, coords.shape[1], chunk_size):
        chunk = slice(start, start + chunk_size)
        # [chunk, features, features] @ [chunk, features, draws] -> [draws, chunk, features]
        out[:, chunk] = np.moveaxis(np.matmul(stats.eigenvectors[chunk], np.moveaxis(coords[:, chunk], 0, -1)), -1, 0)
    return out


def draw_drift(system: DriftSystem, target_steps: np.ndarray, fitted_steps: np.ndarray,
               sigma: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``[draws, tests, steps]`` exact draws of ``d | w, y``.

    Args:
        target_steps: ``[tests, steps]`` ``Z^T y``; fitted_steps: ``[draws, tests, steps]``
            ``Z^T X w`` for each draw of ``w``; sigma: ``[draws, tests]``.
    """
    rhs = np.moveaxis(target_steps[None] - fitted_steps, -1, 0)  # [steps, draws, tests]
    mean = _solve_drift(system, rhs)
    noise = rng.standard_normal(rhs.shape)
    flat = scipy.linalg.solve_banded((0, 1), system.cholesky, noise.reshape(noise.shape[0], -1))
    draws = mean + sigma[None] * flat.reshape(noise.shape)
    return np.moveaxis(draws, 0, -1)
