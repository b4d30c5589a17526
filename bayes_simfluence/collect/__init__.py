"""Produce runs: fine-tune Hugging Face models under random curricula and log per-example test losses.

Also the TracIn and influence-function scores computed from the same model (their simulators
live in the core, :mod:`bayes_simfluence.scores`), and the embedded default model and task used
by ``bayes-simfluence demo``. Needs the ``collect`` extra: ``torch``, ``transformers``, ``datasets``.
"""

from bayes_simfluence.collect.collector import CollectConfig, collect
from bayes_simfluence.collect.optim import OptimConfig

__all__ = ["CollectConfig", "OptimConfig", "collect"]
