"""Calibration against real retraining at larger pools: coverage *and* sharpness.

    python experiments/scale_study.py --pool 200 --method bayes-cg [--method bayes-svi ...] [--optimizer adam]
        [--features] [-o KEY=VALUE ...] [--windows 0 1 2 3]

The random-subset protocol of ``experiments/retraining_study.py`` on a real network that trains in
a fraction of a second, so that pools of hundreds of examples and hundreds of runs fit on two CPU
cores: a 16-32-2 tanh MLP (PyTorch) on a two-class Gaussian mixture with 10% flipped labels, plain
SGD (lr 0.1, batch 4) or ``--optimizer adam`` (Adam, lr 0.003, with dropout 0.2 on the hidden layer
whose masks differ between runs: seed noise the curriculum does not explain), the same initial
weights in every run; every run trains on a random 80% of
the pool in a fresh random order each epoch, for 120 steps; its losses on ``--tests`` held-out
examples are logged at every step. Each method is fitted on the first ``--fit-runs`` runs and scored
on the next ``--heldout-runs`` (:func:`retraining_study.study_set`: coverage of 50%/90% intervals of
pairwise differences of the per-run mean final loss, Brier of ``P(better)``, ordering, LDS against
``linear``), plus **sharpness**: the mean width of the 90% difference intervals divided by the
width if the fit knew nothing, ``2 x 1.645 x sqrt(2) x`` the sd across held-out runs of their
retrained mean final loss (below 1: the intervals say something).

``--features`` gives every fit the feature prior's inputs, computed from one reference run on the
whole pool without new training (:func:`runs_needed.reference_features`: the label, 4 principal
components of the inputs, TracIn at the initial weights and along the reference run); ``-o`` sets
the fits' options. Both are part of a row's key, so rows with and without them sit side by side.

The floor (:func:`seed_floor`) is the sharpness an oracle that knew each curriculum's expected
outcome would reach: under Adam with dropout, seed noise sets it. Writes
``experiments/results/scale_study.{json,md}`` (rows kept across invocations, keyed by pool, method
and window) and the runs to ``experiments/data/scale_POOL.npz``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import retraining_study as study  # noqa: E402

from bayes_simfluence.runs import Runs  # noqa: E402

RESULTS = Path(__file__).parent / "results"
DATA = Path(__file__).parent / "data"
STEPS, BATCH, LR, ADAM_LR, DROPOUT, DIM, HIDDEN, FLIP = 120, 4, 0.1, 0.003, 0.2, 16, 32, 0.1


def make_task(pool: int, n_tests: int, optimizer: str = "sgd", seed: int = 0) -> dict:
    """The data and the shared initial weights of every run: ``x_train``, ``y_train`` (``pool``
    examples), ``x_test``, ``y_test`` (``n_tests``) as tensors, ``network`` (a fresh MLP, dropout
    0.2 under Adam) and ``initial`` (its shared initial state dict)."""
    import torch

    rng = np.random.default_rng(seed)
    means = rng.normal(0, 0.6, (2, DIM))
    labels = rng.integers(0, 2, pool + n_tests)
    x = means[labels] + rng.normal(0, 1, (pool + n_tests, DIM))
    labels = np.where(rng.random(pool + n_tests) < FLIP, 1 - labels, labels)
    torch.manual_seed(seed)
    dropout = DROPOUT if optimizer == "adam" else 0.0

    def network() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(DIM, HIDDEN), torch.nn.Tanh(), torch.nn.Dropout(dropout),
                                   torch.nn.Linear(HIDDEN, 2))

    return {"x_train": torch.tensor(x[:pool], dtype=torch.float32), "y_train": torch.tensor(labels[:pool]),
            "x_test": torch.tensor(x[pool:], dtype=torch.float32), "y_test": torch.tensor(labels[pool:]),
            "network": network, "initial": network().state_dict(), "optimizer": optimizer}


def train_run(task: dict, curriculum: np.ndarray, dropout_seed: int, checkpoint=None) -> np.ndarray:
    """Train one run of ``task`` (:func:`make_task`) from its shared initial weights on ``curriculum
    [steps, batch]``; ``[steps + 1, tests]`` its test losses after every step. ``checkpoint(t, model,
    optimizer)``, if given, is called before step ``t`` (``t = 0 .. steps - 1``) and after the last
    (``t = steps``)."""
    import torch

    model = task["network"]()
    model.load_state_dict(task["initial"])
    step = torch.optim.SGD(model.parameters(), lr=LR) if task["optimizer"] == "sgd" else \
        torch.optim.Adam(model.parameters(), lr=ADAM_LR)
    torch.manual_seed(dropout_seed)  # this run's dropout masks
    loss = torch.nn.CrossEntropyLoss(reduction="none")
    losses = np.zeros((len(curriculum) + 1, len(task["y_test"])))
    model.eval()
    with torch.no_grad():
        losses[0] = loss(model(task["x_test"]), task["y_test"]).numpy()
    for t in range(len(curriculum)):
        if checkpoint is not None:
            checkpoint(t, model, step)
        batch = torch.tensor(curriculum[t], dtype=torch.long)
        model.train()
        step.zero_grad()
        loss(model(task["x_train"][batch]), task["y_train"][batch]).mean().backward()
        step.step()
        model.eval()
        with torch.no_grad():
            losses[t + 1] = loss(model(task["x_test"]), task["y_test"]).numpy()
    if checkpoint is not None:
        checkpoint(len(curriculum), model, step)
    return losses


def random_curriculum(rng: np.random.Generator, allowed: np.ndarray) -> np.ndarray:
    """``[STEPS, BATCH]``: a random 80% of the examples ``allowed``, in a fresh random order each epoch."""
    chosen = rng.choice(allowed, int(0.8 * len(allowed)), replace=False)
    order = np.concatenate([rng.permutation(chosen) for _ in range(-(-STEPS * BATCH // len(chosen)))])
    return order[: STEPS * BATCH].reshape(STEPS, BATCH)


def make_runs(pool: int, n_tests: int, n_runs: int, optimizer: str = "sgd", seed: int = 0,
              allowed: np.ndarray | None = None, first_run: int = 0) -> Runs:
    """``n_runs`` real training runs of the MLP on random 80% subsets of a pool of ``pool`` examples
    (of the examples ``allowed`` where given); run ``r`` (from ``first_run``) is seeded by ``[seed, r]``."""
    task = make_task(pool, n_tests, optimizer, seed)
    allowed = np.arange(pool) if allowed is None else np.asarray(allowed)
    curricula = np.zeros((n_runs, STEPS, BATCH), np.int32)
    losses = np.zeros((n_runs, STEPS + 1, n_tests))
    for index, r in enumerate(range(first_run, first_run + n_runs)):
        curricula[index] = random_curriculum(np.random.default_rng([seed, r]), allowed)
        losses[index] = train_run(task, curricula[index], 1000 + r)
    return Runs.create(curricula, losses, n_train=pool, meta={"source": "experiments/scale_study.py", "pool": pool,
                                                               "optimizer": optimizer, "batch": BATCH})


def sharpness(result: dict, heldout: Runs) -> float:
    """Mean width of the 90% difference intervals over the width if the fit knew nothing."""
    spread = study.run_quantity(heldout.losses).std()
    return result["predictive"]["new-run"]["diff_width_90"] / (2 * 1.645 * np.sqrt(2) * spread)


def seed_floor(pool: int, n_tests: int, optimizer: str, seed: int = 0, n_curricula: int = 8,
               n_seeds: int = 4) -> float:
    """The sharpness no curriculum model can beat: ``n_curricula`` random curricula, each retrained
    with ``n_seeds`` dropout seeds; the sd of the per-run mean final loss *within* a curriculum (seed
    noise, which no function of the curriculum predicts) over its sd *across* curricula and seeds.
    An interval that knew each curriculum's expected outcome exactly would still be this wide,
    relative to knowing nothing. 0 under plain SGD (a run is a function of its curriculum)."""
    task = make_task(pool, n_tests, optimizer, seed)
    quantity = np.zeros((n_curricula, n_seeds))
    for c in range(n_curricula):
        curriculum = random_curriculum(np.random.default_rng([seed, 10_000 + c]), np.arange(pool))
        for k in range(n_seeds):
            quantity[c, k] = study.run_quantity(train_run(task, curriculum, 50_000 + 100 * c + k))
    within = quantity.var(axis=1, ddof=1).mean()
    return float(np.sqrt(within / quantity.var(ddof=1)))


#: how each ``--optimizer`` is named in the tables
TRAINING = {"sgd": "plain SGD", "adam": "Adam + dropout"}


def point_sharpness(row: dict) -> float:
    """RMSE of a row's predicted mean differences over the sd of the retrained ones: about the
    sharpness of intervals calibrated around the fit's own predictions."""
    scores = row["predictive"]["new-run"]
    return scores["diff_rmse"] / scores["diff_sd"]


