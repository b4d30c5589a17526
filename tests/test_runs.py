"""The runs format: validation errors name the field, the shape or value, and what was expected."""

import json

import numpy as np
import pytest

from bayes_simfluence.runs import Runs, RunsFormatError


def valid_arrays(runs=3, steps=5, batch=2, tests=4, n_train=6):
    rng = np.random.default_rng(0)
    curricula = rng.integers(0, n_train, size=(runs, steps, batch))
    losses = rng.uniform(0.5, 2.0, size=(runs, steps + 1, tests))
    return curricula, losses


def test_round_trip_keeps_every_field(tmp_path):
    curricula, losses = valid_arrays()
    curricula[0, 0, 1] = -1
    runs = Runs.create(curricula, losses, n_train=9, train_ids=[f"t{i}" for i in range(9)],
                       test_ids=list("abcd"), meta={"lr": 1e-3})
    runs.save(tmp_path / "runs.npz")
    loaded = Runs.load(tmp_path / "runs.npz")
    np.testing.assert_array_equal(loaded.curricula, curricula)
    np.testing.assert_array_equal(loaded.losses, losses)
    assert loaded.n_train == 9 and loaded.meta == {"lr": 1e-3}
    assert list(loaded.test_ids) == list("abcd") and loaded.train_ids[8] == "t8"


def test_n_train_defaults_to_max_index_plus_one():
    curricula, losses = valid_arrays()
    assert Runs.create(curricula, losses).n_train == int(curricula.max()) + 1


def test_slicing_and_split():
    curricula, losses = valid_arrays(runs=5)
    runs = Runs.create(curricula, losses)
    train, held = runs.split(2)
    assert (train.n_runs, held.n_runs) == (3, 2)
    np.testing.assert_array_equal(held.losses, losses[3:])
    assert runs.select_tests([1, 3]).losses.shape == (5, 6, 2)
    short = runs.first_steps(2)
    assert short.curricula.shape[1] == 2 and short.losses.shape[1] == 3


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c, l: (c[0], l), "'curricula' must have 3 dims"),
        (lambda c, l: (c, l[0]), "'losses' must have 3 dims"),
        (lambda c, l: (c, l[:, :-1]), "steps + 1 = 6"),
        (lambda c, l: (c, l[:2]), "'losses' has 2 runs but 'curricula' has 3"),
        (lambda c, l: (c[:0], l[:0]), "no runs"),
        (lambda c, l: (c + 0.5, l), "integer indices"),
        (lambda c, l: (np.where(c == c.flat[0], -2, c), l), "-1 for an empty slot"),
        (lambda c, l: (c, np.where(l > 1.9, np.nan, l)), "non-finite"),
        (lambda c, l: (c, np.where(l > 1.9, np.inf, l)), "non-finite"),
        (lambda c, l: (c.astype(str), l), "integer array"),
    ],
)
def test_invalid_arrays_are_refused_with_a_clear_message(mutate, message):
    curricula, losses = mutate(*valid_arrays())
    with pytest.raises(RunsFormatError, match=message.replace("+", r"\+").replace("(", r"\(")):
        Runs.create(curricula, losses)


def test_index_out_of_range_names_index_position_and_range():
    curricula, losses = valid_arrays()
    curricula[1, 2, 0] = 6
    with pytest.raises(RunsFormatError, match=r"index 6 at \[run, step, slot\] = \[1, 2, 0\].*\[0, 6\)"):
        Runs.create(curricula, losses, n_train=6)


def test_mismatched_id_lengths():
    curricula, losses = valid_arrays()
    with pytest.raises(RunsFormatError, match="'test_ids' has 3 entries but there are 4 test examples"):
        Runs.create(curricula, losses, test_ids=["a", "b", "c"])
    with pytest.raises(RunsFormatError, match="'train_ids' has 2 entries"):
        Runs.create(curricula, losses, n_train=6, train_ids=["a", "b"])


def test_missing_array_in_file(tmp_path):
    curricula, _ = valid_arrays()
    np.savez(tmp_path / "bad.npz", curricula=curricula)
    with pytest.raises(RunsFormatError, match=r"missing required array\(s\) \['losses'\]"):
        Runs.load(tmp_path / "bad.npz")


def test_unreadable_and_absent_files(tmp_path):
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(RunsFormatError, match="not a readable .npz"):
        Runs.load(tmp_path / "junk.npz")
    with pytest.raises(RunsFormatError, match="no such file"):
        Runs.load(tmp_path / "absent.npz")


def test_bad_meta_json(tmp_path):
    curricula, losses = valid_arrays()
    np.savez(tmp_path / "bad.npz", curricula=curricula, losses=losses, meta=np.array("{oops"))
    with pytest.raises(RunsFormatError, match="'meta' is not valid JSON"):
        Runs.load(tmp_path / "bad.npz")


def test_file_written_by_hand_from_a_training_loop(tmp_path):
    """The README recipe: plain numpy arrays, nothing from this package, load back validated."""
    curricula, losses = valid_arrays()
    np.savez(tmp_path / "mine.npz", curricula=curricula, losses=losses,
             meta=np.array(json.dumps({"model": "mine"})))
    assert Runs.load(tmp_path / "mine.npz").meta["model"] == "mine"
