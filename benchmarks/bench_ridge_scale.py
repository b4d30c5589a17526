"""The paper's Simfluence-Linear (ridge, strength by leave-runs-out CV) at pools past the dense
normal equations: the matrix-free path of :mod:`bayes_simfluence.design`.

    python benchmarks/bench_ridge_scale.py                  # about 30 minutes on 2 CPU cores
    python benchmarks/bench_ridge_scale.py --n-train 1000   # one pool size
    python benchmarks/bench_ridge_scale.py --centre fixed   # the penalty's fixed centre (-o ridge_centre)

Runs drawn from Simfluence-Linear (:func:`bayes_simfluence.synthetic.synthetic_runs`: a decay every
example shares, per-example effects, noise), 32 runs of 500 steps, batch 16, 32 test examples;
24 runs fitted, 8 held out. At ``n_train = 10,000`` each example appears about 19 times in the
fitted runs, and the dense normal equations would need ``3 x 8 x 32 x 20,000^2`` bytes (307 GB);
at 1,000 the dense path runs (below ``DENSE_MAX_FEATURES``). Each pool size runs in its own
process (times include JAX compilation; peak resident memory is that process's). Scores: held-out
all-steps MSE of the rolled-out trajectories against the curriculum-blind mean trajectory's.
Writes ``benchmarks/results/ridge_scale.{json,md}``, keeping the rows of the pool sizes and centres
not measured this time (each row says when it was measured and with which library commit).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
N_TRAINS = (1000, 10000)
N_RUNS, N_STEPS, BATCH, N_TESTS, HELDOUT = 32, 500, 16, 32, 8


def model_family_runs(n_train: int):
    """``(train, held)``: the benchmark's runs drawn from Simfluence-Linear, the last ``HELDOUT`` held out."""
    from bayes_simfluence.synthetic import synthetic_runs

    runs, _ = synthetic_runs(n_train=n_train, n_tests=N_TESTS, n_runs=N_RUNS, n_steps=N_STEPS, batch_size=BATCH,
                             effect_scale=0.05, noise_scale=0.005, seed=0)
    return runs.split(HELDOUT)


def measure(n_train: int, centre: str) -> dict:
    """Fit ``linear`` on one pool size in this process; time, memory, ridge and held-out scores."""
    import numpy as np

    from bayes_simfluence import ridge
    from bayes_simfluence.simulators import SimfluenceLinear

    train, held = model_family_runs(n_train)
    start = time.perf_counter()
    linear = SimfluenceLinear(common_level=centre == "common").fit(train)
    seconds = time.perf_counter() - start
    predicted = linear.simulate(held.curricula, held.initial_losses)
    blind = train.losses.mean(0)
    return {"n_train": n_train, "centre": centre, "measured": time.strftime("%Y-%m-%d"), "commit": _commit(),
            "path": "dense" if ridge.is_dense("linear", n_train) else "conjugate gradients",
            "fit_seconds": seconds, "ridge": linear.ridge_selected,
            "strengths_tried": len(linear.cv_report["ridge_grid"]),
            "heldout_mse": float(np.mean((predicted[:, 1:] - held.losses[:, 1:]) ** 2)),
            "blind_mse": float(np.mean((blind[None, 1:] - held.losses[:, 1:]) ** 2)),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).parent)
    return done.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-train", type=int, action="append", help="pool sizes (default 1000 and 10000)")
    parser.add_argument("--centre", choices=("common", "fixed"), default="common",
                        help="what the ridge shrinks towards (-o ridge_centre; default common, linear's default)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child process: measure one pool size
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.centre)))
        return
    kept = {}
    if (RESULTS / "ridge_scale.json").exists():  # rows before the centre was recorded used the fixed one
        kept = {(row["n_train"], row.get("centre", "fixed")): {"centre": "fixed", **row}
                for row in json.loads((RESULTS / "ridge_scale.json").read_text())["rows"]}
    for n_train in args.n_train or N_TRAINS:
        done = subprocess.run([sys.executable, __file__, "--one", str(n_train), "--centre", args.centre],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"n_train {n_train} failed:\n{done.stderr[-2000:]}")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        kept[(n_train, args.centre)] = row
        print(row, flush=True)
    rows = [kept[key] for key in sorted(kept)]
    RESULTS.mkdir(exist_ok=True)
    machine = f"{platform.processor() or platform.machine()}, Python {platform.python_version()}"
    (RESULTS / "ridge_scale.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    lines = ["# Simfluence-Linear (ridge) past the dense normal equations", "",
             f"`python benchmarks/bench_ridge_scale.py` on {machine} (2 CPU cores, no GPU): {N_RUNS} runs of "
             f"{N_STEPS} steps, batch {BATCH}, {N_TESTS} test examples, {N_RUNS - HELDOUT} fitted, {HELDOUT} held out; "
             "runs drawn from Simfluence-Linear.", "",
             "| n_train | ridge centre | path | fit (s, CV included) | strengths tried | ridge | held-out MSE | "
             "curriculum-blind MSE | peak memory (GiB) | measured |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        when = f"{row['measured']} ({row['commit']})" if "measured" in row else "before the centre was an option"
        lines.append(f"| {row['n_train']:,} | {row['centre']} | {row['path']} | {row['fit_seconds']:.1f} | "
                     f"{row['strengths_tried']} | "
                     f"{row['ridge']:.3g} | {row['heldout_mse']:.4g} | {row['blind_mse']:.4g} | "
                     f"{row['peak_rss_gib']:.2f} | {when} |")
    (RESULTS / "ridge_scale.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
