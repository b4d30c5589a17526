"""One validation layer for everything users hand the package: what was found, where, what was expected.

Every check raises :class:`InputError` (a ``ValueError``; the CLI turns it into one line and
exit code 2) *before* any expensive work. Integers must be integers (``1.5``, ``"1"``, ``true``
and ``null`` are refused, not coerced); numbers must be finite and within float64 arithmetic;
output paths are checked before a fit starts; memory is estimated from the sizes a file really
uses and refused when it would not fit.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

#: the largest index a curriculum may hold (int64 arithmetic on indices stays exact far above it).
MAX_INDEX = 2**40
#: the largest loss magnitude accepted: its square and sums of squares stay finite in float64.
MAX_ABS_LOSS = 1e100


class InputError(ValueError):
    """An input that cannot be used, with where it came from and what was expected."""


def integer_lists(value: Any, where: str) -> Any:
    """``value`` (parsed JSON) checked to hold only integers (and lists of them), returned unchanged.

    Refuses floats (even ``2.0``), strings, booleans, ``null`` and integers beyond ``MAX_INDEX``,
    naming the position, e.g. ``mine.json[0][1]: 1.5 is not an integer index``.
    """
    stack = [(value, where)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed([(child, f"{path}[{k}]") for k, child in enumerate(item)]))  # first error first
        elif isinstance(item, bool) or not isinstance(item, int):
            raise InputError(f"{path}: {json.dumps(item)} is not an integer index (expected a training-example "
                             "index >= 0, or -1 for an empty slot)")
        elif not -1 <= item <= MAX_INDEX:
            raise InputError(f"{path}: index {item} is out of range (expected -1 or an index in [0, {MAX_INDEX}])")
    return value


def read_json(path: Path) -> Any:
    """The JSON value in the file ``path``; invalid JSON is an :class:`InputError` naming the file."""
    try:
        return json.loads(Path(path).read_text())
    except RecursionError as error:
        raise InputError(f"{path}: not usable JSON (nested too deeply)") from error
    except (ValueError, UnicodeDecodeError) as error:  # invalid JSON, or an integer of over 4300 digits
        raise InputError(f"{path}: not valid JSON ({error})") from error


def integer(value: Any, where: str, minimum: int | None = None) -> int:
    """A Python ``int`` from an option value; refuses booleans, fractions and text."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{where}: expected an integer, got {json.dumps(value, default=str)}")
    if minimum is not None and value < minimum:
        raise InputError(f"{where}: expected an integer >= {minimum}, got {value}")
    return int(value)


