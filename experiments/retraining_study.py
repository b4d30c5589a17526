"""Calibration against real retraining (issue 9): are the predictive intervals right about new runs?

One command (offline, 2 CPU cores; collecting takes 10-12 minutes per set the first time: 691 s
and 586 s measured with 2 workers on cores shared with other jobs; fitting and scoring about 4
minutes per set)::

    python experiments/retraining_study.py [--only NAME] [--collect-only] [--method bayes]
                                           [--fit-runs 40] [--heldout-runs 40] [-o key=value ...]

1. **Collect** (only where ``experiments/data/retrain_NAME.npz`` is missing) real runs of two
   sets on the embedded task under the random-subset protocol: every run trains on a random 80%
   of the pool (36 of 45 sentences, or 48 of 60), in a fresh random order each epoch; 20 test
   sentences; the same initial weights and dropout seed in every run.

   - ``retrain_mlp_sgd``: the small network (the pooler + head of MiniLM, a 384-384-2 tanh MLP
     on frozen features), plain SGD at 0.2, batch 4, 3 epochs (27 steps): ``mlp_sgd`` of
     ``real_sets.py`` on a 45-sentence pool instead of 48, so that 36 is 80% of it;
   - ``retrain_minilm``: the demo's collection (:func:`demo_config`: MiniLM's last block + head,
     SGD at 0.1, batch 8, 3 epochs, 18 steps) on a 60-sentence pool instead of 64 (48 is 80%).

   ``fit-runs + heldout-runs`` runs (default 40 + 40; runs a set's file lacks are collected and
   appended: run ``r``'s curriculum is seeded by ``r``, so they are the runs one longer collection
   gives); the collection seconds go to ``experiments/data/retrain_collection_seconds.json``.
   Other run counts than 40 + 40 are results of their own (``NAME_fitF_heldoutH``), and so are
   other methods and fit options (``NAME_run_state-True`` for ``-o run_state=true``).
2. **Fit** the method (default ``bayes``, the default Bayesian path, which runs ``bayes-grid`` at
   these sizes; ``--method bayes-svi`` for the variational path) and ``linear`` (the ridge
   baseline) on the first ``fit-runs`` runs only.
3. **Score** on the next ``heldout-runs`` runs, which no fit saw, from paired predictive draws
   (one :meth:`simulate_draws` call for all held-out runs, 500 draws), for each predictive kind
   (``new-run``, ``noise``, ``parameters``): per-run mean final loss ``q_r`` and, over all pairs
   ``r < s``, the difference ``q_r - q_s``: coverage and width of its central 50%/90% intervals,
   ``P(better) = P(q_r - q_s < 0)`` with its Brier score and reliability diagram, ordering
   accuracy on pairs whose retrained gap exceeds 0.02, RMSE of the predicted mean difference
   (beside the sd of the retrained differences) and the correlation across held-out runs of the
   predicted and retrained ``q`` (all three
   from the mean of the parameter-only draws, which every predictive shares with less Monte Carlo
   noise);
   coverage of ``q_r``'s intervals; coverage of the pointwise 50%/90% bands (every held-out run,
   step >= 1 and test example); and LDS (per test example, Spearman across held-out runs of the
   posterior-mean vs retrained final loss) for the method and for ``linear``.
4. **Write** ``experiments/results/retraining_study.{json,md}`` and one reliability diagram per
   set, ``experiments/results/reliability_NAME.png``. With ``--only`` the other sets' results
   already in the json are kept.

Issue 9's targets (measured, not tuned for): 90% intervals of pairwise differences cover 85-95%,
50% ones 40-60%, Brier <= 0.15, reliability within 0.1 of the diagonal, ordering accuracy >= 0.8,
90% bands cover 85-95%.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bayes_simfluence.metrics import coverage as band_coverage
from bayes_simfluence.metrics import lds_difference_interval, spearman_runs
from bayes_simfluence.runs import Runs
from bayes_simfluence.validation import undefined_as_null

if TYPE_CHECKING:  # collecting needs the collect extra; reading the study's runs does not
    from bayes_simfluence.collect.collector import CollectConfig

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
RESULTS = HERE / "results"
SECONDS_FILE = DATA / "retrain_collection_seconds.json"
PREDICTIVES = ("new-run", "noise", "parameters")
LEVELS = (0.5, 0.9)
N_DRAWS = 500
#: retrained gaps in mean final loss below this are too small to call an ordering right or wrong.
MIN_GAP = 0.02
RELIABILITY_BINS = 10
#: bins of the reliability diagram with fewer pairs than this are left out of its max deviation.
MIN_BIN_PAIRS = 10

#: per set: pool size, examples per run (80% of the pool) and the collection's other settings.
SETS: dict[str, dict] = {
    "retrain_mlp_sgd": dict(train_size=45, subset_size=36, batch_size=4, epochs=3, trainable="head",
                            optimizer="sgd", lr=0.2),
    "retrain_minilm": dict(train_size=60, subset_size=48, batch_size=8, epochs=3, trainable="last:1",
                           optimizer="sgd", lr=0.1),
}
TEST_SIZE = 20
#: (fit runs, held-out runs) of the main rows; other counts are kept under their own names.
DEFAULT_RUNS = (40, 40)


def result_key(name: str, n_fit: int, n_heldout: int, method: str = "bayes", options: dict | None = None,
               window: int = 0) -> str:
    """Where a result of set ``name`` is kept: other run counts than :data:`DEFAULT_RUNS`, another
    method than ``bayes``, fit options and fit windows after the first get rows of their own (e.g.
    ``NAME_run_state-True``, ``NAME_fit40_heldout120_window2``)."""
    key = name if (n_fit, n_heldout) == DEFAULT_RUNS else f"{name}_fit{n_fit}_heldout{n_heldout}"
    if method != "bayes":
        key += f"_{method}"
    key += "".join(f"_{k}-{v}" for k, v in sorted((options or {}).items()) if k != "progress")
    return key + (f"_window{window}" if window else "")


def window_runs(window: int, n_fit: int, n_heldout: int) -> tuple[np.ndarray, np.ndarray]:
    """``(fit, held_out)`` run indices of fit window ``window``: runs ``[window * n_fit, (window + 1) * n_fit)``
    are fitted and every other run of the first ``n_fit + n_heldout`` is held out (window 0: the first
    ``n_fit`` runs, then the next ``n_heldout``)."""
    n_runs = n_fit + n_heldout
    if not (0 <= window and (window + 1) * n_fit <= n_runs):
        raise ValueError(f"--windows: window {window} of {n_fit} fit runs does not fit in {n_runs} runs "
                         f"(at most {n_runs // n_fit} windows)")
    fit = np.arange(window * n_fit, (window + 1) * n_fit)
    return fit, np.setdiff1d(np.arange(n_runs), fit)


# ------------------------------------------------------------------------------------ collection
def collection(name: str, n_runs: int) -> CollectConfig:
    """The :class:`CollectConfig` of set ``name`` with ``n_runs`` runs (no attribution scores)."""
    from bayes_simfluence.collect.embedded import demo_config
    from bayes_simfluence.collect.optim import OptimConfig

    spec = SETS[name]
    base = demo_config(runs=n_runs, train_size=spec["train_size"], test_size=TEST_SIZE,
                       subset_size=spec["subset_size"], batch_size=spec["batch_size"], epochs=spec["epochs"],
                       trainable=spec["trainable"], scores=())
    return dataclasses.replace(base, optim=OptimConfig(optimizer=spec["optimizer"], lr=spec["lr"]))


def load_or_collect(name: str, n_runs: int, workers: int) -> Runs:
    """The first ``n_runs`` runs of set ``name``, collecting (and timing) those its file lacks.

    Run ``r``'s curriculum is seeded by ``r`` alone and every run starts from the same weights and
    dropout seed, so runs collected later and appended are the runs one longer collection gives.
    """
    path = DATA / f"{name}.npz"
    have = Runs.load(path) if path.exists() else None
    if have is None or have.n_runs < n_runs:
        from bayes_simfluence.collect.collector import collect, configured_examples, default_curricula

        first = 0 if have is None else have.n_runs
        config = collection(name, n_runs)
        curricula = default_curricula(config, len(configured_examples(config)[0]))[first:]
        start = time.perf_counter()
        part = path.with_name(f"{name}.part.npz") if have is not None else path
        new = collect(dataclasses.replace(config, runs=n_runs - first), part, curricula, workers=workers, threads=1,
                      progress=False, overwrite=True)
        if have is not None:
            if not np.array_equal(new.initial_losses[0], have.initial_losses[0]):
                raise SystemExit(f"{part}: its runs start from other losses than {path}'s; not appended")
            meta = {**have.meta, "appended_runs": have.meta.get("appended_runs", []) + [[first, n_runs]]}
            Runs.create(np.concatenate([have.curricula, new.curricula]), np.concatenate([have.losses, new.losses]),
                        n_train=have.n_train, train_ids=have.train_ids, test_ids=have.test_ids, meta=meta,
                        source=str(path)).save(path)
            part.unlink()
        elapsed = time.perf_counter() - start
        seconds = json.loads(SECONDS_FILE.read_text()) if SECONDS_FILE.exists() else {}
        earlier = seconds.get(name, 0.0) if have is not None else 0.0  # the runs already in the file
        seconds[name] = round(earlier + elapsed, 1)
        SECONDS_FILE.write_text(json.dumps(seconds, indent=2) + "\n")
        print(f"{name}: collected runs {first}-{n_runs - 1} in {elapsed:.0f} s", flush=True)
    return Runs.load(path).select_runs(slice(0, n_runs))


# --------------------------------------------------------------------------------------- metrics
def pair_indices(n_runs: int) -> tuple[np.ndarray, np.ndarray]:
    """``(r, s)``, each ``[pairs]``: every pair of runs ``r < s``."""
    return np.triu_indices(n_runs, k=1)


def interval(draws: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Central ``level`` interval of ``draws [draws, n]``: ``(lower [n], upper [n])``."""
    lower, upper = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return lower, upper


