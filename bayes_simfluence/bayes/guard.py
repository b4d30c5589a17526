"""The guard: never hand out a simulator worse than ignoring the curriculum.

The Bayesian model nests the curriculum-blind mean trajectory (effects zero), but a fit that is
good one step ahead (teacher forcing) can still roll out worse than that baseline, because
errors compound through ``alpha`` over a whole run. The guard judges the fit where users consume
it, on whole held-out trajectories:

1. split the training runs into ``folds`` contiguous folds (default :data:`FOLDS`); for each, fit the same method on the
   other runs and roll its posterior mean out on the fold's curricula from their own ``L_0``;
2. predict the same runs with the curriculum-blind model, the mean trajectory of the other runs
   shifted to each run's ``L_0`` (:class:`bayes_simfluence.simulators.MeanTrajectory`);
3. per test example, choose the stacking weight ``w[m]`` in ``[0, 1]`` of the full model that
   minimises the held-out all-steps squared error of ``w f + (1 - w) b`` (closed form), as in
   stacking of predictive distributions (Yao, Vehtari, Simpson and Gelman, 2018), scored here by
   squared error of the means.

The final posterior (fitted on every run) then predicts the mixture: with probability ``w[m]`` a
trajectory draw of the full model, otherwise the blind one (effects zero, the mean trajectory's
step changes, the same noise), so its mean is ``w f + (1 - w) b``. ``w = 1`` everywhere is the
plain posterior; on runs where the curriculum has no effect ``w`` falls towards 0.

The held-out residuals of the stacked prediction, ``observed - (w f + (1 - w) b)`` for every
training run, are kept: they are what a new run differs by from the simulation, and give the
posterior its new-run predictive (:mod:`bayes_simfluence.bayes.discrepancy`).

Cost. ``bayes-svi``'s cross-fits start from the full fit's hyperparameters, with the effects where
the full fit started (:func:`bayes_simfluence.bayes.inference.cross_fit_start`), and take a
quarter of its SVI steps; at ``N=T=1000, R=16, M=64`` the whole default fit went from 465 s to
243 s. Measured on the ``real_sets.py`` runs (24 runs, 4 folds), held-out all-steps MSE of the
stacked prediction on ``mlp_adam``, where the folds differ most:

=========================================  ==============
cross-fits                                  stacked MSE
=========================================  ==============
cold, 2000 steps (before) / 1000 steps      0.1113 / 0.1100
from the full fit's hyperparameters, 500    0.1086
  the same, 1000 steps                      0.1098
from every parameter of the full fit, 2000  0.1119
  the same, 500 / 250 steps                 0.1067 / 0.1015
=========================================  ==============

Started from the full fit's effects, the shorter the cross-fit the smaller its held-out error:
it keeps part of what the held-out runs taught the full fit (a leak, which would make the
weights and the new-run predictive too confident). Started from the hyperparameters only, it is
within the spread of cold fits. On ``mlp_sgd`` every variant was within 0.0176-0.0183, and the
retraining study's calibration did not move (``experiments/results/retraining_study.md``).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, NamedTuple

import numpy as np
from tqdm.auto import tqdm

from bayes_simfluence.runs import Runs
from bayes_simfluence.simulators import MeanTrajectory, Simulator

#: the fewest runs a held-out fold may have.
MIN_RUNS_PER_FOLD = 2
#: default number of folds: each cross-fit sees 3/4 of the runs. With 2 folds (fits on half the
#: runs) the weights came out biased towards the blind model on the project's real sets, because a
#: fit on half the runs is worse than the final fit on all of them.
FOLDS = 4


class Stacking(NamedTuple):
    """What the guard found.

    Attributes:
        weight: ``[tests]`` weight of the full model in the stacked predictive.
        report: held-out-run all-steps MSE of the full model, the blind one and the stack
            (the stack's weights were chosen on these same predictions, one per test example:
            slightly optimistic), folds, runs, seconds: JSON-ready.
        residuals: ``[runs, steps, tests]`` held-out ``observed - stacked`` trajectories of every
            training run (without ``L_0``), in run order; None when the guard was skipped.
    """

    weight: np.ndarray
    report: dict[str, Any]
    residuals: np.ndarray | None = None


def stacking_weights(full: np.ndarray, blind: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """``[tests]`` ``argmin_{w in [0, 1]} sum (w f + (1 - w) b - y)^2`` over runs and steps.

    Args:
        full, blind, actual: ``[runs, steps, tests]`` trajectories (without ``L_0``, which all share).
    """
    gap, target = full - blind, actual - blind
    denominator = (gap**2).sum(axis=(0, 1))
    numerator = (gap * target).sum(axis=(0, 1))
    weight = np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)
    return np.clip(weight, 0.0, 1.0)


def contiguous_folds(n_runs: int, folds: int) -> list[np.ndarray]:
    """Indices of ``folds`` contiguous, nearly equal folds of ``n_runs`` runs."""
    return list(np.array_split(np.arange(n_runs), folds))


def stack_against_blind(fit: Callable[[Runs], Simulator], runs: Runs, folds: int = FOLDS,
                        progress: bool = False, workers: int = 1,
                        blind: Callable[[Runs, Simulator], Simulator] = lambda train, fitted: MeanTrajectory().fit(train),
                        blind_name: str = "curriculum-blind") -> Stacking:
    """Cross-fit ``fit`` over folds of ``runs`` and choose the stacking weights (module docstring).

    ``blind(train, fitted)`` fits the alternative on a fold's training runs, given the fold's fit of
    ``fit`` (whose estimates it may reuse): the mean trajectory, or with the run state
    :class:`~bayes_simfluence.bayes.run_state.StateTrajectory`; ``blind_name`` names it in the report.

    With fewer than ``folds * MIN_RUNS_PER_FOLD`` runs nothing is held out: every weight is 1 and
    the report says why. ``workers > 1`` runs that many cross-fits at once in threads (XLA
    computes while Python waits; the results are the same numbers): the first fold of each
    training-run count runs alone, so every program is traced and compiled by one thread only
    (NumPyro's effect handlers live on one global stack, which concurrent tracing would corrupt).
    """
    if runs.n_runs < folds * MIN_RUNS_PER_FOLD:
        return Stacking(np.ones(runs.n_tests), {
            "skipped": f"{runs.n_runs} runs: the guard needs at least {folds * MIN_RUNS_PER_FOLD} "
                       f"({folds} folds of {MIN_RUNS_PER_FOLD})"})
    start = time.perf_counter()

    def cross_fit(held: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        train, test = runs.select_runs(np.setdiff1d(np.arange(runs.n_runs), held)), runs.select_runs(held)
        fitted = fit(train)
        return (fitted.simulate(test.curricula, test.initial_losses)[:, 1:],
                blind(train, fitted).simulate(test.curricula, test.initial_losses)[:, 1:],
                test.losses[:, 1:])

    held_out = contiguous_folds(runs.n_runs, folds)
    first_of_size: dict[int, int] = {}
    for k, held in enumerate(held_out):
        first_of_size.setdefault(len(held), k)
    results: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    with tqdm(total=folds, desc="guard: cross-fits", unit="fold", disable=not progress) as bar:
        for k in first_of_size.values():
            results[k] = cross_fit(held_out[k])
            bar.update()
        rest = [k for k in range(folds) if k not in results]
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(rest)))) as pool:
            for k, result in zip(rest, pool.map(lambda k: cross_fit(held_out[k]), rest)):
                results[k] = result
                bar.update()
    full, alternative, actual = (np.concatenate([results[k][part] for k in range(folds)]) for part in range(3))
    weight = stacking_weights(full, alternative, actual)
    stacked = weight * full + (1.0 - weight) * alternative

    def mse(prediction: np.ndarray) -> float:
        return float(((prediction - actual) ** 2).mean())

    report = {"folds": folds, "heldout_runs": int(actual.shape[0]), "heldout_mse_full": mse(full),
              "heldout_mse_blind": mse(alternative), "heldout_mse_stacked": mse(stacked),
              "mean_weight": float(weight.mean()), "workers": workers, "seconds": time.perf_counter() - start,
              "blind": blind_name}
    return Stacking(weight, report, actual - stacked)


def describe(report: dict[str, Any]) -> str:
    """One line for users: what the guard measured and what it chose."""
    if "skipped" in report:
        return f"guard skipped: {report['skipped']}"
    return (f"guard: on {report['heldout_runs']} held-out training runs ({report['folds']} folds), all-steps MSE "
            f"{report['heldout_mse_full']:.4g} with the effects, {report['heldout_mse_blind']:.4g} "
            f"{report.get('blind', 'curriculum-blind')}, "
            f"{report['heldout_mse_stacked']:.4g} stacked; weight of the effects {report['mean_weight']:.2f} "
            "(mean over test examples)")
