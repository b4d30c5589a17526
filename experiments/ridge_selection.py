"""How well the point simulators' ridge strength is chosen, on the project's real sets.

    python experiments/ridge_selection.py      # about 4 minutes on 2 CPU cores

For each small set in ``experiments/data/`` (:data:`SETS`, made by ``experiments/real_sets.py`` and
``experiments/retraining_study.py``; the last 8 runs
held out), the held-out all-steps MSE of Simfluence-Linear fitted by ridge at every strength of
a fine grid (the best of them is the *best fixed strength*, an oracle: it looks at the held-out
runs), against the strength that leave-runs-out cross-validation picks from the training runs
alone (:func:`bayes_simfluence.cross_validation.choose_ridge`), and the curriculum-blind mean
trajectory; with the penalty's two centres (``-o ridge_centre``): a common level fitted without
penalty (the default) and the fixed centre ``A = 1/batch``, ``B = 0``. Writes
``experiments/results/ridge_selection.{json,md}``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from bayes_simfluence.metrics import all_steps_mse
from bayes_simfluence.runs import Runs
from bayes_simfluence.simulators import MeanTrajectory, SimfluenceLinear

HERE = Path(__file__).resolve().parent
HELDOUT = 8
FIXED_GRID = tuple(10.0 ** np.arange(-5, 4.01, 0.25))
#: the small real sets (pools of 48; the scale study's larger pools are in ``ridge_centre.py``)
SETS = ("minilm_adamw", "mlp_adam", "mlp_momentum", "mlp_sgd", "retrain_minilm", "retrain_mlp_sgd")
#: the two centres of the ridge's penalty (``-o ridge_centre``): the default, then the paper's fixed one
CENTRES = {True: "common", False: "fixed"}


def heldout_mse(simulator, heldout: Runs) -> float:
    return all_steps_mse(simulator.simulate(heldout.curricula, heldout.initial_losses), heldout.losses)


def study(path: Path, common_level: bool) -> dict:
    train, heldout = Runs.load(path).split(HELDOUT)
    start = time.perf_counter()
    chosen = SimfluenceLinear(common_level=common_level).fit(train)
    seconds = time.perf_counter() - start
    fixed = {strength: heldout_mse(SimfluenceLinear(ridge=strength, common_level=common_level).fit(train), heldout)
             for strength in FIXED_GRID}
    best = min(fixed, key=fixed.get)
    chosen_mse = heldout_mse(chosen, heldout)
    return {"runs": f"{train.n_runs} train / {heldout.n_runs} held out, {train.n_steps} steps, batch {train.batch_size}",
            "centre": CENTRES[common_level],
            "chosen_ridge": chosen.ridge_selected, "chosen_mse": chosen_mse, "best_fixed_ridge": best,
            "best_fixed_mse": fixed[best], "ratio": chosen_mse / fixed[best],
            "mean_trajectory_mse": heldout_mse(MeanTrajectory().fit(train), heldout),
            "selection_seconds": seconds, "fixed_grid_mse": {f"{k:.4g}": v for k, v in fixed.items()},
            "cv_report": chosen.cv_report}


def main() -> None:
    results = {f"{name} ({CENTRES[level]})": study(HERE / "data" / f"{name}.npz", level)
               for name in SETS for level in (True, False)}
    out = HERE / "results"
    (out / "ridge_selection.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["| real set | runs | ridge centre | chosen ridge | held-out MSE | best fixed ridge (oracle) | its MSE | "
             "ratio | mean trajectory MSE |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name.split(' (')[0]} | {r['runs']} | {r['centre']} | {r['chosen_ridge']:.3g} | "
                     f"{r['chosen_mse']:.4g} | {r['best_fixed_ridge']:.3g} | {r['best_fixed_mse']:.4g} | "
                     f"{r['ratio']:.3f} | {r['mean_trajectory_mse']:.4g} |")
    (out / "ridge_selection.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