def method_label(row: dict) -> str:
    """The method of a row with its settings other than ``progress`` (``-o``), and ``+ features`` where
    the fit had the feature prior."""
    settings = [f"{k}={v}" for k, v in sorted(row.get("options", {}).items()) if k != "progress"]
    return row["method"] + "".join(f" {s}" for s in settings) + (" + features" if row.get("features") else "")


def markdown(rows: dict) -> str:
    lines = ["# Calibration at larger pools: coverage and sharpness", "",
             "`python experiments/scale_study.py --pool P --method M [--optimizer adam]`: a real MLP on random 80% "
             "subsets (module docstring); new-run predictive of the per-run mean final loss, pairwise differences "
             "over held-out runs. Sharpness: 90% interval width over the width if the fit knew nothing; floor: the "
             "sharpness of an oracle that knew each curriculum's expected outcome (seed noise, `seed_floor`; "
             "- where not measured); point: the RMSE of the predicted mean differences over the sd of the retrained "
             "ones, about the sharpness of calibrated intervals centred on the fit's predictions.", "",
             "| pool | training | method (path) | fit / held-out runs | tests | fit s | LDS (linear) | 90% cover | 50% cover | "
             "sharpness (floor, point) | Brier (coin 0.25) | ordering, gap > 0.02 |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in sorted((r for r in rows.values() if not r.get("window")),
                      key=lambda r: (r["pool"], r.get("optimizer", "sgd"), method_label(r))):
        p = row["predictive"]["new-run"]
        training = TRAINING[row.get("optimizer", "sgd")]
        floor = "-" if row.get("seed_floor") is None else f"{row['seed_floor']:.2f}"
        lines.append(f"| {row['pool']} | {training} | {method_label(row)} ({row['path']}) | {row['fit_runs']} / {row['heldout_runs']} | "
                     f"{row['tests']} | {row['fit_seconds']:.0f} | {row['lds']:.3f} ({row['lds_linear']:.3f}) | "
                     f"{p['diff_coverage_90']:.2f} | {p['diff_coverage_50']:.2f} | {row['sharpness']:.2f} ({floor}, {point_sharpness(row):.2f}) | "
                     f"{p['brier']:.3f} | {p['ordering_accuracy']:.2f} ({p['pairs_gap']} pairs) |")
    return "\n".join(lines + windows_markdown(rows)) + "\n"


