"""How strong a prior for the run state? Cross-validated on the fit runs alone.

One command (offline, about 15 minutes on 2 CPU cores; needs the retraining study's runs in
``experiments/data``)::

    python experiments/state_prior.py [--fit-runs 40]

The run state's coefficients (``-o run_state=true``, :mod:`bayes_simfluence.bayes.run_state`) have
the prior ``Normal(0, (state_prior * sigma)^2)`` on features of unit root mean square. Their
marginal likelihood is a teacher-forced, one-step quantity, while users consume roll-outs; so the
prior's scale is judged here as the guard judges the effects: by the roll-out error of cross-fits
(4 contiguous folds of the fit runs, each rolled out by a fit on the other three), without looking
at any held-out run. Per set and prior scale (and without the run state): the cross-fitted
all-steps MSE, and the sd over runs of the cross-fitted error of the mean final loss (what the
new-run predictive's differences are made of). Written to ``experiments/results/state_prior.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np

from bayes_simfluence.bayes.methods import fit_bayes
from bayes_simfluence.runs import Runs
from retraining_study import DEFAULT_RUNS, SETS

HERE = Path(__file__).resolve().parent
PRIORS = (0.1, 0.3, 1.0, 3.0, 10.0)


def cross_fitted(runs: Runs, options: dict) -> dict:
    """The guard's cross-fit numbers of one fit (training runs only)."""
    posterior = fit_bayes("grid", runs, {"progress": False, **options})
    guard = posterior.info["guard"]
    final_error = posterior.run_residuals[:, -1].mean(-1)  # [runs]: observed - predicted mean final loss
    return {"heldout_mse_full": guard["heldout_mse_full"], "heldout_mse_stacked": guard["heldout_mse_stacked"],
            "final_mean_error_sd": float(final_error.std()), "mean_weight": guard["mean_weight"]}


def markdown(results: dict) -> str:
    lines = ["# Prior scale of the run state, by cross-fitted roll-out error (fit runs only)", "",
             "Produced by `python experiments/state_prior.py` (its docstring has the method): 4 cross-fits on the "
             f"first {results['fit_runs']} runs of each set; no held-out run is looked at. Lower is better.", "",
             "| set | run state prior | cross-fitted all-steps MSE | stacked | sd of the mean-final-loss error |",
             "|---|---|---|---|---|"]
    for name, rows in results["sets"].items():
        for label, row in rows.items():
            lines.append(f"| {name} | {label} | {row['heldout_mse_full']:.5f} | {row['heldout_mse_stacked']:.5f} | "
                         f"{row['final_mean_error_sd']:.4f} |")
    return "\n".join(lines + [""])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fit-runs", type=int, default=DEFAULT_RUNS[0], help="runs cross-fitted (the first ones)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    results = {"fit_runs": args.fit_runs, "sets": {}}
    for name in SETS:
        path = HERE / "data" / f"{name}.npz"
        if not path.exists():
            raise SystemExit(f"{path} is missing: run python experiments/retraining_study.py --collect-only first")
        runs = Runs.load(path).select_runs(np.arange(args.fit_runs))
        rows = {"none": cross_fitted(runs, {"run_state": False})}
        for prior in PRIORS:
            rows[f"{prior:g}"] = cross_fitted(runs, {"run_state": True, "state_prior": prior})
            print(name, prior, rows[f"{prior:g}"], flush=True)
        results["sets"][name] = rows
    (HERE / "results" / "state_prior.json").write_text(json.dumps(results, indent=2) + "\n")
    (HERE / "results" / "state_prior.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
