"""Fit methods on training runs and score them on held-out runs."""

from __future__ import annotations

import time


from bayes_simfluence.methods import FitContext, check_options, fit_method, options_for
from bayes_simfluence.metrics import band_scores, point_scores
from bayes_simfluence.runs import Runs
from bayes_simfluence.simulators import ProbabilisticSimulator, Simulator
from bayes_simfluence.validation import checked_result

#: predictive draws used for coverage and CRPS of probabilistic simulators.
DEFAULT_EVAL_DRAWS = 200


def score_simulator(simulator: Simulator, heldout: Runs, n_draws: int = DEFAULT_EVAL_DRAWS,
                    seed: int = 0) -> dict[str, float]:
    """Simulate held-out runs from their observed ``losses[:, 0]`` and score the trajectories.

    Probabilistic simulators are scored on their posterior mean (point metrics) and on
    ``n_draws`` posterior predictive draws (``coverage_50``, ``coverage_90``, ``crps``).
    """
    what = f"'{simulator.name}' simulating the held-out runs"
    predicted = checked_result(simulator.simulate(heldout.curricula, heldout.initial_losses), what)
    scores = point_scores(predicted, heldout.losses)
    if isinstance(simulator, ProbabilisticSimulator) and hasattr(simulator, "simulate_draws"):
        draws = simulator.simulate_draws(heldout.curricula, heldout.initial_losses, n_draws, seed=seed)
        scores.update(band_scores(checked_result(draws, what), heldout.losses))
    return scores


def evaluate_methods(methods: list[str], train: Runs, heldout: Runs, context: FitContext | None = None,
                     n_draws: int = DEFAULT_EVAL_DRAWS) -> dict[str, dict[str, float]]:
    """Fit every method on ``train`` and score it on ``heldout``.

    Returns:
        ``{method: {"all_steps_mse", "final_step_mse", "spearman", "spearman_runs", ...,
        "fit_seconds", "simulate_seconds"}}``; probabilistic methods add ``coverage_50``,
        ``coverage_90`` and ``crps``.
    """
    train.check_compatible(heldout)
    context = context or FitContext()
    check_options(methods, context.options)
    results: dict[str, dict[str, float]] = {}
    for name in methods:
        start = time.perf_counter()
        simulator = fit_method(name, train, options_for(name, context))
        fitted = time.perf_counter()
        scores = score_simulator(simulator, heldout, n_draws=n_draws, seed=context.seed)
        scores["fit_seconds"] = fitted - start
        scores["simulate_seconds"] = time.perf_counter() - fitted
        ridge = getattr(simulator, "ridge_selected", None)
        if ridge is not None:
            scores["ridge"] = float(ridge)
        results[name] = scores
    return results


TABLE_COLUMNS = ("all_steps_mse", "final_step_mse", "spearman", "spearman_runs",
                 "coverage_50", "coverage_90", "crps", "fit_seconds")


def format_table(results: dict[str, dict[str, float]]) -> str:
    """A fixed-width text table, one row per method; blank where a metric does not apply."""
    columns = [c for c in TABLE_COLUMNS if any(c in scores for scores in results.values())]
    width = max([len("method")] + [len(name) for name in results]) + 2
    header = "method".ljust(width) + "".join(c.rjust(16) for c in columns)
    lines = [header, "-" * len(header)]
    for name, scores in results.items():
        cells = []
        for column in columns:
            value = scores.get(column)
            cells.append(("" if value is None else f"{value:.4g}").rjust(16))
        lines.append(name.ljust(width) + "".join(cells))
    return "\n".join(lines)
