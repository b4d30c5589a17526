"""End-to-end experiment: every simulator on real fine-tuning runs, scored on held-out runs.

One command regenerates everything under ``experiments/results/``::

    /work/venv/bin/python experiments/run_experiment.py

1. **Collect** real runs with the collector on the embedded model and task (MiniLM-L6 fine-tuned
   on the packaged sentiment sentences; GPTfluence protocol: each run trains on a random subset
   of the pool, several epochs, random order), with TracIn and influence-function scores from
   the reference run. The runs file is cached under ``results/runs/`` (git-ignored) and reused
   when its configuration matches.
2. **Evaluate** every method on the last ``heldout`` runs: all-steps MSE, final-step MSE,
   Spearman (pooled and across runs), and for Bayesian methods coverage of the 50%/90% bands
   and CRPS.
3. **Check a counterfactual against reality**: under held-out run 0's curriculum, rank training
   examples by their posterior effect on the final test loss, then retrain for real without
   the top-k harmful, without the top-k helpful and without k random examples, and set the
   observed change in final loss beside the predicted interval.
4. **Write** ``results.csv``, ``results.md``, ``config.json`` (model, task, sizes, seeds, wall
   times, versions) and figures (``scores.png``, ``trajectories.png``, ``attributions.png``,
   ``counterfactual.png``).

A method that cannot run is reported as such (with its error) rather than left out silently,
and the command then exits with status 1.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from bayes_simfluence.attributions import final_loss_effects
from bayes_simfluence.collect.collector import collect
from bayes_simfluence.curricula import leave_out
from bayes_simfluence.collect.embedded import demo_config
from bayes_simfluence.compare import Comparison, compare, held_mean
from bayes_simfluence.evaluation import score_simulator
from bayes_simfluence.methods import FitContext, fit_method
from bayes_simfluence.plots import plot_comparison, plot_effects, plot_scores, plot_trajectories
from bayes_simfluence.runs import Runs

#: bayes-nuts (the full model by NUTS, 28 minutes here) is left to ``--methods ...,bayes-nuts``
METHODS = ("mean", "additive", "multiplicative", "linear", "tracin", "influence", "bayes", "bayes-svi")
#: the first of these that ran answers the counterfactual check
BAYESIAN = ("bayes", "bayes-nuts", "bayes-svi")
METRICS = ("all_steps_mse", "final_step_mse", "spearman", "spearman_runs", "coverage_50", "coverage_90", "crps",
           "fit_seconds")
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class ExperimentConfig:
    """Sizes and seeds of the experiment (the collection follows :func:`demo_config`)."""

    runs: int = 28
    heldout: int = 5
    train_size: int = 96
    test_size: int = 32
    subset_size: int = 48
    batch_size: int = 4
    epochs: int = 3
    lr: float = 0.05
    trainable: str = "last:1"
    curriculum_seed: int = 0
    seed: int = 0
    draws: int = 200
    workers: int = 2
    top_k: int = 5
    methods: tuple[str, ...] = METHODS
    method_options: dict = field(default_factory=dict)

    def collect_config(self):
        config = demo_config(runs=self.runs, train_size=self.train_size, test_size=self.test_size,
                             subset_size=self.subset_size, batch_size=self.batch_size, epochs=self.epochs,
                             lr=self.lr, trainable=self.trainable)
        return replace(config, curriculum_seed=self.curriculum_seed)


def collect_runs(config: ExperimentConfig, folder: Path) -> tuple[Runs, Path, float]:
    """The runs file of this configuration: read if cached with the same collection config, else collected."""
    path = folder / "runs.npz"
    collect_config = config.collect_config()
    if path.exists() and Runs.load(path).meta.get("config") == json.loads(json.dumps(collect_config.to_dict())):
        print(f"reusing {path}")
        return Runs.load(path), path, 0.0
    start = time.perf_counter()
    runs = collect(collect_config, path, workers=config.workers, overwrite=True, progress=False)
    return runs, path, time.perf_counter() - start


def evaluate_all(config: ExperimentConfig, train: Runs, heldout: Runs, train_path: Path
                 ) -> tuple[dict[str, dict], dict[str, object], dict[str, str]]:
    """Fit and score every method; ``(scores, simulators, errors)`` keyed by method."""
    scores, simulators, errors = {}, {}, {}
    for name in config.methods:
        context = FitContext(train_path=train_path, seed=config.seed,
                             options=dict(config.method_options.get(name, {})))
        print(f"[{time.strftime('%H:%M:%S')}] fitting {name} ...", flush=True)
        try:
            start = time.perf_counter()
            simulator = fit_method(name, train, context)
            fitted = time.perf_counter()
            result = score_simulator(simulator, heldout, n_draws=config.draws, seed=config.seed)
        except Exception as error:  # noqa: BLE001 - reported in the table, not hidden
            errors[name] = f"{type(error).__name__}: {error}"
            traceback.print_exc()
            continue
        result["fit_seconds"] = fitted - start
        result["simulate_seconds"] = time.perf_counter() - fitted
        scores[name], simulators[name] = result, simulator
        print(f"    {name}: " + ", ".join(f"{k}={v:.4g}" for k, v in result.items() if k in METRICS), flush=True)
    return scores, simulators, errors


def _retrain(config: ExperimentConfig, curriculum: np.ndarray, path: Path) -> np.ndarray:
    """``[steps + 1, tests]`` losses of one real run on ``curriculum`` ``[steps, batch]``."""
    real_config = replace(config.collect_config(), runs=1, scores=())
    return collect(real_config, path, curricula=curriculum[None], workers=1, overwrite=True, progress=False).losses[0]


def counterfactual_check(config: ExperimentConfig, simulator, heldout: Runs, folder: Path
                         ) -> tuple[Comparison, dict, object]:
    """Predict, then retrain for real: held-out run 0 as given vs without its top-k harmful,
    top-k helpful and k random training examples (ranked by the final-loss effect's 90% bound).

    Each leave-out is made twice: re-packed into full batches (what training on the reduced
    data set does; fewer steps) and with the removed slots emptied (same steps, smaller
    batches). Returns the comparison of the re-packed candidates, the report and the effects.
    """
    curriculum, initial = heldout.curricula[0], heldout.initial_losses[0]
    effects = final_loss_effects(simulator, curriculum, initial, n_draws=config.draws, seed=config.seed,
                                 train_ids=heldout.train_ids)
    k = config.top_k
    harmful, helpful = effects.top(k, helpful=False), effects.top(k, helpful=True)
    random = np.random.default_rng(config.seed).choice(effects.examples, size=k, replace=False)
    removed = {"harmful": harmful, "helpful": helpful, "random": random}
    names = {"harmful": f"top-{k} harmful", "helpful": f"top-{k} helpful", "random": f"{k} random"}
    report = {"removed": {key: value.tolist() for key, value in removed.items()},
              "removed_ids": {key: [effects.name(int(i)) for i in value] for key, value in removed.items()},
              "candidates": []}
    start = time.perf_counter()
    reference = _retrain(config, curriculum, folder / "counterfactual_as_given.npz")
    report["logged_vs_retrained_as_given_max_abs"] = float(np.abs(reference - heldout.losses[0]).max())
    comparisons = {}
    for repack in (True, False):
        labels = ["as given"] + [f"without {names[key]}" + ("" if repack else " (slots emptied)") for key in removed]
        candidates = [curriculum] + [leave_out(curriculum, chosen.tolist(), repack=repack) for chosen in removed.values()]
        comparison = compare(simulator, candidates, initial, n_draws=config.draws, seed=config.seed, labels=labels)
        comparisons[repack] = comparison
        final_diff, mean_diff = comparison.differences("final"), comparison.differences("mean")
        for j, (key, candidate) in enumerate(zip(removed, candidates[1:]), start=1):
            real = _retrain(config, candidate, folder / f"counterfactual_{key}_{'repacked' if repack else 'emptied'}.npz")
            horizon = max(len(real), len(reference)) - 1  # the comparison's mean: over the longer one's steps
            low, high = np.quantile(final_diff[:, j], [0.05, 0.95])
            mean_low, mean_high = np.quantile(mean_diff[:, j], [0.05, 0.95])
            report["candidates"].append({
                "label": labels[j], "repacked": repack, "steps": int(candidate.shape[0]),
                "predicted_final_difference": float(final_diff[:, j].mean()),
                "predicted_final_90": [float(low), float(high)],
                "observed_final_difference": float(real[-1].mean() - reference[-1].mean()),
                "predicted_mean_difference": float(mean_diff[:, j].mean()),
                "predicted_mean_90": [float(mean_low), float(mean_high)],
                "observed_mean_difference": float(held_mean(real.mean(-1), horizon)
                                                  - held_mean(reference.mean(-1), horizon)),
                "prob_lower_final": float((final_diff[:, j] < 0).mean()),
            })
    report["retrain_seconds"] = time.perf_counter() - start
    return comparisons[True], report, effects


def _format(value) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_tables(scores: dict, errors: dict, folder: Path) -> str:
    """``results.csv`` and the Markdown table (returned); unavailable methods get their error."""
    with open(folder / "results.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("method",) + METRICS + ("status",))
        for name, result in scores.items():
            writer.writerow((name,) + tuple(_format(result.get(m)) for m in METRICS) + ("ok",))
        for name, error in errors.items():
            writer.writerow((name,) + ("",) * len(METRICS) + (f"not run: {error}",))
    header = "| method | " + " | ".join(METRICS) + " |"
    lines = [header, "|" + "---|" * (len(METRICS) + 1)]
    best = {m: min((r[m] for r in scores.values() if np.isfinite(r.get(m, np.nan))), default=None)
            for m in ("all_steps_mse", "final_step_mse", "crps")}
    for name, result in scores.items():
        cells = []
        for metric in METRICS:
            text = _format(result.get(metric))
            cells.append(f"**{text}**" if text and best.get(metric) == result.get(metric) else text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for name, error in errors.items():
        lines.append(f"| {name} | not run: {error.splitlines()[0][:120]} |" + " |" * (len(METRICS) - 1))
    return "\n".join(lines)


def counterfactual_table(report: dict) -> str:
    lines = ["| curriculum (held-out run 0) | steps | predicted change in final loss (mean, 90% interval) | P(lower) "
             "| observed change (retrained) | predicted change in mean loss | observed |", "|---|---|---|---|---|---|---|"]
    for row in report["candidates"]:
        low, high = row["predicted_final_90"]
        mean_low, mean_high = row["predicted_mean_90"]
        lines.append(f"| {row['label']} | {row['steps']} | {row['predicted_final_difference']:+.4f} [{low:+.4f}, {high:+.4f}] | "
                     f"{row['prob_lower_final']:.2f} | {row['observed_final_difference']:+.4f} | "
                     f"{row['predicted_mean_difference']:+.4f} [{mean_low:+.4f}, {mean_high:+.4f}] | "
                     f"{row['observed_mean_difference']:+.4f} |")
    return "\n".join(lines)


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def parse_args(argv: list[str] | None = None) -> tuple[ExperimentConfig, Path, tuple[str, ...]]:
    defaults = ExperimentConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results folder (default {RESULTS})")
    for name in ("runs", "heldout", "train_size", "test_size", "subset_size", "batch_size", "epochs",
                 "curriculum_seed", "seed", "draws", "workers", "top_k"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--trainable", default=defaults.trainable)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods")
    parser.add_argument("--option", action="append", default=[], metavar="METHOD:KEY=VALUE",
                        help="method option, repeatable, e.g. bayes-nuts:num_samples=300")
    parser.add_argument("--refresh", default="", metavar="M1,M2",
                        help="re-fit and re-score only these methods on the same runs, keep the other rows of "
                             "results.csv, and record the refresh in config.json (the counterfactual check is kept)")
    args = parser.parse_args(argv)
    options: dict[str, dict] = {}
    for text in args.option:
        method, _, assignment = text.partition(":")
        key, _, raw = assignment.partition("=")
        if not method or not key or not raw:
            parser.error(f"--option must look like METHOD:KEY=VALUE, got {text!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        options.setdefault(method, {})[key] = value
    values = {name: getattr(args, name) for name in ExperimentConfig.__dataclass_fields__
              if name not in ("methods", "method_options")}
    config = ExperimentConfig(**values, methods=tuple(m for m in args.methods.split(",") if m),
                              method_options=options)
    return config, args.out, tuple(m for m in args.refresh.split(",") if m)


def read_scores(path: Path) -> dict[str, dict[str, float]]:
    """The rows of a ``results.csv`` that ran (``status == ok``), metrics as floats (NaN when empty)."""
    with open(path, newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["status"] == "ok"]
    return {row["method"]: {m: float(row[m]) if row[m] else float("nan") for m in METRICS} for row in rows}


def refresh(config: ExperimentConfig, folder: Path, methods: tuple[str, ...], argv: list[str]) -> int:
    """Re-fit and re-score ``methods`` on the same (cached or identically re-collected) runs; keep the rest.

    The ``mean`` row is recomputed too and must equal the committed one: it depends on the runs
    alone, so it checks that the runs are the ones the other rows were scored on.
    """
    previous = read_scores(folder / "results.csv")
    runs, runs_path, _ = collect_runs(config, folder / "runs")
    train, heldout = runs.split(config.heldout)
    scores, simulators, errors = evaluate_all(replace(config, methods=("mean", *methods)), train, heldout, runs_path)
    for metric in ("all_steps_mse", "final_step_mse"):
        if _format(scores["mean"][metric]) != _format(previous["mean"][metric]):
            raise SystemExit(f"the runs differ from the committed ones: mean {metric} "
                             f"{_format(scores['mean'][metric])} vs {_format(previous['mean'][metric])}")
    merged = dict(previous)
    merged.update({name: scores[name] for name in methods if name in scores})
    table = write_tables(merged, errors, folder)
    markdown = (folder / "results.md").read_text()
    start = markdown.index("| method |")
    end = markdown.index("\n\n", start) if "\n\n" in markdown[start:] else len(markdown)
    (folder / "results.md").write_text(markdown[:start] + table + markdown[end:])
    plot_scores(merged, ("all_steps_mse", "final_step_mse", "spearman_runs", "crps"),
                title=f"held-out runs: {heldout.n_runs}; lower MSE/CRPS, higher Spearman is better"
                ).savefig(folder / "scores.png", dpi=150)
    record = json.loads((folder / "config.json").read_text())
    record.setdefault("refreshed", {}).update({name: {
        "command": "python experiments/run_experiment.py " + " ".join(argv), "git_commit": _git_commit(),
        "date": time.strftime("%Y-%m-%d"),
        "ridge_selected": getattr(simulators[name], "ridge_selected", None),
        "cv_report": getattr(simulators[name], "cv_report", None)}
        for name in methods if name in scores})
    (folder / "config.json").write_text(json.dumps(record, indent=2, default=float))
    print(table)
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    config, folder, refreshed = parse_args(argv)
    if refreshed:
        return refresh(config, folder, refreshed, argv if argv is not None else sys.argv[1:])
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    runs, runs_path, collect_seconds = collect_runs(config, folder / "runs")
    train, heldout = runs.split(config.heldout)
    scores, simulators, errors = evaluate_all(config, train, heldout, runs_path)
    table = write_tables(scores, errors, folder)
    print(table)
    plot_scores(scores, ("all_steps_mse", "final_step_mse", "spearman_runs", "crps"),
                title=f"held-out runs: {heldout.n_runs}; lower MSE/CRPS, higher Spearman is better"
                ).savefig(folder / "scores.png", dpi=150)
    bayesian = next((name for name in BAYESIAN if name in simulators), None)
    counterfactual = None
    if bayesian is not None:
        simulator = simulators[bayesian]
        draws = simulator.simulate_draws(heldout.curricula, heldout.initial_losses, config.draws, seed=config.seed)
        hardest = np.argsort(-heldout.losses[:, -1].mean(0))[:3]
        point = simulators["linear"].simulate(heldout.curricula, heldout.initial_losses) if "linear" in simulators else None
        plot_trajectories(draws, heldout.losses, runs=[0, 1], tests=hardest.tolist(), point=point,
                          test_ids=heldout.test_ids,
                          title=f"{bayesian} posterior predictive (bands) and linear (dashed) vs observed, "
                                "held-out runs").savefig(folder / "trajectories.png", dpi=150)
        predicted, counterfactual, effects = counterfactual_check(config, simulator, heldout, folder / "runs")
        plot_effects(effects, k=config.top_k, title=f"{bayesian}: effect of each training example on the mean "
                     "final test loss under held-out run 0's curriculum (keeping it vs leaving it out)"
                     ).savefig(folder / "attributions.png", dpi=150)
        plot_comparison(predicted, title=f"{bayesian}: held-out run 0 vs leaving examples out (predicted)"
                        ).savefig(folder / "counterfactual.png", dpi=150)
    wall = time.perf_counter() - started
    record = {
        "command": "python experiments/run_experiment.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "experiment": asdict(config),
        "collection": json.loads(json.dumps(config.collect_config().to_dict())),
        "runs": {"total": runs.n_runs, "train": train.n_runs, "heldout": heldout.n_runs, "steps": runs.n_steps,
                 "batch": runs.batch_size, "n_train": runs.n_train, "tests": runs.n_tests,
                 "trainable_parameters": runs.meta.get("trainable_parameters")},
        "wall_seconds": {"total": wall, "collect": collect_seconds,
                         **{f"fit_{name}": result["fit_seconds"] for name, result in scores.items()}},
        "unavailable": errors,
        "counterfactual": counterfactual,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "python": sys.version.split()[0],
                    "versions": runs.meta.get("versions")},
        "git_commit": _git_commit(),
    }
    (folder / "config.json").write_text(json.dumps(record, indent=2, default=float))
    markdown = [f"# Held-out evaluation on real runs\n\n{runs.n_runs} runs ({train.n_runs} train, {heldout.n_runs} "
                f"held out), {runs.n_steps} steps of batch {config.batch_size}, pool {runs.n_train}, "
                f"{runs.n_tests} test examples; wall time {wall / 60:.1f} min. Best MSE/CRPS in bold.\n", table]
    if counterfactual is not None:
        markdown += ["\n## Counterfactual check: predicted vs retrained (mean test loss)\n",
                     counterfactual_table(counterfactual)]
    (folder / "results.md").write_text("\n".join(markdown) + "\n")
    print(f"wrote {folder} in {wall / 60:.1f} min")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
