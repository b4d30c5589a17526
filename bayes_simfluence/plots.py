"""Figures: simulated trajectories with credible bands, curriculum comparisons, attributions, scores.

Every function returns a :class:`matplotlib.figure.Figure` built without ``pyplot`` (no GUI
backend, no global figure registry); save it with ``figure.savefig(path, dpi=150)``. Bands are
central posterior (predictive) intervals: 50% darker, 90% lighter; the line is the median.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from bayes_simfluence.atomic import atomic_path
from bayes_simfluence.attributions import ExampleEffects
from bayes_simfluence.compare import Comparison

BAND_LEVELS = (0.9, 0.5)
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
HELPFUL, HARMFUL = "#2ca02c", "#d62728"


def step_axis(axis: Axes) -> None:
    """Label ``axis``'s x axis as training steps, with ticks at whole steps only (a step is a count:
    a tick at step 2.5 names nothing)."""
    axis.set_xlabel("step")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))


def _band(axis: Axes, steps: np.ndarray, draws: np.ndarray, colour: str, label: str | None) -> None:
    """Median line and 50%/90% bands of ``draws [draws, steps]``."""
    for level, alpha in zip(BAND_LEVELS, (0.18, 0.35)):
        lower, upper = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
        axis.fill_between(steps, lower, upper, color=colour, alpha=alpha, linewidth=0)
    axis.plot(steps, np.median(draws, axis=0), color=colour, linewidth=1.6, label=label)


#: the most panels (runs x test examples) :func:`plot_trajectories` draws: thousands took minutes and
#: gave a figure nobody can read.
MAX_PANELS = 100


def check_panels(n_runs: int, n_tests: int) -> None:
    """Refuse a trajectory figure of more than :data:`MAX_PANELS` panels (before anything is simulated)."""
    if n_runs * n_tests > MAX_PANELS:
        raise ValueError(f"--run and --test ask for {n_runs} x {n_tests} = {n_runs * n_tests} panels; a figure holds "
                         f"at most {MAX_PANELS}: pick fewer runs or test examples")


def plot_trajectories(draws: np.ndarray, observed: np.ndarray | None = None, runs: Sequence[int] = (0,),
                      tests: Sequence[int] = (0,), point: np.ndarray | None = None,
                      test_ids: Sequence[str] | None = None, title: str | None = None) -> Figure:
    """Observed vs simulated loss trajectories, one panel per (test example, run).

    Args:
        draws: ``[draws, runs, steps + 1, tests]`` simulated trajectories (posterior predictive).
        observed: ``[runs, steps + 1, tests]`` logged losses, drawn as black dots and line.
        runs, tests: which runs (columns) and test examples (rows) to show.
        point: ``[runs, steps + 1, tests]`` a point prediction to overlay (dashed), e.g. a ridge fit.
        test_ids: names of all test examples, for panel titles.
    """
    draws = np.asarray(draws)
    if draws.ndim != 4:
        raise ValueError(f"draws must be [draws, runs, steps + 1, tests], got shape {draws.shape}")
    runs, tests = list(runs), list(tests)
    check_panels(len(runs), len(tests))
    for name, chosen, size in (("runs", runs, draws.shape[1]), ("tests", tests, draws.shape[3])):
        if not chosen or min(chosen) < 0 or max(chosen) >= size:
            raise ValueError(f"{name} {chosen} out of range for {size} {name}")
    if observed is not None and np.shape(observed) != draws.shape[1:]:
        raise ValueError(f"observed has shape {np.shape(observed)}, expected {draws.shape[1:]}")
    figure = Figure(figsize=(3.6 * len(runs) + 0.4, 2.6 * len(tests) + 0.6), layout="constrained")
    axes = figure.subplots(len(tests), len(runs), squeeze=False, sharex=True)
    steps = np.arange(draws.shape[2])
    for row, test in enumerate(tests):
        for column, run in enumerate(runs):
            axis = axes[row, column]
            _band(axis, steps, draws[:, run, :, test], COLOURS[0], "simulated (median, 50%/90%)")
            if point is not None:
                axis.plot(steps, np.asarray(point)[run, :, test], "--", color=COLOURS[1], linewidth=1.2,
                          label="point prediction")
            if observed is not None:
                axis.plot(steps, np.asarray(observed)[run, :, test], "o-", color="black", markersize=2,
                          linewidth=0.6, label="observed")
            name = test_ids[test] if test_ids is not None else f"test {test}"
            axis.set_title(f"{name}, run {run}", fontsize=9)
            if column == 0:
                axis.set_ylabel("loss")
            if row == len(tests) - 1:
                step_axis(axis)
            axis.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8, frameon=False)
    if title:
        figure.suptitle(title, fontsize=11)
    return figure


def plot_comparison(comparison: Comparison, title: str | None = None) -> Figure:
    """Candidates' loss trajectories on one axis (top) and their paired difference to the
    reference over the steps they share (bottom), with 50%/90% bands."""
    figure = Figure(figsize=(7.5, 6.0), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    reference = comparison.trajectories[comparison.reference]
    better = comparison.prob_better("final")
    for k, (label, trajectory) in enumerate(zip(comparison.labels, comparison.trajectories)):
        colour = COLOURS[k % len(COLOURS)]
        _band(top, np.arange(trajectory.shape[1]), trajectory, colour, label)
        if k == comparison.reference:
            continue
        shared = min(trajectory.shape[1], reference.shape[1])
        chance = f": P(lower final loss) = {better[k]:.2f}" if comparison.has_uncertainty else ""
        if comparison.identical[k]:
            chance = ": the same curricula (difference 0)"
        _band(bottom, np.arange(shared), trajectory[:, :shared] - reference[:, :shared], colour,
              f"{label} - {comparison.labels[comparison.reference]}{chance}")
    bottom.axhline(0.0, color="black", linewidth=0.8)
    top.set_ylabel(f"{comparison.reduction} test loss")
    bottom.set_ylabel("difference")
    step_axis(bottom)
    for axis in (top, bottom):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, frameon=False)
    noise = f"{comparison.predictive} predictive" if comparison.has_uncertainty else "no uncertainty"
    top.set_title(title or f"{len(comparison.labels)} curricula, {comparison.n_draws} paired draws ({noise}); "
                  "median, 50% and 90% bands", fontsize=10)
    return figure


def plot_effects(effects: ExampleEffects, k: int = 10, by: str = "bound", title: str | None = None) -> Figure:
    """Forest plot of the ``k`` most helpful (top block) and ``k`` most harmful (bottom block)
    training examples: posterior mean (dot), 50% (thick) and 90% (thin) intervals; green where
    ``P(effect < 0) >= 0.5``, red otherwise; ``P(effect < 0)`` in the labels."""
    helpful = effects.ranking(True, by)[:k].tolist()
    harmful = [j for j in effects.ranking(False, by)[:k].tolist() if j not in helpful][::-1]
    rows = helpful + harmful
    outer, inner = effects.interval(0.9), effects.interval(0.5)
    figure = Figure(figsize=(7.0, 0.32 * len(rows) + 1.6), layout="constrained")
    axis = figure.subplots()
    positions = np.arange(len(rows))[::-1]
    for position, j in zip(positions, rows):
        colour = HELPFUL if effects.prob_helpful[j] >= 0.5 else HARMFUL
        axis.plot([outer[0][j], outer[1][j]], [position, position], color=colour, linewidth=1.0)
        axis.plot([inner[0][j], inner[1][j]], [position, position], color=colour, linewidth=3.5)
        axis.plot(effects.mean[j], position, "o", color="black", markersize=3.5)
    if helpful and harmful:
        axis.axhline(len(harmful) - 0.5, color="grey", linestyle="--", linewidth=0.8)
    axis.axvline(0.0, color="black", linewidth=0.8)
    axis.set_yticks(positions)
    axis.set_yticklabels([f"{effects.name(int(effects.examples[j]))}  P(<0)={effects.prob_helpful[j]:.2f}"
                          for j in rows], fontsize=8)
    axis.set_xlabel("effect on loss (negative = helpful); dot: mean, bars: 50% / 90%")
    axis.grid(axis="x", alpha=0.3)
    heading = title or (f"{effects.description}. Above the dashed line: top {k} helpful; below: top {k} "
                        f"harmful (ranked by {by})")
    axis.set_title("\n".join(textwrap.wrap(heading, 90)), fontsize=9)
    return figure


def plot_scores(results: dict[str, dict[str, float]], metrics: Sequence[str], title: str | None = None) -> Figure:
    """One horizontal bar chart per metric, one bar per method (missing metrics left blank).

    ``results[method]`` maps metric names to values, as :func:`~bayes_simfluence.evaluation.evaluate_methods`
    returns them; where it also holds ``METRIC_interval`` (``[low, high]``, the bootstrap
    interval over test examples) the bar gets that interval as a whisker, so overlapping
    intervals are visible at a glance. A metric whose positive values span more than two
    decades gets a log axis, so that one method far off does not flatten the others.
    """
    methods = list(results)
    figure = Figure(figsize=(3.2 * len(metrics), 0.32 * len(methods) + 1.5), layout="constrained")
    axes = figure.subplots(1, len(metrics), squeeze=False, sharey=True)[0]
    positions = np.arange(len(methods))[::-1]
    for axis, metric in zip(axes, metrics):
        values = np.array([results[m].get(metric, np.nan) for m in methods], dtype=float)
        finite = values[np.isfinite(values)]
        log = len(finite) > 1 and bool(np.all(finite > 0)) and finite.max() > 100 * finite.min()
        base = finite.min() / 2 if log else 0.0
        axis.barh(positions, np.where(np.isfinite(values), values - base, 0.0), left=base,
                  color=[COLOURS[i % len(COLOURS)] for i in range(len(methods))])
        intervals = np.array([results[m].get(f"{metric}_interval") or (np.nan, np.nan) for m in methods], dtype=float)
        shown = np.isfinite(values) & np.all(np.isfinite(intervals), axis=1)
        if shown.any():
            axis.errorbar(values[shown], positions[shown], fmt="none", ecolor="black", elinewidth=1, capsize=2,
                          xerr=np.maximum(np.stack([values[shown] - intervals[shown, 0],
                                                    intervals[shown, 1] - values[shown]]), 0.0))
        for position, value in zip(positions, values):
            axis.text(base, position, f" {value:.3g}" if np.isfinite(value) else " n/a", va="center", fontsize=7)
        if log:
            axis.set_xscale("log")
        axis.set_title(metric + (" (log scale)" if log else ""), fontsize=9)
        axis.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(positions)
    axes[0].set_yticklabels(methods, fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def save_figure(figure: Figure, path: str | Path, dpi: int = 150) -> None:
    """Write ``figure`` at exactly ``path`` (format from its extension), atomically."""
    path = Path(path)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=dpi, format=path.suffix.lstrip(".") or "png")
