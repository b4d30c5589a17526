"""Posterior files: a fitted posterior's fields <-> one NetCDF file (ArviZ groups, named dims).

Works on the *fields* of :class:`~bayes_simfluence.bayes.posterior.BayesianSimfluence` (a plain
mapping: ``method``, ``config``, ``a``, ``b``, ``drift``, ``sigma``, ``hyper``, ``scale``,
``train_ids``, ``test_ids``, ``sample_stats``, ``info``), so it imports neither the posterior class
nor the diagnostics: both import it.

File layout: group ``posterior`` (``a``, ``B`` ``[chain, draw, test_example, train_example]``,
``drift`` ``[chain, draw, test_example, step]``, ``noise_scale`` and hyperparameters
``[chain, draw, test_example]``; effects in loss units, hyperparameters standardised; attributes
``bayes_simfluence_kind``, ``method``, ``config`` and ``info`` as JSON), ``constant_data``
(``loss_scale [test_example]``; with the guard ``stacking_weight [guard_step, test_example]`` and
``blind_mean [time, test_example]``, the training runs' mean trajectory at ``time`` 0..steps, and
``run_residuals [heldout_run, residual_step, test_example]``, the held-out residuals behind the
new-run predictive; with the run state ``state_direction [train_example]`` and the attribute
``state_recency``, and with the guard ``blind_state [test_example, state_feature]`` and
``blind_center [residual_step, state_feature]``, its state-only alternative), and, for NUTS, ``sample_stats``. With the run state the posterior group also
holds ``run_state [chain, draw, test_example, state_feature]`` (loss units).

The draws are saved under the names the fit gives them (``FitResult.draws``,
:meth:`~bayes_simfluence.bayes.posterior.BayesianSimfluence.parameter_draws`: ``a``, ``B``,
``drift``; NUTS's ``num_steps``); files written under the old names (:data:`OLD_NAMES`) still load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import xarray as xr

from bayes_simfluence.bayes import arviz_data
from bayes_simfluence.bayes.model import ModelConfig

KIND_ATTRIBUTE = "bayes_simfluence_kind"
KIND = "bayes-simfluence-posterior"
HYPERPARAMETERS = ("effect_scale", "a_location", "B_location", "memory_decay")
DIMS = {
    "a": ["test_example", "train_example"],
    "B": ["test_example", "train_example"],
    "drift": ["test_example", "step"],
    "noise_scale": ["test_example"],
    **{name: ["test_example"] for name in HYPERPARAMETERS},
    "run_state": ["test_example", "state_feature"],
}
STATE_FEATURES = ("dz", "dz2")
#: ``{group: {old name in files: name now}}``: what files written before the names were unified hold
OLD_NAMES = {"posterior": {"step_drift": "drift"}, "sample_stats": {"n_steps": "num_steps"}}
_NETCDF_MAGIC = (b"\x89HDF", b"CDF\x01", b"CDF\x02")


def posterior_groups(fields: Mapping[str, Any]) -> dict[str, xr.Dataset]:
    """The ArviZ groups ``posterior``, ``constant_data`` (and ``sample_stats``) of a posterior's fields."""
    coords = {"test_example": fields["test_ids"], "train_example": fields["train_ids"]}
    arrays = {"a": fields["a"], "B": fields["b"], "noise_scale": fields["sigma"], **fields["hyper"]}
    if fields["drift"] is not None:
        arrays["drift"] = fields["drift"]
        coords["step"] = np.arange(1, fields["drift"].shape[-1] + 1)
    if fields.get("state") is not None:
        arrays["run_state"] = fields["state"]
        coords["state_feature"] = list(STATE_FEATURES)
    attrs = {KIND_ATTRIBUTE: KIND, "method": fields["method"], "config": json.dumps(fields["config"].to_dict()),
             "info": json.dumps(fields["info"], default=_jsonable)}
    if fields.get("batch_size") is not None:
        attrs["batch_size"] = int(fields["batch_size"])
    constant = {"loss_scale": (["test_example"], fields["scale"])}
    if fields.get("stacking_weight") is not None:
        weight = np.asarray(fields["stacking_weight"])  # [guard_step, test_example]; one per test before
        constant["stacking_weight"] = (["guard_step", "test_example"][-weight.ndim:], weight)
        constant["blind_mean"] = (["time", "test_example"], fields["blind_mean"])
    if fields.get("run_residuals") is not None:
        constant["run_residuals"] = (["heldout_run", "residual_step", "test_example"], fields["run_residuals"])
    constant_coords = {"test_example": fields["test_ids"]}
    if fields.get("state") is not None:
        constant["state_direction"] = (["train_example"], fields["state_direction"])
        if fields.get("blind_state") is not None:
            constant["blind_state"] = (["test_example", "state_feature"], fields["blind_state"])
            constant["blind_center"] = (["residual_step", "state_feature"], fields["blind_center"])
            constant_coords["state_feature"] = list(STATE_FEATURES)
        constant_coords["train_example"] = fields["train_ids"]
        attrs["state_recency"] = float(fields["state_recency"])
    groups = {"posterior": arviz_data.draws_dataset(arrays, DIMS, coords, attrs),
              "constant_data": xr.Dataset(constant, coords=constant_coords)}
    if fields["sample_stats"]:
        groups["sample_stats"] = arviz_data.draws_dataset(dict(fields["sample_stats"]), {}, {})
    return groups