def number(value: Any, where: str, minimum: float | None = None) -> float:
    """A finite float from an option value; refuses booleans, text, NaN and infinities."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(f"{where}: expected a number, got {json.dumps(value, default=str)}")
    if not math.isfinite(float(value)):
        raise InputError(f"{where}: expected a finite number, got {value}")
    if minimum is not None and value < minimum:
        raise InputError(f"{where}: expected a number >= {minimum}, got {value}")
    return float(value)


def finite_array(array: Any, where: str, max_abs: float = MAX_ABS_LOSS) -> np.ndarray:
    """A float64 array with no NaN or inf and no entry beyond ``max_abs`` (its square would overflow)."""
    try:
        values = np.asarray(array, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise InputError(f"{where}: expected numbers ({error})") from error
    bad = ~np.isfinite(values) | (np.abs(values) > max_abs)
    if bad.any():
        position = np.argwhere(bad)[0].tolist()
        raise InputError(f"{where}: {values[tuple(position)]!r} at {position} is not a finite number within "
                         f"+-{max_abs:g} (float64 arithmetic on it would overflow)")
    return values


def checked_result(array: Any, what: str, max_abs: float | None = None) -> np.ndarray:
    """Refuse a computed result holding NaN or inf (e.g. a roll-out whose ``alpha`` exceeds 1 diverged),
    or, with ``max_abs``, values beyond it (a simulated loss the runs format could not hold).

    The message says what overflowed and where; the inputs were checked already, so it does not
    blame them: a roll-out compounds its per-step factors over every step of the curriculum.
    """
    values = np.asarray(array, dtype=np.float64)
    bad = ~np.isfinite(values)
    if max_abs is not None:
        with np.errstate(invalid="ignore"):
            bad |= np.abs(values) > max_abs
    if bad.any():
        first = np.argwhere(bad)[0].tolist()
        limit = f" or beyond +-{max_abs:g}" if max_abs is not None else ""
        raise InputError(f"{what} overflowed: {np.mean(bad):.0%} of the values are NaN, inf{limit} (first "
                         f"{values[tuple(first)]:g} at index {first}); the simulator's per-step factors compound "
                         "over the curriculum's steps beyond float64 range (shorter curricula, or ones closer to "
                         "the fitted runs, stay in range)")
    return values


def write_target(path: str | os.PathLike) -> Path:
    """The file a write to ``path`` replaces: ``path``, or the file its chain of links points to."""
    path = Path(path)
    if not path.is_symlink():
        return path
    try:
        return path.resolve(strict=False)
    except (RuntimeError, OSError) as error:  # a loop of links (RuntimeError before Python 3.13)
        raise InputError(f"{path}: is a symbolic link that loops ({error}); remove it or give another path") \
            from error


def output_path(path: str | os.PathLike, where: str = "--out", suffixes: Sequence[str] | None = None,
                format_name: str = "", inputs: Sequence[str | os.PathLike | None] = ()) -> Path:
    """Check that a file can be written at exactly ``path`` (before any work is done).

    Refuses a directory at ``path``, a parent that is a regular file, a folder that cannot be
    written (tried with a temporary file), a looping symbolic link, the same file as one of
    ``inputs`` (compared after following links: an output never replaces an input) and (with
    ``suffixes``) a name whose extension does not fit the format. A link at ``path`` is written
    through (:mod:`bayes_simfluence.atomic`), so the folder checked is its target's.
    """
    import tempfile

    path = Path(path)
    try:
        if path.is_dir():
            raise InputError(f"{where} {path}: is a directory; give a file name")
        target = write_target(path)
        for given in inputs:
            if given is not None and same_file(target, Path(given)):
                raise InputError(f"{where} {path}: is the input {given}; writing there would replace it "
                                 "(give another output path)")
        folder = next(parent for parent in target.parents if parent.exists() or parent == parent.parent)
    except OSError as error:
        raise InputError(f"{where} {path}: {error.strerror or error}") from error
    if not folder.is_dir():
        raise InputError(f"{where} {path}: {folder} is a file, not a folder")
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".bayes-simfluence-", suffix=".probe")
        os.close(handle)
        os.remove(probe)
    except OSError as error:
        raise InputError(f"{where} {path}: the folder {folder} cannot be written ({error.strerror or error})") \
            from error
    if suffixes is not None and path.suffix not in suffixes:
        raise InputError(f"{where} {path}: {format_name or 'this output'} is written as "
                         f"{' or '.join(suffixes)}; use a file name ending so")
    return path


def same_file(output: Path, given: Path) -> bool:
    """Whether writing ``output`` would replace the input ``given`` (links and hard links followed)."""
    try:
        if output.exists() and given.exists():
            return os.path.samefile(output, given)
        return os.path.realpath(output) == os.path.realpath(given)
    except OSError:
        return False


def undefined_as_null(value: Any) -> Any:
    """``value`` with every NaN/inf float (an *undefined* metric, e.g. Spearman of a constant
    prediction) replaced by None, in nested dicts, lists and tuples; for reports whose inputs
    were already checked finite."""
    if isinstance(value, dict):
        return {key: undefined_as_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [undefined_as_null(item) for item in value]
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        return None
    return value


def strict_json(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` that refuses NaN and infinities (they are not JSON) with a named error."""
    try:
        return json.dumps(value, allow_nan=False, **kwargs)
    except ValueError as error:
        raise InputError(f"the result holds NaN or inf values, which JSON cannot carry ({error})") from error
