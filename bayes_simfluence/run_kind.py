"""The kind of runs a fit learned from, and whether a curriculum is of that kind.

A Bayesian fit's new-run intervals add a run-to-run misfit that its guard learned on held-out runs
drawn like the logged ones. A curriculum far from them is an extrapolation the guard never scored,
and there the intervals can be too narrow: fitted on runs that each train 160 of a pool of 200
examples 3 times, they undercover runs that train 128 of them 3.75 times, as the fit's own misses
of those runs grow (``docs/results/runs_needed.md``, "Unseen data over unseen sets": the control
rows, on held-out runs of both kinds). Two numbers per run tell such runs apart: how many distinct
training examples it uses, and how many times it uses each on average (its filled slots over its
distinct examples). A fit records their range over its runs (:func:`logged_kind`,
``info["logged_runs"]``) and a comparison names the candidates outside it (:func:`unlike`), so that
users read those intervals as the extrapolations they are.
"""

from __future__ import annotations

import numpy as np

#: a curriculum is unlike the logged runs where a number is below ``(1 - TOLERANCE)`` times their
#: smallest or above ``(1 + TOLERANCE)`` times their largest
TOLERANCE = 0.1


def run_shapes(curricula: np.ndarray) -> np.ndarray:
    """``[runs, 2]`` per run: distinct training examples, and uses per distinct example (filled slots
    over distinct examples; 0 for a run with no filled slot).

    Args:
        curricula: ``[runs, steps, batch]`` (``-1``: an empty slot) or one ``[steps, batch]``.
    """
    curricula = np.asarray(curricula)
    curricula = curricula[None] if curricula.ndim == 2 else curricula
    shapes = np.zeros((len(curricula), 2))
    for run, curriculum in enumerate(curricula):
        filled = curriculum[curriculum >= 0]
        distinct = np.unique(filled).size
        shapes[run] = distinct, filled.size / distinct if distinct else 0.0
    return shapes


def logged_kind(curricula: np.ndarray) -> dict[str, list[float]]:
    """JSON-ready ranges over the logged runs ``[runs, steps, batch]``: ``{"distinct": [min, max],
    "uses": [min, max]}`` of :func:`run_shapes`."""
    shapes = run_shapes(curricula)
    return {"distinct": [float(shapes[:, 0].min()), float(shapes[:, 0].max())],
            "uses": [float(shapes[:, 1].min()), float(shapes[:, 1].max())]}


def unlike(kind: dict[str, list[float]], curricula: np.ndarray) -> str:
    """How a candidate ``[runs, steps, batch]`` (or ``[steps, batch]``) differs from the logged runs of
    ``kind`` (:func:`logged_kind`), in words; empty where its mean over runs of both numbers lies within
    the logged range widened by :data:`TOLERANCE`."""
    distinct, uses = run_shapes(curricula).mean(axis=0)
    outside = any(value < (1 - TOLERANCE) * low or value > (1 + TOLERANCE) * high
                  for value, (low, high) in ((distinct, kind["distinct"]), (uses, kind["uses"])))
    if not outside:
        return ""
    return (f"{distinct:.0f} distinct examples per run, each used {uses:.2f} times (logged runs: "
            f"{_span(kind['distinct'], '.0f')}, {_span(kind['uses'], '.2f')})")


def _span(bounds: list[float], spec: str) -> str:
    low, high = bounds
    return format(low, spec) if format(low, spec) == format(high, spec) else f"{low:{spec}}-{high:{spec}}"
