"""A shared run state: what moves every test example's loss together, beyond a sum of per-example effects.

Simfluence credits each batch slot with its own effect, so a run's losses are linear in the
curriculum's counts. Some of what makes two real runs differ is not: a classifier's test examples
share its output bias; the last batches' label mix pushes that bias, raising one class's losses and
lowering the other's, and the *mean* loss then moves with the square of the push (a loss is convex
in its logit). On the retraining study's MLP set that square predicts the per-run mean final loss
across held-out runs at correlation 0.87, the linear simulator at 0.59
(``experiments/label_imbalance.py``, which uses the labels; this module does not).

The run state is a scalar per run and step,

    z_t = rho z_{t-1} + sum_{i in c_t} u_i,    z_0 = 0,

pushed by each example along a **direction** ``u [n_train]`` and forgotten at **recency** ``rho``.
The model (``-o run_state``: on by default wherever ``bayes-grid`` or ``bayes-cg`` runs its guard, see
:func:`bayes_simfluence.bayes.methods.resolve_run_state`; :mod:`bayes_simfluence.bayes.grid`) adds to each test example's
step change ``g1[m] (z_t - z_{t-1}) + g2[m] (z_t^2 - z_{t-1}^2)``, so a roll-out's loss carries
``g1 z + g2 z^2`` of the state it ends in. ``g`` is linear in the model, integrated out exactly
and drawn given everything else. ``u`` and ``rho`` are estimated once per fit from its own runs
(:func:`estimate_run_state`), in the open:

- ``u``: the leading right singular vector of the teacher-forced ridge fit's additive effects
  ``B [tests, n_train]`` (each test example's row standardised by its loss scale and centred):
  the one direction in which the most test examples' effects agree or oppose. On both real sets
  of the retraining study its correlation with the labels is 0.98 and 0.97
  (``experiments/results/label_imbalance.md``).
- ``rho``: the value of :data:`RECENCIES` whose least-squares fit of the per-run mean final
  (standardised) loss on ``1, z_T, z_T^2`` has the smallest leave-one-run-out error.

They are plug-in estimates: their uncertainty is not in the posterior (the guard's cross-fits
re-estimate them on each fold, so the new-run predictive's misfit carries part of it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from bayes_simfluence.runs import Runs
from bayes_simfluence.validation import InputError

#: recencies ``rho`` tried by :func:`estimate_run_state`
RECENCIES = np.linspace(0.0, 0.95, 20)
#: the run state needs this many runs (a three-number regression by leave-one-run-out)
MIN_RUNS = 5
#: number of state features: ``z_t - z_{t-1}`` and ``z_t^2 - z_{t-1}^2``
N_FEATURES = 2


class RunState(NamedTuple):
    """An estimated run state (module docstring).

    Attributes:
        direction: ``[n_train]`` ``u``, root mean square 1, sign fixed by its largest entry.
        recency: ``rho`` in ``[0, 1)``.
        feature_scale: ``[2]`` root mean square of ``(z_t - z_{t-1}, z_t^2 - z_{t-1}^2)`` over the
            fit's runs and steps: the model's coefficients act on the features divided by it, so one
            prior scale suits both.
        singular_share: share of the leading singular value in the sum of all (how much of the
            effects one direction holds).
    """

    direction: np.ndarray
    recency: float
    feature_scale: np.ndarray
    singular_share: float

    @classmethod
    def of(cls, direction: np.ndarray, recency: float) -> "RunState":
        """The state of a given direction and recency (unit feature scales: for simulating, not fitting)."""
        return cls(np.asarray(direction), float(recency), np.ones(N_FEATURES), 0.0)

    def describe(self) -> dict[str, float]:
        """JSON-ready summary for a fit's ``info``."""
        return {"recency": float(self.recency), "singular_share": float(self.singular_share),
                "feature_scale": [float(x) for x in self.feature_scale]}


def describe(summary: dict[str, float]) -> str:
    """One line for users from :meth:`RunState.describe`."""
    return (f"run state: recency {summary['recency']:.2f}; its direction holds {summary['singular_share']:.0%} of "
            "the singular values of the ridge fit's additive effects")


@jax.jit
def state_path(curricula: Array, direction: Array, recency: Array) -> Array:
    """``[runs, steps + 1]`` run state ``z_t`` from ``z_0 = 0``.

    Args:
        curricula: ``[runs, steps, batch]``, ``-1`` for an empty slot (adds 0).
        direction: ``[n_train]`` ``u``; recency: scalar ``rho``.
    """
    pushes = jnp.where(curricula >= 0, direction[jnp.maximum(curricula, 0)], 0.0).sum(-1)  # [runs, steps]

    def step(state: Array, push: Array) -> tuple[Array, Array]:
        state = recency * state + push
        return state, state

    start = jnp.zeros(curricula.shape[:1], direction.dtype)
    _, path = jax.lax.scan(step, start, pushes.T)
    return jnp.concatenate([start[:, None], path.T], axis=1)


@jax.jit
def state_features(curricula: Array, direction: Array, recency: Array) -> Array:
    """``[runs, steps, 2]`` the model's features ``(z_t - z_{t-1}, z_t^2 - z_{t-1}^2)``."""
    path = state_path(curricula, direction, recency)
    return jnp.stack([jnp.diff(path, axis=1), jnp.diff(path**2, axis=1)], axis=-1)


def host_features(curricula: np.ndarray, state: RunState) -> np.ndarray:
    """:func:`state_features` in float64 NumPy."""
    with jax.enable_x64(True):
        return np.asarray(state_features(jnp.asarray(curricula), jnp.asarray(state.direction, jnp.float64),
                                         jnp.asarray(state.recency, jnp.float64)))


