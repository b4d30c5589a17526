"""The CLI round trip: fit, save, load, simulate, evaluate; bad files exit 2 without a traceback."""

import json
import subprocess
import sys

import numpy as np
import pytest

from bayes_simfluence.cli import main
from bayes_simfluence.runs import Runs
from bayes_simfluence.synthetic import synthetic_runs


@pytest.fixture()
def runs_files(tmp_path):
    runs, _ = synthetic_runs(n_train=12, n_tests=3, n_runs=14, n_steps=20, batch_size=2,
                             effect_scale=0.05, seed=7)
    train, held = runs.split(4)
    paths = {"all": tmp_path / "all.npz", "train": tmp_path / "train.npz", "held": tmp_path / "held.npz"}
    runs.save(paths["all"])
    train.save(paths["train"])
    held.save(paths["held"])
    return paths


def test_fit_save_load_simulate_round_trip(runs_files, tmp_path, capsys):
    model = tmp_path / "linear.npz"
    assert main(["fit", "--train", str(runs_files["train"]), "--method", "linear", "-o", "ridge=0.01",
                 "--out", str(model)]) == 0
    predicted_path = tmp_path / "predicted.npz"
    assert main(["simulate", "--simulator", str(model), "--curricula", str(runs_files["held"]),
                 "--out", str(predicted_path)]) == 0
    predicted = Runs.load(predicted_path)
    held = Runs.load(runs_files["held"])
    assert predicted.losses.shape == held.losses.shape
    np.testing.assert_allclose(predicted.losses[:, 0], held.losses[:, 0])
    # the reloaded simulator predicts what the in-memory one does
    from bayes_simfluence.simulators import SimfluenceLinear
    direct = SimfluenceLinear(ridge=0.01).fit(Runs.load(runs_files["train"]))
    np.testing.assert_allclose(predicted.losses, direct.simulate(held.curricula, held.initial_losses), rtol=1e-6)


def test_evaluate_json_from_two_files_and_from_one_split(runs_files, capsys):
    assert main(["evaluate", "--train", str(runs_files["train"]), "--heldout", str(runs_files["held"]),
                 "-m", "mean", "-m", "linear", "--json"]) == 0
    two_files = json.loads(capsys.readouterr().out)
    assert set(two_files) == {"mean", "linear"}
    for key in ("all_steps_mse", "final_step_mse", "spearman", "spearman_runs"):
        assert key in two_files["linear"]
    assert two_files["mean"]["spearman_runs"] is None  # constant prediction: undefined, not NaN
    assert two_files["linear"]["all_steps_mse"] < two_files["mean"]["all_steps_mse"]
    assert main(["evaluate", "--runs", str(runs_files["all"]), "--heldout-runs", "4", "-m", "linear",
                 "--json"]) == 0
    one_file = json.loads(capsys.readouterr().out)
    assert one_file["linear"]["all_steps_mse"] == pytest.approx(two_files["linear"]["all_steps_mse"])


def test_evaluate_prints_a_table(runs_files, capsys):
    assert main(["evaluate", "--runs", str(runs_files["all"]), "--heldout-runs", "4", "-m", "additive",
                 "-m", "multiplicative"]) == 0
    out = capsys.readouterr().out
    assert "all_steps_mse" in out and "multiplicative" in out
    header = next(line.split() for line in out.splitlines() if line.startswith("method"))
    assert {"spearman_runs", "spearman_mean_loss"} <= set(header)  # names never run together
    row = next(line.split() for line in out.splitlines() if line.startswith("additive"))
    assert len(row) == len(header)  # one cell per column (additive has every metric of this table)


