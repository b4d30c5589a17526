"""Matrix-free algebra of the collapsed model: Lanczos evidence and perturb-and-MAP draws (``bayes-cg``).

``bayes-grid`` (:mod:`bayes_simfluence.bayes.grid`) needs, for each test example at each decay
``lambda``, the evidence of the collapsed Bayesian linear regression

    y ~ N(X w, sigma^2 Omega_F),   w ~ N(0, s^2 I),   Omega_F = Omega + F diag(p)^2 F^T

(``Omega`` the step component's covariance, ``F`` the nuisance features: the common level and the
run state, with prior sds ``p`` in units of ``sigma``), through two spectral sums of the whitened
Gram ``G = X^T P X``, ``P = Omega_F^{-1}``, as functions of ``tau = s / sigma``:

    log |I + tau^2 G| = tr log(I + tau^2 G),       Q(tau) = y^T P y - b^T (G + tau^-2 I)^{-1} b,   b = X^T P y,

and then exact draws of ``w``. The dense path forms ``G`` and its eigendecomposition:
``runs * steps * features^2 + features^3`` per pair. Here ``G`` is only applied: a step touches
its batch's examples alone, so ``X v`` is a gather over the batch slots followed by the memory's
geometric filter along steps, ``X^T r`` the filter's adjoint followed by a scatter-add, ``Omega^{-1}``
a tridiagonal solve over steps, and ``P`` adds a rank-``K`` correction (Woodbury). A product costs
``runs * steps * batch``.

- ``Q(tau)`` for every ``tau`` at once: Lanczos from ``b`` gives the Gauss quadrature
  ``b^T f(G) b ~= ||b||^2 sum_j S_0j^2 f(theta_j)`` (Golub and Meurant, 2010), ``f(x) = 1 / (x + tau^-2)``.
- ``tr log(I + tau^2 G)`` for every ``tau`` at once: stochastic Lanczos quadrature (Ubaru, Chen and
  Saad, 2017) with :data:`PROBES` Rademacher probes, the same probes for every test example,
  decay and ``tau`` (common random numbers: the grid compares densities, and their differences
  are far more precise than each estimate).

The grid integrates the hyperparameters over these quadratures exactly as it does over the
dense eigenvalues (:class:`~bayes_simfluence.bayes.grid.Evidence`). Each draw of
``(lambda, tau, sigma)`` then gets an exact draw of the effects by **perturb-and-MAP**
(sample-then-optimise; Papandreou and Yuille, 2010): with ``eps ~ N(0, sigma^2 Omega_F)`` and
``w0 ~ N(0, s^2 I)``,

    w* = argmin_w (y + eps - X w)^T P (y + eps - X w) / sigma^2 + ||w - w0||^2 / s^2

is distributed as ``w | y, lambda, tau, sigma`` exactly; it solves ``(G + tau^-2 I) w* = X^T P
(y + eps) + tau^-2 w0`` by conjugate gradients with a Jacobi preconditioner. The nuisance
coefficients are then drawn from their exact conditional given ``w``, and the step component by
:func:`bayes_simfluence.bayes.conjugate.draw_drift`, as on the dense path.

Approximations, against the dense path: the two quadratures (the Lanczos steps
:data:`LANCZOS_STEPS` and the probes bound their error; the tests compare with the dense
evidence; the fit's ``log_evidence`` carries the same error), and the conjugate-gradient tolerance
of the draws (reported by the fit). Memory is
``(probes + 1) x (features + runs * steps * batch)`` per pair computed at once (a chunk of pairs, or
one where :func:`sequential_pairs`): no matrix of ``features^2`` is ever formed.
"""

from __future__ import annotations

import functools
import time
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax

from bayes_simfluence.bayes import grid
from bayes_simfluence.bayes.backends import check_supported
from bayes_simfluence.bayes.chunking import chunked
from bayes_simfluence.bayes.data import ModelData
from bayes_simfluence.bayes.inference import FitResult
from bayes_simfluence.bayes.model import ModelConfig, drift_bands
from bayes_simfluence.bayes.run_state import RunState
from bayes_simfluence.budget import check as check_memory
from bayes_simfluence.design import block_weights, n_features_of
from bayes_simfluence.rollout import geometric_memory

