"""Stacking of two simulators by held-out roll-outs (bayes_simfluence.stacking), with any method."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from bayes_simfluence.compare import compare
from bayes_simfluence.evaluation import fit_report, score_simulator
from bayes_simfluence.methods import FitContext, fit_method, load_simulator
from bayes_simfluence.runs import Runs
from bayes_simfluence.attributions import with_average_example
from bayes_simfluence.simulators import (AverageExample, EffectSimulator, MeanTrajectory, ProbabilisticSimulator, Reporting,
                                         SimfluenceLinear, Stacked)
from bayes_simfluence.stacking import (StackedProbabilisticSimulator, StackedSimulator, cross_fit_stacking,
                                       fit_stacked, stack, stacked_mean, stacking_weights, weight_trajectory)
from bayes_simfluence.synthetic import synthetic_runs


def test_weights_computed_by_hand_on_a_tiny_example():
    """One run, two steps, two test examples (one run: no trend can be told from noise):
    ``w = sum (f - b)(y - b) / sum (f - b)^2`` at every step, clipped."""
    full = np.array([[[2.0, 2.0], [4.0, 4.0]]])
    blind = np.zeros_like(full)
    actual = np.array([[[1.0, 3.0], [2.0, 6.0]]])
    # test 0: (2 * 1 + 4 * 2) / (4 + 16) = 0.5; test 1: (2 * 3 + 4 * 6) / 20 = 1.5, clipped to 1
    np.testing.assert_allclose(stacking_weights(full, blind, actual), [[0.5, 1.0], [0.5, 1.0]])
    # pointing away from the truth: clipped to 0; no difference between the two: 0
    np.testing.assert_array_equal(stacking_weights(full, blind, -actual), np.zeros((2, 2)))
    np.testing.assert_array_equal(stacking_weights(blind, blind, actual), np.zeros((2, 2)))


def _trusted(trust: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Held-out trajectories ``[40 runs, steps, 3 tests]`` whose truth moves ``trust[t, m]`` of the way
    from the blind prediction to the full one, plus noise correlated along each run (a random walk)."""
    rng = np.random.default_rng(seed)
    steps, tests = trust.shape
    blind = rng.normal(0, 1, (1, steps, tests)) + np.zeros((40, 1, 1))
    full = blind + np.cumsum(rng.normal(0, 0.3, (40, steps, tests)), axis=1)
    actual = blind + trust * (full - blind) + np.cumsum(rng.normal(0, 0.05, (40, steps, tests)), axis=1)
    return full, blind, actual


def test_the_weights_follow_a_trust_that_falls_along_the_run():
    """Oracle: the truth moves ``v[t, m]`` of the way from the blind model to the full one, ``v``
    falling linearly along the run from a level of each test example (a fit whose deviations grow
    too bold late in the run). The weights recover ``v`` at every step; one weight for the whole run
    cannot, and predicts the held-out truth worse."""
    steps = 100
    position = (np.arange(steps)[:, None] - (steps - 1) / 2) / steps
    trust = np.array([0.75, 0.55, 0.65]) - 0.4 * position  # [steps, tests], within [0.35, 0.95]
    full, blind, actual = _trusted(trust)
    weight = stacking_weights(full, blind, actual)
    assert weight.shape == (steps, 3)
    np.testing.assert_allclose(weight, trust, atol=0.08)
    one = stacking_weights(full, blind, actual, trend_sds=np.inf)
    np.testing.assert_allclose(one, one[:1].repeat(steps, axis=0))  # the same weight at every step
    assert np.abs(one - trust).max() > 0.15

    def error(w: np.ndarray) -> float:
        return float(((w * full + (1 - w) * blind - actual) ** 2).mean())

    assert error(weight) < error(one)


