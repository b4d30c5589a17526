"""The simulator protocols, and the paper's point-estimate simulators: mean trajectory and
Simfluence-Linear (and special cases).

Every simulator (:class:`Simulator`) has ``name``, ``simulate(curricula, initial_losses)``
returning ``[runs, steps + 1, tests]``, ``select_tests`` and ``save(path)``; what else it can do is
a protocol of its own, which the core checks with ``isinstance``: a predictive distribution
(:class:`ProbabilisticSimulator`), per-example effects and the average example
(:class:`AverageExample`, :class:`EffectSimulator`), predictions stacked with an alternative model (:class:`Stacked`),
choices made while fitting (:class:`Reporting`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from bayes_simfluence import atomic, budget
from bayes_simfluence import ridge as ridge_lib
from bayes_simfluence.cross_validation import choose_ridge
from bayes_simfluence.rollout import batch_sums, roll_out
from bayes_simfluence.runs import Runs, RunsFormatError, _as_int_curricula, member, open_archive
from bayes_simfluence.validation import MAX_ABS_LOSS, InputError


@runtime_checkable
class Simulator(Protocol):
    """Predicts test-loss trajectories for curricula."""

    name: str

    def simulate(self, curricula: np.ndarray, initial_losses: np.ndarray) -> np.ndarray:
        """``curricula [runs, steps, batch]``, ``initial_losses [runs, tests]`` -> ``[runs, steps + 1, tests]``."""

    def save(self, path: str | Path) -> None:
        """Write the fitted simulator so that :func:`bayes_simfluence.methods.load_simulator` reads it back."""

    def select_tests(self, tests: np.ndarray) -> "Simulator":
        """The same simulator for test examples ``tests`` only (test examples are independent),
        so decisions about a few of them simulate only those."""


@runtime_checkable
class ProbabilisticSimulator(Simulator, Protocol):
    """A simulator with a predictive distribution over trajectories."""

    def simulate_draws(self, curricula: np.ndarray, initial_losses: np.ndarray, n_draws: int,
                       seed: int = 0, predictive: str | None = None) -> np.ndarray:
        """``[draws, runs, steps + 1, tests]`` trajectories drawn from the (posterior) predictive
        ``predictive`` (None: the simulator's default; see
        :data:`~bayes_simfluence.choices.PREDICTIVES`)."""

    def describe_predictive(self, predictive: str | None = None) -> str:
        """What draws of ``predictive`` stand for, in words for summaries."""

    def predictive_kind(self, predictive: str | None = None) -> str:
        """The predictive ``predictive`` resolves to (None: the simulator's default), one of
        :data:`~bayes_simfluence.choices.PREDICTIVES`; one it cannot draw is refused."""


@runtime_checkable
class Stacked(Protocol):
    """A simulator whose predictions stack its own model with an alternative, per test example
    (:mod:`bayes_simfluence.stacking`)."""

    @property
    def stacking_weight(self) -> np.ndarray | None:
        """``[steps, tests]`` weight of the simulator's own model at each fitted step (``[tests]``
        in files of earlier versions), the alternative having ``1 - weight``; None: not stacked."""

    @property
    def stacked_alternative(self) -> str:
        """The alternative in words: ``"curriculum-blind"`` (the candidates' expected losses do not
        differ under it), ``"state-only"`` (they differ only through the run state) or its name."""


@runtime_checkable
class Reporting(Protocol):
    """A simulator that chose something while fitting (a ridge strength, stacking weights)."""

    def fit_report(self) -> dict[str, Any]:
        """What the fit chose, JSON-ready, for result tables: ``ridge`` (the selected ridge
        strength), ``guard`` (the stacking report, :func:`bayes_simfluence.stacking.cross_fit_stacking`)
        and ``guard_weight`` (its mean weight), where present."""


#: name of the virtual average example that ``with_average_example`` appends (index ``n_train``)
AVERAGE_ID = "average example"


@runtime_checkable
class AverageExample(Protocol):
    """A simulator with per-example effects or scores, which can add the average example (what
    attributions against the average example need)."""

    @property
    def n_train(self) -> int:
        """Training examples the effects are indexed by."""

    def with_average_example(self) -> "AverageExample":
        """The same simulator with one more, virtual training example at index ``n_train``, the
        **average example**: in every draw and test example its effects are the pool's means."""


