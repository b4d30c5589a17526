"""``bayes-simfluence simulate``: predict loss trajectories for curricula with a saved simulator."""

from __future__ import annotations

import argparse
from pathlib import Path

from bayes_simfluence import atomic, budget, run_kind, validation
from bayes_simfluence.commands._arguments import nonnegative_int, output_file, seed
from bayes_simfluence.runs import Runs

#: the package modules :func:`run` imports (JAX and the like): the CLI loads them before it runs the command,
#: never to build the parser, so that ``--help`` stays quick
IMPORTS = ("bayes_simfluence.methods", "bayes_simfluence.simulators")

EXAMPLES = """examples:
  bayes-simfluence simulate --simulator linear.npz --curricula new.npz --out predicted.npz

--curricula is a runs-format file: its 'curricula' are simulated from its losses[:, 0];
the rest of its 'losses' is ignored. The output is a runs-format file whose losses are the
predicted trajectories [runs, steps + 1, tests]. With a Bayesian simulator, --draws N also
writes 'draws' [N, runs, steps + 1, tests] into the output.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "simulate", help="simulate curricula with a saved simulator",
        description="Predict the loss trajectory of every test example under given curricula.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--simulator", type=Path, required=True, help="file written by 'fit'")
    parser.add_argument("--curricula", type=Path, required=True,
                        help="runs-format file whose curricula and initial losses are simulated")
    parser.add_argument("--out", type=output_file, required=True, help="output runs-format .npz")
    parser.add_argument("--draws", type=nonnegative_int, default=0,
                        help="Bayesian simulators: also save this many posterior predictive draws")
    parser.add_argument("--seed", type=seed, default=0, help="seed for the draws")
    parser.set_defaults(func=run, imports=IMPORTS)


def run(args: argparse.Namespace) -> int:
    from bayes_simfluence.methods import load_simulator
    from bayes_simfluence.simulators import ProbabilisticSimulator

    validation.output_path(args.out, "--out", inputs=[args.simulator, args.curricula])
    given = Runs.load(args.curricula)
    if args.draws:  # the trajectories alone, before reading the simulator (a posterior takes seconds)
        budget.check_draws(args.draws, given.n_runs, given.n_steps, given.n_tests, what="--draws")
    simulator = load_simulator(args.simulator)
    if args.draws and not isinstance(simulator, ProbabilisticSimulator):
        raise ValueError(f"--draws needs a Bayesian simulator; {args.simulator} is '{simulator.name}'")
    if args.draws:
        budget.check_simulation(simulator, args.draws, given.curricula, given.n_tests, "--draws")
    predicted = validation.checked_result(simulator.simulate(given.curricula, given.initial_losses),
                                          "the simulated trajectories", validation.MAX_ABS_LOSS)
    output = Runs.create(given.curricula, predicted, given.n_train, given.train_ids, given.test_ids,
                         {**given.meta, "simulated_by": str(args.simulator)})
    arrays = output.arrays()
    if args.draws:
        arrays["draws"] = validation.checked_result(
            simulator.simulate_draws(given.curricula, given.initial_losses, args.draws, seed=args.seed),
            "the simulated draws", validation.MAX_ABS_LOSS)
    atomic.savez(args.out, arrays)
    print(f"simulated {given.n_runs} curricula x {given.n_tests} test examples; wrote {args.out}")
    logged = getattr(simulator, "info", {}).get("logged_runs")
    unlike = {} if logged is None else {r: run_kind.unlike(logged, given.curricula[r]) for r in range(given.n_runs)}
    unlike = {r: words for r, words in unlike.items() if words}
    if unlike:
        first = min(unlike)
        print(f"note: {len(unlike)} of {given.n_runs} curricula are unlike the logged runs (run {first}: {unlike[first]}); "
              "they extrapolate the fit, and their draws' run-to-run misfit, measured on runs like the logged "
              "ones, can be too narrow (docs/results/runs_needed.md)")
    return 0
