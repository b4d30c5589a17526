"""Registry of simulation methods by name: fit one on runs, load a saved one.

Method names are what users type (``--method linear``). Modules that provide methods register
them at import with :func:`register_method` / :func:`register_loader`; this module imports a
provider only when one of its names is asked for, so optional dependencies (torch for TracIn)
are needed only by the methods that use them (none of the core's methods needs an extra).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from bayes_simfluence.runs import Runs, member, open_archive
from bayes_simfluence.simulators import MeanTrajectory, SimfluenceLinear, Simulator
from bayes_simfluence.stacking import KIND as STACKED_KIND
from bayes_simfluence.stacking import FOLDS, StackedSimulator, fit_stacked
from bayes_simfluence import settings
from bayes_simfluence.validation import InputError


@dataclass
class FitContext:
    """What a method may need besides the training runs.

    Attributes:
        train_path: the training runs file, if any (TracIn/influence find their scores beside it).
        seed: random seed for stochastic inference.
        options: method-specific settings, e.g. ``{"ridge": 0.1}``, ``{"scores": "runs.scores.npz"}``,
            ``{"num_samples": 500}``.
    """

    train_path: Path | None = None
    seed: int = 0
    options: dict = field(default_factory=dict)


MethodFactory = Callable[[Runs, FitContext], Simulator]
Loader = Callable[[Path], Simulator]

_METHODS: dict[str, MethodFactory] = {}
_LOADERS: dict[str, Loader] = {}

#: where methods defined outside this module live; imported on first use.
PROVIDERS: dict[str, str] = {**{name: "bayes_simfluence.scores" for name in settings.SCORES},
                              **{name: "bayes_simfluence.bayes.methods" for name in settings.BAYES}}


_OPTIONS: dict[str, frozenset[str]] = {}


def register_method(name: str, options: Iterable[str] = ()) -> Callable[[MethodFactory], MethodFactory]:
    """Decorator registering ``factory(train, context) -> fitted Simulator`` under ``name``.

    ``options``: the ``context.options`` keys the method reads (anything else is refused by
    :func:`check_options`); :func:`fit_method` hands the factory their values parsed
    (:func:`bayes_simfluence.settings.parse`).
    """

    def decorate(factory: MethodFactory) -> MethodFactory:
        _METHODS[name] = factory
        _OPTIONS[name] = frozenset(options)
        return factory

    return decorate


def method_options(name: str) -> frozenset[str]:
    """The option keys method ``name`` reads (importing its provider if needed)."""
    _require(name)
    return _OPTIONS[name]


def check_options(methods: Iterable[str], options: dict) -> None:
    """Refuse options that none of ``methods`` reads (a typo would otherwise be silently ignored)."""
    methods = list(methods)
    known = set().union(*(method_options(name) for name in methods)) if methods else set()
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(f"-o {unknown[0]}: no method of {methods} reads this option; they read "
                         f"{sorted(known) or 'none'}")


def register_loader(kind: str, loader: Loader) -> None:
    """Register how to read back a simulator saved with ``kind`` in its file."""
    _LOADERS[kind] = loader


def _import_provider(module: str) -> str | None:
    """Import a provider module; return why it is unavailable, or None."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name and error.name.startswith("bayes_simfluence"):
            return f"module {module} is not part of this installation"
        return (f"it needs the package '{error.name}', which is not installed "
                "(install the extra: pip install 'bayes-simfluence[collect]')")
    return None


def available_methods() -> list[str]:
    """Names of every method known to this installation (provided or not yet imported)."""
    return sorted(set(_METHODS) | set(PROVIDERS))


def _require(name: str) -> None:
    if name not in _METHODS and name in PROVIDERS:
        reason = _import_provider(PROVIDERS[name])
        if reason is not None and name not in _METHODS:
            raise ValueError(f"method '{name}' is unavailable: {reason}")
    if name not in _METHODS:
        raise InputError(f"unknown method '{name}'; choose from {available_methods()}")


def fit_method(name: str, train: Runs, context: FitContext | None = None) -> Simulator:
    """Fit the method called ``name`` on ``train`` and return the fitted simulator.

    Options in ``context`` that this method does not read are refused (use
    :func:`options_for` to pass one method its share of a set meant for several); the others are
    parsed, here and only here (:func:`bayes_simfluence.settings.parse`), for the method. With
    ``guard`` a non-Bayesian method is stacked with the curriculum-blind model by held-out roll-outs
    (:func:`bayes_simfluence.stacking.fit_stacked`, ``guard_folds`` folds); the Bayesian methods
    run their own guard.
    """
    context = context or FitContext()
    check_options([name], context.options)
    check_fittable(train)
    parsed = {key: settings.parse(key, value) for key, value in context.options.items()}
    if name in settings.BAYES:  # the Bayesian fit runs its own guard (its residuals become the discrepancy)
        return _METHODS[name](train, FitContext(context.train_path, context.seed, parsed))
    use_guard, folds = parsed.pop("guard", False), parsed.pop("guard_folds", FOLDS)
    own = FitContext(context.train_path, context.seed, parsed)
    if not use_guard:
        return _METHODS[name](train, own)
    return fit_stacked(lambda runs: _METHODS[name](runs, own), train, folds)


