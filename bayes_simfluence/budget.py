"""The memory budget: every allocation that grows with user input is checked here first.

A command refuses, in well under a second and before allocating, work whose arrays would not fit:
posterior draws (``--draws``), widened curricula (``--repeat --times``), long or wide roll-outs,
the training pool (``n_train``) and arrays read from ``.npz``/``.npy`` files, whose sizes are read
from their headers before anything is decompressed (a 3 MB archive can hold 3 GiB of zeros). The
message gives the estimate and the limit. The limit is the memory available now
(``MemAvailable``), or ``BAYES_SIMFLUENCE_MEMORY_LIMIT`` (bytes, or with a ``K``/``M``/``G``/``T``
suffix) where that is smaller.

Reading files here also keeps NumPy's own messages away from users: an archive that is not a zip
file, an object (pickled) array or a truncated array is refused with the file and the member
named, never with NumPy's advice to load it with ``allow_pickle``.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from bayes_simfluence.validation import InputError

#: environment variable that lowers the memory limit (e.g. ``4G``).
LIMIT_VARIABLE = "BAYES_SIMFLUENCE_MEMORY_LIMIT"
#: working copies a roll-out of draws holds at once (alpha, beta, the trajectory, a float64 copy).
ROLL_OUT_COPIES = 4
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def available_memory() -> int:
    """Bytes of memory available to a new allocation (``MemAvailable``), or physical memory."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def limit() -> int:
    """The memory limit in bytes: available memory, or the environment's lower limit."""
    have = available_memory()
    text = os.environ.get(LIMIT_VARIABLE, "").strip().upper().removesuffix("B").removesuffix("I")
    if text:
        unit = text[-1] if text[-1] in _UNITS else ""
        try:
            given = float(text[: len(text) - len(unit)]) * _UNITS[unit]
        except ValueError:
            raise InputError(f"{LIMIT_VARIABLE}={os.environ[LIMIT_VARIABLE]!r}: expected bytes, e.g. 4G") from None
        have = min(have, int(given))
    return have


def size(n_bytes: float) -> str:
    """``n_bytes`` in words: ``21.8 TiB``."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes:.0f} B"


def check(n_bytes: float, what: str, hint: str = "") -> None:
    """Refuse work whose arrays would need more than the limit, saying how much and what the limit is."""
    have = limit()
    if n_bytes > have:
        source = "available" if have == available_memory() else f"the limit ({LIMIT_VARIABLE})"
        raise InputError(f"{what} would need about {size(n_bytes)} of memory; {size(have)} is {source}"
                         + (f" ({hint})" if hint else ""))


def product(*factors: Any) -> float:
    """The product of sizes as a float (no integer overflow, no huge integers)."""
    return math.prod(float(factor) for factor in factors)


def check_draws(n_draws: int, n_runs: int, n_steps: int, n_tests: int, n_train: int = 0,
                what: str = "the draws") -> None:
    """Refuse ``n_draws`` simulated trajectories ``[draws, runs, steps + 1, tests]`` that would not fit
    (with the draws of the effects ``[draws, tests, n_train]``, twice, they come from)."""
    trajectories = product(8 * ROLL_OUT_COPIES, n_draws, n_runs, n_steps + 1, n_tests)
    effects = product(8 * 2, n_draws, n_tests, n_train)
    check(trajectories + effects, f"{what}: {n_draws} draws of {n_runs} run(s) x {n_steps} steps x "
          f"{n_tests} test example(s)", "ask for fewer draws, runs, steps or test examples")


def check_simulation(simulator: Any, n_draws: int, curricula: Any, n_tests: int,
                     what: str = "the draws (--draws)") -> None:
    """:func:`check_draws` for ``simulator`` (its pool size read from its ``train_ids``) on
    ``curricula [runs, steps, batch]``."""
    shape = np.shape(curricula)
    n_runs, n_steps = (shape[0], shape[1]) if len(shape) >= 2 else (1, 1)
    train_ids = getattr(simulator, "train_ids", None)
    check_draws(n_draws, n_runs, n_steps, n_tests, 0 if train_ids is None else len(train_ids), what)


# ----------------------------------------------------------------------------------- npz and npy
_ZIP_MAGIC = b"PK\x03\x04"


def _header(handle: Any, where: str) -> tuple[tuple[int, ...], np.dtype]:
    """``(shape, dtype)`` from an ``.npy`` header, read without reading the data."""
    try:
        version = npy_format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = npy_format.read_array_header_1_0(handle)
        else:
            shape, _, dtype = npy_format.read_array_header_2_0(handle)
    except (ValueError, EOFError, OSError, SyntaxError) as error:
        raise InputError(f"{where}: not a readable .npy array ({_plain(error)})") from error
    if dtype.hasobject:
        raise InputError(f"{where}: holds Python objects (dtype {dtype}); arrays of objects are pickles and are "
                         "never loaded: save plain numeric or string arrays")
    return tuple(int(n) for n in shape), dtype


def _plain(error: BaseException) -> str:
    """NumPy's message without its advice to unpickle (never load an untrusted file that way)."""
    text = " ".join(str(error).split())
    if "pickle" in text.lower():
        return "not a NumPy array file"
    return text or type(error).__name__


