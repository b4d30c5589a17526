"""Diagnostics of a fitted posterior through ArviZ: conversion, summary, divergences, PPC, LOO.

Reads posteriors, never writes them (files are :mod:`bayes_simfluence.bayes.posterior_io`'s job).
Data carry named dims (``chain``, ``draw``, ``test_example``, ``train_example``, ``run``,
``step``) and the runs' ids as coords. ArviZ 0.x (Python 3.11) and 1.x (Python >= 3.12) are both
supported; version-specific lines are marked ``ARVIZ 1.x``, the containers live in
:mod:`bayes_simfluence.bayes.arviz_data`.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import numpy as np
import xarray as xr

from bayes_simfluence.bayes import arviz_data
from bayes_simfluence.bayes.arviz_data import ARVIZ_1
from bayes_simfluence.bayes.posterior import BayesianSimfluence
from bayes_simfluence.bayes.posterior_io import posterior_groups
from bayes_simfluence.metrics import band_scores
from bayes_simfluence.runs import Runs

if ARVIZ_1:  # ARVIZ 1.x
    import arviz_stats
else:
    import arviz as az


def to_inference_data(posterior: BayesianSimfluence, runs: Runs | None = None,
                      log_likelihood: bool = False, n_draws: int | None = None) -> Any:
    """The posterior as ArviZ data with named dims and the runs' ids as coords.

    Groups: ``posterior`` (effects in loss units, hyperparameters standardised), ``sample_stats``
    (NUTS: ``diverging``, ``n_steps``, ...), ``constant_data`` (``loss_scale``) and, with ``runs``
    and ``log_likelihood=True``, ``log_likelihood`` (``y`` ``[chain, draw, run, step, test_example]``,
    teacher-forced, for LOO) and ``observed_data``.
    """
    groups = posterior_groups(posterior.fields())
    if runs is not None and log_likelihood:
        values = posterior.log_likelihood(runs, n_draws=n_draws)
        run_coords = {"run": np.arange(runs.n_runs), "step": np.arange(1, runs.n_steps + 1),
                      "test_example": runs.test_ids}
        groups["log_likelihood"] = arviz_data.draws_dataset({"y": values}, {"y": ["run", "step", "test_example"]},
                                                            run_coords)
        groups["observed_data"] = xr.Dataset({"y": (["run", "step", "test_example"], np.diff(runs.losses, axis=1))},
                                             coords=run_coords)
    return arviz_data.container(groups)


def summary(data: Any, var_names: list[str] | None = None) -> Any:
    """``pandas.DataFrame`` with ``r_hat``, ``ess_bulk``, ``ess_tail`` (and MCSE) per parameter, unrounded."""
    if ARVIZ_1:  # ARVIZ 1.x
        return arviz_stats.summary(data, var_names=var_names, kind="diagnostics", round_to=None)
    return az.summary(data, var_names=var_names, kind="diagnostics", round_to="none")


def count_divergences(data: Any, warn: bool = True) -> int:
    """Divergent transitions in ``sample_stats`` (0 when there are none or no NUTS stats)."""
    stats = arviz_data.group(data, "sample_stats")
    if stats is None or "diverging" not in stats:
        return 0
    count = int(stats["diverging"].values.sum())
    if count and warn:
        warnings.warn(f"{count} divergent transitions: the posterior may be biased; raise target_accept, "
                      "reparameterise, or check the model", stacklevel=2)
    return count


class Elpd(NamedTuple):
    """A PSIS-LOO estimate, the same whatever the ArviZ version.

    Attributes:
        elpd: expected log pointwise predictive density (sum over observations), ``se`` its standard error.
        p: effective number of parameters.
        n_data_points: observations left out one at a time.
        max_pareto_k: largest Pareto k (above ~0.7 the estimate of that observation is unreliable).
        pointwise: ``[observations]`` elpd of each one.
    """

    elpd: float
    se: float
    p: float
    n_data_points: int
    max_pareto_k: float
    pointwise: np.ndarray


def loo(data: Any) -> Elpd:
    """PSIS-LOO over the teacher-forced (run, step, test example) observations.

    Needs data built with ``log_likelihood=True``. Leaving one step out is a one-step-ahead
    check; whole held-out runs are the stronger test (:func:`bayes_simfluence.evaluation`).
    """
    if ARVIZ_1:  # ARVIZ 1.x
        result = arviz_stats.loo(data, pointwise=True)
        return Elpd(float(result.elpd), float(result.se), float(result.p), int(result.n_data_points),
                    float(np.max(result.pareto_k.values)), np.ravel(result.elpd_i.values))
    result = az.loo(data, pointwise=True)
    return Elpd(float(result.elpd_loo), float(result.se), float(result.p_loo), int(result.n_data_points),
                float(np.max(result.pareto_k.values)), np.ravel(result.loo_i.values))


def compare(models: dict[str, Any]) -> Any:
    """ArviZ model comparison (ELPD-LOO) of fitted variants on the same runs.

    Returns a ``pandas.DataFrame`` indexed by model, best first, with at least the columns
    ``elpd``, ``p``, ``elpd_diff``, ``se``, ``dse`` and ``weight`` (ArviZ 0.x's ``elpd_loo`` and
    ``p_loo`` are renamed to ArviZ 1.x's names).
    """
    if ARVIZ_1:  # ARVIZ 1.x
        return arviz_stats.compare(models)
    return az.compare(models).rename(columns={"elpd_loo": "elpd", "p_loo": "p"})


def posterior_predictive_check(posterior: BayesianSimfluence, runs: Runs, n_draws: int = 200,
                               seed: int = 0) -> dict[str, Any]:
    """Posterior predictive check on (training) runs: simulate them from their ``L_0``.

    Returns:
        ``coverage_50``, ``coverage_90``, ``crps`` of the predictive trajectories, and per test
        example the posterior predictive p-value of the final-step mean loss
        (``p_final [tests]``: fraction of draws whose mean over runs is below the observed one;
        values near 0 or 1 flag misfit).
    """
    draws = posterior.simulate_draws(runs.curricula, runs.initial_losses, n_draws, seed=seed)
    scores = band_scores(draws, runs.losses)
    final_draws = draws[:, :, -1].mean(1)  # [draws, tests]
    scores["p_final"] = (final_draws < runs.losses[:, -1].mean(0)).mean(0)
    return scores