def test_without_a_trend_the_weights_mostly_stay_one_per_test_example():
    """The same data with a trust constant along the run: a trend must clear 2 standard errors
    (clustered by runs), so on about 5% of data sets one does by chance; on 2 of 20 seeds at most,
    and elsewhere the weights are exactly the one-weight rule's. Standard errors that ignored the
    correlation of errors along a run would keep spurious trends far more often."""
    trends = 0
    for seed in range(20):
        full, blind, actual = _trusted(np.broadcast_to([0.75, 0.55, 0.65], (100, 3)), seed)
        weight = stacking_weights(full, blind, actual)
        trends += not np.array_equal(weight, stacking_weights(full, blind, actual, trend_sds=np.inf))
        assert np.all(np.abs(weight - [0.75, 0.55, 0.65]) < 0.15), weight
    assert trends <= 2, trends


def test_a_trajectory_keeps_each_steps_weight_and_the_last_beyond_the_fitted_steps():
    weight = np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]])  # [3 fitted steps, 2 tests]
    # L_0 (shared by both simulators) takes step 1's row; steps 1..3 their own; later ones the last
    np.testing.assert_array_equal(weight_trajectory(weight, 6), weight[[0, 0, 1, 2, 2, 2]])
    np.testing.assert_array_equal(weight_trajectory(weight, 2), weight[[0, 0]])
    np.testing.assert_array_equal(weight_trajectory(np.array([0.1, 0.2]), 3), [[0.1, 0.2]] * 3)  # one for all
    full, blind = np.ones((2, 6, 2)), np.zeros((2, 6, 2))
    np.testing.assert_allclose(stacked_mean(weight, full, blind), np.broadcast_to(weight[[0, 0, 1, 2, 2, 2]], (2, 6, 2)))


@pytest.fixture(scope="module")
def noiseless():
    """Runs drawn without noise from known Simfluence-Linear effects, and the generating simulator."""
    runs, truth = synthetic_runs(n_train=12, n_tests=3, n_runs=12, n_steps=20, batch_size=3, noise_scale=0.0,
                                 effect_scale=0.05, seed=1)
    generating = SimfluenceLinear(multiplicative=truth.multiplicative, additive=truth.additive, batch_size=3)
    return runs, generating


def test_the_weight_goes_to_the_generating_process_whichever_side_it_is_on(noiseless):
    runs, generating = noiseless
    towards = cross_fit_stacking(lambda train: generating, runs, folds=4)
    np.testing.assert_allclose(towards.weight, 1.0, atol=1e-9)
    assert towards.report["heldout_mse_full"] < 1e-10 < 1e-4 < towards.report["heldout_mse_blind"]
    np.testing.assert_allclose(towards.residuals, 0.0, atol=1e-6)
    # the blind model as the full one, the generating process as the alternative: weight 0
    away = cross_fit_stacking(lambda train: MeanTrajectory().fit(train), runs, folds=4,
                              alternative=lambda train, fitted: generating, alternative_name="generating")
    np.testing.assert_allclose(away.weight, 0.0, atol=1e-9)
    assert away.report["blind"] == "generating" and away.residuals.shape == (12, 20, 3)


def test_any_method_stacked_predicts_the_weighted_mean_and_survives_save_and_load(noiseless, tmp_path: Path):
    runs, _ = noiseless
    stacked = fit_stacked(lambda train: fit_method("linear", train, FitContext(options={"ridge": 1e-3})), runs)
    assert type(stacked) is StackedSimulator and stacked.name == "linear+stacked"
    assert stacked.info["guard"]["folds"] == 4 and np.all(stacked.weight > 0.9), stacked.weight
    linear = fit_method("linear", runs, FitContext(options={"ridge": 1e-3}))
    blind = MeanTrajectory().fit(runs)
    curricula, initial = runs.curricula[:3], runs.initial_losses[:3]
    assert stacked.weight.shape == (runs.n_steps, runs.n_tests)
    weight = np.concatenate([stacked.weight[:1], stacked.weight])  # L_0: shared, any weight
    expected = weight * linear.simulate(curricula, initial) + (1 - weight) * blind.simulate(curricula, initial)
    np.testing.assert_allclose(stacked.simulate(curricula, initial), expected, rtol=1e-12)
    stacked.save(tmp_path / "stacked.npz")
    loaded = load_simulator(tmp_path / "stacked.npz")
    assert type(loaded) is StackedSimulator and loaded.info == stacked.info
    np.testing.assert_array_equal(loaded.simulate(curricula, initial), stacked.simulate(curricula, initial))
    one = stacked.select_tests(np.array([2]))
    np.testing.assert_array_equal(one.simulate(curricula, initial[:, 2:]), stacked.simulate(curricula, initial)[..., 2:])
    report = fit_report(stacked)
    assert report["guard_weight"] == stacked.info["guard"]["mean_weight"]
    assert score_simulator(stacked, runs.select_runs(np.arange(4)))["all_steps_mse"] < 1e-3


