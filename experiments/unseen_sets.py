"""Unseen data, replicated over which examples are unseen (issue 30).

    python experiments/unseen_sets.py [--pool 200] [--optimizer sgd|adam] [--sets 0 1 2 3 4 5 6 7]
                                      [--features on|off|both] [--method bayes-grid] [-o KEY=VALUE ...]

``experiments/runs_needed.py``'s unseen-data protocol holds one fixed random 20% of the pool out of
every fitted run, and its fit windows all share that set: four windows are four fits on other runs,
but one draw of *which* examples are new. A curriculum's shift from examples the fit never saw is
one number per set (their summed effects' error), shared by every held-out run that uses them, so
coverage averaged over windows of one set says little about coverage over sets.

Here each unseen set ``k`` (``runs_needed.unseen_examples(pool, k)``; set 0 is the runs-needed
study's) has its own 40 fitted runs (random 80% subsets of the other 80% of the pool, cached in
``experiments/data/runs_needed_unseen_POOL_OPT[_setK]_tests10.npz``). Each fit (the features of
``runs_needed.reference_features``, on or off) is scored, with ``runs_needed.score``, on the same
two kinds of held-out runs for every set:

- ``matched``: 40 runs of the fitted runs' kind (each on a random 80% of a random 80% of the whole
  pool: as many distinct examples as a fitted run, about 26 unseen ones; ``matched_heldout_runs``);
- ``pool``: the 40 held-out runs of the scale study (random 80% subsets of the whole pool, about
  32 unseen examples each, 160 distinct examples, more than any fitted run has).

The **control** (``--control``) is the runs-needed study's all-seen fit (window 0: 40 runs on random
80% subsets of the whole pool, no example unseen) scored on the same held-out runs: what a fit that
saw every example misses on them, so that what the unseen examples cost is told apart from what the
held-out runs' kind costs (matched runs have 128 distinct examples each, the all-seen fitted runs
160). Reported per set and as the mean (range) over sets: coverage of the 90% intervals of each (run, test
example) final loss and of the pairwise differences of the per-run mean final loss, LDS, and the
fit's miss of the held-out runs' mean final loss: its mean (the set's shared shift) and sd, beside
the run discrepancy's sd (``guard_residual_sd``); and, against the control on the same runs, the
correlation of the two fits' per-run misses and the sd of their difference (the part of the miss the
unseen examples cause) beside the fit's parameter sd (:func:`against_control`); across sets, the
unseen examples' change of the mean final loss against the fits' prediction of it
(:func:`aggregate_effect`). Writes ``experiments/results/unseen_sets.{json,md}``
(rows keyed by pool, optimizer, features, variant and set, kept across invocations).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import retraining_study as study  # noqa: E402
import runs_needed as rn  # noqa: E402

RESULTS = Path(__file__).parent / "results"
#: the held-out kinds a fit is scored on, as named in the tables
KINDS = {"matched": "of the fitted runs' kind (matched)", "pool": "on the whole pool"}
#: the per-set scores of the tables: (json key, column title, digits)
COLUMNS = (("final_coverage_90", "final-loss cover 90", 2), ("diff_coverage_90", "diff cover 90", 2),
           ("diff_coverage_50", "diff cover 50", 2), ("lds", "LDS", 3), ("heldout_miss_mean", "miss mean", 3),
           ("heldout_miss_sd", "miss sd", 3), ("guard_residual_sd", "run discrepancy sd", 3),
           ("control_miss_correlation", "miss corr. with control's", 2), ("unseen_miss_sd", "sd of miss - control's", 3),
           ("parameter_sd", "parameter sd", 3))


#: the ``unseen_set`` of the control rows (every example seen)
CONTROL = -1


def row_key(pool: int, optimizer: str, features: bool, variant: str, unseen_set: int) -> str:
    key = f"{pool}_{optimizer}_{'features' if features else 'plain'}"
    return key + (f"_{variant}" if variant != "linear" else "") + (
        "_control" if unseen_set == CONTROL else f"_set{unseen_set}")


def scored_kinds(result: dict) -> dict[str, dict]:
    """``{"matched": scores, "pool": scores}`` of one :func:`runs_needed.fit_and_score` result."""
    return {"matched": result["matched"], "pool": {k: v for k, v in result.items() if k != "matched"}}


def against_control(scores: dict, control: dict | None) -> dict:
    """``scores`` with what the unseen examples add to the miss, where the control (the all-seen fit)
    was scored on the same held-out runs: the correlation of the two fits' per-run misses
    (``control_miss_correlation``) and the sd over runs of their difference (``unseen_miss_sd``: the
    part of the miss the fit's not seeing its unseen examples causes, to set beside its
    ``parameter_sd``, the spread its parameters give a run's mean final loss)."""
    if control is None or "heldout_miss" not in scores or "heldout_miss" not in control:
        return scores
    own, theirs = np.asarray(scores["heldout_miss"]), np.asarray(control["heldout_miss"])
    return {**scores, "control_miss_correlation": float(np.corrcoef(own, theirs)[0, 1]),
            "unseen_miss_sd": float(np.std(own - theirs, ddof=1))}


def aggregate_effect(rows: list[dict], kind: str = "matched") -> dict | None:
    """What a set's unseen examples do in aggregate, against what the fits predict, across sets.

    Each set's fitted runs lack its examples, so their mean final loss is that set's baseline; the
    held-out runs (the same for every set) use about two thirds of them. Per set, the *actual*
    change is the held-out runs' mean final loss less the baseline, the *predicted* one the fit's
    predicted mean less the baseline. Returns the least-squares slope of actual on predicted and
    their correlation over sets (both 1 where the fits predict the unseen examples' aggregate
    effect), or None with fewer than 3 sets that carry the numbers."""
    sets = [r for r in rows if r["unseen_set"] != CONTROL and "fitted_mean_final_loss" in r
            and "heldout_mean_final_loss" in scored_kinds(r)[kind]]
    if len(sets) < 3:
        return None
    scores = [scored_kinds(r)[kind] for r in sets]
    baseline = np.array([r["fitted_mean_final_loss"] for r in sets])
    actual = np.array([s["heldout_mean_final_loss"] for s in scores]) - baseline
    predicted = actual - np.array([s["heldout_miss_mean"] for s in scores])
    return {"sets": len(sets), "slope": float(np.polyfit(predicted, actual, 1)[0]),
            "correlation": float(np.corrcoef(predicted, actual)[0, 1]),
            "actual_range": [float(actual.min()), float(actual.max())]}


def summary_lines(rows: list[dict]) -> list[str]:
    """The table of one (pool, optimizer, features, variant) group: a line per set and kind, then the
    mean (range) over sets per kind."""
    header = "| unseen set | held-out runs | " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 2)]
    control = [r for r in rows if r["unseen_set"] == CONTROL]
    rows = sorted((r for r in rows if r["unseen_set"] != CONTROL), key=lambda r: r["unseen_set"])
    for kind in KINDS:
        reference = scored_kinds(control[0])[kind] if control else None
        per_set = [against_control(scored_kinds(row)[kind], reference) for row in rows]
        for row, scores in zip(rows + control, per_set + [scored_kinds(row)[kind] for row in control]):
            cells = [f"{scores[key]:.{digits}f}" if key in scores else "-" for key, _, digits in COLUMNS]
            name = "none (control)" if row["unseen_set"] == CONTROL else row["unseen_set"]
            lines.append(f"| {name} | {kind} | " + " | ".join(cells) + " |")
        if len(rows) > 1:
            cells = []
            for key, _, digits in COLUMNS:
                values = np.array([scores[key] for scores in per_set if key in scores])
                cells.append(f"**{values.mean():.{digits}f}** ({values.min():.{digits}f}-{values.max():.{digits}f})"
                             if values.size else "-")
            lines.append(f"| mean of {len(rows)} | {kind} | " + " | ".join(cells) + " |")
    return lines


