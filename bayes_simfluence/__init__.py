"""bayes-simfluence: training-data attribution by simulating training runs, the Bayesian way."""

from bayes_simfluence.evaluation import evaluate_methods, format_table, score_simulator
from bayes_simfluence.methods import FitContext, available_methods, fit_method, load_simulator
from bayes_simfluence.runs import Runs, RunsFormatError
from bayes_simfluence.simulators import MeanTrajectory, SimfluenceLinear
from bayes_simfluence.synthetic import synthetic_runs

__all__ = [
    "FitContext",
    "MeanTrajectory",
    "Runs",
    "RunsFormatError",
    "SimfluenceLinear",
    "available_methods",
    "evaluate_methods",
    "fit_method",
    "format_table",
    "load_simulator",
    "score_simulator",
    "synthetic_runs",
]
__version__ = "0.1.0"
