"""Step component vs plain model: LOO on the training runs and scores on held-out runs.

Fits the exact (collapsed) path of both variants on two kinds of synthetic runs and writes
``benchmarks/results/compare_variants.json`` and ``.md``:

- ``point``: :func:`bayes_simfluence.synthetic.synthetic_runs` (the paper's model, no step component);
- ``decaying``: :func:`bayes_simfluence.bayes.synthetic.decaying_runs` (common decay schedule plus
  small per-example effects, closer to real runs).

Run: ``python benchmarks/compare_variants.py``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from bayes_simfluence.bayes import diagnostics
from bayes_simfluence.bayes.methods import fit_bayes
from bayes_simfluence.bayes.synthetic import decaying_runs
from bayes_simfluence.metrics import all_steps_mse, coverage, crps
from bayes_simfluence.simulators import MeanTrajectory, SimfluenceLinear
from bayes_simfluence.synthetic import synthetic_runs

RESULTS = Path(__file__).parent / "results"
SIZES = {"n_train": 100, "n_tests": 8, "n_runs": 20, "n_steps": 100, "batch_size": 8}
HELDOUT = 4


def datasets(seed: int) -> dict:
    point, _ = synthetic_runs(**SIZES, noise_scale=0.01, effect_scale=0.02, seed=seed)
    decaying, _ = decaying_runs(**SIZES, seed=seed)
    return {"point": point, "decaying": decaying}


def main() -> None:
    warnings.simplefilter("ignore")
    results: dict = {}
    for seed in (0, 1):
        for name, runs in datasets(seed).items():
            train, held = runs.split(HELDOUT)
            row: dict = {}
            models = {}
            for step in (True, False):
                label = "step" if step else "plain"
                post = fit_bayes("exact", train, {"step": step, "progress": False}, seed=seed)
                models[label] = post.to_arviz(train, log_likelihood=True)
                draws = post.simulate_draws(held.curricula, held.initial_losses, 200, seed=seed)
                elpd = diagnostics.loo(models[label])
                row[label] = {
                    "elpd_loo": elpd.elpd, "elpd_loo_se": elpd.se,
                    "heldout_mse": all_steps_mse(post.simulate(held.curricula, held.initial_losses), held.losses),
                    "coverage_50": coverage(draws, held.losses, 0.5), "coverage_90": coverage(draws, held.losses, 0.9),
                    "crps": crps(draws[:100], held.losses), "fit_seconds": post.info["seconds"],
                }
            row["mean_trajectory_mse"] = all_steps_mse(
                MeanTrajectory().fit(train).simulate(held.curricula, held.initial_losses), held.losses)
            row["ridge_linear_mse"] = all_steps_mse(
                SimfluenceLinear(variant="linear", ridge=1.0).fit(train).simulate(held.curricula, held.initial_losses),
                held.losses)
            comparison = diagnostics.compare(models)
            row["compare_elpd_diff_plain_minus_best"] = float(comparison.loc["plain", "elpd_diff"])
            row["compare_best"] = str(comparison.index[0])
            results[f"{name}/seed{seed}"] = row
            print(name, seed, json.dumps(row, indent=1))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "compare_variants.json").write_text(json.dumps({"sizes": SIZES, "heldout_runs": HELDOUT,
                                                               "results": results}, indent=2))
    lines = ["| data | variant | elpd_loo (se) | held-out MSE | cov50 | cov90 | CRPS |",
             "|---|---|---|---|---|---|---|"]
    for key, row in results.items():
        for label in ("step", "plain"):
            r = row[label]
            lines.append(f"| {key} | {label} | {r['elpd_loo']:.1f} ({r['elpd_loo_se']:.1f}) | {r['heldout_mse']:.3g} | "
                         f"{r['coverage_50']:.2f} | {r['coverage_90']:.2f} | {r['crps']:.3g} |")
        lines.append(f"| {key} | mean trajectory | | {row['mean_trajectory_mse']:.3g} | | | |")
        lines.append(f"| {key} | ridge linear (1.0) | | {row['ridge_linear_mse']:.3g} | | | |")
    (RESULTS / "compare_variants.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
