"""Per-training-example attributions with posterior uncertainty.

Two kinds of effect of training example ``i`` on test example ``m``:

- its **parameters**: the multiplicative effect ``a[m, i]`` (``alpha = 1 + sum a`` over a batch)
  and the additive effect ``B[m, i]``, and their combination, the **one-step effect**
  ``a[m, i] * L + B[m, i]``: how much one appearance of ``i`` changes the loss when it is ``L``;
- its **effect on the final loss under a curriculum**: simulated final loss with the
  curriculum minus the final loss with ``i`` replaced by a reference, paired draw by draw.

An effect is always relative to a **reference** (:data:`REFERENCES`):

- ``"average"`` (the default): the **average example**, a virtual training example whose
  effects are the pool means ``(mean_j a_j, mean_j B_j)`` (per draw and test example). The
  final-loss effect fills every slot of ``i`` with it (same batches, same steps); the parameter
  effects are ``a_i - mean a`` and ``B_i - mean B``. With full batches the runs identify only
  batch sums plus the curriculum-independent step component ``d_t``: adding ``c`` to every
  ``B_j`` and taking ``batch * c`` from ``d_t`` changes no run, so the common level of ``B`` is
  set by the prior (the model fixes its population location at 0). Against the average example
  that level cancels exactly. The common level of ``a`` does not cancel (it sets how a change
  carries to the final loss through the later ``1 + sum a``), and the model learns it
  (``common_level``, :mod:`bayes_simfluence.bayes.model`): so these effects are identified by the data.
- ``"leave-out"``: an **empty slot**: the final-loss effect empties every slot of ``i`` (same
  steps, smaller batches: not re-packed, unlike :func:`bayes_simfluence.counterfactuals.compare_leave_out`),
  the parameter effects are the raw ``a_i``, ``B_i``. With full batches
  this reads the common level the data do not identify: on runs where about 90% of the examples
  were harmful, a posterior with the level at 0 called 10-27% of them helpful with P > 0.95
  (``tests/test_attributions.py``). Kept for runs whose slots were genuinely empty, and for
  comparison.

Negative effects help (lower the loss). Rankings use a posterior quantity that accounts for
uncertainty: by default the conservative end of the credible interval (the upper bound for
"helpful", the lower bound for "harmful"), or ``P(effect < 0)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import numpy as np

from bayes_simfluence.curricula import compact
from bayes_simfluence.choices import DEFAULT_DRAWS, RANKINGS, REFERENCES
from bayes_simfluence.compare import as_curricula, for_tests, simulate_draws_of
from bayes_simfluence.runs import EMPTY_SLOT
from bayes_simfluence.simulators import AverageExample, EffectSimulator, Simulator

#: bytes of simulated trajectories held at once by :func:`final_loss_effects`.
MEMORY_BUDGET = 256 * 2**20


class EffectDraws(NamedTuple):
    """Posterior draws of the per-example effects (one draw for a point simulator).

    Attributes:
        multiplicative: ``[draws, tests, n_train]`` ``a``: ``alpha(c_t) = 1 + sum_{i in c_t} a_i``.
        additive: ``[draws, tests, n_train]`` ``B``: ``beta(c_t) = sum_{i in c_t} B_i``.
    """

    multiplicative: np.ndarray
    additive: np.ndarray


def effect_draws(simulator: Simulator, n_draws: int = DEFAULT_DRAWS, seed: int = 0) -> EffectDraws:
    """The effects of a fitted simulator (an :class:`~bayes_simfluence.simulators.EffectSimulator`) in
    the centred form ``alpha = 1 + sum a``: ``n_draws`` posterior draws of a Bayesian simulator, one
    draw of a point simulator (the paper's ``A`` centred as ``a = A - 1 / batch``)."""
    if not isinstance(simulator, EffectSimulator):
        raise ValueError(f"simulator '{getattr(simulator, 'name', type(simulator).__name__)}' has no per-example "
                         "effects (attributions need a Simfluence or Bayesian simulator)")
    draws = simulator.effect_draws(n_draws, seed)
    return EffectDraws(draws["a"], draws["B"])


def _check_reference(reference: str) -> str:
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")
    return reference


def with_average_example(simulator: Simulator) -> Simulator:
    """The simulator with one more, virtual training example at index ``n_train``: the **average
    example**, whose effects are the pool means of every parameter draw and test example (each
    simulator with per-example effects or scores implements it; the curriculum-blind mean has none)."""
    return _average_example(simulator)[0]


def _average_example(simulator: Simulator) -> tuple[Simulator, int]:
    """``(simulator with the average example, its index)``: see :func:`with_average_example`."""
    if not isinstance(simulator, AverageExample):
        raise ValueError(f"simulator '{getattr(simulator, 'name', type(simulator).__name__)}' has no per-example "
                         "effects to average; the average-example reference needs a Simfluence, score or Bayesian "
                         "simulator (reference 'leave-out' simulates any simulator)")
    return simulator.with_average_example(), int(simulator.n_train)


@dataclass(frozen=True)
class ExampleEffects:
    """Posterior draws of one effect per training example, with intervals and rankings.

    Attributes:
        draws: ``[draws, examples]`` effect draws; negative = lowers the loss (helpful).
        examples: ``[examples]`` training-example indices the columns refer to.
        description: what the effect is (for tables and plot labels).
        level: credibility of the intervals.
        train_ids: optional ``[n_train]`` names of all training examples.
    """

    draws: np.ndarray
    examples: np.ndarray
    description: str
    level: float = 0.9
    train_ids: np.ndarray | None = None

    @property
    def mean(self) -> np.ndarray:
        """``[examples]`` posterior mean."""
        return self.draws.mean(axis=0)

    def interval(self, level: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(lower, upper)``, each ``[examples]``: central credible interval (default ``self.level``)."""
        level = self.level if level is None else level
        lower, upper = np.quantile(self.draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
        return lower, upper

    @property
    def prob_helpful(self) -> np.ndarray:
        """``[examples]`` ``P(effect < 0)``."""
        return (self.draws < 0).mean(axis=0)

    @property
    def prob_harmful(self) -> np.ndarray:
        """``[examples]`` ``P(effect > 0)``."""
        return (self.draws > 0).mean(axis=0)

    def ranking(self, helpful: bool = True, by: str = "bound") -> np.ndarray:
        """Column positions from most to least helpful (or harmful).

        ``by``: ``"bound"`` ranks by the conservative interval end (upper bound ascending for
        helpful, lower bound descending for harmful: "at least this helpful with probability
        (1 + level) / 2"); ``"probability"`` by ``P(effect < 0)`` (or ``> 0``), ties broken by
        the bound; ``"mean"`` by the posterior mean alone.
        """
        if by not in RANKINGS:
            raise ValueError(f"by must be one of {RANKINGS}, got {by!r}")
        lower, upper = self.interval()
        sign = 1.0 if helpful else -1.0
        bound = upper if helpful else lower
        if by == "bound":
            return np.lexsort((sign * self.mean, sign * bound))
        if by == "probability":
            probability = self.prob_helpful if helpful else self.prob_harmful
            return np.lexsort((sign * bound, -probability))
        return np.argsort(sign * self.mean, kind="stable")

    def top(self, k: int = 10, helpful: bool = True, by: str = "bound") -> np.ndarray:
        """``[k]`` training-example indices of the ``k`` most helpful (or harmful) examples."""
        return self.examples[self.ranking(helpful, by)[:k]]

    def name(self, example: int) -> str:
        return str(self.train_ids[example]) if self.train_ids is not None else f"train_{example}"

    @property
    def has_uncertainty(self) -> bool:
        """False for a point simulator's single draw: intervals and probabilities mean nothing."""
        return self.draws.shape[0] > 1

    def records(self, k: int | None = None, helpful: bool = True, by: str = "bound") -> list[dict[str, Any]]:
        """Ranked rows ``{example, id, mean, lower, upper, prob_helpful, prob_harmful}``: at most ``k``
        examples whose mean effect has the asked sign (negative: helpful); without uncertainty
        (one draw) the interval and probabilities are None."""
        if k is not None and k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        sign_ok = self.mean < 0 if helpful else self.mean > 0
        order = [j for j in self.ranking(helpful, by) if sign_ok[j]][:k]
        lower, upper = self.interval()
        known = self.has_uncertainty
        return [{"example": int(self.examples[j]), "id": self.name(int(self.examples[j])),
                 "mean": float(self.mean[j]), "lower": float(lower[j]) if known else None,
                 "upper": float(upper[j]) if known else None,
                 "prob_helpful": float(self.prob_helpful[j]) if known else None,
                 "prob_harmful": float(self.prob_harmful[j]) if known else None}
                for j in order]

    def to_dict(self, k: int = 10, by: str = "bound") -> dict[str, Any]:
        return {"description": self.description, "level": self.level, "draws": int(self.draws.shape[0]),
                "uncertainty": "posterior draws" if self.has_uncertainty else "none (point simulator)",
                "ranked_by": by, "top_helpful": self.records(k, True, by), "top_harmful": self.records(k, False, by)}

    def table(self, k: int = 10, by: str = "bound") -> str:
        """The top ``k`` helpful and harmful examples with means, intervals and probabilities."""
        percent = f"{100 * self.level:g}%"
        note = "" if self.has_uncertainty else "; point simulator: no uncertainty, ranked by the point effect"
        lines = [f"{self.description} ({self.draws.shape[0]} draws; ranked by {by}; negative = helpful{note})"]
        for helpful in (True, False):
            rows = self.records(k, helpful, by)
            lines.append(f"top {'helpful' if helpful else 'harmful'}:" + ("" if rows else " none"))
            if rows:
                lines.append(f"  {'id':<20}{'mean':>11}{percent + ' interval':>26}{'P(<0)':>8}{'P(>0)':>8}")
            for row in rows:
                if row["lower"] is None:
                    lines.append(f"  {row['id'][:20]:<20}{row['mean']:>+11.3e}{'-':>26}{'-':>8}{'-':>8}")
                    continue
                lines.append(f"  {row['id'][:20]:<20}{row['mean']:>+11.3e}  [{row['lower']:+.3e}, "
                             f"{row['upper']:+.3e}]{row['prob_helpful']:>8.3f}{row['prob_harmful']:>8.3f}")
        return "\n".join(lines)


def _check_test(test: int, n_tests: int) -> int:
    if not 0 <= int(test) < n_tests:
        raise ValueError(f"test example {test} out of range for {n_tests} test examples")
    return int(test)


def _relative(values: np.ndarray, reference: str) -> np.ndarray:
    """``values [draws, n_train]`` against ``reference``: minus the pool mean of each draw
    (``"average"``), or as they are: against an empty slot (``"leave-out"``)."""
    if _check_reference(reference) == "average":
        return values - values.mean(axis=-1, keepdims=True)
    return values


def _against(reference: str) -> str:
    return ("against the average example (the pool mean)" if reference == "average"
            else "against a = B = 0 (leave-out: reads the level full batches do not identify)")


def one_step_effects(effects: EffectDraws, test: int, loss: float, level: float = 0.9,
                     train_ids: Sequence[str] | None = None, reference: str = "average") -> ExampleEffects:
    """Effect of one appearance of each training example on ``test``'s loss when it equals ``loss``,
    ``[draws, n_train]``: against the average example (default),
    ``(a_i - mean a) * loss + (B_i - mean B)``; raw (``reference="leave-out"``: against an
    emptied slot of the centred model, ``a = B = 0``), ``a_i * loss + B_i``, which with full
    batches reads the unidentified level (module docstring)."""
    test = _check_test(test, effects.additive.shape[1])
    draws = _relative(effects.multiplicative[:, test] * loss + effects.additive[:, test], reference)
    return ExampleEffects(draws, np.arange(draws.shape[1]),
                          f"one-step effect on test {test} at loss {loss:.4g}, {_against(reference)}",
                          level, None if train_ids is None else np.asarray(train_ids))


def parameter_effects(effects: EffectDraws, test: int, part: str, level: float = 0.9,
                      train_ids: Sequence[str] | None = None, reference: str = "average") -> ExampleEffects:
    """Posterior of the ``"multiplicative"`` (``a``) or ``"additive"`` (``B``) effect of every
    training example on ``test``: minus the pool mean of its draw (default, the average
    example), or raw (``reference="leave-out"``: against an emptied slot of the centred model,
    ``a = B = 0``)."""
    if part not in EffectDraws._fields:
        raise ValueError(f"part must be one of {EffectDraws._fields}, got {part!r}")
    values = getattr(effects, part)
    test = _check_test(test, values.shape[1])
    draws = _relative(values[:, test], reference)
    return ExampleEffects(draws, np.arange(values.shape[2]), f"{part} effect on test {test}, {_against(reference)}",
                          level, None if train_ids is None else np.asarray(train_ids))


def _final_losses(simulator: Simulator, curricula: np.ndarray, initial_losses: np.ndarray,
                  n_draws: int, seed: int) -> np.ndarray:
    """``[draws, runs]`` noise-free final loss of each curriculum, averaged over the test examples."""
    start = np.broadcast_to(initial_losses, (curricula.shape[0], initial_losses.shape[0]))
    draws = simulate_draws_of(simulator, curricula, start, n_draws, seed, predictive="parameters")
    return draws[:, :, -1].mean(-1)


def final_loss_effects(simulator: Simulator, curriculum: Any, initial_losses: np.ndarray,
                       examples: Sequence[int] | None = None, tests: Sequence[int] | None = None,
                       n_draws: int = DEFAULT_DRAWS, seed: int = 0, level: float = 0.9,
                       train_ids: Sequence[str] | None = None, reference: str = "average") -> ExampleEffects:
    """Effect of each training example on the final loss under ``curriculum``, paired by draw.

    ``effect_i = final_loss(curriculum) - final_loss(counterfactual_i)``, the final loss averaged
    over ``tests`` (default all), expected values under the parameter draws (no noise, no run
    discrepancy: ``predictive="parameters"``). The counterfactual depends on ``reference``:

    - ``"average"`` (default): every slot of ``i`` is filled by the **average example**, a
      virtual example whose effects are the pool means (:func:`with_average_example`). Same
      batches, same steps: the common level of ``B`` that full batches leave unidentified
      cancels, and so does the step component.
    - ``"leave-out"``: every slot of ``i`` is emptied (same steps, the batch's other examples
      moved left). With full batches this reads the common level the data do not identify (it
      is the prior's, 0 under the model): examples that are all harmful come out about half
      helpful, with confident intervals. Use it only where slots are genuinely empty.

    The curriculum and every counterfactual are simulated with the same seed (same parameter
    draws, chunked to :data:`MEMORY_BUDGET`).

    Args:
        curriculum: one curriculum ``[steps, batch]`` or a list of batches.
        initial_losses: ``[tests]`` losses before training.
        examples: training examples to attribute (default: every example in the curriculum).
        reference: ``"average"`` or ``"leave-out"`` (:data:`REFERENCES`).

    Returns:
        :class:`ExampleEffects` with ``draws [draws, examples]``.
    """
    _check_reference(reference)
    base = as_curricula(curriculum, "curriculum")
    if base.shape[0] != 1:
        raise ValueError(f"final_loss_effects takes one curriculum [steps, batch], got {base.shape[0]} runs")
    initial_losses = np.asarray(initial_losses, dtype=np.float64)
    if initial_losses.ndim != 1:
        raise ValueError(f"initial_losses must be [tests], got shape {initial_losses.shape}")
    n_tests = initial_losses.shape[0]
    tests = np.arange(n_tests) if tests is None else np.asarray(tests, dtype=np.int64).reshape(-1)
    if tests.size == 0 or tests.min() < 0 or tests.max() >= n_tests:
        raise ValueError(f"tests: indices {tests.tolist()} out of range for {n_tests} test examples")
    present = np.unique(base[base >= 0])
    examples = present if examples is None else np.asarray(examples, dtype=np.int64).reshape(-1)
    missing = np.setdiff1d(examples, present)
    if missing.size:
        raise ValueError(f"examples {missing.tolist()[:10]} do not appear in the curriculum; replacing them "
                         "changes nothing")
    simulator, initial_losses = for_tests(simulator, initial_losses, tests)  # simulate only those
    if reference == "average":
        simulator, average = _average_example(simulator)  # the average example's index: n_train
        # [examples, steps, batch]: the slots of i hold the average example
        counterfactuals = np.where(base == examples[:, None, None], average, base)
    else:
        counterfactuals = compact(np.where(base == examples[:, None, None], EMPTY_SLOT, base))
    # Same seed for every chunk: the same parameter draws, so the differences stay paired.
    chunk = max(1, int(MEMORY_BUDGET // (8 * n_draws * (base.shape[1] + 1) * tests.size)))
    final = np.concatenate([
        _final_losses(simulator, part, initial_losses, n_draws, seed)
        for part in [base] + [counterfactuals[i: i + chunk] for i in range(0, len(examples), chunk)]
    ], axis=1)  # [draws, 1 + examples]
    against = ("rather than the average example (a virtual example with the pool's mean effects in its slots)"
               if reference == "average" else
               "rather than emptying its slots (leave-out: with full batches this reads the level of B the "
               "runs do not identify)")
    description = (f"effect on the final loss (mean over {tests.size} test example(s)) of each example in a "
                   f"{base.shape[1]}-step curriculum, {against}")
    return ExampleEffects(final[:, :1] - final[:, 1:], examples, description, level,
                          None if train_ids is None else np.asarray(train_ids))

