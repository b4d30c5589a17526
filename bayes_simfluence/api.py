"""The Python entry points: fit a simulator with typed settings, load a saved one.

``import bayes_simfluence as bsf``, then::

    posterior = bsf.fit(train, method="bayes", seed=0, num_draws=200)
    posterior.bands(curricula, initial_losses)          # mean, median, 50% and 90% bands
    posterior.compare([curriculum_a, curriculum_b], initial_losses[0])
    posterior.attributions(curriculum_a, initial_losses[0], tests=[3])
    posterior.to_arviz(train)                           # an xarray.DataTree
    posterior.save("posterior.nc"); bsf.load("posterior.nc")

The keyword settings are those of :class:`~bayes_simfluence.settings.Settings` (the CLI's ``-o``
options), checked by type and range before anything is fitted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Unpack

from bayes_simfluence.methods import FitContext, fit_method, load_simulator
from bayes_simfluence.runs import Runs
from bayes_simfluence.settings import Settings
from bayes_simfluence.simulators import Simulator
from bayes_simfluence.validation import InputError


def fit(runs: Runs | str | Path, method: str = "bayes", *, seed: int = 0, **settings: Unpack[Settings]) -> Simulator:
    """Fit ``method`` on the training runs ``runs`` (a :class:`Runs` or a runs ``.npz`` file).

    Args:
        runs: the training runs: ``curricula [runs, steps, batch]``, ``losses [runs, steps + 1, tests]``.
        method: a name of :func:`bayes_simfluence.available_methods`: ``"bayes"`` (the default
            Bayesian path, which chooses its backend and says why in ``info["chosen_by"]``),
            ``"bayes-grid"``, ``"bayes-svi"``, ``"bayes-nuts"``, ``"bayes-exact"``, ``"linear"``
            (Simfluence-Linear by ridge regression), ``"mean"``, ...
        seed: the seed of stochastic inference.
        **settings: the method's settings (:class:`~bayes_simfluence.settings.Settings`), e.g.
            ``num_steps=4000, memory="none"``.

    Returns:
        The fitted simulator: for the Bayesian methods a
        :class:`~bayes_simfluence.bayes.posterior.BayesianSimfluence`.

    Raises:
        InputError: a setting the method does not read, or a value of the wrong type or range.
    """
    path = None if isinstance(runs, Runs) else Path(runs)
    train = runs if isinstance(runs, Runs) else Runs.load(path)
    try:
        return fit_method(method, train, FitContext(train_path=path, seed=seed, options=dict(settings)))
    except InputError as error:  # the settings' messages name the CLI option; here it is a keyword
        message = str(error)
        if message.startswith("-o "):
            raise InputError(f"fit(): setting {message[3:]}") from error
        raise


def load(path: str | Path) -> Simulator:
    """A simulator saved by ``save`` (``.nc``: a Bayesian posterior; ``.npz``: a point simulator)."""
    return load_simulator(path)
