"""How many logged runs does the simulator need, and do features let it need fewer? (issue 30)

    python experiments/runs_needed.py [--pool 200] [--optimizer sgd|adam] [--runs 5 10 20 40]
                                      [--heldout 40] [--method bayes-grid] [-o memory=none ...]

The random-subset protocol of ``experiments/scale_study.py`` (a real 16-32-2 tanh MLP on a
two-class Gaussian mixture, 120 steps of batch 4, the same initial weights in every run, each run
on a random 80% of the pool, 10 test examples; plain SGD or Adam with per-run dropout), with the
**feature prior** (``bayes_simfluence.bayes.features``) fed by features of the reference model,
computed without training any run the fit sees:

- ``train_features [pool, 5]``: each training example's label and its first 4 principal components
  (of the inputs, over the pool);
- ``pair_features [tests, pool, 2]``: TracIn of each (test, training) pair, (1) the dot product of
  the gradients (all parameters) of their cross-entropy losses at the shared initial weights, and
  (2) the optimiser-step TracIn of one reference run trained on the whole pool in the scale study's
  way (one extra training run, not logged): summed over 4 checkpoints (steps 0, 30, 60, 90), the
  learning rate times ``g_test . P g_train``, with ``P`` the optimiser's preconditioner at the
  checkpoint: the identity under SGD; under Adam ``1 / (sqrt(v_hat) + eps)`` from its running
  second moments (Adam-aware TracIn, as in LESS, Xia et al. 2024), the checkpoints where Adam has
  second moments (steps 30, 60, 90). Gradients without dropout.

1. **Runs needed.** The scale study's runs (``experiments/data/scale_POOL_OPT_tests10.npz``, made
   there if missing): the method is fitted on the first ``n`` of the first 40 runs for each ``n``
   of ``--runs``, with and without features, and scored on the next ``--heldout`` runs, which no fit
   saw: LDS (per test example, Spearman across held-out runs of the posterior-mean against the
   retrained final loss, averaged over test examples, as ``retraining_study.py`` computes it) with a
   90% percentile-bootstrap interval **over held-out runs** (1000 resamples of the runs); from 500
   new-run predictive draws, coverage of the 90%/50% intervals of the pairwise differences of the
   per-run mean final loss, their **sharpness** (``scale_study.sharpness``: mean width of the 90%
   difference intervals over ``2 x 1.645 x sqrt(2) x`` the sd across held-out runs of their
   retrained mean final loss, the width if the fit knew nothing), Brier of ``P(better)``, and
   coverage of the 90%/50% intervals of each (held-out run, test example) final loss. ``linear``'s
   LDS on the same runs is beside each row.
2. **Unseen data** (GPTfluence's protocol). A fixed random 20% of the pool (seeded) is held out of
   every fitted run: 40 new fit runs (``experiments/data/runs_needed_unseen_POOL_OPT.npz``), each
   on a random 80% of the other 80% of the pool. The held-out runs are the same as in 1 (random 80%
   subsets of the whole pool: each has about 32 of the 40 unseen examples). Fitted with and
   without features, scored as in 1; compare with the all-seen rows of 40 runs. Each unseen-protocol
   fit is also scored on ``--heldout`` held-out runs of its fitted runs' kind (``matched``: each on a
   random 80% of a random 80% of the whole pool, so as many distinct examples as a fitted run, as
   GPTfluence's 128 of 200; ``experiments/data/runs_needed_matched_POOL_OPT.npz``): the run
   discrepancy a fit learns is that of the runs it saw, so these runs ask about its unseen-data
   effects alone, without a change of run kind.
3. **Fit windows** (``--windows 1 2 3``): 40 fresh fitted runs per window and protocol (all-seen runs
   after the held-out ones; unseen-protocol runs after window 0's), collected if missing and scored
   on the same held-out runs, for the mean over windows of the 40-run rows (the issue's scores are
   averaged over fit windows: which 40 runs a fit sees moves its intervals' coverage), with the run
   discrepancy's spread (``guard_residual_sd``: the sd of the guard's held-out residual mean final
   loss) beside the fit's real miss of the held-out runs (``heldout_miss_sd``).

Writes ``experiments/results/runs_needed.{json,md}`` (rows kept across invocations, keyed by pool,
optimizer, protocol, runs, features and the model where it is not this script's default:
:func:`model_label`) and one figure per set,
``experiments/results/runs_needed[_POOL][_adam][_MODEL].png`` (LDS and sharpness against runs,
with and without features; served by the docs beside the other results). ``--redraw`` rewrites the
table and figures from the json alone.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import retraining_study as study  # noqa: E402
import scale_study as scale  # noqa: E402

from bayes_simfluence.bayes.grid import dense_counts  # noqa: E402
from bayes_simfluence.metrics import spearman_across_runs  # noqa: E402
from bayes_simfluence.runs import Runs  # noqa: E402

RESULTS = Path(__file__).parent / "results"
DATA = Path(__file__).parent / "data"
FIT_RUNS = 40
UNSEEN_FRACTION = 0.2
#: seed of the unseen examples' choice and the first run index (curriculum seed) of the unseen protocol's fit runs
UNSEEN_SEED, UNSEEN_FIRST_RUN = 30, 1000
#: curriculum seeds reserved per unseen set (set k's fitted runs start at UNSEEN_FIRST_RUN + k x this)
UNSEEN_SET_RUNS = 100_000
#: first run index (curriculum seed) of the unseen protocol's held-out runs of the fitted runs' kind
MATCHED_FIRST_RUN = 2000
CHECKPOINTS = (0, 30, 60, 90)
N_BOOT = 1000
#: the package's state where a row does not record it (the first invocations, while another change was under way)
LIBRARY = "bd6276e with a concurrent uncommitted refactor of bayes/grid.py and its neighbours (not recorded)"


# ------------------------------------------------------------------------------------- features
def per_example_gradients(model, x, y) -> np.ndarray:
    """``[examples, parameters]``: the gradient of each example's cross-entropy loss (no dropout)."""
    import torch

    model.eval()
    loss = torch.nn.CrossEntropyLoss()
    rows = []
    for i in range(len(y)):
        model.zero_grad()
        loss(model(x[i: i + 1]), y[i: i + 1]).backward()
        rows.append(torch.cat([p.grad.flatten() for p in model.parameters()]).numpy().astype(np.float64))
    return np.stack(rows)


