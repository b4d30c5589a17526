"""Curriculum comparison and the counterfactual helpers: right sign, exact pairing, valid curricula."""

import numpy as np
import pytest

from bayes_simfluence import counterfactuals as cf
from bayes_simfluence.curricula import insert_at, leave_out
from bayes_simfluence.compare import as_curricula, compare
from bayes_simfluence.runs import Runs
from bayes_simfluence.bayes.model import ModelConfig
from bayes_simfluence.bayes.posterior import BayesianSimfluence
from bayes_simfluence.simulators import SimfluenceLinear
from bayes_simfluence.synthetic import random_curricula, synthetic_runs
from effect_posterior import GaussianEffects

N_TRAIN, N_TESTS = 12, 3


@pytest.fixture(scope="module")
def known():
    """Additive effects: examples 0-5 lower every test loss by 0.02 a step, 6-11 raise it by 0.02;
    the posterior sd (0.01) is half the effect, so single draws sometimes flip sign."""
    b_mean = np.tile(np.where(np.arange(N_TRAIN) < 6, -0.02, 0.02), (N_TESTS, 1))
    a_mean = np.full((N_TESTS, N_TRAIN), -0.001)
    return GaussianEffects(a_mean, b_mean, sd_a=0.0005, sd_b=0.01, noise=0.05)


def test_the_better_curriculum_by_construction_wins(known):
    good = np.arange(6).reshape(3, 2).repeat(4, axis=0)  # [12 steps, 2]: only helpful examples
    bad = good + 6
    result = compare(known, [bad, good], np.full(N_TESTS, 2.0), n_draws=400, seed=1, labels=["bad", "good"])
    diff = result.differences("final")[:, 1]
    # 24 helpful appearances vs 24 harmful ones: mean difference -2 * 24 * 0.02 ~ -0.96 (times the
    # small a); the posterior sd of the difference is about 0.01 * sqrt(2 * 4 * 6 * 4) / sqrt(3) ~ 0.08
    assert diff.mean() == pytest.approx(-0.96, abs=0.05)
    assert result.prob_best("final")[1] == 1.0 and result.prob_best("mean")[1] == 1.0
    assert result.prob_better("final")[1] == 1.0
    summary = result.to_dict()["candidates"][1]["final"]
    assert summary["difference_interval"][1] < 0
    assert "good" in result.summary()


def test_identical_curricula_differ_by_exactly_zero_when_paired(known):
    curriculum = np.arange(N_TRAIN).reshape(6, 2)
    for predictive in ("parameters", "noise"):
        result = compare(known, [curriculum, curriculum.copy()], np.full(N_TESTS, 1.5), n_draws=200, seed=3,
                         predictive=predictive)
        np.testing.assert_array_equal(result.differences("final"), 0.0)
        np.testing.assert_array_equal(result.differences("mean"), 0.0)
        np.testing.assert_allclose(result.prob_best("final"), [0.5, 0.5])  # ties share the win
        assert result.losses("final").std() > 0  # the draws themselves do vary


def test_unpaired_draws_would_not_cancel(known):
    """Control for the test above: with different seeds the same curriculum does not give 0."""
    curriculum = np.arange(N_TRAIN).reshape(6, 2)
    first = compare(known, [curriculum, curriculum], np.full(N_TESTS, 1.5), n_draws=200, seed=3)
    second = compare(known, [curriculum, curriculum], np.full(N_TESTS, 1.5), n_draws=200, seed=4)
    assert np.abs(first.losses("final")[:, 0] - second.losses("final")[:, 0]).max() > 1e-3


