"""A posterior's draws have the same names in memory and in its file; files of the old names still load."""

from __future__ import annotations

import numpy as np
import pytest

from bayes_simfluence.bayes import arviz_data, posterior_io
from bayes_simfluence.bayes.model import ModelConfig
from bayes_simfluence.bayes.posterior import BayesianSimfluence

CHAINS, DRAWS, TESTS, TRAIN, STEPS = 2, 5, 3, 4, 6


@pytest.fixture
def posterior() -> BayesianSimfluence:
    """A small posterior written by hand (no fit): effects, step component, noise, NUTS statistics."""
    rng = np.random.default_rng(0)
    lead = (CHAINS, DRAWS, TESTS)
    return BayesianSimfluence(
        method="nuts", config=ModelConfig(), a=rng.normal(0, 0.01, lead + (TRAIN,)),
        b=rng.normal(0, 0.01, lead + (TRAIN,)), drift=rng.normal(0, 0.01, lead + (STEPS,)),
        sigma=rng.uniform(0.01, 0.02, lead), hyper={"effect_scale": rng.uniform(0.1, 0.2, lead)},
        scale=np.ones(TESTS), train_ids=np.array([f"t{i}" for i in range(TRAIN)]),
        test_ids=np.array([f"q{m}" for m in range(TESTS)]),
        sample_stats={"num_steps": rng.integers(1, 64, (CHAINS, DRAWS)),
                      "diverging": np.zeros((CHAINS, DRAWS), dtype=bool)})


def test_the_file_names_the_draws_as_the_fit_does(posterior, tmp_path):
    """FitResult.draws and parameter_draws say ``a``, ``B``, ``drift``; NUTS says ``num_steps``."""
    posterior.save(tmp_path / "p.nc")
    data = arviz_data.open_netcdf(tmp_path / "p.nc")
    saved = arviz_data.group(data, "posterior")
    assert {"a", "B", "drift", "noise_scale", "effect_scale"} <= set(saved.data_vars)
    assert "step_drift" not in saved and saved["drift"].dims == ("chain", "draw", "test_example", "step")
    assert set(arviz_data.group(data, "sample_stats").data_vars) == {"num_steps", "diverging"}
    assert {"a", "B", "drift"} <= set(posterior.parameter_draws(3))
    loaded = BayesianSimfluence.load(tmp_path / "p.nc")
    np.testing.assert_array_equal(loaded.drift, posterior.drift)
    np.testing.assert_array_equal(loaded.sample_stats["num_steps"], posterior.sample_stats["num_steps"])


def test_a_file_with_the_old_names_still_loads(posterior, tmp_path):
    """Files written before the names were unified hold ``step_drift`` and ``n_steps``."""
    groups = posterior_io.posterior_groups(posterior.fields())
    groups["posterior"] = groups["posterior"].rename({"drift": "step_drift"})
    groups["sample_stats"] = groups["sample_stats"].rename({"num_steps": "n_steps"})
    arviz_data.write_netcdf(arviz_data.container(groups), tmp_path / "old.nc")
    assert "step_drift" in arviz_data.group(arviz_data.open_netcdf(tmp_path / "old.nc"), "posterior")
    loaded = BayesianSimfluence.load(tmp_path / "old.nc")
    np.testing.assert_array_equal(loaded.drift, posterior.drift)
    np.testing.assert_array_equal(loaded.sample_stats["num_steps"], posterior.sample_stats["num_steps"])
    np.testing.assert_array_equal(loaded.a, posterior.a)
    curricula = np.zeros((1, STEPS, 2), dtype=np.int64)
    np.testing.assert_allclose(loaded.simulate(curricula, np.ones((1, TESTS))),
                               posterior.simulate(curricula, np.ones((1, TESTS))))


def test_a_file_with_both_names_is_refused(posterior, tmp_path):
    groups = posterior_io.posterior_groups(posterior.fields())
    groups["posterior"]["step_drift"] = groups["posterior"]["drift"]
    arviz_data.write_netcdf(arviz_data.container(groups), tmp_path / "both.nc")
    with pytest.raises(ValueError, match="both 'drift' and its old name 'step_drift'"):
        BayesianSimfluence.load(tmp_path / "both.nc")