def write_posterior(fields: Mapping[str, Any], path: str | Path) -> None:
    """Write a posterior to ``path`` (NetCDF, atomically: nothing is left behind on failure)."""
    if Path(path).suffix == ".npz":
        raise ValueError(f"{path}: a Bayesian posterior is saved as NetCDF; use a .nc file name")
    arviz_data.write_netcdf(arviz_data.container(posterior_groups(fields)), path)


def is_posterior_file(path: str | Path) -> bool:
    """True when ``path`` is a NetCDF file written by :func:`write_posterior`."""
    try:
        with open(path, "rb") as handle:
            if handle.read(4) not in _NETCDF_MAGIC:
                return False
        posterior = arviz_data.group(arviz_data.open_netcdf(path), "posterior")
        return posterior is not None and posterior.attrs.get(KIND_ATTRIBUTE) == KIND
    except Exception:  # noqa: BLE001 - anything unreadable is simply not ours
        return False


def read_posterior(path: str | Path) -> dict[str, Any]:
    """The fields (keyword arguments of ``BayesianSimfluence``) saved in ``path``."""
    data = arviz_data.open_netcdf(path)
    posterior = arviz_data.group(data, "posterior")
    if posterior is None or posterior.attrs.get(KIND_ATTRIBUTE) != KIND:
        raise ValueError(f"{path}: not a Bayesian Simfluence posterior file")
    posterior = _current_names(posterior, "posterior", path)
    stats = arviz_data.group(data, "sample_stats")
    stats = None if stats is None else _current_names(stats, "sample_stats", path)
    constant = arviz_data.group(data, "constant_data")
    missing = [name for name in ("a", "B", "noise_scale") if name not in posterior]
    if missing or constant is None or "loss_scale" not in constant:
        raise ValueError(f"{path}: posterior file lacks {missing or ['constant_data/loss_scale']}")
    try:
        config = ModelConfig(**json.loads(posterior.attrs["config"]))
    except (KeyError, TypeError, ValueError, RecursionError) as error:
        raise ValueError(f"{path}: the posterior's model config is unreadable ({error})") from error
    try:
        info = json.loads(posterior.attrs.get("info", "{}"))
    except (TypeError, ValueError, RecursionError) as error:
        raise ValueError(f"{path}: the posterior's 'info' attribute is not valid JSON ({error})") from error
    if not isinstance(info, dict):
        raise ValueError(f"{path}: the posterior's 'info' attribute must be a JSON object, got a {type(info).__name__}")
    fields = {
        "method": str(posterior.attrs.get("method", "")),
        "config": config,
        "a": posterior["a"].values, "b": posterior["B"].values,
        "drift": posterior["drift"].values if "drift" in posterior else None,
        "sigma": posterior["noise_scale"].values,
        "hyper": {k: posterior[k].values for k in HYPERPARAMETERS if k in posterior},
        "scale": constant["loss_scale"].values,
        "train_ids": posterior["train_example"].values.astype(str),
        "test_ids": posterior["test_example"].values.astype(str),
        "sample_stats": {k: v.values for k, v in stats.data_vars.items()} if stats is not None else {},
        "info": info,
        "batch_size": _attribute_integer(posterior.attrs, "batch_size", path),
        "stacking_weight": constant["stacking_weight"].values if "stacking_weight" in constant else None,
        "blind_mean": constant["blind_mean"].values if "blind_mean" in constant else None,
        "run_residuals": constant["run_residuals"].values if "run_residuals" in constant else None,
        "state": posterior["run_state"].values if "run_state" in posterior else None,
        "state_direction": constant["state_direction"].values if "state_direction" in constant else None,
        "state_recency": _attribute_number(posterior.attrs, "state_recency", path),
        "blind_state": constant["blind_state"].values if "blind_state" in constant else None,
        "blind_center": constant["blind_center"].values if "blind_center" in constant else None,
    }
    check_fields(fields, path)
    return fields


