"""NUTS on the hyperparameters of the collapsed model: independent chains per test example, vmapped.

With ``(a, B, d)`` integrated out (:mod:`bayes_simfluence.bayes.conjugate`) the test examples
share nothing, so every test example gets its own chains on its own 2-4 hyperparameters, with
its own step size and diagonal mass matrix adapted in warmup. The sampler works on the
unconstrained ``z = (log sigma, log s[, mu_a][, mu_B])`` with the priors of
:func:`bayes_simfluence.bayes.model.effects_model` (``HalfNormal`` scales, ``Normal``
locations) and the log-Jacobians of the ``exp`` maps; the likelihood is
:func:`~bayes_simfluence.bayes.conjugate.log_evidence`, ``O(features)`` per evaluation.

The chains run NumPyro's functional NUTS (:func:`numpyro.infer.hmc.hmc`): warmup and sampling in
one ``lax.scan`` of a module-level jitted program, vmapped over test
examples and over the chains it is given, so a second fit of the same shapes compiles nothing.
A vmapped NUTS transition lasts as long as the longest trajectory in the batch, which is cheap
here: every trajectory is short on 2-4 well-scaled parameters.

``chain_method`` says how the chains are mapped: ``"vectorized"`` runs all of them in one
program on one device, ``"parallel"`` runs that program with the chain axis split over as many
local devices as divide the number of chains (with one device it is ``"vectorized"``),
``"sequential"`` runs one chain after another (a progress bar step each). The random keys of
every (chain, test example) depend on ``seed`` only, so the draws are reproducible and the
methods agree in distribution; they need not agree to the bit (a batch of one chain rounds a
little differently from a batch of several, and NUTS trajectories amplify round-off).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax import Array, lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from numpyro.infer.hmc import HMCState, hmc
from tqdm.auto import tqdm

from bayes_simfluence import settings
from bayes_simfluence.bayes.conjugate import TEST_FIELDS, CollapsedStats, log_evidence
from bayes_simfluence.bayes.model import ModelConfig

CHAIN_METHODS = settings.choices("chain_method")
#: the statistics the likelihood reads (per test example; not the eigenvectors)
_LIKELIHOOD_FIELDS = tuple(name for name in TEST_FIELDS if name != "eigenvectors")


class HyperDraws(NamedTuple):
    """Hyperparameter draws of the per-test chains.

    Attributes:
        draws: ``{site: [chains, samples, tests]}`` on the constrained scale (sites of :func:`sites`).
        diverging: ``[chains, samples, tests]`` divergent transitions.
        num_steps: ``[chains, samples, tests]`` leapfrog steps of each transition.
    """

    draws: dict[str, np.ndarray]
    diverging: np.ndarray
    num_steps: np.ndarray


def sites(config: ModelConfig) -> tuple[str, ...]:
    """The free hyperparameters, in the order of the unconstrained vector."""
    locations = [name for name, free in (("a_location", config.has_a_location), ("B_location", config.has_b_location))
                 if free]
    return ("noise_scale", "effect_scale", *locations)


def _log_density(z: Array, stats: CollapsedStats, config: ModelConfig) -> Array:
    """Log posterior density (up to a constant) of one test example's unconstrained ``z [sites]``."""
    sigma, scale = jnp.exp(z[0]), jnp.exp(z[1])
    free = dict(zip(sites(config)[2:], z[2:]))
    mu = jnp.stack([free.get("a_location", 0.0), free.get("B_location", 0.0)])
    log_prior = (dist.HalfNormal(config.noise_prior).log_prob(sigma) + z[0]
                 + dist.HalfNormal(config.effect_scale_prior).log_prob(scale) + z[1]
                 + dist.Normal(0.0, config.location_prior).log_prob(z[2:]).sum())
    return log_prior + log_evidence(stats, sigma, scale, mu)


