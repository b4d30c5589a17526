"""The fitted Bayesian simulator: parameter draws, posterior trajectories, bands, save/load.

Parameters are held in loss units: ``alpha(c_t) = 1 + sum_{i in c_t} a[m, i]``,
``beta(c_t) = sum_{i in c_t} B[m, i] + d[m, t]`` (``d`` = step component, absent in the plain
model; with optimiser memory the batch sums are remembered over later steps with the decay
``hyper["memory_decay"]``), noise scale ``sigma[m]``. A trajectory draw rolls
``L_t = alpha_t L_{t-1} + beta_t (+ noise)`` out from ``L_0`` with ``lax.scan``
(:func:`bayes_simfluence.rollout.roll_out`). A guarded fit (:mod:`bayes_simfluence.bayes.guard`)
predicts the stack of this posterior and the curriculum-blind mean trajectory.

Draws are paired: for a given ``seed`` and ``n_draws``, :meth:`BayesianSimfluence.simulate_draws`
uses the same parameter draws (and, per run index, the same noise and run discrepancy) whatever
the curricula, so differences between two curricula's draws are draws of the difference.

Three predictive distributions (:data:`bayes_simfluence.choices.PREDICTIVES`), named in every summary that uses them:

- ``"new-run"`` (the default where the guard ran): parameter draws plus the run discrepancy of a
  new real run, estimated from the guard's held-out runs
  (:mod:`bayes_simfluence.bayes.discrepancy`); what retraining a candidate will give.
- ``"noise"``: parameter draws plus the model's independent per-step noise (the default where
  there are no held-out residuals: a fit without the guard).
- ``"parameters"``: parameter uncertainty only: what the effects are, not what a run will do.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from bayes_simfluence.bayes import posterior_io
from bayes_simfluence.bayes.conversion import to_datatree
from bayes_simfluence.bayes.discrepancy import curriculum_ids, draw_discrepancy, residuals_for_steps
from bayes_simfluence.bayes.data import ModelData
from bayes_simfluence.bayes.inference import FitResult
from bayes_simfluence.bayes.model import ModelConfig, effect_sums, noise_distribution, step_mean
from bayes_simfluence.bayes.run_state import N_FEATURES as N_STATE
from bayes_simfluence.bayes.run_state import RunState, StateTrajectory, host_features
from bayes_simfluence.bayes.sharding import placed, device_mesh
from bayes_simfluence.rollout import roll_out
from bayes_simfluence.runs import Runs
from bayes_simfluence.decisions import Decisions
from bayes_simfluence.choices import PREDICTIVES
from bayes_simfluence.simulators import AVERAGE_ID, check_simulation_inputs, with_mean_column
from bayes_simfluence.stacking import report_entries, stacked_mean
from bayes_simfluence.validation import InputError, integer

#: bytes of intermediate arrays one chunk of draws may use (the output itself is extra).
CHUNK_BYTES = 256 * 2**20
#: stored draws the posterior mean averages at most: its Monte Carlo sd is then a tenth of the
#: posterior sd (or less), and it costs no more than 100 predictive draws.
MEAN_DRAWS = 100


class TrajectoryBands(NamedTuple):
    """Summaries of trajectory draws, each ``[runs, steps + 1, tests]``.

    Attributes:
        mean, median: pointwise over draws.
        lower, upper: ``{level: array}`` central credible bands, e.g. ``lower[0.9]`` is the 5% quantile.
    """

    mean: np.ndarray
    median: np.ndarray
    lower: dict[float, np.ndarray]
    upper: dict[float, np.ndarray]


@dataclass
class BayesianSimfluence(Decisions):
    """Posterior draws of hierarchical Simfluence-Linear, as a probabilistic simulator.

    Attributes:
        method: ``"svi"``, ``"nuts"`` or ``"exact"``.
        config: the model.
        a: ``[chains, draws, tests, n_train]`` multiplicative effects (``alpha = 1 + sum a``).
        b: ``[chains, draws, tests, n_train]`` additive effects, loss units.
        drift: ``[chains, draws, tests, steps]`` step component in loss units, or None.
        sigma: ``[chains, draws, tests]`` noise scale, loss units.
        hyper: hyperparameter draws ``[chains, draws, tests]`` on the standardised scale
            (``effect_scale``, and ``a_location``/``B_location`` when free, ``memory_decay``
            with optimiser memory).
        scale: ``[tests]`` loss scale used to standardise.
        train_ids, test_ids: ids from the training runs.
        sample_stats: NUTS statistics ``[chains, draws]``.
        info: how the fit ran (method settings, seconds, ELBO, divergences).
        batch_size: batch width of the training runs (wider batches are refused when simulating).
        stacking_weight: ``[steps, tests]`` weight of this posterior against the curriculum-blind
            model at each step, chosen by the guard (:mod:`bayes_simfluence.bayes.guard`;
            :func:`~bayes_simfluence.stacking.weight_trajectory` beyond the fitted steps), or None
            (no guard: 1).
        blind_mean: ``[steps + 1, tests]`` mean trajectory of the training runs: the blind model
            (present with ``stacking_weight``).
        run_residuals: ``[heldout_runs, steps, tests]`` the guard's held-out residual trajectories
            (loss units), the source of the new-run predictive; None without the guard.
        blind_state: ``[tests, 2]`` with the run state, the guard's alternative is
            :class:`~bayes_simfluence.bayes.run_state.StateTrajectory`: its coefficients (loss units
            per raw feature), and blind_center ``[steps, 2]`` its feature means; None otherwise.
        state: ``[chains, draws, tests, 2]`` coefficients of the run state's features
            ``(z_t - z_{t-1}, z_t^2 - z_{t-1}^2)`` in loss units (:mod:`bayes_simfluence.bayes.run_state`),
            or None (no run state); state_direction: ``[n_train]`` its ``u``; state_recency: its ``rho``.
    """

    method: str
    config: ModelConfig
    a: np.ndarray
    b: np.ndarray
    drift: np.ndarray | None
    sigma: np.ndarray
    hyper: dict[str, np.ndarray]
    scale: np.ndarray
    train_ids: np.ndarray
    test_ids: np.ndarray
    sample_stats: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    batch_size: int | None = None
    stacking_weight: np.ndarray | None = None
    blind_mean: np.ndarray | None = None
    run_residuals: np.ndarray | None = None
    state: np.ndarray | None = None
    state_direction: np.ndarray | None = None
    state_recency: float | None = None
    blind_state: np.ndarray | None = None
    blind_center: np.ndarray | None = None

    # ------------------------------------------------------------ construction
    @classmethod
    def from_fit(cls, result: FitResult, data: ModelData, runs: Runs, config: ModelConfig,
                 run_state: RunState | None = None) -> "BayesianSimfluence":
        """Convert standardised draws of an inference routine to loss units (``run_state``: the
        direction and recency behind draws ``"state"``, which act on the scaled features)."""
        draws, scale = result.draws, data.scale
        drift = draws["drift"] * scale[:, None] if "drift" in draws else None
        hyper = {k: draws[k] for k in posterior_io.HYPERPARAMETERS if k in draws}
        for name, value in draws.items():
            if not np.all(np.isfinite(value)):
                raise InputError(f"bayes-{result.info['method']}: the fit gave non-finite draws of '{name}'; "
                                 "check the losses' scale, or the inference settings")
        return cls(method=result.info["method"], config=config, a=draws["a"], b=draws["B"] * scale[:, None],
                   drift=drift, sigma=draws["noise_scale"] * scale, hyper=hyper, scale=scale,
                   train_ids=runs.train_ids, test_ids=runs.test_ids, sample_stats=result.sample_stats,
                   info=result.info, batch_size=runs.batch_size,
                   state=None if run_state is None else draws["state"] * scale[:, None] / run_state.feature_scale,
                   state_direction=None if run_state is None else run_state.direction,
                   state_recency=None if run_state is None else run_state.recency)

    @property
    def name(self) -> str:
        return f"bayes-{self.method}"

    @property
    def stacked_alternative(self) -> str:
        """The guard's alternative in words (:class:`~bayes_simfluence.simulators.Stacked`):
        ``"state-only"`` with the run state, else ``"curriculum-blind"``."""
        return "curriculum-blind" if self.blind_state is None else "state-only"

    def fit_report(self) -> dict[str, Any]:
        """The guard's report and mean weight (:func:`bayes_simfluence.stacking.report_entries`;
        :class:`~bayes_simfluence.simulators.Reporting`)."""
        return report_entries(self.info.get("guard"))

    @property
    def run_state(self) -> RunState | None:
        """The run state's direction and recency at unit feature scale (the coefficients ``state``
        act on the raw features), or None without one."""
        return None if self.state_direction is None else RunState.of(self.state_direction, self.state_recency)

    @property
    def n_chains(self) -> int:
        return int(self.a.shape[0])

    @property
    def n_draws(self) -> int:
        """Stored draws, all chains together."""
        return int(self.a.shape[0] * self.a.shape[1])

    @property
    def n_train(self) -> int:
        return int(self.a.shape[-1])

    @property
    def n_tests(self) -> int:
        return int(self.a.shape[-2])

    # --------------------------------------------------------------- accessors
    def draw_indices(self, n_draws: int | None = None, seed: int = 0) -> np.ndarray:
        """Which stored draws (flat over chains) a call with ``n_draws`` and ``seed`` uses.

        ``None`` means all of them in order; fewer than stored are picked without replacement,
        more with replacement. Depends only on ``(n_draws, seed)``: paired across curricula.
        """
        if n_draws is None:
            return np.arange(self.n_draws)
        n_draws = integer(n_draws, "n_draws", minimum=1)
        rng = np.random.default_rng(seed)
        return rng.choice(self.n_draws, size=n_draws, replace=n_draws > self.n_draws)

    def parameter_draws(self, n_draws: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
        """Flat parameter draws: ``"a"``, ``"B"`` ``[draws, tests, n_train]``, ``"drift"``
        ``[draws, tests, steps]`` (if any), ``"sigma"`` ``[draws, tests]``; the same draws
        :meth:`simulate_draws` uses for the same ``n_draws`` and ``seed``; with optimiser memory
        also ``"decay"`` ``[draws, tests]``."""
        index = self.draw_indices(n_draws, seed)
        out = {"a": _flat(self.a)[index], "B": _flat(self.b)[index], "sigma": _flat(self.sigma)[index]}
        if self.drift is not None:
            out["drift"] = _flat(self.drift)[index]
        if "memory_decay" in self.hyper:
            out["decay"] = _flat(self.hyper["memory_decay"])[index]
        if self.state is not None:
            out["state"] = _flat(self.state)[index]
        return out

    def effect_draws(self, n_draws: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
        """``{"a", "B"}`` ``[draws, tests, n_train]`` of :meth:`parameter_draws` (float64)."""
        draws = self.parameter_draws(n_draws, seed)
        return {"a": np.asarray(draws["a"], dtype=np.float64), "B": np.asarray(draws["B"], dtype=np.float64)}

    def with_average_example(self) -> "BayesianSimfluence":
        """With the average example: every stored draw gains the column of the pool means of ``a``
        and ``B`` (and of the run state's direction), so the same ``(n_draws, seed)`` picks the same draws."""
        extra = {} if self.state_direction is None else {"state_direction": with_mean_column(self.state_direction)}
        return dataclasses.replace(self, a=with_mean_column(self.a), b=with_mean_column(self.b),
                                   train_ids=np.append(np.asarray(self.train_ids).astype(str), AVERAGE_ID), **extra)

    def multiplicative_effects(self, n_draws: int | None = None, seed: int = 0) -> np.ndarray:
        """``[draws, tests, n_train]`` draws of ``a`` (``alpha = 1 + sum a``)."""
        return self.parameter_draws(n_draws, seed)["a"]

    def additive_effects(self, n_draws: int | None = None, seed: int = 0) -> np.ndarray:
        """``[draws, tests, n_train]`` draws of ``B`` (loss units)."""
        return self.parameter_draws(n_draws, seed)["B"]

    # -------------------------------------------------------------- simulation
    def predictive_kind(self, predictive: str | None = None) -> str:
        """The predictive ``predictive`` resolves to: None means ``"new-run"`` where the guard left
        held-out residuals, else ``"noise"``; an unknown or unavailable one is refused."""
        if predictive is None:
            return "new-run" if self.run_residuals is not None else "noise"
        if predictive not in PREDICTIVES:
            raise InputError(f"predictive must be one of {PREDICTIVES}, got {predictive!r}")
        if predictive == "new-run" and self.run_residuals is None:
            raise InputError("predictive 'new-run' needs the guard's held-out residuals, and this posterior has "
                             "none (fitted with -o guard=false, or too few runs for the guard); use 'noise' or "
                             "'parameters'")
        return predictive

    def describe_predictive(self, predictive: str | None = None) -> str:
        """What draws of ``predictive`` stand for, in words for summaries."""
        kind = self.predictive_kind(predictive)
        if kind == "new-run":
            return (f"new-run predictive: parameters plus the run-to-run misfit of {len(self.run_residuals)} "
                    "held-out training runs (every simulated run is a separate new run)")
        if kind == "noise":
            return "parameters and per-step noise (no run-to-run misfit: too narrow for what a new run will do)"
        return "parameter uncertainty only (what the effects are, not what a new run will do)"

    def simulate_draws(self, curricula: np.ndarray, initial_losses: np.ndarray, n_draws: int = 200,
                       seed: int = 0, predictive: str | None = None, run_offset: int = 0) -> np.ndarray:
        """``[draws, runs, steps + 1, tests]`` posterior (predictive) trajectory draws.

        With the guard's stacking weights each draw is the stack ``w f + (1 - w) b`` of this
        posterior's draw ``f`` and the curriculum-blind model's ``b`` (effects zero, the mean
        trajectory's step changes, the same noise), per test example: the stacked mean the guard's
        held-out residuals were measured against, so the new run's discrepancy drawn from them is
        not added to a second spread. (A mixture, a draw of one model or the other, added
        ``w (1 - w) (f - b)^2`` on top, and made new-run intervals too wide wherever the weights
        are far from 0 and 1: ``experiments/results/stacked_predictive.md``.)

        Args:
            curricula: ``[runs, steps, batch]``; initial_losses: ``[runs, tests]``.
            n_draws: trajectories; ``seed`` fixes which parameter draws, noise and discrepancy.
            predictive: ``"new-run"``, ``"noise"`` or ``"parameters"`` (module docstring); None
                for the default (:meth:`predictive_kind`).
            run_offset: index of the first run, so a run's noise does not depend on how runs are
                chunked by the caller (its discrepancy is keyed by its curriculum).

        Curricula longer than the training runs extend the step component by its random walk.
        Computed in chunks of draws of about :data:`CHUNK_BYTES`.
        """
        curricula, initial_losses = check_simulation_inputs(curricula, initial_losses, self.n_train, self.n_tests,
                                                            self.batch_size)
        kind = self.predictive_kind(predictive)
        params = self.parameter_draws(n_draws, seed)
        keys = jax.random.split(jax.random.PRNGKey(seed), len(params["a"]))
        draws = self._roll_out_draws(params, keys, curricula, initial_losses, kind == "noise", run_offset)
        if self.stacking_weight is not None:  # with noise, the posterior draws' noise; else one trajectory for all
            each = kind == "noise"
            source, source_keys = (params, keys) if each else ({k: v[:1] for k, v in params.items()}, keys[:1])
            blind = self._roll_out_draws(self._blind_params(source, curricula.shape[1]), source_keys, curricula,
                                         initial_losses, each, run_offset)
            draws = stacked_mean(self.stacking_weight, draws, blind)
        if kind != "new-run":
            return draws
        residuals = residuals_for_steps(self.run_residuals, curricula.shape[1])
        with jax.enable_x64(True):
            run_ids = jnp.asarray(curriculum_ids(curricula))
            return draws + np.asarray(draw_discrepancy(jnp.asarray(residuals), keys, run_ids))

    def _blind_params(self, params: dict[str, np.ndarray], n_steps: int) -> dict[str, np.ndarray]:
        """The curriculum-blind model as parameter draws (``params``' layout): effects zero, the mean
        trajectory's step changes; with the run state the state-only alternative's state term."""
        blind = np.broadcast_to(self.blind_change(n_steps)[None], (len(params["a"]), self.n_tests, n_steps))
        state = {} if "state" not in params else {"state": np.zeros_like(params["state"])}
        if self.blind_state is not None:  # the state-only alternative: its state term, centred
            center = np.pad(self.blind_center, ((0, max(n_steps - len(self.blind_center), 0)), (0, 0)))[:n_steps]
            blind = blind - (center @ self.blind_state.T).T[None]
            state = {"state": np.broadcast_to(self.blind_state[None], params["sigma"].shape + self.blind_state.shape[-1:])}
        return {**params, **state, "a": np.zeros_like(params["a"]), "B": np.zeros_like(params["B"]),
                "drift": np.ascontiguousarray(blind)}

    def blind_offsets(self, n_steps: int) -> np.ndarray:
        """``[n_steps + 1, tests]`` the blind model's loss minus its initial loss: the training runs'
        mean trajectory shifted to start at 0, held at its last value past the training horizon."""
        offsets = self.blind_mean - self.blind_mean[:1]
        return np.pad(offsets, ((0, max(n_steps + 1 - len(offsets), 0)), (0, 0)), mode="edge")[: n_steps + 1]

    def blind_change(self, n_steps: int) -> np.ndarray:
        """``[tests, n_steps]`` per-step change of the blind model (0 past the training horizon)."""
        return np.diff(self.blind_offsets(n_steps), axis=0).T

    def mean_draw_indices(self) -> np.ndarray:
        """The stored draws (flat over chains) :meth:`simulate` averages: all of them up to
        :data:`MEAN_DRAWS`, else that many evenly spaced over every chain."""
        if self.n_draws <= MEAN_DRAWS:
            return np.arange(self.n_draws)
        return np.unique(np.linspace(0, self.n_draws - 1, MEAN_DRAWS).round().astype(np.int64))

    def simulate(self, curricula: np.ndarray, initial_losses: np.ndarray) -> np.ndarray:
        """``[runs, steps + 1, tests]`` posterior mean trajectory: the mean over
        :meth:`mean_draw_indices` (at most :data:`MEAN_DRAWS` stored draws, so it costs no more
        than that many predictive draws), without noise, which has mean zero; the step component is
        held at its last value beyond the training horizon, its expected value."""
        curricula, initial_losses = check_simulation_inputs(curricula, initial_losses, self.n_train, self.n_tests,
                                                            self.batch_size)
        index = self.mean_draw_indices()
        params = {k: v[index] for k, v in self.parameter_draws(None).items()}
        mean = self._roll_out_draws(params, None, curricula, initial_losses, False, 0, summed=True) / len(index)
        if self.stacking_weight is None:
            return mean
        if self.blind_state is not None:
            alternative = StateTrajectory(self.run_state, self.blind_mean, self.blind_state, self.blind_center)
            blind = alternative.simulate(curricula, initial_losses)
        else:
            blind = initial_losses[:, None, :] + self.blind_offsets(curricula.shape[1])[None]
        return stacked_mean(self.stacking_weight, mean, blind)

    def bands(self, curricula: np.ndarray, initial_losses: np.ndarray, levels: tuple[float, ...] = (0.5, 0.9),
              n_draws: int = 500, seed: int = 0, predictive: str | None = None,
              runs_per_chunk: int | None = None) -> TrajectoryBands:
        """Mean, median and central bands at ``levels`` of :meth:`simulate_draws`, chunked over runs."""
        for level in levels:
            if not 0 < level < 1:
                raise ValueError(f"levels must be in (0, 1), got {level}")
        curricula, initial_losses = check_simulation_inputs(curricula, initial_losses, self.n_train, self.n_tests,
                                                            self.batch_size)
        per_run = n_draws * (curricula.shape[1] + 1) * self.n_tests * 8 * 2
        runs_per_chunk = runs_per_chunk or max(1, CHUNK_BYTES // per_run)
        quantiles = sorted({0.5} | {(1 - lv) / 2 for lv in levels} | {(1 + lv) / 2 for lv in levels})
        means, values = [], []
        for chunk in _chunks(curricula.shape[0], runs_per_chunk):
            draws = self.simulate_draws(curricula[chunk], initial_losses[chunk], n_draws, seed, predictive,
                                        run_offset=chunk.start)
            means.append(draws.mean(0))
            values.append(np.quantile(draws, quantiles, axis=0))
        mean, table = np.concatenate(means), dict(zip(quantiles, np.concatenate(values, axis=1)))
        return TrajectoryBands(mean, table[0.5], {lv: table[(1 - lv) / 2] for lv in levels},
                               {lv: table[(1 + lv) / 2] for lv in levels})

    def _draws_per_chunk(self, curricula: np.ndarray) -> int:
        n_runs, n_steps, batch = curricula.shape
        per_draw = n_runs * (n_steps + 1) * self.n_tests * (batch + 6) * 8
        return max(1, CHUNK_BYTES // per_draw)

    def _roll_out_draws(self, params: dict[str, np.ndarray], keys: Array | None, curricula: np.ndarray,
                        initial_losses: np.ndarray, include_noise: bool, run_offset: int,
                        summed: bool = False) -> np.ndarray:
        """``[draws, runs, steps + 1, tests]`` roll-outs, or with ``summed`` their sum over draws,
        accumulated on the device chunk by chunk (memory of one chunk; only
        ``[runs, steps + 1, tests]`` comes back)."""
        n_runs, n_steps, _ = curricula.shape
        drift = self._drift_for(params, n_steps, keys)
        per_chunk = self._draws_per_chunk(curricula)
        with jax.enable_x64(True):
            if keys is None:  # unused without noise; a placeholder keeps one signature
                keys = jnp.zeros((len(params["a"]), 2), dtype=jnp.uint32)
            mesh = device_mesh(self.n_tests)
            state = params.get("state", np.zeros(params["sigma"].shape + (N_STATE,)))
            arrays = (params["a"], params["B"], drift, params["sigma"], params.get("decay"), state, np.asarray(keys))
            fixed = (jnp.asarray(curricula), jnp.asarray(self.state_features(curricula)),
                     placed(initial_losses, mesh, 1), run_offset + jnp.arange(n_runs))
            settings = {"config": self.config, "include_noise": include_noise, "draws_per_chunk": per_chunk}
            tests_axis = (1, 1, 1, 1, 1, 1, None)  # where each of ``arrays`` has its test_example axis
            if not summed:
                return np.asarray(_roll_out_chunk(*(placed(x, mesh, axis) for x, axis in zip(arrays, tests_axis)),
                                                  *fixed, **settings))
            n = len(params["a"])
            padded = -(-n // per_chunk) * per_chunk  # whole chunks; the padding repeats draw 0 with weight 0
            take = np.concatenate([np.arange(n), np.zeros(padded - n, dtype=np.int64)])
            weights = jnp.asarray((np.arange(padded) < n).astype(np.float64))
            return np.asarray(_roll_out_sum(*(placed(None if x is None else x[take], mesh, axis)
                                              for x, axis in zip(arrays, tests_axis)), *fixed, weights, **settings))

    def state_features(self, curricula: np.ndarray) -> np.ndarray:
        """``[runs, steps, 2]`` the run state's features ``(z_t - z_{t-1}, z_t^2 - z_{t-1}^2)``
        under ``curricula`` (zeros without a run state)."""
        if self.state is None:
            return np.zeros(curricula.shape[:2] + (N_STATE,))
        return host_features(curricula, self.run_state)

    def _drift_for(self, params: dict[str, np.ndarray], n_steps: int, keys: Array | None) -> np.ndarray:
        """``[draws, tests, n_steps]`` step component, extended past the training horizon."""
        n = len(params["a"])
        if "drift" not in params:
            return np.zeros((n, self.n_tests, n_steps))
        drift = params["drift"]
        known = drift.shape[-1]
        if n_steps <= known:
            return drift[..., :n_steps]
        last = np.repeat(drift[..., -1:], n_steps - known, axis=-1)
        if keys is None:
            return np.concatenate([drift, last], axis=-1)
        with jax.enable_x64(True):
            walk = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 1), (self.n_tests, n_steps - known)))(keys)
        step_sd = self.config.drift_smoothness * params["sigma"][..., None]
        return np.concatenate([drift, last + step_sd * np.cumsum(np.asarray(walk), axis=-1)], axis=-1)

    # ------------------------------------------------------------- likelihood
    def log_likelihood(self, runs: Runs, n_draws: int | None = None) -> np.ndarray:
        """``[chains, draws, runs, steps, tests]`` pointwise teacher-forced log-likelihood of
        ``runs`` in loss units (for LOO). ``n_draws`` thins each chain evenly."""
        if runs.n_steps > (self.drift.shape[-1] if self.drift is not None else runs.n_steps):
            raise ValueError("runs are longer than the training runs the step component was fitted on")
        per_chain = self.a.shape[1]
        take = np.arange(per_chain) if n_draws is None else np.unique(
            np.linspace(0, per_chain - 1, min(n_draws, per_chain)).round().astype(int))
        previous, change = runs.losses[:, :-1], np.diff(runs.losses, axis=1)
        drift = (self.drift[:, take, :, : runs.n_steps] if self.drift is not None
                 else np.zeros(self.a.shape[:1] + (len(take), self.n_tests, runs.n_steps)))
        decay = self.hyper.get("memory_decay", np.zeros_like(self.sigma))
        with jax.enable_x64(True):
            curricula, prev, obs = jnp.asarray(runs.curricula), jnp.asarray(previous), jnp.asarray(change)

            features = jnp.asarray(self.state_features(runs.curricula))  # [runs, steps, 2]
            state = self.state if self.state is not None else np.zeros(self.sigma.shape + (N_STATE,))

            def one(arg: tuple) -> Array:
                a, b, d, sigma, lam, g = arg
                mean = step_mean(a, b, d, curricula, prev, lam if self.config.has_memory else None) + features @ g.T
                return noise_distribution(sigma, self.config).log_prob(obs - mean)

            flat = (self.a[:, take], self.b[:, take], drift, self.sigma[:, take], decay[:, take], state[:, take])
            lead = flat[0].shape[:2]
            stacked = tuple(jnp.asarray(x.reshape((-1,) + x.shape[2:])) for x in flat)
            out = jax.lax.map(one, stacked, batch_size=self._draws_per_chunk(runs.curricula))
        return np.asarray(out).reshape(lead + out.shape[1:])

    def select_tests(self, tests: np.ndarray) -> "BayesianSimfluence":
        """The posterior of test examples ``tests`` only (they are independent in the model). The
        same parameter draws and run discrepancy: without noise, a seed gives the same numbers as on
        all test examples; with noise, other (equally distributed) noise draws."""
        tests = np.asarray(tests, dtype=np.int64)
        return dataclasses.replace(
            self, a=self.a[:, :, tests], b=self.b[:, :, tests],
            drift=None if self.drift is None else self.drift[:, :, tests], sigma=self.sigma[:, :, tests],
            hyper={k: v[:, :, tests] for k, v in self.hyper.items()}, scale=self.scale[tests],
            test_ids=self.test_ids[tests],
            stacking_weight=None if self.stacking_weight is None else self.stacking_weight[..., tests],
            blind_mean=None if self.blind_mean is None else self.blind_mean[:, tests],
            run_residuals=None if self.run_residuals is None else self.run_residuals[..., tests],
            state=None if self.state is None else self.state[:, :, tests],
            blind_state=None if self.blind_state is None else self.blind_state[tests])

    # -------------------------------------------------------------------- I/O
    def fields(self) -> dict[str, Any]:
        """The dataclass fields by name (arrays not copied): what a posterior file holds."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def save(self, path: str | Path) -> None:
        """Write the posterior as NetCDF (ArviZ groups ``posterior``, ``sample_stats``,
        ``constant_data``), atomically; use a ``.nc`` name (``.npz`` is taken by the point simulators)."""
        posterior_io.write_posterior(self.fields(), path)

    @classmethod
    def load(cls, path: str | Path) -> "BayesianSimfluence":
        return cls(**posterior_io.read_posterior(path))

    def to_arviz(self, runs: Runs | None = None, predictions: Runs | None = None, n_draws: int = 200,
                 seed: int = 0, log_likelihood: bool = False) -> Any:
        """This posterior as an ArviZ ``xarray.DataTree`` with named dims (on ArviZ 0.x and 1.x alike):
        :func:`bayes_simfluence.bayes.conversion.to_datatree` (with ``runs``: ``observed_data`` and
        ``posterior_predictive``; with ``predictions``: ``predictions`` for those curricula)."""
        return to_datatree(self, runs, predictions, n_draws=n_draws, seed=seed, log_likelihood=log_likelihood)


def _flat(x: np.ndarray) -> np.ndarray:
    return x.reshape((-1,) + x.shape[2:])


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


@functools.partial(jax.jit, static_argnames=("config", "include_noise", "draws_per_chunk"))
def _roll_out_chunk(a: Array, b: Array, drift: Array, sigma: Array, decay: Array | None, state: Array, keys: Array,
                    curricula: Array, state_features: Array, initial_losses: Array, run_ids: Array, *,
                    config: ModelConfig, include_noise: bool, draws_per_chunk: int) -> Array:
    """``[draws, runs, steps + 1, tests]`` roll-outs of parameter draws, compiled once per shape.

    Args:
        a, b: ``[draws, tests, n_train]`` effects; drift: ``[draws, tests, steps]``; sigma:
            ``[draws, tests]``; decay: ``[draws, tests]`` memory decay or None (no memory);
            state: ``[draws, tests, 2]`` run-state coefficients (zeros without one);
            keys: ``[draws, 2]`` noise keys (ignored without noise).
        curricula: ``[runs, steps, batch]``; state_features: ``[runs, steps, 2]``; initial_losses: ``[runs, tests]``; run_ids: ``[runs]``
            (a run's noise depends on its id, not on how runs are chunked).

    Curricula, losses and draws are arguments, the configuration is static: new curricula of
    the same shape reuse the compiled function (a test counts compilations).
    """

    def trajectory(arg: tuple) -> Array:
        a_draw, b_draw, drift_draw, sigma_draw, decay_draw, state_draw, key = arg
        sum_a, sum_b = effect_sums(a_draw, b_draw, curricula, decay_draw)
        alpha = 1.0 + sum_a
        beta = sum_b + drift_draw.T[None] + state_features @ state_draw.T
        if include_noise:
            step_key = jax.random.fold_in(key, 0)
            noise = jax.vmap(lambda r: noise_distribution(sigma_draw, config).sample(
                jax.random.fold_in(step_key, r), beta.shape[1:2]))(run_ids)
            beta = beta + noise
        return roll_out(alpha, beta, initial_losses)

    return jax.lax.map(trajectory, (a, b, drift, sigma, decay, state, keys), batch_size=draws_per_chunk)


@functools.partial(jax.jit, static_argnames=("config", "include_noise", "draws_per_chunk"))
def _roll_out_sum(a: Array, b: Array, drift: Array, sigma: Array, decay: Array | None, state: Array, keys: Array,
                  curricula: Array, state_features: Array, initial_losses: Array, run_ids: Array, weights: Array, *,
                  config: ModelConfig, include_noise: bool, draws_per_chunk: int) -> Array:
    """``[runs, steps + 1, tests]`` ``sum_k weights[k] * roll-out of draw k``, scanned over chunks of
    ``draws_per_chunk`` draws (the number of draws is a multiple of it) so that one chunk of
    trajectories is in memory at a time. Arguments as :func:`_roll_out_chunk`."""
    draws = (a, b, drift, sigma, decay, state, keys, weights)
    chunked = jax.tree_util.tree_map(lambda x: x.reshape((-1, draws_per_chunk) + x.shape[1:]), draws)

    def add_chunk(total: Array, chunk: tuple) -> tuple[Array, None]:
        *parameters, chunk_weights = chunk
        trajectories = _roll_out_chunk(*parameters, curricula, state_features, initial_losses, run_ids, config=config,
                                       include_noise=include_noise, draws_per_chunk=draws_per_chunk)
        return total + jnp.tensordot(chunk_weights, trajectories, axes=1), None

    shape = (curricula.shape[0], curricula.shape[1] + 1, initial_losses.shape[1])
    return jax.lax.scan(add_chunk, jnp.zeros(shape, dtype=initial_losses.dtype), chunked)[0]
