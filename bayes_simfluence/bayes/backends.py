"""What each inference backend of the one model supports, declared once.

The model (:class:`~bayes_simfluence.bayes.model.ModelConfig`: likelihood, step component,
optimiser memory, run state, common level) is defined once; each backend fits some of its
configurations. :data:`BACKENDS` declares which, :func:`unsupported` says why a configuration is
not fitted by a backend (``-m bayes`` reads it to choose), and :func:`check_supported` refuses it
with one line naming the option. The backends call :func:`check_supported` on entry.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from bayes_simfluence.validation import InputError


@dataclass(frozen=True)
class Backend:
    """One inference backend and the configurations of the model it fits.

    Attributes:
        name: the method's name (``bayes-grid``).
        inference: how it infers, in a few words.
        likelihoods: the likelihoods it fits.
        memories: the optimiser memories it fits.
        needs_step_component: it fits only the model with the step component.
        run_state: it fits the shared run state.
        features: it fits the feature prior (effects regressed on the training examples' features).
        residual_off: it fits the model without per-example residual effects (``-o residual=false``).
        calibrated: what simulation-based calibration showed (``experiments/results/``).
        cost: its cost, in words.
        runner: its inference routine, ``"module:function"`` (imported when it runs): ``(data,
            config, seed=..., **options) -> FitResult``.
        default_memory: the optimiser memory it fits unless ``-o memory`` says otherwise.
    """

    name: str
    inference: str
    likelihoods: tuple[str, ...]
    memories: tuple[str, ...]
    needs_step_component: bool
    run_state: bool
    features: bool
    residual_off: bool
    calibrated: str
    cost: str
    runner: str
    default_memory: str


BACKENDS: dict[str, Backend] = {
    "grid": Backend("bayes-grid", "hyperparameters on a grid, everything else exact", ("normal",),
                    ("none", "geometric"), True, True, True, True, "every quantity passes SBC",
                    "runs x steps x (2 n_train)^2 per test example and grid point; without residual effects "
                    "runs x steps x batch x features, whatever the pool",
                    "bayes_simfluence.bayes.grid:run_grid", "geometric"),
    "cg": Backend("bayes-cg", "bayes-grid's model and grid, matrix-free: Lanczos evidence, perturb-and-MAP draws",
                  ("normal",), ("none", "geometric"), True, True, True, True,
                  "bayes-grid's up to its quadratures (tests compare them with the dense path)",
                  "runs x steps x batch per product; (probes + 1) x Lanczos steps products per decay value, "
                  "CG iterations per draw (without residual effects it runs bayes-grid, exact at that cost)",
                  "bayes_simfluence.bayes.krylov:run_cg", "geometric"),
    "svi": Backend("bayes-svi", "variational (autoguides, or exact conditionals given the hyperparameters)",
                   ("normal", "student_t"), ("none", "geometric"), False, False, True, False,
                   "effects close to exact with the conditional guide; hyperparameters fail SBC",
                   "runs x steps x batch x tests per optimisation step",
                   "bayes_simfluence.bayes.inference:run_svi", "geometric"),
    "nuts": Backend("bayes-nuts", "NUTS on the full model", ("normal", "student_t"), ("none", "geometric"),
                    False, False, True, False, "exact in the limit; for small problems and checks",
                    "gradient evaluations of the full model per draw",
                    "bayes_simfluence.bayes.inference:run_nuts", "geometric"),
    "exact": Backend("bayes-exact", "NUTS on the hyperparameters, exact draws of the effects", ("normal",),
                     ("none",), False, False, False, False, "exact up to NUTS on a few hyperparameters",
                     "one (2 n_train)^2 eigendecomposition per test example",
                     "bayes_simfluence.bayes.inference:run_exact", "none"),
}


def runner(backend: str) -> Callable[..., Any]:
    """The inference routine of ``backend`` (its declared :attr:`Backend.runner`, imported now)."""
    module, function = BACKENDS[backend].runner.split(":")
    return getattr(importlib.import_module(module), function)


def those_with(attribute: str) -> str:
    """``"bayes-grid, bayes-cg and bayes-svi"``: the backends whose declaration has ``attribute``."""
    names = [spec.name for spec in BACKENDS.values() if getattr(spec, attribute)]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def unsupported(config: Any, backend: str) -> tuple[str, str] | None:
    """``(option, why)`` where ``backend`` does not fit ``config``
    (a :class:`~bayes_simfluence.bayes.model.ModelConfig`), else None."""
    spec = BACKENDS[backend]
    if config.likelihood not in spec.likelihoods:
        return "likelihood", f"{spec.name} fits the likelihoods {list(spec.likelihoods)}, not {config.likelihood}"
    if config.memory not in spec.memories:
        return "memory", f"{spec.name} fits the optimiser memories {list(spec.memories)}, not {config.memory}"
    if spec.needs_step_component and not config.step_component:
        return "step", f"{spec.name} needs the step component"
    if config.run_state and not spec.run_state:
        return "run_state", f"{spec.name} has no run state ({those_with('run_state')} have)"
    if getattr(config, "features", False) and not spec.features:
        return "features", f"{spec.name} has no feature prior ({those_with('features')} have)"
    if not getattr(config, "residual_effects", True) and not spec.residual_off:
        return "residual", (f"{spec.name} fits only the model with per-example residual effects "
                            f"({those_with('residual_off')} fit it without)")
    return None


def check_supported(config: Any, backend: str) -> None:
    """Refuse ``config`` where ``backend`` does not fit it: ``-o option: why``."""
    problem = unsupported(config, backend)
    if problem is not None:
        raise InputError(f"-o {problem[0]}: {problem[1]}")


def backends_markdown() -> str:
    """The table of backends and what each supports (the docs' methods page)."""
    lines = ["| method | inference | likelihoods | optimiser memory | without the step component | run state "
             "| feature prior | without residual effects | calibration | cost |", "|---|---|---|---|---|---|---|---|---|---|"]
    for spec in BACKENDS.values():
        lines.append(f"| `{spec.name}` | {spec.inference} | {', '.join(spec.likelihoods)} | "
                     f"{', '.join(spec.memories)} | {'no' if spec.needs_step_component else 'yes'} | "
                     f"{'yes' if spec.run_state else 'no'} | {'yes' if spec.features else 'no'} | {'yes' if spec.residual_off else 'no'} | {spec.calibrated} | {spec.cost} |")
    return "\n".join(lines)
