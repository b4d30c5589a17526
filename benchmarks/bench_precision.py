"""Float32 against float64 for ``bayes-svi``: the exact oracle, the real sets, and the time of a step.

    python benchmarks/bench_precision.py     # about 8 minutes on 2 CPU cores

Three measurements, each for both precisions of the SVI optimisation (``-o precision=...``):

1. **Exact oracle**: the reference problem of ``tests/test_bayes_inference.py`` (10 training and
   2 test examples, hyperparameters fixed) fitted with the full-rank guide; the largest error of
   the posterior means in exact posterior sds, and the range of the ratio of posterior sds to the
   exact ones (:func:`bayes_simfluence.bayes.conjugate.posterior_given`).
2. **Real sets**: every set in ``experiments/data/`` fitted with the default ``bayes-svi``
   (optimiser memory and the guard) on the first 16 runs and scored on the last 8 (as
   ``experiments/lds_table.py``): held-out all-steps MSE, LDS, 90% coverage, fit seconds.
3. **Time of an SVI step** at ``N=1000, T=1000, R=16, batch 8, M=64``
   (:func:`bayes_simfluence.bayes.synthetic.decaying_runs`): the difference between fits of 300
   and 100 steps, over 200, each fit's second call (which compiles nothing).

``--steps-only`` redoes only the step timings and keeps the rest of the results file.

Writes ``benchmarks/results/precision.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

from bayes_simfluence.bayes import conjugate
from bayes_simfluence.bayes.data import model_data
from bayes_simfluence.bayes.inference import PRECISIONS, run_svi
from bayes_simfluence.bayes.model import ModelConfig
from bayes_simfluence.bayes.synthetic import decaying_runs, model_runs
from bayes_simfluence.evaluation import evaluate_methods
from bayes_simfluence.methods import FitContext
from bayes_simfluence.runs import Runs

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "experiments" / "data"
HELDOUT = 8


def oracle(precision: str) -> dict:
    runs, _ = model_runs(n_train=10, n_tests=2, n_runs=8, n_steps=16, batch_size=2, empty_fraction=0.2,
                         effect_scale=0.01, noise_scale=0.01, seed=11)
    data, config = model_data(runs), ModelConfig()
    fixed = {"noise_scale": np.full(data.n_tests, 0.01), "effect_scale": np.full(data.n_tests, 0.01)}
    mean, cov = conjugate.posterior_given(conjugate.collapsed_statistics(data, config), fixed["noise_scale"],
                                          fixed["effect_scale"], np.zeros((data.n_tests, 2)))
    result = run_svi(data, config, guide="mvn", num_steps=6000, learning_rate=0.02, num_draws=4000, seed=2,
                     precision=precision, progress=False, fixed=fixed)
    w = np.concatenate([result.draws["a"], result.draws["B"]], axis=-1)[0]
    sd = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
    ratio = w.std(0) / sd
    return {"max_mean_error_in_sd": float(np.abs((w.mean(0) - mean) / sd).max()),
            "sd_ratio_min": float(ratio.min()), "sd_ratio_max": float(ratio.max())}


def real_sets(precision: str) -> dict:
    out = {}
    for path in sorted(DATA.glob("*.npz")):
        if path.name.endswith(".scores.npz"):
            continue
        train, heldout = Runs.load(path).split(HELDOUT)
        scores = evaluate_methods(["bayes-svi"], train, heldout,
                                  FitContext(train_path=path, options={"progress": False, "precision": precision}))
        out[path.stem] = {k: scores["bayes-svi"][k] for k in ("all_steps_mse", "lds", "coverage_90", "fit_seconds")}
        print(precision, path.stem, out[path.stem], flush=True)
    return out


def step_seconds(precision: str) -> float:
    data = model_data(decaying_runs(n_train=1000, n_steps=1000, n_runs=16, batch_size=8, n_tests=64, seed=0)[0])
    seconds = {}
    for steps in (100, 300):
        for call in range(2):  # the second call of each compiles nothing: its time is the steps' and the draws'
            start = time.perf_counter()
            run_svi(data, ModelConfig(memory="geometric"), num_steps=steps, precision=precision, progress=False)
            seconds[steps] = time.perf_counter() - start
    return (seconds[300] - seconds[100]) / 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps-only", action="store_true", help="redo the step timings, keep the rest")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    if args.steps_only:
        results = json.loads((HERE / "results" / "precision.json").read_text())
        for p in PRECISIONS:
            results[p]["step_seconds"] = step_seconds(p)
    else:
        results = {p: {"oracle": oracle(p), "step_seconds": step_seconds(p), "real_sets": real_sets(p)}
                   for p in PRECISIONS}
    (HERE / "results" / "precision.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# bayes-svi: float32 against float64", "", "Written by `python benchmarks/bench_precision.py` "
             "(2 CPU cores, no GPU).", "",
             "| precision | oracle: max mean error / exact sd | oracle: sd / exact sd | s per SVI step (N=T=1000, M=64) |",
             "|---|---|---|---|"]
    for p, r in results.items():
        o = r["oracle"]
        lines.append(f"| {p} | {o['max_mean_error_in_sd']:.3f} | {o['sd_ratio_min']:.3f} to {o['sd_ratio_max']:.3f} | "
                     f"{r['step_seconds']:.4f} |")
    lines += ["", "| real set | precision | held-out all-steps MSE | LDS | coverage_90 | fit s |", "|---|---|---|---|---|---|"]
    for name in results["float32"]["real_sets"]:
        for p in PRECISIONS:
            s = results[p]["real_sets"][name]
            lines.append(f"| {name} | {p} | {s['all_steps_mse']:.4g} | {s['lds']:.3f} | {s['coverage_90']:.2f} | "
                         f"{s['fit_seconds']:.1f} |")
    (HERE / "results" / "precision.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
