"""How ``bayes-svi`` scales: whole ``fit`` commands, the cost of a step, simulation, and memory.

    python benchmarks/bench_scale.py                 # about 25 minutes on 2 CPU cores
    python benchmarks/bench_scale.py --cells 1000x64 --merge  # one cell (N x M), the others kept

``T = 1000`` steps, ``R = 16`` runs, batch 8, runs from
:func:`bayes_simfluence.bayes.synthetic.decaying_runs`, on a grid of ``N`` (training examples)
in {1000, 10000} and ``M`` (test examples) in {64, 1024}. Each measurement runs in its own
process (times include JAX compilation; the peak resident memory is that process's):

- **Whole commands** at ``N=1000, M=64`` (the yardstick of issues 13 and 27): ``bayes-simfluence fit``
  with the defaults of ``-m linear`` (ridge, its strength chosen by cross-validation) and of
  ``-m bayes`` (which runs bayes-svi there: float32, optimiser memory, the guard), as a user runs them.
- **SVI steps** in every cell: fits of 20 and 60 steps (420 instead of 60 where those two differ by
  less than 10 s) without the guard, each run twice in one process; the difference of the second
  runs (which compile nothing) gives the seconds per step, the rest of the first short fit is fixed
  cost (compilation, initialisation, draws). The default
  fit's time is then *estimated* by :func:`estimated_fit_seconds` (the full fit and the guard's
  cross-fits, one after another), and checked against the measured whole command at
  ``N=1000, M=64``.
- **Simulation** of the 16 runs' curricula by the posterior mean and by 100 predictive draws.
- **Memory**: the peak resident memory of the step fits beside the memory model of
  :func:`memory_model`, which says what grows with ``N``, ``M`` and ``T``.

There is no GPU on the machine these results come from; on one, run the same command (JAX picks
the GPU) and the device's memory is what :func:`memory_model` bounds. Writes
``benchmarks/results/bench_scale.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
CELLS = ((1000, 64), (1000, 1024), (10000, 64), (10000, 1024))
N_STEPS, N_RUNS, BATCH = 1000, 16, 8
SVI_STEPS = 2000
DRAWS = 200
#: the whole ``fit`` commands of the first cell: ``-m`` and options (``bayes`` with the default
#: guard, and with cross-fits of a quarter of the steps: cheaper, and wider new-run intervals)
WHOLE_COMMANDS = {"linear": [], "bayes": ["-o", "progress=false"],
                  "bayes -o guard_steps=500": ["-o", "progress=false", "-o", "guard_steps=500"]}
STEP_FITS = (20, 60)
#: where the two step fits differ by less than this many seconds (fast cells, whose draws and
#: compilation dominate a short fit), a fit of ``LONG_FIT`` steps replaces the longer one
DIFFERENCE_SECONDS, LONG_FIT = 10.0, 420
TIME_LIMIT = 3600


def estimated_fit_seconds(step_seconds: float, fixed_seconds: float) -> float:
    """A default ``bayes-svi`` fit's seconds from its parts: twice the fixed cost (the full fit's
    compilations, and the cross-fits' for 3/4 of the runs) plus ``SVI_STEPS`` steps of the full fit and
    the guard's cross-fits (``guard.FOLDS`` of ``GUARD_STEP_FRACTION x SVI_STEPS`` steps on 3/4 of the
    runs each), one after another: the guard runs two at once where memory allows, which on two CPU
    cores gains little (each keeps about 1.5 cores busy), so this errs long."""
    from bayes_simfluence.bayes import guard
    from bayes_simfluence.bayes.methods import GUARD_STEP_FRACTION

    cross_fit_steps = guard.FOLDS * (1 - 1 / guard.FOLDS) * GUARD_STEP_FRACTION * SVI_STEPS
    return 2 * fixed_seconds + step_seconds * (SVI_STEPS + cross_fit_steps)


def memory_model(n_train: int, n_tests: int, n_steps: int = N_STEPS, n_runs: int = N_RUNS,
                 draws: int = DRAWS) -> dict[str, float]:
    """Bytes of the main arrays of a default ``bayes-svi`` fit (float32 optimisation).

    - ``svi_state``: the guide's location and scale and Adam's two moments for each, of every
      latent (``2 N M`` effects; the step component is integrated out of the likelihood, so its
      ``T M`` values are not latents): ``4 x 2 N M`` float32.
    - ``step_work``: per SVI step, arrays of ``[runs, steps, tests]`` (data, batch sums,
      remembered sums and their gradients: about 16 of them) float32.
    - ``draws``: the stored posterior draws ``draws x (2 N M + T M)`` (effects and the step
      component drawn afterwards) float64 (host), produced on the device in float32.
    Grows as ``N M`` (effects), ``R T M`` (per step) and ``draws (2 N + T) M`` (stored).
    """
    latents, stored = 2 * n_train * n_tests, 2 * n_train * n_tests + n_steps * n_tests
    return {"svi_state": 4.0 * latents * 4, "step_work": 16.0 * n_runs * n_steps * n_tests * 4,
            "draws": float(draws) * stored * 8, "draws_device": float(draws) * stored * 4}


#: the measured peak resident memory of the step fits (``N x M`` = 1000 x 64 and 10000 x 64 with 200
#: draws, 10000 x 1024 with 20) is ``PEAK_BASE + WORK_FACTOR x (svi_state + step_work) +
#: DRAWS_FACTOR x draws`` of :func:`memory_model` with these constants, fitted to those three cells
#: (so it interpolates them): the draws are held about twice (device output, float64 copies), and
#: XLA keeps many more per-step arrays than the model counts. At the fourth cell, 1000 x 1024 with
#: 20 draws (not used in the fit), it predicts 9.5 GB where 6.1 GB was measured: conservative there.
PEAK_BASE, WORK_FACTOR, DRAWS_FACTOR = 1.26 * 2**30, 7.08, 2.09


def predicted_peak(n_train: int, n_tests: int, draws: int = DRAWS, on_device: bool = False,
                   n_steps: int = N_STEPS, n_runs: int = N_RUNS) -> float:
    """Bytes at the peak of a default fit: on the host (CPU), or on the device (GPU: the draws
    are produced there in float32 and copied to the host)."""
    model = memory_model(n_train, n_tests, n_steps, n_runs, draws)
    work = WORK_FACTOR * (model["svi_state"] + model["step_work"])
    if on_device:
        return work + DRAWS_FACTOR * model["draws_device"]
    return PEAK_BASE + work + DRAWS_FACTOR * model["draws"]


def largest_tests(n_train: int, capacity: float, on_device: bool) -> int:
    """The most test examples a default fit of ``n_train`` examples holds in ``capacity`` bytes."""
    def need(m: int) -> float:
        return predicted_peak(n_train, m, on_device=on_device)
    low, high = 0, 1
    while need(high) <= capacity:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if need(middle) <= capacity else (low, middle)
    return low


def stored_draws(n_train: int, n_tests: int, n_steps: int = N_STEPS, n_runs: int = N_RUNS) -> int:
    """The draws a step fit stores: ``DRAWS`` where the predicted peak takes under 80% of the free
    memory, else 20 (200 would not fit)."""
    from bayes_simfluence.budget import available_memory

    fits = predicted_peak(n_train, n_tests, n_steps=n_steps, n_runs=n_runs) < 0.8 * available_memory()
    return DRAWS if fits else 20


def last_json(output: str, prefix: str = "{") -> dict:
    """The last line of a child's ``output`` that starts with ``prefix``, parsed as JSON."""
    return json.loads(next(line for line in reversed(output.splitlines()) if line.startswith(prefix)))


