"""The paper's point simulators: closed form, recovery of known effects, roll-out, baselines."""

import jax.numpy as jnp
import numpy as np
import pytest

from bayes_simfluence import ridge as ridge_lib
from bayes_simfluence.rollout import batch_sums, roll_out
from bayes_simfluence.runs import RunsFormatError
from bayes_simfluence.simulators import MeanTrajectory, SimfluenceLinear
from bayes_simfluence.synthetic import random_curricula, synthetic_runs


def dense_design(runs, variant):
    """Teacher-forced design built naively, row by row, for one test example at a time."""
    n_train, b = runs.n_train, runs.batch_size
    designs, targets = [], []
    for m in range(runs.n_tests):
        rows, ys = [], []
        for r in range(runs.n_runs):
            for t in range(runs.n_steps):
                counts = np.zeros(n_train)
                for i in runs.curricula[r, t]:
                    if i >= 0:
                        counts[i] += 1
                prev, cur = runs.losses[r, t, m], runs.losses[r, t + 1, m]
                filled = (runs.curricula[r, t] >= 0).sum()
                base = 1.0 if variant == "additive" else filled / b
                feats = {"linear": np.concatenate([prev * counts, counts]),
                         "additive": counts, "multiplicative": prev * counts}[variant]
                rows.append(feats)
                ys.append(cur - base * prev)
        designs.append(np.array(rows))
        targets.append(np.array(ys))
    return designs, targets


