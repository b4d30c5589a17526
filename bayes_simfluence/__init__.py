"""bayes-simfluence: training-data attribution by simulating training runs, the Bayesian way.

``import bayes_simfluence as bsf``: :func:`fit` a simulator on logged runs (:class:`Runs`) with
typed :class:`Settings`, :func:`load` a saved one; the fitted simulator simulates curricula,
compares them (``compare``), attributes the final loss to training examples (``attributions``)
and, when Bayesian, converts to ArviZ (``to_arviz``).

The names are imported on first use (PEP 562), so that a process which only logs runs
(``collect`` and its worker processes) does not load the Bayesian stack (NumPyro, ArviZ) it
never calls.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the module that defines it
_EXPORTS = {
    "BayesianSimfluence": "bayes_simfluence.bayes.posterior",
    "FitContext": "bayes_simfluence.methods",
    "Settings": "bayes_simfluence.settings",
    "fit": "bayes_simfluence.api",
    "load": "bayes_simfluence.api",
    "MeanTrajectory": "bayes_simfluence.simulators",
    "Runs": "bayes_simfluence.runs",
    "RunsFormatError": "bayes_simfluence.runs",
    "SimfluenceLinear": "bayes_simfluence.simulators",
    "available_methods": "bayes_simfluence.methods",
    "evaluate_methods": "bayes_simfluence.evaluation",
    "fit_method": "bayes_simfluence.methods",
    "format_table": "bayes_simfluence.evaluation",
    "load_simulator": "bayes_simfluence.methods",
    "score_simulator": "bayes_simfluence.evaluation",
    "synthetic_runs": "bayes_simfluence.synthetic",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'bayes_simfluence' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
