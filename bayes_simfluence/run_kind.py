"""The kind of runs a fit learned from, and whether a curriculum is of that kind.

A Bayesian fit's new-run intervals add a run-to-run misfit that its guard learned on held-out runs
drawn like the logged ones. A curriculum far from them is an extrapolation the guard never scored,
and there the intervals can be too narrow: fitted on runs that each train 160 of a pool of 200
examples 3 times, they undercover runs that train 128 of them 3.75 times, as the fit's own misses
of those runs grow (``docs/results/runs_needed.md``, "Unseen data over unseen sets": the control
rows, on held-out runs of both kinds). Two numbers per run tell such runs apart: how many distinct
training examples it uses, and how many times it uses each on average (its filled slots over its
distinct examples). A fit records their range over its runs after each step (:func:`logged_kind`,
``info["logged_runs"]``), and a comparison names the candidates outside it at their own length, or
longer than the logged runs (:func:`unlike`), so that users read those intervals as the
extrapolations they are.
"""

from __future__ import annotations

import numpy as np

#: a curriculum is unlike the logged runs where a number is below ``(1 - TOLERANCE)`` times their
#: smallest or above ``(1 + TOLERANCE)`` times their largest
TOLERANCE = 0.1


def shapes_by_step(curricula: np.ndarray) -> np.ndarray:
    """``[runs, steps, 2]``: after each step of each run, the distinct training examples used so far,
    and their uses per distinct example (filled slots so far over distinct examples; 0 before any).

    Args:
        curricula: ``[runs, steps, batch]`` (``-1``: an empty slot) or one ``[steps, batch]``.
    """
    curricula = np.asarray(curricula)
    curricula = curricula[None] if curricula.ndim == 2 else curricula
    n_runs, n_steps, batch = curricula.shape
    step_of_slot = np.repeat(np.arange(n_steps), batch)  # slots flattened step by step
    shapes = np.zeros((n_runs, n_steps, 2))
    for run, curriculum in enumerate(curricula.reshape(n_runs, -1)):
        filled = curriculum >= 0
        _, first = np.unique(curriculum[filled], return_index=True)  # each example's first filled slot
        distinct = np.bincount(step_of_slot[filled][first], minlength=n_steps).cumsum()
        slots = np.bincount(step_of_slot[filled], minlength=n_steps).cumsum()
        shapes[run, :, 0] = distinct
        shapes[run, :, 1] = np.divide(slots, distinct, out=np.zeros(n_steps), where=distinct > 0)
    return shapes


def logged_kind(curricula: np.ndarray) -> dict[str, list[list[float]]]:
    """JSON-ready ranges over the logged runs ``[runs, steps, batch]``, after each step:
    ``{"distinct": [[min], [max]], "uses": [[min], [max]]}``, each list ``[steps]``
    (:func:`shapes_by_step`): a candidate is judged against the logged runs at its own length, so
    that a shorter one (the same training stopped early) is not called unlike them."""
    shapes = shapes_by_step(curricula)
    return {name: [np.round(shapes[:, :, k].min(axis=0), 4).tolist(), np.round(shapes[:, :, k].max(axis=0), 4).tolist()]
            for k, name in enumerate(("distinct", "uses"))}


def unlike(kind: dict[str, list[list[float]]], curricula: np.ndarray) -> str:
    """How a candidate ``[runs, steps, batch]`` (or ``[steps, batch]``) differs from the logged runs of
    ``kind`` (:func:`logged_kind`), in words; empty where, at its last step, its mean over runs of both
    numbers lies within the logged runs' range at that step widened by :data:`TOLERANCE`, and it is no
    longer than they are."""
    curricula = np.asarray(curricula)
    distinct, uses = shapes_by_step(curricula)[:, -1].mean(axis=0)
    n_steps, logged_steps = curricula.shape[-2], len(kind["distinct"][0])
    step = min(n_steps, logged_steps) - 1
    ranges = {name: (low[step], high[step]) for name, (low, high) in kind.items()}
    outside = any(value < (1 - TOLERANCE) * ranges[name][0] or value > (1 + TOLERANCE) * ranges[name][1]
                  for name, value in (("distinct", distinct), ("uses", uses)))
    words = []
    if outside:
        words.append(f"{distinct:.0f} distinct examples per run, each used {uses:.2f} times (logged runs at step "
                     f"{step + 1}: {_span(ranges['distinct'], '.0f')}, {_span(ranges['uses'], '.2f')})")
    if n_steps > logged_steps:
        words.append(f"{n_steps} steps, past the logged runs' {logged_steps}")
    return " and ".join(words)


def _span(bounds: tuple[float, float], spec: str) -> str:
    low, high = bounds
    return format(low, spec) if format(low, spec) == format(high, spec) else f"{low:{spec}}-{high:{spec}}"
