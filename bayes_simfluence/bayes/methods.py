"""Registration of the Bayesian methods (``bayes``, ``bayes-grid``, ``bayes-cg``, ``bayes-svi``,
``bayes-nuts``, ``bayes-exact``) and their options.

``bayes`` is the default Bayesian method: it runs ``bayes-grid`` where that costs at most
:data:`AUTO_GRID_FLOPS_PER_TEST` per test example (:func:`default_path`; a few hundred features
per test example), else ``bayes-svi``. ``bayes-grid`` integrates the effects and the step
component out exactly and each test example's hyperparameters on a grid
(:mod:`bayes_simfluence.bayes.grid`): it passes simulation-based calibration on every quantity,
at ``runs * steps * (2 n_train)^2`` operations per (test example, decay value). ``bayes-svi``'s
cost grows with ``runs * steps * batch * tests`` per SVI step: the path for thousands of training
examples; with the guard it is one fit plus ``guard_folds`` cross-fits on 3/4 of the runs
(``benchmarks/results/bench_scale.md`` has the times at ``N=1000, T=1000, R=16, M=64``).
``bayes-cg`` fits ``bayes-grid``'s model over the same grid matrix-free
(:mod:`bayes_simfluence.bayes.krylov`: Lanczos evidence, perturb-and-MAP draws), at
``runs * steps * batch`` per product with the design instead of dense Gram matrices; ``bayes``
runs it where ``bayes-grid`` costs too much and it costs at most :data:`AUTO_CG_ROWS_PER_TEST`. ``bayes-exact`` is exact without optimiser memory (one ``2 n_train``-square eigendecomposition
per test example, NUTS on the hyperparameters); ``bayes-nuts`` samples the full model and is for
small problems and checks.

Options (``-o key=value`` on the CLI, keywords of :func:`bayes_simfluence.fit` in Python) are
defined, typed and documented once, in :class:`bayes_simfluence.settings.Settings`;
:func:`options_markdown` writes their reference with the defaults in force. ``bayes`` reads the
settings of both paths it may take and lists those the chosen one does not read
(``info["unused_options"]``).
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any, Callable

import numpy as np

from bayes_simfluence import budget, run_kind, settings, validation
from bayes_simfluence.bayes import backends, grid, guard, inference, krylov, run_state
from bayes_simfluence.bayes.data import model_data
from bayes_simfluence.bayes.discrepancy import without_parameter_error
from bayes_simfluence.bayes.posterior_io import KIND, is_posterior_file
from bayes_simfluence.bayes.model import ModelConfig
from bayes_simfluence.bayes.posterior import MEAN_DRAWS, BayesianSimfluence
from bayes_simfluence.bayes.run_state import StateTrajectory
from bayes_simfluence.curricula import runs_per_example, unused_examples
from bayes_simfluence.methods import FitContext, register_loader, register_method, register_sniffer
from bayes_simfluence.metrics import rank_correlations
from bayes_simfluence.runs import Runs
from bayes_simfluence.simulators import MeanTrajectory

def state_flag(value: Any, key: str = "run_state") -> bool | str:
    """``-o run_state``: a boolean, or ``"auto"`` (:func:`resolve_run_state`)."""
    return settings.parse(key, value)


#: each backend's inference routine, as :data:`~bayes_simfluence.bayes.backends.BACKENDS` declares it
RUNNERS = {key: backends.runner(key) for key in backends.BACKENDS}


#: the backends that integrate the hyperparameters on a grid (the run state is theirs; the guard's
#: cross-fits are full fits, rolled out by their posterior mean)
GRID_METHODS = ("grid", "cg")
#: ``-o run_state=auto`` keeps the run state where the guard's held-out runs favour it by more than
#: this many standard errors (:func:`state_check`)
STATE_CHECK_SDS = 2.0
#: ``-m bayes`` runs bayes-grid up to this many multiply-adds per test example (about 3 s on two
#: CPU cores; the retraining study's sets take 2e9), bayes-svi above
AUTO_GRID_FLOPS_PER_TEST = 1e10
#: above that, ``-m bayes`` runs bayes-cg (the same model and grid, matrix-free) up to this many
#: row-products per test example (:func:`~bayes_simfluence.bayes.krylov.krylov_cost`: the scale
#: study's 40 runs of 120 steps take 1.8e8, ``experiments/results/scale_study.md``), bayes-svi above
AUTO_CG_ROWS_PER_TEST = 2e8
#: bayes-svi's cross-fits start from the full fit's hyperparameters and take this fraction of its
#: steps (option ``guard_steps``): all of them, so that the held-out residuals, which set a new
#: run's discrepancy, come from fits as converged as the one users get (fewer steps left the
#: cross-fits worse than the final fit and every new-run interval too wide;
#: ``experiments/results/cross_fit_quality.md``).
GUARD_STEP_FRACTION = 1.0
#: bayes-svi's cross-fits run this many at once (option ``guard_workers``; threads: a fit keeps
#: about 1.5 of 2 CPU cores busy, and two at once took the guard from 124 s to 101 s at
#: ``N=T=1000, R=16, M=64`` with the same numbers), the first two included: each traces its
#: programs under :data:`~bayes_simfluence.bayes.inference.TRACING` while the other computes. Two
#: cross-fits hold twice the memory of one, so by default they run at once only while their arrays
#: take at most half the free memory. NUTS and the exact path trace their programs per fit outside
#: that lock, so they cross-fit one at a time.
GUARD_WORKERS = 2
#: the variants ``-o variant=auto`` chooses between (:func:`variant_check`), the default first
AUTO_VARIANTS = ("linear", "additive")
#: ``-o variant=auto`` leaves the default where no other variant's held-out LDS is higher by more
#: than this many standard errors, from this many bootstrap resamples of the held-out runs
VARIANT_CHECK_SDS, VARIANT_CHECK_RESAMPLES = 1.0, 200
#: runs without features: below this median share of runs per training example, ``fit`` suggests
#: them (in the scale study each example of 1,000 was in about half of the runs, of 5,000 in a tenth;
#: features made decisions informative at both under Adam, docs/results/calibration.md)
FEW_RUNS_SHARE = 0.5
#: model settings whose default depends on the method: optimiser memory where the inference can
#: take it (it beat plain Simfluence in held-out MSE and LDS on every real set, README), none on
#: the exact path (its features would be dense).
METHOD_MODEL_DEFAULTS: dict[str, dict[str, Any]] = {key: {"memory": spec.default_memory}
                                                     for key, spec in backends.BACKENDS.items()}


def parse_options(options: dict[str, Any], method: str) -> tuple[ModelConfig, dict[str, Any]]:
    """``(model config, keyword arguments of the inference routine)`` from user options, which are
    checked against :class:`~bayes_simfluence.settings.Settings` (keys ``bayes-<method>`` does not
    read are refused) and parsed: :func:`split_options` of the parsed options."""
    return split_options(settings.parse_all(f"bayes-{method}", options), method)


def split_options(parsed: dict[str, Any], method: str) -> tuple[ModelConfig, dict[str, Any]]:
    """``(model config, keyword arguments of the inference routine)`` from options already parsed
    (:func:`~bayes_simfluence.settings.parse_all`; the fits pass theirs on without parsing them
    again). The fitting procedure's own (group ``"fit"``, the guard's) are left to :func:`fit_bayes`,
    except ``progress``, which the inference routine reads too."""
    model_kwargs, run_kwargs = dict(METHOD_MODEL_DEFAULTS[method]), {"progress": True}
    for key, value in parsed.items():
        meta = settings.setting(key)
        if meta.group == "model":
            model_kwargs[meta.field or key] = value
        elif meta.group == "inference" or key == "progress":
            run_kwargs[key] = value
    for key in ("run_state", "features", "variant", "residual_effects"):  # "auto": resolved by fit_bayes
        if model_kwargs.get(key) == "auto":
            del model_kwargs[key]
    try:
        return ModelConfig(**model_kwargs), run_kwargs
    except ValueError as error:  # ModelConfig names its field; users wrote the option's key
        field = str(error).split(" ", 1)[0]
        key = next((k for k in parsed if settings.setting(k).field == field), field)
        raise validation.InputError(f"-o {key}: {error}") from error


def why_no_guard(train: Runs, use_guard: bool, folds: int) -> str | None:
    """Why the guard's cross-fits cannot run on ``train`` (switched off, or fewer runs than ``folds *``
    :data:`~bayes_simfluence.bayes.guard.MIN_RUNS_PER_FOLD`); None where they can. What the run
    state and ``variant=auto`` report when they fall back for want of it."""
    if not use_guard:
        return "no guard: -o guard=false"
    if train.n_runs < folds * guard.MIN_RUNS_PER_FOLD:
        return f"{train.n_runs} runs, fewer than the guard needs ({folds * guard.MIN_RUNS_PER_FOLD})"
    return None


def resolve_run_state(method: str, train: Runs, value: Any, use_guard: bool, folds: int) -> tuple[bool, str | None]:
    """Whether a fit has the run state, and why not where ``auto`` turned it off.

    ``auto`` (the default) turns it on where bayes-grid or bayes-cg runs with its guard (at least ``folds *``
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
    if method not in GRID_METHODS:
        return False, f"bayes-{method} has no run state"
    no_guard = why_no_guard(train, use_guard, folds)
    if no_guard is not None:
        return False, no_guard
    cross_fit_runs = train.n_runs - -(-train.n_runs // folds)  # the largest fold held out
    if cross_fit_runs < run_state.MIN_RUNS:
        return False, (f"the guard's cross-fits see {cross_fit_runs} runs, fewer than the run state needs "
                       f"({run_state.MIN_RUNS})")
    return True, None


def resolve_features(method: str, train: Runs, value: Any, guide: str | None = None) -> tuple[bool, str | None]:
    """Whether a fit has the feature prior (:mod:`~bayes_simfluence.bayes.features`), and why not where
    ``auto`` (the default) turned it off: ``auto`` turns it on where the runs carry features and the
    backend (and SVI's ``guide``) fits the feature prior."""
    if value != "auto":
        return bool(value), None
    if train.n_features == 0:
        share = float(np.median(runs_per_example(train.curricula, train.n_train))) / train.n_runs
        if share < FEW_RUNS_SHARE:
            return False, (f"the runs carry no features, and the median training example is in {share:.0%} of "
                           "them, too few to identify its own effect: attach features (`bayes-simfluence "
                           "features`) so that examples borrow strength")
        return False, None
    if not backends.BACKENDS[method].features:
        return False, f"bayes-{method} has no feature prior ({backends.those_with('features')} have)"
    if guide == "conditional":
        return False, "bayes-svi's conditional guide has no feature prior (its default guide has)"
    return True, None


def resolve_variant(method: str, train: Runs, value: Any, use_guard: bool, folds: int) -> tuple[str | None, str | None]:
    """``(variant, why auto fell back to linear)``: the variant where it is named or where ``auto`` cannot
    choose; ``(None, None)`` where the guard's cross-fits choose it (:func:`variant_check`): ``auto`` on
    bayes-grid and bayes-cg (whose cross-fits start afresh) with the guard and enough runs for it."""
    if value != "auto":
        return value, None
    if method not in GRID_METHODS:
        return "linear", f"bayes-{method}: -o variant=auto needs the guard's cross-fits of bayes-grid or bayes-cg"
    no_guard = why_no_guard(train, use_guard, folds)
    return ("linear", no_guard) if no_guard is not None else (None, None)


def resolve_residual(method: str, value: Any, features: bool, use_guard: bool, train: Runs,
                     folds: int) -> tuple[bool | None, str | None]:
    """``(residual effects, why auto kept them)``: the value where it is named or where ``auto`` (the
    default) cannot choose; ``(None, None)`` where the guard's cross-fits choose (:func:`ranking_check`):
    ``auto`` with the feature prior on bayes-grid or bayes-cg, with the guard and enough runs for it.
    Without features the model without residuals has only the common level, and ``auto`` keeps them."""
    if value != "auto":
        return bool(value), None
    if not features:
        return True, "no feature prior: without residual effects only the common level would be left"
    if method not in GRID_METHODS:
        return True, (f"bayes-{method} fits only the model with residual effects; -o residual=false fits the "
                      "model without them on bayes-grid at any pool")
    no_guard = why_no_guard(train, use_guard, folds)
    return (True, no_guard) if no_guard is not None else (None, None)


def fit_bayes(method: str, train: Runs, options: dict[str, Any], seed: int = 0) -> BayesianSimfluence:
    """Fit the Bayesian model on ``train`` with ``method`` in ``{"svi", "nuts", "exact", "grid", "cg"}``.

    With the guard (option ``guard``, default on) the same fit is first cross-fitted on
    ``guard_folds`` folds of the runs, and the posterior is stacked with the curriculum-blind
    model by held-out-run roll-out error (:mod:`bayes_simfluence.bayes.guard`); ``info["guard"]``
    reports both models' held-out MSE and the weights. The held-out residuals of the stacked
    prediction become the posterior's run discrepancy (its new-run predictive,
    :mod:`bayes_simfluence.bayes.discrepancy`).

    With bayes-svi's default guide the cross-fits start from the full fit's hyperparameters
    (:func:`~bayes_simfluence.bayes.inference.cross_fit_start`; the effects start afresh) and take
    ``guard_steps`` steps (default as many as the full fit, :data:`GUARD_STEP_FRACTION`: the held-out
    residuals must come from fits as good as the final one; all of them for the other guides too). ``options`` are parsed here, once
    (:func:`~bayes_simfluence.settings.parse_all`).
    """
    return _fit_parsed(method, train, settings.parse_all(f"bayes-{method}", options), seed)


def _fit_parsed(method: str, train: Runs, parsed: dict[str, Any], seed: int) -> BayesianSimfluence:
    """:func:`fit_bayes` with ``parsed`` options (:func:`~bayes_simfluence.settings.parse_all`)."""
    return _fit_guarded(method, train, parsed, seed)[0]


def _fit_guarded(method: str, train: Runs, parsed: dict[str, Any], seed: int
                 ) -> tuple[BayesianSimfluence, guard.Stacking | None]:
    """:func:`_fit_parsed`, and the guard's stacking of the model it fitted (None without the guard)."""
    options = dict(parsed)
    use_guard, folds = options.pop("guard", True), options.pop("guard_folds", guard.FOLDS)
    guard_steps, workers = options.pop("guard_steps", None), options.pop("guard_workers", None)
    requested = options.get("run_state", "auto")
    options["run_state"], state_off = resolve_run_state(method, train, requested, use_guard, folds)
    options["features"], features_off = resolve_features(method, train, options.get("features", "auto"),
                                                         options.get("guide"))
    options["variant"], variant_off = resolve_variant(method, train, options.get("variant", "linear"), use_guard, folds)
    options["residual"], residual_off = resolve_residual(method, options.get("residual", "auto"), options["features"],
                                                         use_guard, train, folds)
    stackings: dict[tuple[str, bool, bool], guard.Stacking] = {}

    def guarded(chosen: dict[str, Any]) -> guard.Stacking:  # grid cross-fits start afresh: no full fit needed first
        key = (chosen["variant"], chosen["run_state"], chosen["residual"])
        if key not in stackings:
            stackings[key] = _guard(method, train, chosen, seed, None, folds, guard_steps, workers)
        return stackings[key]

    variant_report = check = None
    if options["variant"] is None:  # -o variant=auto with the guard: chosen by held-out ranking
        variant_report = variant_check({variant: guarded({**options, "variant": variant}) for variant in AUTO_VARIANTS},
                                       train)
        options["variant"] = variant_report["chosen"]
    residual_report = None
    if options["residual"] is None:  # -o residual=auto with features and the guard: chosen by held-out ranking
        residual_report = ranking_check({True: guarded({**options, "residual": True}),
                                         False: guarded({**options, "residual": False})}, train,
                                        {True: "residual effects", False: "no residual effects"})
        options["residual"] = residual_report["chosen"]
    if requested == "auto" and options["run_state"]:  # bayes-grid with its guard: kept where held-out runs favour it
        plain_options = {**options, "run_state": False}
        stacking, plain = guarded(options), guarded(plain_options)
        check = state_check(stacking, plain)
        if not check["kept"]:
            options, stacking, state_off = plain_options, plain, check["reason"]
        posterior, result = _fit_once(method, train, options, seed)
    elif variant_report is not None or residual_report is not None:
        stacking = guarded(options)
        posterior, result = _fit_once(method, train, options, seed)
    else:
        posterior, result = _fit_once(method, train, options, seed)
        stacking = _guard(method, train, options, seed, result, folds, guard_steps, workers) if use_guard else None
    if variant_report is not None:
        posterior.info["variant_check"] = variant_report
    if variant_off is not None:  # only auto gives a reason
        posterior.info["variant_off"] = variant_off
    if residual_report is not None:
        posterior.info["residual_check"] = residual_report
    if residual_off is not None and ("residual" in parsed or options["features"]):  # only auto gives a reason
        posterior.info["residual_off"] = residual_off  # named auto, or the default where features ask it
    if check is not None:
        posterior.info["run_state_check"] = check
    if state_off is not None:
        posterior.info["run_state_off"] = state_off
    if features_off is not None:
        posterior.info["features_off"] = features_off
    unseen = unused_examples(train.curricula, train.n_train)
    posterior.info["unseen_examples"] = int(unseen.size)
    posterior.info["unseen_indices"] = unseen.tolist()  # compare names the candidates that use them
    posterior.info["logged_runs"] = run_kind.logged_kind(train.curricula)  # and those unlike the logged runs
    if options["features"]:
        posterior.info["features"] = {"per_example": 0 if train.train_features is None else train.train_features.shape[1],
                                      "per_pair": 0 if train.pair_features is None else train.pair_features.shape[2]}
    if stacking is None:
        return posterior, None
    posterior.info["guard"] = stacking.report
    if "skipped" not in stacking.report:
        posterior.stacking_weight = stacking.weight
        posterior.blind_mean = MeanTrajectory().fit(train).mean_losses
        posterior.run_residuals = without_parameter_error(stacking.residuals, stacking.report["parameter_share"])
        if options["run_state"]:
            alternative = _state_only(train, posterior)
            posterior.blind_state, posterior.blind_center = alternative.coefficients, alternative.center
    return posterior, stacking


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


def heldout_ranking(stacking: guard.Stacking, runs: Runs, index: np.ndarray | None = None) -> float:
    """LDS of the guard's held-out predictions: per test example, Spearman across the held-out runs
    (``index`` of them; all where None) of the stacked final loss (``observed - residual``) against the
    observed one, averaged over test examples."""
    index = np.arange(runs.n_runs) if index is None else index
    observed = runs.losses[index, -1]
    rho = rank_correlations(observed - stacking.residuals[index, -1], observed)
    return float(np.nanmean(rho)) if np.any(np.isfinite(rho)) else float("nan")


def variant_check(stackings: dict[str, guard.Stacking], runs: Runs, sds: float = VARIANT_CHECK_SDS,
                  resamples: int = VARIANT_CHECK_RESAMPLES, seed: int = 0) -> dict[str, Any]:
    """Which variant ``-o variant=auto`` fits, from the guard's cross-fits of each (``stackings``, keyed
    by variant, the default first as in :data:`AUTO_VARIANTS`): :func:`ranking_check`.

    Why ranking and not the guard's squared error: the variants' squared errors are dominated by the
    trajectory every run shares, which the linear variant's multiplicative part follows better,
    while users attribute and choose curricula by how runs differ; where features carry the effects
    (under Adam, issue 30) the additive variant ranked held-out runs better with a larger squared
    error (``experiments/results/runs_needed.md``). Why the default wins ties, not the simpler
    variant (the one-standard-error rule): on a real set where the two tied on the guard's runs, the
    additive variant ranked new runs far worse (``docs/results/runs_needed.md``).
    """
    return ranking_check(stackings, runs, {name: name for name in stackings}, sds, resamples, seed)


def ranking_check(stackings: dict[Any, guard.Stacking], runs: Runs, labels: dict[Any, str],
                  sds: float = VARIANT_CHECK_SDS, resamples: int = VARIANT_CHECK_RESAMPLES,
                  seed: int = 0) -> dict[str, Any]:
    """Which of the models ``stackings`` (the guard's cross-fits of each, keyed by the setting's value,
    the default first; ``labels``: each value in words) an ``auto`` setting fits: the default unless
    another's LDS on the held-out runs (:func:`heldout_ranking`, Park et al. 2023, on runs no
    cross-fit saw) is higher by more than ``sds`` standard errors of the gain, from a paired bootstrap
    over held-out runs. The report's ``chosen`` is the chosen key; its other entries are keyed by label."""
    keys = list(stackings)
    rng = np.random.default_rng(seed)
    lds = {key: heldout_ranking(stackings[key], runs) for key in keys}
    draws = np.array([[heldout_ranking(stackings[key], runs, index) for key in keys]
                      for index in rng.integers(0, runs.n_runs, (resamples, runs.n_runs))])
    report: dict[str, Any] = {"heldout_lds": {labels[key]: lds[key] for key in keys}, "runs": runs.n_runs,
                              "chosen": keys[0]}
    best_gain = 0.0
    for column, key in enumerate(keys[1:], start=1):
        gain, error = lds[key] - lds[keys[0]], float(np.nanstd(draws[:, column] - draws[:, 0], ddof=1))
        report[f"gain_{labels[key]}"], report[f"gain_{labels[key]}_se"] = gain, error
        if gain > sds * error and gain > best_gain:
            report["chosen"], best_gain = key, gain
    chosen = report["chosen"]
    others = ", ".join(f"{labels[key]} {lds[key]:.3f}" for key in keys if key != chosen)
    report["reason"] = (f"auto: LDS on the guard's {runs.n_runs} held-out runs {lds[chosen]:.3f} with {labels[chosen]} "
                        f"({others}; another choice than {labels[keys[0]]} needs a gain over {sds:g} bootstrap "
                        "standard error)")
    return report


def _guard(method: str, train: Runs, options: dict[str, Any], seed: int, result: inference.FitResult | None,
           folds: int, guard_steps: int | None, workers: int | None) -> guard.Stacking:
    """The guard's cross-fits of ``method`` with ``options`` over ``folds`` folds of ``train``, and
    the stacking weights against the curriculum-blind model (the state-only one with the run
    state); ``result``: the full fit, where bayes-svi's cross-fits start (the other methods' start
    afresh: None)."""
    quiet, warm = {**options, "progress": False}, None
    if method == "svi":  # the cross-fits are only rolled out by their posterior mean
        routine = _fit_settings(method, split_options(options, method)[1])
        quiet["num_draws"] = min(routine["num_draws"], MEAN_DRAWS)
        warm = inference.cross_fit_start(result)
        steps = round(GUARD_STEP_FRACTION * routine["num_steps"]) if warm else routine["num_steps"]
        quiet["num_steps"] = guard_steps or max(1, steps)
        if workers is None:
            fold_bytes = _fit_bytes(train, quiet["num_draws"])
            workers = GUARD_WORKERS if GUARD_WORKERS * fold_bytes <= 0.5 * budget.available_memory() else 1
    elif method in GRID_METHODS:
        quiet["num_draws"] = min(_fit_settings(method, split_options(options, method)[1])["num_draws"], MEAN_DRAWS)

    def cross_fit(runs: Runs) -> BayesianSimfluence:
        return _fit_once(method, runs, quiet, seed, warm_start=warm)[0]

    config = split_options(options, method)[0]
    blind = {"blind": _state_only, "blind_name": "state-only (the mean trajectory plus the run state)"} \
        if config.run_state else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the folds' own convergence notes; the full fit has warned already
        return guard.stack_against_blind(cross_fit, train, folds, workers=workers or 1,
                                         progress=options.get("progress", True), alone_first=method != "svi",
                                         **blind)  # bayes-svi traces under inference.TRACING


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
    """One fit with parsed ``options``: ``(posterior, the inference routine's result)``; ``warm_start``: SVI only."""
    config, kwargs = split_options(options, method)
    backends.check_supported(config, method)
    routine = _fit_settings(method, kwargs)
    stored = routine["num_draws"] if method in ("svi", *GRID_METHODS) else routine["num_samples"] * routine["num_chains"]
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
    calibration) where it fits the model (:func:`~bayes_simfluence.bayes.backends.unsupported`) and costs at
    most :data:`AUTO_GRID_FLOPS_PER_TEST` per test example, else ``"cg"`` (the same model and grid
    without dense algebra) where it costs at most :data:`AUTO_CG_ROWS_PER_TEST`, else ``"svi"``. The choice depends on
    the runs' shape, not on the number of test examples, so blocks of test examples choose alike.
    ``options``: parsed (:func:`~bayes_simfluence.settings.parse_all`)."""
    grid_options = settings.option_names("bayes-grid")
    config, kwargs = split_options({k: v for k, v in options.items() if k in grid_options}, "grid")
    cost = grid.grid_cost(train.n_train, train.n_runs * train.n_steps, config,
                          kwargs.get("num_draws", _fit_settings("grid", {})["num_draws"]))
    problem = backends.unsupported(config, "grid")
    if problem is not None:
        reason = problem[1]
    elif cost > AUTO_GRID_FLOPS_PER_TEST:
        reason = f"bayes-grid would cost {cost:.1e} multiply-adds per test example, over {AUTO_GRID_FLOPS_PER_TEST:.0e}"
    else:
        return "grid", f"{cost:.1e} multiply-adds per test example, at most {AUTO_GRID_FLOPS_PER_TEST:.0e}"
    if backends.unsupported(config, "cg") is None:
        rows = krylov.krylov_cost(train.n_train, train.n_runs * train.n_steps, config,
                                  kwargs.get("num_draws", _fit_settings("cg", {})["num_draws"]))
        if rows <= AUTO_CG_ROWS_PER_TEST:
            return "cg", f"{reason}; bayes-cg: {rows:.1e} row-products per test example, at most {AUTO_CG_ROWS_PER_TEST:.0e}"
        reason += f", and bayes-cg {rows:.1e} row-products, over {AUTO_CG_ROWS_PER_TEST:.0e}"
    problem = backends.unsupported(config, "svi")
    if problem is not None:
        raise validation.InputError(f"-o {problem[0]}: bayes would run bayes-svi here ({reason}), and {problem[1]}")
    return "svi", reason


def setting_defaults() -> dict[str, str]:
    """The default of every setting, as text: the record's, else ``ModelConfig``'s or the inference
    routine's (imports the Bayesian stack)."""
    config = ModelConfig()
    texts = {}
    for key in settings.Settings.__annotations__:
        meta = settings.setting(key)
        if meta.default is not None:
            texts[key] = meta.default
        elif meta.group == "model":
            value = getattr(config, meta.field or key)
            texts[key] = "the backend's" if value is None else str(value).lower()
        else:
            found = [inspect.signature(r).parameters[key].default for r in RUNNERS.values()
                     if key in inspect.signature(r).parameters]
            texts[key] = " / ".join(dict.fromkeys(str(v) for v in found)) if found else ""
    return texts


def options_markdown() -> str:
    """The options reference: a Markdown table per group (the docs' options page)."""
    titles = {"model": "The model (every Bayesian method)", "inference": "Inference", "fit": "The fitting procedure",
              "point": "Point and score methods"}
    default_text = setting_defaults()
    lines = []
    for group, title in titles.items():
        lines += [f"## {title}", "", "| key | type | default | read by | what |", "|---|---|---|---|---|"]
        for key in settings.Settings.__annotations__:
            meta = settings.setting(key)
            if meta.group != group:
                continue
            readers = {settings.BAYES: "every Bayesian method", settings.STACKABLE: "every method but `mean`"}.get(
                meta.methods, ", ".join(meta.methods))
            lines.append(f"| `{key}` | {settings.type_text(key)} | {default_text[key]} | {readers} | {meta.help} |")
        lines.append("")
    return "\n".join(lines)


def _fit_default(train: Runs, context: FitContext) -> BayesianSimfluence:
    """``-m bayes``: the backend :func:`default_path` chooses, with the options it reads; the
    others (bayes-svi's where it runs bayes-grid) are listed in ``info["unused_options"]``. The
    options come checked and parsed (:func:`bayes_simfluence.methods.fit_method`)."""
    method, reason = default_path(train, context.options)
    if _residual_across_backends(method, train, context.options):
        posterior, method = _fit_residual_across_backends(train, context)
        reason += f"; residual=auto chose bayes-{method} by the guard's held-out ranking (see residual effects)"
    else:
        posterior = _fit_parsed(method, train, _options_of(method, context.options), context.seed)
    ran = posterior.info.get("chosen_by")  # bayes-cg without residual effects runs bayes-grid and says so
    posterior.info["chosen_by"] = f"bayes: {reason}" + (f"; {ran}" if ran else "")
    unused = sorted(set(context.options) - settings.option_names(f"bayes-{method}"))
    if unused:
        posterior.info["unused_options"] = f"{', '.join(unused)}: bayes ran bayes-{method}, which does not read them"
    return posterior


def _options_of(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """The parsed ``-m bayes`` options that backend ``bayes-{method}`` reads."""
    reads = settings.option_names(f"bayes-{method}")
    return {key: value for key, value in options.items() if key in reads}


def _residual_across_backends(method: str, train: Runs, options: dict[str, Any]) -> bool:
    """Whether ``-m bayes`` chooses the residual effects across backends: where it runs bayes-svi
    (which fits only the model with them), ``residual`` is ``auto``, the runs carry features that
    bayes-svi's guide regresses on, the guard can cross-fit, and bayes-grid fits the model without
    residuals within :data:`AUTO_GRID_FLOPS_PER_TEST` (its cost then does not grow with the pool)."""
    if method != "svi" or options.get("residual", "auto") != "auto":
        return False
    if not resolve_features("svi", train, options.get("features", "auto"), options.get("guide"))[0]:
        return False
    if why_no_guard(train, options.get("guard", True), options.get("guard_folds", guard.FOLDS)) is not None:
        return False
    return default_path(train, {**options, "residual": False})[0] == "grid"


def _fit_residual_across_backends(train: Runs, context: FitContext) -> tuple[BayesianSimfluence, str]:
    """``(posterior, backend)``: ``residual=auto`` where ``-m bayes`` runs bayes-svi
    (:func:`_residual_across_backends`). Both models are fitted with the guard, bayes-svi with the
    residual effects and bayes-grid without them, and :func:`ranking_check` keeps bayes-svi's unless
    the grid's cross-fits rank the held-out runs better by more than one bootstrap standard error:
    the choice ``auto`` makes on one backend at smaller pools, and without the residuals the grid
    keeps the run state and exact conditionals at any pool. ``info["residual_check"]`` reports it."""
    fits = {}
    for method, residual in (("svi", True), ("grid", False)):
        options = {**_options_of(method, context.options), "residual": residual}
        fits[residual] = _fit_guarded(method, train, options, context.seed)
    report = ranking_check({key: stacking for key, (_, stacking) in fits.items()}, train,
                           {True: "residual effects on bayes-svi", False: "no residual effects on bayes-grid"})
    posterior = fits[report["chosen"]][0]
    posterior.info["residual_check"] = report
    return posterior, "svi" if report["chosen"] else "grid"


def _factory(method: str) -> Callable[[Runs, FitContext], BayesianSimfluence]:
    def factory(train: Runs, context: FitContext) -> BayesianSimfluence:
        return _fit_parsed(method, train, context.options, context.seed)  # checked and parsed by fit_method

    return factory


for _method in RUNNERS:
    register_method(f"bayes-{_method}", options=settings.option_names(f"bayes-{_method}"))(_factory(_method))
register_method("bayes", options=settings.option_names("bayes"))(_fit_default)
register_loader(KIND, BayesianSimfluence.load)
register_sniffer(KIND, is_posterior_file)