#: the inference routines a posterior may come from (its ``method`` attribute).
METHODS = ("svi", "nuts", "exact", "grid", "cg")
#: variables that come together: a posterior holding the first needs the others.
_TOGETHER = {"state": ("state_direction", "state_recency"), "blind_state": ("blind_center", "state"),
             "stacking_weight": ("blind_mean",), "blind_mean": ("stacking_weight",)}
#: the file's name of each field, for messages
_FILE_NAMES = {"b": "B", "sigma": "noise_scale", "scale": "loss_scale", "state": "run_state"}


def _current_names(group: xr.Dataset, name: str, path: str | Path) -> xr.Dataset:
    """Group ``name`` of a posterior file with its variables' old names (:data:`OLD_NAMES`) made current."""
    renames = {old: new for old, new in OLD_NAMES[name].items() if old in group}
    both = [old for old, new in renames.items() if new in group]
    if both:
        raise ValueError(f"{path}: the posterior file's '{name}' group holds both {OLD_NAMES[name][both[0]]!r} "
                         f"and its old name {both[0]!r}")
    return group.rename(renames)


def _attribute_integer(attrs: Mapping[str, Any], name: str, path: str | Path) -> int | None:
    if name not in attrs:
        return None
    value = np.asarray(attrs[name])
    if value.ndim != 0 or value.dtype.kind not in "iu" or int(value) < 1:
        raise ValueError(f"{path}: the posterior's '{name}' must be an integer >= 1, got {attrs[name]!r}")
    return int(value)


def _attribute_number(attrs: Mapping[str, Any], name: str, path: str | Path) -> float | None:
    if name not in attrs:
        return None
    value = np.asarray(attrs[name])
    if value.ndim != 0 or value.dtype.kind not in "iuf" or not np.isfinite(value):
        raise ValueError(f"{path}: the posterior's '{name}' must be one finite number, got {attrs[name]!r}")
    return float(value)


#: largest ``|a|`` and ``|B| / loss_scale`` a saved posterior may hold (:func:`check_fields`)
MAX_EFFECT = 1.0


