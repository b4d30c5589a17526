"""``bayes-simfluence plot``: trajectory bands on logged runs, and per-example attributions."""

from __future__ import annotations

import argparse
from pathlib import Path

from bayes_simfluence import budget, validation
from bayes_simfluence.choices import (DEFAULT_DRAWS, FIGURE_SUFFIXES, PREDICTIVE_HELP, PREDICTIVES, RANKINGS,
                                      REFERENCES)
from bayes_simfluence.commands._arguments import output_file, parse_indices, positive_int, seed
from bayes_simfluence.commands.compare import read_curricula, spec_path
from bayes_simfluence.runs import Runs

#: the package modules :func:`run` imports (JAX and the like): the CLI loads them before it runs the command,
#: never to build the parser, so that ``--help`` stays quick
IMPORTS = ("bayes_simfluence.attributions", "bayes_simfluence.compare", "bayes_simfluence.methods",
           "bayes_simfluence.plots")

EXAMPLES = """examples:
  # observed vs simulated (median, 50% and 90% predictive bands) for 2 runs x 3 test examples
  bayes-simfluence plot trajectories --simulator posterior.nc --runs heldout.npz --run 0,1 --test 0,1,2 \\
      --plot trajectories.png
  # which training examples lowered test example 4's final loss under run 0's curriculum?
  bayes-simfluence plot attributions --simulator posterior.nc --curricula heldout.npz:0 --test 4 --plot attr.png
  # the posterior of the per-example parameters: one-step effect a * L0 + B (or --part additive)
  bayes-simfluence plot attributions --simulator posterior.nc --curricula heldout.npz:0 --test 4 --part one-step \\
      --plot attr.png --json

Attributions are ranked by the conservative end of the 90% interval (--by bound), by
P(effect < 0) (--by probability) or by the posterior mean alone (--by mean).
"""

REFERENCE_NOTE = """reference (--reference):
Every attribution is an effect against a reference. The default, the average example, is a
virtual example whose effects are the pool means: the final-loss effect fills each slot of the
example with it (same batches, same steps), the parameter parts are a - mean a, B - mean B.
Runs with full batches identify only batch sums plus the step component (a constant added to
every B and taken from the step component changes no run), so only effects against such a
reference are identified by the data. --reference leave-out empties the example's slots (raw
a, B for the parameter parts): with full batches that reads the common level of B the runs do
not identify (the prior's), and can call mostly harmful examples helpful with confidence; use it
only for runs whose batches really had empty slots.
"""

PARTS = ("final-loss", "one-step", "additive", "multiplicative")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plot", help="figures: trajectory bands, attributions",
        description="Write a figure (PNG, PDF or SVG by extension).",
        epilog=EXAMPLES + "\n" + REFERENCE_NOTE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    trajectories = kinds.add_parser("trajectories", help="observed vs simulated trajectories with bands")
    trajectories.add_argument("--runs", type=Path, required=True, help="runs-format file (e.g. held-out runs)")
    trajectories.add_argument("--run", type=parse_indices, default=[0],
                              help="runs to show (default 0); at most 100 panels, runs x test examples")
    trajectories.add_argument("--test", type=parse_indices, default=[0], help="test examples to show (default 0)")
    effects = kinds.add_parser("attributions", help="top helpful / harmful training examples with intervals",
                               description="Rank training examples by their effect on the test loss, with "
                                           "intervals, and write a figure.",
                               epilog=REFERENCE_NOTE, formatter_class=argparse.RawDescriptionHelpFormatter)
    effects.add_argument("--curricula", required=True, metavar="FILE[:RUN]",
                         help="one curriculum (and, for .npz, the initial losses)")
    effects.add_argument("--test", type=parse_indices, default=None,
                         help="test example(s); final-loss effects average over them (default all); "
                              "the other parts take one")
    effects.add_argument("--part", choices=PARTS, default="final-loss",
                         help="final-loss effect under the curriculum (default), one-step effect a*L0+B, or a or B")
    effects.add_argument("--top", type=positive_int, default=10, help="how many helpful and harmful examples (default 10)")
    effects.add_argument("--by", choices=RANKINGS, default="bound", help="ranking (default bound)")
    effects.add_argument("--reference", choices=REFERENCES, default=REFERENCES[0],
                         help="what each effect is measured against: 'average' (default), the average example "
                              "(the pool's mean effects in the example's slots; identified by full-batch runs), or "
                              "'leave-out' (slots emptied; with full batches it reads the unidentified level of B; "
                              "see the note below)")
    effects.add_argument("--json", action="store_true", help="print the ranked examples as JSON")
    for kind in (trajectories, effects):
        kind.add_argument("--simulator", type=Path, required=True, help="file written by 'fit'")
        kind.add_argument("--draws", type=positive_int, default=DEFAULT_DRAWS, help=f"posterior draws (default {DEFAULT_DRAWS})")
        kind.add_argument("--seed", type=seed, default=0, help="seed of the draws (default 0)")
        kind.add_argument("--plot", type=output_file, required=True, metavar="FILE.png", help="where to write the figure")
        kind.set_defaults(func=run, imports=IMPORTS)
    trajectories.add_argument("--predictive", choices=PREDICTIVES, default=None,
                              help=f"what the bands stand for; {PREDICTIVE_HELP}")


