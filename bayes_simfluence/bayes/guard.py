"""The guard: never hand out a simulator worse than ignoring the curriculum.

The Bayesian model nests the curriculum-blind mean trajectory (effects zero), but a fit that is
good one step ahead (teacher forcing) can still roll out worse than that baseline, because
errors compound through ``alpha`` over a whole run. The guard judges the fit where users consume
it, on whole held-out trajectories: it is the core's held-out stacking
(:func:`bayes_simfluence.stacking.cross_fit_stacking`) of the posterior mean against the
curriculum-blind model (the mean trajectory of the other runs shifted to each run's ``L_0``,
:class:`bayes_simfluence.simulators.MeanTrajectory`, or with the run state
:class:`~bayes_simfluence.bayes.run_state.StateTrajectory`), with weights ``w[m]`` per test example.

The final posterior (fitted on every run) then predicts the stack draw by draw: ``w[m]`` times a
trajectory draw of the full model plus ``1 - w[m]`` times the blind one (effects zero, the mean
trajectory's step changes, the same noise), so its mean is ``w f + (1 - w) b``. ``w = 1``
everywhere is the plain posterior; on runs where the curriculum has no effect ``w`` falls towards 0.

The held-out residuals of the stacked prediction, ``observed - (w f + (1 - w) b)`` for every
training run, are kept: they are what a new run differs by from the simulation, and give the
posterior its new-run predictive (:mod:`bayes_simfluence.bayes.discrepancy`).

Cross-fits as good as the final fit. The held-out residuals stand for the final fit's misses on
new runs, so the cross-fits run the final fit's procedure: ``bayes-svi``'s take as many SVI steps as
the full fit (:data:`bayes_simfluence.bayes.methods.GUARD_STEP_FRACTION`, option ``guard_steps``),
starting from its hyperparameters with the effects where the full fit started
(:func:`bayes_simfluence.bayes.inference.cross_fit_start`): the effects carry what the held-out runs
taught the full fit (a warm start from them makes the held-out error too small), while the
hyperparameters are pooled over every training example and move freely over the whole fit. The
guard thus costs ``guard_folds`` fits on 3/4 of the runs. Shorter cross-fits (a quarter of the
steps, this module's earlier default) were measurably worse than the final fit on runs drawn from
the model, so their residuals overstated its misses on fresh runs and widened every new-run
interval; the measurements, and the earlier ones on real sets, are in
``experiments/results/cross_fit_quality.md`` (test: ``tests/test_cross_fit_quality.py``).
"""

from __future__ import annotations

from typing import Callable

from bayes_simfluence.runs import Runs
from bayes_simfluence.simulators import Simulator
from bayes_simfluence.stacking import (BLIND_NAME, FOLDS, MIN_RUNS_PER_FOLD, AlternativeFit, Stacking,
                                       blind_alternative, cross_fit_stacking, describe, stacking_weights)

__all__ = ["FOLDS", "MIN_RUNS_PER_FOLD", "Stacking", "describe", "stack_against_blind", "stacking_weights"]


def stack_against_blind(fit: Callable[[Runs], Simulator], runs: Runs, folds: int = FOLDS,
                        progress: bool = False, workers: int = 1, blind: AlternativeFit = blind_alternative,
                        blind_name: str = BLIND_NAME, alone_first: bool = True) -> Stacking:
    """Cross-fit ``fit`` over folds of ``runs`` and choose the stacking weights against the blind
    model ``blind(train, fitted)`` (named ``blind_name`` in the report):
    :func:`bayes_simfluence.stacking.cross_fit_stacking`, whose arguments these are."""
    return cross_fit_stacking(fit, runs, folds, progress, workers, blind, blind_name, alone_first)
