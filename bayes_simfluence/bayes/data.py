"""Training runs as the Bayesian model sees them: standardised, teacher-forced loss changes.

Every test example ``m`` is put on a common scale by dividing its losses by
``scale[m] = mean_{runs, steps} |L|`` (its typical loss). On that scale a per-example effect of
0.01 means "one percent of this example's typical loss", so one set of weakly informative
priors suits every test example, and the multiplicative (``a``) and additive (``B``) effects act
on comparable units (the ``a`` feature ``L_{t-1} * n`` is ``n`` times a number near 1).
Parameters are converted back to loss units before they leave the package.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from bayes_simfluence.bayes.features import standardised_features
from bayes_simfluence.runs import Runs
from bayes_simfluence.validation import InputError


class ModelData(NamedTuple):
    """What the likelihood needs, on the standardised scale.

    Attributes:
        curricula: ``[runs, steps, batch]`` int32, ``-1`` for an empty slot.
        previous: ``[runs, steps, tests]`` standardised ``L_{t-1}``.
        change: ``[runs, steps, tests]`` standardised ``L_t - L_{t-1}`` (the observations).
        scale: ``[tests]`` the loss scale each test example was divided by.
        n_train: number of training examples.
        features: ``[tests, n_train, k]`` standardised features of the feature prior
            (:func:`~bayes_simfluence.bayes.features.standardised_features`), or None.
    """

    curricula: np.ndarray
    previous: np.ndarray
    change: np.ndarray
    scale: np.ndarray
    n_train: int
    features: np.ndarray | None = None

    @property
    def n_runs(self) -> int:
        return int(self.curricula.shape[0])

    @property
    def n_steps(self) -> int:
        return int(self.curricula.shape[1])

    @property
    def n_tests(self) -> int:
        return int(self.previous.shape[-1])

    def select_tests(self, index: np.ndarray | slice) -> "ModelData":
        """The same runs restricted to some test examples."""
        return ModelData(self.curricula, self.previous[..., index], self.change[..., index],
                         self.scale[index], self.n_train, None if self.features is None else self.features[index])

    def features_of(self, tests: np.ndarray, use: bool) -> np.ndarray:
        """``[len(tests), n_train, k]`` the features of these test examples (``k = 0`` unless ``use``)."""
        if not use:
            return np.zeros((len(tests), self.n_train, 0))
        if self.features is None:
            raise InputError("-o features=true: the runs carry no 'train_features' or 'pair_features'")
        return self.features[tests]

    def n_features_used(self, use: bool) -> int:
        """Features ``k`` the fit regresses on (0 unless ``use``)."""
        return self.features.shape[-1] if use and self.features is not None else 0


def loss_scale(losses: np.ndarray) -> np.ndarray:
    """``[tests]`` mean absolute loss of each test example (1 where that is 0)."""
    scale = np.abs(losses).mean(axis=(0, 1))
    return np.where(scale > 0, scale, 1.0)


def model_data(runs: Runs) -> ModelData:
    """Standardise ``runs`` for the model: ``losses [runs, steps + 1, tests]`` -> changes and previous losses."""
    scale = loss_scale(runs.losses)
    standard = runs.losses / scale
    return ModelData(
        curricula=runs.curricula.astype(np.int32),
        previous=standard[:, :-1, :],
        change=np.diff(standard, axis=1),
        scale=scale,
        n_train=runs.n_train,
        features=standardised_features(runs),
    )
