"""Simulation-based calibration (SBC; Talts, Betancourt, Simpson, Vehtari and Gelman, 2018) of
the Bayesian paths: ``run_grid`` (``bayes-grid``, what ``-m bayes`` runs at this size: the
hyperparameters on a grid, everything else exact) and ``run_svi`` (``bayes-svi``: AutoNormal,
non-centred, float32, 2000 steps, or another guide), each with ``ModelConfig(memory="geometric")``,
the fit the methods run before their guard.

    python experiments/sbc.py                  # the default path (grid), 200 replications: about 1 minute on 2 CPU cores
    python experiments/sbc.py --method svi     # bayes-svi, guide normal: about 3 minutes
    python experiments/sbc.py --method svi --guide conditional   # the conditional guide: about 3 minutes
    python experiments/sbc.py --method svi --guide mvn           # the full-rank guide: about 8 minutes
    python experiments/sbc.py --method svi --replications 100 -o num_steps=4000
    python experiments/sbc.py -o run_state=true  # bayes-grid with the run state: about 2 minutes

Each replication draws every parameter from the model's prior (NumPyro ``Predictive`` on
:func:`~bayes_simfluence.bayes.model.effects_model`), rolls the generating process forward from
``L_0 = 1`` on random curricula (each step's previous loss is the simulated one: the model's
teacher-forced likelihood is exactly the likelihood of this autoregressive process), builds
:class:`~bayes_simfluence.bayes.data.ModelData` directly on the standardised scale with
``scale = 1`` (``model_data`` would divide by a data-dependent scale, and the fit would no longer
see data drawn from its own prior), fits it with ``run_grid`` or ``run_svi`` (no guard: the guard is not part of
the Bayesian model) and ranks the true value of each quantity among ``N_DRAWS`` posterior draws.
If the draws were exact posterior draws every rank would be uniform on ``0..N_DRAWS``. A check
of the machinery itself: with NUTS on the full model (float64, 2 chains of 100 draws after 300
warm-up) in place of the fit, 50 replications at commit 2baa148 gave uniform ranks for every
quantity (smallest p-value 0.06; about 60 s a fit on 2 cores, hence not an option here).

Quantities (each per test example; the test examples are independent in the model and in the
posterior, so every replication adds ``n_tests`` independent ranks to each quantity): the
hyperparameters ``noise_scale``, ``effect_scale``, ``memory_decay``; ``a`` and ``B`` of two
training examples, raw and against the average example (``a[i]-mean``: minus the pool mean, the
identified part with full batches, which attributions report); and two decision quantities: the
noise-free final loss under a fresh random curriculum, and the paired difference of noise-free
final losses between two fresh curricula (the truth rolled out by this file's own NumPy loop, the
draws by the package's ``effect_sums`` and ``roll_out``, as :mod:`bayes_simfluence.bayes.posterior`
does).

With ``-o run_state=true`` (the run state of :mod:`bayes_simfluence.bayes.run_state`, stored
as ``grid_run_state``) each replication also draws a direction ``u`` (standard Normal, root mean
square 1) and uses recency :data:`STATE_RECENCY`; its coefficients ``g [tests, 2]`` are drawn
from their prior ``Normal(0, (state_prior * sigma)^2)`` on the features scaled to root mean
square 1 over the replication's runs, as the fit scales them, and every step change gains
``g . f_t``. The fit is handed that ``u`` and recency (they are plug-in estimates outside the
Bayesian model; what SBC checks is the posterior given them), and ``g1``, ``g2`` are ranked
beside the other quantities; the decision quantities include the state's term.

Prior: the package's hyperpriors are weakly informative for *real* standardised losses, whose
size is 1 by construction; drawn from them, runs are not: with ``sigma ~ HalfNormal(1)`` and
``s ~ HalfNormal(0.1)`` the largest ``|L|`` of a replication reached about 400 (median) and
``10^7`` (worst of 200) in 30 steps. The fit and the draws therefore both use tighter scales,
``effect_scale_prior = 0.02`` and ``noise_prior = 0.05`` (:data:`PRIOR_OPTIONS`; everything else
is the default path's): SBC holds for any prior as long as the fit uses the same one. The common
level of ``a`` is fixed at 0 (``common_level=False``): SBC needs the fit's prior, and the grid
integrates the level out under a flat one; the learned level is checked against its generating
process instead (``experiments/common_level.py``, ``tests/test_common_level.py``). Runs then
stay below ``|L| = 100`` (``max_abs_loss`` in the results). Options ``-o key=value`` are those
of ``bayes-svi`` (:func:`bayes_simfluence.bayes.methods.parse_options`), applied to both.

Uniformity: a chi-square test over :data:`BINS` equal bins of the ranks of each quantity, passed
at level 0.01 with a Bonferroni correction over the quantities. Writes
``experiments/results/sbc.{json,md,png}``; each run is stored under its guide's name (``grid``
for ``--method grid``), so a run of another path adds to the results rather than replacing them.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from numpyro.infer import Predictive
from scipy import stats
from tqdm.auto import tqdm

import bayes_simfluence
from bayes_simfluence.bayes.data import ModelData
from bayes_simfluence.bayes.grid import run_grid
from bayes_simfluence.bayes.inference import HYPER_SITES, run_svi
from bayes_simfluence.bayes.methods import parse_options
from bayes_simfluence.bayes.model import ModelConfig, effect_sums, effects_model
from bayes_simfluence.bayes.run_state import RunState, host_features
from bayes_simfluence.commands._arguments import parse_option
from bayes_simfluence.rollout import roll_out
from bayes_simfluence.synthetic import random_curricula

HERE = Path(__file__).resolve().parent
#: hyperprior scales of both the prior draws and the fit (see the module docstring).
PRIOR_OPTIONS = {"effect_scale_prior": 0.02, "noise_prior": 0.05, "common_level": False}
#: posterior draws ranked against the truth: ranks take ``N_DRAWS + 1`` values, 20 per bin.
N_DRAWS = 199
BINS = 10
LEVEL = 0.01
#: training examples whose ``a`` and ``B`` are ranked (curricula are random: any two are typical).
TRAIN_EXAMPLES = (0, 1)
#: the run state's recency ``rho`` in the replications with ``-o run_state=true``.
STATE_RECENCY = 0.5


@dataclass(frozen=True)
class Sizes:
    """Shapes of every replication (fixed, so the SVI programs compile once)."""

    n_train: int = 20
    n_tests: int = 3
    n_runs: int = 12
    n_steps: int = 30
    batch_size: int = 4


def prior_draws(config: ModelConfig, sizes: Sizes, n: int, key: Array) -> dict[str, np.ndarray]:
    """``n`` draws of every parameter from the model's prior, float64.

    Returns:
        ``"a"``, ``"B"`` ``[n, tests, n_train]`` (zeros where the variant fixes them),
        ``"drift"`` ``[n, tests, steps]`` (zeros without the step component), and each
        hyperparameter of the model (``noise_scale``, ``effect_scale``, ``memory_decay``, ...)
        ``[n, tests]``: the layout of ``FitResult.draws`` without its chain axis.
    """
    sites = ["a", "B", "step_drift", *HYPER_SITES]
    with jax.enable_x64(True):
        samples = Predictive(effects_model, num_samples=n, return_sites=sites)(
            key, sizes.n_tests, sizes.n_train, sizes.n_steps, config)
    samples = {k: np.asarray(v, np.float64) for k, v in samples.items()}
    zeros = np.zeros((n, sizes.n_tests, sizes.n_train))
    params = {"a": np.swapaxes(samples["a"], -1, -2) if "a" in samples else zeros,
              "B": np.swapaxes(samples["B"], -1, -2) if "B" in samples else zeros,
              "drift": samples.get("step_drift", np.zeros((n, sizes.n_tests, sizes.n_steps)))}
    params.update({name: samples[name] for name in HYPER_SITES if name in samples})
    return params


def generate_losses(params: dict[str, np.ndarray], curricula: np.ndarray, initial: np.ndarray,
                    noise: np.ndarray, state_term: np.ndarray | None = None) -> np.ndarray:
    """``[runs, steps + 1, tests]`` roll-out of the generating process, step by step in NumPy.

    ``L_t = (1 + m^a_t) L_{t-1} + m^B_t + d_t + noise_t`` with the remembered batch sums
    ``m_t = (1 - lambda) s_t + lambda m_{t-1}`` from ``m_0 = 0`` (``lambda = 0`` without memory)
    and ``s_t`` the sum of the effects of the batch at step ``t``. Written independently of the
    package's jitted roll-out, which it checks.

    Args:
        params: one draw: ``"a"``, ``"B"`` ``[tests, n_train]``, ``"drift"`` ``[tests, steps]``,
            optional ``"memory_decay"`` ``[tests]``.
        curricula: ``[runs, steps, batch]``, ``-1`` for an empty slot; initial: ``[runs, tests]``;
            noise: ``[runs, steps, tests]`` (zeros for the noise-free trajectory).
        state_term: ``[runs, steps, tests]`` the run state's ``g . f_t`` added to each step, or None.
    """
    n_runs, n_steps, _ = curricula.shape
    n_tests = params["a"].shape[0]
    decay = params.get("memory_decay", np.zeros(n_tests))
    # a zero column last: the empty slot -1 picks it
    a = np.concatenate([params["a"], np.zeros((n_tests, 1))], axis=1)
    b = np.concatenate([params["B"], np.zeros((n_tests, 1))], axis=1)
    memory_a, memory_b = np.zeros((n_runs, n_tests)), np.zeros((n_runs, n_tests))
    losses = np.empty((n_runs, n_steps + 1, n_tests))
    losses[:, 0] = initial
    for t in range(n_steps):
        memory_a = (1 - decay) * a[:, curricula[:, t]].sum(-1).T + decay * memory_a
        memory_b = (1 - decay) * b[:, curricula[:, t]].sum(-1).T + decay * memory_b
        losses[:, t + 1] = (1 + memory_a) * losses[:, t] + memory_b + params["drift"][:, t] + noise[:, t]
        if state_term is not None:
            losses[:, t + 1] += state_term[:, t]
    return losses


def step_noise(sigma: np.ndarray, config: ModelConfig, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """``[*shape, tests]`` likelihood noise of scale ``sigma`` ``[tests]`` (Normal or Student-t)."""
    full = shape + sigma.shape
    if config.likelihood == "student_t":
        return sigma * rng.standard_t(config.nu, full)
    return sigma * rng.standard_normal(full)


def draw_run_state(curricula: np.ndarray, rng: np.random.Generator) -> RunState:
    """A run state for ``curricula [runs, steps, batch]``: a standard Normal direction of root mean
    square 1, recency :data:`STATE_RECENCY`, and the feature scales the fit computes from these runs."""
    n_train = int(curricula.max()) + 1
    direction = rng.standard_normal(n_train)
    unit = RunState.of(direction / np.sqrt(np.mean(direction**2)), STATE_RECENCY)
    features = host_features(curricula, unit)
    return unit._replace(feature_scale=np.sqrt((features**2).mean(axis=(0, 1))))


def state_term(params: dict[str, np.ndarray], curricula: np.ndarray, state: RunState | None) -> np.ndarray | None:
    """``[runs, steps, tests]`` the run state's contribution ``g . f_t`` to each step (scaled
    features, coefficients ``params["state"] [tests, 2]``), or None without a run state."""
    if state is None:
        return None
    return np.einsum("rsf,mf->rsm", host_features(curricula, state) / state.feature_scale, params["state"])


def simulate_data(params: dict[str, np.ndarray], config: ModelConfig, sizes: Sizes,
                  rng: np.random.Generator) -> tuple[ModelData, np.ndarray, RunState | None]:
    """Runs of the generating process for one parameter draw (see :func:`generate_losses`), on
    the standardised scale (``scale = 1``, ``L_0 = 1``): ``(data, losses [runs, steps + 1, tests], state)``;
    with ``config.run_state`` a run state is drawn (:func:`draw_run_state`) and ``params["state"]``
    ``[tests, 2]`` from its prior, else ``state`` is None."""
    curricula = random_curricula(sizes.n_runs, sizes.n_steps, sizes.batch_size, sizes.n_train, rng).astype(np.int32)
    noise = step_noise(params["noise_scale"], config, (sizes.n_runs, sizes.n_steps), rng)
    state = draw_run_state(curricula, rng) if config.run_state else None
    if state is not None:
        params["state"] = config.state_prior * params["noise_scale"][:, None] * rng.standard_normal((sizes.n_tests, 2))
    losses = generate_losses(params, curricula, np.ones((sizes.n_runs, sizes.n_tests)), noise,
                             state_term(params, curricula, state))
    data = ModelData(curricula=curricula, previous=losses[:, :-1], change=np.diff(losses, axis=1),
                     scale=np.ones(sizes.n_tests), n_train=sizes.n_train)
    return data, losses, state


def parameter_quantities(params: dict[str, np.ndarray], config: ModelConfig) -> dict[str, np.ndarray]:
    """The ranked parameters ``[..., tests]`` of truth (no leading axis) or draws (``[draws, ...]``):
    every hyperparameter present, and ``a``, ``B`` of :data:`TRAIN_EXAMPLES`."""
    out = {name: params[name] for name in HYPER_SITES if name in params}
    for i in TRAIN_EXAMPLES:
        if config.has_multiplicative:
            out[f"a[{i}]"] = params["a"][..., i]
        if config.has_additive:
            out[f"B[{i}]"] = params["B"][..., i]
    for i in TRAIN_EXAMPLES:  # against the average example: identified with full batches
        if config.has_multiplicative:
            out[f"a[{i}]-mean"] = params["a"][..., i] - params["a"].mean(-1)
        if config.has_additive:
            out[f"B[{i}]-mean"] = params["B"][..., i] - params["B"].mean(-1)
    if "state" in params:
        out["g1"], out["g2"] = params["state"][..., 0], params["state"][..., 1]
    return out


def decisions(final: np.ndarray) -> dict[str, np.ndarray]:
    """Decision quantities from noise-free final losses ``[..., 2 curricula, tests]``: the final
    loss under the first curriculum and the paired difference first minus second ``[..., tests]``."""
    return {"final_loss": final[..., 0, :], "paired_difference": final[..., 0, :] - final[..., 1, :]}


def true_decisions(params: dict[str, np.ndarray], pair: np.ndarray, state: RunState | None = None) -> dict[str, np.ndarray]:
    """:func:`decisions` of one parameter draw on ``pair`` ``[2, steps, batch]`` from ``L_0 = 1``,
    rolled out by :func:`generate_losses` without noise (with the run state's term, if any)."""
    n_tests = params["a"].shape[0]
    final = generate_losses(params, pair, np.ones((2, n_tests)), np.zeros(pair.shape[:2] + (n_tests,)),
                            state_term(params, pair, state))[:, -1]
    return decisions(final)


@jax.jit
def _final_losses(a: Array, b: Array, drift: Array, decay: Array | None, extra: Array, curricula: Array) -> Array:
    """``[draws, runs, tests]`` noise-free final losses from ``L_0 = 1`` of draws ``a``, ``b``
    ``[draws, tests, n_train]``, ``drift`` ``[draws, tests, steps]``, ``decay`` ``[draws, tests]``
    or None, and ``extra`` ``[draws, runs, steps, tests]`` added to every step (the run state's
    term, or zeros), on ``curricula`` ``[runs, steps, batch]``."""

    def one(a_draw: Array, b_draw: Array, drift_draw: Array, decay_draw: Array | None, extra_draw: Array) -> Array:
        sum_a, sum_b = effect_sums(a_draw, b_draw, curricula, decay_draw)
        initial = jnp.ones((curricula.shape[0], a_draw.shape[0]), a_draw.dtype)
        return roll_out(1.0 + sum_a, sum_b + drift_draw.T[None] + extra_draw, initial)[:, -1]

    return jax.vmap(one)(a, b, drift, decay, extra)


def drawn_decisions(draws: dict[str, np.ndarray], pair: np.ndarray, state: RunState | None = None) -> dict[str, np.ndarray]:
    """:func:`decisions` ``[draws, tests]`` of posterior draws (layout of :func:`prior_draws`)
    on ``pair`` ``[2, steps, batch]``, rolled out with the package's ``effect_sums``, ``roll_out``
    and, with a run state, its ``host_features`` and the draws' coefficients ``"state"``."""
    n_draws, n_tests = draws["a"].shape[:2]
    if state is None:
        extra = np.zeros((n_draws,) + pair.shape[:2] + (n_tests,))
    else:
        extra = np.einsum("rsf,dmf->drsm", host_features(pair, state) / state.feature_scale, draws["state"])
    with jax.enable_x64(True):
        final = _final_losses(*(jnp.asarray(draws[k]) for k in ("a", "B", "drift")),
                              None if "memory_decay" not in draws else jnp.asarray(draws["memory_decay"]),
                              jnp.asarray(extra), jnp.asarray(pair))
    return decisions(np.asarray(final))


def replicate(params: dict[str, np.ndarray], config: ModelConfig, fit_kwargs: dict[str, Any], sizes: Sizes,
              rng: np.random.Generator, seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    """One SBC replication for the prior draw ``params`` (one draw of :func:`prior_draws`).

    Returns:
        ``(truth {quantity: [tests]}, draws {quantity: [draws, tests]}, info)``; ``info`` has the
        fit's seconds, whether its ELBO converged and the largest simulated ``|L|``.
    """
    params = dict(params)  # simulate_data adds the run state's coefficients
    data, losses, state = simulate_data(params, config, sizes, rng)
    pair = random_curricula(2, sizes.n_steps, sizes.batch_size, sizes.n_train, rng)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence is recorded in info
        kwargs = {k: v for k, v in fit_kwargs.items() if k != "method"}
        if fit_kwargs.get("method") == "grid":
            fit = run_grid(data, config, seed=seed, **kwargs, progress=False, state=state)
        else:
            fit = run_svi(data, config, seed=seed, **kwargs, progress=False)
    draws = {k: v[0] for k, v in fit.draws.items()}  # one "chain"
    draws.setdefault("drift", np.zeros(draws["a"].shape[:2] + (sizes.n_steps,)))
    truth = {**parameter_quantities(params, config), **true_decisions(params, pair, state)}
    drawn = {**parameter_quantities(draws, config), **drawn_decisions(draws, pair, state)}
    info = {"seconds": fit.info["seconds"], "elbo_converged": fit.info.get("elbo_converged"),
            "edge_mass": fit.info.get("edge_mass"),
            "max_abs_loss": float(np.abs(losses).max())}
    return truth, drawn, info


def run_sbc(replications: int, config: ModelConfig, fit_kwargs: dict[str, Any], sizes: Sizes = Sizes(),
            seed: int = 0, progress: bool = True) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[dict]]:
    """Every replication: ``(truth {quantity: [replications, tests]},
    draws {quantity: [replications, draws, tests]}, infos)``."""
    params = prior_draws(config, sizes, replications, jax.random.PRNGKey(seed))
    rng = np.random.default_rng(seed)
    truths, draws, infos = [], [], []
    for r in tqdm(range(replications), desc="SBC", unit="fit", disable=not progress):
        truth, drawn, info = replicate({k: v[r] for k, v in params.items()}, config, fit_kwargs, sizes, rng, seed + r)
        truths.append(truth)
        draws.append(drawn)
        infos.append(info)
    return ({k: np.stack([t[k] for t in truths]) for k in truths[0]},
            {k: np.stack([d[k] for d in draws]) for k in draws[0]}, infos)


def ranks(truth: np.ndarray, draws: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``[*shape]`` rank of ``truth`` ``[*shape]`` among ``draws`` ``[*shape, L]``: the number of
    draws below it, ties broken at random, in ``0..L``."""
    below = (draws < truth[..., None]).sum(-1)
    ties = (draws == truth[..., None]).sum(-1)
    return below + rng.integers(0, ties + 1)


def rank_counts(ranks_: np.ndarray, n_draws: int, bins: int = BINS) -> np.ndarray:
    """``[bins]`` counts of ``ranks_`` (any shape, values ``0..n_draws``) in equal bins;
    ``n_draws + 1`` must be a multiple of ``bins``."""
    if (n_draws + 1) % bins:
        raise ValueError(f"{n_draws + 1} rank values do not split into {bins} equal bins")
    return np.bincount((np.ravel(ranks_) * bins) // (n_draws + 1), minlength=bins)


def uniformity(ranks_: np.ndarray, n_draws: int, bins: int = BINS) -> dict[str, Any]:
    """Chi-square test that ``ranks_`` (values ``0..n_draws``) are uniform, over ``bins`` bins.

    Returns:
        ``p_value``; ``counts`` ``[bins]``; ``ends``: fraction of ranks in the first and last bins
        (``2 / bins`` when uniform; more: the posterior is too narrow, less: too wide);
        ``mean_rank``: mean rank over ``n_draws`` (0.5 when uniform; above: the posterior sits
        below the truth, below: above it).
    """
    counts = rank_counts(ranks_, n_draws, bins)
    return {"p_value": float(stats.chisquare(counts).pvalue), "counts": counts.tolist(),
            "ends": float((counts[0] + counts[-1]) / counts.sum()), "mean_rank": float(np.mean(ranks_) / n_draws)}


def uniform_band(n: int, bins: int = BINS, level: float = 0.99) -> tuple[float, float]:
    """Central ``level`` interval of one bin's count when ``n`` ranks are uniform over ``bins`` bins."""
    tail = (1 - level) / 2
    return float(stats.binom.ppf(tail, n, 1 / bins)), float(stats.binom.ppf(1 - tail, n, 1 / bins))


def reading(result: dict[str, Any], bins: int = BINS) -> str:
    """A few words on the shape of a rank histogram (:func:`uniformity`'s result)."""
    counts = np.asarray(result["counts"])
    n, expected_ends = counts.sum(), 2 / bins
    ends_se = np.sqrt(expected_ends * (1 - expected_ends) / n)
    words = []
    if result["ends"] > expected_ends + 3 * ends_se:
        words.append("piled at the ends: too narrow")
    elif result["ends"] < expected_ends - 3 * ends_se:
        words.append("piled in the middle: too wide")
    shift = result["mean_rank"] - 0.5
    if abs(shift) > 3 * np.sqrt(1 / 12 / n):
        words.append("truth above the draws: biased low" if shift > 0 else "truth below the draws: biased high")
    return "; ".join(words) or "uniform within noise"


def summarise(truth: dict[str, np.ndarray], draws: dict[str, np.ndarray], n_draws: int,
              seed: int = 0) -> dict[str, dict[str, Any]]:
    """``{quantity: uniformity result + ranks}`` over every replication and test example."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in truth:
        r = ranks(truth[name], np.moveaxis(draws[name], 1, -1), rng).ravel()
        result = uniformity(r, n_draws)
        out[name] = {**result, "reading": reading(result), "ranks": r.tolist()}
    return out


def compact_json(value: Any) -> str:
    """``value`` as indented JSON with every list of numbers on one line (ranks, counts)."""
    text = json.dumps(value, indent=1)
    return re.sub(r"\[\s*([-+\d.eE,\s]+?)\s*\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text) + "\n"


def write_report(results: dict[str, Any], out: Path) -> None:
    """``sbc.md`` (per guide: command, sizes, table) and ``sbc.png`` (rank histograms) from ``sbc.json``."""
    lines = ["# Simulation-based calibration of the Bayesian path", "",
             "Written by `experiments/sbc.py` (see its docstring for the design). Ranks of the true value among "
             f"the posterior draws; chi-square over {BINS} bins; pass at {LEVEL} with a Bonferroni "
             "correction over the quantities. `ends`: fraction of ranks in the outer two bins (uniform: "
             f"{2 / BINS:.2f}; more = posterior too narrow, less = too wide); `mean rank`: uniform 0.5.", ""]
    for guide, run in results.items():
        threshold = LEVEL / len(run["quantities"])
        passed = all(q["p_value"] > threshold for q in run["quantities"].values())
        title = "`bayes-grid`" if run.get("method") == "grid" else f"guide `{guide}`"
        checks = (f"largest grid edge mass {run['largest_edge_mass']:.2g}" if "largest_edge_mass" in run
                  else f"ELBO converged in {run['elbo_converged_fraction']:.0%} of fits")
        lines += [f"## {title}: {'passes' if passed else 'FAILS'}", "",
                  f"`{run['command']}` at commit {run.get('commit', '?')[:7]}"
                  f"{' with the package modified' if run.get('package_modified') else ''}: {run['replications']} replications x {run['sizes']['n_tests']} test "
                  f"examples = {run['n_ranks']} ranks per quantity, each among {run['n_draws']} draws, "
                  f"{run['seconds']:.0f} s "
                  f"(fits {run['fit_seconds_mean']:.2f} s each, {run['compile_seconds']:.0f} s first), "
                  f"{checks}, largest |L| "
                  f"{run['max_abs_loss']:.3g}.", "",
                  f"Sizes {run['sizes']}; model {run['config']}; fit {run['fit_kwargs']}.", "",
                  f"| quantity | p-value | pass (p > {threshold:.2g}) | ends | mean rank | reading |",
                  "|---|---|---|---|---|---|"]
        for name, q in run["quantities"].items():
            lines.append(f"| {name} | {q['p_value']:.3g} | {'yes' if q['p_value'] > threshold else 'NO'} | "
                         f"{q['ends']:.3f} | {q['mean_rank']:.3f} | {q['reading']} |")
        lines.append("")
    (out / "sbc.md").write_text("\n".join(lines))
    plot(results, out / "sbc.png")


def plot(results: dict[str, Any], path: Path) -> None:
    """One panel per quantity: each guide's rank histogram (step line) over the 99% band of a
    uniform histogram with as many ranks."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(name for run in results.values() for name in run["quantities"]))
    cols = 3
    fig, axes = plt.subplots(-(-len(names) // cols), cols, figsize=(4 * cols, 2.8 * -(-len(names) // cols)),
                             squeeze=False, constrained_layout=True)
    edges = np.arange(BINS + 1)
    colours = {guide: f"C{i}" for i, guide in enumerate(results)}  # one colour per guide in every panel
    for ax, name in zip(axes.flat, names):
        banded = False
        for guide, run in results.items():
            q = run["quantities"].get(name)
            if q is None:
                continue
            if not banded:  # the band of the first run that has this quantity
                lo, hi = uniform_band(run["n_ranks"])
                ax.fill_between([0, BINS], lo, hi, color="0.85", label="99% uniform")
                ax.axhline(run["n_ranks"] / BINS, color="0.5", lw=0.8)
                banded = True
            ax.stairs(q["counts"], edges, lw=1.6, color=colours[guide], label=f"{guide} (p={q['p_value']:.2g})")
        ax.set_title(name)
        ax.set_xticks([0, BINS / 2, BINS], ["0", "L/2", "L"])
        ax.set_xlabel("rank of the truth among L draws")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.suptitle("SBC rank histograms (counts per bin)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def provenance() -> dict[str, Any]:
    """The commit of the package's checkout and whether its files differ from it (empty outside git)."""
    root = Path(bayes_simfluence.__file__).resolve().parents[1]
    try:
        git = [subprocess.run(["git", *command], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
               for command in (["rev-parse", "HEAD"], ["status", "--porcelain", "--", "bayes_simfluence"])]
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"commit": git[0], "package_modified": bool(git[1])}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replications", type=int, default=200)
    parser.add_argument("--method", default="grid", choices=("grid", "svi"),
                        help="svi: run_svi with --guide; grid: run_grid (bayes-grid: grid hyperparameters, exact effects)")
    parser.add_argument("--guide", default="normal", help="SVI guide: normal | lowrank | mvn | conditional")
    parser.add_argument("-o", "--option", action="append", type=parse_option, default=[], metavar="KEY=VALUE",
                        help="a bayes-svi option (model or fit), for the prior draws and the fit alike")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    user = dict(args.option)
    if args.method == "grid":
        config, fit_kwargs = parse_options({**PRIOR_OPTIONS, "num_draws": N_DRAWS, **user}, "grid")
        fit_kwargs["method"] = "grid"
        name = "grid_run_state" if config.run_state else "grid"
    else:
        config, fit_kwargs = parse_options({**PRIOR_OPTIONS, "num_draws": N_DRAWS, **user, "guide": args.guide}, "svi")
        name = args.guide
    fit_kwargs.pop("progress")
    n_draws = fit_kwargs["num_draws"]
    start = time.perf_counter()
    truth, draws, infos = run_sbc(args.replications, config, fit_kwargs, seed=args.seed)
    seconds = time.perf_counter() - start
    quantities = summarise(truth, draws, n_draws, args.seed)
    fit_seconds = np.array([info["seconds"] for info in infos])
    run = {"command": shlex.join(["python", "experiments/sbc.py", *(argv if argv is not None else sys.argv[1:])]),
           "replications": args.replications, "seed": args.seed, "sizes": asdict(Sizes()), "n_draws": n_draws,
           "n_ranks": int(args.replications * Sizes().n_tests), "config": config.to_dict(), "fit_kwargs": fit_kwargs,
           "seconds": seconds, "compile_seconds": float(fit_seconds[0]),
           "fit_seconds_mean": float(fit_seconds[1:].mean()) if len(fit_seconds) > 1 else float(fit_seconds[0]),
           "method": args.method,
           **({"largest_edge_mass": float(max(info["edge_mass"] for info in infos))} if args.method == "grid" else
              {"elbo_converged_fraction": float(np.mean([info["elbo_converged"] for info in infos]))}),
           "max_abs_loss": float(max(info["max_abs_loss"] for info in infos)),
           **provenance(), "bonferroni_threshold": LEVEL / len(quantities), "quantities": quantities}
    run["passes"] = all(q["p_value"] > run["bonferroni_threshold"] for q in quantities.values())
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "sbc.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results[name] = run
    path.write_text(compact_json(results))
    write_report(results, args.out)
    print(f"{name}: {'passes' if run['passes'] else 'FAILS'} ({seconds:.0f} s)")
    for name, q in quantities.items():
        print(f"  {name:18s} p={q['p_value']:.3g}  ends={q['ends']:.3f}  mean rank={q['mean_rank']:.3f}  {q['reading']}")


if __name__ == "__main__":
    main()