#: Lanczos steps per quadrature (Gauss rules of this many nodes; as many as features where the
#: trace is exact, :data:`EXACT_TRACE_FEATURES`). At 400 features the quadratic form's rule is
#: exact to 0.01 nats from 32 steps, and the log-determinant's error is the probes' (``benchmarks/results/cg.md``)
LANCZOS_STEPS = 32
#: Rademacher probes of the log-determinant's stochastic Lanczos quadrature
PROBES = 16
#: up to this many features the trace is exact: one unit-vector probe per feature, each with as
#: many Lanczos steps as features (so each probe's rule is exact)
EXACT_TRACE_FEATURES = 48
#: the draws' conjugate gradients stop at this relative residual ...
DRAW_TOLERANCE = 1e-8
#: ... or after this many iterations
DRAW_MAX_ITERATIONS = 4000
#: the products use the dense count matrix (a matrix product) where the pool has at most this many
#: training examples per batch slot, and the matrix at most :data:`DENSE_COUNTS_MAX` entries; above
#: it the gathers and scatter-adds over the batch slots, whose cost does not grow with the pool, are
#: faster (on 2 CPU cores, 40 runs of 120 steps of batch 4: at 12.5 examples per slot the layouts are
#: within 30% of each other, from 50 the slots 1.8-4x faster; the Layouts table of ``benchmarks/results/cg.md``)
DENSE_TRAIN_PER_SLOT = 16
DENSE_COUNTS_MAX = 2 * 10**7
#: bytes of working memory per chunk of pairs (sets the chunk size)
CHUNK_BYTES = 2**29
#: backends whose chunk programs take their pairs one after another inside the program (``lax.map``)
#: where the products go by the batch slots, rather than all at once (``vmap``): on CPUs one pair's
#: vectors stay in cache, where vectorised over 64 pairs the gathers and scatter-adds spent most of
#: their time moving memory (Lanczos evidence 2-2.5x slower per pair at pools of 50-1,000). The
#: dense count matrix's products are matrix products, faster vectorised (the Layouts table of
#: ``benchmarks/results/cg.md``)
SEQUENTIAL_BACKENDS = ("cpu",)
#: ``bayes-cg``'s walk of the grid: the decay axis costs a Lanczos run per point, so it has fewer
#: points than ``bayes-grid``'s; a draw's decay is spread over its cell (the draws need no statistics)
SCHEDULE = grid.Schedule(coarse=(9, 71, 11), fine=(12, 40, 20), max_refinements=2, decay_parts=64)


class Shared(NamedTuple):
    """What every test example's system shares (device arrays, float64).

    Attributes:
        slots: ``[runs, steps, batch]`` int32 training-example indices, ``-1`` for empty slots.
        counts: ``[runs, steps, n_train]`` the slots as counts where :attr:`Static.dense` (else ``[0]``).
        filled: ``[runs, steps]`` filled slots per batch (the level feature before memory).
        state: ``[runs, steps, S]`` the run state's scaled features (``S = 0`` without one).
        priors: ``[K]`` prior sds of the nuisance coefficients in units of ``sigma`` (the level's first).
        band: ``[3, steps]`` lower, main and upper diagonals of ``A = Q + runs I`` (the step
            component's system, :func:`~bayes_simfluence.bayes.model.drift_bands`); zeros without it.
        walk: ``[steps]`` sds of the step component's first value and increments (``kappa``, ``rho``),
            in units of ``sigma``; zeros without it.
    """

    slots: Array
    counts: Array
    filled: Array
    state: Array
    priors: Array
    band: Array
    walk: Array


class Static(NamedTuple):
    """The configuration a compiled program depends on."""

    n_train: int
    variant: str
    memory: bool
    step_component: bool
    level: bool
    dense: bool


