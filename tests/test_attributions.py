"""Attributions: exact paired final-loss effects, known helpful examples ranked on top, rankings use uncertainty."""

import numpy as np
import pytest

from bayes_simfluence import attributions as at
from bayes_simfluence.simulators import SimfluenceLinear
from bayes_simfluence.synthetic import synthetic_runs
from effect_posterior import GaussianEffects

N_TRAIN, N_TESTS = 10, 2


@pytest.fixture(scope="module")
def additive():
    """Additive truth: example 3 is clearly the most helpful, example 7 the most harmful."""
    rng = np.random.default_rng(0)
    b_mean = rng.normal(0.0, 0.005, size=(N_TESTS, N_TRAIN))
    b_mean[:, 3], b_mean[:, 7] = -0.05, 0.05
    return GaussianEffects(np.zeros((N_TESTS, N_TRAIN)), b_mean, sd_b=0.004)


def test_final_loss_effects_are_exact_paired_differences_in_an_additive_model(additive):
    """With a = 0 the final loss is L0 + sum of B over appearances, so leaving example i out
    changes it by exactly count_i * B_i in every draw."""
    curriculum = np.concatenate([np.arange(N_TRAIN), np.arange(5)]).reshape(5, 3)
    effects = at.final_loss_effects(additive, curriculum, np.full(N_TESTS, 2.0), n_draws=100, seed=5)
    counts = np.bincount(curriculum.ravel(), minlength=N_TRAIN)
    b = additive.parameter_draws(100, seed=5)["B"]
    expected = counts[None, :] * b.mean(axis=1)  # [draws, n_train]; mean over the test examples
    np.testing.assert_allclose(effects.draws, expected[:, effects.examples], atol=2e-6)  # float32 roll-out
    assert effects.top(1, helpful=True)[0] == 3 and effects.top(1, helpful=False)[0] == 7
    assert effects.prob_helpful[list(effects.examples).index(3)] == 1.0


def test_one_step_and_parameter_effects_rank_the_known_examples(additive):
    draws = at.effect_draws(additive, 300, seed=0)
    one_step = at.one_step_effects(draws, test=1, loss=2.0)
    assert one_step.top(1)[0] == 3 and one_step.top(1, helpful=False)[0] == 7
    lower, upper = at.parameter_effects(draws, 1, "additive").interval(0.9)
    assert upper[3] < 0 < lower[7]
    with pytest.raises(ValueError, match="out of range"):
        at.one_step_effects(draws, test=N_TESTS, loss=1.0)
    with pytest.raises(ValueError, match="part"):
        at.parameter_effects(draws, 0, "both")


def test_rankings_account_for_uncertainty():
    """Example 0 has the most negative mean but is uncertain; example 1 is surely helpful."""
    rng = np.random.default_rng(1)
    draws = np.stack([rng.normal(-1.0, 3.0, 4000), rng.normal(-0.5, 0.05, 4000), rng.normal(0.2, 0.05, 4000)], 1)
    effects = at.ExampleEffects(draws, np.array([10, 11, 12]), "test")
    assert effects.top(1, by="mean")[0] == 10
    assert effects.top(1, by="bound")[0] == 11
    assert effects.top(1, by="probability")[0] == 11
    assert effects.top(1, helpful=False, by="bound")[0] == 12
    records = effects.records(helpful=True, by="probability")
    assert [r["example"] for r in records] == [11, 10] and records[0]["upper"] < 0  # 12 harms: not listed
    assert [r["example"] for r in effects.records(helpful=False)] == [12]
    assert "train_11" in effects.table(2)


def test_point_simulators_give_one_centred_draw():
    runs, truth = synthetic_runs(n_train=8, n_tests=2, n_runs=12, n_steps=16, batch_size=2, effect_scale=0.05, seed=4)
    point = SimfluenceLinear(ridge=1e-4).fit(runs)
    draws = at.effect_draws(point)
    assert draws.multiplicative.shape == (1, 2, 8)
    # centred a = A - 1/batch recovers the truth's centred effects
    np.testing.assert_allclose(draws.multiplicative[0], truth.multiplicative - 0.5, atol=0.02)


def test_examples_not_in_the_curriculum_are_an_error(additive):
    with pytest.raises(ValueError, match="do not appear"):
        at.final_loss_effects(additive, [[0, 1]], np.ones(N_TESTS), examples=[5], n_draws=10)
    with pytest.raises(ValueError, match="out of range"):
        at.final_loss_effects(additive, [[0, 1]], np.ones(N_TESTS), tests=[N_TESTS], n_draws=10)


def test_the_bayesian_posterior_recovers_true_final_loss_effects_and_pairs_exactly():
    """End to end with the collapsed-exact Bayesian fit on runs drawn from known effects."""
    from scipy import stats

    from bayes_simfluence.compare import compare
    from bayes_simfluence.methods import FitContext, fit_method

    runs, truth = synthetic_runs(n_train=12, n_tests=3, n_runs=12, n_steps=24, batch_size=3, effect_scale=0.05,
                                 seed=1)
    posterior = fit_method("bayes-exact", runs, FitContext(options={"num_warmup": 200, "num_samples": 100,
                                                                    "progress": False, "guard_folds": 2}))
    curriculum, initial = runs.curricula[0], runs.initial_losses[0]
    oracle = GaussianEffects(truth.multiplicative - 1.0 / 3, truth.additive)  # centred truth, no uncertainty
    true = at.final_loss_effects(oracle, curriculum, initial, n_draws=1).draws[0]
    fitted = at.final_loss_effects(posterior, curriculum, initial, n_draws=200)
    assert stats.spearmanr(fitted.mean, true).statistic > 0.8
    assert fitted.top(1)[0] in fitted.examples[np.argsort(true)[:3]]
    # the same curriculum twice, with noise or as new runs: paired draws cancel exactly
    for predictive in ("noise", "new-run"):
        same = compare(posterior, [curriculum, curriculum.copy()], initial, n_draws=100, predictive=predictive)
        np.testing.assert_array_equal(same.differences("final"), 0.0)
