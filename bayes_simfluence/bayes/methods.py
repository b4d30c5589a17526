"""Registration of the Bayesian methods (``bayes``, ``bayes-grid``, ``bayes-svi``, ``bayes-nuts``,
``bayes-exact``) and their options.

``bayes`` is the default Bayesian method: it runs ``bayes-grid`` where that costs at most
:data:`AUTO_GRID_FLOPS_PER_TEST` per test example (:func:`default_path`; a few hundred features
per test example), else ``bayes-svi``. ``bayes-grid`` integrates the effects and the step
component out exactly and each test example's hyperparameters on a grid
(:mod:`bayes_simfluence.bayes.grid`): it passes simulation-based calibration on every quantity,
at ``runs * steps * (2 n_train)^2`` operations per (test example, decay value). ``bayes-svi``'s
cost grows with ``runs * steps * batch * tests`` per SVI step: the path for thousands of training
examples; with the guard it is one fit plus ``guard_folds`` cross-fits on 3/4 of the runs
(``benchmarks/results/bench_scale.md`` has the times at ``N=1000, T=1000, R=16, M=64``).
``bayes-exact`` is exact without optimiser memory (one ``2 n_train``-square eigendecomposition
per test example, NUTS on the hyperparameters); ``bayes-nuts`` samples the full model and is for
small problems and checks.

Options (``--option key=value``; values may arrive as strings, numbers or booleans):

- model, every method: ``variant`` (linear | additive | multiplicative), ``step`` (step
  component, default true), ``likelihood`` (normal | student_t; not for bayes-exact), ``nu``,
  ``noncentred``, ``location_prior``, ``effect_scale_prior``, ``noise_prior``,
  ``drift_initial``, ``drift_smoothness``, ``memory`` (none | geometric: optimiser memory; default
  geometric for bayes, bayes-grid, bayes-svi and bayes-nuts, none and the only choice for bayes-exact),
  ``memory_prior``, ``collapse_drift`` (default true: the step component integrated out of the
  Normal likelihood and drawn exactly afterwards), ``run_state`` (true | false | auto; bayes-grid
  only: the shared run state of :mod:`bayes_simfluence.bayes.run_state`; default auto, on wherever
  bayes-grid runs with its guard and the guard's held-out runs favour it, :func:`resolve_run_state`,
  :func:`state_check`) and ``state_prior``
  (default 0.3, the best of 0.1-10 by the guard's cross-fitted roll-out error on both real sets of the
  retraining study, `experiments/state_prior.py`); ``progress`` (progress bars, default true); ``guard`` (default true: stack
  with the curriculum-blind model by held-out-run roll-out error, :mod:`bayes_simfluence.bayes.guard`;
  costs ``guard_folds`` extra fits on 3/4 of the runs) and ``guard_folds`` (default 4); with
  bayes-svi, ``guard_steps`` (SVI steps of each cross-fit; default ``num_steps / 4``, as they start
  from the full fit's hyperparameters, :data:`GUARD_STEP_FRACTION`) and ``guard_workers``
  (cross-fits at once; default 2 where memory allows, :data:`GUARD_WORKERS`).
- bayes-svi: ``guide`` (normal | lowrank | mvn | conditional; default normal; conditional draws
  each test example's effects given its hyperparameters, :mod:`bayes_simfluence.bayes.guide`),
  ``num_steps``, ``learning_rate`` (default 0.01; 0.03 for conditional),
  ``final_lr_fraction``, ``num_draws``, ``rank``, ``precision`` (float32 | float64, default
  float32: as accurate here, half the time; NUTS and the exact path always use float64).
- bayes-nuts: ``num_warmup``, ``num_samples``, ``num_chains``, ``chain_method``,
  ``target_accept``, ``max_tree_depth``.
- bayes-exact: ``num_warmup``, ``num_samples``, ``num_chains``, ``chain_method``, ``chunk_size``.
- bayes-grid and bayes: ``num_draws`` (default 200); the model options (``memory`` default
  geometric; bayes-grid needs the Normal likelihood and the step component, and ``bayes`` runs
  bayes-svi without them), ``progress``, ``guard``, ``guard_folds``.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any, Callable

import numpy as np

from bayes_simfluence import budget, validation
from bayes_simfluence.bayes import grid, guard, inference, run_state
from bayes_simfluence.bayes.data import model_data
from bayes_simfluence.bayes.posterior_io import KIND, is_posterior_file
from bayes_simfluence.bayes.model import ModelConfig
from bayes_simfluence.bayes.posterior import MEAN_DRAWS, BayesianSimfluence
from bayes_simfluence.bayes.run_state import StateTrajectory
from bayes_simfluence.methods import FitContext, register_loader, register_method, register_sniffer
from bayes_simfluence.runs import Runs
from bayes_simfluence.simulators import MeanTrajectory

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"option {key}: expected true or false, got {value!r}")


def state_flag(value: Any, key: str = "run_state") -> bool | str:
    """``-o run_state``: a boolean, or ``"auto"`` (:func:`resolve_run_state`)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        return _bool(value, key)
    except ValueError:
        raise validation.InputError(f"-o {key}: expected true, false or auto, got {value!r}") from None


