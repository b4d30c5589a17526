"""Curricula: which training examples go into each batch of a run.

A curriculum is an int array ``[steps, batch]`` of training-example indices; a set of them is
``[runs, steps, batch]``. ``-1`` marks an empty slot (a short last batch, a removed example),
exactly as in the runs format. Samplers are seeded per run (``numpy`` generator seeded with
``[seed, run]``), so run ``r`` gets the same curriculum however many runs are asked for.

Samplers (the protocols of the literature):

- :func:`random_orderings`: every run sees the whole pool, a fresh random order each epoch;
- :func:`random_subsets`: every run trains on a random subset of the pool (e.g. 128 of 200,
  as in GPTfluence), in a fresh random order each epoch.

Editing helpers, used to ask counterfactual questions: :func:`from_batches`,
:func:`leave_out`, :func:`insert_at`, :func:`move_to_step`, :func:`reorder_steps`,
:func:`repeat_curriculum`. Each takes ``[steps, batch]`` or ``[runs, steps, batch]`` and
returns the same number of dims.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from bayes_simfluence.runs import EMPTY_SLOT
from bayes_simfluence.validation import integer

PROTOCOLS = ("orderings", "subsets")


def _run_rng(seed: int, run: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(run)])


def _epoch_batches(order: np.ndarray, batch_size: int, drop_last: bool) -> np.ndarray:
    """``[steps, batch]`` batches of one epoch's ``order``; a short last batch is padded with -1."""
    n_full, rest = divmod(order.size, batch_size)
    if rest and not drop_last:
        order = np.concatenate([order, np.full(batch_size - rest, EMPTY_SLOT, dtype=np.int64)])
        n_full += 1
    return order[: n_full * batch_size].reshape(n_full, batch_size)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if int(value) < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")


def random_orderings(n_train: int, n_runs: int, batch_size: int, epochs: int = 1, seed: int = 0,
                     drop_last: bool = False) -> np.ndarray:
    """Every run sees all ``n_train`` examples once per epoch, in a fresh random order.

    Returns:
        ``[runs, steps, batch]`` int64 with ``steps = epochs * ceil(n_train / batch_size)``
        (``floor`` with ``drop_last``); a short last batch of each epoch is padded with -1.
    """
    return random_subsets(n_train, n_runs, n_train, batch_size, epochs, seed, drop_last)


def random_subsets(n_train: int, n_runs: int, subset_size: int, batch_size: int, epochs: int = 1,
                   seed: int = 0, drop_last: bool = False) -> np.ndarray:
    """Every run draws ``subset_size`` of the ``n_train`` examples, then trains on them for
    ``epochs`` epochs, each in a fresh random order.

    Returns:
        ``[runs, steps, batch]`` int64, ``steps = epochs * ceil(subset_size / batch_size)``.
    """
    _check_positive(n_train=n_train, n_runs=n_runs, subset_size=subset_size, batch_size=batch_size,
                    epochs=epochs)
    if subset_size > n_train:
        raise ValueError(f"subset_size ({subset_size}) cannot exceed the pool size n_train ({n_train})")
    if drop_last and subset_size < batch_size:
        raise ValueError(f"with drop_last, subset_size ({subset_size}) must be at least batch_size ({batch_size})")
    runs = []
    for run in range(n_runs):
        rng = _run_rng(seed, run)
        subset = rng.choice(n_train, size=subset_size, replace=False)
        epochs_batches = [_epoch_batches(rng.permutation(subset), batch_size, drop_last) for _ in range(epochs)]
        runs.append(np.concatenate(epochs_batches, axis=0))
    return np.stack(runs).astype(np.int64)


