"""Teacher-forced least squares for Simfluence-Linear and its special cases.

With the *observed* previous loss on the right-hand side, one step of Simfluence-Linear,

    L_t = (baseline_t + sum_{i in c_t} a_i) * L_{t-1} + sum_{i in c_t} B_i,

is linear in the effects ``w = (a, B)``: ``y = X w`` with target
``y_rt = L_t - baseline_t * L_{t-1}`` and design row ``X_rt = [L_{t-1} * n_rt, n_rt]``, where
``n_rt [n_train]`` counts how often each training example fills a slot of batch ``c_t``.
Everything here is per test example and additive over runs, so sufficient statistics
(``X^T X``, ``X^T y``) are built once from a sparse count matrix and reused for every ridge
strength, every cross-validation fold and the Bayesian conjugate posterior. Above
:data:`DENSE_MAX_FEATURES` features those ``tests * features^2`` statistics no longer fit, and
the systems are solved matrix-free by conjugate gradients (:mod:`bayes_simfluence.design`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sparse

from bayes_simfluence import design
from bayes_simfluence.budget import check as check_memory

Variant = Literal["linear", "additive", "multiplicative"]
VARIANTS: tuple[str, ...] = ("linear", "additive", "multiplicative")
#: up to this many features per test example the normal equations are formed and solved densely;
#: above, conjugate gradients on the design (memory ``rows * tests`` instead of ``tests * features^2``)
DENSE_MAX_FEATURES = 4096


def is_dense(variant: Variant, n_train: int) -> bool:
    """Whether the ridge fit forms the normal equations (else: conjugate gradients)."""
    return design.n_features_of(variant, n_train) <= DENSE_MAX_FEATURES


def count_matrix(curricula: np.ndarray, n_train: int) -> sparse.csr_matrix:
    """``[runs * steps, n_train]`` sparse count of each training example in each batch.

    Args:
        curricula: ``[runs, steps, batch]`` indices, ``-1`` for empty slots.
    """
    n_runs, n_steps, batch = curricula.shape
    rows = np.repeat(np.arange(n_runs * n_steps), batch)
    cols = curricula.reshape(-1)
    filled = cols >= 0
    counts = sparse.coo_matrix(
        (np.ones(int(filled.sum())), (rows[filled], cols[filled])),
        shape=(n_runs * n_steps, n_train),
    )
    return counts.tocsr()  # duplicate entries are summed


def step_baseline(curricula: np.ndarray, variant: Variant, centring: str) -> np.ndarray:
    """``[runs, steps]`` the multiplicative factor a step has when every effect is at its prior centre.

    ``centring="per_slot"`` (the paper's sum ``alpha = sum A_i`` with ``A_i`` shrunk towards
    ``1 / batch``): a full batch keeps the loss, a half-empty one halves it.
    ``centring="per_step"``: every step, whatever its size, keeps the loss (``alpha = 1 + sum a_i``).
    The additive variant has ``alpha = 1`` by definition.
    """
    if variant == "additive" or centring == "per_step":
        return np.ones(curricula.shape[:2])
    if centring != "per_slot":
        raise ValueError(f"centring must be 'per_slot' or 'per_step', got {centring!r}")
    return (curricula >= 0).sum(-1) / curricula.shape[-1]


@dataclass(frozen=True)
class NormalEquations:
    """Sufficient statistics of the teacher-forced regression, one system per test example.

    Attributes:
        gram: ``[tests, features, features]`` ``X^T X``.
        moment: ``[tests, features]`` ``X^T y``.
        target_sq: ``[tests]`` ``y^T y``.
        n_obs: number of (run, step) observations per test example.
        n_train: training examples; features are ``[a (n_train), B (n_train)]`` for the linear
            variant and ``n_train`` of one kind otherwise.
    """

    gram: np.ndarray
    moment: np.ndarray
    target_sq: np.ndarray
    n_obs: int
    n_train: int

    def __sub__(self, other: "NormalEquations") -> "NormalEquations":
        return NormalEquations(self.gram - other.gram, self.moment - other.moment,
                               self.target_sq - other.target_sq, self.n_obs - other.n_obs, self.n_train)


def normal_equations(
    curricula: np.ndarray,
    losses: np.ndarray,
    n_train: int,
    variant: Variant,
    centring: str = "per_slot",
) -> NormalEquations:
    """Build ``X^T X``, ``X^T y`` and ``y^T y`` for every test example.

    Args:
        curricula: ``[runs, steps, batch]``.
        losses: ``[runs, steps + 1, tests]``.
        n_train: number of training examples.
        variant: which effects are free: ``"linear"`` (both), ``"additive"`` (alpha = 1),
            ``"multiplicative"`` (beta = 0).
        centring: see :func:`step_baseline`.

    Memory is ``tests * features^2`` floats: pass a slice of test examples for large problems.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    n_features = design.n_features_of(variant, n_train)
    check_memory(3 * 8 * losses.shape[2] * n_features**2,
                 f"the ridge fit's normal equations ({losses.shape[2]} x {n_features}^2 for n_train = {n_train})",
                 "n_train is the size of the pool the indices refer to: is it right?")
    counts = count_matrix(curricula, n_train)
    previous = losses[:, :-1, :].reshape(-1, losses.shape[2])  # [runs*steps, tests]
    baseline = step_baseline(curricula, variant, centring).reshape(-1, 1)
    target = losses[:, 1:, :].reshape(-1, losses.shape[2]) - baseline * previous
    counts_t = counts.T.tocsr()

    grams, moments = [], []
    for m in range(losses.shape[2]):
        weights = design.block_weights(previous[:, m], variant)  # [rows] per block: L_{t-1} for a, 1 for B
        grams.append(np.block([[(counts_t.multiply((wk * wl)[None, :]) @ counts).toarray() for wl in weights]
                               for wk in weights]))
        moments.append(np.concatenate([counts_t @ (wk * target[:, m]) for wk in weights]))
    return NormalEquations(
        gram=np.stack(grams),
        moment=np.stack(moments),
        target_sq=(target**2).sum(0),
        n_obs=target.shape[0],
        n_train=n_train,
    )


