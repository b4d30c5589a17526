"""A structured variational family for ``bayes-svi`` (``-o guide=conditional``): each test
example's effects given its hyperparameters.

Per test example ``m`` the guide is ``q(h_m) prod_i q(w_mi | h_m)``:

- ``h_m``: the hyperparameters (noise scale ``sigma``, effect scale ``s``, memory decay
  ``lambda``, free locations ``mu``), jointly Gaussian on their unconstrained scale with a full
  ``k x k`` Cholesky factor per test example (``k <= 5``), written as a chain of conditionals so
  that every site keeps the model's name and constraint.
- ``w_mi = (a_mi, B_mi)`` given ``h_m``: the prior ``N(mu, s^2 I)`` times a Gaussian *site*
  ``N(w; m_mi, (rho(lambda) S_mi / sigma^2)^{-1})`` standing for example ``i``'s likelihood, so
  ``q(w | h) = N(P^{-1} (S' m + mu / s^2), P^{-1})`` with ``S' = rho S / sigma^2`` and
  ``P = S' + I / s^2``. ``S_mi = C C^T`` with ``C = chol(F_mi) K_mi``: ``F_mi`` is the
  information of one teacher-forced step about ``w_mi`` summed over the slots the example
  filled (``[[sum L^2, sum L], [sum L, count]]`` in previous standardised losses ``L``, computed
  once from the data), and ``K_mi`` a learned lower-triangular correction (identity at the
  start). The site mean ``m_mi = m0_mi + sum_j M_mij e_mj`` moves linearly with the standardised
  draws ``e_m`` of the free hyperparameters (learned ``M``, zero at the start), so the effects
  can follow a hyperparameter that changes what they explain (above all the memory decay, which
  changes the features). ``rho(lambda) = (1 - lambda) / (1 + lambda)`` is the fraction of that information left
  when optimiser memory spreads an example over later steps (the sum of the squared weights
  ``(1 - lambda) lambda^k``); 1 without memory.

Why: in the default mean-field guide over non-centred effects (``AutoNormal``) ``a = s z`` with
``q(s) q(z)`` independent, and the data pin ``a`` down, so with ``z`` held the width of ``s`` is
set by the likelihood of ``a`` (far too narrow), and ``s`` can only move along the ridge
``s z = a`` slowly. Here a draw of ``s`` (or ``sigma``, or ``lambda``) moves the effects the way
the exact conditional posterior would (more shrinkage for a smaller ``s``), and the effects
start at their information (the optimiser only refines means and corrections). Effects of
different training examples stay independent given ``h``, as in a mean-field guide.

What it gives (measured; ``experiments/results/sbc.md`` and ``tests/test_bayes_inference.py``):

- SBC on model-drawn runs (with optimiser memory): the effect scale's ranks, piled at the ends
  under ``AutoNormal`` (0.96 of them in the outer two of ten bins, truth below the draws), come
  near uniform (0.29, truth slightly above); memory decay, the effects against the average
  example, the final loss and the paired difference pass.
- Against the exact posterior with free hyperparameters (no memory, ``bayes-exact`` as oracle)
  it is *not* better: mean-field independence of the examples given ``h`` costs more evidence
  where the exact posterior correlates them more (a large ``s``, a small ``sigma``), so the
  effect scale comes out 3-7 posterior sd too small and the noise scale 2-6 sd too large, and the
  sd of a paired difference 0.6x the exact one (``AutoNormal``: the effect scale 2.6-3.9 sd too
  large, the paired difference 1.2-1.5x). With the hyperparameters fixed both guides match the
  exact sds of decisions within 10%. Hence not the default.

The model is used in its *centred* form (sites ``a`` and ``B``); site means are learned in units
of ``effect_scale_prior``, so every variational parameter is of order one for Adam. The step
component, where it is not integrated out (Student-t likelihood), gets a mean-field Normal over
its innovations.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax import Array
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to

from bayes_simfluence.bayes.model import ModelConfig

#: support of every hyperparameter site of :func:`bayes_simfluence.bayes.model.effects_model`.
SUPPORTS = {"noise_scale": constraints.positive, "effect_scale": constraints.positive,
            "a_location": constraints.real, "B_location": constraints.real,
            "memory_decay": constraints.unit_interval}
INITIAL_HYPER_SCALE = 0.1
JITTER = 1e-6


def hyper_sites(config: ModelConfig) -> list[str]:
    """The model's hyperparameter sites, in the order the guide chains them."""
    names = ["noise_scale", "effect_scale"]
    if config.has_a_location:
        names.append("a_location")
    if config.has_b_location:
        names.append("B_location")
    if config.has_memory:
        names.append("memory_decay")
    return names