@runtime_checkable
class EffectSimulator(AverageExample, Protocol):
    """A simulator with per-example effects in the centred form ``alpha(c_t) = 1 + sum a_i``,
    ``beta(c_t) = sum B_i``: what attributions and leave-out comparisons read."""

    def effect_draws(self, n_draws: int, seed: int = 0) -> dict[str, np.ndarray]:
        """``{"a", "B"}``, each ``[draws, tests, n_train]``: draws of the effects (one for a point
        simulator); for a probabilistic simulator the draws ``simulate_draws`` uses with the same
        ``n_draws`` and ``seed``."""


def with_mean_column(values: np.ndarray) -> np.ndarray:
    """``values [..., n_train]`` with one more column, the mean over the last axis."""
    values = np.asarray(values)
    return np.concatenate([values, values.mean(axis=-1, keepdims=True)], axis=-1)


def check_simulation_inputs(curricula: np.ndarray, initial_losses: np.ndarray, n_train: int,
                            n_tests: int, batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validate what a fitted simulator is asked to simulate; return int curricula and float losses.

    ``batch_size``: the batch width the simulator was fitted on; steps filling more slots than
    that are refused (per-example effects summed over more slots than ever observed extrapolate,
    and ``alpha`` compounds over the roll-out: 8 slots on a model fitted on 4 sent losses to 1e9).
    """
    curricula = _as_int_curricula(curricula, "curricula to simulate")
    initial_losses = np.asarray(initial_losses, dtype=np.float64)
    if initial_losses.shape != (curricula.shape[0], n_tests):
        raise RunsFormatError(
            f"initial_losses must have shape [runs, tests] = ({curricula.shape[0]}, {n_tests}), "
            f"got {initial_losses.shape}"
        )
    if not np.all(np.isfinite(initial_losses)) or np.any(np.abs(initial_losses) > MAX_ABS_LOSS):
        raise RunsFormatError(f"initial_losses holds NaN, inf or values beyond +-{MAX_ABS_LOSS:g}")
    budget.check_draws(1, curricula.shape[0], curricula.shape[1], n_tests, what="the roll-out")
    slots = (curricula >= 0).sum(-1)  # [runs, steps] filled slots
    filled = int(slots.max()) if slots.size else 0
    if batch_size and filled > batch_size:
        step = np.argwhere(slots == filled)[0].tolist()
        raise RunsFormatError(
            f"curricula to simulate fill {filled} slots at [run, step] = {step}; the simulator was fitted on "
            f"batches of {batch_size} and cannot extrapolate to larger ones (split the step, or refit on such runs)"
        )
    if curricula.size and (curricula.max() >= n_train or curricula.min() < -1):
        raise RunsFormatError(
            f"curricula to simulate hold indices in [{curricula.min()}, {curricula.max()}]; "
            f"the simulator knows training examples [0, {n_train}) and -1 for empty slots"
        )
    return curricula, initial_losses


@dataclass
class MeanTrajectory:
    """Curriculum-blind baseline: the average observed trajectory of each test example.

    A new run is simulated as ``L_0 + (mean_t - mean_0)``: the mean trajectory itself when runs
    share their initial loss (the usual case, same initial weights), shifted otherwise.
    """

    name: str = "mean"
    mean_losses: np.ndarray | None = None  # [steps + 1, tests]

    def fit(self, runs: Runs) -> "MeanTrajectory":
        self.mean_losses = runs.losses.mean(axis=0)
        return self

    def simulate(self, curricula: np.ndarray, initial_losses: np.ndarray) -> np.ndarray:
        mean_losses = _fitted(self.mean_losses, self.name)
        curricula = np.asarray(curricula)
        if curricula.ndim != 3:
            raise RunsFormatError(f"curricula must have 3 dims [runs, steps, batch], got shape {curricula.shape}")
        n_steps = curricula.shape[1]
        if n_steps > mean_losses.shape[0] - 1:
            raise RunsFormatError(
                f"the mean trajectory covers {mean_losses.shape[0] - 1} steps; cannot simulate {n_steps}"
            )
        initial_losses = np.asarray(initial_losses, dtype=np.float64)
        if initial_losses.shape != (curricula.shape[0], mean_losses.shape[1]):
            raise RunsFormatError(
                f"initial_losses must have shape ({curricula.shape[0]}, {mean_losses.shape[1]}), "
                f"got {initial_losses.shape}"
            )
        change = mean_losses[: n_steps + 1] - mean_losses[:1]
        return initial_losses[:, None, :] + change[None]

    def select_tests(self, tests: np.ndarray) -> "MeanTrajectory":
        return MeanTrajectory(self.name, _fitted(self.mean_losses, self.name)[:, tests])

    def save(self, path: str | Path) -> None:
        atomic.savez(path, {"kind": np.array("mean-trajectory"), "mean_losses": _fitted(self.mean_losses, self.name)})

    @classmethod
    def load(cls, path: Path) -> "MeanTrajectory":
        with open_archive(path, "simulator file") as archive:
            mean_losses = saved_array(archive, "mean_losses", path, ndim=2)
        return cls(mean_losses=mean_losses)


#: whether each variant's ridge shrinks towards a fitted common level by default
#: (``experiments/results/ridge_centre.md``): yes for ``linear`` and ``additive``; not for
#: ``multiplicative``, whose free common rate compounds over a roll-out (far worse held-out error than
#: the fixed centre on the plain-SGD sets)
COMMON_LEVEL_BY_VARIANT = {"linear": True, "additive": True, "multiplicative": False}


@dataclass
class SimfluenceLinear:
    """Simfluence-Linear fitted by teacher-forced ridge regression (closed form).

    ``L_t = alpha(c_t) * L_{t-1} + beta(c_t)``, ``alpha(c_t) = sum_{i in c_t} A_i``,
    ``beta(c_t) = sum_{i in c_t} B_i``, one ``(A, B)`` per test example.

    The paper leaves the centre of the L2 penalty open. Shrinking ``A`` towards 0 would make a
    strongly regularised model predict ``L_t = beta``. With ``common_level=True`` each
    test example's effects are shrunk towards a common level, ``A_i = 1/batch + c_a + w_a,i``,
    ``B_i = c_B + w_B,i`` with the penalty on ``w`` only: a fully regularised model is a decay every
    example shares, close to the curriculum-blind mean trajectory, and the shared decay is not shrunk
    with the per-example noise (on large pools, where each example is seen a few times, shrinking both
    made every strength worse than ignoring the curriculum: ``benchmarks/results/ridge_selection_notes.md``).
    With ``common_level=False`` the centre is fixed, ``A_i`` at ``1 / batch`` (``batch`` = slots per
    step) and ``B_i`` at 0: a fully regularised model keeps the loss at every full step. Fitted ``A``
    is reported in the paper's form (the ``1 / batch`` and the level included).

    Args:
        variant: ``"linear"``; ``"additive"`` (alpha = 1, TracIn-like) or ``"multiplicative"`` (beta = 0).
        ridge: penalty ``lambda`` on ``||w_a||^2 + ||w_B||^2`` in the sum of squared one-step errors;
            ``None`` chooses it by leave-runs-out cross-validation (see :func:`choose_ridge`).
        common_level: shrink towards a fitted common level or towards the fixed centre; ``None``
            takes the variant's default, :data:`COMMON_LEVEL_BY_VARIANT`.
    """

    variant: str = "linear"
    ridge: float | None = None
    common_level: bool | None = None
    cv_folds: int = 4
    cv_max_tests: int = 8
    multiplicative: np.ndarray | None = None  # A: [tests, n_train]
    additive: np.ndarray | None = None  # B: [tests, n_train]
    batch_size: int = 0
    ridge_selected: float | None = None
    cv_report: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.variant not in ridge_lib.VARIANTS:
            raise ValueError(f"variant must be one of {ridge_lib.VARIANTS}, got {self.variant!r}")
        if self.common_level is None:
            self.common_level = COMMON_LEVEL_BY_VARIANT[self.variant]

    @property
    def name(self) -> str:
        return self.variant

    def fit(self, runs: Runs) -> "SimfluenceLinear":
        """Fit ``(A, B)`` on the training runs; chooses the ridge by CV when none was given."""
        if self.ridge is None:
            self.ridge_selected, self.cv_report = choose_ridge(
                runs, self.variant, n_folds=self.cv_folds, max_tests=self.cv_max_tests, common_level=self.common_level
            )
        else:
            if self.ridge < 0:
                raise ValueError(f"ridge must be >= 0, got {self.ridge}")
            self.ridge_selected = float(self.ridge)
        centred_a, additive = ridge_lib.fit_ridge(runs.curricula, runs.losses, runs.n_train, self.variant,
                                                  self.ridge_selected, common_level=self.common_level)
        if not (np.all(np.isfinite(centred_a)) and np.all(np.isfinite(additive))):
            raise InputError(f"{self.name}: the ridge fit gave non-finite effects (ridge {self.ridge_selected:g}); "
                             "the losses' scale or the design is degenerate")
        self.set_effects(centred_a, additive, runs.batch_size)
        return self

    @property
    def n_train(self) -> int:
        return int(np.shape(_fitted(self.additive, self.name))[-1])

    def fit_report(self) -> dict[str, Any]:
        """``{"ridge": the selected ridge strength}`` once fitted (:class:`Reporting`)."""
        return {} if self.ridge_selected is None else {"ridge": float(self.ridge_selected)}

    def effect_draws(self, n_draws: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
        """One draw of the effects, centred: ``a = A - 1 / batch`` (a full batch of ``a = 0``
        keeps the loss; ``a = 0`` for the additive variant), ``B``; ``[1, tests, n_train]`` each."""
        A = np.asarray(_fitted(self.multiplicative, self.name), dtype=np.float64)
        centred = np.zeros_like(A) if self.variant == "additive" else A - 1.0 / self.batch_size
        return {"a": centred[None], "B": np.asarray(self.additive, dtype=np.float64)[None]}

    def with_average_example(self) -> "SimfluenceLinear":
        """With the average example (:class:`EffectSimulator`): the mean of ``A`` and of ``B``."""
        return dataclasses.replace(self, multiplicative=with_mean_column(_fitted(self.multiplicative, self.name)),
                                   additive=with_mean_column(self.additive))

    def set_effects(self, centred_a: np.ndarray, additive: np.ndarray, batch_size: int) -> None:
        """Store effects given as deviations ``a = A - 1/batch`` (``[tests, n_train]`` each)."""
        self.batch_size = batch_size
        offset = 0.0 if self.variant == "additive" else 1.0 / batch_size
        self.multiplicative = centred_a + offset
        self.additive = additive

    def step_coefficients(self, curricula: np.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """``alpha, beta``: each ``[runs, steps, tests]`` for ``curricula [runs, steps, batch]``."""
        A = jnp.asarray(_fitted(self.multiplicative, self.name))
        B = jnp.asarray(_fitted(self.additive, self.name))
        curricula = jnp.asarray(curricula)
        if self.variant == "additive":
            alpha = jnp.ones(curricula.shape[:2] + (A.shape[0],))
        else:
            alpha = batch_sums(A, curricula)
        return alpha, batch_sums(B, curricula)

    def simulate(self, curricula: np.ndarray, initial_losses: np.ndarray) -> np.ndarray:
        A = _fitted(self.multiplicative, self.name)
        curricula, initial_losses = check_simulation_inputs(curricula, initial_losses, A.shape[1], A.shape[0],
                                                            self.batch_size)
        empty = (curricula < 0).all(-1)  # [runs, steps]
        if self.variant != "additive" and empty.any():
            raise RunsFormatError(
                f"curricula to simulate have a step whose slots are all empty, at [run, step] = "
                f"{np.argwhere(empty)[0].tolist()}: '{self.name}' follows the paper (alpha = the sum of A_i over the "
                "filled slots), so such a step would send the loss to beta = 0; drop the step, or use a Bayesian "
                "method, in which an empty slot has no effect")
        with jax.enable_x64(True):  # losses of 1e-40 or 1e39 are valid inputs; float32 lost or overflowed them
            alpha, beta = self.step_coefficients(curricula)
            return np.asarray(roll_out(alpha, beta, jnp.asarray(initial_losses, dtype=alpha.dtype)),
                              dtype=np.float64)

    def select_tests(self, tests: np.ndarray) -> "SimfluenceLinear":
        return dataclasses.replace(self, multiplicative=_fitted(self.multiplicative, self.name)[tests],
                                   additive=_fitted(self.additive, self.name)[tests])

    def save(self, path: str | Path) -> None:
        atomic.savez(path, {
            "kind": np.array("simfluence-point"),
            "variant": np.array(self.variant),
            "multiplicative": _fitted(self.multiplicative, self.name),
            "additive": _fitted(self.additive, self.name),
            "batch_size": np.int64(self.batch_size),
            "ridge": np.float64(self.ridge_selected if self.ridge_selected is not None else np.nan),
            "cv_report": np.array(json.dumps(self.cv_report)),
        })

    @classmethod
    def load(cls, path: Path) -> "SimfluenceLinear":
        with open_archive(path, "simulator file") as archive:
            multiplicative = saved_array(archive, "multiplicative", path, ndim=2)
            additive = saved_array(archive, "additive", path, ndim=2)
            if multiplicative.shape != additive.shape:
                raise InputError(f"{path}: 'multiplicative' {multiplicative.shape} and 'additive' {additive.shape} "
                                 "must both be [tests, n_train]")
            batch = saved_array(archive, "batch_size", path, ndim=0)
            if batch.dtype.kind not in "iu" or int(batch) < 1:
                raise InputError(f"{path}: 'batch_size' must be an integer >= 1, got {batch.item()!r}")
            variant = _saved_text(archive, "variant", path)
            if variant not in ridge_lib.VARIANTS:
                raise InputError(f"{path}: 'variant' is {variant!r}; expected one of {list(ridge_lib.VARIANTS)}")
            ridge = member(archive, "ridge", str(path)) if "ridge" in archive.files else np.float64(np.nan)
            if ridge.ndim != 0 or ridge.dtype.kind != "f" or float(ridge) < 0 or np.isinf(ridge):
                raise InputError(f"{path}: 'ridge' must be one number >= 0 (NaN: not recorded), got {ridge!r}")
            cv_text = _saved_text(archive, "cv_report", path) if "cv_report" in archive.files else "{}"
            try:
                cv_report = json.loads(cv_text)
            except (ValueError, RecursionError) as error:
                raise InputError(f"{path}: 'cv_report' is not valid JSON ({error})") from error
            if not isinstance(cv_report, dict):
                raise InputError(f"{path}: 'cv_report' must be a JSON object, got a {type(cv_report).__name__}")
            return cls(
                variant=variant,
                multiplicative=multiplicative,
                additive=additive,
                batch_size=int(batch),
                ridge_selected=None if np.isnan(ridge) else float(ridge),
                cv_report=cv_report,
            )


def _fitted(value: np.ndarray | None, name: str) -> np.ndarray:
    if value is None:
        raise RuntimeError(f"simulator '{name}' is not fitted: call fit(runs) first")
    return value


def _saved_text(archive: Any, name: str, path: Path) -> str:
    """A text entry (0-d string array) of a saved simulator."""
    if name not in archive.files:
        raise InputError(f"{path}: the simulator file lacks '{name}' (it holds {sorted(archive.files)})")
    value = member(archive, name, str(path))
    if value.ndim != 0 or value.dtype.kind != "U":
        raise InputError(f"{path}: '{name}' must be one text value, got dtype {value.dtype} and shape {value.shape}")
    return str(value)


def saved_array(archive: Any, name: str, path: Path, ndim: int | tuple[int, ...]) -> np.ndarray:
    """Array ``name`` of a saved simulator: present, numeric, ``ndim`` dims (or one of them), finite."""
    if name not in archive.files:
        raise InputError(f"{path}: the simulator file lacks '{name}' (it holds {sorted(archive.files)})")
    value = member(archive, name, str(path))
    allowed = (ndim,) if isinstance(ndim, int) else ndim
    if value.ndim not in allowed or not np.issubdtype(value.dtype, np.number):
        dims = " or ".join(str(n) for n in allowed)
        raise InputError(f"{path}: '{name}' must be a numeric array with {dims} dims, got dtype {value.dtype} "
                         f"and shape {value.shape}")
    if not np.all(np.isfinite(value)):
        raise InputError(f"{path}: '{name}' holds NaN or inf values; refit the simulator")
    return value