def sample_curricula(protocol: str, n_train: int, n_runs: int, batch_size: int, epochs: int = 1,
                     seed: int = 0, subset_size: int | None = None, drop_last: bool = False) -> np.ndarray:
    """Dispatch on ``protocol`` (``"orderings"`` or ``"subsets"``); ``[runs, steps, batch]``."""
    if protocol == "orderings":
        return random_orderings(n_train, n_runs, batch_size, epochs, seed, drop_last)
    if protocol == "subsets":
        if subset_size is None:
            raise ValueError("the 'subsets' protocol needs subset_size (examples per run)")
        return random_subsets(n_train, n_runs, subset_size, batch_size, epochs, seed, drop_last)
    raise ValueError(f"unknown curriculum protocol {protocol!r}; choose from {PROTOCOLS}")


def from_batches(batches: Iterable[Sequence[int]], n_train: int | None = None) -> np.ndarray:
    """A user-specified curriculum: one list of example indices per step.

    Returns:
        ``[steps, batch]`` int64, ``batch`` = the longest list; shorter ones are padded with -1.
    """
    batches = [[integer(index, f"curriculum batch {step}, slot {slot}") for slot, index in enumerate(batch)]
               for step, batch in enumerate(batches)]  # 1.5, "1" and True are refused, not coerced
    if not batches:
        raise ValueError("a curriculum needs at least one batch")
    width = max(len(batch) for batch in batches)
    if width == 0:
        raise ValueError("every batch of the curriculum is empty")
    curriculum = np.full((len(batches), width), EMPTY_SLOT, dtype=np.int64)
    for step, batch in enumerate(batches):
        curriculum[step, : len(batch)] = batch
    _check_indices(curriculum, n_train)
    return curriculum


def _check_indices(curricula: np.ndarray, n_train: int | None) -> None:
    if np.any(curricula < EMPTY_SLOT):
        raise ValueError(f"curriculum indices must be >= 0 (or -1 for an empty slot), got {curricula.min()}")
    if n_train is not None and curricula.size and curricula.max() >= n_train:
        raise ValueError(f"curriculum index {curricula.max()} is out of range for n_train = {n_train}")


def _as_3d(curricula: np.ndarray) -> tuple[np.ndarray, bool]:
    array = np.asarray(curricula, dtype=np.int64)
    if array.ndim == 2:
        return array[None], True
    if array.ndim == 3:
        return array, False
    raise ValueError(f"curricula must be [steps, batch] or [runs, steps, batch], got shape {array.shape}")


def _restore(curricula: np.ndarray, squeeze: bool) -> np.ndarray:
    return curricula[0] if squeeze else curricula


def unused_examples(curricula: np.ndarray, n_train: int) -> np.ndarray:
    """``[k]`` the sorted training-example indices in ``0..n_train-1`` that no slot of ``curricula``
    (any shape, ``-1`` for an empty slot) uses."""
    curricula = np.asarray(curricula)
    return np.setdiff1d(np.arange(n_train), curricula[curricula >= 0])


def runs_per_example(curricula: np.ndarray, n_train: int) -> np.ndarray:
    """``[n_train]`` in how many runs of ``curricula`` (``[runs, steps, batch]``, ``-1`` for an empty
    slot) each training example appears at least once: what identifies its own effect."""
    curricula = np.asarray(curricula)
    filled = curricula >= 0
    seen = np.zeros((curricula.shape[0], n_train), dtype=bool)
    seen[np.nonzero(filled)[0], curricula[filled]] = True
    return seen.sum(axis=0)


def compact(curricula: np.ndarray) -> np.ndarray:
    """Move the filled slots of every batch to the left, keeping their order; same shape."""
    array, squeeze = _as_3d(curricula)
    empty = array == EMPTY_SLOT
    order = np.argsort(empty, axis=-1, kind="stable")
    return _restore(np.take_along_axis(array, order, axis=-1), squeeze)


