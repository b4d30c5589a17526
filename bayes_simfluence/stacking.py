"""Stacking: a simulator composed of two simulators, weighted by held-out roll-outs.

Any two simulators can be stacked: a *full* one (what a method fits) and an *alternative* (by
default the curriculum-blind mean trajectory, :class:`~bayes_simfluence.simulators.MeanTrajectory`).
The weights are chosen where users consume simulations, on whole held-out trajectories:

1. split the training runs into ``folds`` contiguous folds (default :data:`FOLDS`); for each, fit
   both simulators on the other runs and roll them out on the fold's curricula from their own ``L_0``;
2. choose the weights ``w[t, m]`` in ``[0, 1]`` of the full simulator at step ``t`` for test
   example ``m`` that minimise the held-out squared error of ``w f + (1 - w) b`` (closed form,
   :func:`stacking_weights`), as in stacking of predictive distributions (Yao, Vehtari, Simpson and
   Gelman, 2018), scored here by squared error of the means: a level per test example and, where
   the held-out runs show one beyond noise, a linear trend along the run shared by the test
   examples. How far the effects can be trusted may change along the run: where seed noise makes
   a fit's deviations too bold late in the run (Adam with dropout), one weight for all steps, set
   mostly by the middle of the run, left the final losses that decisions use under-shrunk.

:func:`cross_fit_stacking` does both and keeps the held-out residuals of the stacked prediction
(``observed - (w f + (1 - w) b)``: what a new run differs by from the simulation) and, where the
full simulator has a predictive distribution, how much of their run-to-run spread is the
cross-fits' own parameter error (:func:`parameter_error_share`);
:func:`fit_stacked` adds the fits on every run and returns the composed simulator
(:class:`StackedSimulator`, or :class:`StackedProbabilisticSimulator` where the full simulator has
a predictive distribution). ``w = 1`` everywhere is the full simulator; where the curriculum has
no effect ``w`` falls towards 0. A curriculum longer than the training runs keeps the last step's
weight beyond them (:func:`weight_trajectory`). The Bayesian methods' guard (:mod:`bayes_simfluence.bayes.guard`)
is this stacking with the posterior as the full simulator.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
from tqdm.auto import tqdm

from bayes_simfluence import atomic
from bayes_simfluence.runs import Runs, member, open_archive
from bayes_simfluence.simulators import MeanTrajectory, ProbabilisticSimulator, Reporting, Simulator, saved_array
from bayes_simfluence.validation import InputError

#: the fewest runs a held-out fold may have.
MIN_RUNS_PER_FOLD = 2
#: default number of folds: each cross-fit sees 3/4 of the runs. With 2 folds (fits on half the
#: runs) the weights came out biased towards the blind model on the project's real sets, because a
#: fit on half the runs is worse than the final fit on all of them.
FOLDS = 4
#: what :func:`cross_fit_stacking` names its default alternative in reports.
BLIND_NAME = "curriculum-blind"
#: the ``kind`` of a saved :class:`StackedSimulator`.
KIND = "stacked"
#: a trend of the stacking weights along the run is kept where it is more than this many
#: standard errors from 0 (:func:`stacking_weights`)
TREND_SDS = 2.0
#: parameter draws of each cross-fit behind :func:`parameter_error_share`.
PARAMETER_DRAWS = 64
#: most ``draws * runs * (steps + 1) * tests`` values rolled out at once for them.
PARAMETER_CHUNK = 2**23

#: ``fit(train runs) -> fitted simulator``
Fit = Callable[[Runs], Simulator]
#: ``alternative(train runs, the full simulator fitted on them) -> fitted alternative``
AlternativeFit = Callable[[Runs, Simulator], Simulator]


def blind_alternative(train: Runs, fitted: Simulator) -> MeanTrajectory:
    """The default alternative: the curriculum-blind mean trajectory of ``train`` (``fitted`` unused)."""
    return MeanTrajectory().fit(train)


class Stacking(NamedTuple):
    """What held-out stacking found.

    Attributes:
        weight: ``[steps, tests]`` weight of the full simulator in the stack at each step.
        report: held-out-run all-steps MSE of the full simulator, the alternative (``"blind"``
            keys) and the stack (the stack's weights were chosen on these same predictions:
            slightly optimistic), ``mean_weight`` and ``final_weight`` (means over test examples
            of the weights over all steps and at the last), folds, runs, seconds, and ``parameter_share``: the
            share of the residuals' run-to-run variance of the mean final loss that is the
            cross-fits' parameter error (:func:`parameter_error_share`; 0 where the full simulator
            has no predictive distribution): JSON-ready.
        residuals: ``[runs, steps, tests]`` held-out ``observed - stacked`` trajectories of every
            training run (without ``L_0``), in run order; None when nothing was held out.
    """

    weight: np.ndarray
    report: dict[str, Any]
    residuals: np.ndarray | None = None


def stacking_weights(full: np.ndarray, blind: np.ndarray, actual: np.ndarray,
                     trend_sds: float = TREND_SDS) -> np.ndarray:
    """``[steps, tests]`` the weights ``w[t, m] = clip(c[m] + k u_t, 0, 1)`` that minimise
    ``sum (w f + (1 - w) b - y)^2`` over runs, steps and test examples, with ``u_t`` the step's
    position along the run (from -1/2 to 1/2): a level per test example and one trend ``k`` shared
    by them (closed form). The trend is kept only where it is more than ``trend_sds`` standard
    errors from 0, its standard error robust to errors correlated within a run (clustered by runs,
    with the small-sample factor ``runs / (runs - 1)``); else ``k = 0`` and each test example has
    one weight for all steps, ``sum (f - b)(y - b) / sum (f - b)^2``.

    Args:
        full, blind, actual: ``[runs, steps, tests]`` trajectories (without ``L_0``, which all share).
        trend_sds: how many standard errors a trend must clear (``inf``: never a trend).
    """
    gap, target = full - blind, actual - blind
    n_runs, n_steps = gap.shape[:2]
    position = ((np.arange(n_steps) - (n_steps - 1) / 2) / n_steps)[:, None]  # [steps, 1]
    squares, products = (gap**2).sum(axis=0), (gap * target).sum(axis=0)  # [steps, tests]
    total = squares.sum(axis=0)

    def per_test(numerator: np.ndarray) -> np.ndarray:
        return np.divide(numerator, total, out=np.zeros_like(numerator), where=total > 0)

    level = per_test(products.sum(axis=0))
    lever = per_test((squares * position).sum(axis=0))  # each test example's mean position, weighted
    # the trend with each test example's level profiled out (Frisch-Waugh): regress on gap (u - lever)
    regressor = gap * (position - lever)  # [runs, steps, tests]
    information = float((regressor**2).sum())
    if n_runs < 2 or not information > 0 or not np.isfinite(trend_sds):
        return np.clip(np.broadcast_to(level, (n_steps, len(level))), 0.0, 1.0)
    trend = float((regressor * target).sum()) / information
    intercept = level - trend * lever
    residual = target - gap * (intercept + trend * position)
    scores = (regressor * residual).sum(axis=(1, 2))  # [runs]: errors may correlate within a run
    error = np.sqrt(n_runs / (n_runs - 1) * (scores**2).sum()) / information
    if not abs(trend) > trend_sds * error:
        trend, intercept = 0.0, level
    return np.clip(intercept + trend * position, 0.0, 1.0)


def weight_trajectory(weight: np.ndarray, n_points: int) -> np.ndarray:
    """``[n_points, tests]`` the weights of a trajectory of ``n_points`` losses (``L_0`` first):
    ``weight [steps, tests]`` row ``t - 1`` at step ``t``, the last row beyond the fitted steps
    (and at ``L_0``, which both simulators share, the first); ``weight [tests]`` (one for all
    steps, as files of earlier versions hold) at every step."""
    weight = np.asarray(weight)
    if weight.ndim == 1:
        return np.broadcast_to(weight, (n_points, weight.shape[0]))
    return weight[np.clip(np.arange(n_points) - 1, 0, weight.shape[0] - 1)]


def final_weight(weight: np.ndarray) -> np.ndarray:
    """``[tests]`` the weights at the last fitted step (of ``[steps, tests]`` or ``[tests]`` weights)."""
    weight = np.asarray(weight)
    return weight if weight.ndim == 1 else weight[-1]


def parameter_deviations(fitted: Simulator, runs: Runs, n_draws: int = PARAMETER_DRAWS) -> np.ndarray | None:
    """``[draws, runs, tests]`` how ``fitted``'s parameter draws of the final losses of ``runs``
    (their curricula and ``L_0``) deviate from the draws' mean; None for a point simulator. Rolled
    out a few runs at a time (at most :data:`PARAMETER_CHUNK` values), with the same draws for all."""
    if not isinstance(fitted, ProbabilisticSimulator):
        return None
    per_run = n_draws * runs.losses.shape[1] * runs.n_tests
    step = max(1, PARAMETER_CHUNK // per_run)
    final = np.concatenate([
        fitted.simulate_draws(runs.curricula[k:k + step], runs.initial_losses[k:k + step], n_draws, seed=0,
                              predictive="parameters")[:, :, -1]
        for k in range(0, runs.n_runs, step)], axis=1)
    return final - final.mean(axis=0)


def parameter_error_share(deviations: np.ndarray, weight: np.ndarray, residuals: np.ndarray) -> float:
    """The share of the held-out residuals' run-to-run variance of the mean final loss that is the
    cross-fits' own parameter error, in ``[0, 1]``.

    A held-out residual is what the model misses on a new run *plus* the error of the cross-fit's
    parameters; a new-run predictive that adds the final fit's parameter draws to resampled
    residuals counts that parameter error twice. Draw ``k`` of every cross-fit, stacked
    (``w[m]`` times the full simulator's deviation), is one joint draw of the held-out runs'
    parameter errors (folds are independent fits), so the mean over draws of their sample variance
    across runs is the part of the residuals' sample variance that they explain.

    Args:
        deviations: ``[draws, runs, tests]`` parameter draws of the held-out final losses less
            their mean (:func:`parameter_deviations`, folds concatenated in run order).
        weight: ``[steps, tests]`` (or ``[tests]``) stacking weights of the full simulator.
        residuals: ``[runs, steps, tests]`` held-out residuals of the stack.
    """
    errors = (final_weight(weight) * deviations).mean(axis=-1)  # [draws, runs]: the stack's mean final loss
    total = residuals[:, -1, :].mean(axis=-1).var(ddof=1)
    if not total > 0:
        return 0.0
    return float(np.clip(errors.var(axis=1, ddof=1).mean() / total, 0.0, 1.0))


def contiguous_folds(n_runs: int, folds: int) -> list[np.ndarray]:
    """Indices of ``folds`` contiguous, nearly equal folds of ``n_runs`` runs."""
    return list(np.array_split(np.arange(n_runs), folds))


def cross_fit_stacking(fit: Fit, runs: Runs, folds: int = FOLDS, progress: bool = False, workers: int = 1,
                       alternative: AlternativeFit = blind_alternative,
                       alternative_name: str = BLIND_NAME, alone_first: bool = True) -> Stacking:
    """Cross-fit ``fit`` and ``alternative`` over folds of ``runs`` and choose the stacking weights
    (module docstring).

    ``alternative(train, fitted)`` fits the alternative on a fold's training runs, given the fold's
    fit of ``fit`` (whose estimates it may reuse); ``alternative_name`` names it in the report.

    With fewer than ``folds * MIN_RUNS_PER_FOLD`` runs nothing is held out: every weight is 1 and
    the report says why. ``workers > 1`` runs that many cross-fits at once in threads (for fits
    that compute outside Python, such as XLA's; the results are the same numbers): with
    ``alone_first`` the first fold of each training-run count runs alone, so a fit that traces and
    compiles a program per shape does so in one thread only (NumPyro's effect handlers live on one
    global stack, which concurrent tracing would corrupt); fits that trace under a lock of their own
    (bayes-svi's, :data:`bayes_simfluence.bayes.inference.TRACING`) pass False and start together.
    """
    if runs.n_runs < folds * MIN_RUNS_PER_FOLD:
        return Stacking(np.ones(runs.n_tests), {
            "skipped": f"{runs.n_runs} runs: the guard needs at least {folds * MIN_RUNS_PER_FOLD} "
                       f"({folds} folds of {MIN_RUNS_PER_FOLD})"})
    start = time.perf_counter()

    def cross_fit(held: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        train, test = runs.select_runs(np.setdiff1d(np.arange(runs.n_runs), held)), runs.select_runs(held)
        fitted = fit(train)
        return (fitted.simulate(test.curricula, test.initial_losses)[:, 1:],
                alternative(train, fitted).simulate(test.curricula, test.initial_losses)[:, 1:],
                test.losses[:, 1:], parameter_deviations(fitted, test))

    held_out = contiguous_folds(runs.n_runs, folds)
    first_of_size: dict[int, int] = {}
    for k, held in enumerate(held_out):
        first_of_size.setdefault(len(held), k)
    results: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]] = {}
    with tqdm(total=folds, desc="guard: cross-fits", unit="fold", disable=not progress) as bar:
        for k in first_of_size.values() if alone_first else ():
            results[k] = cross_fit(held_out[k])
            bar.update()
        rest = [k for k in range(folds) if k not in results]
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(rest)))) as pool:
            for k, result in zip(rest, pool.map(lambda k: cross_fit(held_out[k]), rest)):
                results[k] = result
                bar.update()
    full, other, actual = (np.concatenate([results[k][part] for k in range(folds)]) for part in range(3))
    weight = stacking_weights(full, other, actual)
    stacked = weight * full + (1.0 - weight) * other
    deviations = [results[k][3] for k in range(folds)]
    share = 0.0 if any(d is None for d in deviations) else \
        parameter_error_share(np.concatenate(deviations, axis=1), weight, actual - stacked)

    def mse(prediction: np.ndarray) -> float:
        return float(((prediction - actual) ** 2).mean())

    report = {"folds": folds, "heldout_runs": int(actual.shape[0]), "heldout_mse_full": mse(full),
              "heldout_mse_blind": mse(other), "heldout_mse_stacked": mse(stacked),
              "mean_weight": float(weight.mean()), "final_weight": float(final_weight(weight).mean()),
              "workers": workers, "seconds": time.perf_counter() - start,
              "blind": alternative_name, "parameter_share": share}
    return Stacking(weight, report, actual - stacked)


def describe(report: dict[str, Any]) -> str:
    """One line for users: what held-out stacking (the guard) measured and what it chose."""
    if "skipped" in report:
        return f"guard skipped: {report['skipped']}"
    final = f", {report['final_weight']:.2f} at the last step" if "final_weight" in report else ""
    return (f"guard: on {report['heldout_runs']} held-out training runs ({report['folds']} folds), all-steps MSE "
            f"{report['heldout_mse_full']:.4g} with the effects, {report['heldout_mse_blind']:.4g} "
            f"{report.get('blind', BLIND_NAME)}, "
            f"{report['heldout_mse_stacked']:.4g} stacked; weight of the effects {report['mean_weight']:.2f} "
            f"(mean over test examples and steps{final})")


def report_entries(report: dict[str, Any] | None) -> dict[str, Any]:
    """Result-table entries of a stacking report: ``guard`` (the report) and ``guard_weight`` (its
    mean weight) where the weights were chosen; empty without a report."""
    if report is None:
        return {}
    entries: dict[str, Any] = {"guard": report}
    if "mean_weight" in report:
        entries["guard_weight"] = report["mean_weight"]
    return entries


def stacked_mean(weight: np.ndarray, full: np.ndarray, alternative: np.ndarray) -> np.ndarray:
    """``[..., steps + 1, tests]`` ``w f + (1 - w) b`` of two trajectories ``[..., steps + 1, tests]``
    (``L_0`` first) with weights ``w [fitted steps, tests]`` (:func:`weight_trajectory`) or ``[tests]``."""
    weight = weight_trajectory(weight, full.shape[-2])
    return weight * full + (1.0 - weight) * alternative


@dataclass
class StackedSimulator:
    """Two simulators composed: predicts ``w[t, m] full + (1 - w[t, m]) alternative`` per step and
    test example.

    Attributes:
        full, alternative: fitted simulators on the same test examples.
        weight: ``[steps, tests]`` weight of ``full`` at each fitted step (:func:`weight_trajectory`
            beyond them), in ``[0, 1]``; ``[tests]``, one for all steps, in files of earlier versions.
        info: ``{"guard": report}`` of :func:`cross_fit_stacking` (JSON-ready).
    """

    full: Simulator
    alternative: Simulator
    weight: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.full.name}+stacked"

    @property
    def stacking_weight(self) -> np.ndarray:
        """``[steps, tests]`` the weight of the full simulator (:class:`~bayes_simfluence.simulators.Stacked`)."""
        return self.weight

    @property
    def stacked_alternative(self) -> str:
        """The alternative as the stacking report names it (:class:`~bayes_simfluence.simulators.Stacked`)."""
        return self.info.get("guard", {}).get("blind", BLIND_NAME)

    def fit_report(self) -> dict[str, Any]:
        """The full simulator's report with ``guard`` and ``guard_weight`` (:func:`report_entries`;
        :class:`~bayes_simfluence.simulators.Reporting`)."""
        own = self.full.fit_report() if isinstance(self.full, Reporting) else {}
        return {**own, **report_entries(self.info.get("guard"))}

    def simulate(self, curricula: np.ndarray, initial_losses: np.ndarray) -> np.ndarray:
        """``curricula [runs, steps, batch]``, ``initial_losses [runs, tests]`` -> ``[runs, steps + 1, tests]``."""
        return stacked_mean(self.weight, self.full.simulate(curricula, initial_losses),
                            self.alternative.simulate(curricula, initial_losses))

    def select_tests(self, tests: np.ndarray) -> "StackedSimulator":
        return dataclasses.replace(self, full=self.full.select_tests(tests),
                                   alternative=self.alternative.select_tests(tests), weight=self.weight[..., tests])

    def save(self, path: str | Path) -> None:
        """One ``.npz``: the weights, the report and both simulators' own files, byte for byte."""
        with tempfile.TemporaryDirectory() as folder:
            files = {}
            for part in ("full", "alternative"):
                getattr(self, part).save(Path(folder) / part)
                files[f"{part}_file"] = np.frombuffer((Path(folder) / part).read_bytes(), dtype=np.uint8)
        atomic.savez(path, {"kind": np.array(KIND), "weight": np.asarray(self.weight, dtype=np.float64),
                            "info": np.array(json.dumps(self.info)), **files})

    @classmethod
    def load(cls, path: str | Path, load: Callable[[Path], Simulator]) -> "StackedSimulator":
        """Read a file written by :meth:`save`; ``load`` reads each simulator's own file back
        (:func:`bayes_simfluence.methods.load_simulator`)."""
        path = Path(path)
        with open_archive(path, "simulator file") as archive:
            weight = saved_array(archive, "weight", path, ndim=(1, 2))
            info = json.loads(str(member(archive, "info", str(path))))
            parts = {}
            with tempfile.TemporaryDirectory() as folder:
                for part in ("full", "alternative"):
                    (Path(folder) / part).write_bytes(member(archive, f"{part}_file", str(path)).tobytes())
                    parts[part] = load(Path(folder) / part)
        if np.any((weight < 0) | (weight > 1)):
            raise InputError(f"{path}: 'weight' must lie in [0, 1]")
        return stack(parts["full"], parts["alternative"], weight, info)


@dataclass
class StackedProbabilisticSimulator(StackedSimulator):
    """A :class:`StackedSimulator` whose full simulator has a predictive distribution: each draw is
    ``w[m] f + (1 - w[m]) b`` of a draw ``f`` of ``full`` and one ``b`` of the alternative (its own
    draw, or its one trajectory for a point simulator), so the draws' mean is the stack's and
    draws stay paired across curricula. A mixture (one model or the other per draw) would add
    ``w (1 - w) (f - b)^2`` of spread that neither model has."""

    full: ProbabilisticSimulator

    def predictive_kind(self, predictive: str | None = None) -> str:
        return self.full.predictive_kind(predictive)

    def describe_predictive(self, predictive: str | None = None) -> str:
        return self.full.describe_predictive(predictive)

    def simulate_draws(self, curricula: np.ndarray, initial_losses: np.ndarray, n_draws: int,
                       seed: int = 0, predictive: str | None = None) -> np.ndarray:
        """``[draws, runs, steps + 1, tests]`` draws of the stacked predictive ``predictive`` (the
        full simulator's; see :data:`~bayes_simfluence.choices.PREDICTIVES`)."""
        full = self.full.simulate_draws(curricula, initial_losses, n_draws, seed=seed, predictive=predictive)
        if isinstance(self.alternative, ProbabilisticSimulator):
            other = self.alternative.simulate_draws(curricula, initial_losses, n_draws, seed=seed,
                                                    predictive=predictive)
        else:
            other = self.alternative.simulate(curricula, initial_losses)[None]
        return stacked_mean(self.weight, full, other)


def stack(full: Simulator, alternative: Simulator, weight: np.ndarray,
          info: dict[str, Any] | None = None) -> StackedSimulator:
    """``full`` and ``alternative`` composed with weights ``weight [steps, tests]`` of ``full``: a
    :class:`StackedProbabilisticSimulator` where ``full`` has a predictive distribution."""
    kind = StackedProbabilisticSimulator if isinstance(full, ProbabilisticSimulator) else StackedSimulator
    return kind(full, alternative, np.asarray(weight, dtype=np.float64), dict(info or {}))


def fit_stacked(fit: Fit, runs: Runs, folds: int = FOLDS, progress: bool = False, workers: int = 1,
                alternative: AlternativeFit = blind_alternative,
                alternative_name: str = BLIND_NAME) -> StackedSimulator:
    """Any method stacked with an alternative: weights by :func:`cross_fit_stacking` (arguments
    as there), then ``fit`` and ``alternative`` on every run of ``runs``, composed by :func:`stack`.
    E.g. ``fit_stacked(lambda train: fit_method("linear", train), runs)``. With too few runs for
    the folds every weight is 1 (the report says why)."""
    stacking = cross_fit_stacking(fit, runs, folds, progress, workers, alternative, alternative_name)
    full = fit(runs)
    return stack(full, alternative(runs, full), stacking.weight, {"guard": stacking.report})