def uses_dense_counts(data: ModelData) -> bool:
    """Whether the products go through the dense count matrix (:data:`DENSE_TRAIN_PER_SLOT`,
    :data:`DENSE_COUNTS_MAX`)."""
    return (data.n_train <= DENSE_TRAIN_PER_SLOT * data.curricula.shape[2]
            and data.n_runs * data.n_steps * data.n_train <= DENSE_COUNTS_MAX)


def shared_arrays(data: ModelData, config: ModelConfig, state_features: np.ndarray, priors: np.ndarray) -> Shared:
    """:class:`Shared` of ``data`` (``state_features [runs, steps, S]`` already scaled)."""
    slots = np.asarray(data.curricula, np.int32)
    n_steps = data.n_steps
    band, walk = np.zeros((3, n_steps)), np.zeros(n_steps)
    if config.step_component:
        diagonal, off, _ = drift_bands(data.n_runs, n_steps, config)
        band[0, 1:], band[1], band[2, :-1] = off, diagonal, off
        walk[0], walk[1:] = config.drift_initial, config.drift_smoothness
    counts = grid.dense_counts(slots, data.n_train) if uses_dense_counts(data) else np.zeros(1)
    with jax.enable_x64(True):
        return Shared(jnp.asarray(slots), jnp.asarray(counts, jnp.float64), jnp.asarray((slots >= 0).sum(-1), jnp.float64),
                      jnp.asarray(state_features, jnp.float64), jnp.asarray(priors, jnp.float64),
                      jnp.asarray(band, jnp.float64), jnp.asarray(walk, jnp.float64))


def static_of(data: ModelData, config: ModelConfig) -> Static:
    return Static(data.n_train, config.variant, config.has_memory, config.step_component, config.has_a_location,
                  uses_dense_counts(data))


# ---- the operators of one (test example, decay) pair ------------------------------------------------

def _filter_adjoint(x: Array, decay: Array) -> Array:
    """The adjoint of the memory kernel :func:`~bayes_simfluence.rollout.geometric_memory` along the
    last axis: ``v_s = (1 - decay) sum_k decay^k x_{s+k}``."""
    return geometric_memory(x[..., ::-1], decay)[..., ::-1]


def _gather(w: Array, shared: Shared, static: Static) -> Array:
    """``[runs, steps, ...]`` sums of ``w [n_train, ...]`` (effects, or the feature prior's features
    ``[n_train, k]``) over each batch's filled slots."""
    if static.dense:
        return shared.counts @ w
    filled = shared.slots >= 0
    mask = filled.reshape(filled.shape + (1,) * (w.ndim - 1))
    return jnp.where(mask, w[jnp.where(filled, shared.slots, 0)], 0.0).sum(2)


def _scatter(u: Array, shared: Shared, static: Static) -> Array:
    """The adjoint of :func:`_gather`: ``[n_train]`` sums of ``u [runs, steps]`` over each example's slots."""
    if static.dense:
        return jnp.einsum("rtn,rt->n", shared.counts, u)
    filled = shared.slots >= 0
    values = jnp.where(filled, u[..., None], 0.0).reshape(-1)
    return jnp.zeros(static.n_train, u.dtype).at[jnp.where(filled, shared.slots, 0).reshape(-1)].add(values)


def _x(w: Array, previous: Array, decay: Array, shared: Shared, static: Static) -> Array:
    """``X w`` ``[runs, steps]``: remembered batch sums of each block of ``w``, times its weight
    (:func:`~bayes_simfluence.design.block_weights`)."""
    n = static.n_train
    weights = block_weights(previous, static.variant)
    sums = jnp.stack([_gather(w[k * n:(k + 1) * n], shared, static) for k in range(len(weights))])
    if static.memory:
        sums = geometric_memory(sums, decay)
    return sum(weight * part for weight, part in zip(weights, sums))


def _xt(r: Array, previous: Array, decay: Array, shared: Shared, static: Static) -> Array:
    """``X^T r`` ``[features]`` for ``r [runs, steps]``."""
    parts = jnp.stack([weight * r for weight in block_weights(previous, static.variant)])
    if static.memory:
        parts = _filter_adjoint(parts, decay)
    return jnp.concatenate([_scatter(p, shared, static) for p in parts])