def _parts(config: ModelConfig) -> list[int]:
    """Which of the two features (0: ``a``, 1: ``B``) the variant has."""
    return [p for p, present in ((0, config.has_multiplicative), (1, config.has_additive)) if present]


def site_statistics(curricula: np.ndarray, previous: np.ndarray, change: np.ndarray, n_train: int,
                    config: ModelConfig) -> dict[str, np.ndarray]:
    """What the guide starts from, computed once from the data (float64, NumPy).

    Args:
        curricula: ``[runs, steps, batch]`` (``-1`` empty); previous, change: ``[runs, steps, tests]``.

    Returns:
        ``"factor"`` ``[3, n_train, tests]``: ``(c11, c21, c22)`` of ``chol(F + jitter)`` (for a
        one-part variant ``c11 = sqrt(F)`` of its feature and the others 0); ``"mean"``
        ``[2, n_train, tests]``: starting site means in units of ``effect_scale_prior``, a ridge
        estimate of each example alone against the change minus its step's mean over runs.
    """
    n_runs, n_steps, n_tests = previous.shape
    slots = curricula.reshape(n_runs * n_steps, -1)
    rows = np.repeat(np.arange(n_runs * n_steps), slots.shape[1])
    keep = slots.reshape(-1) >= 0
    index, rows = slots.reshape(-1)[keep], rows[keep]
    prev = previous.reshape(-1, n_tests)[rows]  # [occurrences, tests]
    residual = (change - change.mean(axis=0, keepdims=True)).reshape(-1, n_tests)[rows]
    parts = _parts(config)
    features = np.stack([prev, np.ones_like(prev)])[parts]  # [k, occurrences, tests]
    k = len(parts)
    info = np.zeros((k, k, n_train, n_tests))
    score = np.zeros((k, n_train, n_tests))
    for p in range(k):
        np.add.at(score[p], index, features[p] * residual)
        for q in range(p + 1):  # symmetric: each entry once
            np.add.at(info[p, q], index, features[p] * features[q])
            info[q, p] = info[p, q]
    info = np.moveaxis(info, (0, 1), (-2, -1)) + JITTER * np.eye(k)  # [n_train, tests, k, k]
    noise = np.maximum(residual.var(axis=0) if len(residual) else np.ones(n_tests), 1e-12)
    ridge = (noise / config.effect_scale_prior**2)[None, :, None, None] * np.eye(k)
    mean = np.linalg.solve(info + ridge, np.moveaxis(score, 0, -1)[..., None])[..., 0]
    chol = np.linalg.cholesky(info)
    factor = np.zeros((3, n_train, n_tests))
    factor[0] = chol[..., 0, 0]
    if k == 2:
        factor[1], factor[2] = chol[..., 1, 0], chol[..., 1, 1]
    full_mean = np.zeros((2, n_train, n_tests))
    full_mean[parts] = np.moveaxis(mean, -1, 0) / config.effect_scale_prior
    return {"factor": factor, "mean": full_mean}


