"""Time posterior simulation: first and repeated calls, posterior mean vs predictive draws.

    python benchmarks/bench_simulate.py     # about 1 minute on 2 CPU cores

A ``bayes-svi`` posterior (400 stored draws, guarded) of synthetic runs (``N=300, T=400, R=16 + 4``
held out, batch 8, ``M=32``); each simulation runs three times, then on other curricula of the
same shape, so the difference between the first call and the others is JAX compilation; the
repeated time is the fastest of the others (the machine's noise is a few hundredths of a second).
The posterior mean averages at most 100 stored draws (``MEAN_DRAWS``). Writes
``benchmarks/results/bench_simulate.json``.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

from bayes_simfluence.bayes.methods import fit_bayes
from bayes_simfluence.bayes.synthetic import decaying_runs

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    warnings.simplefilter("ignore")
    runs = decaying_runs(n_train=300, n_steps=400, n_runs=20, batch_size=8, n_tests=32, seed=0)[0]
    train, held = runs.split(4)
    posterior = fit_bayes("svi", train, {"num_steps": 200, "num_draws": 400, "progress": False})
    calls = {"simulate (posterior mean, 100 of the 400 stored draws)": lambda c: posterior.simulate(c, held.initial_losses),
             "simulate_draws (100 predictive draws)": lambda c: posterior.simulate_draws(c, held.initial_losses, 100)}
    results = {}
    for label, call in calls.items():
        seconds = []
        for curricula in (held.curricula, held.curricula[:, ::-1], held.curricula[::-1], held.curricula[:, :, ::-1]):
            start = time.perf_counter()  # the same shape, other curricula
            call(curricula)
            seconds.append(round(time.perf_counter() - start, 2))
        results[label] = {"first_call_s": seconds[0], "repeated_call_s": min(seconds[1:])}
        print(label, results[label], flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_simulate.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
