"""The runs format: logged training runs, loaded, validated, sliced, split and saved.

A set of runs is one ``.npz`` file with

- ``curricula``: int ``[runs, steps, batch]``; training-example index of each batch slot,
  in ``[0, n_train)``, or ``-1`` for an empty slot (ragged batches);
- ``losses``: float ``[runs, steps + 1, tests]``; ``losses[r, 0]`` before any update,
  ``losses[r, t]`` after step ``t``;
- optional ``n_train`` (int), ``train_ids`` ``[n_train]``, ``test_ids`` ``[tests]`` (strings)
  and ``meta`` (a JSON string);
- optional features of the training examples, which the Bayesian backends' feature prior regresses
  the effects on (:mod:`bayes_simfluence.bayes.features`): ``train_features`` float
  ``[n_train, k]`` (one row per training example: its label, a reduced embedding) and
  ``pair_features`` float ``[tests, n_train, j]`` (one value per pair: one-step scores such as
  TracIn's of the training example on the test example). Examples no run used still get effects
  from them: that is how a curriculum with new data is simulated.

Every other part of the package speaks this format through :class:`Runs`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from bayes_simfluence import atomic
from bayes_simfluence.budget import check as check_memory
from bayes_simfluence.validation import MAX_ABS_LOSS, InputError

EMPTY_SLOT = -1


class RunsFormatError(InputError):
    """A runs file or array does not follow the runs format; the message says what and where."""


#: a pool larger than this with no ``train_ids``, used only by indices 1000 times smaller, is refused
#: (its generated ids alone took minutes at ``n_train = 1e8``).
MAX_UNNAMED_POOL = 10**6
#: copies of its arrays that loading and checking a runs file holds at once (the array read, its
#: float64 copy, the finiteness and range checks): what the memory budget counts per decompressed byte.
LOAD_COPIES = 4


def open_archive(path: str | os.PathLike, what: str = "file") -> np.lib.npyio.NpzFile:
    """An ``.npz`` archive opened without unpickling, its headers checked first (no object arrays, the
    decompressed arrays fit the memory budget); a missing or unreadable one is a :class:`RunsFormatError`."""
    from bayes_simfluence import budget

    try:
        return budget.open_npz(path, what, copies=LOAD_COPIES)
    except InputError as error:
        raise RunsFormatError(str(error)) from error


def member(archive: np.lib.npyio.NpzFile, name: str, source: str) -> np.ndarray:
    """Array ``name`` of an open archive; a truncated or corrupted member names the file and the array."""
    from bayes_simfluence.budget import _plain

    try:
        return archive[name]
    except Exception as error:  # noqa: BLE001 - zlib, EOF and numpy errors alike
        raise RunsFormatError(f"{source}: '{name}' is not a readable array ({_plain(error)})") from error


def _scalar_integer(value: Any, where: str) -> int:
    """An integer scalar (a Python int or a 0-d integer array); fractions, text and arrays are refused."""
    array = np.asarray(value)
    if array.ndim != 0:
        raise RunsFormatError(f"{where} must be one integer, got an array of shape {array.shape}")
    if array.dtype.kind == "f" and np.isfinite(array) and float(array) == round(float(array)):
        return int(array)
    if array.dtype.kind not in "iu":
        raise RunsFormatError(f"{where} must be an integer, got {array.item()!r} (dtype {array.dtype})")
    return int(array)


def _as_int_curricula(curricula: Any, source: str) -> np.ndarray:
    array = np.asarray(curricula)
    if array.dtype == object:
        raise RunsFormatError(f"{source}: 'curricula' must be a numeric array, got dtype object")
    if array.ndim != 3:
        raise RunsFormatError(
            f"{source}: 'curricula' must have 3 dims [runs, steps, batch], "
            f"got {array.ndim} dims with shape {array.shape}"
        )
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.int64)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            bad = np.argwhere(~np.isfinite(array) | (array != np.round(array)))[0]
            raise RunsFormatError(
                f"{source}: 'curricula' must hold integer indices, found "
                f"{array[tuple(bad)]!r} at [run, step, slot] = {bad.tolist()}"
            )
        return array.astype(np.int64)
    raise RunsFormatError(
        f"{source}: 'curricula' must be an integer array, got dtype {array.dtype}"
    )


def _as_string_ids(ids: Any, name: str, expected: int, what: str, source: str) -> np.ndarray:
    array = np.asarray(ids)
    if array.ndim != 1:
        raise RunsFormatError(
            f"{source}: '{name}' must be 1-D, got shape {array.shape}"
        )
    if array.shape[0] != expected:
        raise RunsFormatError(
            f"{source}: '{name}' has {array.shape[0]} entries but there are {expected} {what}"
        )
    return array.astype(str)


@dataclass(frozen=True)
class Runs:
    """Logged training runs in the runs format.

    Attributes:
        curricula: ``[runs, steps, batch]`` int64, ``-1`` marks an empty slot.
        losses: ``[runs, steps + 1, tests]`` float64.
        n_train: number of training examples indices refer to.
        train_ids: ``[n_train]`` strings.
        test_ids: ``[tests]`` strings.
        meta: free-form metadata (model, task, learning rate, seeds, ...).

    Construction validates everything; an invalid input raises :class:`RunsFormatError`.
    """

    curricula: np.ndarray
    losses: np.ndarray
    n_train: int
    train_ids: np.ndarray
    test_ids: np.ndarray
    meta: dict = field(default_factory=dict)
    train_features: np.ndarray | None = None
    pair_features: np.ndarray | None = None

    @classmethod
    def create(
        cls,
        curricula: Any,
        losses: Any,
        n_train: int | None = None,
        train_ids: Sequence[str] | None = None,
        test_ids: Sequence[str] | None = None,
        meta: dict | None = None,
        source: str = "runs",
        train_features: Any = None,
        pair_features: Any = None,
    ) -> "Runs":
        """Validate arrays and build a :class:`Runs`; ``source`` names the input in errors."""
        curricula = _as_int_curricula(curricula, source)
        losses = np.asarray(losses)
        if not np.issubdtype(losses.dtype, np.number) or np.issubdtype(losses.dtype, np.complexfloating):
            raise RunsFormatError(f"{source}: 'losses' must be a real float array, got dtype {losses.dtype}")
        losses = losses.astype(np.float64)
        if losses.ndim != 3:
            raise RunsFormatError(
                f"{source}: 'losses' must have 3 dims [runs, steps + 1, tests], "
                f"got {losses.ndim} dims with shape {losses.shape}"
            )
        n_runs, n_steps, _ = curricula.shape
        if n_runs == 0:
            raise RunsFormatError(f"{source}: there are no runs ('curricula' has shape {curricula.shape})")
        if n_steps == 0:
            raise RunsFormatError(f"{source}: runs have no steps ('curricula' has shape {curricula.shape})")
        if curricula.shape[2] == 0:
            raise RunsFormatError(f"{source}: batches have no slots ('curricula' has shape {curricula.shape})")
        if losses.shape[0] != n_runs:
            raise RunsFormatError(
                f"{source}: 'losses' has {losses.shape[0]} runs but 'curricula' has {n_runs}"
            )
        if losses.shape[1] != n_steps + 1:
            raise RunsFormatError(
                f"{source}: 'losses' must have steps + 1 = {n_steps + 1} entries on axis 1 "
                f"(one before any update, one after each of the {n_steps} steps in 'curricula'), "
                f"got {losses.shape[1]}"
            )
        if losses.shape[2] == 0:
            raise RunsFormatError(f"{source}: 'losses' has no test examples (shape {losses.shape})")
        if not np.all(np.isfinite(losses)):
            bad = np.argwhere(~np.isfinite(losses))
            raise RunsFormatError(
                f"{source}: 'losses' holds {len(bad)} non-finite value(s) (NaN or inf); first at "
                f"[run, step, test] = {bad[0].tolist()}: {losses[tuple(bad[0])]}"
            )
        if np.any(np.abs(losses) > MAX_ABS_LOSS):
            bad = np.argwhere(np.abs(losses) > MAX_ABS_LOSS)
            raise RunsFormatError(
                f"{source}: 'losses' holds {len(bad)} value(s) beyond +-{MAX_ABS_LOSS:g} (float64 arithmetic on "
                f"them overflows); first at [run, step, test] = {bad[0].tolist()}: {losses[tuple(bad[0])]:g}"
            )
        if np.any(curricula < EMPTY_SLOT):
            bad = np.argwhere(curricula < EMPTY_SLOT)[0]
            raise RunsFormatError(
                f"{source}: 'curricula' holds {curricula[tuple(bad)]} at [run, step, slot] = "
                f"{bad.tolist()}; indices must be in [0, n_train) or -1 for an empty slot"
            )
        max_index = int(curricula.max())
        if n_train is None:
            if max_index < 0:
                raise RunsFormatError(f"{source}: every slot of 'curricula' is empty (-1) and no 'n_train' is given")
            n_train = max_index + 1
        n_train = _scalar_integer(n_train, f"{source}: 'n_train'")
        if n_train <= 0:
            raise RunsFormatError(f"{source}: 'n_train' must be positive, got {n_train}")
        if max_index >= n_train:
            bad = np.argwhere(curricula >= n_train)[0]
            raise RunsFormatError(
                f"{source}: 'curricula' holds index {curricula[tuple(bad)]} at [run, step, slot] = "
                f"{bad.tolist()}, out of range for n_train = {n_train} (expected [0, {n_train}))"
            )
        n_tests = losses.shape[2]
        if train_ids is None:
            if n_train > MAX_UNNAMED_POOL and n_train > 1000 * (max_index + 1):  # first: whatever memory is free
                raise RunsFormatError(
                    f"{source}: 'n_train' = {n_train}, but the curricula use indices up to {max_index} and no "
                    "'train_ids' name the pool: is 'n_train' right? (naming every example would take minutes; "
                    "give 'train_ids' for a pool this large)")
            check_memory(128 * n_train, f"{source}: a pool of n_train = {n_train} training examples (its ids alone)",
                         f"the curricula use indices up to {max_index}: is 'n_train' right?")
            train_ids = np.array([f"train_{i}" for i in range(n_train)])
        if test_ids is None:
            test_ids = np.array([f"test_{m}" for m in range(n_tests)])
        train_ids = _as_string_ids(train_ids, "train_ids", n_train, "training examples (n_train)", source)
        test_ids = _as_string_ids(test_ids, "test_ids", n_tests, "test examples (losses.shape[2])", source)
        if train_features is not None:
            train_features = _as_features(train_features, "train_features", (n_train,), "[n_train, k]", source)
        if pair_features is not None:
            pair_features = _as_features(pair_features, "pair_features", (n_tests, n_train), "[tests, n_train, j]",
                                         source)
        return cls(curricula, losses, n_train, train_ids, test_ids, dict(meta or {}), train_features, pair_features)

    # ------------------------------------------------------------------ sizes
    @property
    def n_runs(self) -> int:
        return int(self.curricula.shape[0])

    @property
    def n_steps(self) -> int:
        return int(self.curricula.shape[1])

    @property
    def batch_size(self) -> int:
        """Number of slots per step (the largest batch; smaller batches pad with ``-1``)."""
        return int(self.curricula.shape[2])

    @property
    def n_tests(self) -> int:
        return int(self.losses.shape[2])

    @property
    def n_features(self) -> int:
        """Features per (training, test) pair: ``k + j`` of :attr:`train_features` and :attr:`pair_features`."""
        return sum(0 if f is None else f.shape[-1] for f in (self.train_features, self.pair_features))

    def with_features(self, train_features: Any = None, pair_features: Any = None) -> "Runs":
        """The same runs carrying these features (None drops them)."""
        return Runs.create(self.curricula, self.losses, self.n_train, self.train_ids, self.test_ids, self.meta,
                           train_features=train_features, pair_features=pair_features)

    @property
    def initial_losses(self) -> np.ndarray:
        """``[runs, tests]`` losses before any update."""
        return self.losses[:, 0, :]

    def __repr__(self) -> str:
        features = f", features={self.n_features}" if self.n_features else ""
        return (
            f"Runs(runs={self.n_runs}, steps={self.n_steps}, batch={self.batch_size}, "
            f"tests={self.n_tests}, n_train={self.n_train}{features})"
        )

    # ---------------------------------------------------------------- slicing
    def select_runs(self, index: Any) -> "Runs":
        """Runs picked by an int array, a slice or a boolean mask over runs."""
        index = _normalise_index(index, self.n_runs, "runs")
        return Runs.create(self.curricula[index], self.losses[index], self.n_train,
                           self.train_ids, self.test_ids, self.meta, train_features=self.train_features,
                           pair_features=self.pair_features)

    def select_tests(self, index: Any) -> "Runs":
        """Keep the test examples picked by ``index`` (ints, slice or mask)."""
        index = _normalise_index(index, self.n_tests, "tests")
        pairs = None if self.pair_features is None else self.pair_features[index]
        return Runs.create(self.curricula, self.losses[:, :, index], self.n_train,
                           self.train_ids, self.test_ids[index], self.meta, train_features=self.train_features,
                           pair_features=pairs)

    def first_steps(self, n_steps: int) -> "Runs":
        """The first ``n_steps`` steps of every run (``losses`` keeps ``n_steps + 1`` entries)."""
        if not 1 <= n_steps <= self.n_steps:
            raise ValueError(f"n_steps must be in [1, {self.n_steps}], got {n_steps}")
        return Runs.create(self.curricula[:, :n_steps], self.losses[:, : n_steps + 1], self.n_train,
                           self.train_ids, self.test_ids, self.meta, train_features=self.train_features,
                           pair_features=self.pair_features)

    def split(self, n_heldout: int) -> tuple["Runs", "Runs"]:
        """``(train, heldout)`` with the last ``n_heldout`` runs held out."""
        if not 1 <= n_heldout < self.n_runs:
            raise ValueError(
                f"n_heldout must be in [1, {self.n_runs - 1}] for {self.n_runs} runs, got {n_heldout}"
            )
        cut = self.n_runs - n_heldout
        return self.select_runs(slice(0, cut)), self.select_runs(slice(cut, None))

    def check_compatible(self, other: "Runs", what: str = "held-out runs") -> None:
        """Raise unless ``other`` has the same training pool and test examples."""
        if other.n_train != self.n_train:
            raise RunsFormatError(
                f"{what}: n_train = {other.n_train}, but the simulator was fitted with n_train = {self.n_train}"
            )
        if other.n_tests != self.n_tests:
            raise RunsFormatError(
                f"{what}: {other.n_tests} test examples, but the simulator was fitted on {self.n_tests}"
            )

    # -------------------------------------------------------------------- I/O
    @classmethod
    def load(cls, path: str | os.PathLike) -> "Runs":
        """Read and validate a runs ``.npz`` file."""
        source = str(path)
        with open_archive(path) as archive:
            missing = [name for name in ("curricula", "losses") if name not in archive.files]
            if missing:
                raise RunsFormatError(
                    f"{source}: missing required array(s) {missing}; found {sorted(archive.files)}"
                )
            n_train, train_ids, test_ids, train_features, pair_features = (
                member(archive, name, source) if name in archive.files else None
                for name in ("n_train", "train_ids", "test_ids", "train_features", "pair_features"))
            meta = {}
            if "meta" in archive.files:
                text = str(member(archive, "meta", source))
                try:
                    meta = json.loads(text)
                except (ValueError, RecursionError) as error:
                    raise RunsFormatError(f"{source}: 'meta' is not valid JSON ({error})") from error
                if not isinstance(meta, dict):
                    raise RunsFormatError(f"{source}: 'meta' must be a JSON object ({{...}}), got a "
                                          f"{type(meta).__name__}")
            return cls.create(member(archive, "curricula", source), member(archive, "losses", source), n_train,
                              train_ids, test_ids, meta, source=source, train_features=train_features,
                              pair_features=pair_features)

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays of a runs file, by name."""
        return {"curricula": self.curricula, "losses": self.losses, "n_train": np.int64(self.n_train),
                "train_ids": self.train_ids.astype(str), "test_ids": self.test_ids.astype(str),
                "meta": np.array(json.dumps(self.meta, sort_keys=True)),
                **{name: array for name, array in (("train_features", self.train_features),
                                                   ("pair_features", self.pair_features)) if array is not None}}

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically at exactly ``path``: a crash never leaves a half-written file there."""
        atomic.savez(path, self.arrays())


def _as_features(features: Any, name: str, leading: tuple[int, ...], shape: str, source: str) -> np.ndarray:
    """A finite float feature array ``leading + [k]``; anything else is a :class:`RunsFormatError` naming it."""
    array = np.asarray(features)
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise RunsFormatError(f"{source}: '{name}' must be a real float array {shape}, got dtype {array.dtype}")
    if array.ndim != len(leading) + 1 or array.shape[:-1] != leading:
        raise RunsFormatError(f"{source}: '{name}' must have shape {shape} = {list(leading) + ['k']}, "
                              f"got {array.shape}")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        bad = np.argwhere(~np.isfinite(array))[0]
        raise RunsFormatError(f"{source}: '{name}' holds a non-finite value at {bad.tolist()}")
    return array


def _normalise_index(index: Any, size: int, axis: str) -> Any:
    if isinstance(index, slice):
        return index
    if isinstance(index, (bool, np.bool_, str, float)):
        raise InputError(f"{axis} index must be integers, a slice or a boolean mask, got {index!r}")
    items = list(index) if isinstance(index, (list, tuple)) else []
    if any(isinstance(item, (bool, np.bool_)) for item in items) and not all(
            isinstance(item, (bool, np.bool_)) for item in items):
        raise InputError(f"{axis} index mixes booleans and integers: {items!r}")
    array = np.asarray(index)
    if array.size and array.dtype != bool and array.dtype.kind not in "iu":
        raise InputError(f"{axis} index must be integers, a slice or a boolean mask, got {array.dtype} values "
                         f"{array.reshape(-1)[:5].tolist()!r}")
    if array.dtype == bool:
        if array.shape != (size,):
            raise ValueError(f"boolean mask over {axis} must have shape ({size},), got {array.shape}")
        return np.flatnonzero(array)
    array = array.astype(np.int64).reshape(-1)
    if array.size and (array.min() < -size or array.max() >= size):
        raise IndexError(f"{axis} index out of range for {size} {axis}: {array.tolist()}")
    return array
