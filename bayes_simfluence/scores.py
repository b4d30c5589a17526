"""Precomputed attribution scores: the companion file and the simulator that rolls them out.

Companion file ``<runs file without .npz>.scores.npz`` (e.g. ``runs.npz`` -> ``runs.scores.npz``),
one group of arrays per method ``M`` of :data:`SCORE_METHODS`:

- ``M_scores``: float32 ``[checkpoints, tests, n_train]``, the pair score ``S[c, m, i]`` at the
  weights of checkpoint ``c``, positive when training on ``i`` lowers test example ``m``'s loss
  (``tracin``: ``<grad L(z_test_m), grad L(z_i)>``; ``influence`` and ``influence-cg``: the same
  with a damped inverse curvature in between; ``trak``: TRAK's attribution to the correct-class
  probability, in no loss units);
- ``M_checkpoint_steps``: int ``[checkpoints]``, optimiser step at which each checkpoint's
  weights were taken (0 = the initial model);
- ``M_learning_rates``: float ``[steps]``, ``eta_t`` of each runs-file step;
- ``M_updates_per_step``: int, optimiser steps per runs-file step (``eval_every``; usually 1);
- ``M_train_ids`` ``[n_train]``, ``M_test_ids`` ``[tests]`` and ``M_meta`` (JSON).

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
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from bayes_simfluence import atomic, settings
from bayes_simfluence.methods import FitContext, register_loader, register_method
from bayes_simfluence.rollout import batch_sums, roll_out, slot_counts
from bayes_simfluence.runs import Runs, RunsFormatError, open_archive
from bayes_simfluence.simulators import AVERAGE_ID, Simulator, check_simulation_inputs, saved_array, with_mean_column

SCORES_SUFFIX = ".scores.npz"
_FIELDS = ("scores", "checkpoint_steps", "learning_rates", "updates_per_step", "train_ids", "test_ids", "meta")


def scores_path_for(runs_path: str | os.PathLike) -> Path:
    """The companion scores file of a runs file: ``runs.npz`` -> ``runs.scores.npz``."""
    path = Path(runs_path)
    stem = path.name[: -len(".npz")] if path.name.endswith(".npz") else path.name
    return path.with_name(stem + SCORES_SUFFIX)


@dataclass
class ScoreSet:
    """One method's precomputed scores (see the module docstring for the fields)."""

    method: str
    scores: np.ndarray  # [checkpoints, tests, n_train]
    checkpoint_steps: np.ndarray  # [checkpoints]
    learning_rates: np.ndarray  # [steps]
    updates_per_step: int
    train_ids: np.ndarray  # [n_train]
    test_ids: np.ndarray  # [tests]
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float32)
        self.checkpoint_steps = np.asarray(self.checkpoint_steps, dtype=np.int64)
        self.learning_rates = np.asarray(self.learning_rates, dtype=np.float64)
        self.train_ids = np.asarray(self.train_ids).astype(str)
        self.test_ids = np.asarray(self.test_ids).astype(str)
        checkpoints, tests, n_train = self.scores.shape
        if self.checkpoint_steps.shape != (checkpoints,):
            raise RunsFormatError(f"{self.method}: {checkpoints} score checkpoints but "
                                  f"{self.checkpoint_steps.shape} checkpoint steps")
        if self.train_ids.shape != (n_train,) or self.test_ids.shape != (tests,):
            raise RunsFormatError(f"{self.method}: ids do not match scores of shape {self.scores.shape}")
        if self.learning_rates.ndim != 1 or self.learning_rates.size == 0:
            raise RunsFormatError(f"{self.method}: learning_rates must be a non-empty 1-D array")

    def aligned(self, train_ids: np.ndarray, test_ids: np.ndarray) -> "ScoreSet":
        """The scores for these training and test examples (matched by id, in this order)."""
        columns = _positions(self.train_ids, train_ids, "training", self.method)
        rows = _positions(self.test_ids, test_ids, "test", self.method)
        return ScoreSet(self.method, self.scores[:, rows][:, :, columns], self.checkpoint_steps,
                        self.learning_rates, self.updates_per_step, self.train_ids[columns],
                        self.test_ids[rows], dict(self.meta))


