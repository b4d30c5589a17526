"""``bayes-simfluence fit``: fit one simulator on runs and save it."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bayes_simfluence import validation
from bayes_simfluence.choices import METHODS
from bayes_simfluence.commands._arguments import add_method_options, options_dict, output_file, positive_int
from bayes_simfluence.runs import Runs

#: the package modules :func:`run` imports (JAX and the like): the CLI loads them before it runs the command,
#: never to build the parser, so that ``--help`` stays quick
IMPORTS = ("bayes_simfluence.bayes.blocks", "bayes_simfluence.bayes.guard", "bayes_simfluence.bayes.run_state",
           "bayes_simfluence.methods")

EXAMPLES = """examples:
  bayes-simfluence fit --train runs.npz --method linear --out linear.npz
  bayes-simfluence fit --train runs.npz --method linear -o ridge=0.5 --out linear.npz
  # the Bayesian simulator: bayes-grid where it is affordable (calibrated in SBC), else bayes-svi
  bayes-simfluence fit --train runs.npz --method bayes --out posterior.nc
  # bayes-grid has a shared run state wherever its guard runs (8+ runs); without it:
  bayes-simfluence fit --train runs.npz --method bayes -o run_state=false --out posterior.nc
  bayes-simfluence fit --train runs.npz --method bayes-svi --out posterior.nc
  # 1000 test examples in 10 blocks, one after another (memory of one block)
  bayes-simfluence fit --train runs.npz --method bayes-svi --test-blocks 10 --out posterior.nc
  # the same blocks as Ray tasks on a cluster, one GPU each (pip install 'bayes-simfluence[ray]')
  bayes-simfluence fit --train runs.npz -m bayes-svi --test-blocks 10 --ray auto --gpus-per-block 1 --out posterior.nc

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
                        help=f"one of {', '.join(METHODS)}")
    parser.add_argument("--out", type=output_file, required=True, help="where to save the fitted simulator")
    add_method_options(parser)
    blocks = parser.add_argument_group(
        "test blocks and Ray (Bayesian methods; test examples are independent in the model)")
    blocks.add_argument("--test-blocks", type=positive_int, default=1, metavar="K",
                        help="fit the test examples in K contiguous blocks and merge them into one posterior "
                             "(default 1: all at once)")
    blocks.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                        help="fit the blocks as Ray tasks: a local instance (no ADDRESS), 'auto', or ray://HOST:PORT; "
                             "equals the same --test-blocks fitted here")
    blocks.add_argument("--cpus-per-block", type=float, default=1.0, metavar="C", help="CPUs of each Ray task (default 1)")
    blocks.add_argument("--gpus-per-block", type=float, default=0.0, metavar="G",
                        help="GPUs of each Ray task, fractions allowed (default 0)")
    blocks.add_argument("--max-retries", type=int, default=3, metavar="N",
                        help="retries of a Ray task whose worker died (default 3)")
    parser.set_defaults(func=run, imports=IMPORTS)


def run(args: argparse.Namespace) -> int:
    from bayes_simfluence.bayes import guard, run_state
    from bayes_simfluence.bayes.blocks import RayFitOptions, fit_in_blocks
    from bayes_simfluence.methods import FitContext, fit_method

    bayesian = args.method.split("-")[0] == "bayes"
    validation.output_path(args.out, "--out", (".nc",) if bayesian else None, "a Bayesian posterior (NetCDF)",
                           inputs=[args.train])
    train = Runs.load(args.train)
    start = time.perf_counter()
    context = FitContext(args.train, args.seed, options_dict(args.option))
    if args.test_blocks > 1 or args.ray is not None:
        ray = None if args.ray is None else RayFitOptions(
            address=None if args.ray == "local" else args.ray, cpus_per_block=args.cpus_per_block,
            gpus_per_block=args.gpus_per_block, max_retries=args.max_retries)
        simulator = fit_in_blocks(args.method, train, context, args.test_blocks, ray)
    else:
        simulator = fit_method(args.method, train, context)
    seconds = time.perf_counter() - start
    simulator.save(args.out)
    info = getattr(simulator, "info", {})  # what a Bayesian fit chose and why; nothing for the others
    ridge = getattr(simulator, "ridge_selected", None)
    ridge_note = f", ridge {ridge:.4g}" if ridge is not None else ""
    path = getattr(simulator, "name", args.method)
    reason = info.get("chosen_by", "").removeprefix("bayes: ")
    path_note = f" (as {path}{': ' + reason if reason else ''})" if path != args.method else ""
    print(f"fitted '{args.method}'{path_note} on {train} in {seconds:.1f} s{ridge_note}; saved to {args.out}")
    unused = info.get("unused_options")
    if unused is not None:
        print(f"options not used: {unused}")
    state_report = info.get("run_state")
    if state_report is not None:
        print(run_state.describe(state_report))
    variant = info.get("variant_check") or ({"reason": info["variant_off"]} if "variant_off" in info else None)
    if variant is not None:
        print(f"variant: {variant.get('chosen', 'linear')} ({variant['reason']})")
    residual = info.get("residual_check") or ({"reason": info["residual_off"]} if "residual_off" in info else None)
    if residual is not None:
        print(f"residual effects: {'on' if residual.get('chosen', True) else 'off'} ({residual['reason']})")
    check = info.get("run_state_check", {})
    if check.get("kept"):
        print(f"run state: kept (the guard's held-out runs favour it: stacked all-steps MSE "
              f"{check['heldout_mse_with_state']:.4g} with it, {check['heldout_mse_without']:.4g} without, "
              f"over {check['runs']} runs)")
    state_off = info.get("run_state_off")
    if state_off is not None:
        print(f"run state: off ({state_off})")
    if bayesian and {"features", "features_off"} & set(info) or info.get("unseen_examples"):
        print(describe_features(info))
    guard_report = info.get("guard")
    if guard_report is not None:
        print(guard.describe(guard_report))
    for number, block in enumerate(info.get("blocks", [])):
        if "guard" in block:
            print(f"block {number + 1} ({block['tests']} test examples): {guard.describe(block['guard'])}")
    return 0


def describe_features(info: dict) -> str:
    """One line on the feature prior and the pool examples no fitted run used."""
    unseen = info.get("unseen_examples", 0)
    if "features" in info:
        counts = info["features"]
        line = (f"feature prior: {counts['per_example']} feature(s) per training example, {counts['per_pair']} per "
                "(training, test) pair")
        return line + (f"; {unseen} pool example(s) appear in no run: their effects come from the features"
                       if unseen else "")
    line = f"feature prior: off ({info['features_off']})" if "features_off" in info else "feature prior: off"
    return line + (f"; {unseen} pool example(s) appear in no run: their effects are the prior's (add features to "
                   "the runs to predict them)" if unseen else "")