def leave_one_out_mse(x: np.ndarray, q: np.ndarray) -> float:
    """Mean squared leave-one-out error of least squares ``q [runs] ~ x [runs, k]``."""
    hat = x @ np.linalg.pinv(x)
    leverage = np.minimum(np.diag(hat), 1.0 - 1e-9)
    return float((((q - hat @ q) / (1.0 - leverage)) ** 2).mean())


def estimate_run_state(runs: Runs, scale: np.ndarray) -> RunState:
    """Direction and recency of the run state from ``runs`` (module docstring).

    Args:
        runs: the fit's training runs; scale: ``[tests]`` the loss scale of each test example
            (:func:`bayes_simfluence.bayes.data.loss_scale`).
    """
    from bayes_simfluence.simulators import SimfluenceLinear

    if runs.n_runs < MIN_RUNS:
        raise InputError(f"-o run_state: estimating the run state needs at least {MIN_RUNS} runs, got "
                         f"{runs.n_runs}")
    # the fixed-centre ridge the run state was calibrated with (the direction is of centred effects)
    effects = SimfluenceLinear(common_level=False).fit(runs).additive / scale[:, None]  # [tests, n_train]
    effects = effects - effects.mean(axis=1, keepdims=True)
    _, singular, vectors = np.linalg.svd(effects, full_matrices=False)
    direction = vectors[0]
    size = np.sqrt(np.mean(direction**2))
    if not size > 0:
        raise InputError("-o run_state: the ridge fit's additive effects are all equal; there is no "
                         "direction for a run state")
    direction = direction / size * np.sign(direction[np.argmax(np.abs(direction))])
    final = (runs.losses[:, -1] / scale).mean(axis=1)  # [runs]
    errors = []
    for recency in RECENCIES:
        z = host_path(runs.curricula, direction, float(recency))[:, -1]
        errors.append(leave_one_out_mse(np.stack([np.ones_like(z), z, z**2], axis=1), final))
    recency = float(RECENCIES[int(np.argmin(errors))])
    features = host_features(runs.curricula, RunState.of(direction, recency))
    rms = np.sqrt((features**2).mean(axis=(0, 1)))
    return RunState(direction, recency, np.where(rms > 0, rms, 1.0), float(singular[0] / singular.sum()))


def host_path(curricula: np.ndarray, direction: np.ndarray, recency: float) -> np.ndarray:
    """:func:`state_path` in float64 NumPy."""
    with jax.enable_x64(True):
        return np.asarray(state_path(jnp.asarray(curricula), jnp.asarray(direction, jnp.float64),
                                     jnp.asarray(recency, jnp.float64)))


@dataclass
class StateTrajectory:
    """The guard's alternative to the full model when the run state is on: the curriculum-blind
    mean trajectory plus the run state's term, with no per-example effects.

    Each test example's step change is the training runs' mean change plus ``h[m] . (f_t - fbar_t)``,
    ``f_t`` the raw state features ``(z_t - z_{t-1}, z_t^2 - z_{t-1}^2)`` and ``fbar_t`` their mean
    over the training runs (so the mean trajectory keeps its meaning), ``h`` by least squares. Past
    the training horizon the mean change is 0 and ``fbar`` is 0. Stacking the full model against it
    (instead of against the plain mean trajectory) shrinks the per-example effects where held-out
    roll-outs say they add more noise than signal, and keeps the state: on the MLP set the effects'
    estimation errors are shared by the test examples (one design) and do not average out of the
    mean loss, where the state alone predicts it better.

    Attributes (after :meth:`fit`):
        state: the run state, estimated from the same runs; mean_losses: ``[steps + 1, tests]``;
        coefficients: ``[tests, 2]`` ``h`` in loss units per raw feature; center: ``[steps, 2]`` ``fbar``.
    """

    state: RunState | None = None
    mean_losses: np.ndarray | None = None
    coefficients: np.ndarray | None = None
    center: np.ndarray | None = None

    @property
    def name(self) -> str:
        return "state-trajectory"

    def fit(self, runs: Runs) -> "StateTrajectory":
        """Least squares on ``runs``; the run state is estimated from them unless given (``state``)."""
        from bayes_simfluence.bayes.data import loss_scale

        if self.state is None:
            self.state = estimate_run_state(runs, loss_scale(runs.losses))
        features = host_features(runs.curricula, self.state)  # [runs, steps, 2]
        self.center = features.mean(axis=0)
        change = np.diff(runs.losses, axis=1)  # [runs, steps, tests]
        design = (features - self.center).reshape(-1, N_FEATURES)
        target = (change - change.mean(axis=0)).reshape(-1, runs.n_tests)
        self.coefficients = np.linalg.lstsq(design, target, rcond=None)[0].T
        self.mean_losses = runs.losses.mean(axis=0)
        return self

    def offsets(self, curricula: np.ndarray) -> np.ndarray:
        """``[runs, steps + 1, tests]`` loss minus initial loss under ``curricula``."""
        n_steps = curricula.shape[1]
        mean = self.mean_losses - self.mean_losses[:1]
        mean = np.pad(mean, ((0, max(n_steps + 1 - len(mean), 0)), (0, 0)), mode="edge")[: n_steps + 1]
        center = np.pad(self.center, ((0, max(n_steps - len(self.center), 0)), (0, 0)))[:n_steps]
        term = np.cumsum((host_features(curricula, self.state) - center) @ self.coefficients.T, axis=1)
        return mean[None] + np.concatenate([np.zeros_like(term[:, :1]), term], axis=1)

    def simulate(self, curricula: np.ndarray, initial_losses: np.ndarray) -> np.ndarray:
        """``[runs, steps + 1, tests]`` trajectories from ``initial_losses [runs, tests]``."""
        return np.asarray(initial_losses)[:, None, :] + self.offsets(np.asarray(curricula))
