"""A method's options are checked and parsed once, by the registry, whichever path the fit takes."""

from __future__ import annotations

import collections

import pytest

from bayes_simfluence import settings
from bayes_simfluence.methods import FitContext, fit_method
from bayes_simfluence.synthetic import synthetic_runs


@pytest.mark.parametrize("method", ["bayes", "bayes-grid", "linear"])
def test_every_option_is_parsed_once(method, monkeypatch):
    """``-m bayes`` used to parse its options three times (its own check, the default path's
    choice, the chosen backend's fit) and once more per cross-fit of the guard."""
    runs, _ = synthetic_runs(n_train=8, n_tests=2, n_runs=12, n_steps=10, batch_size=2, seed=0)
    calls: collections.Counter[str] = collections.Counter()
    parse = settings.parse

    def counting(key: str, value: object) -> object:
        calls[key] += 1
        return parse(key, value)

    monkeypatch.setattr(settings, "parse", counting)
    options = ({"ridge": 0.5} if method == "linear" else
               {"num_draws": 20, "guard_folds": 2, "progress": "false", "memory": "none"})
    fitted = fit_method(method, runs, FitContext(options=options))
    assert {key: calls[key] for key in options} == dict.fromkeys(options, 1)
    if method == "linear":
        assert fitted.ridge_selected == 0.5
    else:  # the parsed values reached the fit: two folds for the guard, no optimiser memory, 20 draws
        assert fitted.info["guard"]["folds"] == 2 and fitted.config.memory == "none" and fitted.n_draws == 20
