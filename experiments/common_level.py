"""Attributions when every example shares a decay: the common level of the multiplicative effects.

Protocol (the issue "Attributions that hold when every example shares a decay"): Simfluence-Linear
runs drawn with NumPy, written out here rather than through the package, so the truth is the
generating process and not the model's convention: a pool of 40 training examples, 4 test
examples, batches of 4, 60 steps, 32 random-curriculum runs (every epoch a new permutation),
noise ``N(0, 0.003)`` per step, effects ``a[m, i] ~ N(-0.002, 0.002)`` (every example also shares
a small decay, as in real training) and ``B[m, i] ~ N(0.001, 0.004)``, ``L_0[m] ~ U(0.8, 1.6)``.
The default ``bayes`` (bayes-grid, with its guard and the run state) and the same without the
guard are asked for ``final_loss_effects(..., reference="average")`` of every example of
training curriculum 0 on each test example (160 effects); the truth is the generating model
rolled out with the average example (pool means of the true effects) in the example's slots.

Scores per fit: coverage of the true effects by the 90% intervals (overall and the range over
test examples), the least-squares slope of the posterior means on the truth (1 = right
magnitudes), Spearman correlation, Brier score of ``P(helpful)`` against the true sign, the
posterior of the pool mean of ``a`` against its true value, and the guard's held-out all-steps
MSE of the full model.

    python experiments/common_level.py               # 3 seeds, with and without the guard, both models
    python experiments/common_level.py --seeds 1 --quick
    python experiments/common_level.py --seeds $(seq 4 23) --quick --out experiments/results/common_level_seeds.md

Writes ``experiments/results/common_level.md`` (and ``.json``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

PROTOCOL = {"n_train": 40, "n_tests": 4, "batch": 4, "n_steps": 60, "n_runs": 32, "noise": 0.003,
            "a": (-0.002, 0.002), "B": (0.001, 0.004)}
RESULTS = Path(__file__).parent / "results"


def curricula(rng: np.random.Generator, n_runs: int, n_steps: int, batch: int, n_train: int) -> np.ndarray:
    """``[runs, steps, batch]``: each run walks through fresh permutations of the pool."""
    slots = n_steps * batch
    epochs = -(-slots // n_train)
    return np.stack([np.concatenate([rng.permutation(n_train) for _ in range(epochs)])[:slots]
                     for _ in range(n_runs)]).reshape(n_runs, n_steps, batch)


def roll(a: np.ndarray, b: np.ndarray, curriculum: np.ndarray, initial: np.ndarray,
         noise: np.ndarray | None = None) -> np.ndarray:
    """``[steps + 1, ..., tests]`` losses ``L_t = (1 + sum_{i in c_t} a_i) L_{t-1} + sum_{i in c_t} B_i (+ e_t)``
    for effects ``a``, ``b`` ``[..., tests, n]`` and one curriculum ``[steps, batch]``."""
    losses = [np.broadcast_to(initial, a.shape[:-1]).astype(np.float64)]
    for t, batch in enumerate(curriculum):
        step = (1.0 + a[..., batch].sum(-1)) * losses[-1] + b[..., batch].sum(-1)
        losses.append(step if noise is None else step + noise[t])
    return np.stack(losses)


def generate(seed: int, a_level: float | None = None):
    """``(runs, truth)`` of the protocol; ``a_level`` overrides the mean of ``a`` (0: the control)."""
    from bayes_simfluence.runs import Runs

    p = PROTOCOL
    rng = np.random.default_rng(seed)
    shape = (p["n_tests"], p["n_train"])
    a = rng.normal(p["a"][0] if a_level is None else a_level, p["a"][1], shape)
    b = rng.normal(*p["B"], shape)
    initial = rng.uniform(0.8, 1.6, p["n_tests"])
    plans = curricula(rng, p["n_runs"], p["n_steps"], p["batch"], p["n_train"])
    noise = p["noise"] * rng.standard_normal((p["n_runs"], p["n_steps"], p["n_tests"]))
    losses = np.stack([roll(a, b, c, initial, e) for c, e in zip(plans, noise)])
    return Runs.create(plans, losses, n_train=p["n_train"]), {"a": a, "B": b, "initial": initial}


def true_effects(truth: dict, curriculum: np.ndarray, examples: np.ndarray) -> np.ndarray:
    """``[tests, examples]`` generating final-loss effects against the average example: the final
    loss under ``curriculum`` minus the final loss with every slot of ``i`` holding a virtual
    example whose effects are the pool means of the true ``a`` and ``B``."""
    a = np.concatenate([truth["a"], truth["a"].mean(-1, keepdims=True)], -1)
    b = np.concatenate([truth["B"], truth["B"].mean(-1, keepdims=True)], -1)
    average = a.shape[-1] - 1
    base = roll(a, b, curriculum, truth["initial"])[-1]
    return np.stack([base - roll(a, b, np.where(curriculum == i, average, curriculum), truth["initial"])[-1]
                     for i in examples], axis=-1)


def score(posterior, runs, truth, n_draws: int = 400) -> dict:
    """Coverage, slope, Spearman and Brier of the average-example effects of curriculum 0 per test example."""
    from bayes_simfluence.attributions import final_loss_effects

    curriculum = runs.curricula[0]
    per_test, means, truths, covered, brier = [], [], [], [], []
    for m in range(runs.n_tests):
        fitted = final_loss_effects(posterior, curriculum, runs.initial_losses[0], tests=[m], n_draws=n_draws)
        true = true_effects(truth, curriculum, fitted.examples)[m]
        lower, upper = fitted.interval(0.9)
        inside = (lower <= true) & (true <= upper)
        per_test.append(float(inside.mean()))
        covered.append(inside)
        means.append(fitted.mean)
        truths.append(true)
        brier.append((fitted.prob_helpful - (true < 0)) ** 2)
    mean, true = np.concatenate(means), np.concatenate(truths)
    return {"coverage_90": float(np.concatenate(covered).mean()), "coverage_by_test": per_test,
            "slope": float(mean @ true / (true @ true)), "spearman": float(spearmanr(mean, true)[0]),
            "brier": float(np.concatenate(brier).mean())}


def pool_mean_of_a(posterior, truth) -> dict:
    """The posterior of the pool mean of ``a`` per test example (loss units: ``a`` is scale-free)."""
    draws = posterior.a.reshape((-1,) + posterior.a.shape[-2:]).mean(-1)  # [draws, tests]
    lower, upper = np.quantile(draws, [0.05, 0.95], axis=0)
    return {"true": truth["a"].mean(-1).round(5).tolist(), "mean": draws.mean(0).round(5).tolist(),
            "lower": lower.round(5).tolist(), "upper": upper.round(5).tolist()}


def fit(runs, options: dict):
    from bayes_simfluence.methods import FitContext, fit_method

    return fit_method("bayes", runs, FitContext(options={"progress": False, **options}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--quick", action="store_true", help="only the default model without the guard")
    parser.add_argument("--out", type=Path, default=RESULTS / "common_level.md")
    args = parser.parse_args(argv)
    settings = {"default": {}, "no guard": {"guard": False}}
    if not args.quick:
        settings.update({"level fixed at 0": {"common_level": False},
                         "level fixed at 0, no guard": {"common_level": False, "guard": False}})
    else:
        settings = {"no guard": {"guard": False}}
    rows = []
    for seed in args.seeds:
        runs, truth = generate(seed)
        for name, options in settings.items():
            start = time.perf_counter()
            posterior = fit(runs, options)
            row = {"seed": seed, "model": name, **score(posterior, runs, truth),
                   "pool_mean_a": pool_mean_of_a(posterior, truth),
                   "guard": {k: v for k, v in posterior.info.get("guard", {}).items()
                             if k in ("heldout_mse_full", "heldout_mse_blind", "mean_weight")},
                   "seconds": round(time.perf_counter() - start, 1)}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "pool_mean_a"}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    lines = ["# Attributions with a common multiplicative level", "",
             "`python experiments/common_level.py` (protocol in its docstring). 90% intervals of final-loss "
             "effects against the average example, 160 effects per row (40 examples x 4 test examples).", "",
             "| seed | model | coverage 90% | per test example | slope | Spearman | Brier | pool mean of a: true / posterior 90% |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pm = r["pool_mean_a"]
        level = "; ".join(f"{t:+.4f} / [{lo:+.4f}, {hi:+.4f}]" for t, lo, hi in zip(pm["true"], pm["lower"], pm["upper"]))
        lines.append(f"| {r['seed']} | {r['model']} | {r['coverage_90']:.2f} | "
                     f"{min(r['coverage_by_test']):.2f}-{max(r['coverage_by_test']):.2f} | {r['slope']:.2f} | "
                     f"{r['spearman']:.3f} | {r['brier']:.3f} | {level} |")
    lines += ["", "Per model over every (seed, test example) cell: how often the pool mean of `a`'s 90% interval holds "
              "the truth, and the spread of the per-test coverage of the effects (the 40 effects of a test example "
              "share its level, so a cell's coverage moves with whether its level's interval holds the truth).", "",
              "| model | cells | level covered | per-test effect coverage: 10% / median / 90% quantile | mean |",
              "|---|---|---|---|---|"]
    for model in dict.fromkeys(r["model"] for r in rows):
        chosen = [r for r in rows if r["model"] == model]
        level = [lo <= t <= hi for r in chosen for t, lo, hi in
                 zip(r["pool_mean_a"]["true"], r["pool_mean_a"]["lower"], r["pool_mean_a"]["upper"])]
        cells = np.concatenate([r["coverage_by_test"] for r in chosen])
        q10, q50, q90 = np.quantile(cells, [0.1, 0.5, 0.9])
        lines.append(f"| {model} | {len(cells)} | {np.mean(level):.2f} | {q10:.2f} / {q50:.2f} / {q90:.2f} | "
                     f"{cells.mean():.3f} |")
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
