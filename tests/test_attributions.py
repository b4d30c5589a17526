"""Attributions against the average example and against an empty slot (leave-out).

Checked against independent NumPy roll-outs, and, for a fitted posterior, against the
counterfactuals of the process the runs were drawn from (not the model's own convention): with a
nonzero mean ``B`` that full batches cannot identify, effects against the average example cover
the generating ones, and leave-out effects do not.
"""

import dataclasses

import numpy as np
import pytest

from bayes_simfluence import attributions as at
from bayes_simfluence.bayes.model import ModelConfig
from bayes_simfluence.bayes.posterior import BayesianSimfluence
from bayes_simfluence.runs import Runs
from bayes_simfluence.simulators import MeanTrajectory, SimfluenceLinear
from bayes_simfluence.synthetic import random_curricula, synthetic_runs
from effect_posterior import GaussianEffects

N_TRAIN, N_TESTS = 10, 2


def _roll(a, b, drift, curriculum, initial, noise=None, one=1.0):
    """``[steps + 1, ..., tests]`` losses of ``L_t = (one + sum a) L_{t-1} + sum B + d_t (+ noise_t)``,
    step by step in float64: ``a``, ``b`` ``[..., tests, n]``, ``drift`` ``[..., tests, steps]`` (or 0),
    ``curriculum`` ``[steps, batch]`` with -1 for an empty slot, ``noise`` ``[steps, tests]``; ``one = 0``
    for the paper's uncentred ``alpha = sum A``."""
    losses = [np.broadcast_to(np.asarray(initial, dtype=np.float64), a.shape[:-1])]
    drift = np.broadcast_to(drift, a.shape[:-1] + (len(curriculum),))
    for t, batch in enumerate(curriculum):
        filled = batch[batch >= 0]
        step = (one + a[..., filled].sum(-1)) * losses[-1] + b[..., filled].sum(-1) + drift[..., t]
        losses.append(step if noise is None else step + noise[t])
    return np.stack(losses)


def _with_average(values):
    """``[..., n]`` -> ``[..., n + 1]``: the last column is the mean of the others (the average example)."""
    return np.concatenate([values, values.mean(-1, keepdims=True)], axis=-1)


def _direct_effects(a, b, drift, curriculum, initial, examples, reference, tests=slice(None), one=1.0):
    """``[..., examples]`` final-loss effects computed directly: the roll-out of the curriculum minus
    the roll-out with each example's slots filled by the average example or emptied."""
    n = a.shape[-1]
    a_x, b_x = _with_average(a), _with_average(b)
    base = _roll(a_x, b_x, drift, curriculum, initial, one=one)[-1][..., tests].mean(-1)
    effects = []
    for i in examples:
        other = np.where(curriculum == i, n if reference == "average" else -1, curriculum)
        effects.append(base - _roll(a_x, b_x, drift, other, initial, one=one)[-1][..., tests].mean(-1))
    return np.stack(effects, axis=-1)


@pytest.fixture(scope="module")
def additive():
    """Additive truth: example 3 is clearly the most helpful, example 7 the most harmful."""
    rng = np.random.default_rng(0)
    b_mean = rng.normal(0.0, 0.005, size=(N_TESTS, N_TRAIN))
    b_mean[:, 3], b_mean[:, 7] = -0.05, 0.05
    return GaussianEffects(np.zeros((N_TESTS, N_TRAIN)), b_mean, sd_b=0.004)


def test_final_loss_effects_are_count_times_the_deviation_in_an_additive_model(additive):
    """With a = 0 the final loss is L0 + sum of B over the slots: filling example i's slots with the
    average example changes it by exactly count_i * (B_i - mean B), emptying them by count_i * B_i,
    in every draw."""
    curriculum = np.concatenate([np.arange(N_TRAIN), np.arange(5)]).reshape(5, 3)
    counts = np.bincount(curriculum.ravel(), minlength=N_TRAIN)
    b = additive.parameter_draws(100, seed=5)["B"].mean(axis=1)  # [draws, n_train]; mean over the test examples
    expected = {"average": counts * (b - b.mean(-1, keepdims=True)), "leave-out": counts * b}
    for reference, wanted in expected.items():
        effects = at.final_loss_effects(additive, curriculum, np.full(N_TESTS, 2.0), n_draws=100, seed=5,
                                        reference=reference)
        np.testing.assert_allclose(effects.draws, wanted[:, effects.examples], atol=2e-6)  # float32 roll-out
        assert effects.top(1, helpful=True)[0] == 3 and effects.top(1, helpful=False)[0] == 7
        assert effects.prob_helpful[list(effects.examples).index(3)] == 1.0
        assert ("average example" in effects.description) == (reference == "average")
        assert ("leave-out" in effects.description) == (reference == "leave-out")
    with pytest.raises(ValueError, match="reference"):
        at.final_loss_effects(additive, curriculum, np.full(N_TESTS, 2.0), n_draws=10, reference="zero")


