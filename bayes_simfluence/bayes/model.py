"""Hierarchical Bayesian Simfluence-Linear as NumPyro models.

On the standardised scale of :mod:`bayes_simfluence.bayes.data` (losses of test example ``m``
divided by their typical size ``c_m``), one teacher-forced step of run ``r`` is

    L_t - L_{t-1} = (sum_{i in c_t} a[m, i]) * L_{t-1} + sum_{i in c_t} B[m, i] + d[m, t] + eps,

so ``alpha(c_t) = 1 + sum a`` and ``beta(c_t) = sum B + d_t``. Choices, and why:

- **Centring** (``alpha = 1 + sum a``): a step whose examples have no effect keeps the loss,
  whatever the batch size, so ragged batches need no special case (an empty slot adds 0) and
  the prior centre ``a = B = 0`` means "no influence", not "forget the loss". Effects add up
  over the slots of a batch (the paper's choice) while SGD averages gradients over the examples
  present; and with full batches only batch sums plus the step component are identified (a
  constant added to every ``B`` and ``batch`` times it taken from ``d`` change no run). A
  curriculum with emptied slots reads that unidentified level, so counterfactual leave-outs
  re-pack full batches (:func:`bayes_simfluence.curricula.leave_out`).
- **Hierarchy over training examples**: ``a[m, i] ~ Normal(mu_a[m], s[m])`` and
  ``B[m, i] ~ Normal(mu_B[m], s[m])`` with the population location ``mu`` and scale ``s``
  learned per test example (weakly informative hyperpriors ``Normal(0, 0.1)`` and
  ``HalfNormal(0.1)``: one example moving the loss by 10% of its size is already a lot).
  Examples seen rarely shrink to the population. ``a`` and ``B`` share the scale ``s``: on the
  standardised scale their features have the same units, and a single scale keeps the
  collapsed marginal likelihood cheap (one eigendecomposition per test example serves every
  hyperparameter value, see :mod:`bayes_simfluence.bayes.conjugate`).
- **No pooling of effects across test examples.** Each test example's hyperparameters are
  informed by ``n_train`` effects and ``runs * steps`` observations, so borrowing strength across
  test examples changes little, while coupling them would turn ``tests`` independent
  ``2 n_train``-dimensional problems into one ``2 n_train tests``-dimensional one and break the
  chunking over test examples that keeps large problems in memory.
- **Step component** (``step_component=True``): ``d[m, t]`` is a curriculum-independent change
  of the loss at step ``t``, shared by every run, with a random-walk prior
  ``d_1 ~ Normal(0, (kappa sigma)^2)``, ``d_t - d_{t-1} ~ Normal(0, (rho sigma)^2)``; its scales
  are relative to the noise scale ``sigma[m]`` (so the prior is free of the loss units and the
  collapsed likelihood stays cheap). With ``a = B = 0`` it is the mean trajectory; with
  ``d = 0`` it is the plain model.
- **Common levels** (which population locations are learned, and against what). With the step
  component ``mu_B`` is fixed at 0: with full batches a constant added to every ``B`` is
  ``batch`` times it taken from ``d`` (no run changes), and it cancels against the average
  example and under re-packed leave-outs. ``mu_a`` is not confounded in the same way: its feature
  ``(sum of filled slots) L_{t-1}`` varies across runs at a step, which ``d`` (shared by every run)
  cannot follow, so the data identify it, and it matters: it sets how a change at step ``t``
  carries to the final loss, through the product of ``1 + sum a`` over later steps (every example
  sharing a decay, as in real training). Fixing it at 0 shrank the pool mean of ``a`` towards 0
  and inflated attributions against the average example by 10-30% with intervals too narrow, so
  ``common_level=True`` (the default) learns ``mu_a[m] ~ Normal(0, location_prior)``; the grid
  path integrates it out exactly with a flat prior (:mod:`bayes_simfluence.bayes.grid`; the
  Normal's sd is hundreds of posterior sds of ``mu_a``). What ``mu_a`` trades against is the
  spread around it: ``a_i - mu_a`` is shrunk to 0, so the pool mean of ``a`` is learned from the
  runs rather than pulled to 0. Without the step component both locations are free.
- **Noise**: ``Normal(0, sigma[m])`` or, with ``likelihood="student_t"``, ``StudentT(nu, 0,
  sigma[m])`` for the spiky steps of real runs (not conjugate: SVI and NUTS only).
  ``sigma[m] ~ HalfNormal(1)`` on the standardised scale.
- **Positivity**: losses are modelled on their own scale, not on a log scale, because that is
  the Simfluence recurrence and it keeps the likelihood linear-Gaussian. Nothing forces a
  simulated loss to stay positive; with ``alpha`` near 1 and small ``beta`` trajectories stay
  positive in practice, but predictive draws near zero loss can dip below 0 (we do not
  truncate, which would break the conjugate path and bias the bands).
- **The step component integrated out** (``collapse_drift``, default on with the Normal
  likelihood): given everything else the likelihood is linear-Gaussian in ``d``, so NUTS and SVI
  sample the marginal ``y ~ N(X w, sigma^2 Omega)``, ``Omega^{-1} = I - Z A^{-1} Z^T`` with
  ``A = Q + runs I`` the tridiagonal precision of :mod:`bayes_simfluence.bayes.conjugate`
  (:func:`collapsed_log_likelihood`: one tridiagonal solve per test example), and ``d`` is drawn
  afterwards from its exact conditional ``N(A^{-1} Z^T (y - X w), sigma^2 A^{-1})``. Why: with
  full batches the common level of ``B`` trades against ``d``, and a mean-field guide over the
  random walk's innovations cannot follow that trade (nor the innovations' own posterior
  correlations): on the reference problem its sd of a final loss was 2.6x the exact one. With
  ``d`` integrated out the same guide gives 0.93-0.95x (``tests/test_bayes_inference.py``). It also
  removes ``steps * tests`` latent variables. The Student-t likelihood keeps ``d`` latent.
- **Centred or non-centred** ``a`` and ``B``: every training example typically fills tens to
  hundreds of batch slots (``runs * steps * batch / n_train``), so the likelihood pins each
  effect down and the *centred* form has the better NUTS geometry. On a small reference problem
  (6 examples seen ~24 times each) NUTS had 0 divergences centred and 8 non-centred (63 vs 72
  leapfrog steps per draw). SVI's conditional guide (:mod:`bayes_simfluence.bayes.guide`) also
  takes the centred form: it draws each example's effects given the hyperparameters, as prior
  times a Gaussian site, so the geometry is the guide's business. ``noncentred=None`` (default) therefore
  means centred, except for SVI with an autoguide (``guide=normal | lowrank | mvn``), where it
  means non-centred (``a = mu + s z_a``): Adam's step size is absolute, and non-centred latents
  are of order 1 while centred effects are of order 0.01 (full-rank guide means 0.5 posterior sd
  off the exact posterior centred, against 0.05 non-centred). Set it to force either. The
  random walk is always non-centred (its innovations are the latent variables). Non-centred
  ``B`` is also **rotated**: its latent is ``xi = z_B + c z_a`` with ``c[m]`` the mean
  standardised previous loss (``rotation``), so ``a L + B = s z_a (L - c) + s xi`` and the
  features of the two latents are nearly orthogonal. ``a_i`` and ``B_i`` enter every step
  through ``a_i L_{t-1} + B_i`` with ``L_{t-1}`` near its mean, so their exact posterior
  correlation is near -0.9; a mean-field guide over ``(z_a, z_B)`` cut it and gave a paired
  two-curriculum difference 0.3x the exact sd, over ``(z_a, xi)`` 0.99x (the prior of ``B`` is
  unchanged: ``xi - c z_a ~ N(0, 1)``).
- **Optimiser memory** (``memory="geometric"``): under momentum or Adam the update at step
  ``t`` is a decaying sum of the gradients of earlier batches, while plain Simfluence credits a
  batch only at its own step. With memory the batch sums are spread over the following steps,
  ``m_t = (1 - lambda[m]) s(c_t) + lambda[m] m_{t-1}`` (:func:`bayes_simfluence.rollout.remembered`),
  for ``sum a`` and ``sum B`` alike, so ``alpha_t = 1 + m^a_t`` and ``beta_t = m^B_t + d_t``. The
  weights ``(1 - lambda) lambda^k`` sum to 1, so an example's total effect keeps its meaning;
  ``lambda = 0`` is plain Simfluence (``memory="none"``, the default). One decay per test example,
  ``lambda[m] ~ Beta(1, memory_prior)`` (decreasing density: no memory is the most likely a
  priori), one scalar informed by ``runs * steps`` observations. The likelihood stays linear in
  ``(a, B)`` given ``lambda`` but the features become dense, so the exact path does not take it.
- **Variants**: ``"additive"`` fixes ``a = 0`` (``alpha = 1``), ``"multiplicative"`` fixes
  ``B = 0``; same code, one part absent.

Plates are named ``test_example`` (always the last dim), ``train_example``, ``run`` and ``step``
so ArviZ dims follow; sites of effects are therefore ``[n_train, tests]`` and
:func:`effects_model` returns them transposed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax import Array

from bayes_simfluence.design import BLOCKS
from bayes_simfluence.rollout import batch_sums, remembered
from bayes_simfluence.settings import LIKELIHOODS, MEMORIES, VARIANTS


@dataclass(frozen=True)
class ModelConfig:
    """Structure and hyperprior scales of the model (all on the standardised scale).

    Attributes:
        variant: ``"linear"``, ``"additive"`` (``a = 0``) or ``"multiplicative"`` (``B = 0``).
        step_component: add the curriculum-independent random-walk step change ``d[m, t]``.
        likelihood: ``"normal"`` or ``"student_t"``.
        nu: degrees of freedom of the Student-t likelihood.
        noncentred: non-centred ``a`` and ``B``; ``None`` lets the inference routine choose
            (centred for NUTS and the conditional SVI guide, non-centred for SVI autoguides,
            irrelevant for the exact path).
        location_prior: sd of the ``Normal(0, .)`` prior of the population locations ``mu_a``, ``mu_B``.
        common_level: learn ``mu_a`` also with the step component (module docstring, "Common levels");
            False fixes it at 0 there (the model before levels were learned).
        effect_scale_prior: scale of the ``HalfNormal`` prior of the population scale ``s``.
        noise_prior: scale of the ``HalfNormal`` prior of the noise scale ``sigma``.
        drift_initial: ``kappa``: sd of the first step change, in units of ``sigma``.
        drift_smoothness: ``rho``: sd of the step-to-step change of ``d``, in units of ``sigma``.
        memory: ``"none"`` (plain Simfluence) or ``"geometric"`` (optimiser memory, a learned
            decay ``lambda[m]`` per test example).
        memory_prior: ``b`` of the ``Beta(1, b)`` prior of the memory decay.
        collapse_drift: integrate the step component out of the likelihood (Normal likelihood
            only; it is then drawn from its exact conditional after inference).
        run_state: add the shared run state of :mod:`bayes_simfluence.bayes.run_state` (its
            coefficients ``g[m]`` on ``z_t - z_{t-1}`` and ``z_t^2 - z_{t-1}^2``; ``bayes-grid`` only;
            the methods' ``-o run_state`` defaults to ``auto``, :func:`~bayes_simfluence.bayes.methods.resolve_run_state`).
        state_prior: sd of the ``Normal(0, .)`` prior of ``g`` on the features divided by their
            root mean square, in units of ``sigma``.
        features: the feature prior of :mod:`bayes_simfluence.bayes.features`: the prior mean of each
            test example's effects is a linear function of the training examples' features
            (the runs must carry features; every backend but ``bayes-exact``; SVI with its default
            guide).
        feature_prior: sd of the ``Normal(0, .)`` prior of the feature coefficients: on the collapsed
            paths (``bayes-grid``, ``bayes-cg``) on their design columns divided by their root mean
            square, in units of ``sigma``; in the NumPyro model (SVI, NUTS) per unit of each
            standardised feature, in units of ``location_prior`` (:func:`feature_means`).
        residual_effects: each training example's own effect beyond the common level and the
            feature regression (``(a', B') ~ N(0, s^2)``). False: the effects are the common level and
            the regression alone (``s = 0``; ``bayes-grid`` and ``bayes-cg``, where it pins the grid's
            ``tau = s / sigma`` at the bottom of its range). Per-example effects fitted to one-step
            changes can roll out worse than the regression where each example's own effect is weakly
            identified (``docs/results/calibration.md``, the feature prior on the scalable path).
    """

    variant: str = "linear"
    step_component: bool = True
    likelihood: str = "normal"
    nu: float = 4.0
    noncentred: bool | None = None
    location_prior: float = 0.1
    common_level: bool = True
    effect_scale_prior: float = 0.1
    noise_prior: float = 1.0
    drift_initial: float = 10.0
    drift_smoothness: float = 0.1
    memory: str = "none"
    memory_prior: float = 2.0
    collapse_drift: bool = True
    run_state: bool = False
    state_prior: float = 0.3
    features: bool = False
    feature_prior: float = 1.0
    residual_effects: bool = True

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        if self.memory not in MEMORIES:
            raise ValueError(f"memory must be one of {MEMORIES}, got {self.memory!r}")
        for name in ("nu", "location_prior", "effect_scale_prior", "noise_prior", "drift_initial",
                     "drift_smoothness", "memory_prior", "state_prior", "feature_prior"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")

    def parameterised(self, noncentred: bool) -> "ModelConfig":
        """This config with ``noncentred`` set to the given default where it is ``None``."""
        return self if self.noncentred is not None else replace(self, noncentred=noncentred)

    @property
    def has_multiplicative(self) -> bool:
        return "a" in BLOCKS[self.variant]

    @property
    def has_additive(self) -> bool:
        return "B" in BLOCKS[self.variant]

    @property
    def has_memory(self) -> bool:
        return self.memory != "none"

    @property
    def collapses_drift(self) -> bool:
        """The step component is integrated out of the likelihood (needs the Normal likelihood)."""
        return self.step_component and self.collapse_drift and self.likelihood == "normal"

    @property
    def has_a_location(self) -> bool:
        """``mu_a`` is learned: without the step component, or with it and ``common_level``."""
        return self.has_multiplicative and (self.common_level or not self.step_component)

    @property
    def has_b_location(self) -> bool:
        """``mu_B`` is learned only without the step component (which absorbs it)."""
        return self.has_additive and not self.step_component

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _effects(mu_a: Array, mu_b: Array, scale: Array, rotation: Array | None, n_tests: int, n_train: int,
             config: ModelConfig) -> tuple[Array, Array]:
    """``[tests, n_train]`` effects ``a ~ Normal(mu_a[m], scale[m])``, ``B ~ Normal(mu_b[m], scale[m])``
    (absent ones zero): centred, or non-centred with ``B`` rotated by ``rotation [tests]``
    (module docstring; sites ``a_decentered`` and ``B_rotated``, ``a`` and ``B`` deterministic).

    Sites are ``[n_train, tests]``: every plate keeps one dim throughout the model
    (``test_example`` is always the last), as autoguides require.
    """
    zeros = jnp.zeros((n_train, n_tests))
    with numpyro.plate("train_example", n_train, dim=-2), numpyro.plate("test_example", n_tests, dim=-1):
        if not config.noncentred:
            a = numpyro.sample("a", dist.Normal(mu_a, scale)) if config.has_multiplicative else zeros
            b = numpyro.sample("B", dist.Normal(mu_b, scale)) if config.has_additive else zeros
            return a.T, b.T
        z_a = numpyro.sample("a_decentered", dist.Normal(0.0, 1.0)) if config.has_multiplicative else zeros
        a = numpyro.deterministic("a", mu_a + scale * z_a) if config.has_multiplicative else zeros
        b = zeros
        if config.has_additive:
            shift = (0.0 if rotation is None else rotation) * z_a
            xi = numpyro.sample("B_rotated", dist.Normal(shift, 1.0))
            b = numpyro.deterministic("B", mu_b + scale * (xi - shift))
    return a.T, b.T


def feature_means(features: Array, n_tests: int, config: ModelConfig) -> dict[str, Array]:
    """The feature prior's part of the effects' prior means (:mod:`~bayes_simfluence.bayes.features`):
    ``{"a": [n_train, tests], "B": [n_train, tests]}`` (absent blocks 0), ``phi[m, i] . beta[m]``.

    Args:
        features: ``[tests, n_train, k]`` standardised features.

    Sites ``feature_a`` and ``feature_B`` ``[k, tests]``, each coefficient ``Normal(0,
    feature_prior x location_prior)`` per unit of its standardised feature: the regression
    generalises the common level ``mu_a`` (its intercept), so by default it gets the same prior;
    ``k = 0`` samples nothing and leaves the model as it is without features.
    """
    n_features = features.shape[-1]
    means = {"a": 0.0, "B": 0.0}
    if n_features == 0:
        return means
    with numpyro.plate("feature", n_features, dim=-2), numpyro.plate("test_example", n_tests, dim=-1):
        for block in BLOCKS[config.variant]:
            beta = numpyro.sample(f"feature_{block}", dist.Normal(0.0, config.feature_prior * config.location_prior))
            means[block] = jnp.einsum("mik,km->im", features, beta)
    return means


def effects_model(n_tests: int, n_train: int, n_steps: int, config: ModelConfig,
                  rotation: Array | None = None, drift: bool = True,
                  features: Array | None = None) -> dict[str, Array]:
    """The prior over every parameter; returns the effects on the standardised scale.

    Args:
        rotation: ``[tests]`` ``c`` of the rotated non-centred ``B`` (module docstring); None: 0.
        drift: sample the step component (False where the likelihood integrates it out).
        features: ``[tests, n_train, k]`` standardised features of the feature prior
            (:func:`feature_means`; needed where ``config.features``).

    Returns:
        ``{"a": [tests, n_train], "B": [tests, n_train], "drift": [tests, steps] or None,
        "sigma": [tests], "decay": [tests] or None}`` (absent effects as zeros).
    """
    zeros_tests = jnp.zeros(n_tests)
    with numpyro.plate("test_example", n_tests, dim=-1):
        sigma = numpyro.sample("noise_scale", dist.HalfNormal(config.noise_prior))
        scale = numpyro.sample("effect_scale", dist.HalfNormal(config.effect_scale_prior))
        mu_a = mu_b = zeros_tests
        if config.has_a_location:
            mu_a = numpyro.sample("a_location", dist.Normal(0.0, config.location_prior))
        if config.has_b_location:
            mu_b = numpyro.sample("B_location", dist.Normal(0.0, config.location_prior))
        decay = (numpyro.sample("memory_decay", dist.Beta(1.0, config.memory_prior))
                 if config.has_memory else None)
    if config.features:
        if features is None:
            raise ValueError("config.features: the model needs features [tests, n_train, k]")
        regression = feature_means(features, n_tests, config)
        mu_a, mu_b = mu_a + regression["a"], mu_b + regression["B"]
    a, b = _effects(mu_a, mu_b, scale, rotation, n_tests, n_train, config)
    step_drift = None
    if config.step_component and drift:
        with numpyro.plate("step", n_steps, dim=-2), numpyro.plate("test_example", n_tests, dim=-1):
            innovation = numpyro.sample("drift_innovation", dist.Normal(0.0, 1.0)).T  # [tests, steps]
        walk = jnp.concatenate([config.drift_initial * innovation[:, :1],
                                config.drift_smoothness * innovation[:, 1:]], axis=1)
        step_drift = numpyro.deterministic("step_drift", sigma[:, None] * jnp.cumsum(walk, axis=1))
    return {"a": a, "B": b, "drift": step_drift, "sigma": sigma, "decay": decay}


def effect_sums(a: Array, b: Array, curricula: Array, decay: Array | None) -> tuple[Array, Array]:
    """``[runs, steps, tests]`` sums of ``a`` and of ``B`` acting at each step: over the batch,
    and with ``decay`` (``[tests]``) remembered from earlier batches (None: plain Simfluence)."""
    sum_a, sum_b = batch_sums(a, curricula), batch_sums(b, curricula)
    if decay is None:
        return sum_a, sum_b
    return remembered(sum_a, decay), remembered(sum_b, decay)


@jax.jit
def step_mean(a: Array, b: Array, drift: Array | None, curricula: Array, previous: Array,
              decay: Array | None = None) -> Array:
    """``[runs, steps, tests]`` expected change ``(sum a) L_{t-1} + sum B + d_t``.

    Args:
        a, b: ``[tests, n_train]``; drift: ``[tests, steps]`` or None;
        curricula: ``[runs, steps, batch]``; previous: ``[runs, steps, tests]``;
        decay: ``[tests]`` memory decay, or None (see :func:`effect_sums`).

    Jitted even though models are traced by NumPyro's jitted kernels: model set-up (autoguide
    prototypes, initial values) runs eagerly, where one compiled function is much cheaper than
    compiling each primitive.
    """
    sum_a, sum_b = effect_sums(a, b, curricula, decay)
    mean = sum_a * previous + sum_b
    if drift is not None:
        mean = mean + drift.T[None]
    return mean


def noise_distribution(sigma: Array, config: ModelConfig) -> dist.Distribution:
    """The per-step noise with scale ``sigma`` (broadcast over ``[runs, steps, tests]``)."""
    if config.likelihood == "student_t":
        return dist.StudentT(config.nu, 0.0, sigma)
    return dist.Normal(0.0, sigma)


def rotation_of(previous: Array) -> Array:
    """``[tests]`` ``c``: the mean standardised previous loss (``previous [runs, steps, tests]``)."""
    return previous.mean(axis=(0, 1))


def drift_bands(n_runs: int, n_steps: int, config: ModelConfig) -> tuple[np.ndarray, np.ndarray, float]:
    """``(diagonal [steps], off-diagonal [steps - 1], log |Omega|)`` of ``A = Q + runs I`` (units of
    ``1 / sigma^2``) for the random walk ``d_1 ~ N(0, kappa^2)``, ``d_t - d_{t-1} ~ N(0, rho^2)``;
    ``log |Omega| = log |A| - log |Q|`` (matrix determinant lemma). Plain NumPy: the model calls it
    while being traced."""
    rho2, kappa2 = config.drift_smoothness**2, config.drift_initial**2
    diagonal = np.full(n_steps, 2.0 / rho2)
    diagonal[-1] = 1.0 / rho2
    diagonal[0] = (1.0 if n_steps > 1 else 0.0) / rho2 + 1.0 / kappa2
    diagonal = diagonal + n_runs
    off = np.full(n_steps - 1, -1.0 / rho2)
    pivot, logdet_a = diagonal[0], np.log(diagonal[0])
    for t in range(1, n_steps):  # LDL^T pivots of the tridiagonal matrix
        pivot = diagonal[t] - off[t - 1] ** 2 / pivot
        logdet_a += np.log(pivot)
    logdet_q = -np.log(kappa2) - (n_steps - 1) * np.log(rho2)
    return diagonal, off, float(logdet_a - logdet_q)


def collapsed_log_likelihood(residual: Array, sigma: Array, config: ModelConfig) -> Array:
    """``[tests]`` log density of the changes with the step component integrated out.

    Args:
        residual: ``[runs, steps, tests]`` observed change minus the effects' part ``X w``.
        sigma: ``[tests]`` noise scale.

    ``-(n log(2 pi sigma^2) + log |Omega| + r^T Omega^{-1} r / sigma^2) / 2`` with
    ``r^T Omega^{-1} r = |r|^2 - (Z^T r)^T A^{-1} (Z^T r)`` (module docstring).
    """
    n_runs, n_steps, _ = residual.shape
    diagonal, off, logdet_omega = drift_bands(n_runs, n_steps, config)
    zero = np.zeros(1)
    step_sums = residual.sum(0)  # [steps, tests]: Z^T r
    solved = jax.lax.linalg.tridiagonal_solve(
        jnp.asarray(np.concatenate([zero, off]), residual.dtype), jnp.asarray(diagonal, residual.dtype),
        jnp.asarray(np.concatenate([off, zero]), residual.dtype), step_sums)
    quadratic = (residual**2).sum((0, 1)) - (step_sums * solved).sum(0)
    n = n_runs * n_steps
    return -0.5 * (n * jnp.log(2 * jnp.pi * sigma**2) + logdet_omega + quadratic / sigma**2)


def simfluence_model(curricula: Array, previous: Array, change: Array | None, n_train: int,
                     config: ModelConfig, features: Array | None = None) -> None:
    """The full model: priors (:func:`effects_model`) and the teacher-forced likelihood.

    Args:
        curricula: ``[runs, steps, batch]``; previous: ``[runs, steps, tests]`` standardised
            ``L_{t-1}``; change: ``[runs, steps, tests]`` observed standardised changes (None to
            draw them); n_train: training examples; features: ``[tests, n_train, k]`` (where
            ``config.features``).
    """
    n_runs, n_steps, n_tests = previous.shape
    collapsed = config.collapses_drift and change is not None
    params = effects_model(n_tests, n_train, n_steps, config, rotation_of(previous), drift=not collapsed,
                           features=features)
    mean = step_mean(params["a"], params["B"], params["drift"], curricula, previous, params["decay"])
    if collapsed:
        numpyro.factor("y_collapsed", collapsed_log_likelihood(change - mean, params["sigma"], config).sum())
        return
    noise = noise_distribution(params["sigma"], config)
    with numpyro.plate("run", n_runs, dim=-3), numpyro.plate("step", n_steps, dim=-2), \
            numpyro.plate("test_example", n_tests, dim=-1):
        numpyro.sample("y", _shifted(noise, mean), obs=change)


def _shifted(noise: dist.Distribution, mean: Array) -> dist.Distribution:
    if isinstance(noise, dist.StudentT):
        return dist.StudentT(noise.df, mean, noise.scale)
    return dist.Normal(mean, noise.scale)


