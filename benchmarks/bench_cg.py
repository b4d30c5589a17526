"""bayes-cg against bayes-grid: the same model and grid, matrix-free against dense algebra.

    python benchmarks/bench_cg.py          # about 10 minutes on 2 CPU cores

Runs with the structure of real training (:func:`bayes_simfluence.synthetic.synthetic_runs`: a
decay every example shares, per-example effects, noise), 16 runs of 100 steps, batch 8, 4 test
examples, at three pool sizes (bayes-grid refuses the largest). Both backends fit the model with optimiser memory, the common level
and the step component (no guard, no run state) with 200 draws; times include JAX compilation.
Agreement: the largest difference of the two posteriors' means of the effects in units of their
pooled posterior sd, and the median log ratio of their sds.

**Layouts**: the seconds of bayes-cg's Lanczos evidence for 64 (test, decay) pairs at the scale
study's shape (40 runs of 120 steps, batch 4, 10 test examples) and pools of 50, 200 and 1,000,
with the products by the dense count matrix or by the batch slots, the 64 pairs vectorised at once or
one after another inside the program: what sets
:data:`~bayes_simfluence.bayes.krylov.DENSE_TRAIN_PER_SLOT` and
:data:`~bayes_simfluence.bayes.krylov.SEQUENTIAL_BACKENDS`.
Writes ``benchmarks/results/cg.{json,md}``.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np

from bayes_simfluence.bayes import grid, krylov
from bayes_simfluence.bayes.data import model_data
from bayes_simfluence.bayes.model import ModelConfig
from bayes_simfluence.synthetic import synthetic_runs

RESULTS = Path(__file__).parent / "results"
N_TRAINS = (100, 400, 2000)
N_RUNS, N_STEPS, BATCH, N_TESTS, DRAWS = 16, 100, 8, 4, 200


def measure(n_train: int) -> dict:
    runs, _ = synthetic_runs(n_train=n_train, n_tests=N_TESTS, n_runs=N_RUNS, n_steps=N_STEPS, batch_size=BATCH,
                             effect_scale=0.05, noise_scale=0.005, seed=0)
    data, config = model_data(runs), ModelConfig(memory="geometric")
    row: dict = {"n_train": n_train}
    fits = {}
    grid_flops = N_TESTS * grid.grid_cost(n_train, N_RUNS * N_STEPS, config, DRAWS)
    backends = (("grid", grid.run_grid), ("cg", krylov.run_cg)) if grid_flops <= grid.MAX_FLOPS else \
        (("cg", krylov.run_cg),)
    for name, run in backends:
        start = time.perf_counter()
        fits[name] = run(data, config, num_draws=DRAWS, seed=0, progress=False)
        row[f"{name}_seconds"] = time.perf_counter() - start
    row["cg_unconverged"] = fits["cg"].info["cg_unconverged"]
    row["cg_evidence_pairs"] = fits["cg"].info["evidence_pairs"]
    if "grid" not in fits:
        row["grid"] = f"refused: {grid_flops:.1e} multiply-adds"
        return row
    effects = {name: np.concatenate([fit.draws["a"][0], fit.draws["B"][0]], axis=-1) for name, fit in fits.items()}
    sd = np.sqrt((effects["grid"].var(0) + effects["cg"].var(0)) / 2)
    row["max_mean_difference_sds"] = float(np.max(np.abs(effects["grid"].mean(0) - effects["cg"].mean(0)) / sd))
    row["median_log_sd_ratio"] = float(np.median(np.log(effects["cg"].std(0) / effects["grid"].std(0))))
    row["decay_means"] = {name: fit.draws["memory_decay"][0].mean(0).round(3).tolist() for name, fit in fits.items()}
    return row


LAYOUT_POOLS = (50, 200, 1000)
LAYOUT_SHAPE = {"n_runs": 40, "n_steps": 120, "batch_size": 4, "n_tests": 10}
LAYOUT_PAIRS = 64
#: (name, products by the dense count matrix, pairs one after another)
LAYOUTS = (("dense, 64 at once", True, False), ("dense, one by one", True, True),
           ("slots, 64 at once", False, False), ("slots, one by one", False, True))


def measure_layouts(n_train: int) -> dict:
    """Seconds of the evidence of :data:`LAYOUT_PAIRS` pairs in each of :data:`LAYOUTS` (compiled first)."""
    runs, _ = synthetic_runs(n_train=n_train, effect_scale=0.05, noise_scale=0.005, seed=0, **LAYOUT_SHAPE)
    data, config = model_data(runs), ModelConfig(memory="geometric")
    tests = np.arange(LAYOUT_PAIRS) % data.n_tests
    decays = np.linspace(0.05, 0.95, LAYOUT_PAIRS)
    probes = krylov.probes_of(2 * n_train)
    row = {"n_train": n_train, "per_slot": n_train / LAYOUT_SHAPE["batch_size"]}
    features = grid.scaled_state_features(data, None)
    priors = grid.nuisance_priors(config, features.shape[-1], grid.n_feature_columns(data, config))
    defaults = (krylov.DENSE_TRAIN_PER_SLOT, krylov.sequential_pairs)
    try:
        for name, dense, sequential in LAYOUTS:
            krylov.DENSE_TRAIN_PER_SLOT = 10**9 if dense else 0
            krylov.sequential_pairs = lambda static, sequential=sequential: sequential  # every layout, not the rule
            shared = krylov.shared_arrays(data, config, features, priors)  # the count matrix only where dense
            krylov.evidence(data, config, shared, tests[:1], decays[:1], probes)  # compiles the chunk's program
            start = time.perf_counter()
            krylov.evidence(data, config, shared, tests, decays, probes)
            row[name] = time.perf_counter() - start
    finally:
        krylov.DENSE_TRAIN_PER_SLOT, krylov.sequential_pairs = defaults
    static = krylov.static_of(data, config)
    row["default"] = ("dense" if static.dense else "slots") + (", one by one" if krylov.sequential_pairs(static) else
                                                               ", 64 at once")
    return row


#: the results table: (header, how a row shows it)
COLUMNS = (("n_train", lambda r: f"{r['n_train']:,}"),
           ("bayes-grid s", lambda r: f"{r['grid_seconds']:.1f}" if "grid_seconds" in r else r["grid"]),
           ("bayes-cg s", lambda r: f"{r['cg_seconds']:.1f}"),
           ("max difference of effect means (pooled sds)",
            lambda r: f"{r['max_mean_difference_sds']:.2f}" if "grid_seconds" in r else "-"),
           ("median log ratio of effect sds", lambda r: f"{r['median_log_sd_ratio']:+.3f}" if "grid_seconds" in r else "-"),
           ("decay means grid / cg", lambda r: " / ".join(str(v) for v in r.get("decay_means", {}).values())),
           ("unconverged CG draws", lambda r: str(r["cg_unconverged"])))


def main() -> None:
    rows = []
    for n_train in N_TRAINS:
        rows.append(measure(n_train))
        print(rows[-1], flush=True)
    RESULTS.mkdir(exist_ok=True)
    meta = {"machine": platform.processor() or platform.machine(), "runs": N_RUNS, "steps": N_STEPS, "batch": BATCH,
            "tests": N_TESTS, "draws": DRAWS}
    layouts = []
    for n_train in LAYOUT_POOLS:
        layouts.append(measure_layouts(n_train))
        print(layouts[-1], flush=True)
    (RESULTS / "cg.json").write_text(json.dumps({"meta": meta, "rows": rows, "layouts": layouts}, indent=1))
    write_markdown(meta, rows, layouts)


def write_markdown(meta: dict, rows: list[dict], layouts: list[dict]) -> None:
    table = ["| " + " | ".join(header for header, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    table += ["| " + " | ".join(show(row) for _, show in COLUMNS) + " |" for row in rows]
    intro = (f"`python benchmarks/bench_cg.py`: {N_RUNS} runs x {N_STEPS} steps, batch {BATCH}, {N_TESTS} test "
             f"examples, {DRAWS} draws, optimiser memory, common level and step component, no guard; "
             f"{meta['machine']}, 2 CPU cores, times with compilation. bayes-grid only where it accepts the size.")
    names = [name for name, _, _ in LAYOUTS]
    layout_table = ["| n_train | examples per slot | " + " | ".join(f"{name} s" for name in names) + " | default |",
                    "|" + "---|" * (len(names) + 3)]
    layout_table += [f"| {r['n_train']:,} | {r['per_slot']:g} | " + " | ".join(f"{r[name]:.1f}" for name in names)
                     + f" | {r['default']} |" for r in layouts]
    shape = LAYOUT_SHAPE
    layout_intro = (f"Lanczos evidence of {LAYOUT_PAIRS} (test, decay) pairs, {shape['n_runs']} runs x "
                    f"{shape['n_steps']} steps, batch {shape['batch_size']}, {shape['n_tests']} test examples "
                    "(the scale study's shape), after compilation: products by the dense count matrix or by the "
                    "batch slots, the pairs vectorised at once or one by one inside the program "
                    "(`krylov.SEQUENTIAL_BACKENDS`).")
    (RESULTS / "cg.md").write_text("\n".join(["# bayes-cg against bayes-grid", "", intro, ""] + table
                                             + ["", "## Layouts", "", layout_intro, ""] + layout_table) + "\n")


if __name__ == "__main__":
    main()
