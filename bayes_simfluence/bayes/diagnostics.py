"""Every ArviZ call of the package: conversion, NetCDF files, summary, divergences, PPC, LOO.

ArviZ versions: Python 3.11 resolves arviz 0.23 (``InferenceData``); Python >= 3.12 may
resolve arviz 1.x, whose data are ``xarray.DataTree`` objects handled by ``arviz_base`` and
``arviz_stats``. Groups are built here as plain ``xarray.Dataset`` objects with named dims
(``chain``, ``draw``, ``test_example``, ``train_example``, ``run``, ``step``) and coords from the
runs' ids, so the only version-specific code is the small block marked ``ARVIZ 1.x`` below
(container, summary, loo, compare); it is not exercised by the tests on Python 3.11.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from bayes_simfluence.bayes.model import ModelConfig
from bayes_simfluence.metrics import band_scores
from bayes_simfluence.runs import Runs

try:  # ARVIZ 1.x ------------------------------------------------------------------
    import arviz_base
    import arviz_stats

    ARVIZ_1 = True
except ImportError:  # arviz 0.x -----------------------------------------------------
    import arviz as az

    ARVIZ_1 = False

if TYPE_CHECKING:
    from bayes_simfluence.bayes.posterior import BayesianSimfluence

KIND_ATTRIBUTE = "bayes_simfluence_kind"
KIND = "bayes-simfluence-posterior"
DIMS = {
    "a": ["test_example", "train_example"],
    "B": ["test_example", "train_example"],
    "step_drift": ["test_example", "step"],
    "noise_scale": ["test_example"],
    "effect_scale": ["test_example"],
    "a_location": ["test_example"],
    "B_location": ["test_example"],
}


def _dataset(arrays: dict[str, np.ndarray], dims: dict[str, list[str]], coords: dict[str, Any],
             attrs: dict[str, Any] | None = None) -> xr.Dataset:
    variables = {name: (["chain", "draw", *dims.get(name, [])], value) for name, value in arrays.items()}
    used = {d for name in arrays for d in dims.get(name, [])}
    first = next(iter(arrays.values()))
    all_coords = {"chain": np.arange(first.shape[0]), "draw": np.arange(first.shape[1]),
                  **{k: v for k, v in coords.items() if k in used}}
    return xr.Dataset(variables, coords=all_coords, attrs=attrs or {})


def _container(groups: dict[str, xr.Dataset]) -> Any:
    """An ``InferenceData`` (arviz 0.x) or a ``DataTree`` (arviz 1.x) of the groups."""
    if ARVIZ_1:  # ARVIZ 1.x
        return xr.DataTree.from_dict(groups)
    return az.InferenceData(**groups)


def _group(data: Any, name: str) -> xr.Dataset | None:
    if ARVIZ_1:  # ARVIZ 1.x
        return data[name].to_dataset() if name in data.children else None
    return getattr(data, name, None) if name in data.groups() else None


def to_inference_data(posterior: "BayesianSimfluence", runs: Runs | None = None,
                      log_likelihood: bool = False, n_draws: int | None = None) -> Any:
    """The posterior as ArviZ data with named dims and the runs' ids as coords.

    Groups: ``posterior`` (effects in loss units, hyperparameters standardised), ``sample_stats``
    (NUTS: ``diverging``, ``n_steps``, ...), ``constant_data`` (``loss_scale``) and, with ``runs``
    and ``log_likelihood=True``, ``log_likelihood`` (``y`` ``[chain, draw, run, step, test_example]``,
    teacher-forced, for LOO) and ``observed_data``.
    """
    coords = {"test_example": posterior.test_ids, "train_example": posterior.train_ids}
    arrays = {"a": posterior.a, "B": posterior.b, "noise_scale": posterior.sigma, **posterior.hyper}
    if posterior.drift is not None:
        arrays["step_drift"] = posterior.drift
        coords["step"] = np.arange(1, posterior.drift.shape[-1] + 1)
    attrs = {KIND_ATTRIBUTE: KIND, "method": posterior.method, "config": json.dumps(posterior.config.to_dict()),
             "info": json.dumps(posterior.info, default=_jsonable)}
    groups = {"posterior": _dataset(arrays, DIMS, coords, attrs),
              "constant_data": xr.Dataset({"loss_scale": (["test_example"], posterior.scale)},
                                          coords={"test_example": posterior.test_ids})}
    if posterior.sample_stats:
        stats = {("n_steps" if k == "num_steps" else k): v for k, v in posterior.sample_stats.items()}
        groups["sample_stats"] = _dataset(stats, {}, {})
    if runs is not None and log_likelihood:
        values = posterior.log_likelihood(runs, n_draws=n_draws)
        run_coords = {"run": np.arange(runs.n_runs), "step": np.arange(1, runs.n_steps + 1),
                      "test_example": runs.test_ids}
        groups["log_likelihood"] = _dataset({"y": values}, {"y": ["run", "step", "test_example"]}, run_coords)
        groups["observed_data"] = xr.Dataset({"y": (["run", "step", "test_example"], np.diff(runs.losses, axis=1))},
                                             coords=run_coords)
    return _container(groups)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def write_netcdf(data: Any, path: str | Path) -> None:
    """Write ArviZ data to one NetCDF file."""
    data.to_netcdf(str(path))


def _open(path: str | Path) -> Any:
    if ARVIZ_1:  # ARVIZ 1.x
        return xr.open_datatree(str(path))
    return az.from_netcdf(str(path))


def is_posterior_file(path: str | Path) -> bool:
    """True when ``path`` is a NetCDF file written by :meth:`BayesianSimfluence.save`."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
        if magic not in (b"\x89HDF", b"CDF\x01", b"CDF\x02"):
            return False
        data = _open(path)
        group = _group(data, "posterior")
        return group is not None and group.attrs.get(KIND_ATTRIBUTE) == KIND
    except Exception:  # noqa: BLE001 - anything unreadable is simply not ours
        return False


