"""Common counterfactual questions, one call each, answered by :func:`bayes_simfluence.compare.compare`.

- :func:`compare_leave_out`: what if these training examples were left out?
- :func:`compare_repeat`: what if these examples were seen ``times`` times wherever they appear?
- :func:`compare_orderings`: easy-to-hard vs hard-to-easy vs random order of the same examples;
- :func:`compare_insert`: what if this example were added at step ``s`` (for several ``s``)?

Each takes one curriculum (``[steps, batch]`` or a list of batches), the initial losses
``[tests]`` and the keyword arguments of :func:`~bayes_simfluence.compare.compare` (``tests``,
``reduction``, ``n_draws``, ``seed``, ``level``, ``predictive``), and returns its
:class:`~bayes_simfluence.compare.Comparison` with the unchanged curriculum as reference
(random orderings for :func:`compare_orderings`). Curriculum edits come from
:mod:`bayes_simfluence.curricula`; the two edits that module lacks live here.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from bayes_simfluence import budget, validation
from bayes_simfluence.attributions import effect_draws
from bayes_simfluence.curricula import compact, insert_at, leave_out
from bayes_simfluence.compare import Comparison, as_curricula, compare
from bayes_simfluence.runs import EMPTY_SLOT
from bayes_simfluence.simulators import Simulator


def _one_curriculum(curriculum: Any) -> np.ndarray:
    """``[steps, batch]`` from one curriculum given as an array or a list of batches."""
    array = as_curricula(curriculum, "curriculum")
    if array.shape[0] != 1:
        raise ValueError(f"give one curriculum [steps, batch], got {array.shape[0]} runs")
    return array[0]


def _examples(examples: Sequence[int], curriculum: np.ndarray) -> np.ndarray:
    if isinstance(examples, (int, np.integer)):
        examples = [examples]
    examples = np.asarray([validation.integer(example, "examples", minimum=0) for example in np.ravel(
        np.asarray(examples, dtype=object))], dtype=np.int64)
    if examples.size == 0:
        raise ValueError("give at least one training example")
    absent = np.setdiff1d(examples, curriculum[curriculum >= 0])
    if absent.size:
        raise ValueError(f"training examples {absent.tolist()[:10]} do not appear in the curriculum")
    return examples


def _label(examples: np.ndarray) -> str:
    shown = ",".join(map(str, examples[:6].tolist()))
    return shown + (f",... ({examples.size})" if examples.size > 6 else "")


def repeat_examples(curriculum: np.ndarray, examples: Sequence[int], times: int) -> np.ndarray:
    """Every occurrence of ``examples`` shown ``times`` times in its own batch (the batch widens;
    other batches are padded with ``-1``). ``[..., steps, batch]`` -> ``[..., steps, wider batch]``."""
    times = validation.integer(times, "times", minimum=1)
    array = np.asarray(curriculum, dtype=np.int64)
    budget.check(budget.product(8 * 3, array.size, times), f"repeating examples {times} times (--times) in a "
                 f"curriculum of {array.size} slots", "each repeat widens every batch by its width")
    chosen = np.where(np.isin(array, np.asarray(examples, dtype=np.int64)), array, EMPTY_SLOT)
    widened = compact(np.concatenate([array] + [chosen] * (int(times) - 1), axis=-1))
    used = np.flatnonzero((widened != EMPTY_SLOT).reshape(-1, widened.shape[-1]).any(axis=0))
    return widened[..., : used.max() + 1]


def order_by_difficulty(curriculum: np.ndarray, difficulty: np.ndarray, hardest_first: bool = False) -> np.ndarray:
    """The same examples, easiest first (or hardest first): filled slots, read step by step,
    hold the curriculum's examples sorted by ``difficulty [n_train]``; empty slots stay put.
    ``[steps, batch]`` -> ``[steps, batch]``."""
    array = np.asarray(curriculum, dtype=np.int64)
    difficulty = np.asarray(difficulty, dtype=np.float64)
    flat = array.reshape(-1).copy()
    filled = flat != EMPTY_SLOT
    if flat[filled].max(initial=-1) >= difficulty.shape[0]:
        raise ValueError(f"difficulty has {difficulty.shape[0]} entries but the curriculum uses example "
                         f"{flat[filled].max()}")
    values = flat[filled]
    key = -difficulty[values] if hardest_first else difficulty[values]
    flat[filled] = values[np.argsort(key, kind="stable")]
    return flat.reshape(array.shape)


def shuffled(curriculum: np.ndarray, n_orderings: int, seed: int = 0) -> np.ndarray:
    """``[n_orderings, steps, batch]`` random orderings of the curriculum's filled slots."""
    array = np.asarray(curriculum, dtype=np.int64)
    flat = array.reshape(-1)
    filled = np.flatnonzero(flat != EMPTY_SLOT)
    rng = np.random.default_rng(seed)
    keys = rng.random((n_orderings, filled.size))
    orderings = np.broadcast_to(flat, (n_orderings, flat.size)).copy()
    orderings[:, filled] = flat[filled][np.argsort(keys, axis=1)]
    return orderings.reshape((n_orderings,) + array.shape)