@dataclasses.dataclass
class Noisy:
    """A probabilistic simulator: a point simulator plus seeded Gaussian noise on every loss."""

    point: SimfluenceLinear
    scale: float = 0.1
    name: str = "noisy"

    def simulate(self, curricula: np.ndarray, initial_losses: np.ndarray) -> np.ndarray:
        return self.point.simulate(curricula, initial_losses)

    def simulate_draws(self, curricula: np.ndarray, initial_losses: np.ndarray, n_draws: int, seed: int = 0,
                       predictive: str | None = None) -> np.ndarray:
        mean = self.simulate(curricula, initial_losses)
        return mean + self.scale * np.random.default_rng(seed + 1).standard_normal((n_draws,) + mean.shape)

    def predictive_kind(self, predictive: str | None = None) -> str:
        return predictive or "noise"

    def describe_predictive(self, predictive: str | None = None) -> str:
        return "noise"

    def select_tests(self, tests: np.ndarray) -> "Noisy":
        return Noisy(self.point.select_tests(tests), self.scale)

    def save(self, path: str | Path) -> None:
        raise NotImplementedError("the test's simulator is not saved")


def test_stacked_draws_are_the_blend_the_weights_say_and_stay_paired(noiseless):
    runs, generating = noiseless
    full, blind = Noisy(generating), MeanTrajectory().fit(runs)
    stacked = stack(full, blind, np.array([0.0, 0.5, 1.0]))
    assert isinstance(stacked, StackedProbabilisticSimulator) and isinstance(stacked, ProbabilisticSimulator)
    curricula, initial = runs.curricula[:2], runs.initial_losses[:2]
    draws = stacked.simulate_draws(curricula, initial, n_draws=400, seed=3)
    full_draws = full.simulate_draws(curricula, initial, n_draws=400, seed=3)
    blind_mean = blind.simulate(curricula, initial)
    np.testing.assert_array_equal(draws[..., 0], np.broadcast_to(blind_mean[..., 0], draws[..., 0].shape))
    np.testing.assert_array_equal(draws[..., 2], full_draws[..., 2])
    np.testing.assert_allclose(draws[..., 1], 0.5 * full_draws[..., 1] + 0.5 * blind_mean[None, ..., 1], atol=1e-12)
    # paired: another pair of curricula gets the full model's draws of the same seed
    other = stacked.simulate_draws(runs.curricula[4:6], runs.initial_losses[4:6], n_draws=400, seed=3)
    other_full = full.simulate_draws(runs.curricula[4:6], runs.initial_losses[4:6], n_draws=400, seed=3)
    np.testing.assert_allclose(other[..., 2], other_full[..., 2], atol=1e-12)
    # compare pairs the draws and says where they come from
    result = compare(stacked, [runs.curricula[0], runs.curricula[1]], runs.initial_losses[0], n_draws=50)
    assert result.stacking_weight == pytest.approx(0.5) and "curriculum-blind" in result.uncertainty


