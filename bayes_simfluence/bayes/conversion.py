"""A fitted posterior as ArviZ data: an ``xarray.DataTree`` with named dims, on ArviZ 0.x and 1.x alike.

Dims: ``chain``, ``draw``, ``test_example``, ``train_example``, ``run``, ``step`` (and ``slot`` of
a curriculum), with the runs' ids as coords. What :meth:`BayesianSimfluence.to_arviz
<bayes_simfluence.bayes.posterior.BayesianSimfluence.to_arviz>` returns and
:mod:`bayes_simfluence.bayes.diagnostics` reads.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from bayes_simfluence.bayes import arviz_data
from bayes_simfluence.bayes.posterior_io import posterior_groups
from bayes_simfluence.runs import Runs


def to_datatree(posterior: Any, runs: Runs | None = None, predictions: Runs | None = None, n_draws: int = 200,
                seed: int = 0, log_likelihood: bool = False) -> xr.DataTree:
    """The posterior (a :class:`~bayes_simfluence.bayes.posterior.BayesianSimfluence`) as a DataTree.

    Groups: ``posterior`` (effects in loss units, hyperparameters standardised), ``sample_stats``
    (NUTS: ``diverging``, ``num_steps``, ...) and ``constant_data`` (``loss_scale``); with ``runs``,
    ``observed_data`` ``loss [run, step, test_example]`` (step 0: before training) and
    ``posterior_predictive`` ``loss [chain, draw, run, step, test_example]``, ``n_draws`` trajectories of
    the runs' curricula from the posterior's default predictive (``seed``); with ``runs`` and
    ``log_likelihood=True`` also ``log_likelihood`` ``y [chain, draw, run, step, test_example]`` (every
    posterior draw, teacher-forced per-step changes, for LOO) and the observed changes ``y`` (NaN at
    step 0); with ``predictions`` (runs whose losses need not be known), ``predictions`` ``loss`` as for
    ``runs`` and ``predictions_constant_data`` (``curricula [run, step, slot]``, ``initial_losses [run,
    test_example]``).
    """
    groups = posterior_groups(posterior.fields())
    for name, source in (("posterior_predictive", runs), ("predictions", predictions)):
        if source is not None:
            draws = posterior.simulate_draws(source.curricula, source.initial_losses, n_draws, seed=seed)
            groups[name] = arviz_data.draws_dataset({"loss": draws[None]}, {"loss": ["run", "step", "test_example"]},
                                                    _coords(source, first_step=0))
    if runs is not None:
        observed = xr.Dataset({"loss": (["run", "step", "test_example"], runs.losses)}, coords=_coords(runs, 0))
        if log_likelihood:
            changes = _coords(runs, first_step=1)
            groups["log_likelihood"] = arviz_data.draws_dataset({"y": posterior.log_likelihood(runs)},
                                                                {"y": ["run", "step", "test_example"]}, changes)
            observed = observed.merge(xr.Dataset({"y": (["run", "step", "test_example"], np.diff(runs.losses, axis=1))},
                                                 coords=changes), join="outer")
        groups["observed_data"] = observed
    if predictions is not None:
        groups["predictions_constant_data"] = xr.Dataset(
            {"curricula": (["run", "step", "slot"], predictions.curricula),
             "initial_losses": (["run", "test_example"], predictions.initial_losses)},
            coords=_coords(predictions, first_step=1))
    return arviz_data.container(groups)


def _coords(runs: Runs, first_step: int) -> dict[str, np.ndarray]:
    return {"run": np.arange(runs.n_runs), "step": np.arange(first_step, runs.n_steps + 1),
            "test_example": runs.test_ids}
