"""The names and defaults the command line offers, in a module that imports nothing heavy.

``bayes-simfluence --help`` and every ``COMMAND --help`` build their parsers from this module and
:mod:`bayes_simfluence.settings` alone, so that asking for help does not import JAX, NumPyro,
ArviZ or matplotlib (seconds of start-up). The modules that implement these choices import them
from here, so that each is defined once.
"""

from __future__ import annotations

from bayes_simfluence import settings

#: every method name ``--method`` takes; :func:`bayes_simfluence.methods.available_methods` lists the same.
METHODS: tuple[str, ...] = tuple(sorted(("mean", *settings.POINT, *settings.SCORES, *settings.BAYES)))

#: predictive distributions of a Bayesian simulator (:mod:`bayes_simfluence.bayes.posterior`):
#: a new real run (parameters plus the run-to-run misfit of held-out runs), parameters plus
#: per-step noise, parameters only.
PREDICTIVES = ("new-run", "noise", "parameters")
PREDICTIVE_HELP = ("new-run: parameters plus the run-to-run misfit of the guard's held-out runs (what retraining "
                   "gives; the default where the guard ran); noise: parameters plus per-step noise (the default "
                   "otherwise); parameters: parameter uncertainty only (the curricula's expected effects)")

#: how :func:`bayes_simfluence.compare.compare` reduces the loss over the chosen test examples.
REDUCTIONS = ("mean", "sum")
#: posterior predictive draws used when the caller does not say (compare, plot, attributions).
DEFAULT_DRAWS = 400
#: predictive draws used for coverage and CRPS of probabilistic simulators (evaluate).
DEFAULT_EVAL_DRAWS = 200

#: how :mod:`bayes_simfluence.attributions` ranks training examples.
RANKINGS = ("bound", "probability", "mean")
#: what an attribution effect is measured against (:mod:`bayes_simfluence.attributions`); the first is the default.
REFERENCES = ("average", "leave-out")

#: figure formats the commands write, by file extension.
FIGURE_SUFFIXES = (".png", ".pdf", ".svg")
