"""The guard's stacked predictive: a blend of the two models per draw, or a mixture of them?

    python experiments/stacked_predictive.py experiments/data/scale_200_adam_tests10.npz --method bayes-svi

A guarded posterior predicts ``w f + (1 - w) b`` per test example (``f`` the posterior, ``b`` the
curriculum-blind model, ``w`` the stacking weight), and a new run's discrepancy is drawn from the
guard's held-out residuals, measured against that same stacked mean. Two ways to draw the stack:

- **mixture** (the package before this experiment): each (draw, test example) is a draw of ``f``
  with probability ``w``, else ``b``; its spread about the stacked mean gains ``w (1 - w) (f - b)^2``;
- **blend** (the package now): each draw is ``w f + (1 - w) b``; the spread is ``w^2`` times the
  posterior's, and the residuals add what the stacked mean misses.

Fits ``--method`` on the first ``--fit-runs`` runs of a runs file, scores both on the next
``--heldout-runs`` (retraining_study's measures of pairwise differences of the per-run mean final
loss, plus sharpness: the mean 90% width over the width if the fit knew nothing, ``2 x 1.645 x
sqrt(2) x`` the sd across held-out runs of their mean final loss). Both predictives are built here
from the same draws of the two models, so they differ only in how they are stacked. Appends a row
to ``experiments/results/stacked_predictive.{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import retraining_study as study  # noqa: E402

import bayes_simfluence as bsf  # noqa: E402
from bayes_simfluence.runs import Runs  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def stacked_draws(posterior, heldout: Runs, kind: str, how: str) -> np.ndarray:
    """``[draws, runs, steps + 1, tests]`` the guarded ``posterior``'s ``kind`` draws, stacked ``how``."""
    weight = posterior.stacking_weight
    full = dataclasses.replace(posterior, stacking_weight=None)
    blind = dataclasses.replace(posterior, stacking_weight=np.zeros_like(weight))

    def draws(model, predictive: str) -> np.ndarray:
        return model.simulate_draws(heldout.curricula, heldout.initial_losses, study.N_DRAWS, seed=0,
                                    predictive=predictive)

    f, b = draws(full, "parameters"), draws(blind, "parameters")
    discrepancy = draws(full, "new-run") - f if kind == "new-run" else 0.0
    if how == "blend":
        stacked = weight * f + (1 - weight) * b
    else:
        keep = np.random.default_rng(0).random((len(f), len(weight))) < weight  # [draws, tests]
        stacked = np.where(keep[:, None, None, :], f, b)
    return stacked + discrepancy


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, help="runs file (.npz)")
    parser.add_argument("--method", default="bayes", help="the Bayesian method to fit (default bayes)")
    parser.add_argument("--fit-runs", type=int, default=40)
    parser.add_argument("--heldout-runs", type=int, default=40)
    args = parser.parse_args(argv)
    runs = Runs.load(args.runs)
    train = runs.select_runs(slice(0, args.fit_runs))
    heldout = runs.select_runs(slice(args.fit_runs, args.fit_runs + args.heldout_runs))
    posterior = bsf.fit(train, method=args.method, progress=False)
    nothing = 2 * 1.645 * np.sqrt(2) * study.run_quantity(heldout.losses).std()
    row = {"runs": args.runs.name, "method": args.method, "path": posterior.name, "pool": runs.n_train,
           "fit_runs": train.n_runs, "heldout_runs": heldout.n_runs, "mean_weight": float(posterior.stacking_weight.mean())}
    for how in ("mixture", "blend"):
        mean = stacked_draws(posterior, heldout, "parameters", how)
        for kind in ("parameters", "new-run"):
            scores = study.calibration_scores(stacked_draws(posterior, heldout, kind, how), heldout.losses,
                                              mean_draws=mean)
            row[f"{how}_{kind}"] = {"cover90": scores["diff_coverage_90"], "cover50": scores["diff_coverage_50"],
                                    "sharpness": scores["diff_width_90"] / nothing, "brier": scores["brier"],
                                    "ordering": scores["ordering_accuracy"]}
            print(how, kind, row[f"{how}_{kind}"], flush=True)
    out = RESULTS / "stacked_predictive.json"
    rows = json.loads(out.read_text()) if out.exists() else {}
    rows[f"{args.runs.stem}_{args.method}"] = row
    out.write_text(json.dumps(rows, indent=1))
    (RESULTS / "stacked_predictive.md").write_text(markdown(rows))


def markdown(rows: dict) -> str:
    lines = ["# The guard's stacked predictive: blend against mixture", "",
             "`python experiments/stacked_predictive.py RUNS --method M` (module docstring): pairwise differences of "
             "the per-run mean final loss over held-out runs; sharpness: 90% width over the width if the fit knew "
             "nothing. Targets: 90% cover 0.85-0.95, 50% cover 0.40-0.60.", "",
             "| runs (pool) | method (path) | fit / held-out runs | mean weight | stacking | new-run 90% / 50% cover "
             "| sharpness | Brier | parameters-only 90% / 50% |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows.values():
        for how in ("mixture", "blend"):
            new, par = row[f"{how}_new-run"], row[f"{how}_parameters"]
            lines.append(f"| {row['runs']} ({row['pool']}) | {row['method']} ({row['path']}) | {row['fit_runs']} / "
                         f"{row['heldout_runs']} | {row['mean_weight']:.2f} | {how} | {new['cover90']:.2f} / "
                         f"{new['cover50']:.2f} | {new['sharpness']:.2f} | {new['brier']:.3f} | "
                         f"{par['cover90']:.2f} / {par['cover50']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
