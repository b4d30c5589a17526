"""Produce runs: fine-tune Hugging Face models under random curricula and log per-example test losses.

Also the TracIn and influence-function simulators computed from the same model, and the
embedded default model and task used by ``bayes-simfluence demo``. Needs ``torch``,
``transformers`` and ``datasets``.
"""

from bayes_simfluence.collect.collector import CollectConfig, collect
from bayes_simfluence.collect.optim import OptimConfig
from bayes_simfluence.collect.scores import AdditiveScoreSimulator, ScoreSet, load_scores, scores_path_for

__all__ = ["AdditiveScoreSimulator", "CollectConfig", "OptimConfig", "ScoreSet", "collect", "load_scores",
           "scores_path_for"]
