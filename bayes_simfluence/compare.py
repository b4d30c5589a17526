"""Compare candidate curricula under a (Bayesian) simulator, draw by draw.

Every candidate is simulated from the same initial losses with the same seed, so draw ``d`` of
every candidate uses the same parameter draw: differences between candidates are computed per
draw (paired), never from marginal bands. A candidate is one curriculum ``[steps, batch]``, a
ragged list of batches, or a set of curricula ``[runs, steps, batch]`` (e.g. several random
orderings) whose losses are averaged over its runs. Candidates may differ in batch width (padded
with ``-1``) and in number of steps. Each is summarised by

- ``final``: the loss after its last step, where its training stops;
- ``mean``: the mean loss over the common horizon ``1..T_max`` of the longest candidate (step 0,
  shared by all, excluded), a candidate that has stopped holding its final loss;

both reduced over the chosen test examples (mean or sum). Lower is better.

**Candidates of different lengths.** Step ``t`` of every candidate runs at step ``t`` of the
logged runs' schedule: the simulators' step component (the loss change every run shows at that
step, whatever its batch: warm-up, learning-rate decay) is read at the same absolute steps. So a
shorter candidate is *the same training stopped early* (it does not get the last steps'
schedule), and a longer one continues the schedule past the logged horizon (the step component
extended by its random walk, the blind model holding its last loss). ``final`` then compares the
models each curriculum leaves behind; ``mean`` compares the same window of time, so a curriculum
that stops early is charged its final loss for the steps it does not take (an average over
each one's own steps would compare windows of different lengths). ``Comparison.summary`` says
so whenever the lengths differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from bayes_simfluence import budget, run_kind, validation
from bayes_simfluence.choices import DEFAULT_DRAWS, PREDICTIVES, REDUCTIONS
from bayes_simfluence.curricula import from_batches
from bayes_simfluence.runs import EMPTY_SLOT, RunsFormatError
from bayes_simfluence.simulators import ProbabilisticSimulator, Simulator, Stacked

QUANTITIES = ("final", "mean")
#: what the draws of a stacked simulator's alternative mean for a comparison, by the alternative's words
ALTERNATIVE_NOTES = {"curriculum-blind": ": each draw is that share of the full model's, the rest the same for every "
                                         "candidate",
                     "state-only": ": each draw is that share of the full model's, the rest differing between "
                                   "candidates only through the run state"}


def as_curricula(candidate: Any, label: str = "candidate") -> np.ndarray:
    """One candidate as ``[runs, steps, batch]`` int64.

    Accepts an int array ``[steps, batch]`` or ``[runs, steps, batch]``, or a list of batches
    (lists of example indices, possibly of different lengths; shorter ones padded with ``-1``).
    """
    if isinstance(candidate, np.ndarray):
        array = candidate
    elif isinstance(candidate, (list, tuple)) and candidate and all(
            isinstance(batch, (list, tuple, np.ndarray)) and np.ndim(batch) == 1 for batch in candidate):
        array = from_batches(candidate)
    else:
        array = np.asarray(candidate)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or 0 in array.shape:
        raise ValueError(f"{label}: a curriculum must be [steps, batch], [runs, steps, batch] or a list of "
                         f"batches, got shape {np.shape(array)}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{label}: curriculum indices must be integers, got dtype {array.dtype}")
    if np.any(array < EMPTY_SLOT):
        raise ValueError(f"{label}: curriculum holds index {int(array.min())}; indices must be >= 0 "
                         "or -1 for an empty slot")
    return array.astype(np.int64)


def pad_width(curricula: np.ndarray, width: int) -> np.ndarray:
    """``[runs, steps, batch]`` padded on the right with ``-1`` to ``[runs, steps, width]``."""
    extra = width - curricula.shape[2]
    if extra < 0:
        raise ValueError(f"cannot pad a batch of width {curricula.shape[2]} to {width}")
    return np.pad(curricula, ((0, 0), (0, 0), (0, extra)), constant_values=EMPTY_SLOT)


def for_tests(simulator: Simulator, initial_losses: np.ndarray, tests: np.ndarray
              ) -> tuple[Simulator, np.ndarray]:
    """The simulator and ``initial_losses [tests]`` restricted to ``tests`` (nothing else is simulated)."""
    if len(tests) == len(initial_losses) and np.array_equal(tests, np.arange(len(initial_losses))):
        return simulator, initial_losses
    return simulator.select_tests(tests), initial_losses[tests]


def simulate_draws_of(simulator: Simulator, curricula: np.ndarray, initial_losses: np.ndarray,
                      n_draws: int, seed: int, predictive: str | None) -> np.ndarray:
    """``[draws, runs, steps + 1, tests]`` from a probabilistic simulator; a point one gives 1 draw."""
    n_draws = validation.integer(n_draws, "n_draws", minimum=1)
    if predictive is not None and predictive not in PREDICTIVES:
        raise validation.InputError(f"predictive: {predictive!r} is not one of {list(PREDICTIVES)} (or None)")
    if isinstance(simulator, ProbabilisticSimulator):
        budget.check_simulation(simulator, n_draws, curricula, np.shape(initial_losses)[-1])
        draws = simulator.simulate_draws(curricula, initial_losses, n_draws, seed=seed,
                                         predictive=predictive)
    else:
        draws = simulator.simulate(curricula, initial_losses)[None]
    return np.asarray(draws, dtype=np.float64)


def held_mean(trajectory: np.ndarray, horizon: int) -> np.ndarray:
    """``[...]`` mean of ``trajectory [..., steps + 1]`` over steps ``1..horizon``, a trajectory that
    ends earlier holding its last loss (the ``mean`` quantity of candidates of different lengths)."""
    trajectory = np.asarray(trajectory)
    extra = horizon + 1 - trajectory.shape[-1]
    if extra < 0:
        raise ValueError(f"horizon {horizon} is shorter than the trajectory's {trajectory.shape[-1] - 1} steps")
    held = np.pad(trajectory, [(0, 0)] * (trajectory.ndim - 1) + [(0, extra)], mode="edge")
    return held[..., 1:].mean(axis=-1)


def _interval(draws: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Central ``level`` interval over axis 0."""
    lower, upper = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return lower, upper


