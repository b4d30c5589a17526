"""Fit methods on training runs and score them on held-out runs."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from bayes_simfluence import budget
from bayes_simfluence.choices import DEFAULT_EVAL_DRAWS
from bayes_simfluence.methods import FitContext, check_options, fit_method, options_for
from bayes_simfluence.metrics import (band_scores, bootstrap_intervals, lds_difference_interval, per_test_scores,
                                      point_scores, run_bootstrap_interval)
from bayes_simfluence.runs import Runs
from bayes_simfluence.simulators import ProbabilisticSimulator, Reporting, Simulator
from bayes_simfluence.stacking import describe as describe_stacking
from bayes_simfluence.validation import checked_result, integer


def is_random_subsets(runs: Runs) -> bool:
    """Whether ``runs`` follow the random-subset protocol (recorded by the collector in ``meta``),
    the condition under which Spearman across runs of the final loss is the field's LDS."""
    config = runs.meta.get("config")
    return isinstance(config, dict) and config.get("protocol") == "subsets"


#: the paired LDS difference against ``linear`` is reported from this many held-out runs on (a
#: bootstrap over fewer runs says little)
MIN_PAIRED_RUNS = 10


def score_simulator(simulator: Simulator, heldout: Runs, n_draws: int = DEFAULT_EVAL_DRAWS,
                    seed: int = 0, random_subsets: bool | None = None) -> dict[str, Any]:
    """Simulate held-out runs from their observed ``losses[:, 0]`` and score the trajectories.

    Probabilistic simulators are scored on their posterior mean (point metrics) and on
    ``n_draws`` posterior predictive draws (``coverage_50``, ``coverage_90``, ``crps``). Every
    metric that is a mean over test examples gets ``<metric>_interval``: a 90% percentile-bootstrap
    interval over test examples; ``spearman_mean_loss`` (the runs' ranking of the mean final test
    loss) gets one over runs. ``lds`` (= ``spearman_runs``) is reported when the held-out runs
    follow the random-subset protocol (``random_subsets``; default: as their ``meta`` says).
    """
    return _score(simulator, heldout, n_draws, seed, random_subsets)[0]


def _score(simulator: Simulator, heldout: Runs, n_draws: int, seed: int,
           random_subsets: bool | None) -> tuple[dict[str, Any], np.ndarray]:
    """:func:`score_simulator`'s scores and the posterior-mean trajectories ``[runs, steps + 1, tests]``."""
    what = f"'{simulator.name}' simulating the held-out runs"
    n_draws = integer(n_draws, "n_draws", minimum=1)
    if isinstance(simulator, ProbabilisticSimulator):
        budget.check_simulation(simulator, n_draws, heldout.curricula, heldout.n_tests, f"{what} (--draws)")
    predicted = checked_result(simulator.simulate(heldout.curricula, heldout.initial_losses), what)
    scores: dict[str, Any] = point_scores(predicted, heldout.losses)
    draws = None
    if isinstance(simulator, ProbabilisticSimulator):
        draws = checked_result(simulator.simulate_draws(heldout.curricula, heldout.initial_losses, n_draws,
                                                        seed=seed), what)
        scores.update(band_scores(draws, heldout.losses))
        scores["predictive"] = simulator.describe_predictive()
    intervals = bootstrap_intervals(per_test_scores(predicted, heldout.losses, draws), seed=seed)
    intervals["spearman_mean_loss"] = run_bootstrap_interval(predicted, heldout.losses, seed=seed)
    if random_subsets if random_subsets is not None else is_random_subsets(heldout):
        scores["lds"] = scores["spearman_runs"]
        intervals["lds"] = intervals["spearman_runs"]
    scores.update({f"{name}_interval": list(interval) for name, interval in intervals.items()})
    return scores, predicted


def lds_against_linear(results: dict[str, dict[str, Any]], predictions: dict[str, np.ndarray], heldout: Runs,
                       seed: int = 0) -> None:
    """Add ``lds_minus_linear`` to each method of ``results`` that reports ``lds``, where ``linear`` (the
    paper's ridge simulator) is among them and there are at least :data:`MIN_PAIRED_RUNS` held-out runs:
    ``{"difference", "interval", "heldout_runs"}``, the method's LDS minus ``linear``'s with its 90%
    bootstrap interval resampling held-out runs, paired
    (:func:`~bayes_simfluence.metrics.lds_difference_interval`); whether a method ranks runs better
    than the ridge is a question about the runs both rank, which two separate intervals do not answer.

    Args:
        predictions: ``{method: [runs, steps + 1, tests]}`` posterior-mean trajectories of ``heldout``.
    """
    if "linear" not in predictions or heldout.n_runs < MIN_PAIRED_RUNS:
        return
    for name, predicted in predictions.items():
        if name == "linear" or "lds" not in results[name]:
            continue
        difference, low, high = lds_difference_interval(predicted, predictions["linear"], heldout.losses, seed=seed)
        if np.isfinite([difference, low, high]).all():
            results[name]["lds_minus_linear"] = {"difference": difference, "interval": [low, high],
                                                 "heldout_runs": heldout.n_runs}


