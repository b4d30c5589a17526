"""The new-run predictive against retraining under the generating process.

Runs are drawn from a process with a run-level latent that no curriculum explains (every run has
its own learning-rate schedule, as seeds and data order give real runs), and the simulator is
fitted on some of them. Fresh runs of the same process stand in for retraining. The intervals of
pairwise differences between fresh runs' mean final losses must cover the retrained differences
at their stated level with the new-run predictive; the parameter-only draws must not (the
failure issue 9 found on real runs), so the check can tell the two apart.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from bayes_simfluence.bayes.discrepancy import curriculum_ids, draw_discrepancy, residuals_for_steps
from bayes_simfluence.bayes.synthetic import decaying_runs
from bayes_simfluence.methods import FitContext, fit_method


def interval_coverage(predicted: np.ndarray, actual: np.ndarray, level: float) -> float:
    """Fraction of ``actual [items]`` inside the central ``level`` interval of ``predicted [draws, items]``."""
    low, high = np.quantile(predicted, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return float(((actual >= low) & (actual <= high)).mean())


@pytest.fixture(scope="module")
def fitted_and_fresh():
    runs, _ = decaying_runs(n_train=40, n_tests=6, n_runs=56, n_steps=30, batch_size=4, effect_scale=0.006,
                            run_rate_sd=0.15, seed=0)
    train, fresh = runs.select_runs(np.arange(28)), runs.select_runs(np.arange(28, 56))
    posterior = fit_method("bayes-svi", train, FitContext(options={"progress": False, "num_steps": 1500}))
    return posterior, fresh


@pytest.mark.slow
def test_new_run_intervals_of_differences_cover_fresh_runs_and_parameter_ones_do_not(fitted_and_fresh):
    posterior, fresh = fitted_and_fresh
    assert posterior.predictive_kind() == "new-run" and posterior.run_residuals.shape == (28, 30, 6)
    pairs = np.array(list(itertools.combinations(range(fresh.n_runs), 2)))
    final = fresh.losses[:, -1].mean(-1)
    actual = final[pairs[:, 0]] - final[pairs[:, 1]]
    coverage = {}
    for kind in ("new-run", "parameters"):
        draws = posterior.simulate_draws(fresh.curricula, fresh.initial_losses, 400, seed=0, predictive=kind)
        q = draws[:, :, -1].mean(-1)
        coverage[kind] = {level: interval_coverage(q[:, pairs[:, 0]] - q[:, pairs[:, 1]], actual, level)
                          for level in (0.5, 0.9)}
        if kind == "new-run":  # pointwise bands of every fresh point
            low, high = np.quantile(draws[:, :, 1:], [0.05, 0.95], axis=0)
            band = ((fresh.losses[:, 1:] >= low) & (fresh.losses[:, 1:] <= high)).mean()
    assert 0.8 <= coverage["new-run"][0.9] <= 0.99, coverage
    assert 0.35 <= coverage["new-run"][0.5] <= 0.7, coverage
    assert 0.8 <= band <= 0.99, band
    assert coverage["parameters"][0.9] < 0.6, coverage  # parameter uncertainty alone is far too narrow


def test_a_summary_of_the_discrepancy_follows_the_smoothed_bootstrap_of_the_held_out_runs():
    """Oracle: a new run's summary is ``g * mean + c * (sqrt(1 - h^2) (s_r - mean) + h * N(0, v))``
    with ``r`` uniform over the held-out runs and ``v`` their summaries' variance (module
    docstring), so the difference of two runs of one draw is the mixture over ``(i, j)`` of
    ``Normal(c sqrt(1 - h^2) (s_i - s_j), 2 c^2 h^2 v)``: a Kolmogorov-Smirnov test against its
    CDF. One outlying run gives heavy tails that come through (a Gaussian of the same variance
    would not), and no two runs are ever identical."""
    rng = np.random.default_rng(0)
    n = 40
    residuals = rng.normal(0.3, 1.0, (n, 4, 3))
    residuals[7] += 8.0  # one outlying run
    keys = jax.random.split(jax.random.PRNGKey(1), 20000)
    with jax.enable_x64(True):
        draws = np.asarray(draw_discrepancy(jnp.asarray(residuals), keys, jnp.asarray([7, 8], dtype=jnp.uint32)))
    assert draws.shape == (20000, 2, 5, 3)
    np.testing.assert_array_equal(draws[:, :, 0], 0.0)
    summary = residuals[:, -1].mean(-1)  # the mean final residual of each held-out run
    new = draws[:, :, -1].mean(-1)  # [draws, runs]
    difference = new[:, 0] - new[:, 1]
    assert np.all(difference != 0)
    c, h = np.sqrt(n / (n - 1)), 1.06 * n ** -0.2
    centres = (c * np.sqrt(1 - h**2) * (summary[:, None] - summary[None, :])).ravel()
    spread = c * h * np.sqrt(2 * summary.var())

    def mixture_cdf(x):
        return stats.norm.cdf((np.asarray(x)[:, None] - centres[None]) / spread).mean(1)

    assert stats.kstest(difference, mixture_cdf).pvalue > 1e-3
    gaussian = stats.norm(0, np.sqrt(2 * summary.var(ddof=1)))  # same variance, no tails
    assert stats.kstest(difference, gaussian.cdf).pvalue < 1e-6
    # the shared part g * mean: runs of one draw are correlated through it alone
    total = summary.mean() ** 2 + summary.var(ddof=1)
    np.testing.assert_allclose(new[:, 0].var(), total, rtol=0.05)
    assert abs(np.corrcoef(new[:, 0], new[:, 1])[0, 1] - summary.mean() ** 2 / total) < 0.03


def test_the_same_curriculum_gets_the_same_discrepancy_and_others_independent_ones():
    curricula = np.array([[[0, 1]], [[1, 0]], [[0, 1]]])
    ids = curriculum_ids(curricula)
    assert ids[0] == ids[2] != ids[1]
    residuals = np.random.default_rng(2).normal(size=(5, 1, 2))
    residuals -= residuals.mean(0)  # no shared misfit: the runs' draws share nothing else
    with jax.enable_x64(True):
        draws = np.asarray(draw_discrepancy(jnp.asarray(residuals), jax.random.split(jax.random.PRNGKey(0), 3000),
                                            jnp.asarray(ids)))
    np.testing.assert_array_equal(draws[:, 0], draws[:, 2])
    assert abs(np.corrcoef(draws[:, 0, 1, 0], draws[:, 1, 1, 0])[0, 1]) < 0.06


def test_residuals_are_cut_or_held_at_their_last_value():
    residuals = np.arange(12.0).reshape(1, 4, 3)
    np.testing.assert_array_equal(residuals_for_steps(residuals, 2), residuals[:, :2])
    longer = residuals_for_steps(residuals, 6)
    np.testing.assert_array_equal(longer[:, 4:], np.repeat(residuals[:, -1:], 2, axis=1))


@pytest.mark.slow
def test_a_saved_posterior_keeps_its_run_discrepancy(fitted_and_fresh, tmp_path):
    posterior, fresh = fitted_and_fresh
    posterior.save(tmp_path / "posterior.nc")
    loaded = type(posterior).load(tmp_path / "posterior.nc")
    np.testing.assert_array_equal(loaded.run_residuals, posterior.run_residuals)
    args = (fresh.curricula[:3], fresh.initial_losses[:3], 20)
    np.testing.assert_allclose(loaded.simulate_draws(*args, seed=2), posterior.simulate_draws(*args, seed=2), rtol=1e-12)
    # a subset of test examples gets the same draws (discrepancy included) as the same tests of all of them
    np.testing.assert_allclose(posterior.select_tests([1, 4]).simulate_draws(fresh.curricula[:3],
                                                                             fresh.initial_losses[:3, [1, 4]], 20, seed=2),
                               posterior.simulate_draws(*args, seed=2)[..., [1, 4]], rtol=1e-12)


@pytest.mark.slow
def test_the_demo_shows_new_run_bands_and_one_comparison_beside_retraining(fitted_and_fresh, tmp_path):
    from bayes_simfluence.commands import demo

    posterior, fresh = fitted_and_fresh
    result = demo.compare_with_retraining(posterior, fresh)
    assert result["retrained_difference"] == pytest.approx(fresh.losses[2, -1].mean() - fresh.losses[1, -1].mean())
    low, high = result["interval_90"]
    assert low < result["predicted_difference"] < high and 0 < result["prob_better"] < 1
    assert result["uncertainty"].startswith("new-run predictive")
    assert result["retrained_inside_interval"] == (low <= result["retrained_difference"] <= high)
    assert "retrained" in demo.describe_comparison("bayes-svi", result)
    demo.plot_trajectories(tmp_path / "trajectories.png", fresh, {"bayes-svi": posterior})
    assert (tmp_path / "trajectories.png").stat().st_size > 1000