def _diagonal(previous: Array, decay: Array, shared: Shared, static: Static) -> Array:
    """An approximation of ``diag(X^T X)`` ``[features]`` for the preconditioner: exact without memory
    (repeated slots counted once per slot), else scaled by ``(1 - decay) / (1 + decay)``, the
    kernel's squared mass."""
    mass = (1.0 - decay) / (1.0 + decay) if static.memory else 1.0
    return mass * jnp.concatenate([_scatter(weight**2, shared, static)
                                   for weight in block_weights(previous, static.variant)])


def _omega_inverse(v: Array, shared: Shared, static: Static) -> Array:
    """``Omega^{-1} v = v - Z A^{-1} Z^T v`` for ``v [runs, steps, ...]`` (identity without the step component)."""
    if not static.step_component:
        return v
    sums = v.sum(0).reshape(v.shape[1], -1)  # [steps, n]
    solved = lax.linalg.tridiagonal_solve(shared.band[0], shared.band[1], shared.band[2], sums)
    return v - solved.reshape(v.shape[1:])[None]


class Pair(NamedTuple):
    """The nuisance part of one pair's system (the Woodbury correction of ``P``).

    Attributes:
        features: ``[runs, steps, K]`` ``F``; whitened: ``[runs, steps, K]`` ``Omega^{-1} F``;
        inverse: ``[K, K]`` ``M^{-1}``, ``M = F^T Omega^{-1} F + diag(p)^-2``;
        logdet: ``log |I + diag(p) F^T Omega^{-1} F diag(p)|``; level_scale: the level feature's root
        mean square (1 without the level); column_scale: ``[columns]`` those of the feature prior's
        design columns (:func:`~bayes_simfluence.bayes.grid.feature_columns`).
    """

    features: Array
    whitened: Array
    inverse: Array
    logdet: Array
    level_scale: Array
    column_scale: Array


def _pair(previous: Array, decay: Array, phi: Array, shared: Shared, static: Static) -> Pair:
    """The nuisance features of one (test example, decay) pair: the common level's, the run state's
    and the feature prior's columns of ``phi [n_train, k]`` (``k = 0``: none)."""
    state = shared.state
    level_scale = jnp.ones((), previous.dtype)
    if static.level:
        filled = geometric_memory(shared.filled, decay) if static.memory else shared.filled
        level = previous * filled
        level_scale = jnp.sqrt(jnp.mean(level**2))
        level_scale = jnp.where(level_scale > 0, level_scale, 1.0)
        state = jnp.concatenate([(level / level_scale)[..., None], state], axis=-1)
    projected = _gather(phi, shared, static)  # [runs, steps, k]
    if static.memory:
        projected = geometric_memory(projected, decay, axis=-2)
    columns, column_scale = grid.feature_columns(previous, projected, static.variant)
    state = jnp.concatenate([state, columns], axis=-1)
    n_nuisance = state.shape[-1]
    whitened = _omega_inverse(state, shared, static)
    gram = jnp.einsum("rtk,rtl->kl", state, whitened)
    inverse = jnp.linalg.inv(gram + jnp.diag(1.0 / shared.priors**2)) if n_nuisance else gram
    logdet = (jnp.linalg.slogdet(jnp.eye(n_nuisance) + shared.priors[:, None] * gram * shared.priors[None, :])[1]
              if n_nuisance else jnp.zeros((), previous.dtype))
    return Pair(state, whitened, inverse, logdet, level_scale, column_scale)


def _whiten(v: Array, pair: Pair, shared: Shared, static: Static) -> Array:
    """``P v = Omega^{-1} v - Omega^{-1} F M^{-1} F^T Omega^{-1} v`` for ``v [runs, steps]``."""
    out = _omega_inverse(v, shared, static)
    if pair.features.shape[-1]:
        out = out - pair.whitened @ (pair.inverse @ jnp.einsum("rtk,rt->k", pair.whitened, v))
    return out


