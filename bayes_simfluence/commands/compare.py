"""``bayes-simfluence compare``: which curriculum gives the lower test loss, with what probability?"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bayes_simfluence import budget, validation
from bayes_simfluence.choices import DEFAULT_DRAWS, FIGURE_SUFFIXES, PREDICTIVE_HELP, PREDICTIVES, REDUCTIONS
from bayes_simfluence.commands._arguments import nonnegative_int, output_file, parse_indices, positive_int, seed
from bayes_simfluence.runs import Runs

if TYPE_CHECKING:
    from bayes_simfluence.compare import Comparison

#: the package modules :func:`run` imports (JAX and the like): the CLI loads them before it runs the command,
#: never to build the parser, so that ``--help`` stays quick
IMPORTS = ("bayes_simfluence.compare", "bayes_simfluence.counterfactuals", "bayes_simfluence.methods",
           "bayes_simfluence.plots")

EXAMPLES = """examples:
  # two curricula (runs-format files; FILE:K picks run K, FILE alone averages over its runs)
  bayes-simfluence compare --simulator posterior.nc --curricula heldout.npz:0 --curricula heldout.npz:1
  # a hand-written curriculum: a JSON list of batches, e.g. [[3, 17], [4, 5, 6], [8]]
  bayes-simfluence compare --simulator posterior.nc --curricula heldout.npz:0 --curricula mine.json \\
      --tests 0,2,5 --plot compare.png --json
  # one call each: leave examples out, repeat them, insert one at steps, re-order easy-to-hard
  bayes-simfluence compare --simulator posterior.nc --curricula heldout.npz:0 --leave-out 3,17
  bayes-simfluence compare --simulator posterior.nc --curricula heldout.npz:0 --repeat 3,17 --times 3
  bayes-simfluence compare --simulator posterior.nc --curricula heldout.npz:0 --insert 17 --at-steps 0,40,80
  bayes-simfluence compare --simulator posterior.nc --curricula heldout.npz:0 --reorder

Curricula: a runs-format .npz (its losses[first run, 0] are the initial losses unless
--initial-losses is given), a .json list of batches (or a list of such lists: several runs,
averaged), or a .npy int array [steps, batch] / [runs, steps, batch]; -1 marks an empty slot.
Differences are paired draw by draw and are 'candidate - reference' (negative: lower loss).
"""


def _split_spec(spec: str) -> tuple[str, str]:
    """``"FILE:0,2"`` -> ``("FILE", "0,2")``; ``"FILE"`` -> ``("FILE", "")``."""
    head, _, tail = spec.rpartition(":")
    return (head, tail) if head and tail.replace(",", "").isdigit() else (spec, "")


def spec_path(spec: str) -> Path:
    """The file of a ``FILE[:RUNS]`` argument."""
    return Path(_split_spec(spec)[0])


def read_curricula(spec: str) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Curricula named on the command line: ``PATH`` or ``PATH:RUNS`` (runs-format files only).

    Returns:
        ``(curricula [runs, steps, batch], initial_losses [tests] or None, label)``.
    """
    from bayes_simfluence.compare import as_curricula, pad_width

    path_text, runs_text = _split_spec(spec)
    path = Path(path_text)
    if not path.exists():
        raise ValueError(f"{path}: no such curricula file")
    label = path.stem + (f":{runs_text}" if runs_text else "")
    if path.suffix == ".npz":
        runs = Runs.load(path)
        if runs_text:
            wanted = parse_indices(runs_text)
            if max(wanted) >= runs.n_runs:
                raise ValueError(f"{spec}: run {max(wanted)} does not exist; {path} has runs 0..{runs.n_runs - 1}")
            runs = runs.select_runs(wanted)
        return runs.curricula, runs.losses[0, 0], label
    if runs_text:
        raise ValueError(f"{spec}: ':RUNS' selects runs of a runs-format .npz file only")
    if path.suffix == ".json":
        batches = validation.integer_lists(validation.read_json(path), str(path))
        if not isinstance(batches, list) or not batches or not all(isinstance(b, list) and b for b in batches):
            raise ValueError(f"{path}: expected a JSON list of batches (non-empty lists of training-example "
                             "indices), or a list of such lists (several runs)")
        depths = {_depth(batch) for batch in batches}
        if len(depths) > 1 or depths - {1, 2}:
            raise ValueError(f"{path}: expected a list of batches (lists of indices), or a list of runs (lists of "
                             f"batches); found items nested {sorted(depths)} deep")
        nested = depths == {2}
        if not nested:
            return as_curricula(batches, str(path)), None, label
        runs = [as_curricula(curriculum, str(path)) for curriculum in batches]
        if len({run.shape[1] for run in runs}) > 1:
            raise ValueError(f"{path}: the runs of one candidate must have the same number of steps")
        width = max(run.shape[2] for run in runs)
        return np.concatenate([pad_width(run, width) for run in runs]), None, label
    if path.suffix == ".npy":
        return as_curricula(budget.load_npy(path, "curricula"), str(path)), None, label
    raise ValueError(f"{path}: curricula must be a runs-format .npz, a .json list of batches or a .npy array")


