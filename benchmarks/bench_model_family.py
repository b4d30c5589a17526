"""The default ``bayes`` at a pool of 10,000 on runs drawn from the model family: do the fitted
effects beat the curriculum-blind model?

    python benchmarks/bench_model_family.py                  # about 6 minutes on 2 CPU cores
    python benchmarks/bench_model_family.py --n-train 1000

The runs of ``benchmarks/bench_ridge_scale.py`` (:func:`bayes_simfluence.synthetic.synthetic_runs`,
seed 0: a decay shared by every example, per-example effects, noise; 32 runs of 500 steps, batch 16,
32 test examples; 24 fitted, 8 held out), so the ridge fit's row of ``ridge_scale.md`` is on the same
data. Reports what ``bayes`` chose and why, its guard (held-out roll-outs of the 24 fitted runs:
all-steps MSE with the effects and curriculum-blind, the weight of the effects) and the all-steps
MSE of the posterior mean on the 8 runs never fitted, against the blind model's. Writes
``benchmarks/results/model_family.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

from bench_ridge_scale import BATCH, HELDOUT, N_RUNS, N_STEPS, N_TESTS, RESULTS, model_family_runs


def measure(n_train: int) -> dict:
    """Fit the default ``bayes`` on one pool size; its choice, guard and held-out scores."""
    import bayes_simfluence as bsf
    from bayes_simfluence.evaluation import score_simulator

    train, held = model_family_runs(n_train)
    start = time.perf_counter()
    posterior = bsf.fit(train, method="bayes")
    seconds = time.perf_counter() - start
    blind = bsf.MeanTrajectory().fit(train)
    return {"n_train": n_train, "path": posterior.name, "fit_seconds": seconds, "chosen_by": posterior.info["chosen_by"],
            "guard": posterior.info["guard"],
            "heldout_mse": score_simulator(posterior, held)["all_steps_mse"],
            "blind_mse": score_simulator(blind, held)["all_steps_mse"]}


def markdown(rows: list[dict]) -> str:
    lines = [f"# The default `bayes` on runs drawn from the model family ({platform.machine()}, 2 CPU cores, no GPU)",
             "", f"`python benchmarks/bench_model_family.py`: {N_RUNS} runs of {N_STEPS} steps, batch {BATCH}, "
             f"{N_TESTS} test examples; {N_RUNS - HELDOUT} fitted, {HELDOUT} held out (the runs of "
             "`ridge_scale.md`).", "",
             "| n_train | path chosen | fit s (guard included) | guard: held-out MSE, effects | blind | weight of the "
             "effects | 8 unseen runs: MSE | blind |", "|---|---|---|---|---|---|---|---|"]
    why = [f"- `{row['n_train']:,}`: {row['chosen_by']}" for row in rows]
    for row in rows:
        guard = row["guard"]
        lines.append(f"| {row['n_train']:,} | {row['path']} | {row['fit_seconds']:.0f} | {guard['heldout_mse_full']:.3g} | "
                     f"{guard['heldout_mse_blind']:.3g} | {guard['mean_weight']:.2f} | {row['heldout_mse']:.3g} | "
                     f"{row['blind_mse']:.3g} |")
    return "\n".join(lines + ["", "Why `bayes` chose the path:", "", *why]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, nargs="+", default=[10000])
    args = parser.parse_args()
    rows = [measure(n) for n in args.n_train]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "model_family.json").write_text(json.dumps(rows, indent=2) + "\n")
    (RESULTS / "model_family.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