#: a pool this much larger than the part of it the runs use (and above :data:`UNUSED_POOL_MIN`) is
#: refused by :func:`check_fittable`: its effects would be the prior's, at the cost of fitting them.
UNUSED_POOL_FACTOR = 1000
UNUSED_POOL_MIN = 100_000


def check_fittable(train: Runs) -> None:
    """Refuse training runs no method can learn from: every slot empty, every loss the same, or a
    pool (``n_train``) thousands of times larger than the examples the runs use."""
    used = train.curricula[train.curricula >= 0]
    if used.size == 0:
        raise InputError("the training runs: every slot of 'curricula' is empty (-1): no training example "
                         "appears in the runs, so no effect can be fitted")
    if np.ptp(train.losses) == 0:
        raise InputError(f"the training runs: every loss is {train.losses.flat[0]:g}: the losses never change, "
                         "so there is nothing to fit")
    distinct = np.unique(used).size
    if train.n_train > UNUSED_POOL_MIN and train.n_train > UNUSED_POOL_FACTOR * distinct:
        raise InputError(f"the training runs use {distinct} distinct training examples (indices up to "
                         f"{int(used.max())}) of a pool of n_train = {train.n_train}; is 'n_train' right? (the "
                         "effects of the examples never used would be the prior's)")


def options_for(name: str, context: FitContext) -> FitContext:
    """``context`` with only the options method ``name`` reads (the rest are another method's)."""
    keep = method_options(name)
    return FitContext(context.train_path, context.seed, {k: v for k, v in context.options.items() if k in keep})


def load_simulator(path: str | Path) -> Simulator:
    """Read a simulator written by its ``save``; the file's ``kind`` picks the loader."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such simulator file")
    kind = _read_kind(path)
    if kind not in _LOADERS:
        for module in sorted(set(PROVIDERS.values())):
            _import_provider(module)
    if kind not in _LOADERS:
        raise InputError(f"{path}: unknown simulator kind '{kind}'; known: {sorted(_LOADERS)}")
    try:
        return _LOADERS[kind](path)
    except (KeyError, TypeError, IndexError, AttributeError, OSError) as error:
        raise InputError(f"{path}: not a valid '{kind}' simulator file ({type(error).__name__}: {error}); "
                         "was it written by 'bayes-simfluence fit'?") from error


def _read_kind(path: Path) -> str:
    """The ``kind`` of a saved simulator: an array of an ``.npz`` archive (a zip file, whatever its
    name), or what a registered sniffer recognises (a NetCDF posterior)."""
    with open(path, "rb") as handle:
        is_zip = handle.read(4) == b"PK\x03\x04"
    if is_zip:
        with open_archive(path, "simulator file") as archive:
            if "kind" in archive.files:
                return str(member(archive, "kind", str(path)))
        raise ValueError(f"{path}: no 'kind' entry; was it written by a simulator's save()?")
    for module in sorted(set(PROVIDERS.values())):
        _import_provider(module)
    for kind, sniff in _SNIFFERS.items():
        if sniff(path):
            return kind
    raise ValueError(f"{path}: unrecognised simulator file (expected .npz or a saved posterior)")


_SNIFFERS: dict[str, Callable[[Path], bool]] = {}


def register_sniffer(kind: str, sniff: Callable[[Path], bool]) -> None:
    """For simulators saved in formats other than ``.npz``: ``sniff(path)`` says if it is ``kind``."""
    _SNIFFERS[kind] = sniff


@register_method("mean")
def _fit_mean(train: Runs, context: FitContext) -> Simulator:
    return MeanTrajectory().fit(train)


def _point_factory(variant: str) -> MethodFactory:
    def factory(train: Runs, context: FitContext) -> Simulator:
        centre = context.options.get("ridge_centre")
        return SimfluenceLinear(variant=variant, ridge=context.options.get("ridge"),
                                common_level=None if centre is None else centre == "common").fit(train)

    return factory


for _variant in ("linear", "additive", "multiplicative"):
    register_method(_variant, options=settings.option_names(_variant))(_point_factory(_variant))
register_loader("mean-trajectory", MeanTrajectory.load)
register_loader("simfluence-point", SimfluenceLinear.load)
register_loader(STACKED_KIND, lambda path: StackedSimulator.load(path, load_simulator))
