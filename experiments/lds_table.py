"""LDS and every other metric of every method on the project's real random-subset sets.

    python experiments/lds_table.py      # about 5 minutes on 2 CPU cores

For each set in ``experiments/data/`` (``experiments/real_sets.py``: every run trains on a random
36 of a 48-example pool, so Spearman across runs of the final loss is the linear datamodeling
score), every method is fitted on the first 16 runs and scored on the last 8: LDS and all-steps
MSE with 90% bootstrap intervals over the 20 test examples, the MSE relative to the mean
trajectory's, 90% band coverage for the Bayesian fits, the guard's mean stacking weight, and fit
time. Three Bayesian fits: ``bayes`` (the default: ``bayes-grid`` at these sizes) and
``bayes-svi`` as they come (optimiser memory and the guard), and ``bayes-svi plain`` (memory none,
no guard: the model before issue 11). The score methods
(TracIn, TRAK and influence-CG from dattri, this package's influence) roll out the scores
collected with each set, with one scale fitted on the 16 training runs (reported; "scores s" is
the time their scores took during collection). Writes ``experiments/results/lds.{json,md}``
(``lds.md`` has a second table with every metric) and one figure per set, ``lds_NAME.png``.
Published LDS values of other methods on other tasks are quoted beside them in the README, as
published (not re-run here).
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

from bayes_simfluence.evaluation import evaluate_methods
from bayes_simfluence.methods import FitContext, fit_method
from bayes_simfluence.plots import plot_scores, save_figure
from bayes_simfluence.runs import Runs, RunsFormatError
from bayes_simfluence.score_files import SCORE_METHODS, load_scores, scores_path_for
from bayes_simfluence.validation import undefined_as_null

HERE = Path(__file__).resolve().parent
HELDOUT = 8
#: the real sets of ``experiments/real_sets.py`` (the other files in ``data/`` belong to the retraining,
#: scale and runs-needed studies, with their own protocols)
SETS = ("minilm_adamw", "mlp_adam", "mlp_momentum", "mlp_sgd")
FITTED = ("mean", "additive", "multiplicative", "linear", "bayes", "bayes-svi")
#: the Bayesian fit as it was before optimiser memory and the guard (issue 11), for comparison.
PLAIN = {"progress": False, "memory": "none", "guard": False}
PLAIN_NAME = "bayes-svi plain"
#: every metric of :func:`bayes_simfluence.evaluation.score_simulator`, in the second table.
ALL_METRICS = ("all_steps_mse", "final_step_mse", "spearman", "lds", "coverage_50", "coverage_90", "crps")


def _cell(scores: dict, metric: str) -> str:
    value, interval = scores.get(metric), scores.get(f"{metric}_interval")
    if value is None or value != value:  # NaN: undefined
        return "undefined"
    return f"{value:.3g} [{interval[0]:.2g}, {interval[1]:.2g}]" if interval else f"{value:.3g}"


def main() -> None:
    warnings.simplefilter("ignore")
    results = {}
    for path in (HERE / "data" / f"{name}.npz" for name in SETS):
        train, heldout = Runs.load(path).split(HELDOUT)
        start = time.perf_counter()
        score_sets = {}
        for method in SCORE_METHODS:  # the methods whose scores were collected with this set
            try:
                score_sets[method] = load_scores(scores_path_for(path), method)
            except RunsFormatError:
                continue
        methods = [*FITTED[:4], *score_sets, *FITTED[4:]]  # the point simulators, the scores, the Bayesian fits
        results[path.stem] = evaluate_methods(methods, train, heldout,
                                              FitContext(train_path=path, options={"progress": False}))
        plain = evaluate_methods(["bayes-svi"], train, heldout, FitContext(train_path=path, options=PLAIN))
        results[path.stem][PLAIN_NAME] = plain["bayes-svi"]
        for method, score_set in score_sets.items():  # their own cost (once, during collection) and scale
            results[path.stem][method]["scoring_seconds"] = score_set.meta.get("seconds")
            results[path.stem][method]["scale"] = fit_method(method, train, FitContext(train_path=path)).scale
        print(f"{path.stem}: {time.perf_counter() - start:.0f} s", flush=True)
    out = HERE / "results"
    for name, by_method in results.items():
        save_figure(plot_scores(by_method, ["lds", "all_steps_mse"],
                                title=f"{name}: 8 held-out runs; whiskers: 90% intervals over 20 test examples"),
                    out / f"lds_{name}.png")
    (out / "lds.json").write_text(json.dumps(undefined_as_null(results), indent=2) + "\n")
    lines = ["| real set | method | LDS [90% CI] | all-steps MSE [90% CI] | MSE / mean's | coverage_90 | guard weight "
             "| fit s | scores s | scale |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, by_method in results.items():
        for method, scores in by_method.items():
            ratio = f"{scores['all_steps_mse'] / by_method['mean']['all_steps_mse']:.2f}"
            weight = f"{scores['guard_weight']:.2f}" if "guard_weight" in scores else ""
            coverage = f"{scores['coverage_90']:.2f}" if "coverage_90" in scores else ""
            scoring = f"{scores['scoring_seconds']:.1f}" if scores.get("scoring_seconds") is not None else ""
            scale = f"{scores['scale']:.3g}" if "scale" in scores else ""
            lines.append(f"| {name} | {method} | {_cell(scores, 'lds')} | {_cell(scores, 'all_steps_mse')} | {ratio} | "
                         f"{coverage} | {weight} | {scores['fit_seconds']:.1f} | {scoring} | {scale} |")
    lines += ["", "## All metrics", "", "| real set | method | " + " | ".join(ALL_METRICS) + " |",
              "|---|---|" + "---|" * len(ALL_METRICS)]
    for name, by_method in results.items():
        for method, scores in by_method.items():
            cells = [_number(scores.get(metric)) for metric in ALL_METRICS]
            lines.append(f"| {name} | {method} | " + " | ".join(cells) + " |")
    (out / "lds.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _number(value: float | None) -> str:
    return "" if value is None or value != value else f"{value:.3g}"


if __name__ == "__main__":
    main()
