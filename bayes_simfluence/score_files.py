"""The scores file: precomputed attribution scores beside a runs file (no JAX: the collector writes it).

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

:mod:`bayes_simfluence.scores` turns a method's scores into a simulator.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bayes_simfluence import atomic, settings
from bayes_simfluence.runs import RunsFormatError, open_archive

#: methods whose simulator is a roll-out of precomputed scores (computed by ``collect --scores``):
#: ``influence`` is this package's exact damped Gauss-Newton solve; ``tracin``, ``influence-cg``
#: and ``trak`` are computed with dattri.
SCORE_METHODS: tuple[str, ...] = settings.SCORES
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


def score_set_arrays(score_set: ScoreSet, prefix: str) -> dict[str, np.ndarray]:
    """``score_set``'s arrays, each name prefixed (``"tracin_"`` in a scores file; ``""`` in a saved simulator)."""
    return {
        f"{prefix}scores": score_set.scores,
        f"{prefix}checkpoint_steps": score_set.checkpoint_steps,
        f"{prefix}learning_rates": score_set.learning_rates,
        f"{prefix}updates_per_step": np.int64(score_set.updates_per_step),
        f"{prefix}train_ids": score_set.train_ids,
        f"{prefix}test_ids": score_set.test_ids,
        f"{prefix}meta": np.array(json.dumps(score_set.meta, sort_keys=True)),
    }


def score_set_from_arrays(archive: np.lib.npyio.NpzFile, prefix: str, method: str) -> ScoreSet:
    """The :class:`ScoreSet` of :func:`score_set_arrays`' arrays, checked."""
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
        arrays.update(score_set_arrays(score_set, f"{score_set.method}_"))
    atomic.savez(path, arrays)


def load_scores(path: str | os.PathLike, method: str) -> ScoreSet:
    """Read one method's scores from a companion file."""
    with open_archive(path, "scores file") as archive:
        missing = [f"{method}_{name}" for name in _FIELDS if f"{method}_{name}" not in archive.files]
        if missing:
            raise RunsFormatError(f"{path}: no {method} scores (missing {missing[:2]}); "
                                  f"it holds {sorted(archive.files)}")
        return score_set_from_arrays(archive, f"{method}_", method)
