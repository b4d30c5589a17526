"""Where the point simulators' ridge shrinks the effects to, on every real set of the project.

    python experiments/ridge_centre.py      # about 4 minutes on 2 CPU cores

For each runs file in ``experiments/data/`` (the last 8 runs held out), each variant (``linear``,
``additive``, ``multiplicative``) is fitted on the other runs with its ridge strength chosen by
cross-validation, once with each centre of the penalty (``-o ridge_centre``): ``fixed`` (``A_i``
shrunk towards ``1/batch``, ``B_i`` towards 0: a fully regularised model keeps the loss) and
``common`` (towards a level per test example fitted without penalty: a fully regularised model is a
decay all examples share). Scores on the held-out runs: all-steps MSE of the rolled-out
trajectories and LDS (Spearman across runs of the final loss, mean over test examples; the sets
follow the random-subset protocol). The defaults of :data:`COMMON_LEVEL_BY_VARIANT` are read from
this table. Writes ``experiments/results/ridge_centre.{json,md}``.
"""

from __future__ import annotations

import json
from pathlib import Path

from bayes_simfluence.metrics import all_steps_mse, spearman_runs
from bayes_simfluence.ridge import VARIANTS
from bayes_simfluence.runs import Runs
from bayes_simfluence.simulators import COMMON_LEVEL_BY_VARIANT, MeanTrajectory, SimfluenceLinear

HERE = Path(__file__).resolve().parent
HELDOUT = 8
CENTRES = {"fixed": False, "common": True}


def study(path: Path) -> dict:
    """``{"blind": MSE, variant: {centre: {"mse", "lds", "ridge"}}}`` for one runs file."""
    train, heldout = Runs.load(path).split(HELDOUT)
    blind = MeanTrajectory().fit(train).simulate(heldout.curricula, heldout.initial_losses)
    result: dict = {"runs": f"{train.n_runs} + {heldout.n_runs}", "n_train": train.n_train,
                    "blind_mse": all_steps_mse(blind, heldout.losses)}
    for variant in VARIANTS:
        result[variant] = {}
        for centre, level in CENTRES.items():
            fitted = SimfluenceLinear(variant=variant, common_level=level).fit(train)
            predicted = fitted.simulate(heldout.curricula, heldout.initial_losses)
            result[variant][centre] = {"mse": all_steps_mse(predicted, heldout.losses),
                                       "lds": spearman_runs(predicted, heldout.losses)[0],
                                       "ridge": fitted.ridge_selected}
    return result


def main() -> None:
    results = {path.stem: study(path) for path in sorted((HERE / "data").glob("*.npz"))
               if not path.name.endswith(".scores.npz")}
    out = HERE / "results"
    (out / "ridge_centre.json").write_text(json.dumps(results, indent=2) + "\n")
    header = "| set | runs (fit + held out) | n_train | blind MSE | " + " | ".join(
        f"{variant} {centre}{' (default)' if COMMON_LEVEL_BY_VARIANT[variant] == level else ''}"
        for variant in VARIANTS for centre, level in CENTRES.items()) + " |"
    lines = ["Held-out all-steps MSE / LDS; the better MSE of each variant in bold (both where they agree to 4 digits).", "", header,
             "|" + "---|" * (4 + 2 * len(VARIANTS))]
    for name, r in results.items():
        cells = []
        for variant in VARIANTS:
            shown = {centre: f"{r[variant][centre]['mse']:.4g}" for centre in CENTRES}
            best = min(float(text) for text in shown.values())
            for centre, text in shown.items():
                cells.append(f"{f'**{text}**' if float(text) == best else text} / {r[variant][centre]['lds']:.2f}")
        lines.append(f"| {name} | {r['runs']} | {r['n_train']} | {r['blind_mse']:.4g} | " + " | ".join(cells) + " |")
    (out / "ridge_centre.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
