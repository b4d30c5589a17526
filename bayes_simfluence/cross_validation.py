"""Leave-runs-out cross-validation of the ridge strength of the point simulators.

The criterion is the error users see: trajectories *rolled out* from each held-out run's
``L_0`` (not teacher-forced one-step errors), scored by all-steps MSE. Choices, measured on the
project's real sets (``experiments/ridge_selection.py``, results in
``experiments/results/ridge_selection.md``):

- **Every test example counts equally**: the score of a strength is the mean over test
  examples of ``log(cv_mse / best cv_mse of that test example)``, so a few test examples with
  large losses do not decide the strength for all of them (a plain mean of MSEs does).
- **Many test examples** (up to ``max_tests``, evenly spaced), one strength shared by all of
  them: per-test-example strengths were no better on held-out runs (fewer runs per choice).
- **A grid wide enough to reach "no per-example effects"** (relative strengths ``1e-6 .. 1e4``
  times the mean diagonal of ``X^T X``: at the top every example has the common level, a decay the
  curriculum changes only through batch sizes; with ``common_level=False``, ``A`` is at its
  ``1/batch`` centre and ``B`` at 0: the loss does not move), in decades, then refined by half
  decades around the best decade. On the matrix-free path (large pools) the decades are walked
  from the top down and left after :data:`STOP_AFTER_WORSE` in a row scored worse than the best so
  far.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from bayes_simfluence import design
from bayes_simfluence import ridge as ridge_lib
from bayes_simfluence.rollout import batch_sums, roll_out
from bayes_simfluence.runs import Runs

RELATIVE_GRID: tuple[float, ...] = tuple(10.0 ** np.arange(-6, 5))
MAX_TESTS = 16
#: on the matrix-free path the grid is walked from the strongest ridge down and left once this many
#: strengths in a row score worse than the best so far (the weak end costs the most iterations)
STOP_AFTER_WORSE = 2


def choose_ridge(
    runs: Runs,
    variant: str,
    n_folds: int = 4,
    max_tests: int = MAX_TESTS,
    relative_grid: tuple[float, ...] = RELATIVE_GRID,
    common_level: bool = True,
) -> tuple[float, dict]:
    """Pick the ridge strength minimising the held-out error of rolled-out trajectories.

    Runs are split into ``n_folds`` contiguous folds; each fold is simulated from its observed
    ``L_0`` by the model fitted on the other folds. Strengths are ``relative_grid * scale`` with
    ``scale`` the mean diagonal of ``X^T X`` (it adapts to how often examples are seen and to the
    loss scale), then the best one's half-decade neighbours. See the module docstring for the score.
    ``common_level``: as :func:`bayes_simfluence.ridge.fit_ridge`'s.

    Returns:
        ``(ridge, report)``; the report holds the strengths tried (``ridge_grid``, ascending), the
        mean CV MSE of each (``cv_mse``), the score minimised (``cv_log_relative``), the folds and
        the test examples used.
    """
    if runs.n_runs < 2:
        raise ValueError(
            f"cross-validating the ridge needs at least 2 runs, got {runs.n_runs}; pass ridge= explicitly"
        )
    n_folds = min(n_folds, runs.n_runs)
    tests = np.unique(np.linspace(0, runs.n_tests - 1, min(max_tests, runs.n_tests)).round().astype(int))
    subset = runs.select_tests(tests)
    fold_runs = np.array_split(np.arange(runs.n_runs), n_folds)
    folds = [subset.select_runs(fold) for fold in fold_runs]
    solvers, scale = _fold_solvers(subset, fold_runs, folds, variant, common_level)

    errors: dict[float, np.ndarray] = {}  # strength -> [tests] CV MSE

    def evaluate(strength: float) -> None:
        if strength in errors:
            return
        per_test = np.zeros(len(tests))
        for held, solve in zip(folds, solvers):
            weights, solved = solve(strength)
            centred_a, additive = ridge_lib.split_effects(weights, variant, runs.n_train)
            predicted = _roll_out_effects(centred_a, additive, variant, held)
            squared = np.mean((predicted[:, 1:] - held.losses[:, 1:]) ** 2, axis=(0, 1)) * held.n_runs
            per_test += np.where(np.isfinite(squared) & solved, squared, np.inf)
        errors[strength] = per_test / runs.n_runs

    if ridge_lib.is_dense(variant, runs.n_train):
        for relative in relative_grid:
            evaluate(relative * scale)
    else:  # each solve costs more as the strength falls: walk down, stop once two in a row did worse
        worse = 0
        for relative in sorted(relative_grid, reverse=True):
            evaluate(relative * scale)
            worse = worse + 1 if _best(errors) != relative * scale else 0
            if worse == STOP_AFTER_WORSE:
                break
    best = _best(errors)
    for factor in (10 ** -0.5, 10 ** 0.5):
        evaluate(best * factor)
    best = _best(errors)
    grid = sorted(errors)
    report = {
        "ridge_grid": grid,
        "cv_mse": [float(np.mean(errors[g])) for g in grid],
        "cv_log_relative": [float(s) for s in _scores(errors, grid)],
        "cv_failures": [int((~np.isfinite(errors[g])).sum()) for g in grid],
        "ridge": best,
        "folds": n_folds,
        "cv_tests": tests.tolist(),
        "criterion": "mean over test examples of log(CV MSE / its best), rolled-out trajectories",
    }
    return best, report


def _fold_solvers(runs: Runs, fold_runs: list[np.ndarray], folds: list[Runs], variant: str, common_level: bool
                  ) -> tuple[list[Callable[[float], tuple[np.ndarray, np.ndarray]]], float]:
    """``(solvers, scale)``: for each fold (``fold_runs``: its run indices; ``folds``: its runs),
    ``strength -> (weights [tests, features], solved [tests])`` fitted on the other folds' runs, and the mean diagonal of ``X^T X`` on all of them. Dense normal
    equations (one build, each fold's by subtracting its own) up to
    :data:`~bayes_simfluence.ridge.DENSE_MAX_FEATURES`; above, conjugate gradients on each fold's
    design, each solve starting from that fold's last solution (the grid is walked in order); a
    strength at which they do not converge (a near-singular system) counts as an infinite error."""
    if ridge_lib.is_dense(variant, runs.n_train):
        total = ridge_lib.normal_equations(runs.curricula, runs.losses, runs.n_train, variant)
        equations = [total - ridge_lib.normal_equations(h.curricula, h.losses, runs.n_train, variant) for h in folds]
        scale = float(np.mean(np.diagonal(total.gram, axis1=1, axis2=2)))
        return [partial(_dense_solve, e, common_level=common_level) for e in equations], max(scale, 1e-12)
    baseline = lambda r: ridge_lib.step_baseline(r.curricula, variant, "per_slot")  # noqa: E731
    scale = design.mean_diagonal(design.design(runs.curricula, runs.losses, baseline(runs)), runs.n_train, variant)
    solvers = []
    for fold in fold_runs:
        kept = runs.select_runs(np.setdiff1d(np.arange(runs.n_runs), fold))
        solvers.append(_WarmSolver(design.design(kept.curricula, kept.losses, baseline(kept)), runs.n_train, variant,
                                   common_level))
    return solvers, max(scale, 1e-12)


class _WarmSolver:
    """Conjugate-gradient ridge solves on one design, each starting from the previous solution."""

    def __init__(self, problem: design.Design, n_train: int, variant: str, common_level: bool) -> None:
        self.problem, self.n_train, self.variant, self.common_level = problem, n_train, variant, common_level
        self.last = None

    def __call__(self, strength: float) -> tuple[np.ndarray, np.ndarray]:
        self.last, solved = design.ridge_cg(self.problem, self.n_train, self.variant, strength, start=self.last,
                                            common_level=self.common_level)
        return design.effects_of(self.last, design.n_features_of(self.variant, self.n_train), self.n_train), solved


def _dense_solve(equations: ridge_lib.NormalEquations, strength: float, common_level: bool
                 ) -> tuple[np.ndarray, np.ndarray]:
    return ridge_lib.solve_ridge(equations, strength, common_level), np.ones(equations.gram.shape[0], bool)


def _scores(errors: dict[float, np.ndarray], grid: list[float]) -> np.ndarray:
    """``[grid]`` the score minimised: mean over test examples of ``log(error / that test example's
    smallest error)``. A strength at which a test example's error is not finite (a roll-out that
    diverged, a solve that did not converge) scores ``inf``, unless every strength fails as many
    test examples: the strengths failing the fewest are compared on the test examples all of them
    score (a test example no strength scores says nothing about the strength), the others score
    ``inf``."""
    table = np.stack([errors[g] for g in grid])  # [grid, tests]
    finite = np.isfinite(table)
    failures = (~finite).sum(1)
    fewest = failures == failures.min()
    scored = finite[fewest].all(0)  # test examples every strength failing the fewest scores
    if not scored.any():
        return np.full(len(grid), np.inf)
    kept = np.where(fewest[:, None], table[:, scored], np.inf)
    floor = np.maximum(kept.min(0, keepdims=True), 1e-300)
    with np.errstate(divide="ignore", invalid="ignore"):
        scores = np.log(np.maximum(kept, 1e-300) / floor).mean(1)
    return np.where(fewest & np.isfinite(scores), scores, np.inf)


def _best(errors: dict[float, np.ndarray]) -> float:
    """The strength of smallest :func:`_scores`; where none has a finite score (each strength fails
    a different test example), the strongest of those failing the fewest (the least variance)."""
    grid = sorted(errors)
    scores = _scores(errors, grid)
    if np.isfinite(scores).any():
        return grid[int(np.argmin(scores))]
    failures = np.array([(~np.isfinite(errors[g])).sum() for g in grid])
    return grid[int(np.flatnonzero(failures == failures.min())[-1])]


def _roll_out_effects(centred_a: np.ndarray, additive: np.ndarray, variant: str, runs: Runs) -> np.ndarray:
    """``[runs, steps + 1, tests]`` roll-out with per-slot centring (``A = 1/batch + a``)."""
    with jax.enable_x64(True):  # as the fitted simulator rolls out (float32 loses tiny and huge losses)
        curricula = jnp.asarray(runs.curricula)
        beta = batch_sums(jnp.asarray(additive), curricula)
        if variant == "additive":
            alpha = jnp.ones_like(beta)
        else:
            alpha = batch_sums(jnp.asarray(centred_a + 1.0 / runs.batch_size), curricula)
        return np.asarray(roll_out(alpha, beta, jnp.asarray(runs.initial_losses, dtype=beta.dtype)))
