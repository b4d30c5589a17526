"""What moves the *mean* test loss from run to run? A probe of the simulator's model class.

One command (offline, seconds; needs the retraining study's runs in ``experiments/data``)::

    python experiments/label_imbalance.py [--fit-runs 40]

On the retraining study's MLP set the simulator ranks each test example's final loss well (LDS
0.90) yet predicts the per-run mean final loss ``q_r`` poorly (correlation about 0.57 across
held-out runs). This probe tests one mechanism a sum of per-example effects cannot express:
both classes share the classifier's output bias, so the last batches' *label imbalance* pushes
one class's losses up and the other's down, and the mean over test examples then moves with the
*square* of that push (a loss is convex in the logit). The probe is a four-number regression,
fitted on the first ``fit-runs`` runs of each set and scored on every later run (runs the fits
never saw)::

    q_r ~ c0 + c1 z_r + c2 z_r^2,    z_r = sum_t rho^(T - t) sum_{i in batch t} y_i,

with ``y_i = +1`` for a positive training sentence and ``-1`` for a negative one, and the recency
``rho`` chosen by leave-one-out error on the fitted runs (a grid of 20 values in [0, 0.95]). It
uses the labels, which the simulator never sees; it is a diagnosis, not a product path. Written
to ``experiments/results/label_imbalance.{json,md}``, beside the simulator's numbers from
``retraining_study.json`` on the same held-out runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bayes_simfluence.bayes.data import loss_scale
from bayes_simfluence.bayes.run_state import estimate_run_state, leave_one_out_mse
from bayes_simfluence.runs import Runs
from retraining_study import DEFAULT_RUNS, SETS, ordering_accuracy, pair_indices, result_key, rmse

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
RESULTS = HERE / "results"
RECENCIES = np.linspace(0.0, 0.95, 20)
#: the embedded task's training pool, which both sets draw from
POOL = HERE.parent / "bayes_simfluence" / "data" / "sentiment_train.jsonl"


def label_signs(runs: Runs) -> np.ndarray:
    """``[n_train]`` +1 for a positive training sentence, -1 for a negative one."""
    label = {row["id"]: row["label"] for row in map(json.loads, POOL.read_text().splitlines()) if row}
    return np.array([1.0 if label[i] == "positive" else -1.0 for i in runs.train_ids])


def signed_labels(runs: Runs) -> np.ndarray:
    """``[runs, steps]`` number of positive minus negative training sentences in each batch."""
    sign = label_signs(runs)
    slots = runs.curricula  # [runs, steps, batch], -1 empty
    return np.where(slots >= 0, sign[np.maximum(slots, 0)], 0.0).sum(-1)


def features(signed: np.ndarray, recency: float) -> np.ndarray:
    """``[runs, 3]``: ``1, z, z^2`` with ``z`` the recency-weighted label imbalance."""
    weights = recency ** np.arange(signed.shape[1])[::-1]
    z = signed @ weights
    return np.stack([np.ones_like(z), z, z**2], axis=1)


def probe(runs: Runs, n_fit: int, n_heldout: int) -> dict:
    """Fit the probe on the first ``n_fit`` runs; scores on the next ``n_heldout``."""
    signed, q = signed_labels(runs), runs.losses[:, -1].mean(-1)
    errors = [leave_one_out_mse(features(signed[:n_fit], rho), q[:n_fit]) for rho in RECENCIES]
    recency = float(RECENCIES[int(np.argmin(errors))])
    x = features(signed, recency)
    held = slice(n_fit, n_fit + n_heldout)
    coef, *_ = np.linalg.lstsq(x[:n_fit], q[:n_fit], rcond=None)
    linear_only, *_ = np.linalg.lstsq(x[:n_fit, :2], q[:n_fit], rcond=None)
    predicted, observed = x[held] @ coef, q[held]
    fitted = runs.select_runs(np.arange(n_fit))
    direction = estimate_run_state(fitted, loss_scale(fitted.losses)).direction  # the run state's, label-free
    r, s = pair_indices(len(observed))
    diff_pred, diff_true = predicted[r] - predicted[s], observed[r] - observed[s]
    return {"fit_runs": n_fit, "heldout_runs": len(observed), "recency": recency, "coefficients": coef.tolist(),
            "q_correlation": float(np.corrcoef(predicted, observed)[0, 1]),
            "q_correlation_without_square": float(np.corrcoef(x[held, :2] @ linear_only, observed)[0, 1]),
            "diff_rmse": rmse(diff_pred, diff_true), "diff_sd": float(diff_true.std()),
            "ordering_accuracy": ordering_accuracy(diff_pred, diff_true)[0],
            "state_direction_label_correlation": float(abs(np.corrcoef(direction, label_signs(runs))[0, 1]))}


def simulator_rows() -> dict:
    """The simulator's ``new-run`` numbers on the same held-out runs, where the study has them."""
    path = RESULTS / "retraining_study.json"
    if not path.exists():
        return {}
    sets = json.loads(path.read_text())["sets"]
    return {key: {name: value["predictive"]["new-run"].get(name) for name in
                  ("q_correlation", "diff_rmse", "diff_sd", "ordering_accuracy")} | {"lds": value["lds"]}
            for key, value in sets.items() if "new-run" in value["predictive"]}