def test_ragged_candidates_of_different_lengths_match_direct_simulation():
    runs, _ = synthetic_runs(n_train=N_TRAIN, n_tests=N_TESTS, n_runs=10, n_steps=12, batch_size=2, seed=2)
    point = SimfluenceLinear(ridge=0.01).fit(runs)
    initial = runs.initial_losses[0]
    short = [[0, 1], [2], [3, 4]]  # ragged list of batches, 3 steps, width 2
    result = compare(point, [runs.curricula[0], short], initial, tests=[0, 2], reduction="sum")
    assert result.n_draws == 1 and list(result.steps) == [12, 3]
    direct = point.simulate(as_curricula(short), initial[None])[0][:, [0, 2]].sum(-1)  # [steps + 1]
    np.testing.assert_allclose(result.losses("final")[0, 1], direct[-1], rtol=1e-6)
    # mean over the longest candidate's 12 steps, the stopped 3-step candidate holding its final loss
    np.testing.assert_allclose(result.losses("mean")[0, 1], (direct[1:].sum() + 9 * direct[-1]) / 12, rtol=1e-6)
    assert "differ in length (12, 3 steps)" in result.summary() and "stopped" in result.to_dict()["lengths"]
    assert compare(point, [short, short], initial).to_dict()["lengths"] is None
    with pytest.raises(ValueError, match="fill 3 slots.*fitted on batches of 2"):  # no extrapolation to wider batches
        compare(point, [runs.curricula[0], [[0, 1], [2, 3, 4]]], initial)


def test_a_shorter_curriculum_is_the_same_training_stopped_early():
    """Step ``t`` of every candidate runs at step ``t`` of the schedule: the first 5 steps of a run's
    curriculum give exactly the first 5 steps of the whole curriculum's trajectory (the step
    component is read at the same absolute steps), and ``mean`` charges the stopped one its final
    loss over the remaining 7 steps."""
    rng = np.random.default_rng(0)
    shape = (1, 30, N_TESTS)
    drift = np.where(np.arange(12) == 11, 0.5, rng.normal(-0.02, 0.005, shape + (12,)))  # a jump at the last step
    posterior = BayesianSimfluence(
        method="exact", config=ModelConfig(), a=rng.normal(-0.01, 0.01, shape + (N_TRAIN,)),
        b=rng.normal(0.0, 0.01, shape + (N_TRAIN,)), drift=drift, sigma=np.full(shape, 0.01), hyper={},
        scale=np.ones(N_TESTS), train_ids=np.array([f"x{i}" for i in range(N_TRAIN)]),
        test_ids=np.array([f"t{m}" for m in range(N_TESTS)]), batch_size=2)
    whole = random_curricula(1, 12, 2, N_TRAIN, rng)[0]
    result = compare(posterior, [whole, whole[:5]], np.full(N_TESTS, 1.5), n_draws=30, predictive="parameters")
    np.testing.assert_allclose(result.trajectories[1], result.trajectories[0][:, :6], rtol=1e-12)
    assert np.all(np.diff(result.trajectories[0][:, -2:], axis=1) > 0.4)  # the whole one takes the jump
    held = np.concatenate([result.trajectories[1][:, 1:], np.repeat(result.trajectories[1][:, -1:], 7, axis=1)], axis=1)
    np.testing.assert_allclose(result.losses("mean")[:, 1], held.mean(axis=1), rtol=1e-12)


def test_a_candidate_with_several_runs_is_averaged(known):
    orderings = cf.shuffled(np.arange(N_TRAIN).reshape(6, 2), 5, seed=0)
    result = compare(known, [orderings, orderings[:1]], np.full(N_TESTS, 1.0), n_draws=50, predictive="parameters")
    single = [compare(known, [orderings[r], orderings[r]], np.full(N_TESTS, 1.0), n_draws=50,
                      predictive="parameters").losses("final")[:, 0] for r in range(5)]
    np.testing.assert_allclose(result.losses("final")[:, 0], np.mean(single, axis=0), rtol=1e-6)


