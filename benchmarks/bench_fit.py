"""Time fit and simulate of the ridge fit and the Bayesian paths on a grid of problem sizes.

Grid: ``N`` (training examples) in {100, 1000}, ``T`` (steps) in {100, 1000}, ``R = 16`` runs,
batch 8, ``M`` (test examples) in {1, 64}; runs from
:func:`bayes_simfluence.bayes.synthetic.decaying_runs`. Each (size, method) runs in its own
subprocess (so peak memory, ``ru_maxrss``, is its own, and it includes JAX compilation) with
a wall-clock limit; a run that hits it is recorded as such. NUTS runs only where its cost is
bounded (``M = 1``) and with 2 chains of 300 + 300 iterations; it is skipped, with the reason
recorded, elsewhere. Also times ``bayes-simfluence evaluate`` on ``N=400, T=200, R=24, batch 8,
M=32`` (plus 6 held-out runs).

Run: ``python benchmarks/bench_fit.py`` (writes ``benchmarks/results/bench_fit.json`` and ``.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
METHODS = ("ridge", "exact", "svi", "nuts")
NUTS_SETTINGS = {"num_warmup": 300, "num_samples": 300, "num_chains": 2}
TIME_LIMIT = 900
MEMORY_LIMIT = 12 * 2**30
STDERR_MARK = "\n--- stderr ---\n"


def grid() -> list[dict]:
    return [{"n_train": n, "n_steps": t, "n_runs": 16, "batch_size": 8, "n_tests": m}
            for m in (1, 64) for n in (100, 1000) for t in (100, 1000)]


def nuts_skip_reason(size: dict) -> str | None:
    if size["n_tests"] > 1:
        dims = size["n_tests"] * (2 * size["n_train"] + size["n_steps"])
        return (f"not run: {dims} latent dimensions and {size['n_runs'] * size['n_steps'] * 8 * size['n_tests']} "
                "gathered slots per gradient; at the measured M=1 rate this is hours on 2 CPU cores")
    return None


def exact_skip_reason(size: dict) -> str | None:
    if size["n_tests"] > 1 and size["n_train"] == 1000 and size["n_steps"] == 100:
        return ("not run: dominated by the same 64 eigendecompositions of 2000 x 2000 matrices as the "
                "T=1000 row (the steps only enter through cheap banded solves)")
    return None


def worker(method: str, data: Path) -> dict:
    """Fit ``method`` on the runs in ``data``; time fit and simulate; report own peak memory."""
    warnings.simplefilter("ignore")
    from bayes_simfluence.runs import Runs

    runs = Runs.load(data)
    out: dict = {}
    start = time.perf_counter()
    if method == "ridge":
        from bayes_simfluence.simulators import SimfluenceLinear

        simulator = SimfluenceLinear(variant="linear", ridge=1.0).fit(runs)
    else:
        from bayes_simfluence.bayes.methods import fit_bayes

        options = {"progress": False, **(NUTS_SETTINGS if method == "nuts" else {})}
        simulator = fit_bayes(method, runs, options)
        out["info"] = {k: v for k, v in simulator.info.items() if k != "loss_trace"}
    out["fit_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    simulator.simulate(runs.curricula, runs.initial_losses)
    out["simulate_mean_seconds"] = time.perf_counter() - start
    if method != "ridge":
        start = time.perf_counter()
        simulator.simulate_draws(runs.curricula, runs.initial_losses, 100)
        out["simulate_100_draws_seconds"] = time.perf_counter() - start
    if method in ("nuts", "exact"):  # both are MCMC (exact: NUTS over the hyperparameters)
        from numpyro.diagnostics import effective_sample_size

        draws = np.concatenate([np.asarray(x, np.float64).reshape(*x.shape[:2], -1)
                                for x in (simulator.a, simulator.b, simulator.sigma, *simulator.hyper.values())], -1)
        spread = draws.std(axis=(0, 1))
        varying = draws[..., spread > 1e-9 * (np.abs(draws).max(axis=(0, 1)) + 1e-300)]  # fixed entries: no ESS
        ess = np.asarray(effective_sample_size(varying))
        ess = ess[np.isfinite(ess)]
        out["ess_bulk_min"], out["ess_bulk_median"] = float(ess.min()), float(np.median(ess))
        out["ess_min_per_second"] = out["ess_bulk_min"] / out["fit_seconds"]
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_child(args: list[str], limit: int) -> tuple[int | None, str, float]:
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=limit,
                              preexec_fn=_limit_memory)
        return done.returncode, done.stdout + STDERR_MARK + done.stderr[-2000:], time.perf_counter() - start
    except subprocess.TimeoutExpired:
        return None, f"timed out after {limit} s", time.perf_counter() - start


def bench_grid(methods: tuple[str, ...], workdir: Path) -> list[dict]:
    from bayes_simfluence.bayes.synthetic import decaying_runs

    rows = []
    for size in grid():
        data = workdir / "runs_{n_train}_{n_steps}_{n_tests}.npz".format(**size)
        decaying_runs(**size, seed=0)[0].save(data)
        for method in methods:
            row = {**size, "method": method}
            reason = {"nuts": nuts_skip_reason, "exact": exact_skip_reason}.get(method, lambda _: None)(size)
            if reason:
                row["skipped"] = reason
            else:
                code, text, wall = run_child([__file__, "--worker", method, str(data)], TIME_LIMIT)
                row["wall_seconds"] = wall
                if code == 0:
                    row.update(json.loads(text.split(STDERR_MARK)[0].strip().splitlines()[-1]))
                else:
                    row["failed"] = text[-600:] if code is not None else text
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def bench_evaluate(workdir: Path) -> list[dict]:
    """``bayes-simfluence evaluate`` on the N=400 target problem, through the CLI."""
    from bayes_simfluence.bayes.synthetic import decaying_runs

    data = workdir / "evaluate_400.npz"
    decaying_runs(n_train=400, n_steps=200, n_runs=30, batch_size=8, n_tests=32, seed=1)[0].save(data)
    rows = []
    for method in ("bayes-svi", "bayes-exact"):
        code, text, wall = run_child(["-m", "bayes_simfluence.cli", "evaluate", "--runs", str(data),
                                      "--heldout-runs", "6", "-m", method, "-o", "progress=false", "--json"],
                                     TIME_LIMIT)
        row = {"command": f"evaluate --runs N=400,T=200,R=24+6,M=32 -m {method}", "wall_seconds": wall,
               "returncode": code}
        if code == 0:
            out = text.split(STDERR_MARK)[0]  # warnings on stderr may hold braces too
            row["scores"] = json.loads(out[out.index("{"): out.rindex("}") + 1])
        else:
            row["failed"] = text[-1500:]
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def markdown(rows: list[dict], evaluate: list[dict]) -> str:
    lines = ["| N | T | M | method | fit s | simulate mean s | 100 draws s | peak RSS GB | MCMC min ESS/s | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v: "" if v is None else f"{v:.3g}" if v >= 0 else "n/a (ESS estimate < 0)"  # noqa: E731
    for r in rows:
        note = r.get("skipped") or r.get("failed", "")
        note = note.replace("\n", " ")[:120]
        lines.append(f"| {r['n_train']} | {r['n_steps']} | {r['n_tests']} | {r['method']} | {fmt(r.get('fit_seconds'))} | "
                     f"{fmt(r.get('simulate_mean_seconds'))} | {fmt(r.get('simulate_100_draws_seconds'))} | "
                     f"{fmt(r.get('peak_rss_gb'))} | {fmt(r.get('ess_min_per_second'))} | {note} |")
    lines += ["", "| evaluate command | wall s | result |", "|---|---|---|"]
    for r in evaluate:
        result = "ok" if r["returncode"] == 0 else ("failed: " + r.get("failed", "")[-200:].replace("\n", " "))
        lines.append(f"| {r['command']} | {r['wall_seconds']:.1f} | {result} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "DATA"), help=argparse.SUPPRESS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--skip-evaluate", action="store_true")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="keep the grid of the existing results file and redo only the evaluate timings")
    parser.add_argument("--merge", action="store_true",
                        help="redo only --methods and keep the existing results file's other rows and evaluate timings")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], Path(args.worker[1]))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        previous = json.loads((RESULTS / "bench_fit.json").read_text()) if args.evaluate_only or args.merge else {}
        if args.evaluate_only:
            rows = previous["grid"]
        else:
            rows = bench_grid(tuple(args.methods), Path(tmp))
        if args.merge:
            key = lambda row: (row["n_train"], row["n_steps"], row["n_tests"], row["method"])  # noqa: E731
            fresh = {key(row): row for row in rows}
            rows = [fresh.pop(key(row), row) for row in previous["grid"]] + list(fresh.values())
            evaluate = previous.get("evaluate", [])
        else:
            evaluate = [] if args.skip_evaluate else bench_evaluate(Path(tmp))
    RESULTS.mkdir(exist_ok=True)
    import jax
    import numpyro

    meta = {"machine": f"{os.cpu_count()} CPU cores, no GPU ({platform.processor() or platform.machine()})",
            "versions": {"jax": jax.__version__, "numpyro": numpyro.__version__, "python": platform.python_version()},
            "nuts_settings": NUTS_SETTINGS, "time_limit_s": TIME_LIMIT,
            "memory_limit_gb": MEMORY_LIMIT / 2**30, "data": "bayes_simfluence.bayes.synthetic.decaying_runs"}
    (RESULTS / "bench_fit.json").write_text(json.dumps({"meta": meta, "grid": rows, "evaluate": evaluate}, indent=2))
    header = (f"# Fit and simulate timings\n\n{meta['machine']}; {meta['versions']}; NUTS: {NUTS_SETTINGS}; "
              "each cell in its own process (times include JAX compilation; peak RSS is the process's).\n\n")
    (RESULTS / "bench_fit.md").write_text(header + markdown(rows, evaluate))


if __name__ == "__main__":
    main()