def _integer(minimum: int) -> Callable[[Any, str], int]:
    return lambda value, key: validation.integer(value, f"-o {key}", minimum=minimum)


def _float(value: Any, key: str) -> float:
    return validation.number(value, f"-o {key}")


def _text(value: Any, key: str) -> str:
    return str(value)


def _range(low: float, high: float, low_open: bool = True, high_open: bool = False) -> Callable[[Any, str], float]:
    """A number in ``(low, high]`` (or with the ends ``low_open`` / ``high_open`` as given)."""
    def parse(value: Any, key: str) -> float:
        number = validation.number(value, f"-o {key}")
        if (number <= low if low_open else number < low) or (number >= high if high_open else number > high):
            interval = (f"> {low:g}" if high == float("inf") else
                        f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}")
            raise validation.InputError(f"-o {key}: expected a number {interval}, got {number:g}")
        return number
    return parse


def _choice(choices: Any) -> Callable[[Any, str], str]:
    def parse(value: Any, key: str) -> str:
        if not isinstance(value, str) or value not in choices:
            raise validation.InputError(f"-o {key}: expected one of {sorted(choices)}, got {value!r}")
        return value
    return parse


def _chain_method(value: Any, key: str) -> str:
    from bayes_simfluence.bayes.hyper_nuts import CHAIN_METHODS

    return _choice(CHAIN_METHODS)(value, key)


MODEL_OPTIONS: dict[str, tuple[str, Callable[[Any, str], Any]]] = {
    "variant": ("variant", _text), "step": ("step_component", _bool), "likelihood": ("likelihood", _text),
    "nu": ("nu", _float), "noncentred": ("noncentred", _bool),
    "location_prior": ("location_prior", _float), "common_level": ("common_level", _bool),
    "effect_scale_prior": ("effect_scale_prior", _float),
    "noise_prior": ("noise_prior", _float), "drift_initial": ("drift_initial", _float),
    "drift_smoothness": ("drift_smoothness", _float), "memory": ("memory", _text),
    "memory_prior": ("memory_prior", _float), "collapse_drift": ("collapse_drift", _bool),
    "run_state": ("run_state", state_flag), "state_prior": ("state_prior", _float),
}
CHAIN_OPTIONS = {"num_warmup": _integer(0), "num_samples": _integer(1), "num_chains": _integer(1),
                 "chain_method": _chain_method}
INFERENCE_OPTIONS: dict[str, dict[str, Callable[[Any, str], Any]]] = {
    "svi": {"guide": _choice(inference.GUIDES), "num_steps": _integer(1), "learning_rate": _range(0, float("inf")),
            "final_lr_fraction": _range(0, 1), "num_draws": _integer(1), "rank": _integer(1),
            "precision": _choice(inference.PRECISIONS)},
    "nuts": {**CHAIN_OPTIONS, "target_accept": _range(0, 1, high_open=True), "max_tree_depth": _integer(1)},
    "exact": {**CHAIN_OPTIONS, "chunk_size": _integer(1)},
    "grid": {"num_draws": _integer(1)},
}
RUNNERS = {"svi": inference.run_svi, "nuts": inference.run_nuts, "exact": inference.run_exact, "grid": grid.run_grid}


