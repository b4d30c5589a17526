"""SVI guides against the exact posterior with free hyperparameters (no optimiser memory, so
``bayes-exact`` is exact): the hyperparameters' marginals and the sd of two decisions.

    python experiments/guide_oracle.py      # about 2 minutes on 2 CPU cores

Two synthetic problems from :func:`bayes_simfluence.bayes.synthetic.model_runs` (the test
suite's reference problem, and 20 training examples x 12 runs x 30 steps with full batches).
For each guide of ``run_svi`` (defaults otherwise) and each test example: how many exact
posterior sd the guide's mean of ``log effect_scale`` and ``log noise_scale`` is off, the ratio
of its sd to the exact one, and the sd ratio of the mean final loss under one random curriculum
and of the paired difference of two (parameter draws, rolled out by the test suite's NumPy
roll-out). Writes ``experiments/results/guide_oracle.{json,md}``.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np

from bayes_simfluence.bayes.data import model_data
from bayes_simfluence.bayes.inference import run_exact, run_svi
from bayes_simfluence.bayes.model import ModelConfig
from bayes_simfluence.bayes.synthetic import model_runs
from bayes_simfluence.synthetic import random_curricula

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from test_bayes_inference import decision_summaries  # noqa: E402 - the tests' independent roll-out

PROBLEMS = {
    "reference": dict(n_train=10, n_tests=2, n_runs=8, n_steps=16, batch_size=2, empty_fraction=0.2,
                      effect_scale=0.01, noise_scale=0.01, seed=11),
    "full-batches": dict(n_train=20, n_tests=3, n_runs=12, n_steps=30, batch_size=4, empty_fraction=0.0,
                         effect_scale=0.01, noise_scale=0.01, seed=3),
}
GUIDES = ("normal", "conditional")


def compare(problem: dict) -> dict:
    data = model_data(model_runs(**problem)[0])
    config = ModelConfig()
    pair = random_curricula(2, data.n_steps, problem["batch_size"], data.n_train, np.random.default_rng(3))
    exact = run_exact(data, config, num_warmup=500, num_samples=1000, num_chains=2, progress=False).draws
    exact_final, exact_difference = decision_summaries(exact, data, pair)
    out = {}
    for guide in GUIDES:
        draws = run_svi(data, config, guide=guide, num_draws=2000, progress=False, seed=1).draws
        final, difference = decision_summaries(draws, data, pair)
        row = {}
        for name in ("effect_scale", "noise_scale"):
            e, s = (np.log(d[name].reshape(-1, data.n_tests)) for d in (exact, draws))
            row[f"{name} mean off (exact sd)"] = ((s.mean(0) - e.mean(0)) / e.std(0)).round(2).tolist()
            row[f"{name} sd ratio"] = (s.std(0) / e.std(0)).round(2).tolist()
        row["final loss sd ratio"] = round(float(final.std() / exact_final.std()), 2)
        row["paired difference sd ratio"] = round(float(difference.std() / exact_difference.std()), 2)
        out[guide] = row
    return out


def main() -> None:
    warnings.simplefilter("ignore")
    results = {name: compare(problem) for name, problem in PROBLEMS.items()}
    out = HERE / "results"
    (out / "guide_oracle.json").write_text(json.dumps({"problems": PROBLEMS, "results": results}, indent=1))
    lines = ["# SVI guides against the exact posterior (free hyperparameters)", "",
             "Written by `python experiments/guide_oracle.py` (see its docstring). Per test example: how far the "
             "guide's mean of the log hyperparameter is from the exact one, in exact posterior sd, and the sd ratio; "
             "then sd ratios of two decisions (1 = exact).", ""]
    for name, by_guide in results.items():
        keys = list(next(iter(by_guide.values())))
        lines += [f"## {name}: {PROBLEMS[name]}", "", "| guide | " + " | ".join(keys) + " |",
                  "|---" * (len(keys) + 1) + "|"]
        lines += [f"| {guide} | " + " | ".join(str(row[k]) for k in keys) + " |" for guide, row in by_guide.items()]
        lines.append("")
    (out / "guide_oracle.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
