"""``bayes`` and ``linear`` side by side at fine-tuning scale: fit and simulate, time and memory.

    python benchmarks/bench_side_by_side.py                  # about an hour on 2 CPU cores
    python benchmarks/bench_side_by_side.py --n-train 1000   # one pool size
    python benchmarks/bench_side_by_side.py --redraw         # the table again from the json

Issue 27's benchmark: ``T = 1000`` steps, ``R = 32`` runs of batch 16, ``M = 256`` test examples and
``N`` in {1,000; 10,000} training examples, runs from
:func:`bayes_simfluence.bayes.synthetic.decaying_runs` (a decay every example shares, per-step noise).
For each ``N``, each part in its own process (times include imports and JAX compilation):

- ``linear``: the whole ``bayes-simfluence fit -m linear`` command as a user runs it (its strength
  chosen by cross-validation; dense normal equations at 1,000, conjugate gradients at 10,000), then
  the whole ``simulate`` command on the 32 runs' curricula; wall seconds and the peak resident
  memory of each (its process's).
- ``bayes``: the path ``-m bayes`` chooses and why; its default fit (2,000 SVI steps and the guard's
  cross-fits) would take an hour or more per size on two CPU cores, so its time is *estimated* from
  measured parts as in ``bench_scale.py`` (fits of 20 and 60 steps, each twice; the seconds per step
  and the fixed cost; :func:`bench_scale.estimated_fit_seconds`), with the simulation of the 32
  curricula by the posterior mean and by 100 predictive draws measured whole, and the peak resident
  memory of those fits beside :func:`bench_scale.predicted_peak` on the host and on one 80 GB GPU.

Writes ``benchmarks/results/side_by_side.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
from pathlib import Path

import bench_scale

RESULTS = Path(__file__).parent / "results"
N_TRAIN = (1000, 10000)
N_STEPS, N_RUNS, BATCH, N_TESTS = 1000, 32, 16, 256


def _command(args: list[str]) -> dict:
    """One ``bayes-simfluence`` command in its own process (:func:`_measure`): wall seconds, that
    process's peak resident memory and the tail of its output."""
    code, output, wall = bench_scale._child([__file__, "--measure", *args])
    if code != 0:
        raise RuntimeError(f"bayes-simfluence {args[0]} failed ({code}): {output[-800:]}")
    peak = bench_scale.last_json(output, '{"peak')["peak_rss_gb"]
    return {"wall_seconds": wall, "peak_rss_gb": peak, "output": output[-400:]}