@dataclass(frozen=True)
class Comparison:
    """Paired posterior draws of each candidate's loss.

    Attributes:
        labels: ``[candidates]`` names.
        tests: ``[tests]`` indices of the test examples the losses are reduced over.
        reduction: ``"mean"`` or ``"sum"`` over those test examples.
        trajectories: one ``[draws, steps_k + 1]`` reduced loss trajectory per candidate
            (averaged over the candidate's runs).
        steps: ``[candidates]`` number of steps of each candidate.
        identical: ``[candidates]`` whether each candidate's curricula are the reference's (the
            reference itself included): simulated with the same paired draws, such a candidate
            differs from the reference by exactly 0 in every draw and is never better.
        reference: index of the candidate differences are taken against.
        level: credibility of the reported intervals.
        predictive: which predictive the draws come from (``"new-run"``, ``"noise"`` or
            ``"parameters"``, see :data:`bayes_simfluence.choices.PREDICTIVES`; empty for
            a point simulator).
        uncertainty_source: the simulator's words for that predictive.
        stacking_weight: mean weight of the full model over ``tests`` and steps where the simulator is
            stacked (:class:`~bayes_simfluence.simulators.Stacked`, e.g. a guarded posterior): each
            draw is ``w`` times the full model's plus ``1 - w`` times the alternative's; None otherwise.
        stacked_alternative: that alternative in words (``"curriculum-blind"``: the candidates'
            expected losses do not differ under it; ``"state-only"``: they differ only through the
            run state, :class:`~bayes_simfluence.bayes.run_state.StateTrajectory`); empty when not stacked.
        unseen: ``[candidates]`` how many distinct training examples each candidate uses that no
            fitted run used (where the simulator records them: a Bayesian fit's
            ``info["unseen_indices"]``); empty where it does not.
        unlike: ``[candidates]`` how each candidate's runs differ from the logged runs' kind, in words
            (:func:`bayes_simfluence.run_kind.unlike`; empty for one of that kind), where the simulator
            records that kind (a Bayesian fit's ``info["logged_runs"]``); empty where it does not.
    """

    labels: tuple[str, ...]
    tests: np.ndarray
    reduction: str
    trajectories: tuple[np.ndarray, ...]
    steps: np.ndarray
    identical: tuple[bool, ...]
    reference: int = 0
    level: float = 0.9
    predictive: str = ""
    uncertainty_source: str = ""
    stacking_weight: float | None = None
    stacked_alternative: str = ""
    unseen: tuple[int, ...] = ()
    unlike: tuple[str, ...] = ()

    @property
    def n_draws(self) -> int:
        return int(self.trajectories[0].shape[0])

    def losses(self, quantity: str = "final") -> np.ndarray:
        """``[draws, candidates]`` final-step loss, or mean loss over steps ``1..T_max`` with a
        candidate that has stopped holding its final loss (module docstring)."""
        if quantity == "final":
            return np.stack([trajectory[:, -1] for trajectory in self.trajectories], axis=1)
        if quantity == "mean":
            horizon = int(self.steps.max())
            return np.stack([held_mean(trajectory, horizon) for trajectory in self.trajectories], axis=1)
        raise ValueError(f"quantity must be one of {QUANTITIES}, got {quantity!r}")

    @property
    def length_note(self) -> str:
        """What a comparison of candidates of different lengths means (empty when they are equal)."""
        if len(set(self.steps.tolist())) == 1:
            return ""
        longest = int(self.steps.max())
        return (f"candidates differ in length ({', '.join(str(int(k)) for k in self.steps)} steps): each step runs "
                f"at the same step of the logged runs' schedule, so a shorter one is the same training stopped "
                f"early; final = the loss where each stops; mean = over steps 1..{longest}, a stopped candidate "
                "holding its final loss")

    @property
    def unseen_note(self) -> str:
        """Which candidates use training examples no fitted run used (empty when none does): their
        effects are the feature regression's prediction where the fit has the feature prior, else the
        prior's, and the intervals' run-to-run misfit was learned on runs without them, so it can be too
        wide or too narrow for runs with them (``docs/results/runs_needed.md`` measures both)."""
        using = [f"{label} {count}" for label, count in zip(self.labels, self.unseen) if count]
        if not using:
            return ""
        return (f"training examples in no fitted run: {', '.join(using)}; their effects come from the feature "
                "prior where the fit has one (else from the prior alone), and the run-to-run misfit in the "
                "intervals was learned on runs without them: it may be too wide or too narrow for these")

    @property
    def unlike_note(self) -> str:
        """Which candidates' runs are unlike the logged runs (:mod:`bayes_simfluence.run_kind`; empty
        when none is): their intervals extrapolate the run-to-run misfit the guard measured on runs
        like the logged ones, and can be too narrow."""
        unlike = [f"{label} {words}" for label, words in zip(self.labels, self.unlike) if words]
        if not unlike:
            return ""
        return (f"unlike the logged runs: {'; '.join(unlike)}; the intervals' run-to-run misfit was measured on "
                "runs like the logged ones and can be too narrow for these (docs/results/runs_needed.md)")

    def differences(self, quantity: str = "final") -> np.ndarray:
        """``[draws, candidates]`` paired difference ``loss_k - loss_reference`` (negative: k is better)."""
        losses = self.losses(quantity)
        return losses - losses[:, self.reference : self.reference + 1]

    def prob_best(self, quantity: str = "final") -> np.ndarray:
        """``[candidates]`` posterior probability that each candidate has the lowest loss (ties share)."""
        losses = self.losses(quantity)
        winners = losses == losses.min(axis=1, keepdims=True)
        return (winners / winners.sum(axis=1, keepdims=True)).mean(axis=0)

    def prob_better(self, quantity: str = "final") -> np.ndarray:
        """``[candidates]`` ``P(loss_k < loss_reference)`` from the paired draws, ties counting one
        half (as in :meth:`prob_best`): a draw in which two different curricula give the same loss
        (the guard's curriculum-blind draws) favours neither. A candidate whose curricula are the
        reference's (:attr:`identical`, the reference itself too) is never better: 0."""
        differences = self.differences(quantity)
        chance = (differences < 0).mean(axis=0) + 0.5 * (differences == 0).mean(axis=0)
        return np.where(self.identical, 0.0, chance)

    @property
    def identical_note(self) -> str:
        """Which candidates are the reference's curricula (empty when none but the reference is)."""
        same = [label for k, label in enumerate(self.labels) if self.identical[k] and k != self.reference]
        if not same:
            return ""
        return (f"{', '.join(same)}: the same curricula as the reference {self.labels[self.reference]} "
                "(identical: difference 0 in every draw, never better, P(better) 0)")

    def to_dict(self) -> dict:
        """JSON-ready summary: per candidate, for ``final`` and ``mean`` loss, the posterior mean,
        the ``level`` interval, the paired difference to the reference with its interval,
        ``P(better than reference)`` and ``P(best)``."""
        candidates = []
        stats = {}
        for quantity in QUANTITIES:
            losses, differences = self.losses(quantity), self.differences(quantity)
            loss_low, loss_high = _interval(losses, self.level)
            diff_low, diff_high = _interval(differences, self.level)
            stats[quantity] = (losses.mean(0), loss_low, loss_high, differences.mean(0), diff_low, diff_high,
                               self.prob_better(quantity), self.prob_best(quantity))
        for k, label in enumerate(self.labels):
            entry: dict[str, Any] = {"label": label, "steps": int(self.steps[k]),
                                     "identical_to_reference": bool(self.identical[k])}
            for quantity, values in stats.items():
                mean, low, high, diff, diff_low, diff_high, better, best = (float(v[k]) for v in values)
                entry[quantity] = {
                    "loss": mean, "loss_interval": [low, high] if self.has_uncertainty else None,
                    "difference": diff, "difference_interval": [diff_low, diff_high] if self.has_uncertainty else None,
                    "prob_better": better if self.has_uncertainty else None,
                    "prob_best": best if self.has_uncertainty else None,
                }
            candidates.append(entry)
        return {
            "reference": self.labels[self.reference], "level": self.level, "reduction": self.reduction,
            "tests": self.tests.tolist(), "draws": self.n_draws, "predictive": self.predictive or None,
            "uncertainty": self.uncertainty, "stacking_weight": self.stacking_weight,
            "lengths": self.length_note or None, "identical": self.identical_note or None,
            "unseen_examples": dict(zip(self.labels, self.unseen)) if self.unseen else None,
            "unlike_logged_runs": {label: words for label, words in zip(self.labels, self.unlike) if words} or None,
            "candidates": candidates,
        }

    @property
    def has_uncertainty(self) -> bool:
        """False for a point simulator's single draw: no interval or probability is meaningful."""
        return self.n_draws > 1

    @property
    def uncertainty(self) -> str:
        """What the draws' spread stands for, said in every summary."""
        if not self.has_uncertainty:
            return "none: a point simulator gives one trajectory (fit a bayes-* method for intervals and P(better))"
        what = self.uncertainty_source
        if self.stacking_weight is not None:
            note = ALTERNATIVE_NOTES.get(self.stacked_alternative, "")
            what += (f", stacked with the {self.stacked_alternative} model (weight of the effects "
                     f"{self.stacking_weight:.2f}{note})")
        return what

    def summary(self) -> str:
        """A readable table: one row per candidate and quantity."""
        percent = f"{100 * self.level:g}%"
        header = (f"{'candidate':<24}{'steps':>6}  {'quantity':<8}{'loss (' + percent + ' CI)':>30}"
                  f"{'diff vs reference (' + percent + ' CI)':>42}{'P(better)':>11}{'P(best)':>9}")
        lines = [
            f"{self.reduction} loss over {len(self.tests)} test example(s); {self.n_draws} paired draw(s); "
            f"uncertainty: {self.uncertainty}; reference: {self.labels[self.reference]}",
        ]
        for note in (self.identical_note, self.length_note, self.unseen_note, self.unlike_note):
            if note:
                lines.append(f"note: {note}")
        lines += [header, "-" * len(header)]
        data = self.to_dict()
        for entry in data["candidates"]:
            for quantity in QUANTITIES:
                stats = entry[quantity]
                if self.has_uncertainty:
                    loss = f"{stats['loss']:.4g} [{stats['loss_interval'][0]:.4g}, {stats['loss_interval'][1]:.4g}]"
                    diff = (f"{stats['difference']:+.4g} [{stats['difference_interval'][0]:+.4g}, "
                            f"{stats['difference_interval'][1]:+.4g}]")
                    chances = f"{stats['prob_better']:>11.3f}{stats['prob_best']:>9.3f}"
                else:
                    loss, diff, chances = f"{stats['loss']:.4g} [-]", f"{stats['difference']:+.4g} [-]", \
                        f"{'-':>11}{'-':>9}"
                lines.append(f"{entry['label'][:24]:<24}{entry['steps']:>6}  {quantity:<8}{loss:>30}{diff:>42}"
                             + chances)
        return "\n".join(lines)


