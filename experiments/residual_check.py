"""Do the guard's held-out residuals say how far the final fit will miss new runs?

    python experiments/residual_check.py     # about 12 minutes on 2 CPU cores

The new-run predictive (:mod:`bayes_simfluence.bayes.discrepancy`) resamples the guard's
held-out residual trajectories: those of cross-fits on 3/4 of the fit runs. This script compares
them, per set and fit window, with what the final fit (the default ``bayes``, fitted on all the
window's runs) really misses on runs it never saw:

- ``q`` sd: the standard deviation across runs of the residual of the per-run mean final loss
  (what ``compare`` decides on), from the cross-fits (``cross``) and on the held-out runs
  (``actual``); and all-steps MSE of the residuals likewise, with the final fit's in-sample
  roll-out error on its own runs (``in``);
- ``corrected``: what a learning-curve correction would predict for a fit on all ``R`` runs from
  the cross-fits' error on ``R' = 3R/4`` and the in-sample error, by the linear-model identities
  ``out(n) = s2 (1 + p / n)`` and ``in(n) = s2 (1 - p / n)`` (two equations for ``s2`` and the
  effective number of parameters ``p``).

Sets: both retraining-study sets on their four fit windows (40 runs fitted, the other 120 held
out; ``retraining_study.py --windows``) and the four ``real_sets.py`` sets as ``lds_table.py``
splits them (16 fitted, the last 8 held out). Writes ``experiments/results/residual_check.{json,md}``.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np

from bayes_simfluence.methods import FitContext, fit_method, options_for
from bayes_simfluence.runs import Runs
from retraining_study import window_runs

HERE = Path(__file__).resolve().parent
RETRAINING_SETS = ("retrain_mlp_sgd", "retrain_minilm")
REAL_SETS = ("mlp_sgd", "mlp_momentum", "mlp_adam", "minilm_adamw")
#: the retraining study's fit windows: 40 runs fitted, the other 120 of its 160 held out.
WINDOW_RUNS, HELDOUT_RUNS, WINDOWS = 40, 120, 4
LDS_FIT, LDS_HELDOUT = 16, 8
#: the guard's cross-fits see this fraction of the fit runs (4 folds).
CROSS_FIT_FRACTION = 0.75


def learning_curve(cross: float, inside: float, n_runs: int, n_cross: float) -> tuple[float, float]:
    """``(out(n_runs), p)`` from the cross-fitted error ``cross = out(n_cross)`` and the in-sample
    error ``inside = in(n_runs)`` (module docstring)."""
    p = (cross - inside) / (cross / n_runs + inside / n_cross)
    scale = inside / (1.0 - p / n_runs)
    return scale * (1.0 + p / n_runs), p


def check(train: Runs, heldout: Runs) -> dict:
    """Every number of one (set, window): the default ``bayes`` fitted on ``train``."""
    simulator = fit_method("bayes", train, options_for("bayes", FitContext(seed=0, options={"progress": False})))
    cross = np.asarray(simulator.run_residuals)  # [runs, steps, tests]
    inside = train.losses[:, 1:] - simulator.simulate(train.curricula, train.initial_losses)[:, 1:]
    actual = heldout.losses[:, 1:] - simulator.simulate(heldout.curricula, heldout.initial_losses)[:, 1:]
    n_runs = train.n_runs
    out = {"fit_runs": n_runs, "heldout_runs": heldout.n_runs}
    for name, summary in (("mse", lambda e: float((e**2).mean())),
                          ("q_var", lambda e: float(e[:, -1].mean(-1).var(ddof=1)))):
        values = {kind: summary(e) for kind, e in (("cross", cross), ("in", inside), ("actual", actual))}
        corrected, p = learning_curve(values["cross"], values["in"], n_runs, CROSS_FIT_FRACTION * n_runs)
        out[name] = {**values, "corrected": corrected, "p_over_n": p / n_runs}
    return out


def markdown(results: dict) -> str:
    lines = ["# The guard's held-out residuals against the final fit's real misses", "",
             "Written by `experiments/residual_check.py` (its docstring has the design). `q` sd: sd across runs "
             "of the residual of the per-run mean final loss; MSE: all-steps. `cross`: the guard's cross-fits "
             "(3/4 of the fit runs); `actual`: the final fit on held-out runs; `corrected`: the learning-curve "
             "prediction for the final fit from `cross` and its in-sample error.", "",
             "| set | window | fit / held-out runs | q sd: cross | actual | actual / cross | corrected / cross "
             "| MSE: cross | in | actual | corrected |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, row in results["rows"].items():
        name, window = key.rsplit("/", 1)
        q, mse = row["q_var"], row["mse"]
        lines.append(f"| {name} | {window} | {row['fit_runs']} / {row['heldout_runs']} | {np.sqrt(q['cross']):.4f} "
                     f"| {np.sqrt(q['actual']):.4f} | {np.sqrt(q['actual'] / q['cross']):.2f} "
                     f"| {np.sqrt(q['corrected'] / q['cross']):.2f} | {mse['cross']:.3g} | {mse['in']:.3g} "
                     f"| {mse['actual']:.3g} | {mse['corrected']:.3g} |")
    lines += ["", f"Library version: `{results['library_version']}`; {results['seconds']:.0f} s.", ""]
    return "\n".join(lines)


def main() -> None:
    import subprocess

    warnings.simplefilter("ignore")
    start, rows = time.perf_counter(), {}
    for name in RETRAINING_SETS:
        runs = Runs.load(HERE / "data" / f"{name}.npz")
        for window in range(WINDOWS):
            fitted, heldout = window_runs(window, WINDOW_RUNS, HELDOUT_RUNS)
            rows[f"{name}/{window}"] = check(runs.select_runs(fitted), runs.select_runs(heldout))
            print(name, window, rows[f"{name}/{window}"]["q_var"], flush=True)
    for name in REAL_SETS:
        runs = Runs.load(HERE / "data" / f"{name}.npz")
        rows[f"{name}/0"] = check(runs.select_runs(np.arange(LDS_FIT)),
                                  runs.select_runs(np.arange(runs.n_runs - LDS_HELDOUT, runs.n_runs)))
        print(name, rows[f"{name}/0"]["q_var"], flush=True)
    version = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout
    results = {"rows": rows, "seconds": time.perf_counter() - start, "library_version": version.strip()}
    out = HERE / "results"
    (out / "residual_check.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "residual_check.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