def check_fields(fields: Mapping[str, Any], path: str | Path) -> None:
    """Refuse a posterior whose fields cannot be what a fit wrote, naming the field: an unknown method,
    non-finite draws, a scale that is not positive, a decay, weight or recency outside ``[0, 1]``,
    shapes that disagree, or a variable without the ones it comes with (the run state without its
    direction)."""
    if fields["method"] not in METHODS:
        raise ValueError(f"{path}: the posterior's 'method' is {fields['method']!r}; expected one of {list(METHODS)}")
    for name in ("a", "b", "drift", "sigma", "scale", "stacking_weight", "blind_mean", "run_residuals", "state",
                 "state_direction", "blind_state", "blind_center", *(f"hyper.{k}" for k in fields["hyper"])):
        value = fields["hyper"][name[6:]] if name.startswith("hyper.") else fields.get(name)
        label = _FILE_NAMES.get(name, name.removeprefix("hyper."))
        if value is None:
            continue
        value = np.asarray(value)
        if value.dtype.kind not in "iuf":
            raise ValueError(f"{path}: the posterior's '{label}' must be numbers, got dtype {value.dtype}")
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{path}: the posterior's '{label}' holds NaN or inf in {np.mean(~np.isfinite(value)):.0%} "
                             "of its values; refit")
    positive = {"noise_scale": fields["sigma"], "loss_scale": fields["scale"],
                "effect_scale": fields["hyper"].get("effect_scale")}
    for label, value in positive.items():
        if value is not None and not np.all(np.asarray(value) > 0):
            raise ValueError(f"{path}: the posterior's '{label}' is a scale and must be > 0 everywhere, found "
                             f"{float(np.min(value)):g}")
    unit = {"memory_decay": (fields["hyper"].get("memory_decay"), False),
            "stacking_weight": (fields.get("stacking_weight"), True),
            "state_recency": (fields.get("state_recency"), False)}
    for label, (value, closed) in unit.items():
        if value is None:
            continue
        value = np.asarray(value)
        inside = (value >= 0) & ((value <= 1) if closed else (value < 1))
        if not np.all(inside):
            raise ValueError(f"{path}: the posterior's '{label}' must be in [0, 1{']' if closed else ')'}, found "
                             f"{float(value.flat[np.argmin(inside.reshape(-1))]):g}")
    a, b, sigma = (np.asarray(fields[name]) for name in ("a", "b", "sigma"))
    n_tests, n_train = len(fields["test_ids"]), len(fields["train_ids"])
    if a.shape != b.shape or a.ndim != 4 or a.shape[2:] != (n_tests, n_train) or sigma.shape != a.shape[:3]:
        raise ValueError(f"{path}: the posterior's draws disagree in shape: a {a.shape}, B {b.shape}, noise_scale "
                         f"{sigma.shape}; expected [chain, draw, {n_tests} tests, {n_train} training examples]")
    if np.shape(fields["scale"]) != (n_tests,):
        raise ValueError(f"{path}: the posterior's 'loss_scale' has shape {np.shape(fields['scale'])}; "
                         f"expected ({n_tests},)")
    weight = fields.get("stacking_weight")
    if weight is not None and (np.ndim(weight) not in (1, 2) or np.shape(weight)[-1] != n_tests):
        raise ValueError(f"{path}: the posterior's 'stacking_weight' has shape {np.shape(weight)}; "
                         f"expected (steps, {n_tests})")
    blind = fields.get("blind_mean")
    if blind is not None and (np.ndim(blind) != 2 or np.shape(blind)[1] != n_tests
                              or (np.ndim(weight) == 2 and np.shape(weight)[0] != np.shape(blind)[0] - 1)):
        steps = np.shape(weight)[0] if np.ndim(weight) == 2 else "steps"
        raise ValueError(f"{path}: the posterior's 'blind_mean' has shape {np.shape(blind)}; expected "
                         f"({steps} + 1, {n_tests}), a loss at every step of the guard's 'stacking_weight' "
                         f"{np.shape(weight)} and at step 0")
    # one appearance of one example moving the loss by its whole typical size: 10 sds of the
    # effects' hyperprior (HalfNormal(0.1) on the standardised scale), never a fit's result
    relative = {"a": np.abs(a).max(initial=0.0),
                "B": float(np.max(np.abs(b) / np.asarray(fields["scale"])[:, None], initial=0.0))}
    for label, largest in relative.items():
        if largest >= MAX_EFFECT:
            raise ValueError(f"{path}: the posterior's '{label}' reaches {largest:.3g} of the loss's typical size "
                             f"per appearance (at most {MAX_EFFECT:g} expected); refit")
    for name, needed in _TOGETHER.items():
        if fields.get(name) is not None:
            missing = [other for other in needed if fields.get(other) is None]
            if missing:
                raise ValueError(f"{path}: the posterior holds '{_FILE_NAMES.get(name, name)}' but lacks "
                                 f"{[_FILE_NAMES.get(other, other) for other in missing]}, which come with it")
    if fields["config"].run_state and fields.get("state") is None:
        raise ValueError(f"{path}: the posterior's config has the run state, but the file lacks 'run_state'")


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