def effect_difficulty(simulator: Simulator, initial_losses: np.ndarray, tests: Sequence[int] | None = None,
                      n_draws: int = 200, seed: int = 0) -> np.ndarray:
    """``[n_train]`` difficulty from the simulator: the posterior-mean one-step effect of each
    training example on the test loss at the initial loss, ``mean_m (a[m, i] L0[m] + B[m, i])``.

    Examples that lower the test loss most count as easiest. (When per-example training losses
    are known, pass those as ``difficulty`` instead.)
    """
    effects = effect_draws(simulator, n_draws, seed)
    initial_losses = np.asarray(initial_losses, dtype=np.float64)
    tests = np.arange(initial_losses.shape[0]) if tests is None else np.asarray(tests, dtype=np.int64)
    step_effect = effects.multiplicative * initial_losses[None, :, None] + effects.additive  # [draws, tests, n_train]
    return step_effect[:, tests].mean(axis=(0, 1))


def compare_leave_out(simulator: Simulator, curriculum: Any, examples: Sequence[int], initial_losses: np.ndarray,
                      repack: bool = True, **options: Any) -> Comparison:
    """The curriculum as given vs without every occurrence of ``examples``.

    ``repack=True`` (default) packs the remaining examples into full batches, as training on
    the reduced data set would (fewer steps). ``repack=False`` keeps the steps and empties the
    removed examples' slots; Simfluence sums effects over a batch's slots while SGD averages
    gradients over the examples present, so shrunken batches are outside what runs with full
    batches identify (see the README, "Ragged batches"); prefer the default.
    """
    base = _one_curriculum(curriculum)
    examples = _examples(examples, base)
    return compare(simulator, [base, leave_out(base, examples.tolist(), repack=repack)], initial_losses,
                   labels=["as given", f"without {_label(examples)}"], **options)


def compare_repeat(simulator: Simulator, curriculum: Any, examples: Sequence[int], initial_losses: np.ndarray,
                   times: int = 2, **options: Any) -> Comparison:
    """The curriculum as given vs with every occurrence of ``examples`` shown ``times`` times."""
    base = _one_curriculum(curriculum)
    examples = _examples(examples, base)
    return compare(simulator, [base, repeat_examples(base, examples, times)], initial_losses,
                   labels=["as given", f"{_label(examples)} x{times}"], **options)


def compare_orderings(simulator: Simulator, curriculum: Any, initial_losses: np.ndarray,
                      difficulty: np.ndarray | None = None, n_random: int = 16, **options: Any) -> Comparison:
    """Random orderings (averaged over ``n_random`` of them) vs easy-to-hard vs hard-to-easy.

    ``difficulty [n_train]`` defaults to :func:`effect_difficulty` on the compared tests.
    """
    base = _one_curriculum(curriculum)
    if difficulty is None:
        difficulty = effect_difficulty(simulator, initial_losses, options.get("tests"),
                                       seed=options.get("seed", 0))
    candidates = [shuffled(base, n_random, options.get("seed", 0)), order_by_difficulty(base, difficulty),
                  order_by_difficulty(base, difficulty, hardest_first=True)]
    return compare(simulator, candidates, initial_losses,
                   labels=[f"random (mean of {n_random})", "easy-to-hard", "hard-to-easy"], **options)


def insert_or_replace(curriculum: np.ndarray, example: int, step: int, width: int) -> tuple[np.ndarray, int | None]:
    """``example`` put into the batch of ``step``: into a free slot where the batch fills fewer than
    ``width`` slots (the batch width the simulator was fitted on), else in place of the example in
    the batch's last filled slot, which is returned (None when nothing was replaced).

    A full batch cannot take one more example: the simulator never saw wider batches (and
    refuses them). Replacing compares ``example`` with the replaced one at that step, which runs
    with full batches identify (effects are identified up to a common level that cancels here).
    """
    array = np.asarray(curriculum, dtype=np.int64)
    if not 0 <= step < array.shape[0]:
        raise ValueError(f"step {step} is out of range for a curriculum of {array.shape[0]} steps")
    filled = np.flatnonzero(array[step] != EMPTY_SLOT)
    if filled.size < width:
        return insert_at(array, example, step), None
    replaced = array.copy()
    slot = filled[-1]
    replaced[step, slot] = example
    return replaced, int(array[step, slot])


def compare_insert(simulator: Simulator, curriculum: Any, example: int, steps: Sequence[int],
                   initial_losses: np.ndarray, **options: Any) -> Comparison:
    """The curriculum as given vs with ``example`` put into the batch of each step in ``steps``
    (one candidate per step; 0-based): into a free slot where the batch has one (fewer filled slots
    than the simulator's fitted batch width), else replacing the example in its last filled slot
    (:func:`insert_or_replace`; the label says which, e.g. ``+17 for 5 at step 0``). A simulator
    without a fitted width (no ``batch_size``) gets the example added to the batch, widening it."""
    base = _one_curriculum(curriculum)
    if not steps:
        raise ValueError("give at least one step to insert the example at")
    example = validation.integer(example, "example", minimum=0)
    steps = [validation.integer(step, "steps", minimum=0) for step in steps]
    width = getattr(simulator, "batch_size", None)  # None: no fitted width, a full batch widens
    candidates, labels = [base], ["as given"]
    for step in steps:
        candidate, replaced = (insert_or_replace(base, example, step, int(width)) if width
                               else (insert_at(base, example, step), None))
        candidates.append(candidate)
        labels.append(f"+{example} at step {step}" if replaced is None else f"+{example} for {replaced} at step {step}")
    return compare(simulator, candidates, initial_losses, labels=labels, **options)
