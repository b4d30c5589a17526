"""``bayes-simfluence fit``: fit one simulator on runs and save it."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bayes_simfluence import validation
from bayes_simfluence.bayes import guard
from bayes_simfluence.commands._arguments import add_method_options
from bayes_simfluence.methods import FitContext, available_methods, fit_method
from bayes_simfluence.runs import Runs

EXAMPLES = """examples:
  bayes-simfluence fit --train runs.npz --method linear --out linear.npz
  bayes-simfluence fit --train runs.npz --method linear -o ridge=0.5 --out linear.npz
  bayes-simfluence fit --train runs.npz --method bayes-svi --out posterior.nc

The saved file is read back by 'simulate --simulator FILE' without refitting.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fit", help="fit a simulator on runs and save it",
        description="Fit one simulator on logged runs and save it for 'simulate'.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--train", type=Path, required=True, help="training runs (.npz, runs format)")
    parser.add_argument("--method", "-m", required=True, metavar="NAME",
                        help=f"one of {', '.join(available_methods())}")
    parser.add_argument("--out", type=Path, required=True, help="where to save the fitted simulator")
    add_method_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    bayesian = args.method.startswith("bayes-")
    validation.output_path(args.out, "--out", (".nc",) if bayesian else None, "a Bayesian posterior (NetCDF)")
    train = Runs.load(args.train)
    start = time.perf_counter()
    simulator = fit_method(args.method, train, FitContext(args.train, args.seed, dict(args.option)))
    seconds = time.perf_counter() - start
    simulator.save(args.out)
    ridge = getattr(simulator, "ridge_selected", None)
    ridge_note = f", ridge {ridge:.4g}" if ridge is not None else ""
    print(f"fitted '{args.method}' on {train} in {seconds:.1f} s{ridge_note}; saved to {args.out}")
    guard_report = getattr(simulator, "info", {}).get("guard")
    if guard_report is not None:
        print(guard.describe(guard_report))
    return 0
