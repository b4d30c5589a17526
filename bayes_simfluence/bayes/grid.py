"""Hyperparameters on a grid, everything else exact: the collapsed posterior with optimiser memory.

Given one test example's hyperparameters ``theta = (sigma, s, lambda)`` (noise scale, effect
scale, memory decay) the model of :mod:`bayes_simfluence.bayes.model` is a Bayesian linear
regression (:mod:`bayes_simfluence.bayes.conjugate`) whose features are the *remembered* counts

    M_lambda[r, t, i] = sum_k (1 - lambda) lambda^k n[r, t - k, i]     (times L_{t-1} for a),

so the effects ``w = (a, B) ~ N(0, s^2 I)`` and the step component integrate out exactly and
leave the marginal likelihood ``p(y | theta)``. Three numbers per test example are then
integrated numerically on a grid, as INLA does for its hyperparameters (Rue, Martino and Chopin,
2009), and each draw of ``theta`` gets an exact draw of ``w | theta, y`` and of ``d | w, theta, y``.
The only approximation is the grid; there is no guide and no mean-field factorisation, so
what the variational paths lose (the examples' posterior correlations given the hyperparameters,
the evidence they cost) is kept.

Coordinates. With ``tau = s / sigma`` the evidence is, for the whitened statistics
``G(lambda) = X^T Omega^{-1} X = U diag(e) U^T``, ``p = U^T X^T Omega^{-1} y``, ``yy = y^T Omega^{-1} y``,

    log p(y | theta) = -(n log(2 pi sigma^2) + log |Omega| + sum_f log(1 + tau^2 e_f) + Q(tau) / sigma^2) / 2,
    Q(tau) = yy - sum_f p_f^2 / (e_f + tau^-2),

whose maximum over ``sigma`` is at ``sigma_hat^2 = Q / n``. The grid is over
``(lambda, v = log tau, delta = log sigma - log sigma_hat(lambda, v))``: ``sigma`` is pinned down
by ``runs * steps`` observations (sd of ``log sigma`` about ``1 / sqrt(2 n)``) but moves with
``tau`` and ``lambda``, and this shear follows it (unit Jacobian, so the cells keep equal volume).
The density on the grid is the prior of :func:`~bayes_simfluence.bayes.model.effects_model`
(``HalfNormal`` scales, ``Beta(1, b)`` decay) with the Jacobian ``sigma s`` of the log scales,
times the evidence.

Stages per test example: a coarse grid over the whole range (the schedule's, :data:`DENSE` for bayes-grid) finds the box
holding every cell within :data:`DROP` log units of the best; a finer grid over
that box, widened by a cell, is refined the same way until every axis has :data:`MIN_POINTS`
points within the box (at most the schedule's refinements; an axis already resolved keeps its
points while the others are refined, :func:`refine`). The last grid's cell
probabilities are the posterior: a draw picks a cell by its probability and a point uniformly
inside it (the decay at the centre of one of the schedule's parts of its cell, so that the
statistics are computed once per part rather than once per draw). :func:`run_grid` reports the
mass of the outer cells where the grid ends inside a parameter's range (``edge_mass``): large
values mean the box cut the posterior off. It also reports each test example's log marginal
likelihood ``log p(y)`` of its standardised changes (``log_evidence [tests]``: the last grid's
density summed over its cells times their volume), which compares settings the grid does not
integrate over (such as ``drift_smoothness``) by evidence.

Cost: one ``[features, features]`` Gram matrix of the dense remembered features
(``runs * steps * features^2`` operations) and one eigendecomposition per (test example, decay
value): ``tests x (coarse + refined decays + distinct drawn decays)`` of them. That suits the problems of the
retraining study (45-60 training examples) in seconds; at thousands of training examples it
does not (``bayes-cg`` and ``bayes-svi`` are the paths there), and :func:`run_grid` says so before it
starts. Without the residual effects (``residual_effects=False``) the effects are the level and the
feature regression, which see a batch only through its sums of ``1`` and the features: the
statistics then cost ``runs * steps * batch * k`` plus the nuisance columns' small Gram matrix, at
any pool (:func:`_remembered_sums`).
Without memory (``memory="none"``) the decay is fixed at 0 and the grid has two dimensions.

Common level. Where the model learns ``mu_a`` (``common_level``, the default; see
:mod:`bayes_simfluence.bayes.model`), ``a_i = mu_a + a'_i`` with ``a' ~ N(0, s^2 I)``: the level
is one more nuisance coefficient beside the run state's, on the feature
``L_{t-1} sum_i M_lambda[r, t, i]`` scaled to unit root mean square, with prior sd
:data:`LEVEL_PRIOR` ``sigma`` (flat in effect). It is integrated out by the same Schur complement
(so ``G``, ``p`` and ``yy`` above are of ``a'`` and ``B``, and ``log |Omega|`` gains
``nuisance_logdet``) and drawn exactly given each draw of the effects; the posterior's ``a`` are
``a' + mu_a``. Free locations of ``B`` (no step component) would add grid dimensions, so the
grid path needs the step component (which fixes ``mu_B`` at 0).
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax import Array, lax

from bayes_simfluence.bayes import conjugate
from bayes_simfluence.bayes.chunking import chunked
from bayes_simfluence.bayes.data import ModelData
from bayes_simfluence.bayes.features import add_feature_effects, n_columns
from bayes_simfluence.bayes.backends import check_supported
from bayes_simfluence.bayes.inference import FitResult, fitted_step_sums, split_weights
from bayes_simfluence.bayes.model import ModelConfig, drift_bands
from bayes_simfluence.bayes.run_state import RunState, host_features
from bayes_simfluence.rollout import geometric_memory
from bayes_simfluence.budget import check as check_memory
from bayes_simfluence.design import block_weights
from bayes_simfluence.validation import InputError

#: range of ``v = log(s / sigma)`` on the coarse grid
LOG_TAU_RANGE = (-16.0, 12.0)
#: half-width of the coarse ``delta`` range in sds of ``log sigma`` (``1 / sqrt(2 n)``)
DELTA_SDS = 8.0
#: largest decay on the grid (the ``Beta(1, 2)`` prior puts 1e-4 above it)
DECAY_MAX = 0.99
#: eigenvalues of the whitened Gram below this fraction of its largest are its null space (examples
#: no run used, directions the nuisance features take): ``b`` has no component there but rounding
NULL_SPACE = 1e-12
#: cells within this many log units of the best cell make the next stage's box
DROP = 20.0
#: refine again until every axis has this many points within :data:`DROP` of the best ...
MIN_POINTS = 12
#: ... and the outer cells hold at most this much probability ...
EDGE_TOLERANCE = 1e-4


class Schedule(NamedTuple):
    """How a backend walks the grid: its points per axis ``(decay, log tau, delta)`` on the coarse
    and the fine grids, its refinements after the coarse grid at most, and the parts of a decay cell
    whose centres a draw's decay takes (statistics are computed once per part, not per draw).
    Only the decay axis costs statistics; the other two are free given them."""

    coarse: tuple[int, int, int]
    fine: tuple[int, int, int]
    max_refinements: int
    decay_parts: int


#: ``bayes-grid``'s schedule
DENSE = Schedule(coarse=(25, 71, 11), fine=(24, 40, 20), max_refinements=10, decay_parts=4)
#: sd, in units of ``sigma``, of the prior of the common level's coefficient on its unit-RMS
#: feature: so wide that the prior is flat in effect (the other paths' ``Normal(0, location_prior)``
#: is too: hundreds of posterior sds of ``mu_a``), while it stays proper, so the density is exact
#: Gaussian algebra (:func:`_pair_statistics`)
LEVEL_PRIOR = 1e3
#: refuse the grid path above this many multiply-adds (about ten minutes on two CPU cores: the
#: statistics ran at about 3.5 GFLOP/s there)
MAX_FLOPS = 2e12


class GridStats(NamedTuple):
    """Whitened statistics of (test example, decay) pairs (the eigenvectors only when asked).

    The common multiplicative level ``mu_a``, the run state's coefficients and the feature prior's are
    integrated out too: their ``K`` features ``F`` (the level's first, then the state's, then the
    feature prior's columns; :func:`nuisance_priors`)
    join the step component's nuisance part, and ``nuisance_*`` keep what drawing them needs.

    Attributes:
        eigenvalues: ``[pairs, features]``; vectors: ``[pairs, features, features]`` or None;
        projected: ``[pairs, features]`` ``U^T X^T Omega^{-1} y``; target_sq: ``[pairs]`` ``yy``.
        nuisance_cross: ``[pairs, K, features]`` ``F^T Omega^{-1} X``; nuisance_target: ``[pairs, K]``
            ``F^T Omega^{-1} y``; nuisance_gram: ``[pairs, K, K]`` ``F^T Omega^{-1} F``;
        nuisance_logdet: ``[pairs]`` ``log |I + P F^T Omega^{-1} F P|`` (``P`` the priors' sds in
            units of ``sigma``): what integrating them out adds to ``log |Omega|``;
        level_scale: ``[pairs]`` root mean square of the level's feature (``F``'s first column is it
            divided by this; 1 without the level);
        column_scale: ``[pairs, columns]`` root mean squares of the feature prior's design columns
            (:func:`feature_columns`; ``F``'s last columns are them divided by these).
    """

    eigenvalues: np.ndarray
    vectors: np.ndarray | None
    projected: np.ndarray
    target_sq: np.ndarray
    nuisance_cross: np.ndarray
    nuisance_target: np.ndarray
    nuisance_gram: np.ndarray
    nuisance_logdet: np.ndarray
    level_scale: np.ndarray
    column_scale: np.ndarray


def dense_counts(curricula: np.ndarray, n_train: int) -> np.ndarray:
    """``[runs, steps, n_train]`` times each training example fills a slot of each batch."""
    n_runs, n_steps, _ = curricula.shape
    counts = np.zeros((n_runs, n_steps, n_train + 1))
    slots = np.where(curricula < 0, n_train, curricula)
    np.add.at(counts, (np.arange(n_runs)[:, None, None], np.arange(n_steps)[None, :, None], slots), 1.0)
    return counts[..., :n_train]


def _remembered_sums(occupancy: Array, decay: Array, phi: Array, previous: Array, variant: str,
                     residual: bool) -> tuple[list[Array], Array, Array]:
    """``(effect blocks, sum_i M_lambda[., ., i] [runs, steps], M_lambda phi [runs, steps, k])``.

    With the residual effects, ``occupancy`` is the dense counts ``[runs, steps, n_train]``
    (:func:`dense_counts`) and the blocks are the remembered counts' (:func:`_blocks_of`). Without
    them the effects are the level and the feature regression alone, which see the counts only
    through their sums against ``1`` and ``phi``; the memory is linear along steps, so
    ``M_lambda phi = M_lambda (n phi)`` and those sums are gathered from ``occupancy``, the batch slots
    ``[runs, steps, batch]`` (padding ``n_train``), at ``runs x steps x batch x k`` cost whatever the pool:
    the blocks are one column of zeros (``tau`` then moves nothing, and its draws are discarded)."""
    if residual:
        smoothed = geometric_memory(occupancy, decay, axis=1)  # [runs, steps, n_train]
        return _blocks_of(previous, smoothed, variant), smoothed.sum(-1), smoothed @ phi
    values = jnp.concatenate([jnp.ones((phi.shape[0], 1), phi.dtype), phi], axis=1)
    values = jnp.concatenate([values, jnp.zeros((1, values.shape[1]), phi.dtype)])  # the padding slot
    sums = geometric_memory(values[occupancy].sum(2), decay, axis=1)  # [runs, steps, 1 + k]
    return [jnp.zeros_like(previous)[..., None]], sums[..., 0], sums[..., 1:]


def _pair_statistics(occupancy: Array, previous: Array, change: Array, decay: Array, diagonal: Array, off: Array,
                     state: Array, phi: Array, priors: Array, variant: str, step_component: bool, level: bool,
                     vectors: bool, residual: bool) -> tuple:
    """Statistics of one (test example, decay) pair: ``previous``, ``change`` ``[runs, steps]``;
    ``state`` ``[runs, steps, S]`` the scaled run-state features (``S = 0``: none); ``occupancy``
    the dense counts, or the batch slots without the ``residual`` effects (:func:`_remembered_sums`).
    The nuisance
    features ``F`` (with ``level``, first the common level's ``previous * sum_i M_lambda[., ., i]``
    divided by its root mean square, then ``state``) have coefficients ``~ N(0, (priors sigma)^2)``
    (``priors [K]``), integrated out: with ``M = F^T Omega^{-1} F + diag(priors)^-2`` the whitened
    statistics lose ``F``'s part by a Schur complement, ``G - X^T Omega^{-1} F M^{-1} F^T Omega^{-1} X``
    (and alike for ``b``, ``yy``). The feature prior's columns (``phi [n_train, k]``, ``k = 0``: none)
    follow the state's: :func:`feature_columns`."""
    parts, remembered, projected = _remembered_sums(occupancy, decay, phi, previous, variant, residual)
    level_scale = jnp.ones((), previous.dtype)
    if level:
        level_feature = previous * remembered  # [runs, steps]
        level_scale = jnp.sqrt(jnp.mean(level_feature**2))
        level_scale = jnp.where(level_scale > 0, level_scale, 1.0)
        state = jnp.concatenate([(level_feature / level_scale)[..., None], state], axis=-1)
    columns, column_scale = feature_columns(previous, projected, variant)
    state = jnp.concatenate([state, columns], axis=-1)
    n_features, n_nuisance = sum(p.shape[-1] for p in parts), state.shape[-1]
    x = jnp.concatenate(parts + [state], axis=-1)  # [runs, steps, features + K]
    gram = jnp.einsum("rtf,rtg->fg", x, x)
    target = jnp.einsum("rtf,rt->f", x, change)
    target_sq = jnp.sum(change**2)
    if step_component:  # Omega^{-1} = I - Z A^{-1} Z^T
        sums = jnp.concatenate([x.sum(0), change.sum(0)[:, None]], axis=1)  # [steps, features + S + 1]
        zero = jnp.zeros(1, x.dtype)
        solved = lax.linalg.tridiagonal_solve(jnp.concatenate([zero, off]), diagonal, jnp.concatenate([off, zero]),
                                              sums)
        correction = sums.T @ solved
        gram, target, target_sq = gram - correction[:-1, :-1], target - correction[:-1, -1], target_sq - correction[-1, -1]
    cross, nuisance_target = gram[n_features:, :n_features], target[n_features:]
    nuisance_gram = gram[n_features:, n_features:]
    gram, target = gram[:n_features, :n_features], target[:n_features]
    logdet = jnp.zeros((), x.dtype)
    if n_nuisance:
        precision = nuisance_gram + jnp.diag(1.0 / priors**2)
        solved = jnp.linalg.solve(precision, jnp.concatenate([cross, nuisance_target[:, None]], axis=1))
        gram = gram - cross.T @ solved[:, :-1]
        target, target_sq = target - cross.T @ solved[:, -1], target_sq - nuisance_target @ solved[:, -1]
        logdet = jnp.linalg.slogdet(jnp.eye(n_nuisance, dtype=x.dtype)
                                    + priors[:, None] * nuisance_gram * priors[None, :])[1]
    eigenvalues, u = jnp.linalg.eigh(gram)
    return (jnp.maximum(eigenvalues, 0.0), (u if vectors else None), u.T @ target, target_sq, cross, nuisance_target,
            nuisance_gram, logdet, level_scale, column_scale)


def _blocks_of(previous: Array, sums: Array, variant: str) -> list[Array]:
    """The design's blocks from remembered sums ``[runs, steps, n]`` and ``previous [runs, steps]``
    (:func:`~bayes_simfluence.design.block_weights`)."""
    return [weight[..., None] * sums for weight in block_weights(previous, variant)]


def feature_columns(previous: Array, projected: Array, variant: str) -> tuple[Array, Array]:
    """The feature prior's design columns ``X phi_j`` (:mod:`~bayes_simfluence.bayes.features`) from the
    remembered batch sums of the features ``projected [runs, steps, k]``, divided by their root mean
    squares: ``([runs, steps, columns], [columns])`` (``a``'s block first)."""
    columns = jnp.concatenate(_blocks_of(previous, projected, variant), axis=-1)
    scale = jnp.sqrt(jnp.mean(columns**2, axis=(0, 1)))
    scale = jnp.where(scale > 0, scale, 1.0)
    return columns / scale, scale


@functools.partial(jax.jit, static_argnames=("variant", "step_component", "level", "vectors", "residual"))
def _statistics_chunk(occupancy: Array, previous: Array, change: Array, tests: Array, decays: Array, diagonal: Array,
                      off: Array, state: Array, phi: Array, priors: Array, *, variant: str, step_component: bool,
                      level: bool, vectors: bool, residual: bool) -> tuple:
    """:func:`_pair_statistics` for a chunk of pairs ``tests [chunk]``, ``decays [chunk]`` (their features
    ``phi [chunk, n_train, k]``)."""
    def one(test: Array, decay: Array, phi_m: Array) -> tuple:
        return _pair_statistics(occupancy, previous[..., test], change[..., test], decay, diagonal, off, state,
                                phi_m, priors, variant, step_component, level, vectors, residual)

    return jax.vmap(one)(tests, decays, phi)


def scaled_state_features(data: ModelData, state: RunState | None) -> np.ndarray:
    """``[runs, steps, S]`` the run-state features divided by their scale (``S = 0`` without one)."""
    if state is None:
        return np.zeros(data.curricula.shape[:2] + (0,))
    return host_features(data.curricula, state) / state.feature_scale


def nuisance_priors(config: ModelConfig, n_state: int, n_columns: int = 0) -> np.ndarray:
    """``[K]`` sds, in units of ``sigma``, of the nuisance coefficients on their unit-scale
    features: :data:`LEVEL_PRIOR` for the common level (first, where the model learns it), then
    ``state_prior`` for each of the ``n_state`` run-state features, then ``feature_prior`` for each
    of the feature prior's ``n_columns`` design columns."""
    return np.array([LEVEL_PRIOR] * config.has_a_location + [config.state_prior] * n_state
                    + [config.feature_prior] * n_columns)


def pair_statistics(data: ModelData, config: ModelConfig, tests: np.ndarray, decays: np.ndarray,
                    vectors: bool = False, progress: bool = False, desc: str = "grid: statistics",
                    state: RunState | None = None) -> GridStats:
    """Whitened statistics for every pair ``(tests[k], decays[k])``, in chunks of one compiled shape
    (with the common level, where the model learns it, the run state ``state`` and the feature
    prior's coefficients, where ``config.features``, integrated out, see :func:`_pair_statistics`).
    Without the residual effects the statistics never form the ``[runs, steps, n_train]`` counts
    (:func:`_remembered_sums`): their effect part is one column of zeros."""
    residual = config.residual_effects
    if residual:
        occupancy = dense_counts(data.curricula, data.n_train)
    else:
        occupancy = np.where(data.curricula < 0, data.n_train, data.curricula)
    state_features = scaled_state_features(data, state)
    n_columns = n_feature_columns(data, config)
    priors = nuisance_priors(config, state_features.shape[-1], n_columns)
    n_features, n_nuisance = design_features(data.n_train, config), len(priors)
    per_pair = 8 * (occupancy.size * 3 + (n_features + n_nuisance) * data.n_runs * data.n_steps
                    + 4 * (n_features + n_nuisance)**2)
    chunk = int(max(1, min(64, 2**28 // per_pair)))
    diagonal, off, _ = drift_bands(data.n_runs, data.n_steps, config)

    def part(start: int, index: np.ndarray) -> tuple:
        return _statistics_chunk(occupancy, data.previous, data.change, tests[index], decays[index], diagonal, off,
                                 state_features, data.features_of(tests[index], config.features), priors,
                                 variant=config.variant, step_component=config.step_component,
                                 level=config.has_a_location, vectors=vectors, residual=residual)

    with jax.enable_x64(True):
        return GridStats(*chunked(part, len(tests), chunk, progress=progress, desc=desc, unit="chunk"))


def n_feature_columns(data: ModelData, config: ModelConfig) -> int:
    """The feature prior's design columns of a fit (0 without it)."""
    return n_columns(data.n_features_used(config.features), config.variant)


def _n_features(n_train: int, config: ModelConfig) -> int:
    return n_train * (2 if config.variant == "linear" else 1)


def design_features(n_train: int, config: ModelConfig) -> int:
    """Columns of the effects' part of the statistics: every example's effects, or one column of
    zeros without the residual effects (:func:`_remembered_sums`)."""
    return _n_features(n_train, config) if config.residual_effects else 1


@functools.partial(jax.jit, static_argnames=("has_memory",))
def _log_density(evidence: "Evidence", decay: Array, log_tau: Array, delta: Array, n_obs: int, logdet_omega: Array,
                 priors: Array, has_memory: bool) -> tuple[Array, Array]:
    """Log posterior density on a grid, and ``log sigma_hat``.

    Args:
        evidence: :class:`Evidence` shaped ``[tests, decays, ...]``;
        decay: ``[tests, decays]``; log_tau: ``[tests, taus]``; delta: ``[tests, deltas]``;
        logdet_omega: ``[tests, decays]`` ``log |Omega|`` plus the nuisance part (``nuisance_logdet``);
        priors: ``(noise prior, effect scale prior, memory prior)``.

    Returns:
        ``([tests, decays, taus, deltas] log density, [tests, decays, taus] log sigma_hat)``.
    """
    inverse_tau2 = jnp.exp(-2.0 * log_tau)[:, None, :, None]  # [tests, 1, taus, 1]
    q = _quadratic(evidence.quad_nodes[:, :, None, :], evidence.quad_weights[:, :, None, :],
                   evidence.target_sq[:, :, None], inverse_tau2)  # [tests, decays, taus]
    logdet = jnp.sum(evidence.logdet_weights[:, :, None, :]
                     * jnp.log1p(evidence.logdet_nodes[:, :, None, :] / inverse_tau2), axis=-1)
    log_sigma_hat = 0.5 * jnp.log(q / n_obs)
    u = log_sigma_hat[..., None] + delta[:, None, None, :]  # log sigma
    log_s = u + log_tau[:, None, :, None]
    log_lik = -0.5 * (n_obs * (jnp.log(2.0 * jnp.pi) + 2.0 * u) + logdet_omega[:, :, None, None] + logdet[..., None]
                      + q[..., None] * jnp.exp(-2.0 * u))
    log_prior = (dist.HalfNormal(priors[0]).log_prob(jnp.exp(u)) + u
                 + dist.HalfNormal(priors[1]).log_prob(jnp.exp(log_s)) + log_s)
    if has_memory:
        log_prior = log_prior + dist.Beta(1.0, priors[2]).log_prob(jnp.clip(decay, 0.0, DECAY_MAX))[:, :, None, None]
    return log_lik + log_prior, log_sigma_hat


def _quadratic(nodes: Array, weights: Array, target_sq: Array, inverse_tau2: Array) -> Array:
    """``Q = y^T P y - b^T (G + tau^-2 I)^{-1} b`` from its quadrature (``[..., nodes]``), floored above 0."""
    return jnp.maximum(target_sq - jnp.sum(weights / (nodes + inverse_tau2), axis=-1), 1e-300)


class _Grid(NamedTuple):
    """Cell centres of one stage, per test example (``[tests, points]`` each) and their spacings ``[tests]``."""

    decay: np.ndarray
    log_tau: np.ndarray
    delta: np.ndarray


def _spacing(points: np.ndarray) -> np.ndarray:
    return points[:, 1] - points[:, 0] if points.shape[1] > 1 else np.zeros(points.shape[0])


class Evidence(NamedTuple):
    """What the evidence needs of (test example, decay) pairs, as two quadratures in ``tau``:
    ``log |I + tau^2 G| = sum logdet_weights log1p(tau^2 logdet_nodes)`` and
    ``b^T (G + tau^-2 I)^{-1} b = sum quad_weights / (quad_nodes + tau^-2)``. The dense path's are
    exact (the eigenvalues, with weights 1 and ``(U^T b)^2``); :mod:`bayes_simfluence.bayes.krylov`'s
    are Lanczos rules.

    Attributes:
        logdet_nodes, logdet_weights: ``[pairs, n]``; quad_nodes, quad_weights: ``[pairs, m]``;
        target_sq: ``[pairs]`` ``y^T P y``; nuisance_logdet: ``[pairs]``.
    """

    logdet_nodes: np.ndarray
    logdet_weights: np.ndarray
    quad_nodes: np.ndarray
    quad_weights: np.ndarray
    target_sq: np.ndarray
    nuisance_logdet: np.ndarray

    def take(self, index: np.ndarray) -> "Evidence":
        return Evidence(*(x[index] for x in self))


def dense_evidence(stats: GridStats) -> Evidence:
    """The exact :class:`Evidence` of dense statistics; ``b``'s components along eigenvalues at
    rounding level (below :data:`NULL_SPACE` of the largest) are rounding errors of 0 and are dropped."""
    null = stats.eigenvalues <= NULL_SPACE * stats.eigenvalues.max(axis=-1, keepdims=True)
    return Evidence(stats.eigenvalues, np.ones_like(stats.eigenvalues), stats.eigenvalues,
                    np.where(null, 0.0, stats.projected**2), stats.target_sq, stats.nuisance_logdet)


#: ``(tests [pairs], decays [pairs], description) -> Evidence``: a backend's statistics
EvidenceOf = Callable[[np.ndarray, np.ndarray, str], Evidence]


def _evaluate(data: ModelData, config: ModelConfig, grid: _Grid, evidence_of: EvidenceOf,
              desc: str) -> tuple[np.ndarray, Evidence]:
    """``(log density [tests, decays, taus, deltas], evidence [tests * decays])``."""
    n_tests, n_decays = grid.decay.shape
    evidence = evidence_of(np.repeat(np.arange(n_tests), n_decays), grid.decay.reshape(-1), desc)
    shaped = Evidence(*(x.reshape((n_tests, n_decays) + x.shape[1:]) for x in evidence))
    _, _, logdet_omega = drift_bands(data.n_runs, data.n_steps, config)
    priors = np.array([config.noise_prior, config.effect_scale_prior, config.memory_prior])
    with jax.enable_x64(True):
        log_density, _ = _log_density(shaped, grid.decay, grid.log_tau, grid.delta, data.n_runs * data.n_steps,
                                      (logdet_omega if config.step_component else 0.0) + shaped.nuisance_logdet,
                                      priors, has_memory=config.has_memory)
    return np.asarray(log_density), evidence


def _coarse_grid(n_tests: int, n_obs: int, config: ModelConfig, schedule: Schedule) -> _Grid:
    coarse = schedule.coarse
    decays = np.linspace(0.0, DECAY_MAX, coarse[0]) if config.has_memory else np.zeros(1)
    # without residual effects (s = 0) the tau axis is one point at the bottom of its range, where
    # tau^2 G is below rounding and the effects are the nuisance columns' (level, features) alone
    log_taus = np.linspace(*LOG_TAU_RANGE, coarse[1]) if config.residual_effects else np.array([LOG_TAU_RANGE[0]])
    half = DELTA_SDS / math.sqrt(2 * n_obs)
    return _Grid(np.tile(decays, (n_tests, 1)), np.tile(log_taus, (n_tests, 1)),
                 np.tile(np.linspace(-half, half, coarse[2]), (n_tests, 1)))


def _box(points: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(low, high) [tests]`` of the kept points ``keep [tests, points]``, widened by one spacing,
    and by the grid's whole width more on a side where the kept points reach the grid's end (the
    posterior goes on beyond it: the next grid moves that way rather than zooming in)."""
    step = _spacing(points)
    first, last = keep.argmax(axis=1), keep.shape[1] - 1 - keep[:, ::-1].argmax(axis=1)
    rows = np.arange(len(points))
    low, high = points[rows, first], points[rows, last]
    width = points[:, -1] - points[:, 0]
    return (low - step - np.where(first == 0, width, 0.0),
            high + step + np.where(last == keep.shape[1] - 1, width, 0.0))


def _kept(log_density: np.ndarray, axis: int) -> np.ndarray:
    """``[tests, points]``: the points of ``axis`` (0-2) with some cell within :data:`DROP` of the best."""
    others = tuple(a for a in (1, 2, 3) if a != axis + 1)
    return log_density.max(axis=others) > log_density.max(axis=(1, 2, 3))[:, None] - DROP


def _refined(grid: _Grid, log_density: np.ndarray, fine: tuple[int, int, int]) -> _Grid:
    """Per test example, ``fine`` points over the box of cells within :data:`DROP` of the best,
    widened by a cell (the decay kept in ``[0, DECAY_MAX]``, ``log tau`` in :data:`LOG_TAU_RANGE`:
    beyond ``tau = e^12`` the evidence would divide rounding errors of ``b`` in the null space of ``G``
    by ``tau^-2``, and a posterior whose effects the features explain reaches far below ``e^-16``,
    where the residual effects are nil)."""
    axes = []
    for axis, (points, n_fine) in enumerate(zip(grid, fine)):
        if points.shape[1] == 1:
            axes.append(points.copy())
            continue
        low, high = _box(points, _kept(log_density, axis))
        if axis == 0:
            low, high = np.maximum(low, 0.0), np.minimum(high, DECAY_MAX)
        elif axis == 1:
            low, high = np.maximum(low, LOG_TAU_RANGE[0]), np.minimum(high, LOG_TAU_RANGE[1])
        width = (high - low) / n_fine
        axes.append(low[:, None] + width[:, None] * (np.arange(n_fine) + 0.5))
    return _Grid(*axes)


def _resolved(grid: _Grid, log_density: np.ndarray, settled: np.ndarray) -> np.ndarray:
    """``[tests]``: every free axis has at least :data:`MIN_POINTS` points within :data:`DROP` of
    the best, and the outer cells hold at most :data:`EDGE_TOLERANCE` of the probability;
    ``settled``: :func:`_settled` of the same grid and density."""
    return (edge_mass(grid, _weights(log_density)) <= EDGE_TOLERANCE) & settled.all(axis=0)


def _settled(grid: _Grid, log_density: np.ndarray) -> np.ndarray:
    """``[axes, tests]``: the axis has one point, or at least :data:`MIN_POINTS` points within
    :data:`DROP` of the best and at most :data:`EDGE_TOLERANCE` of the probability in its outer
    cells. A settled axis keeps its points while the others are refined: re-boxed together, an
    axis already resolved could widen again (its kept points reach the grid's end at ``DROP`` log
    units below the best) while another zooms in, and the two took turns without ever both
    resolving (sharp posteriors of thousands of observations)."""
    weights = _weights(log_density)
    settled = np.ones((len(grid), len(log_density)), dtype=bool)
    for axis, points in enumerate(grid):
        if points.shape[1] > 1:
            settled[axis] = (_kept(log_density, axis).sum(axis=1) >= MIN_POINTS) \
                & (_axis_edge_mass(grid, weights, axis) <= EDGE_TOLERANCE)
    return settled


def _weights(log_density: np.ndarray) -> np.ndarray:
    """Cell probabilities of ``log_density [tests, decay, tau, delta]``, normalised per test example."""
    flat = log_density.reshape(len(log_density), -1)
    weights = np.exp(flat - flat.max(axis=1, keepdims=True))
    return (weights / weights.sum(axis=1, keepdims=True)).reshape(log_density.shape)


def _log_cell_volume(grid: _Grid) -> np.ndarray:
    """``[tests]`` log volume of a cell in ``(decay, log tau, delta)`` (axes of one point count 1)."""
    return sum(np.log(_spacing(points)) for points in grid if points.shape[1] > 1)


def edge_mass(grid: _Grid, weights: np.ndarray) -> np.ndarray:
    """``[tests]`` probability of the outer cells of each axis, where the grid ends inside the
    parameter's range (not at a decay of 0 or :data:`DECAY_MAX`, nor at the ends of
    :data:`LOG_TAU_RANGE`): large values mean the grid cut the posterior off."""
    return sum(_axis_edge_mass(grid, weights, axis) for axis in range(len(grid)))


def _axis_edge_mass(grid: _Grid, weights: np.ndarray, axis: int) -> np.ndarray:
    """``[tests]`` :func:`edge_mass` of one axis (0 where it has one point)."""
    points = grid[axis]
    if points.shape[1] == 1:
        return np.zeros(weights.shape[0])
    lowest, highest = ((0.0, DECAY_MAX), LOG_TAU_RANGE, (-np.inf, np.inf))[axis]
    half = _spacing(points) / 2
    marginal = weights.sum(axis=tuple(a for a in (1, 2, 3) if a != axis + 1))  # [tests, points]
    return (np.where(points[:, 0] - half > lowest + 1e-9, marginal[:, 0], 0.0)
            + np.where(points[:, -1] + half < highest - 1e-9, marginal[:, -1], 0.0))


def _log_sigma_hat(evidence: Evidence, log_tau: np.ndarray, n_obs: int) -> np.ndarray:
    """``log sigma_hat`` ``[draws]`` at one pair's evidence per draw (``evidence`` ``[draws, ...]``)."""
    with jax.enable_x64(True):
        q = _quadratic(evidence.quad_nodes, evidence.quad_weights, evidence.target_sq, np.exp(-2.0 * log_tau)[:, None])
        return 0.5 * np.log(np.asarray(q) / n_obs)


@jax.jit
def _effect_draws(key: Array, eigenvalues: Array, vectors: Array, projected: Array, sigma: Array,
                  scale: Array) -> Array:
    """``[pairs, features]`` draws of ``w ~ N(U v U^T p / sigma^2, U v U^T)``, ``v = 1 / (1/s^2 + e/sigma^2)``."""
    variance = 1.0 / (1.0 / scale[:, None] ** 2 + eigenvalues / sigma[:, None] ** 2)
    noise = jax.random.normal(key, variance.shape, variance.dtype)
    coords = variance * projected / sigma[:, None] ** 2 + jnp.sqrt(variance) * noise
    return jnp.einsum("pfg,pg->pf", vectors, coords)


def _draw_effects(key: Array, stats: GridStats, which: np.ndarray, sigma: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``[n, features]`` exact draws of ``w`` for ``n`` draws of the hyperparameters (``sigma``,
    ``scale`` ``[n]``) whose decay's statistics are row ``which [n]`` of ``stats``, in chunks of one
    compiled shape (the eigenvectors of a chunk's rows are gathered for it alone)."""
    n, n_features = len(which), stats.eigenvalues.shape[1]
    chunk = int(max(1, min(n, 2**27 // (8 * n_features**2))))

    def part(start: int, index: np.ndarray) -> Array:
        rows = which[index]
        return _effect_draws(jax.random.fold_in(key, start), stats.eigenvalues[rows], stats.vectors[rows],
                             stats.projected[rows], sigma[index], scale[index])

    with jax.enable_x64(True):
        return chunked(part, n, chunk)


def grid_cost(n_train: int, n_obs: int, config: ModelConfig, num_draws: int = 200) -> float:
    """Multiply-adds of one test example's statistics in a fit (the dominant cost), at most:
    ``n_obs = runs * steps`` rows of ``2 n_train`` features (``n_train`` for one-part variants; one
    without the residual effects, whose few nuisance columns are not counted),
    one refinement, and a distinct decay for every draw up to :data:`DENSE`'s decay parts per fine cell."""
    n_features = design_features(n_train, config)
    n_decays = 2 + min(num_draws, 2) if not config.has_memory else \
        DENSE.coarse[0] + DENSE.fine[0] + min(num_draws, DENSE.fine[0] * DENSE.decay_parts)
    return float(n_decays * (n_obs * n_features**2 + 4 * n_features**3))


class Hyperparameters(NamedTuple):
    """Draws of each test example's hyperparameters (``[draws, tests]`` each) and how they were found.

    Attributes:
        decay, sigma, scale: the memory decay (0 without memory), noise and effect scales;
        info: grid facts for the fit's ``info``.
    """

    decay: np.ndarray
    sigma: np.ndarray
    scale: np.ndarray
    info: dict

    def distinct_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """``(pairs [pairs, 2], pair [draws * tests])``: the distinct ``(test, decay)`` of the draws (where
        the dense path computes its statistics for the exact draws) and each draw's index in them."""
        tests = np.broadcast_to(np.arange(self.decay.shape[1]), self.decay.shape).reshape(-1)
        pairs, pair = np.unique(np.stack([tests, self.decay.reshape(-1)], axis=1), axis=0, return_inverse=True)
        return pairs, pair.reshape(-1)


def refine(coarse: _Grid, evaluate: Callable[[_Grid, int], tuple[np.ndarray, Any]], schedule: Schedule
           ) -> tuple[_Grid, np.ndarray, Any, int, np.ndarray]:
    """The stages of :func:`integrate` (module docstring): ``evaluate(grid, stage)`` gives ``(log density
    [tests, decays, taus, deltas], what else it computed)`` on a grid; the coarse grid is evaluated, then
    fine grids over the box of each test example's cells within :data:`DROP` of the best, until every
    test example is :func:`_resolved` or after ``schedule.max_refinements``. Test examples already
    resolved, and axes already :func:`_settled`, keep their points. Returns ``(last grid, its log
    density, what evaluate gave with it, refinements, resolved [tests])``."""
    log_density, _ = evaluate(coarse, 1)
    fine = _refined(coarse, log_density, schedule.fine)
    refinement = 0
    for refinement in range(1, schedule.max_refinements + 1):
        log_density, extra = evaluate(fine, refinement + 1)
        settled = _settled(fine, log_density)
        done = _resolved(fine, log_density, settled)
        if done.all() or refinement == schedule.max_refinements:
            break
        refined = _refined(fine, log_density, schedule.fine)
        fine = _Grid(*(np.where(keep[:, None], old, new) for old, new, keep in zip(fine, refined, settled | done)))
    return fine, log_density, extra, refinement, done


def integrate(data: ModelData, config: ModelConfig, evidence_of: EvidenceOf, schedule: Schedule, num_draws: int,
              rng: np.random.Generator, name: str) -> Hyperparameters:
    """Integrate each test example's hyperparameters on a grid refined in stages (module docstring)
    over a backend's evidence, and draw them: a cell by its probability, a point uniformly inside it
    (the decay at the centre of one of ``schedule.decay_parts`` parts of its cell)."""
    n_tests, n_obs = data.n_tests, data.n_runs * data.n_steps
    fine, log_density, evidence, refinement, done = refine(
        _coarse_grid(n_tests, n_obs, config, schedule),
        lambda stage_grid, stage: _evaluate(data, config, stage_grid, evidence_of, f"{name}: stage {stage} statistics"),
        schedule)
    flat = log_density.reshape(n_tests, -1)
    weights = np.exp(flat - flat.max(axis=1, keepdims=True))
    total = weights.sum(axis=1, keepdims=True)
    log_evidence = flat.max(axis=1) + np.log(total[:, 0]) + _log_cell_volume(fine)
    weights /= total
    shape = log_density.shape[1:]
    cut = edge_mass(fine, weights.reshape((n_tests,) + shape))
    if not done.all():
        warnings.warn(f"{name}: after {schedule.max_refinements} refinements the grid of test examples "
                      f"{np.flatnonzero(~done).tolist()} still has fewer than {MIN_POINTS} points across the "
                      f"posterior on some axis, or {cut.max():.1g} of it in its outer cells (a very narrow, "
                      "tilted posterior: nearly noise-free losses?); their draws are coarser", stacklevel=3)

    cells = np.stack([rng.choice(flat.shape[1], num_draws, p=w) for w in weights], axis=1)  # [draws, tests]
    i_decay, i_tau, i_delta = np.unravel_index(cells, shape)
    tests = np.arange(n_tests)[None, :]
    part = rng.integers(0, schedule.decay_parts, cells.shape)
    jitter = rng.uniform(-0.5, 0.5, (2,) + cells.shape)
    decay = fine.decay[tests, i_decay] + ((part + 0.5) / schedule.decay_parts - 0.5) * _spacing(fine.decay)[None, :]
    decay = np.clip(decay, 0.0, DECAY_MAX) if config.has_memory else np.zeros_like(decay)
    log_tau = fine.log_tau[tests, i_tau] + jitter[0] * _spacing(fine.log_tau)[None, :]
    delta = fine.delta[tests, i_delta] + jitter[1] * _spacing(fine.delta)[None, :]
    flat_tests = np.broadcast_to(tests, cells.shape).reshape(-1)
    log_sigma = _log_sigma_hat(evidence.take(flat_tests * fine.decay.shape[1] + i_decay.reshape(-1)),
                               log_tau.reshape(-1), n_obs) + delta.reshape(-1)
    sigma, scale = np.exp(log_sigma), np.exp(log_sigma + log_tau.reshape(-1))
    info = {"coarse": list(schedule.coarse), "fine": list(schedule.fine), "refinements": refinement,
            "edge_mass": float(cut.max()), "unresolved_tests": np.flatnonzero(~done).tolist(),
            "log_evidence": log_evidence.tolist(),
            "decay_box": [[float(b[0]), float(b[-1])] for b in fine.decay]}
    return Hyperparameters(decay, sigma.reshape(num_draws, n_tests), scale.reshape(num_draws, n_tests), info)


def assemble(data: ModelData, config: ModelConfig, hyper: Hyperparameters, weights_w: np.ndarray,
             nuisance: np.ndarray, level_scale: np.ndarray, column_scale: np.ndarray, state: RunState | None,
             key: Array) -> dict[str, np.ndarray]:
    """The fit's draws ``[1, draws, tests, ...]`` from exact draws of the effects ``weights_w [draws * tests,
    features]``, the nuisance coefficients ``[draws * tests, K]`` (the common level's first, on its
    feature of root mean square ``level_scale [draws * tests]``, then the run state's, then the
    feature prior's on its columns of root mean squares ``column_scale [draws * tests, columns]``)
    and the hyperparameters; the step component is drawn here, given them (JAX random ``key``)."""
    num_draws, n_tests = hyper.sigma.shape
    draws = split_weights(weights_w.reshape(num_draws, n_tests, -1), data.n_train, config)
    nuisance = nuisance.reshape(num_draws, n_tests, -1)
    n_columns = column_scale.shape[-1]
    if n_columns:  # the residual effects plus the feature regression
        add_feature_effects(draws, nuisance[..., -n_columns:], column_scale.reshape(num_draws, n_tests, -1),
                            data.features, config.variant)
        nuisance = nuisance[..., :-n_columns]
    if config.has_a_location:  # a_i = mu_a + (a_i - mu_a): the level joins every example's effect
        level = nuisance[..., 0] / level_scale.reshape(num_draws, n_tests)
        draws["a_location"], draws["a"] = level, draws["a"] + level[..., None]
        nuisance = nuisance[..., 1:]
    fitted = fitted_step_sums(draws["a"], draws["B"], data, decay=hyper.decay if config.has_memory else None)
    if state is not None:
        draws["state"] = nuisance
        fitted = fitted + np.einsum("ts,dms->dmt", scaled_state_features(data, state).sum(0), draws["state"])
    draws.update(noise_scale=hyper.sigma, effect_scale=hyper.scale)
    if config.has_memory:
        draws["memory_decay"] = hyper.decay
    system = conjugate.drift_system(data.n_runs, data.n_steps, config)
    draws["drift"] = conjugate.draw_drift(system, data.change.sum(0).T, fitted, hyper.sigma, key)
    return {k: v[None] for k, v in draws.items()}


def check_state(config: ModelConfig, state: RunState | None, name: str) -> None:
    if config.run_state != (state is not None):
        raise ValueError(f"{name}: pass the run state exactly when config.run_state is set")


def run_grid(data: ModelData, config: ModelConfig, num_draws: int = 200, seed: int = 0,
             progress: bool = True, state: RunState | None = None) -> FitResult:
    """The posterior by grid integration of the hyperparameters and exact draws of everything else.

    Args:
        data: standardised runs; config: the model (Normal likelihood and the step component required).
        num_draws: posterior draws (one chain).
        state: the run state's direction and recency (``config.run_state``): its coefficients are
            integrated out with the step component and drawn exactly (draws ``"state"``
            ``[1, num_draws, tests, 2]``, per unit of the scaled features).

    Returns:
        :class:`~bayes_simfluence.bayes.inference.FitResult` with draws ``[1, num_draws, tests, ...]``;
        ``info["edge_mass"]``: the largest :func:`edge_mass` of any test example.
    """
    check_supported(config, "grid")
    check_state(config, state, "run_grid")
    cost = data.n_tests * grid_cost(data.n_train, data.n_runs * data.n_steps, config, num_draws)
    if cost > MAX_FLOPS:
        raise InputError(f"bayes-grid on {data.n_tests} test x {data.n_train} training examples x "
                         f"{data.n_runs * data.n_steps} run-steps would take about {cost:.1e} multiply-adds "
                         f"(the limit is {MAX_FLOPS:.0e}, about ten minutes on two CPU cores); use bayes-cg "
                         "at this size")
    n_features = _n_features(data.n_train, config)
    check_memory(8 * num_draws * data.n_tests * n_features * 4,
                 f"bayes-grid's {num_draws} draws of {data.n_tests} x {n_features} effects")
    start = time.perf_counter()

    def evidence_of(tests: np.ndarray, decays: np.ndarray, desc: str) -> Evidence:
        return dense_evidence(pair_statistics(data, config, tests, decays, progress=progress, desc=desc, state=state))

    rng = np.random.default_rng(seed)
    hyper = integrate(data, config, evidence_of, DENSE, num_draws, rng, "bayes-grid")
    pairs, pair = hyper.distinct_pairs()
    stats = pair_statistics(data, config, pairs[:, 0].astype(int), pairs[:, 1], vectors=True,
                            progress=progress, desc="grid: exact draws", state=state)
    sigma, scale = hyper.sigma.reshape(-1), hyper.scale.reshape(-1)
    effects_key, drift_key = jax.random.split(jax.random.PRNGKey(seed), 2)
    weights_w = _draw_effects(effects_key, stats, pair, sigma, scale)
    nuisance = draw_nuisance(rng, stats, pair, weights_w, sigma, config)
    if not config.residual_effects:  # the zero column's draws: every residual effect is 0
        weights_w = np.zeros((len(pair), n_features))
    draws = assemble(data, config, hyper, weights_w, nuisance, stats.level_scale[pair],
                     stats.column_scale[pair], state, drift_key)
    info = {"method": "grid", "num_draws": num_draws, "seconds": time.perf_counter() - start, "seed": seed,
            **hyper.info, "exact_draw_pairs": len(pairs)}
    if state is not None:
        info["run_state"] = state.describe()
    return FitResult(draws, {}, info)


def draw_nuisance(rng: np.random.Generator, stats: GridStats, which: np.ndarray, effects: np.ndarray,
                  sigma: np.ndarray, config: ModelConfig) -> np.ndarray:
    """``[n, K]`` exact draws of the nuisance coefficients ``g | w, theta, y`` (the common level's,
    then the run state's, on their unit-scale features; the step component integrated out):
    ``N(M^{-1} F^T Omega^{-1} (y - X w), sigma^2 M^{-1})`` with ``M = F^T Omega^{-1} F +
    diag(priors)^-2`` (:func:`nuisance_priors`), for draws ``effects [n, features]``, ``sigma [n]``
    whose statistics are row ``which [n]`` of ``stats``."""
    gram, n_nuisance = stats.nuisance_gram[which], stats.nuisance_gram.shape[-1]
    if n_nuisance == 0:
        return np.zeros((len(which), 0))
    n_columns = stats.column_scale.shape[-1]
    priors = nuisance_priors(config, n_nuisance - config.has_a_location - n_columns, n_columns)
    precision = gram + np.diag(1.0 / priors**2)
    residual = stats.nuisance_target[which] - np.einsum("nsf,nf->ns", stats.nuisance_cross[which], effects)
    mean = np.linalg.solve(precision, residual[..., None])[..., 0]
    lower = np.linalg.cholesky(np.linalg.inv(precision))
    return mean + sigma[:, None] * np.einsum("nst,nt->ns", lower, rng.standard_normal((len(which), n_nuisance)))
