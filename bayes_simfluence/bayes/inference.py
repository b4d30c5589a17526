"""Inference for the Bayesian Simfluence model: NUTS, SVI and the exact (collapsed) path.

Every routine returns a :class:`FitResult` holding float64 draws on the standardised scale with
a leading ``[chains, draws]`` pair of axes. They are jitted, run the same code on CPU and GPU,
and are reproducible given ``seed``. NUTS and the exact path compute in float64; SVI in the
``precision`` it is given, float32 by default (``jax.enable_x64`` is set inside, so other users
of JAX keep their default). Float32 halves the time of an SVI step on CPU (0.032 s against
0.064 s at ``N=1000, T=1000, R=16, M=64``) and more on GPUs, and its fits agree with float64 ones
and with the exact posterior on the reference problems (``tests/test_bayes_inference.py``,
``benchmarks/results/precision.md``).

- :func:`run_nuts`: NUTS on the full model (several chains; ``chain_method="parallel"`` when
  there is one device per chain, else ``"sequential"``, which works on one CPU).
- :func:`run_svi`: SVI with ``AutoNormal`` (the default), ``AutoLowRankMultivariateNormal``, (small
  problems) ``AutoMultivariateNormal``, or the conditional guide (:mod:`bayes_simfluence.bayes.guide`:
  each test example's effects given its jointly Gaussian hyperparameters); ClippedAdam with
  exponential learning-rate decay; the ELBO is checked for convergence over the last two windows.
- :func:`run_exact`: integrates ``(a, B)`` and the step component out analytically
  (:mod:`bayes_simfluence.bayes.conjugate`), runs NUTS on the 2-4 hyperparameters per test
  example, and draws ``(a, B, d)`` exactly given each hyperparameter draw.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.handlers import condition
from numpyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO, init_to_median
from numpyro.infer.svi import SVIState
from numpyro.infer.autoguide import AutoLowRankMultivariateNormal, AutoMultivariateNormal, AutoNormal
from numpyro.optim import ClippedAdam
from jax import Array
from tqdm.auto import tqdm

from bayes_simfluence import settings
from bayes_simfluence.bayes import conjugate, hyper_nuts
from bayes_simfluence.bayes.backends import check_supported
from bayes_simfluence.bayes.guide import ConditionalGuide, site_statistics
from bayes_simfluence.bayes.data import ModelData
from bayes_simfluence.bayes.model import ModelConfig, effects_model, rotation_of, simfluence_model, step_mean
from bayes_simfluence.bayes.sharding import device_mesh, placed
from bayes_simfluence.curricula import unused_examples
from bayes_simfluence.design import BLOCKS
from bayes_simfluence.validation import InputError

GUIDES = settings.choices("guide")
#: default SVI learning rate of each guide (:func:`run_svi`).
LEARNING_RATES = {"conditional": 0.03, "normal": 0.01, "lowrank": 0.01, "mvn": 0.01}
PRECISIONS = {name: np.dtype(name).type for name in settings.choices("precision")}
HYPER_SITES = ("noise_scale", "effect_scale", "a_location", "B_location", "memory_decay")


class FitResult(NamedTuple):
    """Posterior draws on the standardised scale.

    Attributes:
        draws: ``"a"``, ``"B"`` ``[chains, draws, tests, n_train]``; ``"drift"``
            ``[chains, draws, tests, steps]`` (step component only); ``"noise_scale"``,
            ``"effect_scale"`` (and ``"a_location"``, ``"B_location"`` when free,
            ``"memory_decay"`` with memory) ``[chains, draws, tests]``. Absent effects are zeros.
        sample_stats: NUTS statistics ``[chains, draws]`` (``diverging``, ``num_steps``, ...);
            empty for SVI.
        info: method, settings, seconds, and method-specific checks (ELBO trace and
            convergence for SVI, divergences for NUTS).
        guide_params: SVI only: the fitted guide's parameters on their unconstrained scale; else None.
        initial_guide_params: SVI only: the guide's parameters where the optimisation started.
    """

    draws: dict[str, np.ndarray]
    sample_stats: dict[str, np.ndarray]
    info: dict[str, Any]
    guide_params: dict[str, np.ndarray] | None = None
    initial_guide_params: dict[str, np.ndarray] | None = None


def default_chain_method(num_chains: int, one_device: str = "sequential") -> str:
    """``"parallel"`` with one device per chain (GPUs, or CPUs set up as devices), else ``one_device``."""
    return "parallel" if jax.local_device_count() >= num_chains > 1 else one_device


def _init_values(data: ModelData) -> dict[str, np.ndarray]:
    """Starting point: noise at the spread of the observed changes, small effects."""
    spread = data.change.std(axis=(0, 1))
    return {"noise_scale": np.where(spread > 0, spread, 1.0), "effect_scale": np.full(data.n_tests, 0.01)}


def _init_strategy(values: dict[str, np.ndarray]) -> Any:
    def init(site: dict | None = None) -> Any:
        if site is not None and site["name"] in values:
            return jnp.asarray(values[site["name"]])
        return init_to_median(site)

    return init


def _conditioned(model: Any, fixed: dict[str, np.ndarray] | None) -> Any:
    return condition(model, data={k: jnp.asarray(v) for k, v in fixed.items()}) if fixed else model


def _model_args(data: ModelData) -> tuple:
    return (jnp.asarray(data.curricula), jnp.asarray(data.previous), jnp.asarray(data.change), data.n_train)


def model_features(data: ModelData, config: ModelConfig) -> np.ndarray | None:
    """``[tests, n_train, k]`` the features the NumPyro model regresses on where ``config.features``
    (an error naming the setting where the runs carry none), else None."""
    return data.features_of(np.arange(data.n_tests), True) if config.features else None


def _collect(samples: dict[str, Any], data: ModelData, config: ModelConfig, lead: tuple[int, ...],
             fixed: dict[str, np.ndarray] | None, key: Array, precision: str = "float64") -> dict[str, np.ndarray]:
    """Named parameter draws ``[*lead, ...]`` from sites (fixed hyperparameters broadcast); where
    the likelihood integrated the step component out, it is drawn from its exact conditional
    given each draw (``key``; the effects' step sums computed in ``precision``)."""
    shape_tests = lead + (data.n_tests,)
    zeros = np.zeros(shape_tests + (data.n_train,))
    samples = {k: np.asarray(v, np.float64) for k, v in samples.items()}  # float32 fits too
    draws = {  # sites are [..., n_train, tests]
        "a": np.swapaxes(samples["a"], -1, -2) if config.has_multiplicative else zeros,
        "B": np.swapaxes(samples["B"], -1, -2) if config.has_additive else zeros,
    }
    for block in ("a", "B"):  # the feature prior's coefficients [..., tests, k], per standardised feature
        if f"feature_{block}" in samples:
            draws[f"feature_{block}"] = np.swapaxes(samples[f"feature_{block}"], -1, -2)
    for name in HYPER_SITES:
        if name in samples:
            draws[name] = samples[name]
        elif fixed and name in fixed:
            draws[name] = np.broadcast_to(np.asarray(fixed[name], dtype=np.float64), shape_tests).copy()
    key, unseen_key = jax.random.split(key)
    _draw_unseen(draws, data, config, np.asarray(jax.random.normal(unseen_key, zeros.shape[:-1] + (2, data.n_train))))
    if config.collapses_drift:
        flat = {k: v.reshape((-1,) + v.shape[len(lead):]) for k, v in draws.items()}
        fitted = fitted_step_sums(flat["a"], flat["B"], data, decay=flat.get("memory_decay"), precision=precision)
        system = conjugate.drift_system(data.n_runs, data.n_steps, config)
        drift = conjugate.draw_drift(system, data.change.sum(0).T, fitted, flat["noise_scale"], key)
        draws["drift"] = drift.reshape(lead + drift.shape[1:])
    elif config.step_component:
        draws["drift"] = samples["step_drift"]
    return {k: v.reshape(lead + v.shape[len(lead):]) for k, v in draws.items()}


def _draw_unseen(draws: dict[str, np.ndarray], data: ModelData, config: ModelConfig, standard: np.ndarray) -> None:
    """Replace, in place, the effects ``[..., tests, n_train]`` of the examples no run used by exact
    draws from their prior given each draw's hyperparameters: location, feature regression
    (``feature_a`` / ``feature_B`` ``[..., tests, k]``) and the effect scale times ``standard
    [..., tests, 2, n_train]`` standard normals. Exact because such an example is in no likelihood term;
    a mean-field guide would not give it (the rotation of non-centred ``B`` makes its ``B`` 1.2x too
    wide and its ``a`` 0.7x too narrow)."""
    unseen = unused_examples(data.curricula, data.n_train)
    if unseen.size == 0:
        return
    features = model_features(data, config)
    for part, block in enumerate(("a", "B")):
        if not (config.has_multiplicative if block == "a" else config.has_additive):
            continue
        mean = np.asarray(draws.get(f"{block}_location", 0.0))[..., None]
        if f"feature_{block}" in draws:
            mean = mean + np.einsum("mik,...mk->...mi", features[:, unseen], draws[f"feature_{block}"])
        draws[block] = draws[block].copy()
        draws[block][..., unseen] = mean + draws["effect_scale"][..., None] * standard[..., part, unseen]


def run_nuts(data: ModelData, config: ModelConfig, num_warmup: int = 500, num_samples: int = 500,
             num_chains: int = 4, chain_method: str | None = None, target_accept: float = 0.85,
             max_tree_depth: int = 10, seed: int = 0, progress: bool = True,
             fixed: dict[str, np.ndarray] | None = None) -> FitResult:
    """NUTS on the full model (the step component integrated out where ``config.collapses_drift``).

    Args:
        fixed: optional hyperparameter values ``{site: [tests]}`` to condition on (e.g. to
            compare with :func:`bayes_simfluence.bayes.conjugate.posterior_given`).
    """
    check_supported(config, "nuts")
    chain_method = chain_method or default_chain_method(num_chains)
    config = config.parameterised(noncentred=False)
    start = time.perf_counter()
    with jax.enable_x64(True):
        model = _conditioned(simfluence_model, fixed)
        kernel = NUTS(model, target_accept_prob=target_accept, max_tree_depth=max_tree_depth,
                      init_strategy=_init_strategy({k: v for k, v in _init_values(data).items()
                                                    if not fixed or k not in fixed}))
        mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
                    chain_method=chain_method, progress_bar=progress)
        features = model_features(data, config)
        mcmc.run(jax.random.PRNGKey(seed), *_model_args(data), config,
                 None if features is None else jnp.asarray(features),
                 extra_fields=("diverging", "num_steps", "accept_prob", "energy"))
        samples = mcmc.get_samples(group_by_chain=True)
        extra = {k: np.asarray(v) for k, v in mcmc.get_extra_fields(group_by_chain=True).items()}
    seconds = time.perf_counter() - start
    divergences = int(extra["diverging"].sum())
    if divergences:
        warnings.warn(f"NUTS: {divergences} divergent transitions after warmup; raise target_accept "
                      "or check the model", stacklevel=2)
    info = {"method": "nuts", "num_warmup": num_warmup, "num_samples": num_samples, "num_chains": num_chains,
            "chain_method": chain_method, "target_accept": target_accept, "seconds": seconds,
            "noncentred": config.noncentred,
            "divergences": divergences, "seed": seed}
    draws = _collect(samples, data, config, (num_chains, num_samples), fixed, jax.random.PRNGKey(seed + 2))
    return FitResult(draws, extra, info)