class ConditionalGuide:
    """The guide (module docstring) for :func:`bayes_simfluence.bayes.model.simfluence_model` in its
    centred form. Called with any arguments (the model's, or ``effects_model``'s when drawing):
    its shapes come from ``statistics``.

    Args:
        config: the model's configuration (centred).
        statistics: :func:`site_statistics` (arrays, possibly traced).
        init: starting values of hyperparameters ``{site: [tests]}`` (others at their prior median).
        fixed: hyperparameters the model is conditioned on ``{site: [tests]}`` (not sampled).
        n_steps: steps, for the step component's innovations when it is not integrated out.
    """

    def __init__(self, config: ModelConfig, statistics: dict[str, Array], init: dict[str, Array],
                 fixed: dict[str, Array], n_steps: int):
        self.config, self.statistics, self.init, self.fixed, self.n_steps = config, statistics, init, fixed, n_steps
        self.n_train, self.n_tests = statistics["factor"].shape[1:]
        self.hypers = [name for name in hyper_sites(config) if name not in fixed]

    def _initial_unconstrained(self, name: str) -> Array:
        if name in self.init:
            value = jnp.asarray(self.init[name])
        elif name == "memory_decay":  # the median of Beta(1, b)
            value = jnp.full(self.n_tests, 1.0 - 0.5 ** (1.0 / self.config.memory_prior))
        else:
            value = jnp.zeros(self.n_tests)
        return biject_to(SUPPORTS[name]).inv(value)

    def _hyperparameters(self) -> tuple[dict[str, Array], list[Array]]:
        """Draw the free hyperparameters ``[tests]`` jointly (a Gaussian chain on the unconstrained
        scale): ``(values of every hyperparameter, standardised draws [tests] of the free ones)``."""
        k = len(self.hypers)
        values = {name: jnp.asarray(v) for name, v in self.fixed.items()}
        if not k:
            return values, []
        loc = numpyro.param("hyper_loc", jnp.stack([self._initial_unconstrained(n) for n in self.hypers]))
        scale = numpyro.param("hyper_scale", jnp.full((k, self.n_tests), INITIAL_HYPER_SCALE),
                              constraint=constraints.positive)
        lower = numpyro.param("hyper_lower", jnp.zeros((k * (k - 1) // 2, self.n_tests)))
        standard, pair = [], 0
        with numpyro.plate("test_example", self.n_tests, dim=-1):
            for j, name in enumerate(self.hypers):
                centre = loc[j]
                for i in range(j):
                    centre = centre + lower[pair] * standard[i]
                    pair += 1
                transform = biject_to(SUPPORTS[name])
                values[name] = numpyro.sample(name, dist.TransformedDistribution(dist.Normal(centre, scale[j]),
                                                                                 transform))
                standard.append((transform.inv(values[name]) - centre) / scale[j])
        return values, standard

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        config, n_train, n_tests = self.config, self.n_train, self.n_tests
        h, standard = self._hyperparameters()
        parts = _parts(config)
        site_mean = numpyro.param("site_mean", jnp.asarray(self.statistics["mean"]))
        if standard:  # site means move linearly with the hyperparameters' standardised draws
            slope = numpyro.param("site_slope", jnp.zeros((len(standard), 2, n_train, n_tests)))
            site_mean = site_mean + jnp.einsum("jpnm,jm->pnm", slope, jnp.stack(standard))
        site_mean = config.effect_scale_prior * site_mean
        correction = numpyro.param("site_correction", jnp.zeros((3, n_train, n_tests)))
        c = self.statistics["factor"]
        # C = chol(F) K, K = [[exp(k1), 0], [k21, exp(k2)]]
        c11 = c[0] * jnp.exp(correction[0])
        c21 = c[1] * jnp.exp(correction[0]) + c[2] * correction[1]
        c22 = c[2] * jnp.exp(correction[2])
        weight = 1.0 / h["noise_scale"] ** 2
        if config.has_memory:
            weight = weight * (1.0 - h["memory_decay"]) / (1.0 + h["memory_decay"])
        prior_precision = 1.0 / h["effect_scale"] ** 2
        locations = [h.get("a_location", 0.0), h.get("B_location", 0.0)]
        with numpyro.plate("train_example", n_train, dim=-2), numpyro.plate("test_example", n_tests, dim=-1):
            if len(parts) == 1:
                p = parts[0]
                site = weight * c11**2
                precision = site + prior_precision
                mean = (site * site_mean[p] + locations[p] * prior_precision) / precision
                numpyro.sample("a" if p == 0 else "B", dist.Normal(mean, precision**-0.5))
            else:
                s11, s12, s22 = weight * c11**2, weight * c11 * c21, weight * (c21**2 + c22**2)
                p11, p22 = s11 + prior_precision, s22 + prior_precision
                # det(S + d I) = det S + d tr S + d^2: no cancellation however collinear the features
                det = weight**2 * (c11 * c22) ** 2 + prior_precision * (s11 + s22) + prior_precision**2
                h1 = s11 * site_mean[0] + s12 * site_mean[1] + locations[0] * prior_precision
                h2 = s12 * site_mean[0] + s22 * site_mean[1] + locations[1] * prior_precision
                mean_a, mean_b = (p22 * h1 - s12 * h2) / det, (p11 * h2 - s12 * h1) / det
                a = numpyro.sample("a", dist.Normal(mean_a, jnp.sqrt(p22 / det)))
                numpyro.sample("B", dist.Normal(mean_b - s12 / p22 * (a - mean_a), p22**-0.5))
        if config.step_component and not config.collapses_drift:
            loc = numpyro.param("drift_loc", jnp.zeros((self.n_steps, n_tests)))
            scale = numpyro.param("drift_scale", jnp.full((self.n_steps, n_tests), 0.1), constraint=constraints.positive)
            with numpyro.plate("step", self.n_steps, dim=-2), numpyro.plate("test_example", n_tests, dim=-1):
                numpyro.sample("drift_innovation", dist.Normal(loc, scale))
