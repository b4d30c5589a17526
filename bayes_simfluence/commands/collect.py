"""``bayes-simfluence collect``: fine-tune a Hugging Face model under random curricula, log test losses."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np

from bayes_simfluence import budget, settings, validation
from bayes_simfluence.curricula import from_batches
from bayes_simfluence.commands._arguments import nonnegative_int, output_file, positive_int, require_collect_extra, seed

#: the package modules :func:`run` imports (JAX and the like): the CLI loads them before it runs the command,
#: never to build the parser, so that ``--help`` stays quick
#: (the collect layer, torch's, only after the check that the collect extra is installed)
IMPORTS = ("bayes_simfluence.score_files",)

EXAMPLES = """examples:
  # sentiment classifier, 32 runs on random orderings of the pool, 2 epochs of batch 8
  bayes-simfluence collect --model ./my-bert --train train.jsonl --test test.jsonl \\
      --text-field sentence --label-field label --runs 32 --epochs 2 --batch-size 8 --out runs.npz
  # GPTfluence protocol: each run trains on 128 of the 200 pool examples, 3 epochs of batch 4;
  # causal LM whose loss is the mean NLL of the target tokens; TracIn and influence scores too
  bayes-simfluence collect --model ./pythia-14m --task causal-lm --train pool.jsonl --test test.jsonl \\
      --prompt-field prompt --target-field completion --protocol subsets --subset-size 128 \\
      --batch-size 4 --epochs 3 --runs 32 --scores tracin --scores influence --workers 2 --out runs.npz
  # on a Ray cluster: 8 runs at a time, each on a quarter of a GPU (pip install 'bayes-simfluence[ray]')
  bayes-simfluence collect --model /shared/my-bert --train /shared/train.jsonl --test /shared/test.jsonl \
      --runs 64 --ray auto --workers 8 --gpus-per-run 0.25 --out runs.npz

  # later: training examples no run used (new.jsonl), scored like the pool on the reference run replayed;
  # writes runs+new.npz (pool, then the new examples) and runs+new.scores.npz
  bayes-simfluence collect ...the same arguments... --scores tracin --out runs.npz --features-for new.jsonl