def npz_members(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{name: (shape, dtype)}`` of every array in an ``.npz`` archive, from the headers only."""
    path = Path(path)
    with open(path, "rb") as handle:
        if handle.read(4) != _ZIP_MAGIC:
            raise InputError(f"{path}: not a readable .npz file (not a zip archive of arrays, as numpy.savez writes)")
    members = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                name = info.filename[: -len(".npy")]
                with archive.open(info) as member:
                    members[name] = _header(member, f"{path}: '{name}'")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError, RuntimeError) as error:
        raise InputError(f"{path}: not a readable .npz archive ({_plain(error)})") from error
    return members


def check_npz(path: str | os.PathLike, what: str = "file", copies: int = 1) -> None:
    """Refuse an ``.npz`` file that is no zip of arrays, holds object arrays, or whose arrays would not
    fit in memory once decompressed, ``copies`` times over (sizes from the headers, before anything is
    decompressed)."""
    members = npz_members(path)
    total = sum(product(dtype.itemsize, *shape) for shape, dtype in members.values())
    if members:
        largest = max(members, key=lambda name: product(members[name][1].itemsize, *members[name][0]))
        shape, dtype = members[largest]
        held = f", held {copies} times over while loaded" if copies > 1 else ""
        check(copies * total, f"{path}: its arrays decompressed ({size(total)}, the largest '{largest}' {dtype} "
              f"{list(shape)}{held})", f"is this the right {what}?")


def open_npz(path: str | os.PathLike, what: str = "file", copies: int = 1) -> np.lib.npyio.NpzFile:
    """An ``.npz`` archive checked by :func:`check_npz`, opened without unpickling."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such {what}")
    check_npz(path, what, copies)
    try:
        return np.load(path, allow_pickle=False)
    except Exception as error:  # noqa: BLE001 - numpy raises several kinds here
        raise InputError(f"{path}: not a readable .npz file ({_plain(error)})") from error


def load_npy(path: str | os.PathLike, what: str = "array") -> np.ndarray:
    """An ``.npy`` array, its header checked first (no objects, fits in memory); truncated files refused."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such {what} file")
    with open(path, "rb") as handle:
        shape, dtype = _header(handle, str(path))
    check(product(dtype.itemsize, *shape), f"{path}: a {dtype} array of shape {list(shape)}",
          f"is this the right {what}?")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as error:  # noqa: BLE001 - a truncated file raises ValueError, EOFError or OSError
        raise InputError(f"{path}: not a readable .npy array ({_plain(error)})") from error
