"""The feature prior: effects whose prior mean is a regression on the training examples' features.

Each logged run costs a training run, and without features an effect ``(a_i, B_i)`` is learned only
from the runs in which example ``i`` appeared. With features ``phi[m, i] [k]`` of each (test example
``m``, training example ``i``) pair, from the runs' ``train_features [n_train, k1]`` (a label, a
reduced embedding) and ``pair_features [tests, n_train, k2]`` (one-step scores such as TracIn's),
each standardised over the training examples, the prior of test example ``m``'s effects becomes

    a_i = mu_a + phi[m, i] . beta_a[m] + a'_i,      B_i = phi[m, i] . beta_B[m] + B'_i,
    (a', B') ~ N(0, s^2 I),      beta ~ N(0, (feature_prior sigma / rms)^2 I),

so examples that look alike borrow strength from each other, and an example that no run used gets
the regression's prediction with the residual's full prior spread ``s``: intervals widen where the
simulator is guessing. With no features (``k = 0``) the model is the one without them.

On the collapsed path the coefficients are nuisance coefficients like the common level and the run
state: ``X (phi beta)`` is ``(X phi) beta``, so each feature contributes a design column ``X phi_j``
(per block: ``L_{t-1}`` times the remembered batch sums of ``phi_j`` for ``a``, the sums for ``B``),
scaled to unit root mean square, and integrated out by the same Schur complement (Woodbury on the
matrix-free path). Their exact draws are mapped back to the effects by :func:`add_feature_effects`.
The coefficients' prior is in units of ``sigma`` on unit-RMS columns, like the other nuisance
coefficients; the data pin each down to about ``sigma / sqrt(runs x steps)`` where the residual
scale ``s`` is small, so the prior is wide in effect.
"""

from __future__ import annotations

import numpy as np

from bayes_simfluence.design import BLOCKS
from bayes_simfluence.runs import Runs


def standardised_features(runs: Runs) -> np.ndarray | None:
    """``[tests, n_train, k]`` the runs' features, each column centred and divided by its sd over the
    training examples (``train_features`` once, ``pair_features`` per test example; a constant column
    becomes zeros), or None where the runs carry neither array."""
    if runs.train_features is None and runs.pair_features is None:
        return None
    parts = []
    if runs.train_features is not None:
        parts.append(np.broadcast_to(_standardise(runs.train_features, axis=0)[None],
                                     (runs.n_tests,) + runs.train_features.shape))
    if runs.pair_features is not None:
        parts.append(_standardise(runs.pair_features, axis=1))
    return np.concatenate(parts, axis=-1)


def _standardise(values: np.ndarray, axis: int) -> np.ndarray:
    centred = values - values.mean(axis=axis, keepdims=True)
    sd = centred.std(axis=axis, keepdims=True)
    return np.where(sd > 0, centred / np.where(sd > 0, sd, 1.0), 0.0)


def n_columns(n_features: int, variant: str) -> int:
    """Design columns of ``n_features`` features: one per feature and effect block."""
    return n_features * (2 if variant == "linear" else 1)


def add_feature_effects(draws: dict[str, np.ndarray], coefficients: np.ndarray, column_scale: np.ndarray,
                        features: np.ndarray, variant: str) -> None:
    """Add the regression part ``phi beta`` to the effects ``draws["a"]``, ``draws["B"]`` ``[draws, tests,
    n_train]`` in place, and store the coefficients per unit of the standardised features as
    ``draws["feature_a"]`` / ``draws["feature_B"]`` ``[draws, tests, k]``.

    Args:
        coefficients: ``[draws, tests, columns]`` draws on the unit-RMS design columns (``a``'s block first).
        column_scale: ``[draws, tests, columns]`` the columns' root mean squares.
        features: ``[tests, n_train, k]`` standardised features (:func:`standardised_features`).
    """
    per_feature = coefficients / column_scale
    k = features.shape[-1]
    for index, block in enumerate(BLOCKS[variant]):
        beta = per_feature[..., index * k:(index + 1) * k]
        draws[block] = draws[block] + np.einsum("mik,dmk->dmi", features, beta)
        draws[f"feature_{block}"] = beta