def _positions(known: np.ndarray, wanted: np.ndarray, what: str, method: str) -> np.ndarray:
    lookup = {name: position for position, name in enumerate(known.tolist())}
    missing = [name for name in np.asarray(wanted).astype(str).tolist() if name not in lookup]
    if missing:
        raise RunsFormatError(f"{method} scores have no {what} example(s) {missing[:3]} "
                              f"({len(missing)} missing): were they computed for these runs?")
    return np.array([lookup[name] for name in np.asarray(wanted).astype(str).tolist()], dtype=np.int64)


def _arrays(score_set: ScoreSet, prefix: str) -> dict[str, np.ndarray]:
    return {
        f"{prefix}scores": score_set.scores,
        f"{prefix}checkpoint_steps": score_set.checkpoint_steps,
        f"{prefix}learning_rates": score_set.learning_rates,
        f"{prefix}updates_per_step": np.int64(score_set.updates_per_step),
        f"{prefix}train_ids": score_set.train_ids,
        f"{prefix}test_ids": score_set.test_ids,
        f"{prefix}meta": np.array(json.dumps(score_set.meta, sort_keys=True)),
    }


def _from_arrays(archive: np.lib.npyio.NpzFile, prefix: str, method: str) -> ScoreSet:
    for name in ("scores", "learning_rates"):
        values = archive[f"{prefix}{name}"]
        if not np.issubdtype(values.dtype, np.number) or not np.all(np.isfinite(values)):
            raise RunsFormatError(f"{method} '{prefix}{name}' must be finite numbers (dtype {values.dtype})")
    return ScoreSet(method, archive[f"{prefix}scores"], archive[f"{prefix}checkpoint_steps"],
                    archive[f"{prefix}learning_rates"], int(archive[f"{prefix}updates_per_step"]),
                    archive[f"{prefix}train_ids"], archive[f"{prefix}test_ids"],
                    json.loads(str(archive[f"{prefix}meta"])))


def save_scores(path: str | os.PathLike, score_sets: list[ScoreSet]) -> None:
    """Write (atomically) the given methods' scores into the companion file, keeping other methods'."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    if path.exists():
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    for score_set in score_sets:
        arrays.update(_arrays(score_set, f"{score_set.method}_"))
    atomic.savez(path, arrays)


def load_scores(path: str | os.PathLike, method: str) -> ScoreSet:
    """Read one method's scores from a companion file."""
    with open_archive(path, "scores file") as archive:
        missing = [f"{method}_{name}" for name in _FIELDS if f"{method}_{name}" not in archive.files]
        if missing:
            raise RunsFormatError(f"{path}: no {method} scores (missing {missing[:2]}); "
                                  f"it holds {sorted(archive.files)}")
        return _from_arrays(archive, f"{method}_", method)


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
        arrays = _arrays(self.score_set, "")
        arrays["kind"] = np.array(self.score_set.method)
        arrays["scale"] = np.float64(self.scale)
        atomic.savez(path, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "AdditiveScoreSimulator":
        with np.load(path, allow_pickle=False) as archive:
            scale = float(saved_array(archive, "scale", Path(path), ndim=0)) if "scale" in archive.files else 1.0
            return cls(_from_arrays(archive, "", str(archive["kind"])), scale)

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


#: methods whose simulator is a roll-out of precomputed scores (computed by ``collect --scores``):
#: ``influence`` is this package's exact damped Gauss-Newton solve; ``tracin``, ``influence-cg``
#: and ``trak`` are computed with dattri.
SCORE_METHODS: tuple[str, ...] = settings.SCORES

for _method in SCORE_METHODS:
    register_method(_method, options=settings.option_names(_method))(score_factory(_method))
    register_loader(_method, AdditiveScoreSimulator.load)