def _gram(w: Array, previous: Array, decay: Array, pair: Pair, shared: Shared, static: Static) -> Array:
    """``G w = X^T P X w``."""
    return _xt(_whiten(_x(w, previous, decay, shared, static), pair, shared, static), previous, decay, shared, static)


# ---- evidence: Gauss quadratures from Lanczos -------------------------------------------------------

def _lanczos_rule(matvec, start: Array, steps: int) -> tuple[Array, Array]:
    """``(nodes [steps], weights [steps])``: the Gauss rule of ``start^T f(G) start ~= sum_j weights_j
    f(nodes_j)`` from ``steps`` Lanczos steps (no reorthogonalisation: the rule stays accurate when
    orthogonality is lost, its copies of converged nodes sharing their weight)."""
    norm = jnp.linalg.norm(start)
    first = start / jnp.where(norm > 0, norm, 1.0)

    def step(carry: tuple, _: None) -> tuple:
        before, current, beta = carry
        w = matvec(current) - beta * before
        alpha = current @ w
        w = w - alpha * current
        beta_next = jnp.linalg.norm(w)
        after = w / jnp.where(beta_next > 1e-300, beta_next, 1.0)
        after = jnp.where(beta_next > 1e-300, after, 0.0)  # the Krylov space is exhausted: stop growing
        return (current, after, beta_next), (alpha, beta_next)

    _, (alphas, betas) = lax.scan(step, (jnp.zeros_like(first), first, jnp.zeros((), start.dtype)), None,
                                  length=steps)
    tridiagonal = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
    nodes, vectors = jnp.linalg.eigh(tridiagonal)
    return jnp.maximum(nodes, 0.0), norm**2 * vectors[0] ** 2


@functools.partial(jax.jit, static_argnames=("static", "steps", "sequential"))
def _evidence_chunk(previous: Array, target: Array, decays: Array, phi: Array, probes: Array, shared: Shared,
                    static: Static, steps: int, sequential: bool) -> tuple:
    """Quadratures of a chunk of pairs (``previous``, ``target`` ``[chunk, runs, steps]``, ``decays [chunk]``,
    the feature prior's features ``phi [chunk, n_train, k]``), one pair after another where ``sequential``
    (:func:`sequential_pairs`)."""
    def one(previous_m: Array, target_m: Array, decay: Array, phi_m: Array) -> tuple:
        pair = _pair(previous_m, decay, phi_m, shared, static)
        whitened = _whiten(target_m, pair, shared, static)
        rhs = _xt(whitened, previous_m, decay, shared, static)

        def matvec(w: Array) -> Array:
            return _gram(w, previous_m, decay, pair, shared, static)

        quad_nodes, quad_weights = _lanczos_rule(matvec, rhs, steps)
        nodes, weights = jax.vmap(lambda z: _lanczos_rule(matvec, z, steps))(probes)
        return (nodes.reshape(-1), weights.reshape(-1) / probes.shape[0], quad_nodes, quad_weights,
                target_m.reshape(-1) @ whitened.reshape(-1), pair.logdet)

    return _map_pairs(one, sequential, previous, target, decays, phi)


def sequential_pairs(static: Static) -> bool:
    """Whether a chunk's pairs go one at a time: by the batch slots on :data:`SEQUENTIAL_BACKENDS`."""
    return not static.dense and jax.default_backend() in SEQUENTIAL_BACKENDS


def _map_pairs(one, sequential: bool, *pairs: Array):
    """``one`` over the leading axis of ``pairs``: one pair after another, or all at once."""
    if sequential:
        return lax.map(lambda args: one(*args), pairs)
    return jax.vmap(one)(*pairs)