def _hand_built_posterior(seed=0, draws=40, n_train=8, steps=12, batch=2, level=0.0):
    """A Bayesian posterior with random draws (no fit), ``B`` around ``level``, a step component."""
    rng = np.random.default_rng(seed)
    shape = (1, draws, N_TESTS)
    return BayesianSimfluence(
        method="exact", config=ModelConfig(), a=rng.normal(-0.01, 0.01, shape + (n_train,)),
        b=rng.normal(level, 0.01, shape + (n_train,)), drift=rng.normal(-0.02, 0.005, shape + (steps,)),
        sigma=np.full(shape, 0.01), hyper={}, scale=np.ones(N_TESTS),
        train_ids=np.array([f"x{i}" for i in range(n_train)]), test_ids=np.array(["t0", "t1"]), batch_size=batch)


def test_bayesian_effects_are_paired_roll_outs_of_the_parameter_draws_and_ignore_the_unidentified_level():
    """The Bayesian simulator's effects equal a direct NumPy roll-out of the same parameter draws
    (so the draws are paired and the average example is the pool mean of each draw); adding c to
    every B and taking batch * c from the step component changes no full-batch run, and then changes
    no effect against the average example, while every leave-out effect moves."""
    posterior = _hand_built_posterior()
    rng = np.random.default_rng(1)
    curriculum = random_curricula(1, 12, 2, 8, rng)[0]
    initial = np.array([2.0, 1.5])
    params = posterior.parameter_draws(50, seed=3)
    effects = {}
    for reference in at.REFERENCES:
        effects[reference] = at.final_loss_effects(posterior, curriculum, initial, n_draws=50, seed=3,
                                                   reference=reference)
        direct = _direct_effects(params["a"], params["B"], params["drift"], curriculum, initial,
                                 effects[reference].examples, reference)
        np.testing.assert_allclose(effects[reference].draws, direct, rtol=1e-9, atol=1e-12)
        one_test = at.final_loss_effects(posterior, curriculum, initial, tests=[1], n_draws=50, seed=3,
                                         reference=reference)
        np.testing.assert_allclose(one_test.draws, _direct_effects(params["a"], params["B"], params["drift"],
                                                                   curriculum, initial, one_test.examples,
                                                                   reference, tests=[1]), rtol=1e-9, atol=1e-12)

    shift = 0.02
    shifted = dataclasses.replace(posterior, b=posterior.b + shift, drift=posterior.drift - 2 * shift)
    np.testing.assert_allclose(shifted.simulate_draws(curriculum[None], initial[None], 50, 3, "parameters"),
                               posterior.simulate_draws(curriculum[None], initial[None], 50, 3, "parameters"),
                               atol=1e-12)  # observationally the same posterior
    same = at.final_loss_effects(shifted, curriculum, initial, n_draws=50, seed=3)
    np.testing.assert_allclose(same.draws, effects["average"].draws, atol=1e-12)
    moved = at.final_loss_effects(shifted, curriculum, initial, n_draws=50, seed=3, reference="leave-out")
    counts = np.bincount(curriculum.ravel(), minlength=8)[moved.examples]
    # each of example i's count_i slots adds c, carried to the end by later alphas (near 1)
    assert np.all(np.abs(moved.mean - effects["leave-out"].mean - counts * shift) < 0.3 * counts * shift)


