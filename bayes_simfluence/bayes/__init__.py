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

from __future__ import annotations

import importlib
from typing import Any

#: the package's names and the modules that define them, imported when first asked for, so that
#: its light modules (:mod:`~bayes_simfluence.bayes.backends`, which the CLI's help reads) load
#: without JAX
_LAZY = {"BayesianSimfluence": "posterior", "TrajectoryBands": "posterior", "ModelConfig": "model"}

__all__ = ["BayesianSimfluence", "ModelConfig", "TrajectoryBands"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
