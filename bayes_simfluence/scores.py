"""Precomputed attribution scores as a simulator (the file itself: :mod:`bayes_simfluence.score_files`).

A scores file holds, per method, the pair scores ``S[c, m, i]`` (``[checkpoints, tests, n_train]``)
at checkpoint ``c``'s weights, positive when training on ``i`` lowers test example ``m``'s loss.

Every method is Simfluence-Additive (``alpha = 1``) with, for runs-file step ``t`` (1-based)
on batch ``c_t`` (``|c_t|`` filled slots)::

    beta(c_t)[m] = -eta_t * k / |c_t| * sum_{i in c_t} S[c(t), m, i]

``k`` = updates per step (so ``k / |c_t|`` is ``1 / optimiser batch``: the loss is the batch
mean) and ``c(t)`` the checkpoint nearest the weights before step ``t`` (TracInCP). Steps past
the recorded learning rates reuse the last one.

As a simulator every method's ``beta`` is multiplied by one scale ``s`` fitted on the training
runs (option ``scale=fitted``, the default): least squares of the observed change from the
initial loss, ``L_t - L_0``, on the simulated one, over runs, steps and test examples. The
comparison of methods is then about the direction the scores give, not their units (TRAK's have
none; TracIn's are first-order SGD units, which Adam's preconditioning breaks). ``scale=raw``
keeps ``s = 1``: TracIn's first-order prediction of one SGD step.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from bayes_simfluence import atomic, settings
from bayes_simfluence.methods import FitContext, register_loader, register_method
from bayes_simfluence.rollout import batch_sums, roll_out, slot_counts
from bayes_simfluence.runs import Runs
from bayes_simfluence.score_files import (SCORE_METHODS, ScoreSet, load_scores, score_set_arrays, score_set_from_arrays,
                                          scores_path_for)
from bayes_simfluence.simulators import AVERAGE_ID, Simulator, check_simulation_inputs, saved_array, with_mean_column


@dataclass
class AdditiveScoreSimulator:
    """Simfluence-Additive with ``beta`` from precomputed scores (any of :data:`SCORE_METHODS`)."""

    score_set: ScoreSet
    scale: float = 1.0  # s: multiplies every beta (see the module docstring)

    @property
    def name(self) -> str:
        return self.score_set.method

    def step_coefficients(self, curricula: np.ndarray) -> np.ndarray:
        """``[runs, steps, tests]`` ``beta(c_t)`` for ``curricula [runs, steps, batch]``."""
        scores = self.score_set
        checkpoints, tests, n_train = scores.scores.shape
        n_steps = curricula.shape[1]
        step_index = np.arange(n_steps)
        rates = scores.learning_rates[np.minimum(step_index, scores.learning_rates.size - 1)]
        optimiser_step = step_index * scores.updates_per_step
        nearest = np.argmin(np.abs(scores.checkpoint_steps[None, :] - optimiser_step[:, None]), axis=1)
        sums = batch_sums(jnp.asarray(scores.scores.reshape(checkpoints * tests, n_train)), jnp.asarray(curricula))
        sums = sums.reshape(curricula.shape[0], n_steps, checkpoints, tests)[:, step_index, nearest]
        counts = slot_counts(jnp.asarray(curricula))
        scale = jnp.where(counts > 0, -rates[None, :] * scores.updates_per_step / jnp.maximum(counts, 1), 0.0)
        return np.asarray(self.scale * scale[..., None] * sums)

    def simulate(self, curricula: np.ndarray, initial_losses: np.ndarray) -> np.ndarray:
        """``[runs, steps + 1, tests]`` from ``curricula [runs, steps, batch]``, ``initial_losses [runs, tests]``."""
        checkpoints, tests, n_train = self.score_set.scores.shape
        curricula, initial_losses = check_simulation_inputs(curricula, initial_losses, n_train, tests)
        beta = jnp.asarray(self.step_coefficients(curricula), dtype=jnp.float32)
        trajectory = roll_out(jnp.ones_like(beta), beta, jnp.asarray(initial_losses, dtype=jnp.float32))
        return np.asarray(trajectory, dtype=np.float64)

    @property
    def n_train(self) -> int:
        return int(self.score_set.scores.shape[-1])

    def with_average_example(self) -> "AdditiveScoreSimulator":
        """With the average example: the mean score at every checkpoint, id :data:`AVERAGE_ID`."""
        scores = self.score_set
        return dataclasses.replace(self, score_set=dataclasses.replace(
            scores, scores=with_mean_column(scores.scores), train_ids=np.append(scores.train_ids, AVERAGE_ID)))

    def select_tests(self, tests: np.ndarray) -> "AdditiveScoreSimulator":
        scores = self.score_set
        return AdditiveScoreSimulator(ScoreSet(scores.method, scores.scores[:, tests], scores.checkpoint_steps,
                                               scores.learning_rates, scores.updates_per_step, scores.train_ids,
                                               scores.test_ids[tests], dict(scores.meta)), self.scale)

    def save(self, path: str | os.PathLike) -> None:
        arrays = score_set_arrays(self.score_set, "")
        arrays["kind"] = np.array(self.score_set.method)
        arrays["scale"] = np.float64(self.scale)
        atomic.savez(path, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "AdditiveScoreSimulator":
        with np.load(path, allow_pickle=False) as archive:
            scale = float(saved_array(archive, "scale", Path(path), ndim=0)) if "scale" in archive.files else 1.0
            return cls(score_set_from_arrays(archive, "", str(archive["kind"])), scale)

    def fitted_to(self, runs: Runs) -> "AdditiveScoreSimulator":
        """This simulator with the scale ``s`` that best fits ``runs`` (least squares of ``L_t - L_0``).

        ``s = 0`` when the scores predict no change at all on these runs.
        """
        raw = AdditiveScoreSimulator(self.score_set)
        predicted = raw.simulate(runs.curricula, runs.initial_losses) - runs.initial_losses[:, None]
        observed = runs.losses - runs.initial_losses[:, None]
        energy = float(np.sum(predicted ** 2))
        return AdditiveScoreSimulator(self.score_set, float(np.sum(predicted * observed)) / energy if energy > 0 else 0.0)


def score_factory(method: str):
    """``factory(train, context)`` for ``fit_method``: reads precomputed scores, fits nothing.

    The scores come from ``context.options["scores"]`` or else the companion file of
    ``context.train_path``; they are aligned to ``train``'s examples by id.
    """

    def factory(train: Runs, context: FitContext) -> Simulator:
        path = context.options.get("scores")
        if path is None:
            if context.train_path is None:
                raise ValueError(f"method '{method}' needs precomputed scores: pass -o scores=FILE "
                                 f"(written by 'bayes-simfluence collect --scores {method}')")
            path = scores_path_for(context.train_path)
            if not Path(path).exists():
                raise ValueError(f"method '{method}' needs precomputed scores: no {path} beside the runs "
                                 f"file; collect with '--scores {method}' or pass -o scores=FILE")
        scale = settings.parse("scale", context.options.get("scale", "fitted"))
        simulator = AdditiveScoreSimulator(load_scores(path, method).aligned(train.train_ids, train.test_ids))
        return simulator.fitted_to(train) if scale == "fitted" else simulator

    return factory


for _method in SCORE_METHODS:
    register_method(_method, options=settings.option_names(_method))(score_factory(_method))
    register_loader(_method, AdditiveScoreSimulator.load)