def tracin(model, task: dict, preconditioner: np.ndarray | None = None) -> np.ndarray:
    """``[tests, pool]`` products ``g_test . P g_train`` of the test and training examples' loss gradients
    at ``model``; ``preconditioner [parameters]`` is the diagonal of ``P`` (the identity where None)."""
    train = per_example_gradients(model, task["x_train"], task["y_train"])
    if preconditioner is not None:
        train = train * preconditioner
    return per_example_gradients(model, task["x_test"], task["y_test"]) @ train.T


def adam_preconditioner(model, optimizer) -> np.ndarray | None:
    """``[parameters]`` Adam's step preconditioner ``1 / (sqrt(v_hat) + eps)`` (bias-corrected second
    moments, in ``model.parameters()`` order), or None before its first step."""
    import torch

    group = optimizer.param_groups[0]
    parts = []
    for parameter in model.parameters():
        state = optimizer.state.get(parameter)
        if not state:
            return None
        second = state["exp_avg_sq"] / (1 - group["betas"][1] ** float(state["step"]))
        parts.append((1.0 / (second.sqrt() + group["eps"])).flatten())
    return torch.cat(parts).numpy().astype(np.float64)


def reference_features(pool: int, n_tests: int, optimizer: str) -> tuple[np.ndarray, np.ndarray]:
    """``(train_features [pool, 5], pair_features [tests, pool, 2])`` of the module docstring."""
    task = scale.make_task(pool, n_tests, optimizer)
    x = task["x_train"].numpy().astype(np.float64)
    centred = x - x.mean(0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    train_features = np.column_stack([task["y_train"].numpy().astype(np.float64), centred @ components[:4].T])
    model = task["network"]()
    model.load_state_dict(task["initial"])
    at_initial = tracin(model, task)
    # the reference run: the whole pool in a fresh random order each epoch (its own seed)
    rng = np.random.default_rng([UNSEEN_SEED, 999_999])
    order = np.concatenate([rng.permutation(pool) for _ in range(-(-scale.STEPS * scale.BATCH // pool))])
    curriculum = order[: scale.STEPS * scale.BATCH].reshape(scale.STEPS, scale.BATCH)
    summed = np.zeros_like(at_initial)

    def checkpoint(t: int, network, step) -> None:
        if t not in CHECKPOINTS:
            return
        if optimizer == "sgd":
            summed[:] += scale.LR * tracin(network, task)
            return
        preconditioner = adam_preconditioner(network, step)
        if preconditioner is not None:
            summed[:] += scale.ADAM_LR * tracin(network, task, preconditioner)

    scale.train_run(task, curriculum, dropout_seed=999_999, checkpoint=checkpoint)
    return train_features, np.stack([at_initial, summed], axis=-1)


# ------------------------------------------------------------------------------------------ runs
def cached_runs(path: Path, n_runs: int, collect: Callable[[int, int], Runs]) -> Runs:
    """The first ``n_runs`` runs of the cache file ``path``; the missing ones are collected by
    ``collect(first_run, count)`` (runs are seeded by their index, so a longer cache starts with
    the shorter one) and appended to it."""
    runs = Runs.load(path) if path.exists() else None
    have = 0 if runs is None else runs.n_runs
    if have < n_runs:
        start = time.perf_counter()
        more = collect(have, n_runs - have)
        if runs is not None:
            more = Runs.create(np.concatenate([runs.curricula, more.curricula]),
                               np.concatenate([runs.losses, more.losses]), n_train=runs.n_train, meta=runs.meta)
        runs = more
        runs.save(path)
        print(f"collected runs {have}-{n_runs - 1} of {path.name} in {time.perf_counter() - start:.0f} s", flush=True)
    return runs.select_runs(slice(0, n_runs))


def seen_runs(pool: int, n_tests: int, optimizer: str, n_runs: int) -> Runs:
    """The scale study's runs (its cache file; the missing ones collected here and appended)."""
    return cached_runs(DATA / f"scale_{pool}_{optimizer}_tests{n_tests}.npz", n_runs,
                       lambda first, count: scale.make_runs(pool, n_tests, count, optimizer, first_run=first))


def unseen_examples(pool: int, unseen_set: int = 0) -> np.ndarray:
    """The random 20% of the pool that no fitted run of the unseen protocol uses: set 0 is this study's
    (every window's); sets ``k >= 1`` are other random choices (``experiments/unseen_sets.py``)."""
    rng = np.random.default_rng(UNSEEN_SEED if unseen_set == 0 else [UNSEEN_SEED, unseen_set])
    return np.sort(rng.choice(pool, int(UNSEEN_FRACTION * pool), replace=False))


def unseen_runs(pool: int, n_tests: int, optimizer: str, n_runs: int, unseen_set: int = 0) -> Runs:
    """``n_runs`` runs on random 80% subsets of the examples outside :func:`unseen_examples` (cached;
    set ``k >= 1`` in its own file, with curriculum seeds of its own)."""
    unseen = unseen_examples(pool, unseen_set)
    allowed = np.setdiff1d(np.arange(pool), unseen)
    first_run = UNSEEN_FIRST_RUN + UNSEEN_SET_RUNS * unseen_set

    def collect(first: int, count: int) -> Runs:
        runs = scale.make_runs(pool, n_tests, count, optimizer, allowed=allowed, first_run=first_run + first)
        return Runs.create(runs.curricula, runs.losses, n_train=pool, meta={**runs.meta, "unseen": unseen.tolist()})

    suffix = f"_set{unseen_set}" if unseen_set else ""
    return cached_runs(DATA / f"runs_needed_unseen_{pool}_{optimizer}{suffix}_tests{n_tests}.npz", n_runs, collect)


def matched_heldout_runs(pool: int, n_tests: int, optimizer: str, n_runs: int) -> Runs:
    """``n_runs`` held-out runs of the unseen protocol's fitted runs' kind: each on a random 80% subset of
    a random 80% of the whole pool (the fitted runs: of the fixed 80% outside :func:`unseen_examples`), so
    about ``0.64 x`` the unseen examples are in each, and each run has as many distinct examples as a fitted
    one (cached). GPTfluence's runs are of this kind: 128 of a pool of 200."""

    def collect(first: int, count: int) -> Runs:
        parts = []
        for r in range(MATCHED_FIRST_RUN + first, MATCHED_FIRST_RUN + first + count):
            allowed = np.sort(np.random.default_rng([UNSEEN_SEED, r]).choice(pool, int(0.8 * pool), replace=False))
            parts.append(scale.make_runs(pool, n_tests, 1, optimizer, allowed=allowed, first_run=r))
        return Runs.create(np.concatenate([r.curricula for r in parts]), np.concatenate([r.losses for r in parts]),
                           n_train=pool, meta={**parts[0].meta, "unseen": unseen_examples(pool).tolist()})

    return cached_runs(DATA / f"runs_needed_matched_{pool}_{optimizer}_tests{n_tests}.npz", n_runs, collect)


def fit_window(protocol: str, window: int, pool: int, n_tests: int, optimizer: str, heldout: int) -> Runs:
    """The :data:`FIT_RUNS` runs fit window ``window`` draws from: window 0 the set's first runs (seen) or
    the unseen protocol's first; window ``k >= 1`` the next ``FIT_RUNS`` fresh runs of the same kind (for
    seen, after the held-out runs), so that a score can be averaged over fits of other runs."""
    if protocol == "unseen":
        return unseen_runs(pool, n_tests, optimizer, (window + 1) * FIT_RUNS).select_runs(
            slice(window * FIT_RUNS, (window + 1) * FIT_RUNS))
    if window == 0:
        return seen_runs(pool, n_tests, optimizer, FIT_RUNS)
    first = FIT_RUNS + heldout + (window - 1) * FIT_RUNS
    return seen_runs(pool, n_tests, optimizer, first + FIT_RUNS).select_runs(slice(first, first + FIT_RUNS))


# --------------------------------------------------------------------------------------- scoring
def lds_interval(predicted: np.ndarray, observed: np.ndarray, level: float = 0.9, seed: int = 0) -> list[float]:
    """Percentile-bootstrap ``level`` interval of the LDS, resampling held-out runs."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(N_BOOT):
        index = rng.integers(0, len(observed), len(observed))
        rho, _ = spearman_across_runs(predicted[index], observed[index])
        if np.any(np.isfinite(rho)):
            values.append(np.nanmean(rho))
    return np.quantile(values, [(1 - level) / 2, (1 + level) / 2]).tolist()


def score(simulator, linear, heldout: Runs, unseen: np.ndarray | None = None) -> dict:
    """Every score of the module docstring for one fit on the held-out runs."""
    predicted = simulator.simulate(heldout.curricula, heldout.initial_losses)
    rho, _ = spearman_across_runs(predicted, heldout.losses)
    rho_linear, _ = spearman_across_runs(linear.simulate(heldout.curricula, heldout.initial_losses), heldout.losses)
    try:
        draws, predictive = study.predictive_draws(simulator, heldout, "new-run"), "new-run"
    except ValueError:  # too few runs for the guard, whose held-out residuals a new run's discrepancy is
        draws, predictive = study.predictive_draws(simulator, heldout, "noise"), "noise"
    finite = np.isfinite(draws).all(axis=(1, 2, 3))  # a draw whose roll-out overflowed somewhere
    if not finite.all():
        print(f"{(~finite).mean():.1%} of the new-run draws are not finite; scored as misses", flush=True)
    parameters = study.predictive_draws(simulator, heldout, "parameters")
    scores = study.calibration_scores(draws, heldout.losses, mean_draws=parameters)
    final_draws, final = draws[:, :, -1, :].reshape(len(draws), -1), heldout.losses[:, -1, :].reshape(-1)
    result = {"predictive": predictive, "nonfinite_draws": float(1 - finite.mean()), "lds": float(np.nanmean(rho)), "lds_interval": lds_interval(predicted, heldout.losses),
              "lds_per_test": rho.tolist(), "lds_linear": float(np.nanmean(rho_linear)),
              "sharpness": float(scale.sharpness({"predictive": {"new-run": scores}}, heldout)),
              "final_coverage_90": study.interval_coverage(final_draws, final, 0.9),
              "final_coverage_50": study.interval_coverage(final_draws, final, 0.5),
              **{key: scores[key] for key in ("diff_coverage_90", "diff_coverage_50", "diff_width_90", "brier",
                                              "ordering_accuracy", "q_correlation", "pairs", "pairs_gap")}}
    residuals = getattr(simulator, "run_residuals", None)
    if residuals is not None:  # what sets a new run's discrepancy, against what the fit really misses by
        result["guard_residual_sd"] = float(np.std(np.asarray(residuals)[:, -1].mean(-1), ddof=1))
    miss = heldout.losses[:, -1].mean(-1) - predicted[:, -1].mean(-1)
    result["heldout_miss_sd"], result["heldout_miss_mean"] = float(np.std(miss, ddof=1)), float(miss.mean())
    result["heldout_miss"] = miss.tolist()  # per run, to compare two fits' misses of the same runs
    result["heldout_mean_final_loss"] = float(heldout.losses[:, -1].mean())
    # what the parameters alone leave uncertain in a run's mean final loss (mean over runs of its sd)
    result["parameter_sd"] = float(parameters[:, :, -1].mean(-1).std(0, ddof=1).mean())
    if unseen is not None:
        used = np.isin(heldout.curricula, unseen).any(-1).sum(-1)  # steps with an unseen example, per run
        result["heldout_unseen_examples"] = float(np.mean([np.isin(unseen, c).sum() for c in heldout.curricula]))
        result["heldout_steps_with_unseen"] = float(used.mean())
    return result


def feature_alone_lds(pair_features: np.ndarray, heldout: Runs) -> float:
    """LDS of the step feature with no fit: a held-out run's final loss on test example ``m``
    predicted by minus the sum, over the run's batch slots, of ``pair_features[m, i, 1]`` (the
    reference run's optimiser-step TracIn); the bar a fit with the features should clear."""
    counts = dense_counts(heldout.curricula, heldout.n_train).sum(axis=1)  # [runs, n_train]
    predicted = np.zeros_like(heldout.losses)
    predicted[:, -1] = -(counts @ pair_features[:, :, 1].T)
    rho, _ = spearman_across_runs(predicted, heldout.losses)
    return float(np.nanmean(rho))


def fit_and_score(train: Runs, heldout: Runs, method: str, options: dict, features: bool,
                  unseen: np.ndarray | None = None, matched: Runs | None = None) -> dict:
    """Fit ``method`` (features on or off) and ``linear`` on ``train``, score on ``heldout`` (and, under
    ``result["matched"]``, on the held-out runs ``matched`` of the fitted runs' kind where given)."""
    import bayes_simfluence as bsf

    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        simulator = bsf.fit(train, method=method, seed=0, features=features, progress=False, **options)
    seconds = time.perf_counter() - start
    linear = bsf.fit(train, method="linear", seed=0)
    result = score(simulator, linear, heldout, unseen)
    if matched is not None:
        result["matched"] = {**score(simulator, linear, matched, unseen), "heldout_runs": matched.n_runs}
    used = np.unique(train.curricula[train.curricula >= 0])
    result.update(fit_seconds=seconds, path=getattr(simulator, "name", method), features=features,
                  fit_runs=train.n_runs, heldout_runs=heldout.n_runs, examples_unused=int(train.n_train - len(used)),
                  warnings=sorted({str(w.message)[:300] for w in caught}))
    if "variant_check" in getattr(simulator, "info", {}):  # -o variant=auto: what the guard chose
        result["variant_chosen"] = simulator.info["variant_check"]["chosen"]
        result["variant_check"] = simulator.info["variant_check"]
    return result


# ---------------------------------------------------------------------------------------- output
def _row(row: dict) -> str:
    low, high = row["lds_interval"]
    sharp = "n/a" if row["sharpness"] != row["sharpness"] else f"{row['sharpness']:.2f}"
    sharp += "" if row["predictive"] == "new-run" else " *"
    if row.get("nonfinite_draws"):
        sharp += f" ({row['nonfinite_draws']:.0%} of draws not finite)"
    features = "yes" if row["features"] else "no"
    if row.get("variant_chosen"):
        features += f", chose `{row['variant_chosen']}`"
    elif _variant(row) == "auto":  # too few runs for the guard: auto falls back to linear
        features += ", `linear` (no guard)"
    runs = f"{row['fit_runs']}" + (f" (window {row['window']})" if row.get("window") else "")
    return (f"| {runs} | {features} | {row['lds']:.3f} [{low:.3f}, {high:.3f}] | "
            f"{row['lds_linear']:.3f} | {row['diff_coverage_90']:.2f} / {row['diff_coverage_50']:.2f} | {sharp} | "
            f"{row['brier']:.3f} | {row['final_coverage_90']:.2f} / {row['final_coverage_50']:.2f} | "
            f"{row['fit_seconds']:.0f} |")


def _variant(row: dict) -> str:
    return row["options"].get("variant", "linear")


def model_label(options: dict) -> str:
    """What a set's model is, besides this script's default (variant ``linear``, no optimiser memory):
    ``""`` for that, else e.g. ``"auto"`` or ``"memory-geometric"``; part of row keys and figure names."""
    parts = [] if options.get("variant", "linear") == "linear" else [options["variant"]]
    if options.get("memory", "none") != "none":
        parts.append(f"memory-{options['memory']}")
    return "_".join(parts)


def _model(row: dict) -> str:
    return model_label(row["options"])


def figure_name(pool: int, optimizer: str, model: str) -> str:
    """The runs-needed figure of one set (the first, pool 200 under SGD, keeps the plain name)."""
    parts = ([] if pool == 200 else [str(pool)]) + ([] if optimizer == "sgd" else [optimizer]) \
        + ([model] if model else [])
    return "_".join(["runs_needed", *parts]) + ".png"


HEADER = ["| runs | features | LDS [90% bootstrap over held-out runs] | LDS linear | diff cover 90 / 50 | sharpness | "
          "Brier | final-loss cover 90 / 50 | fit s |", "|---|---|---|---|---|---|---|---|---|"]


def markdown(rows: dict) -> str:
    lines = ["# Runs needed, with and without features (issue 30)", "",
             "`experiments/runs_needed.py` (its docstring has the protocol): the scale study's MLP on random 80% "
             "subsets of the pool, fitted on the first `runs` runs with the feature prior on (label, 4 principal "
             "components; TracIn at the initial weights, and the optimiser-step TracIn, Adam-preconditioned under Adam, over 4 "
             "checkpoints of one reference run) or off, scored "
             "on held-out runs no fit saw. Sharpness: 90% difference-interval width over the width if the fit knew "
             "nothing (below 1: the intervals say something). Cover: the share of retrained values inside the "
             "new-run predictive's central intervals (500 draws), of pairwise differences of the per-run mean final "
             "loss and of each (run, test example) final loss.", ""]
    sets = sorted({(r["pool"], r["optimizer"], _model(r)) for r in rows.values()},
                  key=lambda s: (s[0], s[1] != "sgd", s[2] != "", s[2]))
    for pool, optimizer, model in sets:
        chosen = [r for r in rows.values() if (r["pool"], r["optimizer"], _model(r)) == (pool, optimizer, model)]
        first = chosen[0]
        training = {"sgd": "plain SGD", "adam": "Adam + dropout"}[optimizer]
        variant, memory = first["options"].get("variant", "linear"), first["options"].get("memory", "none")
        heading = f"## Pool {pool}, {training}" + ("" if variant == "linear" else f", variant `{variant}`") \
            + ("" if memory == "none" else f", optimiser memory `{memory}`")
        lines += [heading, "",
                  "Command: " + ", ".join(f"`{c}`" for c in sorted({r["command"] for r in chosen}))
                  + f". Method `{first['method']}` (ran `{first['path']}`), options "
                  f"`{json.dumps(first['options'])}`; {first['heldout_runs']} held-out runs "
                  f"({first['pairs']} pairs), {first['tests']} test examples; features computed in "
                  f"{first['feature_seconds']:.1f} s; "
                  + ("" if "feature_alone_lds" not in first else "the step feature alone, with no fit, ranks the "
                     f"held-out runs at LDS {first['feature_alone_lds']:.3f} (`feature_alone_lds`); ")
                  + "library version "
                  + ", ".join(f"`{v}`" for v in sorted({r.get("library_version", LIBRARY) for r in chosen})) + ".",
                  ""]
        if any(r["predictive"] != "new-run" for r in chosen):
            lines += ["Rows whose sharpness is marked * score the `noise` predictive: with so few runs the fit has no "
                      "guard, whose held-out residuals are a new run's discrepancy.", ""]
        seen = sorted((r for r in chosen if r["protocol"] == "seen"),
                      key=lambda r: (r["fit_runs"], r["features"], r.get("window", 0)))
        if seen:
            lines += ["### All examples seen", "", *HEADER, *(_row(row) for row in seen)]
        unseen = sorted((r for r in chosen if r["protocol"] == "unseen"), key=lambda r: (r["features"], r.get("window", 0)))
        if unseen:
            row = unseen[0]
            lines += ["", "### Unseen data", "",
                      f"{len(row['unseen'])} examples of the pool (a fixed random 20%) in no fitted run; the fitted "
                      f"runs train on random 80% subsets of the other {pool - len(row['unseen'])}; the same held-out "
                      f"runs as above, each with {row['heldout_unseen_examples']:.1f} unseen examples on average, "
                      f"in {row['heldout_steps_with_unseen']:.0f} of its {first.get('steps', 120)} steps. Compare "
                      "with the all-seen rows of the same number of runs.", "", *HEADER]
            lines += [_row(r) for r in unseen]
            matched = [{**r, **r["matched"]} for r in unseen if "matched" in r]
            if matched:
                lines += ["", f"Scored instead on {matched[0]['heldout_runs']} held-out runs of the fitted runs' kind "
                          "(`matched_heldout_runs`: each on a random 80% of a random 80% of the whole pool, as many "
                          "distinct examples as a fitted run, as in GPTfluence's 128 of 200), each with "
                          f"{matched[0]['heldout_unseen_examples']:.1f} unseen examples on average:", "", *HEADER]
                lines += [_row(r) for r in matched]
        lines += over_windows(chosen)
        warned = sorted({w for r in chosen for w in r["warnings"]})
        if warned:
            lines += ["", "Warnings of the fits: " + "; ".join(f"`{w}`" for w in warned)]
        lines += ["", f"![runs needed]({figure_name(pool, optimizer, model)})", ""] if seen else [""]
    return "\n".join(lines) + "\n"


def over_windows(chosen: list[dict]) -> list[str]:
    """Markdown lines: the mean over fit windows of the 40-run rows of each protocol and feature
    setting fitted in more than one window, with the run discrepancy's spread (the guard's held-out
    residual sd of the per-run mean final loss) against the fit's real miss on the held-out runs."""
    groups = {}
    for row in chosen:
        if row["fit_runs"] == FIT_RUNS:
            groups.setdefault((row["protocol"], row["features"]), []).append(row)
            if "matched" in row:
                groups.setdefault(("unseen, matched held-out", row["features"]), []).append({**row, **row["matched"]})
    groups = {key: rows for key, rows in groups.items() if len(rows) > 1}
    if not groups:
        return []
    lines = ["", "### Over fit windows", "",
             f"Each window fits {FIT_RUNS} other runs of its protocol (window 0: the rows above; `--windows`) and is "
             "scored on the same held-out runs: the mean over windows, with the range in brackets. Run discrepancy: "
             "the sd over the guard's held-out runs of their residual mean final loss (what sets a new run's "
             "discrepancy), beside the sd of the final fit's miss of the held-out runs' mean final loss.", "",
             "| protocol | features | windows | LDS | diff cover 90 | diff cover 50 | sharpness | Brier | "
             "final-loss cover 90 | run discrepancy sd / real miss sd |", "|---|---|---|---|---|---|---|---|---|---|"]

    def cell(rows: list[dict], key: str, digits: int = 2) -> str:
        values = np.array([r[key] for r in rows if key in r])
        return f"{values.mean():.{digits}f} ({values.min():.{digits}f}-{values.max():.{digits}f})"

    for (protocol, features), rows in sorted(groups.items()):
        windows = ", ".join(str(r.get("window", 0)) for r in sorted(rows, key=lambda r: r.get("window", 0)))
        spread = " / ".join(cell(rows, key, 3) for key in ("guard_residual_sd", "heldout_miss_sd")) \
            if all("guard_residual_sd" in r for r in rows) else "-"
        lines.append(f"| {protocol} | {'yes' if features else 'no'} | {windows} | {cell(rows, 'lds', 3)} | "
                     f"{cell(rows, 'diff_coverage_90')} | {cell(rows, 'diff_coverage_50')} | {cell(rows, 'sharpness')} | "
                     f"{cell(rows, 'brier', 3)} | {cell(rows, 'final_coverage_90')} | {spread} |")
    return lines


def plot(rows: dict, pool: int, optimizer: str, path: Path) -> None:
    """LDS (with its bootstrap interval) and sharpness against runs, with and without features (window 0)."""
    rows = {key: row for key, row in rows.items() if not row.get("window")}
    if not any(r["protocol"] == "seen" for r in rows.values()):
        return  # nothing to draw against runs
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for features, colour in ((False, "tab:blue"), (True, "tab:orange")):
        chosen = sorted((r for r in rows.values() if (r["pool"], r["optimizer"], r["protocol"], r["features"])
                         == (pool, optimizer, "seen", features)), key=lambda r: r["fit_runs"])
        if not chosen:
            continue
        n = np.array([r["fit_runs"] for r in chosen]) * (1.04 if features else 1 / 1.04)  # side by side
        lds = np.array([r["lds"] for r in chosen])
        interval = np.array([r["lds_interval"] for r in chosen])
        label = "with features" if features else "without features"
        left.errorbar(n, lds, yerr=[lds - interval[:, 0], interval[:, 1] - lds], marker="o", capsize=3,
                      color=colour, label=label)
        right.plot(n, [r["sharpness"] for r in chosen], marker="o", color=colour, label=label)
        for row in rows.values():
            if (row["pool"], row["optimizer"], row["protocol"], row["features"]) == (pool, optimizer, "unseen", features):
                shift = 1.04 if features else 1 / 1.04
                left.plot(row["fit_runs"] * shift, row["lds"], marker="x", markersize=9, linestyle="none", color=colour,
                          label=f"unseen 20%, {label}")
                right.plot(row["fit_runs"] * shift, row["sharpness"], marker="x", markersize=9, linestyle="none",
                           color=colour)
    chosen = sorted((r for r in rows.values() if (r["pool"], r["optimizer"], r["protocol"], r["features"])
                     == (pool, optimizer, "seen", False)), key=lambda r: r["fit_runs"])
    if chosen:
        left.plot([r["fit_runs"] for r in chosen], [r["lds_linear"] for r in chosen], linestyle="--", color="grey",
                  label="linear (ridge), no features")
    ticks = sorted({r["fit_runs"] for r in rows.values() if (r["pool"], r["optimizer"]) == (pool, optimizer)})
    for axis in (left, right):
        axis.set_xscale("log", base=2)
        axis.set_xticks(ticks, [str(t) for t in ticks])
        axis.minorticks_off()
        axis.set_xlabel("fitted runs")
    left.set_ylabel("LDS (Spearman across held-out runs)")
    right.set_ylabel("sharpness (1: knows nothing)")
    right.axhline(1, color="grey", linewidth=0.8)
    figure.legend(*left.get_legend_handles_labels(), fontsize=7, loc="lower center", ncol=5, frameon=False)
    training = {"sgd": "plain SGD", "adam": "Adam + dropout"}[optimizer]
    figure.suptitle(f"Runs needed: pool {pool}, {training}", fontsize=10)
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def redraw() -> None:
    """Rewrite ``runs_needed.md`` and every set's figure from ``runs_needed.json`` (adding
    :func:`feature_alone_lds` to the sets' rows that lack it, from the cached runs)."""
    path = RESULTS / "runs_needed.json"
    rows = json.loads(path.read_text())
    for pool, tests, optimizer in {(r["pool"], r["tests"], r["optimizer"]) for r in rows.values()}:
        chosen = [r for r in rows.values() if (r["pool"], r["tests"], r["optimizer"]) == (pool, tests, optimizer)]
        if any("feature_alone_lds" not in r for r in chosen):
            heldout = seen_runs(pool, tests, optimizer, FIT_RUNS + chosen[0]["heldout_runs"]).select_runs(
                slice(FIT_RUNS, FIT_RUNS + chosen[0]["heldout_runs"]))
            value = feature_alone_lds(reference_features(pool, tests, optimizer)[1], heldout)
            for row in chosen:
                row["feature_alone_lds"] = value
    path.write_text(json.dumps(rows, indent=1, default=float) + "\n")
    (RESULTS / "runs_needed.md").write_text(markdown(rows))
    for pool, optimizer, model in {(r["pool"], r["optimizer"], _model(r)) for r in rows.values()}:
        plot({k: r for k, r in rows.items() if _model(r) == model}, pool, optimizer,
             RESULTS / figure_name(pool, optimizer, model))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", type=int, default=200, help="training examples in the pool (default 200)")
    parser.add_argument("--tests", type=int, default=10, help="test examples (default 10)")
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd",
                        help="plain SGD (default), or Adam with dropout masks that differ between runs")
    parser.add_argument("--runs", type=int, nargs="+", default=[5, 10, 20, 40],
                        help=f"fit on the first N runs, for each N (default 5 10 20 40; at most {FIT_RUNS})")
    parser.add_argument("--heldout", type=int, default=40, help="held-out runs scored (runs 40.. of the set)")
    parser.add_argument("--method", default="bayes-grid", help="the Bayesian backend (default bayes-grid; "
                        "bayes-cg also has the feature prior)")
    parser.add_argument("-o", "--option", type=study._parse_option, action="append", default=[], metavar="KEY=VALUE",
                        help="settings of the fit (default memory=none)")
    parser.add_argument("--skip-seen", action="store_true", help="only the unseen-data protocol")
    parser.add_argument("--skip-unseen", action="store_true", help="only the runs-needed rows")
    parser.add_argument("--windows", type=int, nargs="+", default=[0], metavar="K",
                        help=f"fit windows (default 0): window K >= 1 fits {FIT_RUNS} fresh runs of each protocol "
                             f"(collected if missing) instead of the first ones, {FIT_RUNS} runs only, scored on "
                             "the same held-out runs: how much a score depends on which runs the fit saw")
    parser.add_argument("--features", choices=("both", "on", "off"), default="both",
                        help="fit with the feature prior, without, or both (default)")
    parser.add_argument("--redraw", action="store_true", help="only rewrite the table and every figure from the json")
    args = parser.parse_args(argv)
    if args.redraw:
        redraw()
        return
    if max(args.runs) > FIT_RUNS:
        parser.error(f"--runs: at most {FIT_RUNS}")
    options = {"memory": "none", **dict(args.option)}
    model = model_label(options)
    command = shlex.join(["python", "experiments/runs_needed.py", *(sys.argv[1:] if argv is None else argv)])
    runs = seen_runs(args.pool, args.tests, args.optimizer, FIT_RUNS + args.heldout)
    heldout = runs.select_runs(slice(FIT_RUNS, FIT_RUNS + args.heldout))
    start = time.perf_counter()
    train_features, pair_features = reference_features(args.pool, args.tests, args.optimizer)
    feature_seconds = time.perf_counter() - start
    out = RESULTS / "runs_needed.json"
    mine = {}
    common = {"pool": args.pool, "optimizer": args.optimizer, "tests": args.tests, "method": args.method,
              "options": options, "command": command, "feature_seconds": feature_seconds, "steps": runs.n_steps,
              "library_version": study._library_version(),
              "feature_alone_lds": feature_alone_lds(pair_features, heldout),
              "train_features": "label, 4 principal components of the inputs",
              "pair_features": f"TracIn at the initial weights; lr x optimiser-step TracIn (Adam-preconditioned "
                               f"under Adam) summed over steps {list(CHECKPOINTS)} of one reference run on the whole pool"}
    # the most runs first, then the unseen protocol, then fewer runs: an interrupted study keeps the main rows
    order = sorted(set(args.runs), reverse=True)
    settings = {"both": (False, True), "on": (True,), "off": (False,)}[args.features]
    jobs = []
    for window in args.windows:
        counts = order if window == 0 else [FIT_RUNS]
        seen = [] if args.skip_seen else [("seen", n, features) for n in counts for features in settings]
        unseen_jobs = [] if args.skip_unseen else [("unseen", FIT_RUNS, f) for f in sorted(settings, reverse=True)]
        jobs += [(window, *job) for job in seen[:len(settings)] + unseen_jobs + seen[len(settings):]]
    unseen = unseen_examples(args.pool)
    matched = None if args.skip_unseen else matched_heldout_runs(args.pool, args.tests, args.optimizer, args.heldout)
    for window, protocol, n, features in jobs:
        source = fit_window(protocol, window, args.pool, args.tests, args.optimizer, args.heldout)
        train = source.select_runs(slice(0, n)).with_features(train_features=train_features,
                                                               pair_features=pair_features)
        result = fit_and_score(train, heldout, args.method, options, features,
                               *((unseen, matched) if protocol == "unseen" else ()))
        result.update(common, protocol=protocol, window=window)
        if protocol == "unseen":
            result["unseen"] = unseen.tolist()
        key = f"{args.pool}_{args.optimizer}_{protocol}_{n}_{'features' if features else 'plain'}"
        if model:
            key += f"_{model}"
        if window:
            key += f"_w{window}"
        mine[key] = result
        rows = {**(json.loads(out.read_text()) if out.exists() else {}), **mine}  # others may have written since
        print(f"{key}: LDS {result['lds']:.3f} {result['lds_interval']}, cover {result['diff_coverage_90']:.2f}/"
              f"{result['diff_coverage_50']:.2f}, sharpness {result['sharpness']:.2f}, Brier {result['brier']:.3f}, "
              f"fit {result['fit_seconds']:.0f} s", flush=True)
        out.write_text(json.dumps(rows, indent=1, default=float) + "\n")  # kept after every fit
        (RESULTS / "runs_needed.md").write_text(markdown(rows))
        plot({k: r for k, r in rows.items() if _model(r) == model}, args.pool, args.optimizer,
             RESULTS / figure_name(args.pool, args.optimizer, model))


if __name__ == "__main__":
    main()