GUARD_OPTIONS = ("guard", "guard_folds")
#: ``-o run_state=auto`` keeps the run state where the guard's held-out runs favour it by more than
#: this many standard errors (:func:`state_check`)
STATE_CHECK_SDS = 2.0
#: ``-m bayes`` runs bayes-grid up to this many multiply-adds per test example (about 3 s on two
#: CPU cores; the retraining study's sets take 2e9), bayes-svi above
AUTO_GRID_FLOPS_PER_TEST = 1e10
#: bayes-svi's cross-fits start from the full fit's hyperparameters and take this fraction of its
#: steps (option ``guard_steps``); measured in :mod:`bayes_simfluence.bayes.guard`'s docstring.
GUARD_STEP_FRACTION = 0.25
#: bayes-svi's cross-fits run this many at once (option ``guard_workers``; threads: a fit keeps
#: about 1.5 of 2 CPU cores busy, and two at once took the guard from 124 s to 101 s at
#: ``N=T=1000, R=16, M=64`` with the same numbers). Two cross-fits hold twice the memory of one,
#: so by default they run at once only while their arrays take at most half the free memory.
#: NUTS and the exact path trace their programs per fit, so they cross-fit one at a time.
GUARD_WORKERS = 2
#: model settings whose default depends on the method: optimiser memory where the inference can
#: take it (it beat plain Simfluence in held-out MSE and LDS on every real set, README), none on
#: the exact path (its features would be dense).
METHOD_MODEL_DEFAULTS: dict[str, dict[str, Any]] = {"svi": {"memory": "geometric"},
                                                     "nuts": {"memory": "geometric"}, "exact": {},
                                                     "grid": {"memory": "geometric"}}


def option_names(method: str) -> frozenset[str]:
    """Every ``-o`` key ``bayes-<method>`` reads."""
    guard_options = {*GUARD_OPTIONS, "guard_steps", "guard_workers"} if method == "svi" else set(GUARD_OPTIONS)
    return frozenset(MODEL_OPTIONS) | frozenset(INFERENCE_OPTIONS[method]) | {"progress", *guard_options}


def parse_options(options: dict[str, Any], method: str) -> tuple[ModelConfig, dict[str, Any]]:
    """``(model config, keyword arguments of the inference routine)`` from user options.

    Unknown keys are refused (:class:`~bayes_simfluence.validation.InputError`).
    """
    model_kwargs, run_kwargs = dict(METHOD_MODEL_DEFAULTS[method]), {"progress": True}
    known = INFERENCE_OPTIONS[method]
    for key, value in options.items():
        if key in MODEL_OPTIONS:
            field, parse = MODEL_OPTIONS[key]
            model_kwargs[field] = parse(value, key)
        elif key in known:
            run_kwargs[key] = known[key](value, key)
        elif key == "progress":
            run_kwargs["progress"] = _bool(value, key)
        else:
            raise validation.InputError(f"-o {key}: bayes-{method} does not read this option; it reads "
                                        f"{sorted(option_names(method))}")
    if model_kwargs.get("run_state") == "auto":  # resolved by fit_bayes, which sees the runs
        del model_kwargs["run_state"]
    if model_kwargs.get("run_state") and method != "grid":
        raise validation.InputError(f"-o run_state=true: only bayes-grid (and bayes where it runs bayes-grid) "
                                    f"has the run state, not bayes-{method}")
    try:
        return ModelConfig(**model_kwargs), run_kwargs
    except ValueError as error:  # ModelConfig names its field; users wrote the option's key
        field = str(error).split(" ", 1)[0]
        key = next((k for k, (name, _) in MODEL_OPTIONS.items() if name == field), field)
        raise validation.InputError(f"-o {key}: {error}") from error


