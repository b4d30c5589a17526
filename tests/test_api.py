"""The typed Python API: ``bsf.fit`` with :class:`Settings`, the same model as the CLI's ``-o``, the
documented defaults are the ones used, and ``to_arviz`` is always a DataTree with named dims."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import xarray as xr

import bayes_simfluence as bsf
from bayes_simfluence import settings
from bayes_simfluence.bayes.methods import METHOD_MODEL_DEFAULTS, options_markdown, parse_options, setting_defaults
from bayes_simfluence.cli import main
from bayes_simfluence.validation import InputError


@pytest.fixture(scope="module")
def runs():
    runs, _ = bsf.synthetic_runs(n_train=12, n_tests=2, n_runs=16, n_steps=10, batch_size=2, effect_scale=0.05,
                                 noise_scale=0.005, seed=3)
    return runs.split(4)


def test_documented_defaults_are_the_ones_a_fit_uses():
    """The options reference states each model setting's default; parsing that text as the setting
    gives the same model as leaving the setting out, on every backend."""
    texts = setting_defaults()
    for method in METHOD_MODEL_DEFAULTS:
        implicit, _ = parse_options({}, method)
        for key in settings.option_names(f"bayes-{method}"):
            meta = settings.setting(key)
            if meta.group != "model" or key in ("noncentred", "run_state"):  # chosen by the backend / the runs
                continue
            text = texts[key].split(" (")[0] if method != "exact" or key != "memory" else "none"
            explicit, _ = parse_options({key: text if settings.choices(key) or text in ("true", "false")
                                         else float(text)}, method)
            assert explicit == implicit, (method, key, text)
    table = options_markdown()
    assert all(f"| `{key}` |" in table for key in settings.Settings.__annotations__)


@pytest.mark.parametrize("key, cli_text, value", [
    ("memory", "geometric", "geometric"), ("run_state", "auto", "auto"), ("run_state", "false", False),
    ("num_steps", 12, 12), ("learning_rate", 0.02, 0.02), ("guide", "Conditional", "conditional")])
def test_cli_strings_and_python_values_parse_alike(key, cli_text, value):
    assert settings.parse(key, cli_text) == settings.parse(key, value) == value


def test_bad_settings_name_the_keyword_before_anything_is_fitted(runs):
    train, _ = runs
    with pytest.raises(InputError, match=r"fit\(\): setting num_steps: expected an integer, got \"12\""):
        bsf.fit(train, "bayes-svi", num_steps="12")
    with pytest.raises(InputError, match=r"fit\(\): setting ridge: no method of \['bayes-nuts'\] reads"):
        bsf.fit(train, "bayes-nuts", ridge=1.0)
    with pytest.raises(InputError, match=r"setting memory: expected one of \['none', 'geometric'\]"):
        bsf.fit(train, "bayes", memory="sometimes")


def test_python_and_cli_fit_the_same_posterior(runs, tmp_path):
    train, held = runs
    options = {"num_steps": 40, "num_draws": 30, "guard": False, "memory": "none", "progress": False}
    posterior = bsf.fit(train, "bayes-svi", seed=2, **options)
    assert posterior.n_draws == 30 and "memory_decay" not in posterior.hyper and posterior.info["num_steps"] == 40
    train.save(tmp_path / "train.npz")
    argv = ["fit", "--train", str(tmp_path / "train.npz"), "-m", "bayes-svi", "--seed", "2",
            "--out", str(tmp_path / "p.nc")] + [x for k, v in options.items() for x in ("-o", f"{k}={str(v).lower()}")]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0
    saved = bsf.load(tmp_path / "p.nc")
    np.testing.assert_allclose(saved.a, posterior.a, rtol=1e-6)
    draws = posterior.simulate_draws(held.curricula, held.initial_losses, 10, seed=1)
    np.testing.assert_allclose(saved.simulate_draws(held.curricula, held.initial_losses, 10, seed=1), draws, rtol=1e-6)


def test_bayes_takes_the_svi_settings_and_says_when_they_went_unused(runs, tmp_path):
    train, _ = runs
    posterior = bsf.fit(train, "bayes", num_steps=30, guide="conditional", guard=False, progress=False)
    assert posterior.name == "bayes-grid"  # a small pool: the grid runs, which has no SVI steps
    assert posterior.info["unused_options"].startswith("guide, num_steps: bayes ran bayes-grid")
    train.save(tmp_path / "train.npz")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["fit", "--train", str(tmp_path / "train.npz"), "-m", "bayes", "-o", "num_steps=30",
                     "-o", "guard=false", "-o", "progress=false", "--out", str(tmp_path / "p.nc")]) == 0
    assert "options not used: num_steps: bayes ran bayes-grid" in out.getvalue()


def test_to_arviz_is_a_datatree_with_observed_predictive_and_predictions(runs):
    train, held = runs
    posterior = bsf.fit(train, "bayes-grid", num_draws=40, guard=False, progress=False)
    tree = posterior.to_arviz(train, predictions=held, n_draws=25, log_likelihood=True)
    assert isinstance(tree, xr.DataTree)
    assert {"posterior", "posterior_predictive", "observed_data", "log_likelihood", "predictions",
            "predictions_constant_data"} <= set(tree.children)
    predictive = tree["posterior_predictive"]["loss"]
    assert predictive.dims == ("chain", "draw", "run", "step", "test_example") and predictive.shape == (
        1, 25, train.n_runs, train.n_steps + 1, train.n_tests)
    np.testing.assert_array_equal(tree["observed_data"]["loss"].values, train.losses)
    assert list(tree["predictions"]["loss"].coords["test_example"].values) == list(held.test_ids)
    np.testing.assert_array_equal(tree["predictions_constant_data"]["curricula"].values, held.curricula)
    # the observed trajectories sit inside the predictive's spread, run by run (fitted runs: no overfit check)
    lower, upper = np.quantile(predictive.values[0], [0.05, 0.95], axis=0)
    inside = (train.losses >= lower) & (train.losses <= upper)
    assert inside[:, 1:].mean() > 0.7


@pytest.mark.parametrize("method, option, message", [
    ("bayes-grid", "likelihood=student_t", "-o likelihood: bayes-grid fits the likelihoods ['normal'], not student_t"),
    ("bayes-grid", "step=false", "-o step: bayes-grid needs the step component"),
    ("bayes-exact", "memory=geometric", "-o memory: bayes-exact fits the optimiser memories ['none'], not geometric"),
    ("bayes-svi", "run_state=true", "-o run_state: bayes-svi has no run state (bayes-grid and bayes-cg have)"),
    ("bayes-nuts", "run_state=true", "-o run_state: bayes-nuts has no run state"),
])
def test_each_backend_refuses_what_it_does_not_declare_with_one_line(runs, tmp_path, method, option, message):
    """The declarations of :mod:`bayes_simfluence.bayes.backends` are what the fits enforce: the CLI
    refuses the undeclared configuration before fitting, naming the option."""
    from bayes_simfluence.bayes.backends import BACKENDS

    train, _ = runs
    train.save(tmp_path / "train.npz")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["fit", "--train", str(tmp_path / "train.npz"), "-m", method, "-o", option, "-o", "guard=false",
                     "--out", str(tmp_path / "p.nc")])
    assert code == 2 and message in err.getvalue() and not (tmp_path / "p.nc").exists()
    key, value = option.split("=")
    spec = BACKENDS[method.removeprefix("bayes-")]
    declared = {"likelihood": value in spec.likelihoods, "memory": value in spec.memories,
                "step": not spec.needs_step_component, "run_state": spec.run_state}[key]
    assert not declared


def test_bayes_chooses_a_backend_that_declares_the_configuration(runs):
    from bayes_simfluence.bayes.methods import default_path

    train, _ = runs
    assert default_path(train, {})[0] == "grid"
    assert default_path(train, {"likelihood": "student_t"}) == (
        "svi", "bayes-grid fits the likelihoods ['normal'], not student_t")
    with pytest.raises(InputError, match=r"-o run_state: bayes would run bayes-svi here \(bayes-grid needs the step "
                                         r"component\), and bayes-svi has no run state"):
        default_path(train, {"step": False, "run_state": True})