def markdown(rows: dict) -> str:
    lines = ["# Unseen data over unseen sets (issue 30)", "",
             "`experiments/unseen_sets.py` (its docstring has the protocol): each unseen set is another random "
             "20% of the pool held out of 40 fitted runs of its own; every fit is scored on the same held-out "
             "runs, of the fitted runs' kind (`matched`) and on the whole pool (`pool`). Miss: held-out mean "
             "final loss minus the fit's prediction (mean: the shift the set's unseen examples share; sd: its "
             "spread over runs), beside the run discrepancy's sd (what the new-run predictive adds). Against the "
             "control (the all-seen fit, on the same held-out runs): the correlation of the two fits' per-run "
             "misses, and the sd of their difference (what not seeing the unseen examples adds to the miss), "
             "beside the parameter sd (the spread the fit's parameters, the unseen examples' effects among "
             "them, give a run's mean final loss).", ""]
    groups: dict[tuple, list[dict]] = {}
    for row in rows.values():
        groups.setdefault((row["pool"], row["optimizer"], row["features"], row["variant"]), []).append(row)
    for (pool, optimizer, features, variant), chosen in sorted(groups.items()):
        first = chosen[0]
        title = f"## Pool {pool}, {rn.scale.TRAINING[optimizer]}, features {'on' if features else 'off'}"
        commands = ", ".join(sorted({"`" + r["command"] + "`" for r in chosen}))
        versions = ", ".join(sorted({"`" + r["library_version"] + "`" for r in chosen}))
        lines += [title + (f", variant `{variant}`" if variant != "linear" else ""), "",
                  f"Commands: {commands}. Method `{first['method']}` (ran `{first['path']}`), options "
                  f"`{json.dumps(first['options'])}`; library version {versions}.", ""]
        lines += summary_lines(chosen) + [""]
        aggregate = aggregate_effect(chosen)
        if aggregate is not None:
            low, high = aggregate["actual_range"]
            lines += [f"The unseen examples in aggregate (matched runs, {aggregate['sets']} sets): the held-out runs' mean "
                      f"final loss less each set's fitted runs' ({low:+.3f} to {high:+.3f}) against the fit's predicted "
                      f"change: slope {aggregate['slope']:.2f}, correlation {aggregate['correlation']:.2f} (1 and 1 where "
                      "the fits predict what the set's examples do together).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", type=int, default=200, help="training examples in the pool (default 200)")
    parser.add_argument("--tests", type=int, default=10, help="test examples (default 10)")
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd", help="plain SGD or Adam with dropout")
    parser.add_argument("--sets", type=int, nargs="*", default=list(range(8)), metavar="K",
                        help="unseen sets (default 0-7; 0 is the runs-needed study's; none: only --control)")
    parser.add_argument("--control", action="store_true",
                        help="also the control: the all-seen fit scored on the same held-out runs")
    parser.add_argument("--heldout", type=int, default=40, help="held-out runs of each kind (default 40)")
    parser.add_argument("--method", default="bayes-grid", help="the Bayesian backend (default bayes-grid)")
    parser.add_argument("--features", choices=("both", "on", "off"), default="on",
                        help="fit with the feature prior, without it, or both (default on)")
    parser.add_argument("-o", "--option", type=study._parse_option, action="append", default=[], metavar="KEY=VALUE",
                        help="backend option (repeatable), e.g. -o memory=none -o run_state=false")
    args = parser.parse_args(argv)
    options = {"memory": "none", **dict(args.option)}
    variant = options.get("variant", "linear")
    command = shlex.join(["python", "experiments/unseen_sets.py", *(sys.argv[1:] if argv is None else argv)])
    pool_heldout = rn.seen_runs(args.pool, args.tests, args.optimizer, rn.FIT_RUNS + args.heldout).select_runs(
        slice(rn.FIT_RUNS, rn.FIT_RUNS + args.heldout))
    matched = rn.matched_heldout_runs(args.pool, args.tests, args.optimizer, args.heldout)
    train_features, pair_features = rn.reference_features(args.pool, args.tests, args.optimizer)
    out = RESULTS / "unseen_sets.json"
    settings = {"both": (True, False), "on": (True,), "off": (False,)}[args.features]
    for unseen_set in args.sets + ([CONTROL] if args.control else []):
        start = time.perf_counter()
        if unseen_set == CONTROL:
            fitted = rn.fit_window("seen", 0, args.pool, args.tests, args.optimizer, args.heldout)
            unseen = np.array([], dtype=int)
        else:
            fitted = rn.unseen_runs(args.pool, args.tests, args.optimizer, rn.FIT_RUNS, unseen_set)
            unseen = rn.unseen_examples(args.pool, unseen_set)
        collect_seconds = time.perf_counter() - start
        train = fitted.with_features(train_features=train_features, pair_features=pair_features)
        for features in settings:
            result = rn.fit_and_score(train, pool_heldout, args.method, options, features, unseen, matched)
            result.update(pool=args.pool, optimizer=args.optimizer, tests=args.tests, method=args.method,
                          options=options, variant=variant, unseen_set=unseen_set, unseen=unseen.tolist(),
                          command=command, library_version=study._library_version(),
                          runs_seconds=collect_seconds, fitted_mean_final_loss=float(fitted.losses[:, -1].mean()))
            rows = json.loads(out.read_text()) if out.exists() else {}
            rows[row_key(args.pool, args.optimizer, features, variant, unseen_set)] = result
            out.write_text(json.dumps(rows, indent=1, default=float) + "\n")  # kept after every fit
            (RESULTS / "unseen_sets.md").write_text(markdown(rows))
            m = result["matched"]
            print(f"set {unseen_set}, features {features}: matched final cover {m['final_coverage_90']:.2f}, diff cover "
                  f"{m['diff_coverage_90']:.2f}, miss {m['heldout_miss_mean']:+.3f} (sd {m['heldout_miss_sd']:.3f}); "
                  f"pool final cover {result['final_coverage_90']:.2f}; fit {result['fit_seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
