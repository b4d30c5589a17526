"""Are the guard's cross-fits as good as the final fit? (issue 27, "Cross-fits as good as the final fit")

On runs drawn from the Bayesian model (:func:`bayes_simfluence.bayes.synthetic.model_runs`), fit
``bayes-svi`` with its guard on ``runs`` of them and compare

- the root mean square of the guard's held-out residuals (``posterior.run_residuals``, the
  ``observed - stacked`` trajectories that set the new-run discrepancy), with
- the root mean square of the final fit's real misses on fresh runs of the same process
  (``observed - posterior.simulate`` on ``fresh`` runs never seen by any fit, all steps after ``L_0``).

Run: ``.venv/bin/python experiments/cross_fit_quality.py [--guard-steps 500 2000] [--seeds 0 1]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bayes_simfluence.bayes.methods import fit_bayes
from bayes_simfluence.bayes.synthetic import model_runs


def measure(seed: int, guard_steps: int | None, n_train: int, runs: int, fresh: int, steps: int, tests: int, effect: float, noise: float,
            num_steps: int) -> dict:
    """One fit: held-out residual RMS, fresh-run miss RMS and their ratio."""
    data, _ = model_runs(n_train=n_train, n_tests=tests, n_runs=runs + fresh, n_steps=steps, batch_size=8,
                         effect_scale=effect, location=-effect / 4, noise_scale=noise, seed=seed)
    train, new = data.select_runs(np.arange(runs)), data.select_runs(np.arange(runs, runs + fresh))
    options = {"progress": False, "num_steps": num_steps}
    if guard_steps is not None:
        options["guard_steps"] = guard_steps
    start = time.perf_counter()
    posterior = fit_bayes("svi", train, options, seed=seed)
    seconds = time.perf_counter() - start
    heldout = float(np.sqrt(np.mean(posterior.run_residuals**2)))
    miss = new.losses[:, 1:] - posterior.simulate(new.curricula, new.initial_losses)[:, 1:]
    final = float(np.sqrt(np.mean(miss**2)))
    return {"seed": seed, "guard_steps": guard_steps, "heldout_rms": heldout, "fresh_rms": final,
            "ratio": heldout / final, "weight": posterior.info["guard"]["mean_weight"], "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--guard-steps", type=int, nargs="+", default=[0], help="0: the default")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--n-train", type=int, default=400)
    parser.add_argument("--runs", type=int, default=16)
    parser.add_argument("--fresh", type=int, default=16)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--tests", type=int, default=4)
    parser.add_argument("--num-steps", type=int, default=2000)
    parser.add_argument("--effect", type=float, default=0.005, help="effect_scale of model_runs")
    parser.add_argument("--noise", type=float, default=0.002, help="noise_scale of model_runs")
    args = parser.parse_args()
    print("| guard_steps | seed | held-out residual RMS | fresh-run miss RMS | ratio | weight | seconds |")
    print("|---|---|---|---|---|---|---|")
    for guard_steps in args.guard_steps:
        for seed in args.seeds:
            r = measure(seed, guard_steps or None, args.n_train, args.runs, args.fresh, args.steps, args.tests, args.effect, args.noise,
                        args.num_steps)
            print(f"| {guard_steps or 'default'} | {seed} | {r['heldout_rms']:.5f} | {r['fresh_rms']:.5f} | "
                  f"{r['ratio']:.3f} | {r['weight']:.2f} | {r['seconds']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
