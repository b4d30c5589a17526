"""The CLI round trip: fit, save, load, simulate, evaluate; bad files exit 2 without a traceback."""

import json
import subprocess
import sys
from pathlib import Path

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
    assert "unlike the logged runs" not in capsys.readouterr().out  # held-out runs of the logged kind
    # the second run trains 6 of the 12 examples, each twice as often as a logged run uses one
    halved = held.curricula.copy()
    halved[1] = halved[1] % 6
    Runs.create(halved, held.losses, held.n_train).save(tmp_path / "halved.npz")
    assert main(["simulate", "--simulator", str(posterior), "--curricula", str(tmp_path / "halved.npz"),
                 "--out", str(tmp_path / "halved_predicted.npz")]) == 0
    note = capsys.readouterr().out.splitlines()[-1]
    assert note.startswith("note: 1 of 4 curricula are unlike the logged runs (run 1: 6 distinct examples per run, "
                           "each used 6.67 times (logged runs at step 20: 12, 3.33))")
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


# Runs in a fresh interpreter: builds the parser and asks every command (and plot's kinds) for its
# help, then lists the heavy packages that were imported on the way.
HELP_ONLY = """
import contextlib, io, json, sys
from bayes_simfluence.cli import build_parser, main

parser = build_parser()
commands = parser._subparsers._group_actions[0].choices
asked = [["--help"]] + [[name, "--help"] for name in commands] + [["plot", kind, "--help"] for kind in
                                                               ("trajectories", "attributions")]
codes = []
for argv in asked:
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit as done:
            codes.append(done.code)
heavy = sorted({name.split(".")[0] for name in sys.modules} & {"jax", "numpyro", "arviz", "matplotlib", "torch",
                                                              "scipy", "xarray", "transformers"})
print(json.dumps({"commands": sorted(commands), "codes": codes, "heavy": heavy}))
"""


def test_help_imports_nothing_heavy():
    """``--help`` and ``COMMAND --help`` build the parser from light modules only: it took seconds
    when every command module imported JAX, NumPyro, ArviZ and matplotlib at its top."""
    done = subprocess.run([sys.executable, "-c", HELP_ONLY], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"fit", "evaluate", "simulate", "compare", "plot", "collect", "demo"} <= set(report["commands"])
    assert report["codes"] == [0] * (len(report["commands"]) + 3)
    assert report["heavy"] == [], report["heavy"]


def _module_of(package: str, name: str) -> str:
    """``package.name`` where that is a module (``from bayes_simfluence.bayes import guard``), else ``package``."""
    import importlib.util

    try:
        return package + "." + name if importlib.util.find_spec(f"{package}.{name}") is not None else package
    except ModuleNotFoundError:  # package is a module, not a package: name is one of its attributes
        return package


#: imports a command module may make inside its functions without declaring them: the collect layer
#: (torch, transformers, datasets) and the commands themselves.
OWN_LAYERS = ("bayes_simfluence.collect", "bayes_simfluence.commands")


def _checked(module: str) -> bool:
    """Whether an import of ``module`` must be declared: the package's own, outside :data:`OWN_LAYERS`.
    Asked before :func:`_module_of`, whose ``find_spec`` imports the parent of what it looks up
    (``collect.collector.collect`` imported collect.collector, hence torch, into a test worker that
    later crashed compiling XLA programs, in tests/test_cross_fit_quality.py)."""
    return module.split(".")[0] == "bayes_simfluence" and not module.startswith(OWN_LAYERS)


def _imported_inside_functions(path: Path) -> set[str]:
    """Package modules a command module imports inside its functions (the collect layer excepted)."""
    import ast

    found = set()
    for function in ast.walk(ast.parse(path.read_text())):
        if not isinstance(function, ast.FunctionDef):
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.ImportFrom) and node.module and _checked(node.module):
                names = [_module_of(node.module, alias.name) for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            found |= {name for name in names if name.startswith("bayes_simfluence.") and _checked(name)}
    return found


def test_every_module_a_command_imports_when_it_runs_is_loaded_before_it_runs():
    """What a command imports when it runs is in its IMPORTS, which the CLI loads first, where a
    Ctrl-C ends the process at once (a KeyboardInterrupt inside JAX's import aborted it)."""
    import importlib
    import pkgutil

    from bayes_simfluence import commands

    for info in pkgutil.iter_modules(commands.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"bayes_simfluence.commands.{info.name}")
        declared = set(getattr(module, "IMPORTS", ()))
        assert _imported_inside_functions(Path(module.__file__)) <= declared, info.name
        for name in declared:
            importlib.import_module(name)  # each names a real module


def test_the_methods_the_help_lists_are_the_registry_s():
    """choices.METHODS (the help's list, read without JAX) names every method the registry can fit,
    in a fresh process where no provider has been imported yet (trak and influence-cg were found
    only once bayes_simfluence.scores happened to be imported)."""
    script = ("import json; from bayes_simfluence import choices, methods; "
              "print(json.dumps([list(choices.METHODS), methods.available_methods(), "
              "sorted(methods.method_options('trak'))]))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    listed, registry, trak_options = json.loads(done.stdout)
    assert sorted(listed) == sorted(registry) and {"trak", "influence-cg", "mean", "bayes"} <= set(listed)
    assert "scores" in trak_options


def test_every_output_gets_the_permissions_the_umask_gives_a_new_file(runs_files, tmp_path):
    """Outputs are written to a temporary file (mode 0600) and renamed: the rename must not keep that
    mode. (Posteriors, .nc, and the demo's files: tests/collect/test_demo.py.)"""
    import os
    import stat

    held = str(runs_files["held"])
    commands = [["fit", "--train", str(runs_files["train"]), "-m", "linear", "--out", str(tmp_path / "linear.npz")],
                ["simulate", "--simulator", str(tmp_path / "linear.npz"), "--curricula", held,
                 "--out", str(tmp_path / "predicted.npz")],
                ["compare", "--simulator", str(tmp_path / "linear.npz"), "--curricula", f"{held}:0", "--curricula",
                 f"{held}:1", "--plot", str(tmp_path / "compare.svg")],
                ["evaluate", "--train", str(runs_files["train"]), "--heldout", held, "-m", "mean",
                 "--plot", str(tmp_path / "scores.pdf")]]
    previous = os.umask(0o027)
    try:
        for argv in commands:
            assert main(argv) == 0, argv
    finally:
        os.umask(previous)
    for name in ("linear.npz", "predicted.npz", "compare.svg", "scores.pdf"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name
