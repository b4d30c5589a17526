"""``bayes-simfluence features``: attach features of the training examples to a runs file."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bayes_simfluence import validation
from bayes_simfluence.commands._arguments import output_file
from bayes_simfluence.runs import Runs, RunsFormatError

EXAMPLES = """examples:
  # one-step TracIn scores at the first checkpoint as a per-pair feature, labels as a per-example one
  bayes-simfluence collect ... --scores tracin --out runs.npz          # writes runs.scores.npz too
  bayes-simfluence features runs.npz --scores runs.scores.npz --train-features labels.npy --out featured.npz
  bayes-simfluence fit --train featured.npz -m bayes-grid --out posterior.nc

The Bayesian backends bayes-grid and bayes-cg regress each test example's effects on these features
(-o features=auto, the default, wherever the runs carry them): examples that look alike borrow strength,
and an example no run used gets the regression's prediction with the residual's prior spread, so a
curriculum with new data can be simulated. The pool's examples no run used must be in the runs file's
training pool (n_train) with their features: 'collect ... --features-for NEW.jsonl' adds examples to a
collected pool with their scores. Features are standardised over the training examples by the fit;
constant columns do nothing.
"""

IMPORTS = ("bayes_simfluence.score_files",)
#: how a per-pair feature is taken from the scores' checkpoints
CHECKPOINTS = ("first", "mean")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "features", help="attach training-example features (labels, embeddings, one-step scores) to a runs file",
        description="Write RUNS with per-example features (--train-features, an .npy [n_train, k]) and per-pair\n"
                    "features (one-step scores from a 'collect --scores' file, one column per --method),\n"
                    "which the feature prior of bayes-grid and bayes-cg regresses the effects on.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", type=Path, metavar="RUNS", help="runs-format file (.npz)")
    parser.add_argument("--train-features", type=Path, metavar="FILE.npy",
                        help="float array [n_train, k], one row per training example in the runs' order")
    parser.add_argument("--scores", type=Path, metavar="SCORES.npz",
                        help="scores file written by 'collect --scores' (matched to the runs by example ids)")
    parser.add_argument("--method", action="append", metavar="NAME",
                        help="score method to take from --scores, repeatable (default: tracin)")
    parser.add_argument("--checkpoints", choices=CHECKPOINTS, default="first",
                        help="the scores at the first checkpoint (the initial model, default) or their mean "
                             "over checkpoints")
    parser.add_argument("--out", type=output_file, required=True, metavar="OUT.npz",
                        help="where to write the runs with their features")
    parser.set_defaults(func=run, imports=IMPORTS)


def pair_features_from_scores(runs: Runs, scores_path: Path, methods: list[str], checkpoints: str) -> np.ndarray:
    """``[tests, n_train, methods]`` one-step scores as per-pair features, aligned to the runs' ids."""
    from bayes_simfluence.score_files import load_scores

    columns = []
    for method in methods:
        scores = load_scores(scores_path, method).aligned(runs.train_ids, runs.test_ids).scores  # [c, tests, n_train]
        columns.append(scores[0] if checkpoints == "first" else scores.mean(0))
    return np.stack(columns, axis=-1).astype(np.float64)


def run(args: argparse.Namespace) -> int:
    validation.output_path(args.out, "--out", (".npz",), "a runs file", inputs=[args.runs])
    if args.train_features is None and args.scores is None:
        raise ValueError("give --train-features FILE.npy, --scores SCORES.npz or both: there are no features to attach")
    if args.method and args.scores is None:
        raise ValueError("--method: names a method of --scores, which is not given")
    runs = Runs.load(args.runs)
    train_features = None
    if args.train_features is not None:
        try:
            train_features = np.load(args.train_features, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise RunsFormatError(f"--train-features {args.train_features}: not a readable .npy array ({error})") \
                from error
    pair_features = None if args.scores is None else pair_features_from_scores(
        runs, args.scores, args.method or ["tracin"], args.checkpoints)
    featured = runs.with_features(train_features, pair_features)
    featured.save(args.out)
    print(f"wrote {args.out}: {featured} ({0 if train_features is None else train_features.shape[-1]} per-example, "
          f"{0 if pair_features is None else pair_features.shape[-1]} per-pair feature(s))")
    return 0