Interrupted? Run the same command again: finished runs are kept in OUT.partial/ and only the
runs in progress are redone. --model must be a local directory or a model already in the local
Hugging Face cache (nothing is downloaded). Scores go to the companion OUT.scores.npz, which
'evaluate -m tracin -m influence' finds by itself.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "collect", help="log real fine-tuning runs of a Hugging Face model under random curricula",
        description=("Fine-tune a model many times from the same initial weights, each run on its own "
                     "random curriculum, and log every test example's loss before training and after every "
                     "step. Writes a runs file (and optionally TracIn / influence / TRAK scores)."),
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("model and data")
    data.add_argument("--model", required=True, help="local model directory or cached model name")
    data.add_argument("--task", choices=("classification", "causal-lm"), default="classification",
                      help="classification (text/label) or causal-lm (prompt/target); default classification")
    data.add_argument("--train", required=True, type=Path, help="training pool: .json/.jsonl/.csv/.parquet or a saved dataset")
    data.add_argument("--test", required=True, type=Path, help="test examples whose losses are logged")
    data.add_argument("--text-field", default="text")
    data.add_argument("--label-field", default="label")
    data.add_argument("--prompt-field", default="prompt")
    data.add_argument("--target-field", default="target")
    data.add_argument("--id-field", help="field naming each example (default: row numbers)")
    data.add_argument("--train-size", type=positive_int, help="use only the first N training rows")
    data.add_argument("--test-size", type=positive_int, help="use only the first N test rows")
    data.add_argument("--max-length", type=positive_int, default=128, help="tokens per example (default 128)")
    runs = parser.add_argument_group("runs and curricula")
    runs.add_argument("--runs", type=positive_int, default=8, help="number of runs (default 8)")
    runs.add_argument("--protocol", choices=("orderings", "subsets"), default="orderings",
                      help="orderings: whole pool each epoch; subsets: --subset-size examples per run")
    runs.add_argument("--subset-size", type=positive_int)
    runs.add_argument("--batch-size", type=positive_int, default=8)
    runs.add_argument("--epochs", type=positive_int, default=1)
    runs.add_argument("--curricula", type=Path,
                      help="use these curricula instead of sampling: .npy int [runs, steps, batch] (-1 = empty) "
                           "or .json list of runs, each a list of batches")
    runs.add_argument("--eval-every", type=positive_int, default=1,
                      help="log test losses every K optimiser steps; one runs-file step is then K optimiser steps")
    runs.add_argument("--curriculum-seed", type=seed, default=0)
    runs.add_argument("--init-seed", type=seed, default=0, help="seed of a new classification head")
    runs.add_argument("--noise-seed", type=seed, default=0, help="torch seed of every run (dropout)")
    runs.add_argument("--vary-noise", action="store_true", help="give each run its own dropout seed")
    runs.add_argument("--no-dropout", action="store_true", help="switch dropout off")
    training = parser.add_argument_group("training")
    training.add_argument("--trainable", default="all",
                          help="parameters that train: all, head, last:N (last N blocks + head) or name prefixes")
    training.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    training.add_argument("--lr", type=float, default=0.05)
    training.add_argument("--schedule", choices=("constant", "linear", "cosine"), default="constant")
    training.add_argument("--warmup-steps", type=nonnegative_int, default=0)
    training.add_argument("--momentum", type=float, default=0.0)
    training.add_argument("--weight-decay", type=float, default=0.0)
    training.add_argument("--max-grad-norm", type=float)
    scores = parser.add_argument_group(
        "attribution scores",
        "influence-cg and trak are computed with dattri; tracin (exact gradient dot products) and influence "
        "(the exact damped Gauss-Newton solve) from this package's per-example gradients, shared when both "
        "are asked. Fitted as simulators they roll the scores out with a fitted scale.")
    scores.add_argument("--scores", action="append", choices=settings.SCORES, default=[],
                        help="compute these scores on the reference run's checkpoints (repeatable)")
    scores.add_argument("--score-params", default="last:1",
                        help="parameters whose gradients the scores use (default last:1 = last block + head)")
    scores.add_argument("--checkpoint-every", type=positive_int, help="optimiser steps between checkpoints (default: 4 checkpoints)")
    scores.add_argument("--reference-run", type=nonnegative_int, default=0)
    scores.add_argument("--damping", type=float, help="damping of influence and influence-cg (default 1 / sum of learning rates)")
    scores.add_argument("--features-for", type=Path, metavar="NEW",
                        help="after the collection: score the training examples of NEW (read like --train) with "
                             "the pool on the reference run, replayed; writes OUT+NEW.npz (the pool followed by "
                             "them, the same runs) and its scores, for 'features' and curricula with new data")
    output = parser.add_argument_group("output and execution")
    output.add_argument("--out", required=True, type=output_file, help="runs file to write (.npz)")
    output.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out (with --features-for: its OUT+NEW files)")
    output.add_argument("--workers", type=positive_int, default=1, help="parallel processes (default 1)")
    output.add_argument("--threads", type=positive_int, help="torch threads per process (default: cores / workers)")
    output.add_argument("--quiet", action="store_true", help="no progress bars")
    cluster = parser.add_argument_group(
        "Ray (optional extra 'ray')",
        "Train the runs as Ray actors (--workers of them at once, each loading the model once); results "
        "come back to this process, which writes OUT.partial/ and OUT as a local collection does, so the "
        "runs file is identical and kill-and-resume works. A dead actor is restarted and its run retried. "
        "On a multi-node cluster --model, --train and --test must exist on every node.")
    cluster.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                         help="use Ray: a local instance (no ADDRESS), 'auto', or ray://HOST:PORT")
    cluster.add_argument("--cpus-per-run", type=float, default=1.0, help="CPUs of each Ray actor (default 1)")
    cluster.add_argument("--gpus-per-run", type=float, default=0.0, help="GPUs of each Ray actor, e.g. 0.25 (default 0)")
    cluster.add_argument("--max-retries", type=nonnegative_int, default=3,
                         help="restarts of a dead actor and retries of its run (default 3)")
    parser.set_defaults(func=run, imports=IMPORTS)


