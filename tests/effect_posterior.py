"""A probabilistic simulator with a known Gaussian posterior over centred effects (test double).

Draw ``d`` of the effects is ``a = a_mean + sd_a * z_a[d]``, ``B = B_mean + sd_B * z_B[d]`` with
``z ~ N(0, 1)`` from ``seed`` alone: the same seed gives the same parameter draws whatever the
curricula, as the Bayesian simulators promise. ``L_t = (1 + sum a) L_{t-1} + sum B (+ noise)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from bayes_simfluence.rollout import batch_sums, roll_out


@dataclass
class GaussianEffects:
    a_mean: np.ndarray  # [tests, n_train]
    b_mean: np.ndarray  # [tests, n_train]
    sd_a: float = 0.0
    sd_b: float = 0.0
    noise: float = 0.0
    name: str = "gaussian-effects"
    tests: np.ndarray | None = None  # set by select_tests: which of the original test examples
    average_example: bool = False  # set by with_average_example: a virtual last example with the pool means

    def select_tests(self, tests: np.ndarray) -> "GaussianEffects":
        """The same draws for a subset of test examples (the full draws are made, then sliced)."""
        kept = np.arange(self.a_mean.shape[0]) if self.tests is None else self.tests
        return dataclasses.replace(self, tests=kept[np.asarray(tests)])

    def with_average_example(self) -> "GaussianEffects":
        """The same draws plus example ``n_train``: in every draw, the mean of the pool's effects."""
        return dataclasses.replace(self, average_example=True)

    @property
    def n_train(self) -> int:
        return self.a_mean.shape[1] + int(self.average_example)

    def _extended(self, values: np.ndarray) -> np.ndarray:
        if not self.average_example:
            return values
        return np.concatenate([values, values.mean(axis=-1, keepdims=True)], axis=-1)

    def _means(self) -> tuple[np.ndarray, np.ndarray]:
        a, b = self._extended(self.a_mean), self._extended(self.b_mean)
        return (a, b) if self.tests is None else (a[self.tests], b[self.tests])

    def effect_draws(self, n_draws: int, seed: int = 0) -> dict[str, np.ndarray]:
        """The effect draws of :meth:`parameter_draws` (the :class:`EffectSimulator` protocol)."""
        return self.parameter_draws(n_draws, seed)

    def parameter_draws(self, n_draws: int, seed: int = 0) -> dict[str, np.ndarray]:
        """``{"a", "B"}``, each ``[draws, tests, n_train]``, as the Bayesian simulator's accessor."""
        rng = np.random.default_rng(seed)
        z_a = rng.standard_normal((n_draws,) + self.a_mean.shape)
        z_b = rng.standard_normal((n_draws,) + self.b_mean.shape)
        draws = {"a": self._extended(self.a_mean + self.sd_a * z_a), "B": self._extended(self.b_mean + self.sd_b * z_b)}
        return draws if self.tests is None else {k: v[:, self.tests] for k, v in draws.items()}

    def _roll(self, a: np.ndarray, b: np.ndarray, curricula: np.ndarray, initial: np.ndarray) -> np.ndarray:
        curricula = jnp.asarray(curricula)
        alpha = 1.0 + batch_sums(jnp.asarray(a), curricula)
        beta = batch_sums(jnp.asarray(b), curricula)
        return np.asarray(roll_out(alpha, beta, jnp.asarray(initial, dtype=alpha.dtype)))

    def simulate(self, curricula: np.ndarray, initial_losses: np.ndarray) -> np.ndarray:
        return self._roll(*self._means(), curricula, initial_losses)

    def predictive_kind(self, predictive: str | None = None) -> str:
        """``"parameters"`` (the default) or ``"noise"``: this double has no run discrepancy."""
        if predictive not in (None, "noise", "parameters"):
            raise ValueError(f"predictive {predictive!r}: this test double has 'noise' and 'parameters'")
        return predictive or "parameters"

    def describe_predictive(self, predictive: str | None = None) -> str:
        return f"{self.predictive_kind(predictive)} (Gaussian test double)"

    def simulate_draws(self, curricula: np.ndarray, initial_losses: np.ndarray, n_draws: int, seed: int = 0,
                       predictive: str | None = None) -> np.ndarray:
        curricula = np.asarray(curricula)
        n_tests = self._means()[0].shape[0]
        if curricula.max() >= self.n_train:
            raise ValueError(f"curricula hold index {curricula.max()} out of range for n_train = {self.n_train}")
        if np.shape(initial_losses) != (curricula.shape[0], n_tests):
            raise ValueError(f"initial_losses must have shape {(curricula.shape[0], n_tests)}")
        params = self.parameter_draws(n_draws, seed)
        a, b = params["a"], params["B"]
        roll = jax.vmap(lambda a_d, b_d: roll_out(1.0 + batch_sums(a_d, jnp.asarray(curricula)),
                                                  batch_sums(b_d, jnp.asarray(curricula)),
                                                  jnp.asarray(initial_losses, dtype=jnp.float32)))
        draws = np.array(roll(jnp.asarray(a, dtype=jnp.float32), jnp.asarray(b, dtype=jnp.float32)), dtype=np.float64)
        if self.predictive_kind(predictive) == "noise" and self.noise > 0:
            key = jax.random.PRNGKey(seed + 1)
            draws[:, :, 1:] += self.noise * np.asarray(jax.random.normal(key, draws[:, :, 1:].shape))
        return draws

    def save(self, path: str) -> None:
        """The :class:`~bayes_simfluence.simulators.ProbabilisticSimulator` protocol's; a test double is never saved."""
        raise NotImplementedError("GaussianEffects is a test double: it is never saved")