def _child(args: list[str]) -> tuple[int | None, str, float]:
    """Run ``python args`` with a time limit: ``(return code or None, output, wall s)``."""
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=TIME_LIMIT)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {TIME_LIMIT} s", time.perf_counter() - start
    return done.returncode, done.stdout + done.stderr[-2000:], time.perf_counter() - start


def step_worker(data: Path, draws: int) -> dict:
    """SVI fits of ``STEP_FITS`` steps without the guard, each twice (the second compiles nothing;
    ``LONG_FIT`` steps too where the two differ by less than ``DIFFERENCE_SECONDS``), then
    simulation; times and this process's peak memory."""
    import resource

    warnings.simplefilter("ignore")
    from bayes_simfluence.bayes.methods import fit_bayes
    from bayes_simfluence.bayes.posterior import BayesianSimfluence
    from bayes_simfluence.runs import Runs

    runs = Runs.load(data)
    seconds = {}

    def fit_twice(steps: int) -> BayesianSimfluence:
        for call in ("first", "second"):
            start = time.perf_counter()
            posterior = fit_bayes("svi", runs, {"num_steps": steps, "num_draws": draws, "guard": False,
                                                "progress": False})
            seconds[f"{call}_{steps}"] = time.perf_counter() - start
        return posterior

    short, long = STEP_FITS
    fit_twice(short)
    posterior = fit_twice(long)
    if seconds[f"second_{long}"] - seconds[f"second_{short}"] < DIFFERENCE_SECONDS:
        long = LONG_FIT
        posterior = fit_twice(long)
    per_step = (seconds[f"second_{long}"] - seconds[f"second_{short}"]) / (long - short)
    out = {"seconds": seconds, "step_seconds": per_step, "fixed_seconds": seconds[f"first_{short}"] - short * per_step}
    start = time.perf_counter()
    posterior.simulate(runs.curricula, runs.initial_losses)
    out["simulate_mean_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    posterior.simulate_draws(runs.curricula, runs.initial_losses, min(100, draws))
    out["simulate_100_draws_seconds"] = time.perf_counter() - start
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def bench_cell(n_train: int, n_tests: int, workdir: Path) -> dict:
    from bayes_simfluence.bayes.synthetic import decaying_runs

    data = workdir / f"runs_{n_train}_{n_tests}.npz"
    decaying_runs(n_train=n_train, n_steps=N_STEPS, n_runs=N_RUNS, batch_size=BATCH, n_tests=n_tests, seed=0)[0].save(data)
    model = memory_model(n_train, n_tests)
    draws = stored_draws(n_train, n_tests)
    row: dict = {"n_train": n_train, "n_tests": n_tests, "draws": draws, "memory_model_gb": {k: v / 2**30 for k, v in model.items()}}
    code, output, _ = _child([__file__, "--step-worker", str(data), str(draws)])
    if code != 0:
        row["failed"] = output[-600:]
        return row
    row.update(last_json(output), measured=_measured())
    if (n_train, n_tests) == CELLS[0]:
        row["whole_commands"] = {}
        for name, options in WHOLE_COMMANDS.items():
            method = name.split()[0]
            out = workdir / ("fit.nc" if method.startswith("bayes") else "fit.npz")
            code, output, wall = _child(["-m", "bayes_simfluence.cli", "fit", "--train", str(data), "-m", method,
                                         *options, "--out", str(out)])
            if code != 0:
                raise RuntimeError(f"fit -m {name} failed: {output[-800:]}")
            row["whole_commands"][name] = {"wall_seconds": wall, "returncode": code, "output": output[-400:]}
            print(name, round(wall, 1), flush=True)
    print(json.dumps(row), flush=True)
    return row


def _measured() -> str:
    """When and at which commit a cell is measured: ``"YYYY-MM-DD (commit)"``."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip() or "unknown commit"
    return f"{time.strftime('%Y-%m-%d')} ({commit})"


#: cells of the results file written before each cell recorded when it was measured
EARLIER = "2026-12-01 (cca1960)"


def markdown(rows: list[dict], meta: dict) -> str:
    from bayes_simfluence.bayes import guard
    from bayes_simfluence.bayes.methods import GUARD_STEP_FRACTION

    gb = 2**30
    lines = [f"# bayes-svi at scale ({meta['machine']}; {meta['versions']})", "",
             f"T = {N_STEPS}, R = {N_RUNS}, batch {BATCH}; `python benchmarks/bench_scale.py`. Default fit: "
             f"{SVI_STEPS} SVI steps in float32, optimiser memory, the guard ({guard.FOLDS} cross-fits of "
             f"{round(GUARD_STEP_FRACTION * SVI_STEPS)} steps on 3/4 of the runs, started from the full fit's "
             f"hyperparameters, two at once where memory allows), {DRAWS} stored draws. The estimated fit is "
             "`estimated_fit_seconds` of the measured step and fixed seconds, for the guard of today's default; "
             "the step times are those of the commit each row names.", ""]
    first = next((r for r in rows if "whole_commands" in r), None)
    if first:
        whole = first["whole_commands"]
        lines += [f"| whole command, N=1000, M=64, measured {first.get('measured', EARLIER)} | wall s |", "|---|---|",
                  *(f"| `bayes-simfluence fit -m {m}` | {w['wall_seconds']:.1f} |" for m, w in whole.items()),
                  *(f"| ratio {m} / linear | {w['wall_seconds'] / whole['linear']['wall_seconds']:.2f} |"
                    for m, w in whole.items() if m != "linear"),
                  ""]
    lines += ["| N | M | s per SVI step | fixed s | default fit s (estimated) | simulate mean s | 100 draws s | "
              "stored draws | peak RSS GB (step fits) | predicted peak GB | model: SVI state + step GB | "
              "model: stored draws GB | measured |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['n_train']} | {r['n_tests']} | failed: {r['failed'][-150:]} ||||||||||")
            continue
        m = r["memory_model_gb"]
        estimate = estimated_fit_seconds(r["step_seconds"], r["fixed_seconds"])
        lines.append(f"| {r['n_train']} | {r['n_tests']} | {r['step_seconds']:.3g} | {r['fixed_seconds']:.3g} | "
                     f"{estimate:.0f} | {r['simulate_mean_seconds']:.3g} | "
                     f"{r['simulate_100_draws_seconds']:.3g} | {r['draws']} | {r['peak_rss_gb']:.2f} | "
                     f"{predicted_peak(r['n_train'], r['n_tests'], r['draws']) / gb:.2f} | "
                     f"{m['svi_state'] + m['step_work']:.2f} | {m['draws']:.2f} | {r.get('measured', EARLIER)} |")
    lines += ["", "Largest default fit by the predicted peak (`predicted_peak`: the memory model with constants fitted "
              "to the measured cells; 200 stored draws, T = 1000, R = 16; 80% of the memory usable):", "",
              "| N | most test examples, this machine (24 GiB) | most test examples, one 80 GB GPU (device memory) |",
              "|---|---|---|"]
    for n in (1000, 10000, 100000):
        lines.append(f"| {n} | {largest_tests(n, 24 * gb * 0.8, False)} | {largest_tests(n, 80e9 * 0.8, True)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step-worker", nargs=2, metavar=("DATA", "DRAWS"), help=argparse.SUPPRESS)
    parser.add_argument("--cells", nargs="+", default=[f"{n}x{m}" for n, m in CELLS], help="cells N x M to run")
    parser.add_argument("--merge", action="store_true", help="keep the other cells of the existing results file")
    args = parser.parse_args()
    if args.step_worker:
        print(json.dumps(step_worker(Path(args.step_worker[0]), int(args.step_worker[1]))))
        return
    import jax
    import numpyro

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for cell in args.cells:
            n_train, n_tests = (int(x) for x in cell.split("x"))
            rows.append(bench_cell(n_train, n_tests, Path(tmp)))
    if args.merge:
        fresh = {(r["n_train"], r["n_tests"]): r for r in rows}
        previous = json.loads((RESULTS / "bench_scale.json").read_text())["cells"]
        rows = [fresh.pop((r["n_train"], r["n_tests"]), r) for r in previous] + list(fresh.values())
    meta = {"machine": f"{os.cpu_count()} CPU cores, no GPU ({platform.machine()})",
            "versions": {"jax": jax.__version__, "numpyro": numpyro.__version__, "python": platform.python_version()}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_scale.json").write_text(json.dumps({"meta": meta, "cells": rows}, indent=2) + "\n")
    (RESULTS / "bench_scale.md").write_text(markdown(rows, meta))


if __name__ == "__main__":
    main()