def windows_markdown(rows: dict) -> list[str]:
    """Markdown: per set and method fitted on several windows, each score's mean over the windows
    with its range (how much a score depends on which 40 runs the fit saw)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows.values():
        groups.setdefault((row["pool"], row.get("optimizer", "sgd"), method_label(row)), []).append(row)
    groups = {key: found for key, found in groups.items() if len({r.get("window", 0) for r in found}) > 1}
    if not groups:
        return []
    scores = (("90% cover", lambda r: r["predictive"]["new-run"]["diff_coverage_90"]),
              ("50% cover", lambda r: r["predictive"]["new-run"]["diff_coverage_50"]),
              ("sharpness", lambda r: r["sharpness"]),
              ("point", point_sharpness),
              ("Brier", lambda r: r["predictive"]["new-run"]["brier"]),
              ("ordering", lambda r: r["predictive"]["new-run"]["ordering_accuracy"]),
              ("LDS", lambda r: r["lds"]), ("LDS linear", lambda r: r["lds_linear"]))
    lines = ["", "Over fit windows (`--windows 0 1 2 3`: window W fits runs 40W to 40W + 39 and is scored on the "
             "other 120): mean over the windows, range in brackets.", "",
             "| pool | training | method | windows | " + " | ".join(name for name, _ in scores)
             + " | LDS - linear: mean; windows whose paired 90% interval is below / above 0 |",
             "|---|---|---|---|" + "---|" * (len(scores) + 1)]
    for (pool, optimizer, method), found in sorted(groups.items()):
        cells = []
        for _, score in scores:
            values = np.array([score(r) for r in found])
            cells.append(f"{values.mean():.2f} ({values.min():.2f}-{values.max():.2f})")
        lines.append(f"| {pool} | {TRAINING[optimizer]} | {method} | {len(found)} | " + " | ".join(cells)
                     + f" | {below_linear(found)} |")
    return lines


def below_linear(found: list[dict]) -> str:
    """A cell: the mean over windows of LDS minus the ridge ``linear``'s, and in how many windows the
    paired 90% bootstrap interval of that difference (``lds_minus_linear``, resampling held-out runs)
    lies below 0 (or above); ``-`` where the rows predate it."""
    intervals = [r["lds_minus_linear"] for r in found if r.get("lds_minus_linear")]
    if len(intervals) < len(found):
        return "-"
    differences, lows, highs = np.array(intervals).T
    return (f"{differences.mean():+.3f}; below in {int((highs < 0).sum())}, above in {int((lows > 0).sum())} "
            f"of {len(found)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=int, default=200, help="training examples in the pool (default 200)")
    parser.add_argument("--tests", type=int, default=10, help="test examples (default 10)")
    parser.add_argument("--fit-runs", type=int, default=40)
    parser.add_argument("--heldout-runs", type=int, default=120)
    parser.add_argument("--method", action="append", help="methods to fit (repeatable; default bayes)")
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd",
                        help="plain SGD, or Adam with dropout masks that differ between runs")
    parser.add_argument("-o", "--option", type=study._parse_option, action="append", default=[], metavar="KEY=VALUE",
                        help="settings of every fit (e.g. memory=none); rows keyed apart")
    parser.add_argument("--features", action="store_true",
                        help="give the fit the feature prior's inputs (runs_needed.reference_features: label, "
                             "4 principal components, TracIn of the reference run); rows keyed apart")
    parser.add_argument("--windows", type=int, nargs="+", default=[0], metavar="W",
                        help="fit windows (retraining_study.window_runs: window W fits runs 40W..40W+39 and "
                             "scores every other run; default 0)")
    args = parser.parse_args(argv)
    name = f"scale_{args.pool}_{args.optimizer}_tests{args.tests}"
    path = DATA / f"{name}.npz"
    n_runs = args.fit_runs + args.heldout_runs
    runs = Runs.load(path) if path.exists() else None
    if runs is None or runs.n_runs < n_runs:
        start = time.perf_counter()
        runs = make_runs(args.pool, args.tests, n_runs, args.optimizer)
        runs.save(path)
        print(f"collected {n_runs} runs in {time.perf_counter() - start:.0f} s", flush=True)
    runs = runs.select_runs(slice(0, n_runs))
    if args.features:
        from runs_needed import reference_features  # it imports this module

        train_features, pair_features = reference_features(args.pool, args.tests, args.optimizer)
        runs = runs.with_features(train_features=train_features, pair_features=pair_features)
    out = RESULTS / "scale_study.json"
    rows = json.loads(out.read_text()) if out.exists() else {}
    options = dict(args.option)
    library = study._library_version()
    floor = seed_floor(args.pool, args.tests, args.optimizer)
    print(f"seed-noise floor of the sharpness: {floor:.2f}", flush=True)
    for method in args.method or ["bayes"]:
        for window in args.windows:
            result = study.study_set(name, runs, args.fit_runs, args.heldout_runs, method,
                                     {"progress": False, **options}, window)
            heldout = runs.select_runs(study.window_runs(window, args.fit_runs, args.heldout_runs)[1])
            result["sharpness"] = sharpness(result, heldout)
            result["optimizer"] = args.optimizer
            result["seed_floor"] = floor
            result["features"] = args.features
            result["library_version"] = library
            key = (f"{name}_{method}" + "".join(f"_{k}-{v}" for k, v in sorted(options.items()))
                   + ("_features" if args.features else "") + (f"_window{window}" if window else ""))
            rows[key] = result
            print(f"pool {args.pool} {method} window {window}: sharpness {result['sharpness']:.2f}", flush=True)
            out.write_text(json.dumps(rows, indent=1, default=float))
            (RESULTS / "scale_study.md").write_text(markdown(rows))


if __name__ == "__main__":
    main()
