"""Diagnostics of a fitted posterior through ArviZ: summary, divergences, PPC, LOO, model comparison.

Each takes the ``xarray.DataTree`` of ``posterior.to_arviz(...)``
(:mod:`bayes_simfluence.bayes.conversion`) and hands it to the installed ArviZ: 1.x (Python >= 3.12)
takes DataTrees; for 0.x (Python 3.11) it is converted to ``InferenceData``
(:func:`~bayes_simfluence.bayes.arviz_data.for_arviz`). Version-specific lines are marked ``ARVIZ 1.x``.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import xarray as xr

from bayes_simfluence.bayes import arviz_data
from bayes_simfluence.bayes.arviz_data import ARVIZ_1
from bayes_simfluence.metrics import band_scores
from bayes_simfluence.runs import Runs

if TYPE_CHECKING:
    from bayes_simfluence.bayes.posterior import BayesianSimfluence
if ARVIZ_1:  # ARVIZ 1.x
    import arviz_stats
else:
    import arviz as az


def summary(data: xr.DataTree, var_names: list[str] | None = None) -> Any:
    """``pandas.DataFrame`` with ``r_hat``, ``ess_bulk``, ``ess_tail`` (and MCSE) per parameter, unrounded."""
    data = arviz_data.for_arviz(data)
    if ARVIZ_1:  # ARVIZ 1.x
        return arviz_stats.summary(data, var_names=var_names, kind="diagnostics", round_to=None)
    return az.summary(data, var_names=var_names, kind="diagnostics", round_to="none")


def count_divergences(data: xr.DataTree, warn: bool = True) -> int:
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


def loo(data: xr.DataTree) -> Elpd:
    """PSIS-LOO over the teacher-forced (run, step, test example) observations.

    Needs data built with ``log_likelihood=True``. Leaving one step out is a one-step-ahead
    check; whole held-out runs are the stronger test (:func:`bayes_simfluence.evaluation`).
    """
    data = arviz_data.for_arviz(data)
    if ARVIZ_1:  # ARVIZ 1.x
        result = arviz_stats.loo(data, pointwise=True)
        return Elpd(float(result.elpd), float(result.se), float(result.p), int(result.n_data_points),
                    float(np.max(result.pareto_k.values)), np.ravel(result.elpd_i.values))
    result = az.loo(data, pointwise=True)
    return Elpd(float(result.elpd_loo), float(result.se), float(result.p_loo), int(result.n_data_points),
                float(np.max(result.pareto_k.values)), np.ravel(result.loo_i.values))


def compare(models: dict[str, xr.DataTree]) -> Any:
    """ArviZ model comparison (ELPD-LOO) of fitted variants on the same runs.

    Returns a ``pandas.DataFrame`` indexed by model, best first, with at least the columns
    ``elpd``, ``p``, ``elpd_diff``, ``se``, ``dse`` and ``weight`` (ArviZ 0.x's ``elpd_loo`` and
    ``p_loo`` are renamed to ArviZ 1.x's names).
    """
    models = {name: arviz_data.for_arviz(data) for name, data in models.items()}
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