def read_posterior(path: str | Path) -> dict[str, Any]:
    """Keyword arguments of :class:`BayesianSimfluence` from a saved file."""
    data = _open(path)
    posterior = _group(data, "posterior")
    if posterior is None or posterior.attrs.get(KIND_ATTRIBUTE) != KIND:
        raise ValueError(f"{path}: not a Bayesian Simfluence posterior file")
    stats = _group(data, "sample_stats")
    constant = _group(data, "constant_data")
    hyper = {k: posterior[k].values for k in ("effect_scale", "a_location", "B_location") if k in posterior}
    return {
        "method": str(posterior.attrs["method"]),
        "config": ModelConfig(**json.loads(posterior.attrs["config"])),
        "a": posterior["a"].values, "b": posterior["B"].values,
        "drift": posterior["step_drift"].values if "step_drift" in posterior else None,
        "sigma": posterior["noise_scale"].values, "hyper": hyper,
        "scale": constant["loss_scale"].values,
        "train_ids": posterior["train_example"].values.astype(str),
        "test_ids": posterior["test_example"].values.astype(str),
        "sample_stats": ({("num_steps" if k == "n_steps" else k): v.values for k, v in stats.data_vars.items()}
                         if stats is not None else {}),
        "info": json.loads(posterior.attrs["info"]),
    }


def summary(data: Any, var_names: list[str] | None = None) -> Any:
    """``pandas.DataFrame`` with ``r_hat``, ``ess_bulk``, ``ess_tail`` (and MCSE) per parameter, unrounded."""
    if ARVIZ_1:  # ARVIZ 1.x
        return arviz_stats.summary(data, var_names=var_names, kind="diagnostics", round_to=None)
    return az.summary(data, var_names=var_names, kind="diagnostics", round_to="none")


def count_divergences(data: Any, warn: bool = True) -> int:
    """Divergent transitions in ``sample_stats`` (0 when there are none or no NUTS stats)."""
    stats = _group(data, "sample_stats")
    if stats is None or "diverging" not in stats:
        return 0
    count = int(stats["diverging"].values.sum())
    if count and warn:
        warnings.warn(f"{count} divergent transitions: the posterior may be biased; raise target_accept, "
                      "reparameterise, or check the model", stacklevel=2)
    return count


def loo(data: Any) -> Any:
    """PSIS-LOO over the teacher-forced (run, step, test example) observations.

    Needs data built with ``log_likelihood=True``. Leaving one step out is a one-step-ahead
    check; whole held-out runs are the stronger test (:func:`bayes_simfluence.evaluation`).
    """
    if ARVIZ_1:  # ARVIZ 1.x
        return arviz_stats.loo(data, pointwise=True)
    return az.loo(data, pointwise=True)


def compare(models: dict[str, Any]) -> Any:
    """ArviZ model comparison (ELPD-LOO) of several fitted variants on the same runs."""
    if ARVIZ_1:  # ARVIZ 1.x
        return arviz_stats.compare(models)
    return az.compare(models)


def posterior_predictive_check(posterior: "BayesianSimfluence", runs: Runs, n_draws: int = 200,
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