def _guide(program: "SviProgram", model: Any, init_values: dict[str, Array], fixed: dict[str, Array],
           statistics: dict[str, Array], n_steps: int) -> Any:
    kind, rank, init = program.guide, program.rank, _init_strategy(init_values)
    if kind == "conditional":
        return ConditionalGuide(program.config, statistics, init_values, fixed, n_steps)
    if kind == "normal":
        return AutoNormal(model, init_loc_fn=init, init_scale=0.01)
    if kind == "lowrank":
        return AutoLowRankMultivariateNormal(model, init_loc_fn=init, init_scale=0.01, rank=rank)
    if kind == "mvn":
        return AutoMultivariateNormal(model, init_loc_fn=init, init_scale=0.01)
    raise ValueError(f"guide must be one of {GUIDES}, got {kind!r}")


#: NumPyro's effect handlers live on one global stack, which two threads tracing a model at once
#: would corrupt. An SVI fit traces its programs (initialisation, the first chunk of steps, the
#: draws) while holding this lock and runs the compiled steps outside it, so fits in threads (the
#: guard's cross-fits) overlap where they compute, the first of each shape included.
TRACING = threading.Lock()


def elbo_converged(losses: np.ndarray, rtol: float = 1e-4) -> tuple[bool, dict[str, float]]:
    """Compare the mean loss (negative ELBO) of the last two windows (each 10% of the steps).

    Converged when the change is below ``rtol`` relative to the loss, or below three times its
    Monte Carlo standard error (the ELBO estimate is noisy).
    """
    window = max(len(losses) // 10, 1)
    last, previous = losses[-window:], losses[-2 * window:-window]
    if len(previous) == 0 or not np.all(np.isfinite(last)):
        return False, {"elbo_change": float("nan")}
    change = float(previous.mean() - last.mean())
    noise = float(3.0 * np.hypot(last.std(), previous.std()) / np.sqrt(window))
    relative = abs(change) / max(abs(float(last.mean())), 1.0)
    return bool(relative < rtol or abs(change) < noise), {"elbo_change": change, "elbo_noise": noise,
                                                          "elbo_relative_change": relative}


@dataclass(frozen=True)
class SviProgram:
    """What fixes the compiled SVI programs besides array shapes (hashable: a static argument)."""

    config: ModelConfig
    guide: str
    rank: int | None
    learning_rate: float
    final_lr_fraction: float
    num_steps: int
    n_train: int
    precision: str


def _svi(program: SviProgram, init_values: dict[str, Array], fixed: dict[str, Array], key: Array,
         data_args: tuple[Array, Array, Array, Array | None], statistics: dict[str, Array]) -> tuple[SVI, Any]:
    """The SVI object of ``program``, initialised on ``data_args`` (``(svi, state)``).

    Built inside each jitted program below: NumPyro's ``SVI.update`` and ``get_params`` need an
    initialised object, and building it while tracing keeps the programs module-level, with the
    data as arguments, so a second fit of the same shapes compiles nothing.
    """
    model = _conditioned(simfluence_model, fixed)
    autoguide = _guide(program, model, init_values, fixed, statistics, data_args[1].shape[1])
    decay = program.final_lr_fraction ** (1.0 / max(program.num_steps, 1))
    schedule = lambda i: program.learning_rate * decay**i  # noqa: E731 - exponential decay
    svi = SVI(model, autoguide, ClippedAdam(step_size=schedule, clip_norm=10.0), Trace_ELBO())
    return svi, svi.init(key, *_call_args(data_args, program))


def _call_args(data_args: tuple, program: "SviProgram") -> tuple:
    """The model's arguments from ``data_args`` ``(curricula, previous, change, features or None)``."""
    curricula, previous, change, features = data_args
    return curricula, previous, change, program.n_train, program.config, features


@functools.partial(jax.jit, static_argnames=("program",))
def _svi_init(key: Array, data_args: tuple, init_values: dict, fixed: dict, statistics: dict, *,
              program: SviProgram) -> Any:
    return _svi(program, init_values, fixed, key, data_args, statistics)[1]


@functools.partial(jax.jit, static_argnames=("program", "length"))
def _svi_steps(state: Any, data_args: tuple, init_values: dict, fixed: dict, statistics: dict, *,
               program: SviProgram, length: int) -> tuple[Any, Array]:
    """``length`` optimisation steps from ``state``: ``(state, losses [length])``."""
    svi, _ = _svi(program, init_values, fixed, state.rng_key, data_args, statistics)
    return jax.lax.scan(lambda s, _: svi.update(s, *_call_args(data_args, program)),
                        state, None, length=length)


@functools.partial(jax.jit, static_argnames=("program", "num_draws"))
def _svi_draws(state: Any, key: Array, data_args: tuple, init_values: dict, fixed: dict, statistics: dict, *,
               program: SviProgram, num_draws: int) -> dict[str, Array]:
    """``num_draws`` draws of every latent site from the fitted guide."""
    svi, _ = _svi(program, init_values, fixed, state.rng_key, data_args, statistics)
    predictive = Predictive(_conditioned(effects_model, fixed), guide=svi.guide,
                            params=svi.get_params(state), num_samples=num_draws,
                            return_sites=["a", "B", *HYPER_SITES]
                            + ([] if program.config.collapses_drift else ["step_drift"])
                            + ([f"feature_{b}" for b in BLOCKS[program.config.variant]] if program.config.features else []))
    _, n_steps, n_tests = data_args[1].shape
    return predictive(key, n_tests, program.n_train, n_steps, program.config, rotation_of(data_args[1]),
                      not program.config.collapses_drift, data_args[3])


def _chunk_length(num_steps: int, chunks: int = 20) -> int:
    """The largest step count that divides ``num_steps`` into at most ``chunks`` equal chunks."""
    return next(num_steps // k for k in range(min(chunks, num_steps), 0, -1) if num_steps % k == 0)


def run_svi(data: ModelData, config: ModelConfig, guide: str = "normal", num_steps: int = 2000,
            learning_rate: float | None = None, final_lr_fraction: float = 0.05, num_draws: int = 200,
            rank: int | None = None, precision: str = "float32", seed: int = 0, progress: bool = True,
            fixed: dict[str, np.ndarray] | None = None,
            warm_start: dict[str, np.ndarray] | None = None) -> FitResult:
    """SVI with an autoguide; ``num_draws`` draws from the fitted guide ``[1, num_draws, ...]``.

    ``precision`` (``"float32"`` or ``"float64"``) is the dtype of the optimisation; the draws are
    returned as float64 either way. ``learning_rate`` defaults to :data:`LEARNING_RATES` of the
    guide (the conditional guide's parameters are all of order one and start at the data's
    information, so it takes larger steps: in SBC, 0.03 calibrated the memory decay in 2000 steps
    where 0.01 needed 4000).

    The learning rate decays exponentially from ``learning_rate`` to
    ``final_lr_fraction * learning_rate``. A :class:`UserWarning` says when the ELBO has not
    converged (see :func:`elbo_converged`). The steps run in up to 20 equal chunks of a compiled
    ``lax.scan`` (a progress bar advances per chunk); the programs are module-level and jitted, so
    fits of the same shapes and settings (the guard's folds, repeated fits) compile once.

    ``warm_start``: every parameter of the guide (unconstrained, e.g. from :func:`cross_fit_start`)
    to start from instead of the usual initial values, for a fit with the same guide, test and
    training examples (any runs); the optimiser starts afresh (full learning rate, new Adam
    moments) and no initialisation program is compiled. The guard's cross-fits start this way
    (:func:`bayes_simfluence.bayes.methods.fit_bayes`).
    """
    check_supported(config, "svi")
    if guide not in GUIDES:
        raise ValueError(f"guide must be one of {GUIDES}, got {guide!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
    learning_rate = LEARNING_RATES[guide] if learning_rate is None else learning_rate
    config = config.parameterised(noncentred=guide != "conditional")
    if guide == "conditional" and config.noncentred:
        raise ValueError("guide='conditional' takes the centred model: leave noncentred unset or False")
    if guide == "conditional" and config.features:
        raise InputError("-o guide=conditional has no feature prior: use the default guide (normal), or -o features=false")
    program = SviProgram(config, guide, rank, float(learning_rate), float(final_lr_fraction), num_steps, data.n_train,
                         precision)
    real = lambda x: np.asarray(x, PRECISIONS[precision])  # noqa: E731
    start = time.perf_counter()
    with jax.enable_x64(precision == "float64"):
        mesh = device_mesh(data.n_tests)  # test examples split over the local devices, if several
        init_values = {k: placed(real(v), mesh, 0) for k, v in _init_values(data).items()
                       if not fixed or k not in fixed}
        fixed_values = {k: placed(real(v), mesh, 0) for k, v in (fixed or {}).items()}
        features = model_features(data, config)
        data_args = (jnp.asarray(data.curricula, jnp.int32), placed(real(data.previous), mesh, 2),
                     placed(real(data.change), mesh, 2), None if features is None else placed(real(features), mesh, 0))
        statistics = {}  # what the conditional guide starts from: [.., n_train, tests]
        if guide == "conditional":
            raw = site_statistics(data.curricula, data.previous, data.change, data.n_train, config)
            statistics = {k: placed(real(v), mesh, 2) for k, v in raw.items()}
        with TRACING:
            if warm_start is None:
                state = _svi_init(jax.random.PRNGKey(seed), data_args, init_values, fixed_values, statistics,
                                  program=program)
            else:  # the state SVI.init builds, from the given parameters
                params = {k: placed(real(v), mesh, np.ndim(v) - 1) for k, v in warm_start.items()}
                state = SVIState(ClippedAdam(step_size=learning_rate).init(params), None, jax.random.PRNGKey(seed))
        initial_params = {k: np.asarray(v) for k, v in _unconstrained_params(state).items()}
        length, parts = _chunk_length(num_steps), []
        for chunk in tqdm(range(num_steps // length), desc="SVI", unit=f"x{length} steps", disable=not progress):
            with TRACING if chunk == 0 else contextlib.nullcontext():  # the first call traces; later ones run
                state, chunk_losses = _svi_steps(state, data_args, init_values, fixed_values, statistics,
                                                 program=program, length=length)
            parts.append(np.asarray(chunk_losses))
        losses = np.concatenate(parts)
        with TRACING:
            samples = _svi_draws(state, jax.random.PRNGKey(seed + 1), data_args, init_values, fixed_values,
                                 statistics, program=program, num_draws=num_draws)
        samples = {k: np.asarray(v) for k, v in samples.items()}
        guide_params = {k: np.asarray(v) for k, v in _unconstrained_params(state).items()}
    seconds = time.perf_counter() - start
    converged, check = elbo_converged(losses)
    if not converged:
        warnings.warn(f"SVI: the ELBO has not converged after {num_steps} steps ({check}); "
                      "raise num_steps or learning_rate", stacklevel=2)
    info = {"method": "svi", "guide": guide, "precision": precision, "noncentred": config.noncentred, "num_steps": num_steps, "learning_rate": learning_rate,
            "final_lr_fraction": final_lr_fraction, "seconds": seconds, "elbo_converged": converged,
            "warm_start": warm_start is not None,
            "final_loss": float(losses[-max(len(losses) // 10, 1):].mean()), "seed": seed,
            "loss_trace": losses[:: max(len(losses) // 200, 1)].tolist(), **check}
    draws = _collect({k: v[None] for k, v in samples.items()}, data, config, (1, num_draws), fixed,
                     jax.random.PRNGKey(seed + 2), precision)
    return FitResult(draws, {}, info, guide_params, initial_params)


def cross_fit_start(result: FitResult) -> dict[str, np.ndarray] | None:
    """Where the guard's cross-fits of an SVI fit ``result`` start (``run_svi(warm_start=...)``):
    the fitted hyperparameters (noise and effect scales, locations, memory decay) and feature
    coefficients, and every other parameter where ``result`` itself started. None where a fit cannot start part-way: the joint
    guides (``lowrank``, ``mvn``: one distribution over every site) and the conditional guide
    (its effects start at estimates from the fit's own runs).

    The effects start afresh on purpose: started from a fit that saw the held-out runs, a short
    cross-fit keeps part of what those runs taught it, and its held-out error comes out too small
    (measured in :mod:`bayes_simfluence.bayes.guard`'s docstring). The hyperparameters and the
    feature coefficients (which generalise the location ``mu_a``) are pooled over every training
    example, and they are what SVI is slowest to move: started afresh, the coefficients left the
    cross-fits worse than the full fit, and the guard's weight of the effects fell (measured in
    ``docs/results/calibration.md``).
    """
    if result.info.get("guide") != "normal" or result.guide_params is None:
        return None
    pooled = (*HYPER_SITES, "feature_a", "feature_B")
    hyper = {k: v for k, v in result.guide_params.items() if k.rsplit("_auto_", 1)[0] in pooled}
    return {**result.initial_guide_params, **hyper}


def _unconstrained_params(state: Any) -> dict[str, Array]:
    """The optimiser's parameters of an SVI state (the guide's, on their unconstrained scale)."""
    return ClippedAdam(step_size=0.0).get_params(state.optim_state)


def _locations(draws: dict[str, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """``[..., tests, 2]`` population locations (zeros where fixed)."""
    return np.stack([draws.get("a_location", np.zeros(shape)), draws.get("B_location", np.zeros(shape))], -1)


def run_exact(data: ModelData, config: ModelConfig, num_warmup: int = 300, num_samples: int = 100,
              num_chains: int = 2, chain_method: str | None = None, chunk_size: int = 8, seed: int = 0,
              progress: bool = True) -> FitResult:
    """Collapsed NUTS on each test example's hyperparameters, then exact draws of ``(a, B, d)`` for each draw.

    The statistics (:func:`~bayes_simfluence.bayes.conjugate.collapsed_statistics`) are built in
    chunks of ``chunk_size`` test examples; then ``num_chains`` independent NUTS chains per test
    example (:mod:`bayes_simfluence.bayes.hyper_nuts`, vmapped over test examples) each adapt their
    step size and diagonal mass matrix over ``num_warmup`` iterations and keep ``num_samples``.
    ``chain_method`` maps the chains: ``"vectorized"`` (one program; the default on one device),
    ``"parallel"`` (split over the local devices; the default with one device per chain) or
    ``"sequential"``. Every program is jitted at module level, so a second fit of the same
    shapes compiles nothing; the draws are reproducible given ``seed`` and ``chain_method``.

    Cost: one eigendecomposition of a ``features x features`` matrix per test example
    (``features = 2 n_train`` for the linear variant), then ``O(features)`` per NUTS gradient of
    each test example; memory ``tests * features^2`` floats for the eigenvectors.

    Returns:
        draws ``[chains, draws, tests, ...]``; ``sample_stats`` ``diverging`` (divergent
        transitions summed over test examples) and ``num_steps`` (the most leapfrog steps of any
        test example) ``[chains, draws]``.
    """
    check_supported(config, "exact")
    chain_method = chain_method or default_chain_method(num_chains, one_device="vectorized")
    start = time.perf_counter()
    stats = conjugate.collapsed_statistics(data, config, chunk_size=chunk_size, progress=progress)
    stats_seconds = time.perf_counter() - start
    nuts_key, effects_key, drift_key = jax.random.split(jax.random.PRNGKey(seed), 3)
    hyper = hyper_nuts.sample(stats, config, hyper_nuts.unconstrained(_init_values(data), config), nuts_key,
                              num_warmup, num_samples, num_chains, chain_method, progress)
    hyper_seconds = time.perf_counter() - start - stats_seconds
    lead = (num_chains, num_samples)
    flat = {k: v.reshape((-1, data.n_tests)) for k, v in hyper.draws.items()}
    weights = conjugate.draw_effects(stats, flat["noise_scale"], flat["effect_scale"],
                                     _locations(flat, flat["noise_scale"].shape), effects_key, chunk_size)
    draws = split_weights(weights, data.n_train, config)
    if config.step_component:
        system = conjugate.drift_system(data.n_runs, data.n_steps, config)
        fitted = fitted_step_sums(draws["a"], draws["B"], data)
        draws["drift"] = conjugate.draw_drift(system, data.change.sum(0).T, fitted, flat["noise_scale"], drift_key)
    draws.update(flat)
    draws = {k: v.reshape(lead + v.shape[1:]) for k, v in draws.items()}
    by_test = hyper.diverging.sum((0, 1))
    if by_test.any():
        warnings.warn(f"exact path: {int(by_test.sum())} divergent transitions in the hyperparameter NUTS "
                      f"(test examples {np.flatnonzero(by_test).tolist()})", stacklevel=2)
    info = {"method": "exact", "num_warmup": num_warmup, "num_samples": num_samples, "num_chains": num_chains,
            "chain_method": chain_method, "seconds": time.perf_counter() - start,
            "statistics_seconds": stats_seconds, "hyper_nuts_seconds": hyper_seconds,
            "divergences": int(by_test.sum()), "seed": seed}
    sample_stats = {"diverging": hyper.diverging.sum(-1), "num_steps": hyper.num_steps.max(-1)}
    return FitResult(draws, sample_stats, info)


def split_weights(weights: np.ndarray, n_train: int, config: ModelConfig) -> dict[str, np.ndarray]:
    """``{"a", "B"}`` ``[..., tests, n_train]`` from ``w [..., tests, features]`` (absent part zeros)."""
    zeros = np.zeros(weights.shape[:-1] + (n_train,))
    if config.variant == "linear":
        return {"a": weights[..., :n_train], "B": weights[..., n_train:]}
    if config.variant == "additive":
        return {"a": zeros, "B": weights}
    return {"a": weights, "B": zeros}


def fitted_step_sums(a: np.ndarray, b: np.ndarray, data: ModelData, decay: np.ndarray | None = None,
                     batch_size: int = 8, precision: str = "float64") -> np.ndarray:
    """``[draws, tests, steps]`` ``Z^T X w``: the effects' part of the change, summed over runs per step
    (``a``, ``b`` ``[draws, tests, n_train]``; ``decay [draws, tests]`` with optimiser memory),
    computed in ``precision`` and returned as float64. SVI fits pass their own precision: float32
    agrees with float64 to 2e-7 relative at ``N=T=1000, R=16, M=64`` in 0.65x the time."""
    dtype = PRECISIONS[precision]
    with jax.enable_x64(precision == "float64"):
        arrays = [None if x is None else jnp.asarray(x, dtype) for x in (a, b, decay)]
        sums = _step_sums(*arrays, jnp.asarray(data.curricula), jnp.asarray(data.previous, dtype),
                          batch_size=batch_size)
        return np.asarray(sums, np.float64)


@functools.partial(jax.jit, static_argnames=("batch_size",))
def _step_sums(a: Array, b: Array, decay: Array | None, curricula: Array, previous: Array, batch_size: int) -> Array:
    def one(draw: tuple) -> Array:
        return step_mean(draw[0], draw[1], None, curricula, previous, *draw[2:]).sum(0).T

    return jax.lax.map(one, (a, b) if decay is None else (a, b, decay), batch_size=batch_size)
