"""bayes-simfluence: training-data attribution by simulating training runs, the Bayesian way.

The names below are imported on first use (PEP 562), so that a process which only logs runs
(``collect`` and its worker processes) does not load the Bayesian stack (NumPyro, ArviZ) it
never calls: about 2 s of start-up per process (13.1 s -> 11.2 s by `-X importtime` for the
collector here; torch, transformers and datasets are the rest).
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the module that defines it
_EXPORTS = {
    "FitContext": "bayes_simfluence.methods",
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