def interval_coverage(draws: np.ndarray, observed: np.ndarray, level: float) -> float:
    """Fraction of ``observed [n]`` inside the central ``level`` interval of ``draws [draws, n]``."""
    lower, upper = interval(draws, level)
    return float(((observed >= lower) & (observed <= upper)).mean())


def interval_width(draws: np.ndarray, level: float) -> float:
    """Mean width of the central ``level`` intervals of ``draws [draws, n]``."""
    lower, upper = interval(draws, level)
    return float((upper - lower).mean())


def probability_below_zero(draws: np.ndarray) -> np.ndarray:
    """``[n]`` share of ``draws [draws, n]`` below zero, ties (exact zeros) counting one half."""
    return (draws < 0).mean(0) + 0.5 * (draws == 0).mean(0)


def brier(probability: np.ndarray, outcome: np.ndarray) -> float:
    """Brier score of forecasts ``probability [n]`` of the binary ``outcome [n]``; lower is better."""
    return float(((probability - outcome) ** 2).mean())


def reliability(probability: np.ndarray, outcome: np.ndarray, n_bins: int = RELIABILITY_BINS,
                min_count: int = MIN_BIN_PAIRS) -> dict:
    """Reliability diagram of forecasts ``probability [n]`` of ``outcome [n]`` in ``n_bins`` equal bins.

    Returns ``{"count", "predicted", "observed": [n_bins] each (NaN in empty bins), "max_deviation"}``:
    the largest ``|observed - predicted|`` over bins with at least ``min_count`` forecasts (NaN if none).
    """
    bins = np.minimum((probability * n_bins).astype(int), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        predicted = np.bincount(bins, weights=probability, minlength=n_bins) / count
        observed = np.bincount(bins, weights=outcome.astype(float), minlength=n_bins) / count
    deviation = np.abs(observed - predicted)[count >= min_count]
    return {"count": count.tolist(), "predicted": predicted.tolist(), "observed": observed.tolist(),
            "max_deviation": float(deviation.max()) if deviation.size else float("nan")}


def ordering_accuracy(predicted: np.ndarray, observed: np.ndarray, min_gap: float = MIN_GAP) -> tuple[float, int]:
    """Among pairs whose ``|observed [pairs]|`` exceeds ``min_gap``, the share where ``predicted [pairs]``
    has the observed sign (a predicted zero counts one half); ``(share, number of such pairs)``."""
    decided = np.abs(observed) > min_gap
    agree = np.sign(predicted[decided]) * np.sign(observed[decided])
    n_decided = int(decided.sum())
    share = float(((agree > 0) + 0.5 * (agree == 0)).mean()) if n_decided else float("nan")
    return share, n_decided


def rmse(predicted: np.ndarray, observed: np.ndarray) -> float:
    """Root mean squared error of ``predicted [n]`` against ``observed [n]``."""
    return float(np.sqrt(((predicted - observed) ** 2).mean()))


def calibrated_reference(diff_draws: np.ndarray, n_truths: int = 40) -> dict:
    """What Brier and the reliability max deviation come out as if the predictive were exactly right.

    Each of ``n_truths`` evenly spaced draws of ``diff_draws [draws, pairs]`` stands in turn for the
    retrained differences, scored against the other draws; returns the medians and, under
    ``"<name>_90"``, the central 90% range (a calibrated predictive scores inside it 9 times in 10). With pairs of a
    few dozen runs the pairs are far from independent, so even a perfect predictive has a
    reliability max deviation well above zero; this says how far.
    """
    briers, deviations = [], []
    for truth in np.linspace(0, len(diff_draws) - 1, n_truths).round().astype(int):
        rest = np.delete(diff_draws, truth, axis=0)
        outcome = (diff_draws[truth] < 0).astype(float)
        better = probability_below_zero(rest)
        briers.append(brier(better, outcome))
        deviations.append(reliability(better, outcome)["max_deviation"])
    return {"brier": float(np.median(briers)), "reliability_max_deviation": float(np.nanmedian(deviations)),
            "brier_90": np.quantile(briers, [0.05, 0.95]).tolist(),
            "reliability_max_deviation_90": np.nanquantile(deviations, [0.05, 0.95]).tolist()}


def run_quantity(losses: np.ndarray) -> np.ndarray:
    """Per-run mean final loss ``q``: ``losses [..., runs, steps + 1, tests]`` -> ``[..., runs]``."""
    return losses[..., -1, :].mean(-1)


def calibration_scores(draws: np.ndarray, observed: np.ndarray, mean_draws: np.ndarray | None = None) -> dict:
    """Every score of one predictive kind.

    Args:
        draws: ``[draws, runs, steps + 1, tests]`` paired predictive draws of the held-out runs.
        observed: ``[runs, steps + 1, tests]`` their retrained losses.
        mean_draws: draws with the same expectation and less Monte Carlo noise, for the predicted
            mean (ordering accuracy, RMSE): the parameter-only draws, since the per-step noise and
            the run discrepancy have mean 0 (500 new-run draws leave a Monte Carlo error of the
            mean difference near 0.007 on the MLP set, a third of the 0.02 gap the ordering is
            scored on); None: ``draws``.
    """
    q_draws, q_true = run_quantity(draws), run_quantity(observed)  # [draws, runs], [runs]
    r, s = pair_indices(len(q_true))
    diff_draws, diff_true = q_draws[:, r] - q_draws[:, s], q_true[r] - q_true[s]  # [draws, pairs], [pairs]
    q_mean = run_quantity(draws if mean_draws is None else mean_draws).mean(0)
    predicted = q_mean[r] - q_mean[s]
    better = probability_below_zero(diff_draws)
    outcome = (diff_true < 0).astype(float)
    accuracy, n_decided = ordering_accuracy(predicted, diff_true)
    scores = {"pairs": len(diff_true), "pairs_gap": n_decided, "ordering_accuracy": accuracy,
              "brier": brier(better, outcome), "reliability": reliability(better, outcome),
              "diff_rmse": rmse(predicted, diff_true), "diff_sd": float(diff_true.std()),
              "q_correlation": float(np.corrcoef(q_mean, q_true)[0, 1])}
    for level in LEVELS:
        percent = round(100 * level)
        scores[f"diff_coverage_{percent}"] = interval_coverage(diff_draws, diff_true, level)
        scores[f"diff_width_{percent}"] = interval_width(diff_draws, level)
        scores[f"q_coverage_{percent}"] = interval_coverage(q_draws, q_true, level)
        scores[f"q_width_{percent}"] = interval_width(q_draws, level)
        scores[f"band_coverage_{percent}"] = band_coverage(draws, observed, level)
    scores["reliability_max_deviation"] = scores["reliability"]["max_deviation"]
    scores["calibrated_reference"] = calibrated_reference(diff_draws)
    return scores


# ------------------------------------------------------------------------------------- the study
def predictive_draws(simulator, heldout: Runs, predictive: str) -> np.ndarray:
    """``[draws, runs, steps + 1, tests]`` paired draws of ``predictive`` for every held-out run at once."""
    return simulator.simulate_draws(heldout.curricula, heldout.initial_losses, n_draws=N_DRAWS, seed=0,
                                    predictive=predictive)


def study_set(name: str, runs: Runs, n_fit: int, n_heldout: int, method: str, options: dict,
              window: int = 0) -> dict:
    """Fit ``method`` and ``linear`` on fit window ``window`` (:func:`window_runs`; 0: the first
    ``n_fit`` runs), score the ``n_heldout`` held-out runs."""
    from bayes_simfluence.methods import FitContext, fit_method, options_for

    fit_runs, heldout_runs = window_runs(window, n_fit, n_heldout)
    train, heldout = runs.select_runs(fit_runs), runs.select_runs(heldout_runs)
    start = time.perf_counter()
    simulator = fit_method(method, train, options_for(method, FitContext(seed=0, options=options)))
    fit_seconds = time.perf_counter() - start
    linear = fit_method("linear", train, FitContext(seed=0))
    info = getattr(simulator, "info", {})
    predicted = simulator.simulate(heldout.curricula, heldout.initial_losses)
    predicted_linear = linear.simulate(heldout.curricula, heldout.initial_losses)
    lds, _ = spearman_runs(predicted, heldout.losses)
    lds_linear, _ = spearman_runs(predicted_linear, heldout.losses)
    result = {"fit_runs": n_fit, "heldout_runs": n_heldout, "window": window,
              "fit_run_range": [int(fit_runs[0]), int(fit_runs[-1]) + 1], "steps": runs.n_steps, "batch": runs.batch_size,
              "tests": runs.n_tests, "pool": runs.n_train, "method": method, "path": getattr(simulator, "name", method),
              "options": options,
              "fit_seconds": fit_seconds, "lds": lds, "lds_linear": lds_linear,
              "lds_minus_linear": list(lds_difference_interval(predicted, predicted_linear, heldout.losses)),
              "guard_weight": _guard_weight(simulator),
              "parameter_share": info.get("guard", {}).get("parameter_share"),
              "run_state": getattr(simulator, "state", None) is not None,
              "run_state_check": info.get("run_state_check"),
              "variant_check": info.get("variant_check"),
              "residual_check": info.get("residual_check") or info.get("residual_off"), "predictive": {}}
    expectation = predictive_draws(simulator, heldout, "parameters")  # every predictive's mean, least noisy
    for kind in PREDICTIVES:
        start = time.perf_counter()
        try:
            draws = predictive_draws(simulator, heldout, kind)
        except ValueError as error:  # a predictive this fit cannot give (e.g. new-run without the guard)
            result["predictive"][kind] = {"error": str(error)}
            continue
        scores = calibration_scores(draws, heldout.losses, mean_draws=expectation)
        scores["describe"] = simulator.describe_predictive(kind)
        scores["score_seconds"] = time.perf_counter() - start
        result["predictive"][kind] = scores
        print(f"{name} {kind}: diff coverage 50/90 {scores['diff_coverage_50']:.2f}/{scores['diff_coverage_90']:.2f}, "
              f"Brier {scores['brier']:.3f}, ordering {scores['ordering_accuracy']:.2f}, "
              f"bands 90 {scores['band_coverage_90']:.2f}", flush=True)
    return result


def _guard_weight(simulator) -> float | None:
    weight = getattr(simulator, "stacking_weight", None)
    return None if weight is None else float(np.mean(weight))


# ---------------------------------------------------------------------------------------- output
def plot_reliability(name: str, result: dict, path: Path) -> None:
    """Reliability diagram of ``P(better)``: one line per predictive kind, the diagonal dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bayes_simfluence.plots import save_figure

    figure, axis = plt.subplots(figsize=(4.8, 4.4))
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    for kind, scores in result["predictive"].items():
        if "reliability" not in scores:
            continue
        diagram = scores["reliability"]
        predicted, observed = np.array(diagram["predicted"]), np.array(diagram["observed"])
        count = np.array(diagram["count"])
        shown, sparse = count > 0, (count > 0) & (count < MIN_BIN_PAIRS)
        line, = axis.plot(predicted[shown], observed[shown], marker="o", markersize=4,
                          label=f"{kind} (Brier {scores['brier']:.3f})")
        axis.plot(predicted[sparse], observed[sparse], linestyle="none", marker="o", markersize=6,
                  markerfacecolor="white", color=line.get_color())
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_xlabel("predicted P(run r ends lower than run s)")
    axis.set_ylabel("observed frequency (retrained)")
    axis.set_title(f"{name}: {result['pairs']} pairs of {result['heldout_runs']} held-out runs\n"
                   f"(hollow: bins of fewer than {MIN_BIN_PAIRS} pairs)", fontsize=9)
    axis.legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    save_figure(figure, path, dpi=120)
    plt.close(figure)


def _run_range(result: dict) -> str:
    start, stop = result.get("fit_run_range", [0, result["fit_runs"]])  # results from before fit windows: the first runs
    return f"{start}-{stop - 1}"


#: the new-run scores summarised over fit windows: (column, key in the predictive's scores).
WINDOW_SCORES = (("diff cov 50", "diff_coverage_50"), ("diff cov 90", "diff_coverage_90"), ("Brier", "brier"),
                 ("reliability max dev", "reliability_max_deviation"), ("ordering acc", "ordering_accuracy"),
                 ("band cov 90", "band_coverage_90"), ("q corr", "q_correlation"))


def window_groups(results: dict) -> dict[str, list[dict]]:
    """Results of every key studied on two or more fit windows: ``{window-0 key: [result of window 0, 1, ...]}``
    (consecutive windows from 0)."""
    groups = {}
    for key, result in results["sets"].items():
        if result.get("window", 0):
            continue
        windows, k = [result], 1
        while f"{key}_window{k}" in results["sets"]:
            windows.append(results["sets"][f"{key}_window{k}"])
            k += 1
        if len(windows) > 1:
            groups[key] = windows
    return groups


def window_summary(results: dict) -> list[str]:
    """Markdown: per key studied on several fit windows, the new-run scores' mean and range over them."""
    groups = window_groups(results)
    if not groups:
        return []
    lines = ["## Over fit windows (new-run predictive)", "",
             "Every window fits its own runs and is scored on all the others (`--windows`): how much a score "
             "depends on which runs the fit saw. Mean over windows, with the range in brackets.", "",
             "| rows | windows | " + " | ".join(column for column, _ in WINDOW_SCORES) + " | LDS (linear) |",
             "|---|---|" + "---|" * (len(WINDOW_SCORES) + 1)]
    for key, windows in groups.items():
        scores = [w["predictive"]["new-run"] for w in windows]
        cells = []
        for _, name in WINDOW_SCORES + (("", "lds"),):
            values = np.array([(w if name == "lds" else s)[name] for w, s in zip(windows, scores)], dtype=float)
            cells.append(f"{_number(values.mean())} ({_number(values.min())}-{_number(values.max())})")
        linear = np.mean([w["lds_linear"] for w in windows])
        cells[-1] += f" ({_number(linear)})"
        lines.append(f"| `{key}` | {len(windows)} | " + " | ".join(cells) + " |")
    return lines + [""]


def _number(value: float | None, digits: str = ".3f") -> str:
    return "" if value is None or value != value else format(value, digits)


def markdown(results: dict) -> str:
    """The results file: command, protocol, and one table row per set and predictive kind."""
    lines = ["# Calibration against real retraining (issue 9)", "",
             "Produced by `experiments/retraining_study.py` (its docstring has the full protocol). Random-subset "
             "protocol: every run trains on a random 80% of the pool in a fresh random order; the method and the "
             "`linear` baseline are fitted on the first runs only and scored on the held-out runs that follow, "
             "which no fit saw: pairwise differences of the per-run mean final test loss `q_r` over all held-out "
             "pairs, from one call of paired predictive draws (500 draws).", "",
             "Targets (issue 9): diff coverage 90% in 85-95%, 50% in 40-60%, Brier <= 0.15, reliability max "
             f"deviation <= 0.1 (bins with >= {MIN_BIN_PAIRS} pairs), ordering accuracy >= 0.8 (pairs with "
             f"retrained |gap| > {MIN_GAP}), band coverage 90% in 85-95%. In brackets beside Brier and the "
             "reliability deviation: their medians and central 90% ranges if the predictive were exactly right (one "
             "draw standing in for the retrained runs, 40 times); the pairs share runs, so a perfect predictive "
             "does not reach 0 deviation either.", ""]
    for name, result in results["sets"].items():
        lines += [f"## {name}", "",
                  f"Command: `{result['command']}`" + (f" ({result['note']})" if result.get("note") else ""), "",
                  f"{result['fit_runs']} runs fitted (runs {_run_range(result)}), the other {result['heldout_runs']} "
                  f"held out "
                  f"({result['pairs']} pairs, {result['pairs_gap']} with |gap| > {MIN_GAP}); pool {result['pool']}, "
                  f"{result['steps']} steps of batch {result['batch']}, {result['tests']} test examples. "
                  f"Method `{result['method']}`"
                  + (f" (which ran `{result['path']}`)" if result.get("path", result["method"]) != result["method"] else "")
                  + f" options {json.dumps(result['options'])}, fit "
                  f"{result['fit_seconds']:.1f} s, guard weight {_number(result['guard_weight'], '.2f')}; "
                  f"collection {_number(result['collection_seconds'], '.0f')} s for all runs. "
                  f"LDS {result['method']} {_number(result['lds'])}, linear {_number(result['lds_linear'])}.", "",
                  "| predictive | diff cov 50 | diff cov 90 | diff width 90 | diff RMSE (retrained sd) | q corr "
                  "| Brier (if calibrated) | reliability max dev (if calibrated) | ordering acc | q cov 50 | q cov 90 "
                  "| band cov 50 | band cov 90 | LDS (method / linear) | score s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for kind, scores in result["predictive"].items():
            if "error" in scores:
                lines.append(f"| {kind} | unavailable: {scores['error']} |" + " |" * 13)
                continue
            reference = scores["calibrated_reference"]
            cells = [_number(scores[key]) for key in ("diff_coverage_50", "diff_coverage_90", "diff_width_90")]
            cells += [f"{_number(scores['diff_rmse'])} ({_number(scores['diff_sd'])})", _number(scores["q_correlation"])]
            cells += [f"{_number(scores[key])} ({_number(reference[key])}; "
                      f"{_number(reference[key + '_90'][0], '.2f')}-{_number(reference[key + '_90'][1], '.2f')})"
                      for key in ("brier", "reliability_max_deviation")]
            cells += [_number(scores[key]) for key in ("ordering_accuracy", "q_coverage_50", "q_coverage_90",
                                                      "band_coverage_50", "band_coverage_90")]
            lines.append(f"| {kind} | " + " | ".join(cells)
                         + f" | {_number(result['lds'])} / {_number(result['lds_linear'])} "
                         f"| {scores['score_seconds']:.1f} |")
        lines += ["", f"![reliability](reliability_{name}.png)", ""]
    lines += window_summary(results)
    lines += [f"Library version: `{results['library_version']}`.", ""]
    return "\n".join(lines)


def _library_version() -> str:
    """The commit the package's source is at, and its files with uncommitted changes, if any."""
    def git(*arguments: str) -> str:
        return subprocess.run(["git", *arguments], cwd=HERE, capture_output=True, text=True).stdout

    commit = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    changed = [line[3:] for line in git("status", "--porcelain", "--", "../bayes_simfluence").splitlines()]
    return f"{commit} with uncommitted changes to {', '.join(changed)}" if changed else commit


def _parse_option(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        return key.strip(), json.loads(raw)
    except json.JSONDecodeError:
        return key.strip(), raw


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(SETS), action="append", help="only this set (repeatable)")
    parser.add_argument("--collect-only", action="store_true", help="collect missing sets, fit nothing")
    parser.add_argument("--method", default="bayes", help="the probabilistic method to study (default: bayes, the "
                        "default Bayesian path: bayes-grid at these sizes)")
    parser.add_argument("--fit-runs", type=int, default=DEFAULT_RUNS[0], help="runs the fits see (the first ones)")
    parser.add_argument("--heldout-runs", type=int, default=DEFAULT_RUNS[1],
                        help="runs scored (the next ones; runs the set's file lacks are collected and appended)")
    parser.add_argument("--windows", type=int, default=1,
                        help="fit windows to study: window K fits runs [K*fit_runs, (K+1)*fit_runs) and holds out every "
                        "other of the first fit_runs + heldout_runs runs (default 1: the first window only); the "
                        "results file summarises the new-run scores over the windows")
    parser.add_argument("--workers", type=int, default=2, help="collection processes")
    parser.add_argument("-o", "--option", type=_parse_option, action="append", default=[], metavar="KEY=VALUE",
                        help="option of the method's fit")
    args = parser.parse_args(argv)
    names = args.only or list(SETS)
    n_runs = args.fit_runs + args.heldout_runs
    if not 1 <= args.windows <= n_runs // args.fit_runs:
        parser.error(f"--windows must be 1-{n_runs // args.fit_runs} with {args.fit_runs} fit runs of {n_runs} "
                     f"(got {args.windows})")
    command = shlex.join(["python", "experiments/retraining_study.py", *(sys.argv[1:] if argv is None else argv)])
    runs = {name: load_or_collect(name, n_runs, args.workers) for name in names}
    if args.collect_only:
        return
    warnings.simplefilter("ignore")
    options = {"progress": False, **dict(args.option)}
    json_path = RESULTS / "retraining_study.json"
    results = json.loads(json_path.read_text()) if json_path.exists() else {"sets": {}}
    seconds = json.loads(SECONDS_FILE.read_text()) if SECONDS_FILE.exists() else {}
    for name in names:
        for window in range(args.windows):
            result = study_set(name, runs[name], args.fit_runs, args.heldout_runs, args.method, options, window)
            first = next(s for s in result["predictive"].values() if "pairs" in s)
            result.update(command=command, pairs=first["pairs"], pairs_gap=first["pairs_gap"],
                          collection_seconds=seconds.get(name))
            key = result_key(name, args.fit_runs, args.heldout_runs, args.method, dict(args.option), window)
            results["sets"][key] = result
            plot_reliability(key, result, RESULTS / f"reliability_{key}.png")
            # written after every window: an interrupted study keeps what it finished
            results["library_version"] = _library_version()
            results = undefined_as_null(results)
            json_path.write_text(json.dumps(results, indent=2) + "\n")
            (RESULTS / "retraining_study.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
