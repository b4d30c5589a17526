"""Evidence against roll-outs: how flexible the step component should be.

    python experiments/step_smoothness.py --pool 200 [--optimizer adam] [--window 0]
        [--smoothness 0.001 0.003 0.01 0.03 0.1 0.3]

The step component ``d[m, t]`` (:mod:`bayes_simfluence.bayes.model`) is a random walk whose
step-to-step sd is ``drift_smoothness`` noise sds (default 0.1). ``bayes-grid`` integrates the other
hyperparameters out and reports each test example's log marginal likelihood
(``info["log_evidence"]``), so the evidence of each smoothness is exact up to the grid. This script
fits ``bayes-grid`` (no run state, no guard: the bare model; memory off under plain SGD, geometric
under Adam) on fit window ``--window`` of the scale study's runs
(``experiments/data/scale_POOL[_adam]_tests10.npz``, made by ``experiments/scale_study.py``) at each
smoothness, and scores on the held-out runs what users ask of a simulator: LDS (per-test Spearman
across held-out runs of the final loss), and its paired difference from the ridge ``linear`` fit
with a 90% bootstrap interval over held-out runs, and the all-steps MSE of the roll-outs, beside
the log evidence summed over test examples (relative to the best) and how the fit splits the shared
decline of the loss between the effects' common decay (mean ``a``) and the step change (mean ``d``). Writes
``experiments/results/step_smoothness.{json,md}`` (rows kept across invocations).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import retraining_study as study  # noqa: E402

from bayes_simfluence.metrics import all_steps_mse, lds_difference_interval, spearman_runs  # noqa: E402
from bayes_simfluence.runs import Runs  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
FIT_RUNS, HELDOUT_RUNS, N_BOOT = 40, 120, 1000


def paired_lds(predicted: np.ndarray, baseline: np.ndarray, observed: np.ndarray,
               seed: int = 0) -> tuple[float, float, float, list[float]]:
    """``(LDS, baseline LDS, difference, 90% bootstrap interval of the difference)`` of final losses
    ``[runs, steps + 1, tests]``, resampling held-out runs (the same resample for both:
    :func:`~bayes_simfluence.metrics.lds_difference_interval`)."""
    difference, low, high = lds_difference_interval(predicted, baseline, observed, n_boot=N_BOOT, seed=seed)
    return spearman_runs(predicted, observed)[0], spearman_runs(baseline, observed)[0], difference, [low, high]


def study_smoothness(pool: int, optimizer: str, window: int, smoothness: list[float]) -> list[dict]:
    from bayes_simfluence.methods import FitContext, fit_method, options_for

    name = f"scale_{pool}_{optimizer}_tests10"
    runs = Runs.load(HERE / "data" / f"{name}.npz")
    fit_runs, heldout_runs = study.window_runs(window, FIT_RUNS, HELDOUT_RUNS)
    train, heldout = runs.select_runs(fit_runs), runs.select_runs(heldout_runs)
    linear = fit_method("linear", train, FitContext(seed=0)).simulate(heldout.curricula, heldout.initial_losses)
    memory = "none" if optimizer == "sgd" else "geometric"
    rows = []
    for value in smoothness:
        options = {"memory": memory, "run_state": False, "guard": False, "drift_smoothness": value}
        start = time.perf_counter()
        simulator = fit_method("bayes-grid", train, options_for("bayes-grid", FitContext(seed=0, options=options)))
        seconds = time.perf_counter() - start
        predicted = simulator.simulate(heldout.curricula, heldout.initial_losses)
        lds, lds_linear, difference, interval = paired_lds(predicted, linear, heldout.losses)
        draws = simulator.parameter_draws()
        rows.append({"set": name, "pool": pool, "optimizer": optimizer, "window": window, "smoothness": value,
                     "options": options, "log_evidence": float(np.sum(simulator.info["log_evidence"])),
                     "lds": lds, "lds_linear": lds_linear, "lds_difference": difference,
                     "lds_difference_90": interval,
                     "mse": all_steps_mse(predicted, heldout.losses),
                     "mse_linear": all_steps_mse(linear, heldout.losses),
                     "mean_a": float(np.mean(draws["a"])), "mean_step_change": float(np.mean(draws["drift"])),
                     "fit_seconds": seconds})
        print(f"smoothness {value}: log evidence {rows[-1]['log_evidence']:.1f}, LDS {lds:.4f} "
              f"(linear {lds_linear:.4f}, difference {difference:+.4f} [{interval[0]:+.4f}, {interval[1]:+.4f}])",
              flush=True)
    return rows


def write(rows: list[dict]) -> None:
    path = RESULTS / "step_smoothness.json"
    kept = json.loads(path.read_text()) if path.exists() else {}
    for row in rows:
        kept[f"{row['set']}_window{row['window']}_smoothness{row['smoothness']}"] = row
    path.write_text(json.dumps(kept, indent=1) + "\n")
    lines = ["# Evidence against roll-outs: the step component's smoothness", "",
             "`python experiments/step_smoothness.py --pool P [--optimizer adam] [--window W]` (module docstring): "
             "bayes-grid without run state or guard, fitted on 40 runs at each `drift_smoothness`, scored on the "
             "other 120. Log evidence: summed over the 10 test examples, relative to the best smoothness of the set; "
             "LDS difference: against the ridge (`linear`) on the same held-out runs, with its 90% paired bootstrap "
             "interval over held-out runs; MSE: all steps of the roll-outs (ridge in brackets); mean `a`, mean `d`: "
             "the posterior means of the multiplicative effects and of the step change, averaged over training "
             "examples, steps and test examples (standardised scale): how the fit splits the shared decline "
             "between a common decay and the step component.", "",
             "| set | window | smoothness | log evidence | LDS | LDS - ridge [90%] | all-steps MSE (ridge) | mean `a` | "
             "mean `d` | fit s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    ordered = sorted(kept.values(), key=lambda r: (r["set"], r["window"], r["smoothness"]))
    best = {}
    for row in ordered:
        key = (row["set"], row["window"])
        best[key] = max(best.get(key, -np.inf), row["log_evidence"])
    for row in ordered:
        low, high = row["lds_difference_90"]
        lines.append(f"| {row['set']} | {row['window']} | {row['smoothness']:g} | "
                     f"{row['log_evidence'] - best[(row['set'], row['window'])]:.0f} | {row['lds']:.3f} | "
                     f"{row['lds_difference']:+.3f} [{low:+.3f}, {high:+.3f}] | "
                     f"{row['mse']:.2e} ({row['mse_linear']:.2e}) | {row['mean_a']:.4f} | "
                     f"{row['mean_step_change']:.4f} | {row['fit_seconds']:.0f} |")
    (RESULTS / "step_smoothness.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", type=int, default=200, help="the scale study's pool (its runs must exist)")
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    parser.add_argument("--window", type=int, default=0, help="fit window (experiments/scale_study.py --windows)")
    parser.add_argument("--smoothness", type=float, nargs="+", default=[0.001, 0.003, 0.01, 0.03, 0.1, 0.3],
                        help="drift_smoothness values to fit")
    args = parser.parse_args()
    write(study_smoothness(args.pool, args.optimizer, args.window, args.smoothness))


if __name__ == "__main__":
    main()
