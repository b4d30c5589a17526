"""``bayes-simfluence evaluate``: fit methods on training runs, score them on held-out runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from bayes_simfluence import validation
from bayes_simfluence.choices import DEFAULT_EVAL_DRAWS, FIGURE_SUFFIXES, METHODS
from bayes_simfluence.commands._arguments import add_method_options, options_dict, output_file, positive_int
from bayes_simfluence.runs import Runs
from bayes_simfluence.validation import strict_json, undefined_as_null

#: the package modules :func:`run` imports (JAX and the like): the CLI loads them before it runs the command,
#: never to build the parser, so that ``--help`` stays quick
IMPORTS = ("bayes_simfluence.evaluation", "bayes_simfluence.methods", "bayes_simfluence.plots")

EXAMPLES = """examples:
  # two files: fit on train.npz, score on heldout.npz
  bayes-simfluence evaluate --train train.npz --heldout heldout.npz -m mean -m linear
  # one file: hold out its last 5 runs, print JSON
  bayes-simfluence evaluate --runs runs.npz --heldout-runs 5 -m mean -m additive -m linear --json
  # the metrics as bars with their 90% intervals
  bayes-simfluence evaluate --runs runs.npz --heldout-runs 8 -m mean -m linear -m tracin --plot scores.png

Metrics (steps 1..T of every held-out run, simulated from its observed initial loss):
  all_steps_mse   mean squared error over all steps, runs and test examples
  final_step_mse  the same at the last step
  spearman        rank correlation of final losses pooled over (run, test) pairs; mostly
                  says which test examples are hard: the curriculum-blind 'mean' scores high
  spearman_runs   per test example, rank correlation across runs of the final loss, averaged:
                  does the simulator rank curricula right? (NaN where a prediction is constant)
  lds             the linear datamodeling score (TRAK; dattri, kronfluence): spearman_runs,
                  reported under this name when the held-out runs each trained on a random
                  subset of the pool (collected with --protocol subsets, or --random-subsets)
  spearman_mean_loss  rank correlation across runs of the final loss averaged over test examples:
                  the quantity 'compare' decides on. Per-example ranks can be right while the
                  mean's are not, where examples' changes cancel in the mean (its interval
                  resamples runs)
  METRIC_interval 90% percentile-bootstrap interval over test examples (JSON; --intervals
                  prints them): overlapping intervals mean the difference may not be real
  coverage_50/90, crps   Bayesian methods only: calibration of the predictive bands
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="score simulators on held-out runs",
        description="Fit each --method on training runs and score its simulated trajectories on held-out runs.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--train", type=Path, help="training runs (.npz, runs format)")
    parser.add_argument("--heldout", type=Path, help="held-out runs (.npz) with the same pool and test examples")
    parser.add_argument("--runs", type=Path, help="one runs file to split instead of --train/--heldout")
    parser.add_argument("--heldout-runs", type=positive_int, metavar="K", help="with --runs: hold out the last K runs")
    parser.add_argument("--method", "-m", action="append", required=True, metavar="NAME",
                        help=f"method to evaluate, repeatable; one of {', '.join(METHODS)}")
    parser.add_argument("--draws", type=positive_int, default=DEFAULT_EVAL_DRAWS,
                        help=f"predictive draws for coverage/CRPS of Bayesian methods (default {DEFAULT_EVAL_DRAWS})")
    parser.add_argument("--json", action="store_true", help="print one JSON object {method: {metric: value}}")
    parser.add_argument("--intervals", action="store_true",
                        help="print 90%% bootstrap intervals over test examples beside each metric (JSON always has "
                             "them as METRIC_interval)")
    parser.add_argument("--plot", type=output_file, metavar="FILE.png",
                        help="write a figure of the main metrics per method, with their 90%% intervals as whiskers")
    parser.add_argument("--random-subsets", action="store_true",
                        help="declare that the held-out runs each trained on a random subset of the pool, so that "
                             "Spearman across runs is reported as LDS (collected runs record this themselves)")
    add_method_options(parser)
    parser.set_defaults(func=run, imports=IMPORTS)


def load_train_heldout(args: argparse.Namespace) -> tuple[Runs, Runs, Path | None]:
    """The training and held-out runs named by ``--train/--heldout`` or ``--runs/--heldout-runs``."""
    if args.runs is not None:
        if args.train is not None or args.heldout is not None:
            raise ValueError("give either --runs with --heldout-runs, or --train with --heldout, not both")
        if args.heldout_runs is None:
            raise ValueError("--runs needs --heldout-runs K (how many of the last runs to hold out)")
        train, heldout = Runs.load(args.runs).split(args.heldout_runs)
        return train, heldout, args.runs
    if args.train is None or args.heldout is None:
        raise ValueError("give --train and --heldout, or --runs with --heldout-runs")
    return Runs.load(args.train), Runs.load(args.heldout), args.train


#: metrics the ``--plot`` figure shows, in this order, where any method has them.
PLOTTED = ("all_steps_mse", "final_step_mse", "lds", "spearman_runs", "spearman_mean_loss", "crps")


def run(args: argparse.Namespace) -> int:
    from bayes_simfluence.evaluation import evaluate_methods, format_table
    from bayes_simfluence.methods import FitContext
    from bayes_simfluence.plots import plot_scores, save_figure

    if args.plot is not None:
        validation.output_path(args.plot, "--plot", FIGURE_SUFFIXES, "a figure",
                               inputs=[args.train, args.heldout, args.runs])
    train, heldout, train_path = load_train_heldout(args)
    context = FitContext(train_path=train_path, seed=args.seed, options=options_dict(args.option))
    results = evaluate_methods(args.method, train, heldout, context, n_draws=args.draws,
                               random_subsets=True if args.random_subsets else None)
    if args.json:
        print(strict_json(undefined_as_null(results), indent=2))
    else:
        print(f"train: {train}\nheld-out: {heldout}\n")
        print(format_table(results, intervals=args.intervals))
    if args.plot is not None:
        present = [m for m in PLOTTED if any(m in scores for scores in results.values())]
        if "lds" in present:
            present.remove("spearman_runs")  # the same numbers under the field's name
        save_figure(plot_scores(results, present, title=f"held-out runs: {heldout.n_runs}; bars: 90% bootstrap "
                                                         "intervals over test examples (spearman_mean_loss: over "
                                                         "runs)"), args.plot)
    return 0
