"""``bayes-simfluence split``: one runs file into training runs and held-out runs (two files)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bayes_simfluence import validation
from bayes_simfluence.commands._arguments import output_file, positive_int
from bayes_simfluence.runs import Runs

EXAMPLES = """examples:
  # the demo's 24 runs: fit on the first 20, score and compare on the last 4
  bayes-simfluence split demo_output/runs.npz --heldout-runs 4 --train train.npz --heldout heldout.npz
  bayes-simfluence fit --train train.npz -m linear --out linear.npz
  bayes-simfluence evaluate --train train.npz --heldout heldout.npz -m mean -m linear
  bayes-simfluence compare --simulator linear.npz --curricula heldout.npz:0 --curricula heldout.npz:1

The last N runs go to --heldout, the others to --train, each in its order and with the runs
file's training pool, test examples, ids and metadata: the split that 'evaluate --runs RUNS
--heldout-runs N' makes in memory. Runs that 'collect' or 'demo' logged each trained on its own
random curriculum, so the last N are as good a held-out set as any. TracIn and influence scores
stay in RUNS.scores.npz: give them to those methods with -o scores=RUNS.scores.npz.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "split", help="split a runs file into training runs and held-out runs",
        description="Write the last --heldout-runs runs of RUNS to --heldout and the other runs to --train,\n"
                    "so that a simulator is fitted on some runs and checked on runs it never saw.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", type=Path, metavar="RUNS", help="runs-format file to split (.npz)")
    parser.add_argument("--heldout-runs", type=positive_int, required=True, metavar="N",
                        help="how many of the last runs to hold out (at least one run stays for training)")
    parser.add_argument("--train", type=output_file, required=True, metavar="TRAIN.npz",
                        help="where to write the first runs (runs format)")
    parser.add_argument("--heldout", type=output_file, required=True, metavar="HELDOUT.npz",
                        help="where to write the last N runs (runs format)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for flag, path in (("--train", args.train), ("--heldout", args.heldout)):
        validation.output_path(path, flag, inputs=[args.runs])
    if validation.same_file(validation.write_target(args.train), args.heldout):
        raise ValueError(f"--train {args.train} and --heldout {args.heldout}: name the same file; give two paths")
    runs = Runs.load(args.runs)
    if runs.n_runs < 2:
        raise ValueError(f"{args.runs}: has a single run; a split needs two or more")
    if args.heldout_runs >= runs.n_runs:
        raise ValueError(f"--heldout-runs {args.heldout_runs}: {args.runs} has {runs.n_runs} runs; hold out 1 to "
                         f"{runs.n_runs - 1} of them, so that at least one run is left for training")
    train, heldout = runs.split(args.heldout_runs)
    train.save(args.train)
    heldout.save(args.heldout)
    print(f"wrote {args.train} ({train.n_runs} runs) and {args.heldout} ({heldout.n_runs} held-out runs) "
          f"from {args.runs}: {runs}")
    return 0
