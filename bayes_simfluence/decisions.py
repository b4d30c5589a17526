"""The decisions a fitted simulator answers, as methods: compare curricula, attribute the final loss."""

from __future__ import annotations

from typing import Any

import numpy as np

from bayes_simfluence.attributions import ExampleEffects, final_loss_effects
from bayes_simfluence.compare import Comparison, compare


class Decisions:
    """Decisions as methods of a simulator (a base class of
    :class:`~bayes_simfluence.bayes.posterior.BayesianSimfluence`): ``simulator.compare(...)`` is
    :func:`bayes_simfluence.compare.compare` ``(simulator, ...)``; any simulator can be passed to
    the functions themselves."""

    def compare(self, curricula_list: Any, initial_losses: np.ndarray, **kwargs: Any) -> Comparison:
        """Is one curriculum better than another? :func:`bayes_simfluence.compare.compare`:
        ``curricula_list`` holds two or more candidates (each ``[steps, batch]``), ``initial_losses``
        is ``[tests]``; returns a :class:`~bayes_simfluence.compare.Comparison`."""
        return compare(self, curricula_list, initial_losses, **kwargs)

    def attributions(self, curriculum: Any, initial_losses: np.ndarray, **kwargs: Any) -> ExampleEffects:
        """Which training examples lowered the final loss under ``curriculum`` (``[steps, batch]``)?
        :func:`bayes_simfluence.attributions.final_loss_effects`; returns its
        :class:`~bayes_simfluence.attributions.ExampleEffects`."""
        return final_loss_effects(self, curriculum, initial_losses, **kwargs)
