"""Influence functions as a simulator: Simfluence-Additive with a damped inverse curvature.

Pair score at a checkpoint (``g`` = loss gradients on the chosen parameter subset, ``n`` training
examples, ``H`` the curvature of the mean training loss on that subset)::

    S[m, i] = g_test_m^T  P  g_i,        P = lambda (H + lambda I)^{-1}

and, like TracIn, ``beta(c_t) = -eta_t / |c_t| sum_{i in c_t} S[m, i]``. So a step applies
``eta_t / sum_s eta_s`` of the damped Newton step ``-(H + lambda I)^{-1} grad`` when ``lambda =
1 / sum_s eta_s`` (the default: the damping that makes L2 regularisation match early stopping
after the run's total learning rate), and with zero curvature it is exactly TracIn. This is
"influence scaled to one step": the classic ``-g_test^T H^{-1} g_i`` with the damped curvature.

Curvature ``H``: for classification the Fisher of the model's predictive distribution, which
for cross-entropy equals the Gauss-Newton matrix (exact, positive semi-definite):
``H = 1/n sum_i sum_k p_ik g_ik g_ik^T`` with ``g_ik = grad log p_k(x_i)``; for causal LMs the
empirical Fisher ``1/n sum_i g_i g_i^T`` (the exact one would need a row per vocabulary entry
and token). ``H`` has rank at most ``n * classes``, so ``P`` is applied exactly through the
Woodbury identity, with Gram matrices only (no ``d x d`` matrix)::

    P = I - R^T (n lambda I + R R^T)^{-1} R,   rows of R: sqrt(p_ik) g_ik (or g_i)

This module computes the scores (needs torch) during ``collect --scores influence``; the
method ``influence`` that rolls them out lives in the core, :mod:`bayes_simfluence.scores`.
"""

from __future__ import annotations

import numpy as np
import torch

from bayes_simfluence.collect.gradients import log_prob_gradients, loss_gradients
from bayes_simfluence.collect.losses import Encoded

def default_damping(learning_rates: np.ndarray) -> float:
    """``1 / sum_t eta_t``: the L2 strength that matches early stopping after the whole run."""
    return float(1.0 / np.sum(learning_rates))


def train_gradients_and_curvature(model: torch.nn.Module, train: Encoded, names: list[str]
                                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss gradients [n, d], curvature rows R [rows, d])`` with ``H = R^T R / n``."""
    if train.task == "classification":
        gradients, probabilities = log_prob_gradients(model, train, names)
        rows = torch.arange(len(train))
        loss_grads = -gradients[rows, torch.as_tensor(train.labels)]
        curvature = (probabilities.sqrt()[..., None] * gradients).reshape(-1, gradients.shape[-1])
        return loss_grads, curvature
    loss_grads = loss_gradients(model, train, names)
    return loss_grads, loss_grads


def influence_scores(test_gradients: torch.Tensor, train_gradients: torch.Tensor,
                     curvature_rows: torch.Tensor, damping: float) -> np.ndarray:
    """``[tests, n_train]`` scores ``g_test^T lambda (H + lambda I)^{-1} g_train``, ``H = R^T R / n_train``.

    Args:
        test_gradients: ``[tests, d]``.
        train_gradients: ``[n_train, d]``.
        curvature_rows: ``R`` ``[rows, d]``.
        damping: ``lambda > 0``.
    """
    if not damping > 0:
        raise ValueError(f"damping must be positive, got {damping}")
    n_train = train_gradients.shape[0]
    plain = (test_gradients @ train_gradients.T).double()
    test_rows = (test_gradients @ curvature_rows.T).double()  # [tests, rows]
    train_rows = (curvature_rows @ train_gradients.T).double()  # [rows, n_train]
    gram = (curvature_rows @ curvature_rows.T).double()
    system = gram + n_train * damping * torch.eye(gram.shape[0], dtype=torch.float64)
    correction = test_rows @ torch.linalg.solve(system, train_rows)
    return (plain - correction).numpy().astype(np.float32)

