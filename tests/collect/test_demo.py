"""The demo pipeline (on a tiny model standing in for MiniLM) and the embedded task and model."""

import json
import os
import stat

import numpy as np

from bayes_simfluence import cli
from bayes_simfluence.runs import Runs
from bayes_simfluence.collect import CollectConfig, OptimConfig, embedded
from bayes_simfluence.collect.data import load_examples

from collect_fixtures import sentiment_files, tiny_bert


def test_embedded_task_is_real_labelled_text():
    train, test, labels = load_examples(embedded.embedded_data_path("train"), embedded.embedded_data_path("test"),
                                        id_field="id")
    assert labels == ["negative", "positive"]
    assert len(train) == 214 and len(test) == 40
    assert len(set(train.texts)) == len(train.texts) and not set(train.texts) & set(test.texts)
    rows = [json.loads(line) for line in embedded.embedded_data_path("train").read_text().splitlines()]
    kinds = {row["kind"] for row in rows[:64]}
    assert kinds == {"clean", "near_duplicate", "mislabelled", "hard"}  # the demo pool has all kinds


def test_embedded_model_loads_offline_as_a_classifier():
    from bayes_simfluence.collect.model import load_model

    model, tokenizer = load_model(embedded.embedded_model_path(), "classification", init_seed=0)
    again, _ = load_model(embedded.embedded_model_path(), "classification", init_seed=0)
    assert sum(p.numel() for p in model.parameters()) > 20_000_000
    np.testing.assert_array_equal(model.classifier.weight.detach().numpy(), again.classifier.weight.detach().numpy())


def test_demo_runs_end_to_end(tmp_path, monkeypatch, capsys):
    train, test = sentiment_files(tmp_path, n_train=16, n_test=4)
    model = tiny_bert(tmp_path)

    def tiny_demo_config(runs: int) -> CollectConfig:
        return CollectConfig(model=model, train=train, test=test, id_field="id", runs=runs, protocol="subsets",
                             subset_size=12, batch_size=4, epochs=2, optim=OptimConfig(lr=0.2),
                             scores=("tracin", "influence"), score_params="head")

    monkeypatch.setattr(embedded, "demo_config", tiny_demo_config)
    out = tmp_path / "demo"  # 12 runs: 4 training runs the Bayesian fit interpolates, writing a posterior load refuses
    previous = os.umask(0o027)
    try:
        code = cli.main(["demo", "--out", str(out), "--runs", "12", "--heldout-runs", "3", "--workers", "1", "--quiet",
                         "-m", "mean", "-m", "linear", "-m", "tracin", "-m", "influence", "-m", "bayes"])
    finally:
        os.umask(previous)
    assert code == 0
    printed = capsys.readouterr().out
    assert "linear" in printed  # an unknown -m is refused before collecting (test_reliability.py)
    summary = json.loads((out / "results.json").read_text())
    assert set(summary["results"]) == {"mean", "linear", "tracin", "influence", "bayes"}
    assert summary["files"]["runs_bytes"] > 0 and summary["seconds"]["total"] > 0
    assert (out / "trajectories.png").stat().st_size > 1000
    files = ["runs.npz", "runs.scores.npz", "train.npz", "heldout.npz", "linear.npz", "posterior.nc",
             "trajectories.png", "results.json"]
    assert sorted(path.name for path in out.iterdir()) == sorted(files)
    assert f"wrote into {out}: {', '.join(files)}" in printed  # says which files, at its end
    for name in files:  # what the umask gives a new file, not a temporary file's 0600
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o640, name
    assert summary["files"]["simulators"] == {"linear": str(out / "linear.npz"), "bayes": str(out / "posterior.nc")}
    # the split files are Runs.split of the runs file
    train, heldout = Runs.load(out / "runs.npz").split(3)
    np.testing.assert_array_equal(Runs.load(out / "train.npz").losses, train.losses)
    np.testing.assert_array_equal(Runs.load(out / "heldout.npz").curricula, heldout.curricula)
    # simulate, compare and plot work on the demo's files without a new fit
    held = str(out / "heldout.npz")
    for argv in (["simulate", "--simulator", str(out / "linear.npz"), "--curricula", held,
                  "--out", str(tmp_path / "predicted.npz")],
                 ["compare", "--simulator", str(out / "posterior.nc"), "--curricula", f"{held}:0",
                  "--curricula", f"{held}:1", "--draws", "50"],
                 ["plot", "trajectories", "--simulator", str(out / "posterior.nc"), "--runs", held, "--draws", "50",
                  "--plot", str(tmp_path / "bands.png")]):
        assert cli.main(argv) == 0, (argv, capsys.readouterr().err)
    assert "P(better)" in capsys.readouterr().out


def test_demo_rejects_bad_heldout(tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path), "--runs", "4", "--heldout-runs", "4"]) == 2
    assert "--heldout-runs" in capsys.readouterr().err