def _depth(value: object, limit: int = 4) -> int:
    """How deeply lists nest in ``value`` (checked by :func:`validation.integer_lists`: lists and ints only),
    counted up to ``limit``; -1 where items of one list differ in depth."""
    if not isinstance(value, list):
        return 0
    if limit == 0:
        return 1
    depths = {_depth(item, limit - 1) for item in value} or {0}
    return 1 + depths.pop() if len(depths) == 1 and -1 not in depths else -1


def read_initial_losses(path: Path) -> np.ndarray:
    """``[tests]`` initial losses from a runs-format .npz (``losses[0, 0]``), a .json list or a .npy."""
    if not path.exists():
        raise ValueError(f"{path}: no such initial-losses file")
    if path.suffix == ".npz":
        return Runs.load(path).losses[0, 0]
    if path.suffix == ".json":
        values = validation.read_json(path)
    elif path.suffix == ".npy":
        values = budget.load_npy(path, "initial losses")
    else:
        raise ValueError(f"{path}: initial losses must be a runs-format .npz, a .json list or a .npy array")
    if (not isinstance(values, (list, np.ndarray)) or np.ndim(values) != 1 or len(values) == 0
            or (isinstance(values, list) and not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                     for v in values))):
        raise ValueError(f"{path}: initial losses must be a flat list of numbers, one per test example")
    return validation.finite_array(values, str(path))


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare", help="compare curricula: posterior of the loss difference and P(best)",
        description="Simulate candidate curricula with a fitted (Bayesian) simulator and compare their final "
                    "and mean test loss draw by draw.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--simulator", type=Path, required=True, help="file written by 'fit' (a posterior or a point fit)")
    parser.add_argument("--curricula", action="append", required=True, metavar="FILE[:RUNS]",
                        help="a candidate curriculum, repeatable (first = reference)")
    parser.add_argument("--label", action="append", default=[], help="name of each --curricula, repeatable")
    parser.add_argument("--initial-losses", type=Path, help="initial test losses (.npz runs file, .json or .npy)")
    parser.add_argument("--tests", type=parse_indices, help="test-example indices to compare on (default all)")
    parser.add_argument("--reduction", choices=REDUCTIONS, default="mean", help="over the test examples (default mean)")
    parser.add_argument("--draws", type=positive_int, default=DEFAULT_DRAWS,
                        help=f"posterior draws (default {DEFAULT_DRAWS})")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the draws (default 0)")
    parser.add_argument("--level", type=float, default=0.9, help="credibility of the intervals (default 0.9)")
    parser.add_argument("--predictive", choices=PREDICTIVES, default=None,
                        help=f"what the draws stand for; {PREDICTIVE_HELP}")
    shortcuts = parser.add_argument_group("counterfactual shortcuts (edit the first --curricula, a single run)")
    edits = shortcuts.add_mutually_exclusive_group()
    edits.add_argument("--leave-out", type=parse_indices, metavar="I,J",
                       help="leave these training examples out (the rest re-packed into full batches)")
    edits.add_argument("--repeat", type=parse_indices, metavar="I,J", help="show these examples --times times")
    edits.add_argument("--insert", type=nonnegative_int, metavar="I",
                       help="put this example into the batch of each of --at-steps: a free slot, or (a full batch) "
                            "in place of its last example, named in the label ('+17 for 5 at step 0')")
    edits.add_argument("--reorder", action="store_true", help="random vs easy-to-hard vs hard-to-easy orderings")
    shortcuts.add_argument("--keep-steps", action="store_true",
                           help="with --leave-out: keep every step and empty the removed slots instead of re-packing")
    shortcuts.add_argument("--times", type=positive_int, default=2, help="with --repeat (default 2)")
    shortcuts.add_argument("--at-steps", type=parse_indices, metavar="S,T", help="with --insert: 0-based steps")
    parser.add_argument("--plot", type=output_file, metavar="FILE.png", help="write the comparison figure")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")
    parser.set_defaults(func=run, imports=IMPORTS)