def _predictive_words(simulator: Simulator, predictive: str | None) -> tuple[str, str]:
    """``(kind, description)`` of the predictive a probabilistic simulator resolves ``predictive`` to."""
    if not isinstance(simulator, ProbabilisticSimulator):
        return "", ""
    return simulator.predictive_kind(predictive), simulator.describe_predictive(predictive)


def _check_tests(tests: Sequence[int] | None, n_tests: int) -> np.ndarray:
    if tests is None:
        return np.arange(n_tests)
    if isinstance(tests, (int, np.integer)):
        tests = [tests]
    tests = np.asarray([validation.integer(test, "tests") for test in np.ravel(np.asarray(tests, dtype=object))],
                       dtype=np.int64)
    if tests.size == 0:
        raise ValueError("tests: give at least one test example index (or None for all)")
    if tests.min() < 0 or tests.max() >= n_tests:
        raise ValueError(f"tests: indices {tests.tolist()} out of range for {n_tests} test examples "
                         f"(the initial losses have {n_tests} entries)")
    return tests


def compare(simulator: Simulator, curricula_list: Sequence[Any], initial_losses: np.ndarray,
            tests: Sequence[int] | None = None, reduction: str = "mean", n_draws: int = DEFAULT_DRAWS,
            seed: int = 0, labels: Sequence[str] | None = None, reference: int = 0, level: float = 0.9,
            predictive: str | None = None) -> Comparison:
    """Simulate every candidate curriculum and compare them draw by draw.

    Args:
        simulator: a fitted simulator; with ``simulate_draws`` (Bayesian) the comparison has
            ``n_draws`` posterior draws, otherwise it is one point draw.
        curricula_list: two or more candidates, each ``[steps, batch]``, ``[runs, steps, batch]``
            or a list of batches (see :func:`as_curricula`).
        initial_losses: ``[tests]`` losses of the initial model on every test example, shared by
            all candidates (they start from the same weights).
        tests: indices of the test examples to compare on (default all).
        reduction: ``"mean"`` or ``"sum"`` of the loss over ``tests``.
        n_draws, seed: posterior draws; the same seed for every candidate pairs the draws.
        labels: names of the candidates (default ``"A"``, ``"B"``, ...).
        reference: the candidate differences are taken against.
        level: credibility of the intervals, in ``(0, 1)``.
        predictive: the predictive to draw from (None: the simulator's default, for a guarded
            posterior ``"new-run"``: every candidate is a separate new training run, as retraining
            it would be; ``"parameters"`` for the curricula's expected effects only). The same seed
            pairs parameter draws, noise and discrepancy across candidates.

    Returns:
        A :class:`Comparison`.
    """
    if len(curricula_list) < 2:
        raise ValueError(f"compare needs at least two candidate curricula, got {len(curricula_list)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    labels = tuple(labels) if labels is not None else tuple(chr(ord("A") + k) if k < 26 else f"C{k}"
                                                            for k in range(len(curricula_list)))
    if len(labels) != len(curricula_list):
        raise ValueError(f"{len(labels)} labels for {len(curricula_list)} candidates")
    reference = validation.integer(reference, "reference", minimum=0)
    if not 0 <= reference < len(curricula_list):
        raise ValueError(f"reference must be in [0, {len(curricula_list)}), got {reference}")
    initial_losses = np.asarray(initial_losses, dtype=np.float64)
    if initial_losses.ndim != 1:
        raise RunsFormatError(f"initial_losses must be [tests] (one loss per test example, shared by all "
                              f"candidates), got shape {initial_losses.shape}")
    tests = _check_tests(tests, initial_losses.shape[0])
    candidates = [as_curricula(candidate, label) for candidate, label in zip(curricula_list, labels)]
    width = max(candidate.shape[2] for candidate in candidates)
    padded = [pad_width(candidate, width) for candidate in candidates]
    identical = tuple(bool(np.array_equal(candidate, padded[reference])) for candidate in padded)  # shapes too
    simulator, initial_losses = for_tests(simulator, initial_losses, tests)
    trajectories = []
    for candidate, label in zip(padded, labels):
        start = np.broadcast_to(initial_losses, (candidate.shape[0], initial_losses.shape[0]))
        selected = validation.checked_result(simulate_draws_of(simulator, candidate, start, n_draws,
                                                               seed, predictive),  # [draws, runs, steps + 1, tests]
                                             f"simulating candidate '{label}'", validation.MAX_ABS_LOSS)
        reduced = selected.mean(-1) if reduction == "mean" else selected.sum(-1)
        trajectories.append(reduced.mean(axis=1))  # [draws, steps + 1]
    if len({trajectory.shape[0] for trajectory in trajectories}) != 1:
        raise ValueError("the simulator returned different numbers of draws for different candidates")
    stacked = isinstance(simulator, Stacked) and simulator.stacking_weight is not None
    recorded = getattr(simulator, "info", {}).get("unseen_indices")
    unseen = () if recorded is None else tuple(
        int(np.isin(np.unique(candidate[candidate >= 0]), recorded).sum()) for candidate in candidates)
    logged = getattr(simulator, "info", {}).get("logged_runs")
    unlike = () if logged is None else tuple(run_kind.unlike(logged, candidate) for candidate in candidates)
    return Comparison(labels, tests, reduction, tuple(trajectories),
                      np.array([candidate.shape[1] for candidate in candidates]), identical, reference, level,
                      *_predictive_words(simulator, predictive),
                      float(np.mean(simulator.stacking_weight)) if stacked else None,
                      simulator.stacked_alternative if stacked else "", unseen, unlike)
