"""``bayes-simfluence features``: per-example features from an .npy, per-pair ones from a scores file,
matched to the runs by example ids, written as the runs format's feature arrays."""

import numpy as np
import pytest

from bayes_simfluence.cli import main
from bayes_simfluence.runs import Runs
from bayes_simfluence.score_files import ScoreSet, save_scores
from bayes_simfluence.synthetic import synthetic_runs


@pytest.fixture()
def files(tmp_path):
    runs, _ = synthetic_runs(n_train=5, n_tests=2, n_runs=3, n_steps=4, batch_size=2, seed=1)
    runs = Runs.create(runs.curricula, runs.losses, 5, [f"ex{i}" for i in range(5)], ["ta", "tb"])
    runs.save(tmp_path / "runs.npz")
    scores = np.arange(2 * 2 * 5, dtype=np.float32).reshape(2, 2, 5)  # [checkpoints, tests, n_train]
    order = [4, 2, 0, 1, 3]  # the scores file lists the pool in another order, the tests reversed
    save_scores(tmp_path / "runs.scores.npz", [ScoreSet(
        "tracin", scores[:, ::-1][:, :, order], np.array([0, 2]), np.full(4, 0.1), 1,
        np.array([f"ex{i}" for i in order]), np.array(["tb", "ta"]))])
    np.save(tmp_path / "labels.npy", np.array([[0.0], [1.0], [1.0], [0.0], [1.0]]))
    return tmp_path, scores


def test_features_attach_labels_and_scores_aligned_by_id(files, capsys):
    folder, scores = files
    out = folder / "featured.npz"
    assert main(["features", str(folder / "runs.npz"), "--scores", str(folder / "runs.scores.npz"),
                 "--train-features", str(folder / "labels.npy"), "--checkpoints", "mean", "--out", str(out)]) == 0
    assert "1 per-example, 1 per-pair feature(s)" in capsys.readouterr().out
    featured = Runs.load(out)
    np.testing.assert_array_equal(featured.train_features[:, 0], [0, 1, 1, 0, 1])
    np.testing.assert_allclose(featured.pair_features[..., 0], scores.mean(0))
    np.testing.assert_array_equal(featured.losses, Runs.load(folder / "runs.npz").losses)


def test_features_needs_something_to_attach_and_names_bad_input(files, capsys):
    folder, _ = files
    out = folder / "featured.npz"
    assert main(["features", str(folder / "runs.npz"), "--out", str(out)]) != 0
    assert "there are no features to attach" in capsys.readouterr().err
    np.save(folder / "short.npy", np.zeros((4, 2)))
    assert main(["features", str(folder / "runs.npz"), "--train-features", str(folder / "short.npy"),
                 "--out", str(out)]) != 0
    assert "'train_features' must have shape [n_train, k] = [5, 'k'], got (4, 2)" in capsys.readouterr().err
    assert not out.exists()


def test_fit_suggests_features_where_each_example_is_in_few_runs(tmp_path, capsys):
    """A pool of 400 with 8 runs of 20 batches of 4: the median example is in one of the runs."""
    from bayes_simfluence.curricula import runs_per_example

    few, _ = synthetic_runs(n_train=400, n_tests=2, n_runs=8, n_steps=20, batch_size=4, seed=0)
    many, _ = synthetic_runs(n_train=20, n_tests=2, n_runs=8, n_steps=20, batch_size=4, seed=0)
    lines = {}
    for name, runs in (("few", few), ("many", many)):
        runs.save(tmp_path / f"{name}.npz")
        assert main(["fit", "--train", str(tmp_path / f"{name}.npz"), "--method", "bayes-grid", "-o", "guard=false",
                     "-o", "memory=none", "--out", str(tmp_path / f"{name}.nc")]) == 0
        lines[name] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("feature prior")]
    share = np.median(runs_per_example(few.curricula, 400)) / 8
    assert share <= 0.125 and len(lines["few"]) == 1 and f"example is in {share:.0%} of them" in lines["few"][0]
    assert "bayes-simfluence features" in lines["few"][0] and lines["many"] == []
