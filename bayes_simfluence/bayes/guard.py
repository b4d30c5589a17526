"""The guard: never hand out a simulator worse than ignoring the curriculum.

The Bayesian model nests the curriculum-blind mean trajectory (effects zero), but a fit that is
good one step ahead (teacher forcing) can still roll out worse than that baseline, because
errors compound through ``alpha`` over a whole run. The guard judges the fit where users consume
it, on whole held-out trajectories: it is the core's held-out stacking
(:func:`bayes_simfluence.stacking.cross_fit_stacking`) of the posterior mean against the
curriculum-blind model (the mean trajectory of the other runs shifted to each run's ``L_0``,
:class:`bayes_simfluence.simulators.MeanTrajectory`, or with the run state
:class:`~bayes_simfluence.bayes.run_state.StateTrajectory`), with weights ``w[m]`` per test example.

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

from typing import Callable

from bayes_simfluence.runs import Runs
from bayes_simfluence.simulators import Simulator
from bayes_simfluence.stacking import (BLIND_NAME, FOLDS, MIN_RUNS_PER_FOLD, AlternativeFit, Stacking,
                                       blind_alternative, cross_fit_stacking, describe, stacking_weights)

__all__ = ["FOLDS", "MIN_RUNS_PER_FOLD", "Stacking", "describe", "stack_against_blind", "stacking_weights"]


def stack_against_blind(fit: Callable[[Runs], Simulator], runs: Runs, folds: int = FOLDS,
                        progress: bool = False, workers: int = 1, blind: AlternativeFit = blind_alternative,
                        blind_name: str = BLIND_NAME) -> Stacking:
    """Cross-fit ``fit`` over folds of ``runs`` and choose the stacking weights against the blind
    model ``blind(train, fitted)`` (named ``blind_name`` in the report):
    :func:`bayes_simfluence.stacking.cross_fit_stacking`, whose arguments these are."""
    return cross_fit_stacking(fit, runs, folds, progress, workers, blind, blind_name)