def solve_ridge(equations: NormalEquations, ridge: float, common_level: bool = True) -> np.ndarray:
    """``[tests, features]`` effects minimising ``||y - X w||^2 + ridge * ||w||^2`` per test example, or
    with ``common_level`` ``||y - X (w + E c)||^2 + ridge * ||w||^2`` (``E [features, blocks]`` the
    block indicator): the penalty shrinks each example's effects towards a level per block (``a``, ``B``)
    that is fitted without penalty, and the effects are ``w + E c``."""
    gram, moment = equations.gram, equations.moment
    n_features = gram.shape[-1]
    penalty = np.full(n_features, float(ridge))
    if common_level:  # the system in [w, c]: [[G + ridge I, G E], [E^T G, E^T G E]] [w; c] = [m; E^T m]
        blocks = np.kron(np.eye(n_features // equations.n_train), np.ones((equations.n_train, 1)))
        gram_blocks = gram @ blocks  # [tests, features, blocks]
        level_gram = np.einsum("fk,tfl->tkl", blocks, gram_blocks)
        level_scale = np.maximum(np.diagonal(level_gram, axis1=1, axis2=2), 1e-300)  # [tests, blocks]
        gram = np.concatenate([np.concatenate([gram, gram_blocks], axis=2),
                               np.concatenate([np.swapaxes(gram_blocks, 1, 2), level_gram], axis=2)], axis=1)
        moment = np.concatenate([moment, moment @ blocks], axis=1)
        penalty = np.concatenate([np.broadcast_to(penalty, level_scale.shape[:1] + penalty.shape),
                                  design.COMMON_JITTER * level_scale], axis=1)
    system = gram + penalty[..., None] * np.eye(gram.shape[-1])
    solution = np.linalg.solve(system, moment[..., None])[..., 0]
    return design.effects_of(solution, n_features, equations.n_train)


def split_effects(weights: np.ndarray, variant: Variant, n_train: int) -> tuple[np.ndarray, np.ndarray]:
    """``(a, B)`` each ``[tests, n_train]`` from solved weights; the fixed part is zeros."""
    zeros = np.zeros(weights.shape[:-1] + (n_train,))
    if variant == "linear":
        return weights[..., :n_train], weights[..., n_train:]
    if variant == "additive":
        return zeros, weights
    return weights, zeros


def tests_per_chunk(n_features: int, max_bytes: int = 2**29) -> int:
    """How many test examples' ``[features, features]`` float64 systems fit in ``max_bytes``
    (the solve needs about three copies)."""
    return max(1, max_bytes // (3 * 8 * n_features * n_features))


def fit_ridge(
    curricula: np.ndarray,
    losses: np.ndarray,
    n_train: int,
    variant: Variant,
    ridge: float,
    centring: str = "per_slot",
    max_bytes: int = 2**29,
    common_level: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Ridge solution for every test example: the normal equations built and solved in
    memory-bounded chunks of tests, or (above :data:`DENSE_MAX_FEATURES` features) conjugate
    gradients on the design, all test examples at once. ``common_level``: the penalty shrinks the
    effects towards a level per block fitted without penalty (:func:`solve_ridge`), not towards the
    centre itself.

    Returns:
        ``(a, B)`` each ``[tests, n_train]``: deviations of the multiplicative effects from their
        centre (see :func:`step_baseline`) and the additive effects.
    """
    n_features = design.n_features_of(variant, n_train)
    if not is_dense(variant, n_train):
        check_memory(8 * losses.shape[2] * (3 * curricula.shape[0] * curricula.shape[1] + 8 * n_features),
                     f"the ridge fit by conjugate gradients ({losses.shape[2]} test examples x {n_features} features)")
        problem = design.design(curricula, losses, step_baseline(curricula, variant, centring))
        return split_effects(design.solve_ridge_cg(problem, n_train, variant, ridge, common_level), variant,
                             n_train)
    chunk = tests_per_chunk(n_features, max_bytes)
    parts = []
    for start in range(0, losses.shape[2], chunk):
        equations = normal_equations(curricula, losses[:, :, start:start + chunk], n_train, variant, centring)
        parts.append(split_effects(solve_ridge(equations, ridge, common_level), variant, n_train))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