def test_too_few_runs_keep_the_full_simulator(noiseless):
    runs, generating = noiseless
    few: Runs = runs.select_runs(np.arange(5))
    stacked = fit_stacked(lambda train: generating, few)
    assert "skipped" in stacked.info["guard"] and np.all(stacked.weight == 1.0)
    np.testing.assert_array_equal(stacked.simulate(few.curricula, few.initial_losses),
                                  generating.simulate(few.curricula, few.initial_losses))


def test_the_protocols_say_what_a_simulator_can_do(noiseless):
    """compare and evaluation read a simulator through its protocols (simulators.py), not its fields."""
    runs, generating = noiseless
    linear = fit_method("linear", runs, FitContext(options={"ridge": 0.5}))
    blind = MeanTrajectory().fit(runs)
    assert isinstance(linear, Reporting) and fit_report(linear) == {"ridge": 0.5}
    assert not isinstance(blind, Reporting) and fit_report(blind) == {}
    assert not isinstance(linear, (ProbabilisticSimulator, Stacked))
    assert isinstance(linear, EffectSimulator) and not isinstance(blind, AverageExample)
    with pytest.raises(ValueError, match="'mean' has no per-example effects to average"):
        with_average_example(blind)
    noisy = Noisy(generating)
    assert isinstance(noisy, ProbabilisticSimulator) and not isinstance(noisy, Stacked)
    # a stack whose alternative is neither blind nor the state-only model: named, with no claim about it
    other = stack(noisy, linear, np.array([0.25, 0.25, 0.25]), {"guard": {"blind": "linear"}})
    assert isinstance(other, Stacked) and other.stacked_alternative == "linear"
    result = compare(other, [runs.curricula[0], runs.curricula[1]], runs.initial_losses[0], n_draws=20)
    assert result.uncertainty == "noise, stacked with the linear model (weight of the effects 0.25)"
    assert fit_report(other) == {"guard": {"blind": "linear"}}
    # the full simulator's own choices come with the stack's
    report = {"mean_weight": 0.5, "blind": "curriculum-blind"}
    assert fit_report(stack(linear, blind, np.full(3, 0.5), {"guard": report})) == {
        "ridge": 0.5, "guard": report, "guard_weight": 0.5}


def seeded_runs_without_effects(n_runs: int, seed: int, n_train: int = 40, n_tests: int = 4, n_steps: int = 30) -> Runs:
    """No example moves any loss: every run decays at a shared rate times a run-level factor (as
    seeds and data order give) plus step noise, from the same initial losses."""
    rng = np.random.default_rng(seed)
    curricula = np.stack([np.stack([rng.choice(n_train, 4, replace=False) for _ in range(n_steps)])
                          for _ in range(n_runs)])
    rate = 0.02 * rng.uniform(0.5, 1.5, (n_runs, 1))
    losses = np.empty((n_runs, n_steps + 1, n_tests))
    losses[:, 0] = np.linspace(1.0, 2.0, n_tests)
    for t in range(n_steps):
        losses[:, t + 1] = losses[:, t] * (1.0 - rate) + 0.004 * rng.standard_normal((n_runs, n_tests))
    return Runs.create(curricula, losses, n_train=n_train)