def test_bad_inputs_give_clear_errors(known):
    curriculum = np.arange(N_TRAIN).reshape(6, 2)
    with pytest.raises(ValueError, match="at least two"):
        compare(known, [curriculum], np.ones(N_TESTS))
    with pytest.raises(ValueError, match="initial_losses"):
        compare(known, [curriculum, curriculum], np.ones(N_TESTS + 1))  # mismatched test count
    with pytest.raises(ValueError, match="out of range"):
        compare(known, [curriculum, curriculum + 1], np.ones(N_TESTS))  # index N_TRAIN
    with pytest.raises(ValueError, match="tests"):
        compare(known, [curriculum, curriculum], np.ones(N_TESTS), tests=[N_TESTS])
    with pytest.raises(ValueError, match="must be >= 0"):
        compare(known, [curriculum, curriculum - 2], np.ones(N_TESTS))
    with pytest.raises(ValueError, match="reduction"):
        compare(known, [curriculum, curriculum], np.ones(N_TESTS), reduction="max")
    with pytest.raises(ValueError, match="do not appear"):
        cf.compare_leave_out(known, curriculum[:2], [9], np.ones(N_TESTS))


def _valid(curricula: np.ndarray) -> Runs:
    curricula = np.asarray(curricula)
    curricula = curricula[None] if curricula.ndim == 2 else curricula
    return Runs.create(curricula, np.zeros((curricula.shape[0], curricula.shape[1] + 1, 1)), n_train=N_TRAIN)


def test_edit_helpers_produce_valid_curricula():
    curriculum = np.arange(N_TRAIN).reshape(4, 3)
    removed = leave_out(curriculum, [1, 7])
    _valid(removed)
    assert not np.isin(removed, [1, 7]).any() and removed.shape == curriculum.shape
    repeated = cf.repeat_examples(curriculum, [1, 4], times=3)
    _valid(repeated)
    assert (repeated == 1).sum() == 3 and (repeated == 4).sum() == 3 and repeated.shape == (4, 5)
    easy_first = cf.order_by_difficulty(curriculum, difficulty=-np.arange(N_TRAIN, dtype=float))
    _valid(easy_first)
    np.testing.assert_array_equal(easy_first.ravel(), np.arange(N_TRAIN)[::-1])
    ragged = np.array([[0, 1, -1], [2, -1, -1]])
    np.testing.assert_array_equal(cf.order_by_difficulty(ragged, np.array([3.0, 2.0, 1.0])), [[2, 1, -1], [0, -1, -1]])
    shuffles = cf.shuffled(ragged, 4, seed=0)
    _valid(shuffles)
    assert (shuffles == -1).sum() == 4 * 3 and all(sorted(s[s >= 0]) == [0, 1, 2] for s in shuffles)
    _valid(insert_at(curriculum, 5, 2))


def test_counterfactual_shortcuts_answer_the_obvious_cases(known):
    curriculum = np.arange(N_TRAIN).reshape(6, 2)
    initial = np.full(N_TESTS, 2.0)
    # leaving out harmful examples (6-11) lowers the loss; leaving out helpful ones raises it
    assert cf.compare_leave_out(known, curriculum, [8, 9], initial, n_draws=200).prob_better("final")[1] > 0.95
    assert cf.compare_leave_out(known, curriculum, [0, 1], initial, n_draws=200).prob_better("final")[1] < 0.05
    repacked = cf.compare_leave_out(known, curriculum, [8, 9], initial, n_draws=50)
    kept_steps = cf.compare_leave_out(known, curriculum, [8, 9], initial, n_draws=50, repack=False)
    assert list(repacked.steps) == [6, 5] and list(kept_steps.steps) == [6, 6]
    repeated = cf.compare_repeat(known, curriculum, [0, 1, 2], initial, times=3, n_draws=200)
    assert repeated.prob_best("final")[1] > 0.95
    inserted = cf.compare_insert(known, curriculum, 0, [0, 5], initial, n_draws=100)
    assert inserted.labels == ("as given", "+0 at step 0", "+0 at step 5") and inserted.prob_better("final")[1] > 0.9
    orderings = cf.compare_orderings(known, curriculum, initial, n_random=4, n_draws=100)
    assert list(orderings.steps) == [6, 6, 6]


