"""Curricula: valid, reproducible, and the editing helpers do what they say."""

import numpy as np
import pytest

from bayes_simfluence import curricula as cur
from bayes_simfluence.runs import Runs


def test_orderings_cover_the_pool_once_per_epoch():
    c = cur.random_orderings(n_train=10, n_runs=3, batch_size=4, epochs=2, seed=1)
    assert c.shape == (3, 6, 4)  # ceil(10 / 4) = 3 steps per epoch
    for run in c:
        for epoch in np.split(run, 2):
            filled = epoch[epoch >= 0]
            assert sorted(filled.tolist()) == list(range(10))
            assert (epoch == -1).sum() == 2  # the short last batch is padded
    assert not np.array_equal(c[0], c[1])


def test_subsets_draw_a_fixed_size_subset_per_run():
    c = cur.random_subsets(n_train=20, n_runs=4, subset_size=8, batch_size=4, epochs=3, seed=0)
    assert c.shape == (4, 6, 4)
    for run in c:
        epochs = [set(e.reshape(-1).tolist()) for e in np.split(run, 3)]
        assert len(epochs[0]) == 8 and epochs[0] == epochs[1] == epochs[2]
    assert len({frozenset(run.reshape(-1).tolist()) for run in c}) > 1
    Runs.create(c, np.zeros((4, 7, 1)), n_train=20)  # valid runs-format curricula


def test_sampling_is_reproducible_and_independent_of_the_number_of_runs():
    a = cur.sample_curricula("subsets", 30, 5, 4, epochs=2, seed=7, subset_size=12)
    b = cur.sample_curricula("subsets", 30, 3, 4, epochs=2, seed=7, subset_size=12)
    np.testing.assert_array_equal(a[:3], b)
    assert not np.array_equal(a, cur.sample_curricula("subsets", 30, 5, 4, epochs=2, seed=8, subset_size=12))


def test_bad_sampler_arguments_are_refused():
    with pytest.raises(ValueError, match="cannot exceed"):
        cur.random_subsets(5, 1, 6, 2)
    with pytest.raises(ValueError, match="unknown curriculum protocol"):
        cur.sample_curricula("shuffled", 5, 1, 2)
    with pytest.raises(ValueError, match="subset_size"):
        cur.sample_curricula("subsets", 5, 1, 2)
    with pytest.raises(ValueError, match="positive"):
        cur.random_orderings(5, 0, 2)


def test_from_batches_pads_ragged_batches():
    c = cur.from_batches([[0, 1, 2], [3], [4, 5]], n_train=6)
    np.testing.assert_array_equal(c, [[0, 1, 2], [3, -1, -1], [4, 5, -1]])
    with pytest.raises(ValueError, match="out of range"):
        cur.from_batches([[0, 9]], n_train=6)


def test_leave_out_insert_move_reorder_repeat():
    c = np.array([[[0, 1], [2, 3], [1, 4]]])
    np.testing.assert_array_equal(cur.leave_out(c, [1]), [[[0, -1], [2, 3], [4, -1]]])
    np.testing.assert_array_equal(cur.insert_at(c[0], 5, 1), [[0, 1, -1], [2, 3, 5], [1, 4, -1]])
    np.testing.assert_array_equal(cur.insert_at(cur.leave_out(c, [0]), 5, 0)[0], [[1, 5], [2, 3], [1, 4]])
    np.testing.assert_array_equal(cur.move_to_step(c[0], 1, 1), [[0, -1, -1], [2, 3, 1], [4, -1, -1]])
    np.testing.assert_array_equal(cur.reorder_steps(c, [2, 0, 1])[0], [[1, 4], [0, 1], [2, 3]])
    assert cur.repeat_curriculum(c, 2).shape == (1, 6, 2)
    with pytest.raises(ValueError, match="permutation"):
        cur.reorder_steps(c, [0, 0, 1])


def test_leave_out_with_repacking_fills_full_batches():
    c = np.array([[[0, 1], [2, 3], [1, 4], [5, 6]]])
    packed = cur.leave_out(c, [1], repack=True)
    np.testing.assert_array_equal(packed, [[[0, 2], [3, 4], [5, 6]]])  # order kept, one step fewer
    np.testing.assert_array_equal(cur.leave_out(c[0], [0, 1], repack=True), [[2, 3], [4, 5], [6, -1]])
    two_runs = np.array([[[0, 1], [2, 3]], [[0, 0], [0, 3]]])
    with pytest.raises(ValueError, match="same, non-zero number of steps"):
        cur.leave_out(two_runs, [0], repack=True)  # runs would end at different steps
    with pytest.raises(ValueError, match="non-zero"):
        cur.leave_out(c, [0, 1, 2, 3, 4, 5, 6], repack=True)


def test_group_steps_merges_optimiser_steps():
    c = np.arange(12).reshape(1, 6, 2)
    np.testing.assert_array_equal(cur.group_steps(c, 3)[0], [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]])
    with pytest.raises(ValueError, match="multiple"):
        cur.group_steps(c, 4)


def test_unused_examples_are_the_pool_indices_no_slot_uses():
    curricula = np.array([[[0, -1], [3, 3]], [[-1, -1], [0, 5]]])
    np.testing.assert_array_equal(cur.unused_examples(curricula, 7), [1, 2, 4, 6])
    assert cur.unused_examples(np.full((1, 2, 2), -1), 3).tolist() == [0, 1, 2]


def test_runs_per_example_counts_the_runs_each_example_appears_in():
    rng = np.random.default_rng(3)
    curricula = rng.integers(-1, 12, size=(7, 5, 3))  # -1: empty slots
    counts = cur.runs_per_example(curricula, 15)
    expected = [sum(example in set(run.ravel()) for run in curricula) for example in range(15)]
    assert counts.tolist() == expected and counts[12:].sum() == 0