@pytest.mark.parametrize("common_level", [False, True])
@pytest.mark.parametrize("variant", ["linear", "additive", "multiplicative"])
def test_closed_form_equals_direct_least_squares(variant, common_level):
    runs, _ = synthetic_runs(n_train=7, n_tests=3, n_runs=4, n_steps=9, batch_size=3,
                             empty_fraction=0.2, seed=3)
    strength = 0.37
    equations = ridge_lib.normal_equations(runs.curricula, runs.losses, runs.n_train, variant)
    solved = ridge_lib.solve_ridge(equations, strength, common_level=common_level)
    for m, (X, y) in enumerate(zip(*dense_design(runs, variant))):
        # ridge as an augmented least-squares problem, solved by a different algorithm (QR/SVD); with the
        # common level, one unpenalised column per block: the sum of the block's columns
        n = X.shape[1]
        levels = np.kron(np.eye(n // runs.n_train), np.ones((runs.n_train, 1))) if common_level else np.zeros((n, 0))
        augmented_X = np.block([[X, X @ levels], [np.sqrt(strength) * np.eye(n), np.zeros((n, levels.shape[1]))]])
        augmented_y = np.concatenate([y, np.zeros(n)])
        direct, *_ = np.linalg.lstsq(augmented_X, augmented_y, rcond=None)
        # (the level's 1e-9 relative jitter, design.COMMON_JITTER, moves the last digits)
        np.testing.assert_allclose(solved[m], direct[:n] + levels @ direct[n:], rtol=1e-8,
                                   atol=1e-7 * np.abs(direct).max() if common_level else 1e-10)


def test_recovery_error_shrinks_as_runs_grow():
    errors = []
    for n_runs in (4, 16, 64):
        runs, truth = synthetic_runs(n_train=12, n_tests=3, n_runs=n_runs, n_steps=30, batch_size=3,
                                     noise_scale=0.01, seed=11)
        fitted = SimfluenceLinear(ridge=1e-6).fit(runs)
        errors.append(np.sqrt(np.mean((fitted.multiplicative - truth.multiplicative) ** 2
                                      + (fitted.additive - truth.additive) ** 2)))
    # the error falls roughly like 1/sqrt(runs): each 4x more runs must at least cut it by 1.5x
    assert errors[1] < errors[0] / 1.5 and errors[2] < errors[1] / 1.5, errors
    assert errors[2] < 0.01


def test_exact_recovery_without_noise():
    runs, truth = synthetic_runs(n_train=8, n_tests=2, n_runs=12, n_steps=20, batch_size=2,
                                 noise_scale=0.0, seed=5)
    fitted = SimfluenceLinear(ridge=1e-10).fit(runs)
    np.testing.assert_allclose(fitted.multiplicative, truth.multiplicative, atol=1e-6)
    np.testing.assert_allclose(fitted.additive, truth.additive, atol=1e-6)
    np.testing.assert_allclose(fitted.simulate(runs.curricula, runs.initial_losses), runs.losses,
                               rtol=1e-4, atol=1e-4)


def test_roll_out_matches_the_recurrence_written_out():
    rng = np.random.default_rng(0)
    alpha = rng.uniform(0.9, 1.0, size=(2, 5, 3))
    beta = rng.normal(0, 0.01, size=(2, 5, 3))
    initial = rng.uniform(1, 2, size=(2, 3))
    expected = [initial]
    for t in range(5):
        expected.append(alpha[:, t] * expected[-1] + beta[:, t])
    np.testing.assert_allclose(np.asarray(roll_out(jnp.asarray(alpha), jnp.asarray(beta), jnp.asarray(initial))),
                               np.stack(expected, axis=1), rtol=1e-5)


def test_batch_sums_skip_empty_slots_and_count_repeats():
    effects = jnp.asarray([[1.0, 10.0, 100.0]])
    curricula = jnp.asarray([[[0, 1], [2, -1], [1, 1], [-1, -1]]])
    np.testing.assert_allclose(np.asarray(batch_sums(effects, curricula))[0, :, 0], [11, 100, 20, 0])


def test_additive_model_is_order_blind_over_whole_epochs():
    """With alpha = 1 the final loss is L_0 + sum of B over all examples seen, whatever the order."""
    runs, _ = synthetic_runs(n_train=10, n_tests=2, n_runs=6, n_steps=10, batch_size=2, seed=2)
    additive = SimfluenceLinear(variant="additive", ridge=0.1).fit(runs)
    rng = np.random.default_rng(1)
    order = random_curricula(3, 10, 2, 10, rng)  # 2 epochs of 10 examples each
    initial = np.ones((3, 2))
    final = additive.simulate(order, initial)[:, -1]
    np.testing.assert_allclose(final, final[:1].repeat(3, 0), rtol=1e-5)
    np.testing.assert_allclose(final[0], 1 + 2 * additive.additive.sum(1), rtol=1e-4)


def test_linear_beats_mean_trajectory_on_heldout_runs_drawn_from_the_model():
    runs, _ = synthetic_runs(n_train=16, n_tests=4, n_runs=40, n_steps=40, batch_size=2,
                             effect_scale=0.05, noise_scale=0.005, seed=4)
    train, held = runs.split(8)
    linear = SimfluenceLinear().fit(train)
    mean = MeanTrajectory().fit(train)
    mse = lambda sim: np.mean((sim.simulate(held.curricula, held.initial_losses) - held.losses)[:, 1:] ** 2)
    assert mse(linear) < 0.5 * mse(mean)
    assert linear.cv_report["ridge"] == linear.ridge_selected
    assert len(linear.cv_report["cv_mse"]) == len(linear.cv_report["ridge_grid"])


def test_mean_trajectory_reproduces_the_average():
    runs, _ = synthetic_runs(n_runs=5, seed=0)
    mean = MeanTrajectory().fit(runs)
    np.testing.assert_allclose(mean.simulate(runs.curricula, runs.initial_losses)[0], runs.losses.mean(0))
    with pytest.raises(RunsFormatError, match="covers 40 steps; cannot simulate 41"):
        mean.simulate(np.zeros((1, 41, 4), int), np.ones((1, 4)))


def test_simulate_refuses_bad_inputs():
    runs, _ = synthetic_runs(n_train=10, n_tests=3, n_runs=4, seed=0)
    fitted = SimfluenceLinear(ridge=0.1).fit(runs)
    with pytest.raises(RunsFormatError, match=r"shape \[runs, tests\] = \(4, 3\)"):
        fitted.simulate(runs.curricula, np.ones((4, 2)))
    with pytest.raises(RunsFormatError, match=r"training examples \[0, 10\)"):
        fitted.simulate(np.full((1, 2, 4), 10), np.ones((1, 3)))
    with pytest.raises(RuntimeError, match="not fitted"):
        SimfluenceLinear().simulate(runs.curricula, runs.initial_losses)
    with pytest.raises(ValueError, match="variant must be one of"):
        SimfluenceLinear(variant="quadratic")


def test_chunked_fit_equals_one_shot_fit():
    runs, _ = synthetic_runs(n_train=9, n_tests=5, n_runs=6, n_steps=12, batch_size=3, seed=8)
    one_shot = ridge_lib.split_effects(
        ridge_lib.solve_ridge(ridge_lib.normal_equations(runs.curricula, runs.losses, 9, "linear"), 0.2),
        "linear", 9)
    chunked = ridge_lib.fit_ridge(runs.curricula, runs.losses, 9, "linear", 0.2, max_bytes=1)  # 1 test a chunk
    np.testing.assert_allclose(chunked[0], one_shot[0], rtol=1e-10)
    np.testing.assert_allclose(chunked[1], one_shot[1], rtol=1e-10)


@pytest.mark.parametrize("seed", [0, 1])
def test_chosen_ridge_is_within_10_percent_of_the_best_fixed_strength_on_heldout_runs(seed):
    """Oracle: the best of a fine grid of fixed strengths, judged on held-out runs the CV never sees.

    Few noisy runs for many effects: too weak a ridge is about 1.4x the best, too strong 16x."""
    runs, _ = synthetic_runs(n_train=40, n_tests=6, n_runs=14, n_steps=20, batch_size=3,
                             effect_scale=0.03, noise_scale=0.05, seed=seed)
    train, held = runs.split(6)
    mse = lambda sim: np.mean((sim.simulate(held.curricula, held.initial_losses) - held.losses)[:, 1:] ** 2)
    chosen = SimfluenceLinear().fit(train)
    best_fixed = min(mse(SimfluenceLinear(ridge=r).fit(train)) for r in 10.0 ** np.arange(-4, 4.01, 0.25))
    assert mse(chosen) <= 1.10 * best_fixed
    report = chosen.cv_report
    assert report["ridge_grid"] == sorted(report["ridge_grid"]) and chosen.ridge_selected in report["ridge_grid"]
    assert len(report["cv_tests"]) == 6 and np.argmin(report["cv_log_relative"]) == report["ridge_grid"].index(
        chosen.ridge_selected)


def test_selecting_test_examples_gives_their_columns_of_the_full_simulation():
    runs, _ = synthetic_runs(n_train=10, n_tests=4, n_runs=6, n_steps=8, batch_size=2, seed=3)
    tests = np.array([3, 1])
    for simulator in (SimfluenceLinear(ridge=0.1).fit(runs), MeanTrajectory().fit(runs)):
        full = simulator.simulate(runs.curricula, runs.initial_losses)
        part = simulator.select_tests(tests).simulate(runs.curricula, runs.initial_losses[:, tests])
        np.testing.assert_allclose(part, full[..., tests], rtol=1e-6)


def test_selecting_test_examples_of_a_score_simulator():
    from bayes_simfluence.score_files import ScoreSet
    from bayes_simfluence.scores import AdditiveScoreSimulator

    runs, _ = synthetic_runs(n_train=10, n_tests=4, n_runs=3, n_steps=8, batch_size=2, seed=4)
    rng = np.random.default_rng(0)
    scores = ScoreSet("tracin", rng.normal(size=(2, 4, 10)).astype(np.float32), np.array([0, 4]),
                      np.full(8, 0.1), 1, runs.train_ids, runs.test_ids, {})
    simulator, tests = AdditiveScoreSimulator(scores), np.array([0, 3])
    full = simulator.simulate(runs.curricula, runs.initial_losses)
    part = simulator.select_tests(tests).simulate(runs.curricula, runs.initial_losses[:, tests])
    np.testing.assert_allclose(part, full[..., tests], rtol=1e-6)


def test_the_ridge_centre_option_reaches_the_fit_and_each_variant_has_its_default():
    from bayes_simfluence import fit

    runs, _ = synthetic_runs(n_train=12, n_tests=2, n_runs=6, n_steps=20, batch_size=3, seed=4)
    fixed = SimfluenceLinear(ridge=0.5, common_level=False).fit(runs)
    common = SimfluenceLinear(ridge=0.5, common_level=True).fit(runs)
    assert not np.allclose(fixed.additive, common.additive)
    np.testing.assert_array_equal(fit(runs, "linear", ridge=0.5, ridge_centre="fixed").additive, fixed.additive)
    np.testing.assert_array_equal(fit(runs, "linear", ridge=0.5).additive, common.additive)
    assert [SimfluenceLinear(variant=v).common_level for v in ("linear", "additive", "multiplicative")] == \
        [True, True, False]