def _chunk_size(data: ModelData, per_pair_vectors: int) -> int:
    n_features = 2 * data.n_train
    rows = data.n_runs * data.n_steps
    per_pair = 8 * per_pair_vectors * (n_features + rows * (data.curricula.shape[2] + 4))
    return int(max(1, min(64, CHUNK_BYTES // per_pair)))


def lanczos_steps(n_features: int) -> int:
    """Lanczos steps per rule: :data:`EXACT_TRACE_FEATURES` (at least every feature, and the steps
    beyond them make up for lost orthogonality) where the trace is exact, else :data:`LANCZOS_STEPS`."""
    return EXACT_TRACE_FEATURES if n_features <= EXACT_TRACE_FEATURES else LANCZOS_STEPS


def probes_of(n_features: int, seed: int = 0) -> np.ndarray:
    """The probes of a fit, the same for every pair: ``[PROBES, features]`` Rademacher vectors, or, up
    to :data:`EXACT_TRACE_FEATURES` features, the unit vectors scaled by ``sqrt(features)`` (with at
    least as many Lanczos steps as features, the trace is then exact)."""
    if n_features <= EXACT_TRACE_FEATURES:
        return np.sqrt(n_features) * np.eye(n_features)
    return np.random.default_rng(seed).choice([-1.0, 1.0], size=(PROBES, n_features))


def evidence(data: ModelData, config: ModelConfig, shared: Shared, tests: np.ndarray, decays: np.ndarray,
             probes: np.ndarray, progress: bool = False, desc: str = "cg: Lanczos evidence") -> tuple:
    """Quadratures for every pair ``(tests[k], decays[k])``: ``(logdet_nodes, logdet_weights
    [pairs, probes * steps], quad_nodes, quad_weights [pairs, steps], target_sq, nuisance_logdet [pairs])``,
    with ``log |I + tau^2 G| ~= sum logdet_weights log1p(tau^2 logdet_nodes)`` and ``b^T (G + c I)^{-1} b
    ~= sum quad_weights / (quad_nodes + c)``."""
    static = static_of(data, config)
    chunk = _chunk_size(data, len(probes) + 1)
    previous = np.moveaxis(data.previous, -1, 0)
    target = np.moveaxis(data.change, -1, 0)

    def part(start: int, index: np.ndarray) -> tuple:
        return _evidence_chunk(jnp.asarray(previous[tests[index]]), jnp.asarray(target[tests[index]]),
                               jnp.asarray(decays[index], jnp.float64),
                               jnp.asarray(data.features_of(tests[index], config.features), jnp.float64),
                               jnp.asarray(probes), shared, static, lanczos_steps(probes.shape[1]),
                               sequential_pairs(static))

    with jax.enable_x64(True):
        return chunked(part, len(tests), chunk, progress=progress, desc=desc, leave=False)


# ---- draws: perturb-and-MAP ------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("static", "sequential"))
def _draw_chunk(keys: Array, previous: Array, target: Array, decays: Array, sigma: Array, scale: Array, phi: Array,
                shared: Shared, static: Static, sequential: bool) -> tuple:
    """Exact draws for a chunk of (test, hyperparameters), each with its own key (``keys [chunk, 2]``),
    one after another where ``sequential`` (:func:`sequential_pairs`):
    ``(w [chunk, features], nuisance [chunk, K], level_scale [chunk], column_scale [chunk, columns],
    relative residual [chunk])``."""
    n_features = n_features_of(static.variant, static.n_train)

    def one(key_m: Array, previous_m: Array, target_m: Array, decay: Array, sigma_m: Array, scale_m: Array,
            phi_m: Array) -> tuple:
        pair = _pair(previous_m, decay, phi_m, shared, static)
        keys = jax.random.split(key_m, 5)
        runs_steps = target_m.shape
        noise = jax.random.normal(keys[0], runs_steps, target_m.dtype)
        if static.step_component:  # Z d0, d0 ~ N(0, Q^{-1}) in units of sigma: a random walk
            noise = noise + jnp.cumsum(shared.walk * jax.random.normal(keys[1], runs_steps[1:], target_m.dtype))[None]
        n_nuisance = pair.features.shape[-1]
        if n_nuisance:
            noise = noise + pair.features @ (shared.priors * jax.random.normal(keys[2], (n_nuisance,), target_m.dtype))
        inverse_tau2 = (sigma_m / scale_m) ** 2
        prior_draw = scale_m * jax.random.normal(keys[3], (n_features,), target_m.dtype)
        rhs = (_xt(_whiten(target_m + sigma_m * noise, pair, shared, static), previous_m, decay, shared, static)
               + inverse_tau2 * prior_draw)

        def normal(w: Array) -> Array:
            return _gram(w, previous_m, decay, pair, shared, static) + inverse_tau2 * w

        inverse_diagonal = 1.0 / (_diagonal(previous_m, decay, shared, static) + inverse_tau2)
        w, _ = jax.scipy.sparse.linalg.cg(normal, rhs, tol=DRAW_TOLERANCE, maxiter=DRAW_MAX_ITERATIONS,
                                          M=lambda v: inverse_diagonal * v)
        residual = jnp.linalg.norm(rhs - normal(w)) / jnp.maximum(jnp.linalg.norm(rhs), 1e-300)
        nuisance = jnp.zeros(0, target_m.dtype)
        if n_nuisance:  # g | w, y ~ N(M^{-1} F^T Omega^{-1} (y - X w), sigma^2 M^{-1})
            misfit = target_m - _x(w, previous_m, decay, shared, static)
            mean = pair.inverse @ jnp.einsum("rtk,rt->k", pair.whitened, misfit)
            lower = jnp.linalg.cholesky(pair.inverse)
            nuisance = mean + sigma_m * lower @ jax.random.normal(keys[4], (n_nuisance,), target_m.dtype)
        return w, nuisance, pair.level_scale, pair.column_scale, residual

    return _map_pairs(one, sequential, keys, previous, target, decays, sigma, scale, phi)


#: ``[n, 2]`` keys ``fold_in(key, index[k])`` (a draw's key depends on its index alone)
_fold_in = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(None, 0)))


def draw_effects(data: ModelData, config: ModelConfig, shared: Shared, tests: np.ndarray, decays: np.ndarray,
                 sigma: np.ndarray, scale: np.ndarray, seed: int, progress: bool = False) -> tuple:
    """Perturb-and-MAP draws for ``n`` hyperparameter draws (``tests``, ``decays``, ``sigma``, ``scale``
    ``[n]``): ``(w [n, features], nuisance [n, K], level_scale [n], column_scale [n, columns], relative
    residual [n])``. Draw ``k``'s random numbers come from the key ``fold_in(seed's key, k)``: the same
    whatever the chunk size."""
    static = static_of(data, config)
    chunk = _chunk_size(data, 8)
    previous = np.moveaxis(data.previous, -1, 0)
    target = np.moveaxis(data.change, -1, 0)
    key = jax.random.PRNGKey(seed)

    def part(start: int, index: np.ndarray) -> tuple:
        return _draw_chunk(_fold_in(key, jnp.asarray(index)), jnp.asarray(previous[tests[index]]),
                           jnp.asarray(target[tests[index]]), jnp.asarray(decays[index], jnp.float64),
                           jnp.asarray(sigma[index], jnp.float64), jnp.asarray(scale[index], jnp.float64),
                           jnp.asarray(data.features_of(tests[index], config.features), jnp.float64),
                           shared, static, sequential_pairs(static))

    with jax.enable_x64(True):
        return chunked(part, len(tests), chunk, progress=progress, desc="cg: perturb-and-MAP draws", leave=False)


def krylov_cost(n_train: int, n_obs: int, config: ModelConfig, num_draws: int = 100,
                draw_iterations: int = 200) -> float:
    """Row-products of one test example in a fit, roughly: products with ``G`` (each touching the
    ``n_obs = runs * steps`` rows once per vector) for ``(probes + 1)`` Lanczos rules per decay value
    of :data:`SCHEDULE` at most, and ``draw_iterations`` conjugate-gradient iterations per draw."""
    n_features = n_features_of(config.variant, n_train)
    n_probes = n_features if n_features <= EXACT_TRACE_FEATURES else PROBES
    schedule = SCHEDULE
    decays = schedule.coarse[0] + schedule.fine[0] * schedule.max_refinements if config.has_memory else 1
    return float(n_obs * ((n_probes + 1) * lanczos_steps(n_features) * decays + num_draws * draw_iterations))


def run_cg(data: ModelData, config: ModelConfig, num_draws: int = 100, seed: int = 0, progress: bool = True,
           state: RunState | None = None) -> FitResult:
    """``bayes-cg``: the model of ``bayes-grid`` (its priors, step component, memory, common level and
    run state) with the same grid over each test example's hyperparameters, over Lanczos
    quadratures of the evidence, and exact perturb-and-MAP draws of the effects (module docstring).

    Returns:
        :class:`~bayes_simfluence.bayes.inference.FitResult` with draws ``[1, num_draws, tests, ...]``;
        ``info["cg_unconverged"]``: draws whose conjugate gradients stopped above 1000x
        :data:`DRAW_TOLERANCE` (their residual in ``info["cg_worst_residual"]``). Without residual
        effects there is nothing for the Lanczos rules to approximate: the grid's statistics are then
        exact and cost ``runs x steps x batch x features`` (:func:`~bayes_simfluence.bayes.grid.run_grid`),
        so bayes-grid runs, and ``info["method"]`` says so.
    """
    check_supported(config, "cg")
    grid.check_state(config, state, "run_cg")
    if not config.residual_effects:
        fit = grid.run_grid(data, config, num_draws=num_draws, seed=seed, progress=progress, state=state)
        fit.info["chosen_by"] = ("bayes-cg without residual effects: bayes-grid's exact statistics cost runs x "
                                 "steps x batch x features, at any pool")
        return fit
    n_features = n_features_of(config.variant, data.n_train)
    check_memory(8 * num_draws * data.n_tests * n_features * 4,
                 f"bayes-cg's {num_draws} draws of {data.n_tests} x {n_features} effects")
    start = time.perf_counter()
    features = grid.scaled_state_features(data, state)
    shared = shared_arrays(data, config, features,
                           grid.nuisance_priors(config, features.shape[-1], grid.n_feature_columns(data, config)))
    probes = probes_of(n_features, seed)
    cache: dict[tuple[int, float], tuple] = {}

    def evidence_of(tests: np.ndarray, decays: np.ndarray, desc: str) -> grid.Evidence:
        keys = list(zip(tests.tolist(), decays.tolist()))
        missing = sorted({k for k in keys if k not in cache})
        if missing:
            rows = evidence(data, config, shared, np.array([k[0] for k in missing]),
                            np.array([k[1] for k in missing]), probes, progress, desc)
            cache.update({k: tuple(x[i] for x in rows) for i, k in enumerate(missing)})
        return grid.Evidence(*(np.stack(column) for column in zip(*(cache[k] for k in keys))))

    rng = np.random.default_rng(seed)
    hyper = grid.integrate(data, config, evidence_of, SCHEDULE, num_draws, rng, "bayes-cg")
    n_tests = data.n_tests
    tests = np.tile(np.arange(n_tests), num_draws)
    effects_key, drift_key = jax.random.split(jax.random.PRNGKey(seed), 2)
    weights_w, nuisance, level_scale, column_scale, residual = draw_effects(
        data, config, shared, tests, hyper.decay.reshape(-1), hyper.sigma.reshape(-1), hyper.scale.reshape(-1),
        int(jax.random.randint(effects_key, (), 0, 2**31 - 1)), progress)
    unconverged = int((residual > 1e3 * DRAW_TOLERANCE).sum())
    if unconverged:
        warnings.warn(f"bayes-cg: conjugate gradients stopped short for {unconverged} of {len(residual)} draws "
                      f"(worst relative residual {residual.max():.1e}); their effects are approximate", stacklevel=2)
    draws = grid.assemble(data, config, hyper, weights_w, nuisance, level_scale, column_scale, state, drift_key)
    info = {"method": "cg", "num_draws": num_draws, "seconds": time.perf_counter() - start, "seed": seed,
            **hyper.info, "lanczos_steps": lanczos_steps(n_features), "probes": len(probes), "evidence_pairs": len(cache),
            "cg_unconverged": unconverged, "cg_worst_residual": float(residual.max())}
    if state is not None:
        info["run_state"] = state.describe()
    return FitResult(draws, {}, info)