def test_a_candidate_identical_to_the_reference_is_said_to_be_and_is_never_better(known):
    curriculum = np.arange(N_TRAIN).reshape(6, 2)
    other = curriculum[::-1].copy()
    result = compare(known, [curriculum, curriculum.copy(), other], np.full(N_TESTS, 1.5), n_draws=200, seed=3,
                     labels=["given", "again", "reversed"])
    assert result.identical == (True, True, False)
    np.testing.assert_array_equal(result.differences("final")[:, 1], 0.0)
    for quantity in ("final", "mean"):
        better, difference = result.prob_better(quantity), result.differences(quantity)[:, 2]
        assert better[0] == 0.0 and better[1] == 0.0  # 0.5 before: every draw a tie, counted half
        assert better[2] == (difference < 0).mean() + 0.5 * (difference == 0).mean()
    entry = result.to_dict()["candidates"][1]
    assert entry["identical_to_reference"] and entry["final"]["prob_better"] == 0.0 and entry["final"]["difference"] == 0
    assert not result.to_dict()["candidates"][2]["identical_to_reference"]
    note = next(line for line in result.summary().splitlines() if line.startswith("note:"))
    assert "again: the same curricula as the reference given" in note and "P(better) 0" in note
    # a padded copy (an extra empty slot in every batch) is the same curriculum
    padded = np.pad(curriculum, ((0, 0), (0, 1)), constant_values=-1)
    assert compare(known, [curriculum, padded], np.full(N_TESTS, 1.5), n_draws=20).identical == (True, True)
    # different curricula are never called identical, even where every draw ties
    assert "identical" not in compare(known, [curriculum, other], np.full(N_TESTS, 1.5), n_draws=20).summary()


def test_candidates_with_examples_no_fitted_run_used_are_named_also_after_a_reload(tmp_path):
    """A fit on runs that never use examples 10 and 11 records them; a comparison names the candidates
    that use them, with how many, in its summary and its JSON, also for a test subset and a reloaded
    posterior; candidates of seen examples only carry no note."""
    import bayes_simfluence as bsf

    rng = np.random.default_rng(0)
    curricula = random_curricula(8, 10, 2, 10, rng)  # [runs, steps, batch] over examples 0-9 only
    losses = 1.0 - 0.02 * np.arange(11)[None, :, None] + 0.01 * rng.standard_normal((8, 11, N_TESTS))
    runs = Runs.create(curricula, losses, n_train=N_TRAIN)
    posterior = bsf.fit(runs, method="bayes-grid", guard=False, memory="none", run_state=False, progress=False)
    assert posterior.info["unseen_indices"] == [10, 11] and posterior.info["unseen_examples"] == 2
    seen = curricula[0]
    one_new = seen.copy()
    one_new[3] = [10, 10]
    both_new = seen.copy()
    both_new[:2] = [[10, 11], [0, 1]]
    posterior.save(tmp_path / "posterior.nc")
    for simulator, tests in ((posterior, None), (posterior, [1]), (bsf.load(tmp_path / "posterior.nc"), None)):
        result = simulator.compare([seen, one_new, both_new], np.ones(N_TESTS), tests=tests, n_draws=20,
                                   labels=["seen", "one", "both"])
        assert result.unseen == (0, 1, 2)
        note = next(line for line in result.summary().splitlines() if line.startswith("note: training examples"))
        assert "one 1, both 2" in note and "seen" not in note
        assert result.to_dict()["unseen_examples"] == {"seen": 0, "one": 1, "both": 2}
    plain = posterior.compare([seen, seen[::-1]], np.ones(N_TESTS), n_draws=20)
    assert plain.unseen == (0, 0) and plain.unseen_note == "" and "training examples in no" not in plain.summary()
    point = compare(SimfluenceLinear(ridge=0.1).fit(runs), [seen, one_new], np.ones(N_TESTS))
    assert point.unseen == () and point.to_dict()["unseen_examples"] is None


