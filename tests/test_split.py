"""``bayes-simfluence split``: one runs file into training and held-out files, as Runs.split does."""

import os
import stat

import numpy as np
import pytest

from bayes_simfluence.cli import main
from bayes_simfluence.runs import Runs
from bayes_simfluence.synthetic import synthetic_runs


@pytest.fixture()
def runs_file(tmp_path):
    runs, _ = synthetic_runs(n_train=8, n_tests=3, n_runs=6, n_steps=5, batch_size=2, effect_scale=0.05, seed=1)
    runs = Runs.create(runs.curricula, runs.losses, runs.n_train, [f"pool-{i}" for i in range(8)],
                       ["t-a", "t-b", "t-c"], {"source": "test"})
    path = tmp_path / "runs.npz"
    runs.save(path)
    return path


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_split_writes_the_first_runs_and_the_last_n_with_their_ids(runs_file, tmp_path, capsys):
    train_path, heldout_path = tmp_path / "train.npz", tmp_path / "heldout.npz"
    assert main(["split", str(runs_file), "--heldout-runs", "2", "--train", str(train_path),
                 "--heldout", str(heldout_path)]) == 0
    assert f"wrote {train_path} (4 runs) and {heldout_path} (2 held-out runs)" in capsys.readouterr().out
    whole, train, heldout = Runs.load(runs_file), Runs.load(train_path), Runs.load(heldout_path)
    assert train.curricula.shape == (4, 5, 2) and heldout.losses.shape == (2, 6, 3)
    expected_train, expected_heldout = whole.split(2)
    for written, expected in ((train, expected_train), (heldout, expected_heldout)):
        np.testing.assert_array_equal(written.curricula, expected.curricula)
        np.testing.assert_array_equal(written.losses, expected.losses)
        assert list(written.train_ids) == [f"pool-{i}" for i in range(8)] and list(written.test_ids) == ["t-a", "t-b",
                                                                                                     "t-c"]
        assert written.n_train == 8 and written.meta == {"source": "test"}
    np.testing.assert_array_equal(np.concatenate([train.losses, heldout.losses]), whole.losses)


def test_split_refuses_to_hold_out_every_run_and_writes_nothing(runs_file, tmp_path, capsys):
    train_path, heldout_path = tmp_path / "train.npz", tmp_path / "heldout.npz"
    for n in ("6", "9"):
        assert main(["split", str(runs_file), "--heldout-runs", n, "--train", str(train_path),
                     "--heldout", str(heldout_path)]) == 2
        line = _one_line(capsys.readouterr().err)
        assert f"--heldout-runs {n}: {runs_file} has 6 runs; hold out 1 to 5" in line
    assert not train_path.exists() and not heldout_path.exists()


@pytest.mark.parametrize("outputs, message", [
    (("same.npz", "same.npz"), "name the same file; give two paths"),
    (("runs.npz", "heldout.npz"), "--train {folder}/runs.npz: is the input"),
    (("train.npz", "runs.npz"), "--heldout {folder}/runs.npz: is the input"),
])
def test_split_refuses_outputs_that_would_replace_an_input_or_each_other(runs_file, tmp_path, capsys, outputs,
                                                                       message):
    before = runs_file.read_bytes()
    train_path, heldout_path = (tmp_path / name for name in outputs)
    assert main(["split", str(runs_file), "--heldout-runs", "2", "--train", str(train_path),
                 "--heldout", str(heldout_path)]) == 2
    assert message.format(folder=tmp_path) in _one_line(capsys.readouterr().err)
    assert runs_file.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["runs.npz"]


def test_split_of_a_missing_file_or_a_single_run_is_one_line(tmp_path, capsys):
    assert main(["split", str(tmp_path / "none.npz"), "--heldout-runs", "1", "--train", str(tmp_path / "a.npz"),
                 "--heldout", str(tmp_path / "b.npz")]) == 2
    assert "none.npz" in _one_line(capsys.readouterr().err)
    runs, _ = synthetic_runs(n_train=8, n_tests=2, n_runs=1, n_steps=4, batch_size=2, seed=0)
    runs.save(tmp_path / "one.npz")
    assert main(["split", str(tmp_path / "one.npz"), "--heldout-runs", "1", "--train", str(tmp_path / "a.npz"),
                 "--heldout", str(tmp_path / "b.npz")]) == 2
    assert "has a single run; a split needs two or more" in _one_line(capsys.readouterr().err)


def test_split_outputs_get_the_permissions_the_umask_gives_a_new_file(runs_file, tmp_path):
    previous = os.umask(0o027)
    try:
        assert main(["split", str(runs_file), "--heldout-runs", "1", "--train", str(tmp_path / "train.npz"),
                     "--heldout", str(tmp_path / "heldout.npz")]) == 0
    finally:
        os.umask(previous)
    for name in ("train.npz", "heldout.npz"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name  # not a temporary file's 0600