def test_the_guard_option_stacks_any_method_from_python_and_the_cli(tmp_path: Path, capsys):
    """``guard=True`` (``-o guard=true``) on a non-Bayesian method is held-out stacking with the blind
    model: where examples do nothing, a barely regularised ridge fit credits them with the runs'
    rates and noise; the guard takes weight away from it (all of it for half the test examples
    here), and fresh runs of the generating process are predicted better than by the unguarded fit."""
    import bayes_simfluence as bsf
    from bayes_simfluence.cli import main

    runs, fresh = seeded_runs_without_effects(24, seed=3), seeded_runs_without_effects(16, seed=4)
    plain = bsf.fit(runs, "linear", ridge=1e-6)
    guarded = bsf.fit(runs, "linear", ridge=1e-6, guard=True, guard_folds=3)
    assert type(guarded) is StackedSimulator and guarded.info["guard"]["folds"] == 3
    assert guarded.weight.mean() < 0.5 and np.sum(guarded.weight == 0) >= 2, guarded.weight

    def fresh_mse(simulator) -> float:
        return score_simulator(simulator, fresh)["all_steps_mse"]

    assert fresh_mse(guarded) < 0.95 * fresh_mse(plain)
    path = tmp_path / "runs.npz"
    runs.save(path)
    assert main(["fit", "--train", str(path), "-m", "linear", "-o", "ridge=1e-6", "-o", "guard=true",
                 "--out", str(tmp_path / "guarded.npz")]) == 0
    assert "guard: on 24 held-out training runs (4 folds)" in capsys.readouterr().out
    np.testing.assert_allclose(load_simulator(tmp_path / "guarded.npz").weight, bsf.fit(runs, "linear", ridge=1e-6,
                                                                                         guard=True).weight)
    with pytest.raises(Exception, match="guard"):
        bsf.fit(runs, "mean", guard=True)


@pytest.mark.parametrize("n_folds", [4, 100])
def test_the_parameter_error_share_is_what_the_generating_parameter_errors_explain(n_folds):
    """Held-out residuals generated as a misfit shared by a run's test examples plus the cross-fits'
    parameter errors (a part shared by the runs of a fold, which one fit predicts, and a part of
    each run), and parameter draws from the same distribution as those errors. The oracle is the
    generating variances: the errors' expected sample variance across runs of the stack's mean
    final loss, over the residuals' sample variance; and with it taken out, what is left is the
    misfit's variance (checked with 100 folds, where the fold parts' few realisations in the
    residuals average out)."""
    from bayes_simfluence.bayes.discrepancy import without_parameter_error
    from bayes_simfluence.stacking import parameter_error_share

    rng = np.random.default_rng(0)
    n_runs, n_tests, n_draws = 4000, 3, 400
    fold = np.repeat(np.arange(n_folds), n_runs // n_folds)
    weight = np.array([0.5, 1.0, 1.0])
    misfit_var, fold_var, run_var = 0.02**2, 0.01**2, 0.03**2

    def parameter_errors(size: tuple[int, ...]) -> np.ndarray:  # [..., runs, tests]
        shared = rng.normal(0, np.sqrt(fold_var), size + (n_folds, 1))[..., fold, :]
        return shared + rng.normal(0, np.sqrt(run_var), size + (n_runs, n_tests))

    residuals = np.zeros((n_runs, 2, n_tests))
    residuals[:, -1] = rng.normal(0, np.sqrt(misfit_var), (n_runs, 1)) + weight * parameter_errors(())
    residuals[:, 0] = rng.normal(size=(n_runs, n_tests))
    draws = parameter_errors((n_draws,))
    deviations = draws - draws.mean(axis=0)

    mean_weight = weight.mean()  # the stack's mean final loss: w-weighted errors averaged over tests
    run_part = (weight**2).sum() / n_tests**2 * run_var
    fold_part = mean_weight**2 * fold_var * (n_runs - n_runs / n_folds) / (n_runs - 1)
    expected = (run_part + fold_part) / residuals[:, -1].mean(axis=-1).var(ddof=1)
    share = parameter_error_share(deviations, weight, residuals)
    assert abs(share - expected) < 0.03 * expected, (share, expected)

    kept = without_parameter_error(residuals, share)
    np.testing.assert_allclose(kept.mean(axis=0), residuals.mean(axis=0), atol=1e-12)  # the shared part stays
    if n_folds == 100:
        ratio = kept[:, -1].mean(axis=-1).var(ddof=1) / misfit_var
        assert abs(ratio - 1) < 0.1, ratio
    assert parameter_error_share(np.zeros_like(deviations), weight, residuals) == 0.0
    with pytest.raises(ValueError, match="share"):
        without_parameter_error(residuals, 1.5)