def resolve_run_state(method: str, train: Runs, value: Any, use_guard: bool, folds: int) -> tuple[bool, str | None]:
    """Whether a fit has the run state, and why not where ``auto`` turned it off.

    ``auto`` (the default) turns it on where bayes-grid runs with its guard (at least ``folds *``
    :data:`~bayes_simfluence.bayes.guard.MIN_RUNS_PER_FOLD` runs): there the guard stacks the full
    model against the state-only one, and over four disjoint fit windows of both real sets of the
    retraining study the state met every calibration target on average, where the model without it
    missed the MLP's Brier score and ordering (README, calibration against real retraining).
    :func:`fit_bayes` then keeps it only where the guard's held-out runs favour it
    (:func:`state_check`). Elsewhere (bayes-svi, -nuts, -exact, no guard, too few runs) it is off, and the reason is returned.
    """
    value = state_flag(value, "run_state")
    if value != "auto":
        return value, None
    if method != "grid":
        return False, f"bayes-{method} has no run state"
    if not use_guard:
        return False, "no guard: -o guard=false"
    if train.n_runs < folds * guard.MIN_RUNS_PER_FOLD:
        return False, f"{train.n_runs} runs, fewer than the guard needs ({folds * guard.MIN_RUNS_PER_FOLD})"
    return True, None


def fit_bayes(method: str, train: Runs, options: dict[str, Any], seed: int = 0) -> BayesianSimfluence:
    """Fit the Bayesian model on ``train`` with ``method`` in ``{"svi", "nuts", "exact", "grid"}``.

    With the guard (option ``guard``, default on) the same fit is first cross-fitted on
    ``guard_folds`` folds of the runs, and the posterior is stacked with the curriculum-blind
    model by held-out-run roll-out error (:mod:`bayes_simfluence.bayes.guard`); ``info["guard"]``
    reports both models' held-out MSE and the weights. The held-out residuals of the stacked
    prediction become the posterior's run discrepancy (its new-run predictive,
    :mod:`bayes_simfluence.bayes.discrepancy`).

    With bayes-svi's default guide the cross-fits start from the full fit's hyperparameters
    (:func:`~bayes_simfluence.bayes.inference.cross_fit_start`; the effects start afresh) and take
    ``guard_steps`` steps (default a quarter of ``num_steps``, :data:`GUARD_STEP_FRACTION`; all of
    them for the other guides, which cannot start part-way).
    """
    options = dict(options)
    use_guard = _bool(options.pop("guard", True), "guard")
    folds = _integer(2)(options.pop("guard_folds", guard.FOLDS), "guard_folds")
    guard_steps, workers = options.pop("guard_steps", None), options.pop("guard_workers", None)
    for key, value in (("guard_steps", guard_steps), ("guard_workers", workers)):
        if value is not None and method != "svi":
            raise validation.InputError(f"-o {key}: only bayes-svi reads it (got bayes-{method})")
    guard_steps = None if guard_steps is None else _integer(1)(guard_steps, "guard_steps")
    workers = None if workers is None else _integer(1)(workers, "guard_workers")
    requested = state_flag(options.get("run_state", "auto"))
    options["run_state"], state_off = resolve_run_state(method, train, requested, use_guard, folds)
    check = None
    if requested == "auto" and options["run_state"]:  # bayes-grid with its guard: kept where held-out runs favour it
        plain_options = {**options, "run_state": False}  # (grid cross-fits start afresh: no full fit needed first)
        stacking = _guard(method, train, options, seed, None, folds, guard_steps, workers)
        plain = _guard(method, train, plain_options, seed, None, folds, guard_steps, workers)
        check = state_check(stacking, plain)
        if not check["kept"]:
            options, stacking, state_off = plain_options, plain, check["reason"]
        posterior, result = _fit_once(method, train, options, seed)
    else:
        posterior, result = _fit_once(method, train, options, seed)
        stacking = _guard(method, train, options, seed, result, folds, guard_steps, workers) if use_guard else None
    if check is not None:
        posterior.info["run_state_check"] = check
    if state_off is not None:
        posterior.info["run_state_off"] = state_off
    if stacking is None:
        return posterior
    posterior.info["guard"] = stacking.report
    if "skipped" not in stacking.report:
        posterior.stacking_weight = stacking.weight
        posterior.blind_mean = MeanTrajectory().fit(train).mean_losses
        posterior.run_residuals = stacking.residuals
        if options["run_state"]:
            alternative = _state_only(train, posterior)
            posterior.blind_state, posterior.blind_center = alternative.coefficients, alternative.center
    return posterior