def markdown(results: dict) -> str:
    lines = ["# What moves the mean test loss? (label-imbalance probe)", "",
             "Produced by `python experiments/label_imbalance.py` (its docstring has the method): a four-number "
             "regression of the per-run mean final test loss on the recency-weighted label imbalance of the batches "
             "and its square, fitted on the first 40 runs and scored on the held-out runs that follow; beside it "
             "the simulator on the same runs (`bayes`, the new-run rows of `retraining_study.json`). Both are "
             "scored on the retrained per-run mean final loss `q`: correlation across held-out runs, RMSE of the "
             "pairwise differences (beside their retrained sd), ordering of the pairs whose retrained gap exceeds "
             "0.02. The last column: |correlation| of the run state's direction `u` (`-o run_state=true`, estimated "
             "from the fitted runs without labels) with the labels.", "",
             "| set | held-out runs | probe: q corr | probe without the square: q corr | probe: diff RMSE (sd) "
             "| probe: ordering | recency | simulator: q corr | simulator: diff RMSE | simulator: ordering "
             "| simulator: LDS | run state's direction vs labels |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, row in results["sets"].items():
        sim = results["simulator"].get(key, {})
        cells = [f"{row['q_correlation']:.3f}", f"{row['q_correlation_without_square']:.3f}",
                 f"{row['diff_rmse']:.3f} ({row['diff_sd']:.3f})", f"{row['ordering_accuracy']:.3f}",
                 f"{row['recency']:.2f}"]
        cells += ["" if sim.get(k) is None else f"{sim[k]:.3f}"
                  for k in ("q_correlation", "diff_rmse", "ordering_accuracy", "lds")]
        cells.append(f"{row['state_direction_label_correlation']:.3f}")
        lines.append(f"| {key} | {row['heldout_runs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines + [""])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fit-runs", type=int, default=DEFAULT_RUNS[0], help="runs the probe is fitted on (the first ones)")
    args = parser.parse_args(argv)
    results = {"sets": {}, "simulator": simulator_rows()}
    for name in SETS:
        path = DATA / f"{name}.npz"
        if not path.exists():
            raise SystemExit(f"{path} is missing: run python experiments/retraining_study.py --collect-only first")
        runs = Runs.load(path)
        for n_heldout in sorted({DEFAULT_RUNS[1], runs.n_runs - args.fit_runs}):  # the study's main rows, and every run
            results["sets"][result_key(name, args.fit_runs, n_heldout)] = probe(runs, args.fit_runs, n_heldout)
    (RESULTS / "label_imbalance.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "label_imbalance.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
