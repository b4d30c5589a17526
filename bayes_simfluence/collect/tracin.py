"""TracIn (TracInCP) as a simulator: Simfluence-Additive with ``B_i = -eta_t <grad L(z_test), grad L(z_i)>``.

The pair score at a checkpoint is the plain dot product of per-example loss gradients over the
chosen parameter subset; :class:`~bayes_simfluence.scores.AdditiveScoreSimulator`
applies ``-eta_t / |c_t|`` per step (the loss of a batch is the mean of its examples' losses,
so one SGD step moves the weights by ``-eta_t / |c_t| sum_i grad L(z_i)``; to first order the test
loss then changes by exactly ``beta(c_t)``).

With Adam(W) the update is preconditioned and TracIn's first-order argument no longer holds
exactly; the scores are then the plain-SGD approximation (as in the TracIn paper). Collect with
``--optimizer sgd`` for the faithful version.

This module computes the scores (needs torch) during ``collect --scores tracin``; the method
``tracin`` that rolls them out lives in the core, :mod:`bayes_simfluence.scores`.
"""

from __future__ import annotations

import numpy as np
import torch


def tracin_scores(test_gradients: torch.Tensor, train_gradients: torch.Tensor) -> np.ndarray:
    """``[tests, n_train]`` dot products of ``test_gradients [tests, d]`` and ``train_gradients [n_train, d]``."""
    return (test_gradients @ train_gradients.T).numpy().astype(np.float32)