def _trajectories(args: argparse.Namespace):
    from bayes_simfluence.compare import simulate_draws_of
    from bayes_simfluence.methods import load_simulator
    from bayes_simfluence.plots import check_panels, plot_trajectories

    check_panels(len(args.run), len(args.test))
    simulator = load_simulator(args.simulator)
    runs = Runs.load(args.runs)
    for flag, wanted, size, what in (("--run", args.run, runs.n_runs, "runs"), ("--test", args.test, runs.n_tests,
                                                                                 "test examples")):
        if max(wanted) >= size:
            raise ValueError(f"{flag} {max(wanted)}: out of range; {args.runs} has {size} {what}")
    draws = validation.checked_result(simulate_draws_of(simulator, runs.curricula, runs.initial_losses, args.draws,
                                                        args.seed, predictive=args.predictive),
                                      f"simulating {args.runs}", validation.MAX_ABS_LOSS)
    return plot_trajectories(draws, runs.losses, args.run, args.test, test_ids=runs.test_ids,
                             title=f"{getattr(simulator, 'name', 'simulator')} on {args.runs.name}")


def _attributions(args: argparse.Namespace):
    from bayes_simfluence import attributions
    from bayes_simfluence.methods import load_simulator
    from bayes_simfluence.plots import plot_effects

    simulator = load_simulator(args.simulator)
    curricula, initial, _ = read_curricula(args.curricula)
    if curricula.shape[0] != 1:
        raise ValueError("attributions take one curriculum: pick a run with FILE.npz:K")
    if initial is None:
        raise ValueError("attributions need the initial losses: give the curriculum as a runs-format .npz")
    budget.check_simulation(simulator, args.draws, curricula, initial.shape[-1])
    if args.part == "final-loss":
        effects = attributions.final_loss_effects(simulator, curricula[0], initial, tests=args.test,
                                                  n_draws=args.draws, seed=args.seed, reference=args.reference)
    else:
        if not args.test or len(args.test) != 1:
            raise ValueError(f"--part {args.part} takes one --test")
        draws = attributions.effect_draws(simulator, args.draws, args.seed)
        test = args.test[0]
        if not 0 <= test < initial.shape[0]:
            raise ValueError(f"test example {test} out of range for {initial.shape[0]} test examples")
        effects = (attributions.one_step_effects(draws, test, float(initial[test]), reference=args.reference)
                   if args.part == "one-step"
                   else attributions.parameter_effects(draws, test, args.part, reference=args.reference))
    validation.checked_result(effects.draws, "the attributions' effect draws")
    print(validation.strict_json(effects.to_dict(args.top, args.by), indent=2) if args.json
          else effects.table(args.top, args.by))
    return plot_effects(effects, args.top, args.by)


def run(args: argparse.Namespace) -> int:
    from bayes_simfluence.plots import save_figure

    validation.output_path(args.plot, "--plot", FIGURE_SUFFIXES, "a figure",
                           inputs=[args.simulator, getattr(args, "runs", None),
                                   spec_path(args.curricula) if getattr(args, "curricula", None) else None])
    figure = _trajectories(args) if args.kind == "trajectories" else _attributions(args)
    save_figure(figure, args.plot)
    if not getattr(args, "json", False):
        print(f"wrote {args.plot}")
    return 0