def _comparison(args: argparse.Namespace) -> Comparison:
    from bayes_simfluence import counterfactuals
    from bayes_simfluence.compare import compare
    from bayes_simfluence.methods import load_simulator

    simulator = load_simulator(args.simulator)
    read = [read_curricula(spec) for spec in args.curricula]
    initial = read_initial_losses(args.initial_losses) if args.initial_losses else next(
        (losses for _, losses, _ in read if losses is not None), None)
    if initial is None:
        raise ValueError("no initial losses: give --initial-losses, or at least one runs-format .npz curricula file")
    options = dict(tests=args.tests, reduction=args.reduction, n_draws=args.draws, seed=args.seed,
                   level=args.level, predictive=args.predictive)
    shortcut = args.leave_out or args.repeat or args.insert is not None or args.reorder
    if not shortcut:
        if len(read) < 2:
            raise ValueError("give two or more --curricula, or one with a shortcut (--leave-out, --repeat, --insert, --reorder)")
        labels = args.label or [label for _, _, label in read]
        return compare(simulator, [curricula for curricula, _, _ in read], initial, labels=labels, **options)
    if len(read) != 1 or read[0][0].shape[0] != 1:
        raise ValueError("a shortcut edits one curriculum: give exactly one --curricula with one run (e.g. FILE.npz:0)")
    curriculum = read[0][0][0]
    if args.leave_out:
        return counterfactuals.compare_leave_out(simulator, curriculum, args.leave_out, initial,
                                                 repack=not args.keep_steps, **options)
    if args.repeat:
        return counterfactuals.compare_repeat(simulator, curriculum, args.repeat, initial, times=args.times, **options)
    if args.insert is not None:
        if not args.at_steps:
            raise ValueError("--insert needs --at-steps S,T")
        return counterfactuals.compare_insert(simulator, curriculum, args.insert, args.at_steps, initial, **options)
    return counterfactuals.compare_orderings(simulator, curriculum, initial, **options)


def run(args: argparse.Namespace) -> int:
    from bayes_simfluence.plots import plot_comparison, save_figure

    if not 0 < args.level < 1:
        raise ValueError(f"--level must be in (0, 1), got {args.level}")
    if args.plot:
        validation.output_path(args.plot, "--plot", FIGURE_SUFFIXES, "a figure",
                               inputs=[args.simulator, args.initial_losses, *map(spec_path, args.curricula)])
    comparison = _comparison(args)
    if args.json:
        print(validation.strict_json(comparison.to_dict(), indent=2))
    else:
        print(comparison.summary())
    if args.plot:
        save_figure(plot_comparison(comparison), args.plot)
        if not args.json:
            print(f"wrote {args.plot}")
    return 0