def state_check(with_state: guard.Stacking, without: guard.Stacking, sds: float = STATE_CHECK_SDS) -> dict[str, Any]:
    """Whether the run state earns its place: the guard's stacked held-out predictions with and
    without it, compared run by run (``residuals [runs, steps, tests]`` of both stackings). Kept
    where the mean over held-out runs of (all-steps MSE without - with) exceeds ``sds`` standard
    errors of that mean: the state is a plug-in feature built from the same runs (its direction
    from their ridge effects), so where it brings nothing measurable it can still move
    attributions (on runs without a shared state it pulled per-example effects along its
    direction, ``experiments/results/common_level.md``)."""
    per_run = [(stacking.residuals**2).mean(axis=(1, 2)) for stacking in (with_state, without)]
    gain = per_run[1] - per_run[0]
    error = float(gain.std(ddof=1) / np.sqrt(len(gain)))
    kept = bool(gain.mean() > sds * error)
    check = {"heldout_mse_with_state": float(per_run[0].mean()), "heldout_mse_without": float(per_run[1].mean()),
             "gain": float(gain.mean()), "gain_se": error, "runs": len(gain), "kept": kept}
    if not kept:
        check["reason"] = (f"auto: the guard's held-out runs do not say it helps (stacked all-steps MSE "
                           f"{check['heldout_mse_with_state']:.4g} with it, {check['heldout_mse_without']:.4g} without; "
                           f"gain {check['gain']:.2g} +- {error:.2g} over {len(gain)} runs, under {sds:g} standard errors)")
    return check


def _guard(method: str, train: Runs, options: dict[str, Any], seed: int, result: inference.FitResult | None,
           folds: int, guard_steps: int | None, workers: int | None) -> guard.Stacking:
    """The guard's cross-fits of ``method`` with ``options`` over ``folds`` folds of ``train``, and
    the stacking weights against the curriculum-blind model (the state-only one with the run
    state); ``result``: the full fit, where bayes-svi's cross-fits start (the other methods' start
    afresh: None)."""
    quiet, warm = {**options, "progress": False}, None
    if method == "svi":  # the cross-fits are only rolled out by their posterior mean
        settings = _fit_settings(method, parse_options(options, method)[1])
        quiet["num_draws"] = min(settings["num_draws"], MEAN_DRAWS)
        warm = inference.cross_fit_start(result)
        steps = round(GUARD_STEP_FRACTION * settings["num_steps"]) if warm else settings["num_steps"]
        quiet["num_steps"] = guard_steps or max(1, steps)
        if workers is None:
            fold_bytes = _fit_bytes(train, quiet["num_draws"])
            workers = GUARD_WORKERS if GUARD_WORKERS * fold_bytes <= 0.5 * budget.available_memory() else 1
    elif method == "grid":
        quiet["num_draws"] = min(_fit_settings(method, parse_options(options, method)[1])["num_draws"], MEAN_DRAWS)

    def cross_fit(runs: Runs) -> BayesianSimfluence:
        return _fit_once(method, runs, quiet, seed, warm_start=warm)[0]

    config = parse_options(options, method)[0]
    blind = {"blind": _state_only, "blind_name": "state-only (the mean trajectory plus the run state)"} \
        if config.run_state else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the folds' own convergence notes; the full fit has warned already
        return guard.stack_against_blind(cross_fit, train, folds, workers=workers or 1,
                                         progress=_bool(options.get("progress", True), "progress"), **blind)


def _state_only(runs: Runs, fitted: BayesianSimfluence) -> StateTrajectory:
    """The guard's alternative with the run state, on ``runs``: the state-only model with the run state
    ``fitted`` estimated from the same runs (reused, not estimated a second time)."""
    return StateTrajectory(fitted.run_state).fit(runs)