def fit_report(simulator: Simulator) -> dict[str, Any]:
    """What a fit chose, for result tables (:meth:`~bayes_simfluence.simulators.Reporting.fit_report`):
    ``ridge``, ``guard`` and ``guard_weight`` where present; empty for a simulator that chose nothing."""
    return simulator.fit_report() if isinstance(simulator, Reporting) else {}


def evaluate_methods(methods: list[str], train: Runs, heldout: Runs, context: FitContext | None = None,
                     n_draws: int = DEFAULT_EVAL_DRAWS, random_subsets: bool | None = None) -> dict[str, dict[str, Any]]:
    """Fit every method on ``train`` and score it on ``heldout``.

    Returns:
        ``{method: {"all_steps_mse", "final_step_mse", "spearman", "spearman_runs", ...,
        "fit_seconds", "simulate_seconds"}}`` with ``<metric>_interval`` bootstrap intervals;
        probabilistic methods add ``coverage_50``, ``coverage_90`` and ``crps``; random-subset
        runs add ``lds`` (see :func:`score_simulator`) and, with ``linear`` among the methods,
        ``lds_minus_linear`` (:func:`lds_against_linear`); guarded Bayesian fits add ``guard`` (the
        report of :mod:`bayes_simfluence.bayes.guard`) and ``guard_weight`` (its mean weight).
    """
    train.check_compatible(heldout)
    context = context or FitContext()
    check_options(methods, context.options)
    n_draws = integer(n_draws, "n_draws", minimum=1)
    if any(name.startswith("bayes") for name in methods):  # before any fit: the draws scored at the end
        budget.check_draws(n_draws, heldout.n_runs, heldout.n_steps, heldout.n_tests, heldout.n_train,
                           "scoring the held-out runs (--draws)")
    results: dict[str, dict[str, Any]] = {}
    predictions = {}
    for name in methods:
        start = time.perf_counter()
        simulator = fit_method(name, train, options_for(name, context))
        fitted = time.perf_counter()
        scores, predictions[name] = _score(simulator, heldout, n_draws, context.seed, random_subsets)
        scores["fit_seconds"] = fitted - start
        scores["simulate_seconds"] = time.perf_counter() - fitted
        results[name] = {**scores, **fit_report(simulator)}
    lds_against_linear(results, predictions, heldout, context.seed)
    return results


TABLE_COLUMNS = ("all_steps_mse", "final_step_mse", "spearman", "spearman_runs", "lds", "spearman_mean_loss",
                 "coverage_50", "coverage_90", "crps", "guard_weight", "fit_seconds")


def format_table(results: dict[str, dict[str, Any]], intervals: bool = False) -> str:
    """A fixed-width text table, one row per method; blank where a metric does not apply.

    ``intervals``: print each metric's bootstrap interval beside it (``value [low, high]``).
    """
    columns = [c for c in TABLE_COLUMNS if any(c in scores for scores in results.values())]
    width = max([len("method")] + [len(name) for name in results]) + 2
    # every column at least two spaces wider than its name, so that names never run together
    widths = [max(28 if intervals else 16, len(column) + 2) for column in columns]
    header = "method".ljust(width) + "".join(c.rjust(w) for c, w in zip(columns, widths))
    lines = [header, "-" * len(header)]
    for name, scores in results.items():
        cells = []
        for column, column_width in zip(columns, widths):
            value, interval = scores.get(column), scores.get(f"{column}_interval")
            text = "" if value is None else f"{value:.4g}"
            if intervals and interval is not None and text:
                text += f" [{interval[0]:.3g}, {interval[1]:.3g}]"
            cells.append(text.rjust(column_width))
        lines.append(name.ljust(width) + "".join(cells))
    for name, scores in results.items():
        if "lds_minus_linear" in scores:
            paired = scores["lds_minus_linear"]
            low, high = paired["interval"]
            lines.append(f"{name} lds minus linear's: {paired['difference']:+.3f}, 90% interval [{low:+.3f}, {high:+.3f}] "
                         f"(bootstrap over the {paired['heldout_runs']} held-out runs, paired)")
        if "guard" in scores:
            lines.append(f"{name} {describe_stacking(scores['guard'])}")
        if "predictive" in scores:
            lines.append(f"{name} coverage and crps: {scores['predictive']}")
    return "\n".join(lines)
