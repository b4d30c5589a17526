"""The settings of every fitting method, typed and documented once.

:class:`Settings` is the single definition: each key is a keyword argument of
:func:`bayes_simfluence.fit` and an ``-o key=value`` option of ``bayes-simfluence fit`` /
``evaluate``; its annotation gives the type (and so the parser of the CLI's strings) and a
:class:`Setting` record, which says which methods read it and what it does. The methods'
registrations (:mod:`bayes_simfluence.methods`, :mod:`bayes_simfluence.bayes.methods`) take
their option names from here, and :func:`bayes_simfluence.bayes.methods.options_markdown` writes
the docs' options reference from it.

This module imports nothing heavy (no JAX), so the CLI's ``--help`` and the docs can read it.
"""

from __future__ import annotations

import typing
from types import UnionType
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypedDict, get_args, get_origin

from bayes_simfluence import validation
from bayes_simfluence.bayes.backends import BACKENDS

BAYES_BACKENDS = tuple(spec.name for spec in BACKENDS.values())
BAYES = ("bayes", *BAYES_BACKENDS)
POINT = ("linear", "additive", "multiplicative")
SCORES = ("tracin", "influence", "influence-cg", "trak")
#: the methods the guard (held-out stacking with the curriculum-blind model) can wrap: all but
#: the blind model itself
STACKABLE = (*BAYES, *POINT, *SCORES)
#: the model's choices (:class:`bayes_simfluence.bayes.model.ModelConfig`), defined here where the
#: CLI can read them without importing JAX: which effects, the per-step noise, the optimiser memory.
VARIANTS = ("linear", "additive", "multiplicative")
LIKELIHOODS = ("normal", "student_t")
MEMORIES = ("none", "geometric")


@dataclass(frozen=True)
class Setting:
    """What one key of :class:`Settings` means.

    Attributes:
        group: ``"model"`` (a field of :class:`~bayes_simfluence.bayes.model.ModelConfig`),
            ``"inference"`` (a keyword of the backend's inference routine), ``"fit"`` (read by
            the fitting procedure around it: guard, progress) or ``"point"`` (a non-Bayesian method's).
        methods: the methods that read it.
        help: what it does, in one or two sentences.
        minimum, maximum: the range of a number; ``open_ends``: whether each end is excluded.
        field: the name of the :class:`ModelConfig` field, where it differs from the key.
        default: the default where the routine's signature or ``ModelConfig`` does not state it.
    """

    group: str
    methods: tuple[str, ...]
    help: str
    minimum: float | None = None
    maximum: float | None = None
    open_ends: tuple[bool, bool] = (False, False)
    field: str | None = None
    default: str | None = None


def _model(help: str, **kwargs: Any) -> Setting:
    return Setting("model", BAYES, help, **kwargs)


def _positive(help: str, **kwargs: Any) -> Setting:
    return _model(help, minimum=0.0, open_ends=(True, False), **kwargs)


