"""TracIn: its one-step prediction is the first-order change of the test loss under SGD."""

import numpy as np
import pytest

from bayes_simfluence.collect import CollectConfig, OptimConfig, collect
from bayes_simfluence.score_files import load_scores, scores_path_for
from bayes_simfluence.methods import FitContext, fit_method, load_simulator

from collect_fixtures import lm_files, sentiment_files, tiny_bert, tiny_gpt2


@pytest.mark.parametrize("task, lr", [("classification", 1e-2), ("causal-lm", 1e-3)])
def test_one_step_prediction_matches_the_actual_change_to_first_order(tmp_path, task, lr):
    if task == "classification":
        train, test = sentiment_files(tmp_path)
        model = tiny_bert(tmp_path)
    else:
        train, test = lm_files(tmp_path)
        model = tiny_gpt2(tmp_path)
    config = CollectConfig(model=model, train=train, test=test, task=task, runs=1, batch_size=4, epochs=1,
                           trainable="last:2", score_params="last:2", scores=("tracin",), checkpoint_every=1,
                           optim=OptimConfig(optimizer="sgd", lr=lr))
    runs = collect(config, tmp_path / "runs.npz", progress=False)
    simulator = fit_method("tracin", runs, FitContext(train_path=tmp_path / "runs.npz", options={"scale": "raw"}))
    predicted = simulator.step_coefficients(runs.curricula)[0, 0]  # reference run, first step
    actual = runs.losses[0, 1] - runs.losses[0, 0]
    # the error is second order in the step: relative error ~ lr (the constant is the curvature)
    np.testing.assert_allclose(predicted, actual, rtol=60 * lr, atol=1e-7)
    # every step uses the checkpoint taken just before it (checkpoint_every=1)
    predicted_all = simulator.step_coefficients(runs.curricula[:1])[0]
    observed_all = np.diff(runs.losses[0], axis=0)
    np.testing.assert_allclose(predicted_all, observed_all, rtol=60 * lr, atol=1e-6)


def test_scores_file_layout_and_simulator_round_trip(tmp_path):
    train, test = sentiment_files(tmp_path)
    config = CollectConfig(model=tiny_bert(tmp_path), train=train, test=test, runs=2, batch_size=4, epochs=2,
                           scores=("tracin",), score_params="head", optim=OptimConfig(lr=0.05))
    runs = collect(config, tmp_path / "runs.npz", progress=False)
    scores = load_scores(scores_path_for(tmp_path / "runs.npz"), "tracin")
    assert scores.scores.shape == (6, 4, 12)  # 6 steps -> a checkpoint every 6 // 4 = 1 step
    np.testing.assert_array_equal(scores.checkpoint_steps, np.arange(6))
    np.testing.assert_allclose(scores.learning_rates, 0.05)
    simulator = fit_method("tracin", runs, FitContext(options={"scores": str(scores_path_for(tmp_path / "runs.npz")),
                                                               "scale": "raw"}))
    simulated = simulator.simulate(runs.curricula, runs.initial_losses)
    assert simulated.shape == runs.losses.shape
    simulator.save(tmp_path / "tracin.npz")
    np.testing.assert_allclose(load_simulator(tmp_path / "tracin.npz").simulate(runs.curricula, runs.initial_losses),
                               simulated)
    # a subset of test examples is matched by id
    subset = runs.select_tests([2, 0])
    sub_simulator = fit_method("tracin", subset, FitContext(train_path=tmp_path / "runs.npz", options={"scale": "raw"}))
    np.testing.assert_allclose(sub_simulator.simulate(subset.curricula, subset.initial_losses),
                               simulated[:, :, [2, 0]], rtol=1e-6)


def test_missing_scores_are_a_clear_error(tmp_path):
    from bayes_simfluence.synthetic import synthetic_runs

    runs, _ = synthetic_runs()
    with pytest.raises(ValueError, match="needs precomputed scores"):
        fit_method("tracin", runs, FitContext(train_path=tmp_path / "runs.npz"))
    with pytest.raises(ValueError, match="needs precomputed scores"):
        fit_method("influence", runs, FitContext())