def test_candidates_unlike_the_logged_runs_are_named_with_their_numbers_also_after_a_reload(tmp_path):
    """Logged runs each train 16 of 20 examples 3 times (a random 80% subset, 3 epochs of 4 steps);
    a fit records that kind after every step, and a comparison names the candidates outside it, with
    their numbers counted by hand, judged at their own length: 10 distinct examples 4.8 times in 12
    steps; 20 once in 5 steps (the logged runs after 5 steps: 16, 1.25); a logged-like run of 24
    steps, past the logged 12 (and each example used 6 times). In its summary, its JSON, for a test subset and a reloaded posterior. A
    candidate of the logged kind, its first 5 steps (the same training stopped early), or one 10% off
    it carry no note; point simulators record no kind."""
    import bayes_simfluence as bsf
    from bayes_simfluence.run_kind import logged_kind, unlike

    n_train, steps, batch = 20, 12, 4
    rng = np.random.default_rng(1)

    def subset_run(distinct: int, n_steps: int = steps) -> np.ndarray:  # [steps, batch], reshuffled each epoch
        chosen = rng.choice(n_train, distinct, replace=False)
        order = np.concatenate([rng.permutation(chosen) for _ in range(-(-n_steps * batch // distinct))])
        return order[: n_steps * batch].reshape(n_steps, batch)

    curricula = np.stack([subset_run(16) for _ in range(8)])
    losses = 1.0 - 0.02 * np.arange(steps + 1)[None, :, None] + 0.01 * rng.standard_normal((8, steps + 1, N_TESTS))
    runs = Runs.create(curricula, losses, n_train=n_train)
    kind = logged_kind(curricula)
    assert kind["distinct"] == [[4, 8, 12, 16, 16, 16, 16, 16, 16, 16, 16, 16]] * 2
    assert kind["uses"][0][3:] == kind["uses"][1][3:] == [1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0]
    posterior = bsf.fit(runs, method="bayes-grid", guard=False, memory="none", run_state=False, progress=False)
    assert posterior.info["logged_runs"] == kind
    like, fewer, wider, longer = subset_run(16), subset_run(10), np.arange(n_train).reshape(5, 4), subset_run(16, 24)
    near = like.copy()
    near[0, 0] = -1  # 47 slots over 16 or 15 examples: within 10% of the logged numbers
    assert unlike(kind, near) == "" and unlike(kind, like[:5]) == ""
    posterior.save(tmp_path / "posterior.nc")
    labels = ["like", "fewer", "wider", "near", "early", "longer"]
    for simulator, tests in ((posterior, None), (posterior, [1]), (bsf.load(tmp_path / "posterior.nc"), None)):
        result = simulator.compare([like, fewer, wider, near, like[:5], longer], np.ones(N_TESTS), tests=tests,
                                   n_draws=20, labels=labels)
        assert result.unlike[0] == result.unlike[3] == result.unlike[4] == ""
        assert result.unlike[1] == "10 distinct examples per run, each used 4.80 times (logged runs at step 12: 16, 3.00)"
        assert result.unlike[2] == "20 distinct examples per run, each used 1.00 times (logged runs at step 5: 16, 1.25)"
        assert result.unlike[5] == ("16 distinct examples per run, each used 6.00 times (logged runs at step 12: 16, "
                                    "3.00) and 24 steps, past the logged runs' 12")
        note = next(line for line in result.summary().splitlines() if line.startswith("note: unlike the logged runs"))
        assert "fewer 10 distinct" in note and "wider 20 distinct" in note and "longer 16 distinct" in note
        assert "like 16" not in note and "near" not in note and "early" not in note
        assert set(result.to_dict()["unlike_logged_runs"]) == {"fewer", "wider", "longer"}
    plain = posterior.compare([like, like[::-1]], np.ones(N_TESTS), n_draws=20)
    assert plain.unlike_note == "" and "unlike the logged runs" not in plain.summary()
    assert plain.to_dict()["unlike_logged_runs"] is None
    point = compare(SimfluenceLinear(ridge=0.1).fit(runs), [like, fewer], np.ones(N_TESTS))
    assert point.unlike == () and point.to_dict()["unlike_logged_runs"] is None
