"""Run discrepancy: what makes a new real run differ from the simulation, beyond the parameters.

The model's only random term besides its parameters is independent noise per (run, step, test
example). It averages away over test examples, so intervals of a mean loss, or of the difference
between two candidate curricula, carried little more than parameter uncertainty and were several
times too narrow against retraining (issue 9: 90% intervals of retrained differences covered
18%). What two real runs differ by, and the simulator misses, is a misfit that accumulates over
the roll-out and is shared across test examples.

It is estimated where it can be seen. The guard's cross-fits (:mod:`bayes_simfluence.bayes.guard`)
roll every training run out from a fit that never saw it, so
``e_r = observed_r - predicted_r`` (``[runs, steps, tests]``, the stacked prediction) are
held-out residual trajectories of ``R`` real runs. A new run's discrepancy is drawn from a
smoothed bootstrap of them (a kernel density estimate: one of the runs, plus a little of a
Gaussian with their covariance):

    e_new = g * ebar + c * (sqrt(1 - h^2) (e_{r*} - ebar) + h sum_r z_r (e_r - ebar) / sqrt(R)),

with ``r*`` uniform on ``1..R``, ``z_r ~ Normal(0, 1)``, ``c = sqrt(R / (R - 1))`` and
``h = 1.06 R^(-1/5)`` (Silverman's rule of thumb for one summary: 0.50 at ``R = 40``).

- ``ebar``: the mean residual trajectory, the misfit every run shares. Its sign is not trusted
  (the final fit differs from the cross-fits): ``g ~ Normal(0, 1)`` is drawn once per draw and
  shared by every run simulated with that draw, so it widens bands of absolute losses by the size
  of the shared misfit and cancels from paired differences between candidates.
- The run-to-run part: one of the held-out runs' own centred residual trajectories, picked at
  random for every simulated run, shrunk by ``sqrt(1 - h^2)`` and completed by a Gaussian with
  the same covariance and weight ``h`` (so the variance is the residuals' unbiased one, ``c``).
  Every summary (the mean final loss over test examples, a difference of two runs' losses) then
  has nearly the empirical distribution of that summary over the held-out runs, heavy tails
  included, without its atoms: two simulated runs that pick the same held-out run still differ.
  Why not a Gaussian alone (this module's first version, with Student-t scaling): the residuals
  of real runs are heavy-tailed (the mean final residual over the 40 held-out training runs of
  the retraining study has kurtosis 5.2 and 4.1, a Gaussian 3), and a Gaussian of the same
  variance made the 50% intervals of retrained differences too wide in the middle (README,
  calibration against real retraining). Why not the plain bootstrap (``h = 0``): two new runs
  would be identical with probability ``1 / R``.

The residuals are those of cross-fits, so besides the misfit they carry the cross-fits' own
parameter error, which the new-run predictive already draws from the final posterior: added to
them, it would be counted twice (intervals too wide wherever the parameters are uncertain, e.g.
large pools with few runs). The guard measures the share of the residuals' run-to-run variance of
the mean final loss that the cross-fits' parameter draws explain
(:func:`bayes_simfluence.stacking.parameter_error_share`), and the run-to-run part is shrunk by
``sqrt(1 - share)`` before it is kept (:func:`without_parameter_error`); the shared part ``ebar``
is left as it is.

A run's pick ``r*`` is keyed by its curriculum's content (:func:`curriculum_ids`): the same curriculum
gets the same discrepancy (retraining it from the same seed gives the same run, and paired
differences of identical candidates are exactly 0), any other curriculum an independent one.
Two candidates that differ in one example and are trained from the same seed differ by less
than two independent runs; for such same-run questions use the parameter-only draws
(``predictive="parameters"``).
"""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

#: keys of a draw's random streams used here (``fold_in(draw_key, stream)``); 0-2 are the noise,
#: the step component's extension and the guard's choice (:mod:`bayes_simfluence.bayes.posterior`).
SHARED_STREAM, RUN_STREAM = 3, 5


def residuals_for_steps(residuals: np.ndarray, n_steps: int) -> np.ndarray:
    """``[R, n_steps, tests]`` residual trajectories cut to ``n_steps``, or held at their last value
    past the training horizon (the misfit accumulated by then stays).

    Args:
        residuals: ``[R, steps, tests]`` held-out residuals ``observed - predicted`` (steps 1..T).
    """
    known = residuals.shape[1]
    if n_steps <= known:
        return residuals[:, :n_steps]
    return np.concatenate([residuals, np.repeat(residuals[:, -1:], n_steps - known, axis=1)], axis=1)


def without_parameter_error(residuals: np.ndarray, share: float) -> np.ndarray:
    """``[R, steps, tests]`` held-out residuals with the cross-fits' parameter error taken out of
    their run-to-run part: ``ebar + sqrt(1 - share) (e_r - ebar)``, ``ebar`` the mean over runs
    (module docstring).

    Args:
        residuals: ``[R, steps, tests]`` held-out residuals of the guard's stack.
        share: in ``[0, 1]``, the share of their run-to-run variance of the mean final loss that is
            parameter error (:func:`bayes_simfluence.stacking.parameter_error_share`).
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], got {share}")
    mean = residuals.mean(axis=0)
    return mean + np.sqrt(1.0 - share) * (residuals - mean)


def curriculum_ids(curricula: np.ndarray) -> np.ndarray:
    """``[runs]`` uint32 id of each curriculum ``[runs, steps, batch]`` from its content (CRC-32)."""
    return np.array([zlib.crc32(np.ascontiguousarray(run, dtype=np.int64).tobytes()) for run in curricula],
                    dtype=np.uint32)


@jax.jit
def draw_discrepancy(residuals: Array, keys: Array, run_ids: Array) -> Array:
    """``[draws, runs, steps + 1, tests]`` discrepancy draws of new runs (0 at step 0; module docstring).

    Args:
        residuals: ``[R, steps, tests]`` held-out residual trajectories, ``R >= 2``.
        keys: ``[draws, 2]`` one PRNG key per draw (shared and scale terms depend on it only).
        run_ids: ``[runs]`` uint32 ids of the simulated runs (:func:`curriculum_ids`): a run's
            term depends on its id, not on its position or how runs are chunked by the caller.
    """
    n_residuals = residuals.shape[0]
    shared = residuals.mean(0)
    centred = jnp.sqrt(n_residuals / (n_residuals - 1.0)) * (residuals - shared)
    bandwidth = 1.06 * n_residuals ** -0.2

    def one(key: Array) -> Array:
        g = jax.random.normal(jax.random.fold_in(key, SHARED_STREAM), dtype=residuals.dtype)

        def run_part(run: Array) -> Array:
            run_key = jax.random.fold_in(jax.random.fold_in(key, RUN_STREAM), run)
            pick = jax.random.randint(jax.random.fold_in(run_key, 0), (), 0, n_residuals)
            z = jax.random.normal(jax.random.fold_in(run_key, 1), (n_residuals,), dtype=residuals.dtype)
            return (jnp.sqrt(1.0 - bandwidth**2) * centred[pick]
                    + bandwidth * jnp.einsum("r,rsm->sm", z, centred) / jnp.sqrt(n_residuals))

        per_run = g * shared[None] + jax.vmap(run_part)(run_ids)
        return jnp.concatenate([jnp.zeros_like(per_run[:, :1]), per_run], axis=1)

    return jax.vmap(one)(keys)