@functools.partial(jax.jit, static_argnames=("config", "num_warmup", "num_samples"))
def _run_chains(keys: Array, init: Array, stats: CollapsedStats, *, config: ModelConfig, num_warmup: int,
                num_samples: int) -> tuple[Array, Array, Array]:
    """Warmup then sampling of NUTS chains ``keys [chains, tests]`` from ``init [tests, sites]``.

    Returns:
        ``(z [chains, samples, tests, sites], diverging, num_steps [chains, samples, tests])``.
    """
    potential = lambda test_stats: lambda z: -_log_density(z, test_stats, config)  # noqa: E731
    init_kernel, sample_kernel = hmc(potential_fn_gen=potential, algo="NUTS")

    def chain(key: Array, test: Array) -> tuple[Array, Array, Array]:
        test_stats = stats._replace(**{name: getattr(stats, name)[test] for name in _LIKELIHOOD_FIELDS})

        def transition(state: HMCState, _: None) -> tuple[HMCState, tuple[Array, Array, Array]]:
            state = sample_kernel(state, model_args=(test_stats,))
            return state, (state.z, state.diverging, state.num_steps)

        state = init_kernel(init[test], num_warmup, model_args=(test_stats,), rng_key=key)
        # one scan through warmup and sampling: the NUTS kernel is compiled once, not twice
        trace = lax.scan(transition, state, None, length=num_warmup + num_samples)[1]
        return tuple(x[num_warmup:] for x in trace)

    n_chains, n_tests = keys.shape[:2]
    # one vmap over the (chain, test example) pairs: nested vmaps of NUTS's loops trace much slower
    pairs = jax.vmap(chain)(keys.reshape(n_chains * n_tests, -1), jnp.tile(jnp.arange(n_tests), n_chains))
    return tuple(jnp.swapaxes(x.reshape((n_chains, n_tests) + x.shape[1:]), 1, 2) for x in pairs)


def _placed(keys: np.ndarray, chain_method: str) -> Array:
    """``keys [chains, ...]`` on the device(s): split over the local devices for ``"parallel"``."""
    count = math.gcd(jax.local_device_count(), keys.shape[0])
    if chain_method != "parallel" or count < 2:
        return jnp.asarray(keys)
    mesh = Mesh(np.array(jax.local_devices()[:count]), ("chain",))
    return jax.device_put(keys, NamedSharding(mesh, PartitionSpec("chain")))


def unconstrained(initial: dict[str, np.ndarray], config: ModelConfig) -> np.ndarray:
    """``[tests, sites]`` starting point from ``{site: [tests]}`` (missing locations at 0)."""
    n_tests = len(initial["noise_scale"])
    return np.stack([np.log(initial["noise_scale"]), np.log(initial["effect_scale"]),
                     *(initial.get(name, np.zeros(n_tests)) for name in sites(config)[2:])], axis=-1)


def sample(stats: CollapsedStats, config: ModelConfig, init: np.ndarray, key: Array, num_warmup: int,
           num_samples: int, num_chains: int, chain_method: str, progress: bool = False) -> HyperDraws:
    """``num_chains`` NUTS chains per test example from ``init [tests, sites]`` (see :func:`unconstrained`)."""
    if chain_method not in CHAIN_METHODS:
        raise ValueError(f"chain_method must be one of {CHAIN_METHODS}, got {chain_method!r}")
    light = stats._replace(eigenvectors=None)
    with jax.enable_x64(True):
        keys = np.asarray(jax.random.split(key, (num_chains, len(init))))
        groups = np.arange(num_chains)[:, None] if chain_method == "sequential" else [np.arange(num_chains)]
        parts = [[np.asarray(x) for x in _run_chains(_placed(keys[group], chain_method), init, light, config=config,
                                                     num_warmup=num_warmup, num_samples=num_samples)]
                 for group in tqdm(groups, desc="exact: hyperparameter NUTS", unit="chain group", disable=not progress)]
    z, diverging, num_steps = (np.concatenate(arrays) for arrays in zip(*parts))
    draws = {name: np.exp(z[..., i]) if i < 2 else z[..., i] for i, name in enumerate(sites(config))}
    return HyperDraws(draws, diverging, num_steps)