def leave_out(curricula: np.ndarray, examples: Iterable[int], repack: bool = False) -> np.ndarray:
    """Remove every occurrence of ``examples``.

    With ``repack=False`` their slots become -1 (batches shrink, same shape). With
    ``repack=True`` the remaining examples, in their order, are packed into full batches of the
    same width, as a data loader over the reduced data set would do: fewer steps, no empty slots
    except in the last batch. Every run must then keep the same number of steps (a run cannot
    end early in the runs format); pass one run at a time otherwise.
    """
    array, squeeze = _as_3d(curricula)
    removed = np.where(np.isin(array, np.fromiter(examples, dtype=np.int64)), EMPTY_SLOT, array)
    if not repack:
        return _restore(compact(removed), squeeze)
    width = array.shape[-1]
    kept = [run[run != EMPTY_SLOT] for run in removed.reshape(len(removed), -1)]
    steps = {-(-len(run) // width) for run in kept}
    if len(steps) != 1 or 0 in steps:
        raise ValueError(f"repacked runs would have {sorted(steps)} steps; repack needs every run to keep the "
                         "same, non-zero number of steps (pass one run at a time)")
    n_steps = steps.pop()
    packed = np.full((len(kept), n_steps * width), EMPTY_SLOT, dtype=np.int64)
    for run, examples_kept in enumerate(kept):
        packed[run, : len(examples_kept)] = examples_kept
    return _restore(packed.reshape(len(kept), n_steps, width), squeeze)


def insert_at(curricula: np.ndarray, example: int, step: int) -> np.ndarray:
    """Add ``example`` to the batch of ``step`` (0-based) in every run.

    It takes the first empty slot; when the batch is full every batch gains one column (-1
    elsewhere), so the other steps are unchanged.
    """
    array, squeeze = _as_3d(curricula)
    if not 0 <= step < array.shape[1]:
        raise ValueError(f"step must be in [0, {array.shape[1]}), got {step}")
    if example < 0:
        raise ValueError(f"example index must be >= 0, got {example}")
    array = compact(array)
    if np.any(array[:, step, -1] != EMPTY_SLOT):
        array = np.concatenate([array, np.full(array.shape[:2] + (1,), EMPTY_SLOT, dtype=np.int64)], axis=-1)
    array = array.copy()
    first_empty = np.argmax(array[:, step] == EMPTY_SLOT, axis=-1)
    array[np.arange(array.shape[0]), step, first_empty] = example
    return _restore(array, squeeze)


def move_to_step(curricula: np.ndarray, example: int, step: int) -> np.ndarray:
    """Remove every occurrence of ``example`` and show it once, at ``step``."""
    return insert_at(leave_out(curricula, [example]), example, step)


def reorder_steps(curricula: np.ndarray, order: Sequence[int]) -> np.ndarray:
    """The same batches in another order: new step ``t`` is old step ``order[t]``."""
    array, squeeze = _as_3d(curricula)
    order = np.asarray(order, dtype=np.int64)
    if sorted(order.tolist()) != list(range(array.shape[1])):
        raise ValueError(f"order must be a permutation of the {array.shape[1]} steps")
    return _restore(array[:, order], squeeze)


def repeat_curriculum(curricula: np.ndarray, times: int) -> np.ndarray:
    """The whole curriculum ``times`` times in a row (more epochs of the same order)."""
    _check_positive(times=times)
    array, squeeze = _as_3d(curricula)
    return _restore(np.concatenate([array] * times, axis=1), squeeze)


def group_steps(curricula: np.ndarray, every: int) -> np.ndarray:
    """Merge ``every`` consecutive optimiser steps into one row: ``[runs, steps / every, every * batch]``.

    This is how a collection that logs losses only every ``every`` steps is stored in the runs
    format: one runs-file step is ``every`` optimiser steps.
    """
    _check_positive(every=every)
    array, squeeze = _as_3d(curricula)
    runs, steps, batch = array.shape
    if steps % every:
        raise ValueError(f"the number of steps ({steps}) must be a multiple of eval_every ({every})")
    return _restore(array.reshape(runs, steps // every, every * batch), squeeze)