def read_curricula(path: Path) -> np.ndarray:
    """``[runs, steps, batch]`` curricula from ``.npy`` or ``.json`` (ragged batches padded with -1)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such curricula file")
    if path.suffix == ".npy":
        curricula = budget.load_npy(path, "curricula")
        if curricula.ndim != 3 or not np.issubdtype(curricula.dtype, np.integer):
            raise ValueError(f"{path}: curricula must be an integer array [runs, steps, batch], "
                             f"got dtype {curricula.dtype} and shape {curricula.shape}")
        return curricula
    if path.suffix == ".json":
        listed = validation.integer_lists(validation.read_json(path), str(path))
        if not isinstance(listed, list) or not listed or not all(
                isinstance(run, list) and run and all(isinstance(batch, list) and batch for batch in run)
                for run in listed):
            raise ValueError(f"{path}: expected a JSON list of runs, each a list of batches (lists of "
                             "training-example indices), e.g. [[[0, 1], [2, 3]]] for one run of two steps")
        runs = [from_batches(batches) for batches in listed]
        width = max(run.shape[1] for run in runs)
        if len({run.shape[0] for run in runs}) != 1:
            raise ValueError(f"{path}: every run must have the same number of steps")
        return np.stack([np.pad(run, ((0, 0), (0, width - run.shape[1])), constant_values=-1) for run in runs])
    raise ValueError(f"{path}: curricula must be .npy or .json")


def config_from_args(args: argparse.Namespace):
    """The :class:`CollectConfig` described by the command line."""
    from bayes_simfluence.collect.collector import CollectConfig
    from bayes_simfluence.collect.optim import OptimConfig

    return CollectConfig(
        model=args.model, train=args.train, test=args.test, task=args.task, text_field=args.text_field,
        label_field=args.label_field, prompt_field=args.prompt_field, target_field=args.target_field,
        id_field=args.id_field, train_size=args.train_size, test_size=args.test_size, max_length=args.max_length,
        runs=args.runs, protocol=args.protocol, subset_size=args.subset_size, batch_size=args.batch_size,
        epochs=args.epochs, eval_every=args.eval_every, curriculum_seed=args.curriculum_seed,
        init_seed=args.init_seed, noise_seed=args.noise_seed, vary_noise=args.vary_noise,
        dropout=not args.no_dropout, trainable=args.trainable,
        optim=OptimConfig(optimizer=args.optimizer, lr=args.lr, schedule=args.schedule,
                          warmup_steps=args.warmup_steps, momentum=args.momentum,
                          weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm),
        scores=tuple(args.scores), score_params=args.score_params, checkpoint_every=args.checkpoint_every,
        reference_run=args.reference_run, damping=args.damping)


def run(args: argparse.Namespace) -> int:
    require_collect_extra("collect")
    validation.output_path(args.out, "--out", (".npz",), "a runs file", inputs=[args.train, args.test, args.curricula])
    from bayes_simfluence.collect.collector import collect
    from bayes_simfluence.score_files import scores_path_for

    config = config_from_args(args)
    curricula = None
    if args.curricula is not None:
        curricula = read_curricula(args.curricula)
        config = dataclasses.replace(config, runs=int(curricula.shape[0]))
    if args.features_for is not None:
        return _features_for(args, config, curricula)
    ray = None
    if args.ray is not None:
        from bayes_simfluence.collect.ray_runs import RayOptions

        ray = RayOptions(address=None if args.ray == "local" else args.ray, actors=args.workers,
                         cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run, max_retries=args.max_retries)
    runs = collect(config, args.out, curricula=curricula, workers=args.workers, threads=args.threads,
                   progress=not args.quiet, overwrite=args.overwrite, ray=ray)
    print(f"wrote {args.out}: {runs}")
    if config.scores:
        print(f"wrote {scores_path_for(args.out)}: {', '.join(config.scores)} scores")
    return 0


def _features_for(args: argparse.Namespace, config, curricula: np.ndarray | None) -> int:
    """``--features-for NEW``: score NEW's examples with the finished collection's pool."""
    from bayes_simfluence.collect.added_examples import added_path_for, collect_added
    from bayes_simfluence.score_files import scores_path_for

    if args.ray is not None:
        raise ValueError("--features-for replays one run in this process; leave out --ray")
    validation.output_path(added_path_for(args.out, args.features_for), "--features-for", (".npz",), "a runs file",
                           inputs=[args.out, args.features_for])
    runs, path = collect_added(config, args.out, args.features_for, curricula, threads=args.threads,
                               progress=not args.quiet, overwrite=args.overwrite)
    added = runs.meta["added_examples"]
    print(f"wrote {path}: {runs}; the {added['count']} added examples are training indices "
          f"{added['first_index']}..{runs.n_train - 1}, used by no run")
    print(f"wrote {scores_path_for(path)}: {', '.join(config.scores)} scores over the {runs.n_train} examples")
    return 0