def test_point_simulator_effects_against_the_average_example_match_a_direct_roll_out():
    rng = np.random.default_rng(2)
    point = SimfluenceLinear(ridge=0.0)
    centred_a, b = rng.normal(0, 0.02, (N_TESTS, 6)), rng.normal(0.01, 0.02, (N_TESTS, 6))
    point.set_effects(centred_a, b, batch_size=3)
    curriculum = random_curricula(1, 8, 3, 6, rng)[0]
    initial = np.array([1.0, 3.0])
    for reference in at.REFERENCES:
        effects = at.final_loss_effects(point, curriculum, initial, reference=reference)
        assert not effects.has_uncertainty
        # the paper's alpha = sum A with A = a + 1/batch: an emptied slot takes 1/batch away too
        direct = _direct_effects(point.multiplicative, b, 0.0, curriculum, initial, effects.examples, reference,
                                 one=0.0)
        np.testing.assert_allclose(effects.draws[0], direct, atol=2e-5)  # float32 roll-out
    with pytest.raises(ValueError, match="no per-example effects"):
        at.final_loss_effects(MeanTrajectory(mean_losses=np.ones((9, N_TESTS))), curriculum, initial)
    assert at.final_loss_effects(MeanTrajectory(mean_losses=np.ones((9, N_TESTS))), curriculum, initial,
                                 reference="leave-out").draws.max() == 0.0  # curriculum-blind


def test_score_simulator_effects_against_the_average_example():
    """One checkpoint, constant rate: beta_t = -scale * rate / batch * sum of scores, so filling i's
    slots with the average example changes the final loss by -scale * rate / batch * count_i * (s_i - mean s)."""
    from bayes_simfluence.score_files import ScoreSet
    from bayes_simfluence.scores import AdditiveScoreSimulator

    rng = np.random.default_rng(3)
    scores = rng.normal(size=(1, N_TESTS, 6))
    simulator = AdditiveScoreSimulator(ScoreSet("trak", scores, [0], np.full(8, 0.1), 1, [f"x{i}" for i in range(6)],
                                                ["t0", "t1"]), scale=2.0)
    curriculum = random_curricula(1, 8, 3, 6, rng)[0]
    effects = at.final_loss_effects(simulator, curriculum, np.ones(N_TESTS))
    counts = np.bincount(curriculum.ravel(), minlength=6)[effects.examples]
    deviation = (scores[0] - scores[0].mean(-1, keepdims=True)).mean(0)[effects.examples]
    np.testing.assert_allclose(effects.draws[0], -2.0 * 0.1 / 3 * counts * deviation, atol=2e-6)


def test_one_step_and_parameter_effects_are_relative_to_the_reference(additive):
    draws = at.effect_draws(additive, 300, seed=0)
    one_step = at.one_step_effects(draws, test=1, loss=2.0)
    raw = draws.multiplicative[:, 1] * 2.0 + draws.additive[:, 1]
    np.testing.assert_allclose(one_step.draws, raw - raw.mean(-1, keepdims=True))
    np.testing.assert_allclose(at.one_step_effects(draws, 1, 2.0, reference="leave-out").draws, raw)
    assert one_step.top(1)[0] == 3 and one_step.top(1, helpful=False)[0] == 7
    assert "average example" in one_step.description
    additive_part = at.parameter_effects(draws, 1, "additive")
    np.testing.assert_allclose(additive_part.draws.mean(-1), 0.0, atol=1e-12)  # the average example is 0
    lower, upper = additive_part.interval(0.9)
    assert upper[3] < 0 < lower[7]
    empty_slot = at.parameter_effects(draws, 1, "additive", reference="leave-out")
    np.testing.assert_array_equal(empty_slot.draws, draws.additive[:, 1])
    assert "leave-out" in empty_slot.description
    with pytest.raises(ValueError, match="out of range"):
        at.one_step_effects(draws, test=N_TESTS, loss=1.0)
    with pytest.raises(ValueError, match="part"):
        at.parameter_effects(draws, 0, "both")
    with pytest.raises(ValueError, match="reference"):
        at.parameter_effects(draws, 0, "additive", reference="mean")


def test_plot_attributions_states_its_reference(tmp_path, capsys):
    import json

    from bayes_simfluence.cli import main

    runs, _ = synthetic_runs(n_train=8, n_tests=2, n_runs=10, n_steps=12, batch_size=2, effect_scale=0.05, seed=5)
    runs.save(tmp_path / "runs.npz")
    SimfluenceLinear(ridge=0.01).fit(runs).save(tmp_path / "linear.npz")
    common = ["plot", "attributions", "--simulator", str(tmp_path / "linear.npz"), "--curricula",
              f"{tmp_path / 'runs.npz'}:0", "--json", "--plot", str(tmp_path / "a.png")]
    reports = {}
    for reference, extra in (("average", []), ("leave-out", ["--reference", "leave-out"]),
                             ("one-step", ["--part", "one-step", "--test", "1"])):
        assert main(common + extra) == 0
        reports[reference] = json.loads(capsys.readouterr().out)
    assert "average example" in reports["average"]["description"]
    assert "leave-out" in reports["leave-out"]["description"]
    assert "average example" in reports["one-step"]["description"]


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