def _measure(args: list[str]) -> int:
    """Run the command ``args`` in this process, then print its peak resident memory."""
    from bayes_simfluence.cli import main

    code = main(args, hard_exit=False)
    print(json.dumps({"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}), flush=True)
    return code


def bench_size(n_train: int, workdir: Path) -> dict:
    """Both simulators at ``n_train`` training examples (the issue's other sizes fixed)."""
    from bayes_simfluence import settings
    from bayes_simfluence.bayes.methods import default_path
    from bayes_simfluence.bayes.synthetic import decaying_runs

    data = workdir / f"runs_{n_train}.npz"
    runs = decaying_runs(n_train=n_train, n_steps=N_STEPS, n_runs=N_RUNS, batch_size=BATCH, n_tests=N_TESTS,
                         seed=0)[0]
    runs.save(data)
    path, reason = default_path(runs, settings.parse_all("bayes", {}))
    row: dict = {"n_train": n_train, "bayes_path": path, "bayes_reason": reason, "measured": bench_scale._measured()}
    if path != "svi":  # the step fits below measure bayes-svi
        row["bayes_failed"] = f"-m bayes runs bayes-{path} here; this benchmark estimates bayes-svi fits only"
    fitted = workdir / f"linear_{n_train}.npz"
    row["linear_fit"] = _command(["fit", "--train", str(data), "-m", "linear", "--out", str(fitted)])
    print("linear fit", round(row["linear_fit"]["wall_seconds"], 1), flush=True)
    row["linear_simulate"] = _command(["simulate", "--simulator", str(fitted), "--curricula", str(data),
                                       "--out", str(workdir / f"simulated_{n_train}.npz")])
    if "bayes_failed" in row:
        return row
    draws = bench_scale.stored_draws(n_train, N_TESTS, N_STEPS, N_RUNS)
    code, output, _ = bench_scale._child([bench_scale.__file__, "--step-worker", str(data), str(draws)])
    if code != 0:
        row["bayes_failed"] = output[-600:]
        return row
    fits = bench_scale.last_json(output)
    row["bayes"] = {**fits, "draws": draws,
                    "estimated_fit_seconds": bench_scale.estimated_fit_seconds(fits["step_seconds"],
                                                                               fits["fixed_seconds"]),
                    "predicted_peak_gb": bench_scale.predicted_peak(n_train, N_TESTS, draws, n_steps=N_STEPS,
                                                                    n_runs=N_RUNS) / 2**30,
                    "predicted_peak_gpu_gb": bench_scale.predicted_peak(n_train, N_TESTS, draws, on_device=True,
                                                                        n_steps=N_STEPS, n_runs=N_RUNS) / 2**30}
    print(json.dumps({k: v for k, v in row.items() if k != "bayes_reason"}), flush=True)
    return row


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"# `bayes` and `linear` side by side ({meta['machine']}; {meta['versions']})", "",
             f"`python benchmarks/bench_side_by_side.py`: T = {N_STEPS} steps, R = {N_RUNS} runs of batch {BATCH}, "
             f"M = {N_TESTS} test examples, runs from `decaying_runs`. `linear`: whole commands. `bayes`: the default "
             "fit's time estimated from measured step fits (`estimated_fit_seconds`), the simulations measured.", "",
             "| N | `fit -m linear` s | its peak GB | `simulate` (linear) s | `bayes` runs | s per SVI step | fixed s | "
             "`fit -m bayes` s (estimated) | bayes / linear | simulate mean s | 100 draws s | stored draws | "
             "peak GB (step fits, simulations) | predicted peak GB of a fit: host | one 80 GB GPU | measured |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        linear = r["linear_fit"]
        head = (f"| {r['n_train']:,} | {linear['wall_seconds']:.0f} | {linear['peak_rss_gb']:.2f} | "
                f"{r['linear_simulate']['wall_seconds']:.1f} | bayes-{r['bayes_path']} |")
        if "bayes" not in r:
            lines.append(f"{head} failed: {r['bayes_failed'][-150:]} ||||||||||")
            continue
        b = r["bayes"]
        lines.append(f"{head} {b['step_seconds']:.3g} | {b['fixed_seconds']:.3g} | {b['estimated_fit_seconds']:.0f} | "
                     f"{b['estimated_fit_seconds'] / linear['wall_seconds']:.1f} | {b['simulate_mean_seconds']:.3g} | "
                     f"{b['simulate_100_draws_seconds']:.3g} | {b['draws']} | {b['peak_rss_gb']:.2f} | "
                     f"{b['predicted_peak_gb']:.2f} | {b['predicted_peak_gpu_gb']:.2f} | {r['measured']} |")
    lines += ["", "Why `bayes` chose its path:", ""]
    lines += [f"- `{r['n_train']:,}`: {r['bayes_reason']}" for r in rows]
    lines += ["", "The measured peak is the step fits' process's, which then simulates: its 100 (or as many as "
              "stored) predictive draws of the 32 runs' trajectories alone take `draws x R x (T + 1) x M x 8` bytes "
              "(6.6 GB at 100 draws), which the memory model of a fit does not count.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, nargs="+", default=list(N_TRAIN), help="pool sizes to run")
    parser.add_argument("--redraw", action="store_true", help="rewrite the table from the results json only")
    parser.add_argument("--measure", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        return _measure(args.measure)
    if args.redraw:
        saved = json.loads((RESULTS / "side_by_side.json").read_text())
        (RESULTS / "side_by_side.md").write_text(markdown(saved["rows"], saved["meta"]))
        return 0
    import jax
    import numpyro

    with tempfile.TemporaryDirectory() as tmp:
        rows = [bench_size(n, Path(tmp)) for n in args.n_train]
    meta = {"machine": f"{os.cpu_count()} CPU cores, no GPU ({platform.machine()})",
            "versions": {"jax": jax.__version__, "numpyro": numpyro.__version__, "python": platform.python_version()}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "side_by_side.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (RESULTS / "side_by_side.md").write_text(markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