def test_bad_file_exits_2_with_the_validation_message(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, curricula=np.zeros((2, 3, 1), int), losses=np.ones((2, 3, 1)))
    result = subprocess.run([sys.executable, "-m", "bayes_simfluence.cli", "evaluate", "--runs", str(bad),
                             "--heldout-runs", "1", "-m", "mean"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "steps + 1 = 4" in result.stderr and "Traceback" not in result.stderr


def test_unknown_method_and_missing_arguments_exit_2(runs_files, capsys):
    assert main(["evaluate", "--runs", str(runs_files["all"]), "--heldout-runs", "2", "-m", "magic"]) == 2
    assert "unknown method 'magic'" in capsys.readouterr().err
    assert main(["evaluate", "--runs", str(runs_files["all"]), "-m", "mean"]) == 2
    assert "--heldout-runs" in capsys.readouterr().err


def test_bayesian_fit_saves_a_posterior_that_simulate_and_evaluate_reuse(runs_files, tmp_path, capsys):
    posterior = tmp_path / "posterior.nc"
    options = ["-o", "num_draws=50", "-o", "progress=false", "-o", "guard_folds=2"]
    assert main(["fit", "--train", str(runs_files["train"]), "--method", "bayes", *options,
                 "--out", str(posterior)]) == 0
    out = capsys.readouterr().out
    assert "fitted 'bayes' (as bayes-grid: " in out  # 12 training examples: the grid is cheap
    assert "guard: on 10 held-out training runs (2 folds)" in out
    predicted_path = tmp_path / "predicted.npz"
    assert main(["simulate", "--simulator", str(posterior), "--curricula", str(runs_files["held"]),
                 "--out", str(predicted_path)]) == 0
    held = Runs.load(runs_files["held"])
    predicted = Runs.load(predicted_path).losses
    assert predicted.shape == held.losses.shape and np.isfinite(predicted).all()
    capsys.readouterr()
    assert main(["evaluate", "--train", str(runs_files["train"]), "--heldout", str(runs_files["held"]),
                 "-m", "mean", "-m", "bayes", *options, "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    for key in ("all_steps_mse", "coverage_50", "coverage_90", "crps"):
        assert np.isfinite(scores["bayes"][key]), key
    assert 0 <= scores["bayes"]["coverage_50"] <= scores["bayes"]["coverage_90"] <= 1
    assert "coverage_90" not in scores["mean"] or scores["mean"]["coverage_90"] is None
    # the simulator learned something about these runs: it beats the curriculum-blind baseline
    assert scores["bayes"]["all_steps_mse"] < scores["mean"]["all_steps_mse"]
    assert scores["bayes"]["guard"]["folds"] == 2 and 0 <= scores["bayes"]["guard_weight"] <= 1


def test_outputs_land_at_exactly_the_given_path(runs_files, tmp_path):
    model = tmp_path / "model.bin"
    assert main(["fit", "--train", str(runs_files["train"]), "-m", "linear", "-o", "ridge=0.01", "--out", str(model)]) == 0
    out = tmp_path / "predicted"
    assert main(["simulate", "--simulator", str(model), "--curricula", str(runs_files["held"]), "--out", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.npz", "held.npz", "model.bin", "predicted", "train.npz"]
    assert Runs.load(out).losses.shape == Runs.load(runs_files["held"]).losses.shape


def test_simulate_checks_its_arguments_before_writing(runs_files, tmp_path, capsys):
    model = tmp_path / "linear.npz"
    assert main(["fit", "--train", str(runs_files["train"]), "-m", "linear", "-o", "ridge=0.01", "--out", str(model)]) == 0
    out = tmp_path / "draws.npz"
    with pytest.raises(SystemExit) as exit_info:  # argparse refuses it before anything runs
        main(["simulate", "--simulator", str(model), "--curricula", str(runs_files["held"]), "--out", str(out),
              "--draws", "-3"])
    assert exit_info.value.code == 2 and "expected an integer >= 0" in capsys.readouterr().err and not out.exists()
    assert main(["simulate", "--simulator", str(model), "--curricula", str(runs_files["held"]), "--out", str(out),
                 "--draws", "5"]) == 2
    assert "--draws needs a Bayesian simulator" in capsys.readouterr().err and not out.exists()


def test_an_interrupted_write_leaves_nothing_behind(tmp_path):
    from bayes_simfluence import atomic

    target = tmp_path / "file.npz"
    with pytest.raises(KeyboardInterrupt), atomic.atomic_path(target) as temporary:
        temporary.write_bytes(b"half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    atomic.savez(target, {"x": np.arange(3)})
    assert list(tmp_path.iterdir()) == [target] and np.load(target)["x"].tolist() == [0, 1, 2]


def test_unexpected_errors_are_one_line_with_a_debug_hint(runs_files, monkeypatch, capsys):
    from bayes_simfluence.commands import simulate

    def broken(args):
        raise RuntimeError("something internal\nwith a second line")

    monkeypatch.setattr(simulate, "run", broken)
    argv = ["simulate", "--simulator", "x", "--curricula", "y", "--out", "z.npz"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unexpected RuntimeError: something internal with a second line" in err
    assert "--debug" in err and "Traceback" not in err
    with pytest.raises(RuntimeError, match="something internal"):
        main(["--debug", *argv])


def test_compare_says_when_a_candidate_is_the_reference_curriculum(runs_files, tmp_path, capsys):
    model = tmp_path / "linear.npz"
    assert main(["fit", "--train", str(runs_files["train"]), "-m", "linear", "--out", str(model)]) == 0
    held = str(runs_files["held"])
    assert main(["compare", "--simulator", str(model), "--curricula", f"{held}:0", "--curricula", f"{held}:0",
                 "--curricula", f"{held}:1", "--label", "first", "--label", "again", "--label", "second"]) == 0
    out = capsys.readouterr().out
    assert "note: again: the same curricula as the reference first (identical" in out and "second:" not in out
    assert main(["compare", "--simulator", str(model), "--curricula", f"{held}:0", "--curricula", f"{held}:0",
                 "--json"]) == 0
    again = json.loads(capsys.readouterr().out)["candidates"][1]
    assert again["identical_to_reference"] and again["final"]["difference"] == 0.0