# ----------------------------------------------------- against the generating process
GENERATED = {"n_train": 20, "n_tests": 3, "n_runs": 16, "n_steps": 40, "batch": 4, "mean_b": 0.004}


def _generated_runs(seed):
    """Full-batch runs of ``L_t = (1 + sum a) L_{t-1} + sum B + d_t + noise`` with ``a ~ N(0, 0.002)``,
    ``B ~ N(0.004, 0.003)`` (about 90% of the examples raise the loss in every slot they fill), a
    random-walk step component that keeps the loss falling, noise ``N(0, 0.01)``, ``L_0 = 1``."""
    g = GENERATED
    rng = np.random.default_rng(seed)
    a = rng.normal(0.0, 0.002, (g["n_tests"], g["n_train"]))
    b = rng.normal(g["mean_b"], 0.003, (g["n_tests"], g["n_train"]))
    drift = -(0.01 + g["batch"] * g["mean_b"]) + np.cumsum(rng.normal(0.0, 0.001, (g["n_tests"], g["n_steps"])), 1)
    curricula = random_curricula(g["n_runs"], g["n_steps"], g["batch"], g["n_train"], rng)
    noise = 0.01 * rng.standard_normal((g["n_runs"], g["n_steps"], g["n_tests"]))
    losses = np.stack([_roll(a, b, drift, c, np.ones(g["n_tests"]), e) for c, e in zip(curricula, noise)])
    return Runs.create(curricula, losses, n_train=g["n_train"]), (a, b, drift)


def attribution_scores(posterior, runs, truth, curricula=(0, 1)):
    """``{reference: {"coverage", "wrong_sign", "truly_harmful", "called_helpful"}}`` over every
    (curriculum, test example, training example): coverage of the generating effect by the 90%
    interval, and the fraction called helpful or harmful with P > 0.95 whose generating effect has
    the other sign."""
    a, b, drift = truth
    rows = {reference: [] for reference in at.REFERENCES}
    for k in curricula:
        curriculum = runs.curricula[k]
        for test in range(runs.n_tests):
            for reference in at.REFERENCES:
                fitted = at.final_loss_effects(posterior, curriculum, runs.initial_losses[k], tests=[test],
                                               n_draws=400, reference=reference)
                true = _direct_effects(a, b, drift, curriculum, runs.initial_losses[k], fitted.examples,
                                       reference, tests=[test])
                lower, upper = fitted.interval(0.9)
                rows[reference].append(np.stack([
                    (lower <= true) & (true <= upper),
                    ((fitted.prob_helpful > 0.95) & (true > 0)) | ((fitted.prob_harmful > 0.95) & (true < 0)),
                    true > 0, fitted.prob_helpful > 0.95]))
    names = ("coverage", "wrong_sign", "truly_harmful", "called_helpful")
    return {reference: dict(zip(names, np.concatenate(parts, axis=1).mean(axis=1).round(3).tolist()))
            for reference, parts in rows.items()}


@pytest.mark.slow
def test_effects_against_the_average_example_cover_the_generating_counterfactuals_and_leave_out_does_not():
    """Fit bayes-exact (no guard) on runs whose examples mostly raise the loss; the model fixes the
    level of B at 0, which full batches leave unidentified. Against the average example the 90%
    intervals cover the generating effects and almost none has the wrong sign with P > 0.95; the
    leave-out effects of the same posterior read the prior's level instead of the true one."""
    from bayes_simfluence.methods import FitContext, fit_method

    runs, truth = _generated_runs(seed=0)
    posterior = fit_method("bayes-exact", runs, FitContext(options={
        "num_warmup": 200, "num_samples": 200, "guard": False, "progress": False}))
    assert abs(posterior.b.mean()) < 0.001 < truth[1].mean()  # the level is the prior's, not the truth's
    scores = attribution_scores(posterior, runs, truth)
    average, leave_out = scores["average"], scores["leave-out"]
    assert average["coverage"] >= 0.75 and average["wrong_sign"] <= 0.05, scores
    assert leave_out["truly_harmful"] >= 0.85, scores
    assert leave_out["coverage"] <= 0.6 and leave_out["wrong_sign"] >= 0.05, scores
