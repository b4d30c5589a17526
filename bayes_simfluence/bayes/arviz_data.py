"""ArviZ data as ``xarray.DataTree``: named-dim groups, NetCDF reading and atomic writing.

ArviZ 1.x (Python >= 3.12) works on ``xarray.DataTree`` objects; ArviZ 0.x (Python 3.11) on its
``InferenceData``, which converts from and to a DataTree. Every container of this package is a
DataTree on both; only the statistics of :mod:`bayes_simfluence.bayes.diagnostics` convert for
ArviZ 0.x (:func:`for_arviz`, lines marked ``ARVIZ 1.x``). CI runs 0.x on Python 3.11 and 1.x on 3.12.
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


def draws_dataset(arrays: dict[str, np.ndarray], dims: dict[str, list[str]], coords: dict[str, Any],
                  attrs: dict[str, Any] | None = None) -> xr.Dataset:
    """A group of ``[chain, draw, *dims[name]]`` variables; coords only for the dims in use."""
    variables = {name: (["chain", "draw", *dims.get(name, [])], value) for name, value in arrays.items()}
    used = {d for name in arrays for d in dims.get(name, [])}
    first = next(iter(arrays.values()))
    all_coords = {"chain": np.arange(first.shape[0]), "draw": np.arange(first.shape[1]),
                  **{k: v for k, v in coords.items() if k in used}}
    return xr.Dataset(variables, coords=all_coords, attrs=attrs or {})


def container(groups: dict[str, xr.Dataset]) -> xr.DataTree:
    """A ``DataTree`` of the groups (``{"posterior": Dataset, ...}``)."""
    return xr.DataTree.from_dict(groups)


def group(data: xr.DataTree, name: str) -> xr.Dataset | None:
    """The group ``name`` of ``data`` as a Dataset, or None when absent."""
    return data[name].to_dataset() if name in data.children else None


def for_arviz(data: xr.DataTree) -> Any:
    """``data`` in the container the installed ArviZ's statistics take."""
    if ARVIZ_1:  # ARVIZ 1.x
        return data
    import arviz as az

    return az.InferenceData.from_datatree(data)


def open_netcdf(path: str | Path) -> xr.DataTree:
    """Read ArviZ data written by :func:`write_netcdf` (or by ArviZ), fully loaded (the file is closed after)."""
    with xr.open_datatree(str(path)) as tree:
        return tree.load()


def write_netcdf(data: xr.DataTree, path: str | Path) -> None:
    """Write ArviZ data to exactly ``path``, atomically (nothing is left behind on failure or interrupt);
    uncompressed: zlib took 12 s of a 300 MB posterior and saves little on float draws."""
    with atomic_path(path) as temporary:
        data.to_netcdf(str(temporary))
