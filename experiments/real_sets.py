"""Collect the project's own small real test sets: real fine-tuning runs under several optimisers.

One command (needs the ``collect`` extra; offline, about 14 minutes on 2 CPU cores)::

    python experiments/real_sets.py [--only NAME ...] [--workers 2]

writes ``experiments/data/NAME.npz`` (runs format; the last ``HELDOUT`` runs are the held-out
ones of every experiment) and ``NAME.scores.npz`` (TracIn, influence, influence-CG and TRAK scores) for each set:

- ``mlp_sgd``: a small network, the pooler + classification head of the embedded MiniLM (a
  384-384-2 tanh MLP on frozen pretrained features), plain SGD;
- ``mlp_momentum``: the same network, SGD with momentum 0.9;
- ``mlp_adam``: the same network, Adam;
- ``minilm_adamw``: the embedded MiniLM with its last block trainable, AdamW with a linear
  warm-up and decay (the usual transformer fine-tuning recipe). No ``influence-cg`` scores: on
  the block's 1.9M parameters one Hessian-vector product over the pool takes about 3 s on this
  CPU, and dattri's CG needs 21 per test example and checkpoint (about 100 minutes for the set;
  a first try with all test examples at once also ran out of 24 GiB).

Every set follows the random-subset protocol (each run trains on a random 75% of the pool, in a
fresh random order each epoch), so the held-out runs' final losses also give the linear
datamodeling score. The sets are small enough to commit (about 100 KiB each) and are re-made
identically by this script (seeded curricula, fixed initial weights and dropout seed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from bayes_simfluence.collect.collector import collect
from bayes_simfluence.collect.embedded import demo_config
from bayes_simfluence.collect.optim import OptimConfig
from bayes_simfluence.score_files import SCORE_METHODS

DATA = Path(__file__).resolve().parent / "data"
RUNS = 24
HELDOUT = 8
COMMON = dict(runs=RUNS, train_size=48, test_size=20, subset_size=36, scores=SCORE_METHODS)

SETS: dict[str, dict] = {
    "mlp_sgd": dict(batch_size=4, epochs=3, trainable="head", optim=OptimConfig(optimizer="sgd", lr=0.2)),
    "mlp_momentum": dict(batch_size=4, epochs=3, trainable="head",
                         optim=OptimConfig(optimizer="sgd", lr=0.02, momentum=0.9)),
    "mlp_adam": dict(batch_size=4, epochs=3, trainable="head", optim=OptimConfig(optimizer="adamw", lr=3e-3)),
    "minilm_adamw": dict(batch_size=4, epochs=2, trainable="last:1",
                         optim=OptimConfig(optimizer="adamw", lr=1e-3, schedule="linear", warmup_steps=3),
                         scores=tuple(m for m in SCORE_METHODS if m != "influence-cg")),
}


def collection(name: str):
    """The :class:`CollectConfig` of set ``name``."""
    spec = dict(SETS[name])
    optim = spec.pop("optim")
    common = dict(COMMON, scores=spec.pop("scores", COMMON["scores"]))
    base = demo_config(**common, batch_size=spec.pop("batch_size"), epochs=spec.pop("epochs"),
                       trainable=spec["trainable"])
    return dataclasses.replace(base, optim=optim, score_params=spec["trainable"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=sorted(SETS), help="collect only these sets")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=DATA)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    timings_path = args.out / "collection_seconds.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    for name in args.only or list(SETS):
        start = time.perf_counter()
        runs = collect(collection(name), args.out / f"{name}.npz", workers=args.workers, threads=1, overwrite=True)
        timings[name] = round(time.perf_counter() - start, 1)
        print(f"{name}: {runs} in {timings[name]} s")
        timings_path.write_text(json.dumps(timings, indent=2) + "\n")


if __name__ == "__main__":
    main()