class Settings(TypedDict, total=False):
    """Every setting of every method (keyword arguments of :func:`bayes_simfluence.fit`)."""

    # the model, every Bayesian method
    variant: Annotated[Literal[VARIANTS] | Literal["auto"], _model(
        "which effects: both (`linear`), only additive (`a = 0`) or only multiplicative (`B = 0`); `auto` "
        "(`bayes-grid`, `bayes-cg`): `additive` where the guard's held-out runs rank better with it by more than "
        "one standard error, else `linear`")]
    step: Annotated[bool, _model("add the curriculum-independent step change `d[m, t]` (a random walk)",
                                 field="step_component")]
    likelihood: Annotated[Literal[LIKELIHOODS], _model(
        "the per-step noise; `bayes-grid` and `bayes-exact` need `normal`")]
    nu: Annotated[float, _positive("degrees of freedom of the Student-t likelihood")]
    noncentred: Annotated[bool, _model("non-centred effects (default: the backend chooses)")]
    location_prior: Annotated[float, _positive("sd of the Normal prior of the population locations `mu_a`, `mu_B`")]
    common_level: Annotated[bool, _model("learn the common level `mu_a` also with the step component")]
    effect_scale_prior: Annotated[float, _positive("scale of the HalfNormal prior of the effects' scale `s`")]
    noise_prior: Annotated[float, _positive("scale of the HalfNormal prior of the noise scale `sigma`")]
    drift_initial: Annotated[float, _positive("sd of the first step change, in units of `sigma`")]
    drift_smoothness: Annotated[float, _positive("sd of the step-to-step change of `d`, in units of `sigma`")]
    memory: Annotated[Literal[MEMORIES], _model(
        "optimiser memory: a learned geometric decay per test example", default="geometric (none on bayes-exact)")]
    memory_prior: Annotated[float, _positive("`b` of the Beta(1, b) prior of the memory decay")]
    collapse_drift: Annotated[bool, _model("integrate the step component out of the Normal likelihood")]
    run_state: Annotated[bool | Literal["auto"], _model(
        "the shared run state (`bayes-grid`, `bayes-cg`); `auto` keeps it where the guard's held-out runs favour it",
        default="auto")]
    state_prior: Annotated[float, _positive("sd of the prior of the run state's coefficients, in units of `sigma`")]
    features: Annotated[bool | Literal["auto"], _model(
        "regress the effects' prior mean on the runs' `train_features` / `pair_features` (every backend but "
        "`bayes-exact`; `bayes-svi` with its default guide); `auto`: where the runs carry them and the backend "
        "has the feature prior", default="auto")]
    feature_prior: Annotated[float, _positive(
        "sd of the prior of the feature coefficients: on `bayes-grid` / `bayes-cg` on their unit-RMS design "
        "columns in units of `sigma`; on `bayes-svi` / `bayes-nuts` per unit of each standardised feature, in "
        "units of `location_prior`")]
    residual: Annotated[bool | Literal["auto"], _model(
        "each training example's own effect beyond the common level and the feature regression; `false`: "
        "the effects are those two alone (`bayes-grid`, `bayes-cg`); `auto` (with features, the guard and "
        "one of those two, or `bayes` where it runs `bayes-svi`, against `bayes-grid` without them): `false` "
        "where the guard's held-out runs rank better without them by more than one standard error",
        field="residual_effects", default="auto")]
    # inference
    num_draws: Annotated[int, Setting("inference", ("bayes", "bayes-grid", "bayes-cg", "bayes-svi"),
                                      "posterior draws kept", minimum=1)]
    guide: Annotated[Literal["normal", "conditional", "lowrank", "mvn"], Setting(
        "inference", ("bayes", "bayes-svi"), "the SVI guide; `conditional` draws each test example's effects "
        "exactly given its hyperparameters")]
    num_steps: Annotated[int, Setting("inference", ("bayes", "bayes-svi"), "SVI optimisation steps", minimum=1)]
    learning_rate: Annotated[float, Setting("inference", ("bayes", "bayes-svi"), "Adam's initial learning rate",
                                            minimum=0.0, open_ends=(True, False),
                                            default="0.01 (0.03 with the conditional guide)")]
    final_lr_fraction: Annotated[float, Setting("inference", ("bayes", "bayes-svi"),
                                                "the learning rate's final fraction (exponential decay)",
                                                minimum=0.0, maximum=1.0, open_ends=(True, False))]
    rank: Annotated[int, Setting("inference", ("bayes", "bayes-svi"), "rank of the `lowrank` guide", minimum=1,
                                 default="the guide's")]
    precision: Annotated[Literal["float32", "float64"], Setting("inference", ("bayes", "bayes-svi"),
                                                                "SVI's floating-point precision")]
    num_warmup: Annotated[int, Setting("inference", ("bayes-nuts", "bayes-exact"), "NUTS warm-up steps per chain",
                                       minimum=0)]
    num_samples: Annotated[int, Setting("inference", ("bayes-nuts", "bayes-exact"), "NUTS draws kept per chain",
                                        minimum=1)]
    num_chains: Annotated[int, Setting("inference", ("bayes-nuts", "bayes-exact"), "NUTS chains", minimum=1)]
    chain_method: Annotated[Literal["parallel", "sequential", "vectorized"], Setting(
        "inference", ("bayes-nuts", "bayes-exact"), "how NUTS runs its chains", default="NumPyro's choice")]
    target_accept: Annotated[float, Setting("inference", ("bayes-nuts",), "NUTS target acceptance probability",
                                            minimum=0.0, maximum=1.0, open_ends=(True, True))]
    max_tree_depth: Annotated[int, Setting("inference", ("bayes-nuts",), "NUTS maximum tree depth", minimum=1)]
    chunk_size: Annotated[int, Setting("inference", ("bayes-exact",),
                                       "test examples whose statistics are built at once", minimum=1)]
    # the fitting procedure
    progress: Annotated[bool, Setting("fit", BAYES, "progress bars", default="true")]
    guard: Annotated[bool, Setting("fit", STACKABLE, "stack with the curriculum-blind model by held-out-run "
                                   "roll-out error; for a Bayesian method its held-out residuals become a new "
                                   "run's discrepancy", default="true (Bayesian methods), false (the others)")]
    guard_folds: Annotated[int, Setting("fit", STACKABLE, "the guard's folds of the runs", minimum=2, default="4")]
    guard_steps: Annotated[int, Setting("fit", ("bayes", "bayes-svi"), "SVI steps of each of the guard's "
                                        "cross-fits", minimum=1, default="num_steps (as many as the final fit)")]
    guard_workers: Annotated[int, Setting("fit", ("bayes", "bayes-svi"), "the guard's cross-fits run at once",
                                          minimum=1, default="2 where memory allows")]
    # point and score methods
    ridge: Annotated[float, Setting("point", POINT, "ridge strength of the least-squares fit", minimum=0.0,
                                    default="chosen by leave-runs-out cross-validation")]
    ridge_centre: Annotated[Literal["common", "fixed"], Setting(
        "point", POINT, "what the ridge shrinks the effects towards: a common level per test example fitted "
        "without penalty (`common`), or the fixed centre `A = 1/batch`, `B = 0` (`fixed`)",
        default="common (linear, additive), fixed (multiplicative: a free common rate compounds over a roll-out)")]
    scores: Annotated[str, Setting("point", SCORES, "the scores file written by `collect`",
                                   default="RUNS.scores.npz beside the training runs")]
    scale: Annotated[Literal["fitted", "raw"], Setting("point", SCORES, "fit one scale on the runs, or take the "
                                                       "scores' own units", default="fitted")]


