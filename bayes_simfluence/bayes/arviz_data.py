"""ArviZ containers across ArviZ versions: named-dim groups, NetCDF reading and atomic writing.

Python 3.11 resolves arviz 0.23 (``InferenceData``); Python >= 3.12 resolves arviz 1.x, whose data
are ``xarray.DataTree`` objects handled by ``arviz_base`` / ``arviz_stats``. Groups are built as
plain ``xarray.Dataset`` objects, so the only version-specific code is in this module (marked
``ARVIZ 1.x``) and in the few statistics of :mod:`bayes_simfluence.bayes.diagnostics`. CI runs the
0.x branch on Python 3.11 and the 1.x branch on Python 3.12.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from bayes_simfluence.atomic import atomic_path

#: ArviZ 1.x is installed (``arviz_base`` and ``arviz_stats``), else ArviZ 0.x.
ARVIZ_1 = importlib.util.find_spec("arviz_base") is not None
if not ARVIZ_1:  # arviz 0.x
    import arviz as az


def draws_dataset(arrays: dict[str, np.ndarray], dims: dict[str, list[str]], coords: dict[str, Any],
                  attrs: dict[str, Any] | None = None) -> xr.Dataset:
    """A group of ``[chain, draw, *dims[name]]`` variables; coords only for the dims in use."""
    variables = {name: (["chain", "draw", *dims.get(name, [])], value) for name, value in arrays.items()}
    used = {d for name in arrays for d in dims.get(name, [])}
    first = next(iter(arrays.values()))
    all_coords = {"chain": np.arange(first.shape[0]), "draw": np.arange(first.shape[1]),
                  **{k: v for k, v in coords.items() if k in used}}
    return xr.Dataset(variables, coords=all_coords, attrs=attrs or {})


def container(groups: dict[str, xr.Dataset]) -> Any:
    """An ``InferenceData`` (arviz 0.x) or a ``DataTree`` (arviz 1.x) of the groups."""
    if ARVIZ_1:  # ARVIZ 1.x
        return xr.DataTree.from_dict(groups)
    return az.InferenceData(**groups)


def group(data: Any, name: str) -> xr.Dataset | None:
    """The group ``name`` of ``data`` as a Dataset, or None when absent."""
    if ARVIZ_1:  # ARVIZ 1.x
        return data[name].to_dataset() if name in data.children else None
    return getattr(data, name, None) if name in data.groups() else None


def open_netcdf(path: str | Path) -> Any:
    """Read ArviZ data written by :func:`write_netcdf`, fully loaded (the file is closed after)."""
    if ARVIZ_1:  # ARVIZ 1.x
        with xr.open_datatree(str(path)) as tree:
            return tree.load()
    return az.from_netcdf(str(path))


def write_netcdf(data: Any, path: str | Path) -> None:
    """Write ArviZ data to exactly ``path``, atomically (nothing is left behind on failure or interrupt)."""
    with atomic_path(path) as temporary:
        if ARVIZ_1:  # ARVIZ 1.x
            data.to_netcdf(str(temporary))
        else:  # uncompressed: zlib took 12 s of a 300 MB posterior and saves little on float draws
            data.to_netcdf(str(temporary), compress=False)
