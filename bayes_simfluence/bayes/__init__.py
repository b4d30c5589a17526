"""Bayesian Simfluence: hierarchical Simfluence-Linear in NumPyro with NUTS, SVI, an exact path and a grid path.

Modules: :mod:`~bayes_simfluence.bayes.data` (standardised teacher-forced data),
:mod:`~bayes_simfluence.bayes.model` (the NumPyro model), :mod:`~bayes_simfluence.bayes.conjugate`
(exact Gaussian posterior and collapsed likelihood), :mod:`~bayes_simfluence.bayes.inference`
(NUTS, SVI, exact), :mod:`~bayes_simfluence.bayes.grid` (hyperparameters on a grid, everything else
exact: the default at small and medium sizes), :mod:`~bayes_simfluence.bayes.posterior` (the fitted simulator),
:mod:`~bayes_simfluence.bayes.guard` (stacking with the curriculum-blind model by held-out roll-outs),
:mod:`~bayes_simfluence.bayes.diagnostics` (every ArviZ call), :mod:`~bayes_simfluence.bayes.methods`
(``bayes``, ``bayes-grid``, ``bayes-svi``, ``bayes-nuts``, ``bayes-exact``), :mod:`~bayes_simfluence.bayes.synthetic`.
"""

from bayes_simfluence.bayes.model import ModelConfig
from bayes_simfluence.bayes.posterior import BayesianSimfluence, TrajectoryBands

__all__ = ["BayesianSimfluence", "ModelConfig", "TrajectoryBands"]