def _hints() -> dict[str, Any]:
    return typing.get_type_hints(Settings, include_extras=True)


def setting(key: str) -> Setting:
    """The :class:`Setting` record of ``key``."""
    hint = _hints().get(key)
    if hint is None:
        raise validation.InputError(f"-o {key}: no method reads this option; known: {sorted(_hints())}")
    return hint.__metadata__[0]


def option_names(method: str) -> frozenset[str]:
    """Every setting ``method`` reads."""
    return frozenset(key for key, hint in _hints().items() if method in hint.__metadata__[0].methods)


def _type_of(key: str) -> Any:
    return get_args(_hints()[key])[0]


def _arms(kind: Any) -> tuple[Any, ...]:
    return get_args(kind) if get_origin(kind) in (typing.Union, UnionType) else (kind,)


def choices(key: str) -> tuple[str, ...]:
    """The named values setting ``key`` takes (its ``Literal`` arms; empty for a plain type)."""
    return tuple(c for arm in _arms(_type_of(key)) for c in (get_args(arm) if get_origin(arm) is Literal else ()))


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def parse(key: str, value: Any) -> Any:
    """``value`` of setting ``key`` checked against its type and range; strings (from ``-o``) are
    converted. Errors name the option: ``-o key: expected ..., got ...``."""
    meta, kind, name = setting(key), _type_of(key), f"-o {key}"
    named = choices(key)
    accepts_bool = bool in _arms(kind)
    if isinstance(value, str) and value.strip().lower() in named:  # every named value is lower case
        return value.strip().lower()
    if accepts_bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        expected = "true or false" + "".join(f" or {c}" for c in named)
        raise validation.InputError(f"{name}: expected {expected}, got {value!r}")
    if named:
        raise validation.InputError(f"{name}: expected one of {list(named)}, got {value!r}")
    if kind is str:
        return str(value)
    if kind is int:
        return validation.integer(value, name, minimum=int(meta.minimum) if meta.minimum is not None else None)
    number = validation.number(value, name)
    low, high = meta.minimum, meta.maximum
    low_open, high_open = meta.open_ends
    below = low is not None and (number <= low if low_open else number < low)
    above = high is not None and (number >= high if high_open else number > high)
    if below or above:
        interval = (f"{'>' if low_open else '>='} {low:g}" if high is None else
                    f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}")
        raise validation.InputError(f"{name}: expected a number {interval}, got {number:g}")
    return number



def parse_all(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """Every option of ``options`` parsed; keys ``method`` does not read are refused."""
    known = option_names(method)
    for key in options:
        if key not in known:
            readers = ", ".join(setting(key).methods)  # an unknown key raises there, saying which exist
            raise validation.InputError(f"-o {key}: method '{method}' does not read this option (read by "
                                        f"{readers}); '{method}' reads {sorted(known)}")
    return {key: parse(key, value) for key, value in options.items()}


def type_text(key: str) -> str:
    """The type of setting ``key`` as Markdown: ``int``, or its named values."""
    texts = [" \\| ".join(f"`{c}`" for c in get_args(arm)) if get_origin(arm) is Literal else arm.__name__
             for arm in _arms(_type_of(key))]
    return " \\| ".join(texts)