def _fit_settings(method: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Every keyword of the inference routine: the parsed options ``kwargs`` over its defaults."""
    defaults = {name: parameter.default for name, parameter in inspect.signature(RUNNERS[method]).parameters.items()}
    return {**defaults, **kwargs}


def _fit_bytes(train: Runs, stored: int) -> int:
    """Bytes of a fit's main arrays on ``train`` with ``stored`` draws (effects and working copies)."""
    return 8 * train.n_tests * train.n_train * (2 * stored + 16)


def _fit_once(method: str, train: Runs, options: dict[str, Any], seed: int,
              warm_start: dict[str, np.ndarray] | None = None
              ) -> tuple[BayesianSimfluence, inference.FitResult]:
    """One fit: ``(posterior, the inference routine's result)``; ``warm_start``: SVI only."""
    config, kwargs = parse_options(options, method)
    settings = _fit_settings(method, kwargs)
    stored = settings["num_draws"] if method in ("svi", "grid") else settings["num_samples"] * settings["num_chains"]
    budget.check(_fit_bytes(train, stored),
                            f"bayes-{method} on {train.n_tests} test x {train.n_train} training examples "
                            f"({stored} stored draws)", "n_train is the size of the pool the indices refer to")
    data = model_data(train)
    if warm_start is not None:
        kwargs["warm_start"] = warm_start
    state = run_state.estimate_run_state(train, data.scale) if config.run_state else None
    if state is not None:
        kwargs["state"] = state
    result = RUNNERS[method](data, config, seed=seed, **kwargs)
    return BayesianSimfluence.from_fit(result, data, train, config, state), result


def default_path(train: Runs, options: dict[str, Any]) -> tuple[str, str]:
    """The inference ``-m bayes`` runs, and why: ``"grid"`` (calibrated in simulation-based
    calibration) where the model allows it (Normal likelihood, step component) and it costs at
    most :data:`AUTO_GRID_FLOPS_PER_TEST` per test example, else ``"svi"``. The choice depends on
    the runs' shape, not on the number of test examples, so blocks of test examples choose alike."""
    config, kwargs = parse_options({k: v for k, v in options.items() if k not in GUARD_OPTIONS}, "grid")
    cost = grid.grid_cost(train.n_train, train.n_runs * train.n_steps, config,
                          kwargs.get("num_draws", _fit_settings("grid", {})["num_draws"]))
    if config.likelihood != "normal":
        reason = f"bayes-grid needs the Normal likelihood, not {config.likelihood}"
    elif not config.step_component:
        reason = "bayes-grid needs the step component"
    elif cost > AUTO_GRID_FLOPS_PER_TEST:
        reason = f"bayes-grid would cost {cost:.1e} multiply-adds per test example, over {AUTO_GRID_FLOPS_PER_TEST:.0e}"
    else:
        return "grid", f"{cost:.1e} multiply-adds per test example, at most {AUTO_GRID_FLOPS_PER_TEST:.0e}"
    if config.run_state:
        raise validation.InputError(f"-o run_state=true: the run state needs bayes-grid, and bayes would run "
                                    f"bayes-svi here ({reason})")
    return "svi", reason


def _fit_default(train: Runs, context: FitContext) -> BayesianSimfluence:
    method, reason = default_path(train, context.options)
    posterior = fit_bayes(method, train, context.options, seed=context.seed)
    posterior.info["chosen_by"] = f"bayes: {reason}"
    return posterior


def _factory(method: str) -> Callable[[Runs, FitContext], BayesianSimfluence]:
    def factory(train: Runs, context: FitContext) -> BayesianSimfluence:
        return fit_bayes(method, train, context.options, seed=context.seed)

    return factory


for _method in RUNNERS:
    register_method(f"bayes-{_method}", options=option_names(_method))(_factory(_method))
register_method("bayes", options=option_names("grid"))(_fit_default)
register_loader(KIND, BayesianSimfluence.load)
register_sniffer(KIND, is_posterior_file)
