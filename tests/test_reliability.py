"""Reliability past the hostile-input table (issue 28): outputs that would replace inputs or go
through links, memory budgets, overflow, corrupted files, options, messages and interrupts.

In-process CLI calls on tiny synthetic files (as in ``test_hostile_inputs.py``); the interrupt
test starts a few subprocesses.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from bayes_simfluence.cli import main
from bayes_simfluence.runs import Runs
from bayes_simfluence.simulators import SimfluenceLinear
from bayes_simfluence.synthetic import synthetic_runs


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``(exit code, stdout, stderr)`` of one command, argparse's own exits included."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(part) for part in argv])
        except SystemExit as stop:
            code = stop.code
    return code, out.getvalue(), err.getvalue()


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if not line.startswith(("usage:", " "))]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reliability")
    runs, _ = synthetic_runs(n_train=10, n_tests=3, n_runs=10, n_steps=8, batch_size=4, effect_scale=0.03, seed=5)
    train, held = runs.split(3)
    paths = {"train": folder / "train.npz", "held": folder / "held.npz", "linear": folder / "linear.npz"}
    train.save(paths["train"])
    held.save(paths["held"])
    SimfluenceLinear(ridge=0.1).fit(train).save(paths["linear"])
    paths["folder"] = folder
    return paths


def _bytes(path: Path) -> bytes:
    return Path(path).read_bytes()


# ----------------------------------------------------------------------------------------- files
@pytest.mark.parametrize("argv, flag", [
    (["fit", "--train", "{train}", "-m", "linear", "--out", "{train}"], "--out"),
    (["simulate", "--simulator", "{linear}", "--curricula", "{held}", "--out", "{held}"], "--out"),
    (["simulate", "--simulator", "{linear}", "--curricula", "{held}", "--out", "{linear}"], "--out"),
    (["compare", "--simulator", "{linear}", "--curricula", "{held}:0", "--curricula", "{held}:1",
      "--plot", "{link_to_linear}"], "--plot"),
    (["evaluate", "--train", "{train}", "--heldout", "{held}", "-m", "mean", "--plot", "{hard_link}"], "--plot"),
], ids=["fit onto its runs", "simulate onto its curricula", "simulate onto its simulator", "plot onto a link",
        "plot onto a hard link"])
def test_an_output_never_replaces_an_input(files, tmp_path, argv, flag):
    link = tmp_path / "link.png"
    link.symlink_to(files["linear"])
    hard = tmp_path / "hard.png"
    os.link(files["train"], hard)
    names = {**files, "link_to_linear": link, "hard_link": hard}
    before = {name: _bytes(files[name]) for name in ("train", "held", "linear")}
    code, _, err = run_cli([part.format(**names) for part in argv])
    assert code == 2 and f"{flag} " in one_error_line(err) and "would replace it" in err
    assert before == {name: _bytes(files[name]) for name in ("train", "held", "linear")}


def test_a_link_is_written_through_and_new_files_follow_the_umask(files, tmp_path):
    target = tmp_path / "real.npz"
    dangling = tmp_path / "dangling.npz"
    dangling.symlink_to(target.name)
    previous = os.umask(0o027)
    try:
        code, _, err = run_cli(["fit", "--train", files["train"], "-m", "linear", "--out", dangling])
    finally:
        os.umask(previous)
    assert code == 0, err
    assert dangling.is_symlink() and target.is_file() and SimfluenceLinear.load(dangling).batch_size == 4
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # not the temporary file's 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling.npz", "real.npz"]
    os.chmod(target, 0o604)  # a replaced file keeps its permissions
    assert run_cli(["fit", "--train", files["train"], "-m", "linear", "--out", dangling])[0] == 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o604


@pytest.mark.parametrize("out, message", [
    ("{tmp}/newdir/", "names a folder"),
    ("{tmp}/loop.npz", "loops"),
    ("/proc/model.npz", "cannot be written"),
    ("{tmp}/" + "x" * 300 + ".npz", "File name too long"),
], ids=["trailing slash", "looping link", "unwritable folder", "long name"])
def test_an_unusable_output_path_is_refused_before_the_work(files, tmp_path, monkeypatch, out, message):
    (tmp_path / "loop.npz").symlink_to(tmp_path / "loop.npz")
    from bayes_simfluence import methods

    def never(*args, **kwargs):
        raise AssertionError("the fit ran before the output path was checked")

    monkeypatch.setattr(methods, "_METHODS", {**methods._METHODS, "linear": never})
    code, _, err = run_cli(["fit", "--train", files["train"], "-m", "linear", "--out", out.format(tmp=tmp_path)])
    line = one_error_line(err)
    assert code == 2 and message in line and ".partial" not in line
    assert not (tmp_path / "newdir").exists()


def test_an_error_while_writing_names_the_users_path(tmp_path, monkeypatch):
    from bayes_simfluence import atomic

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / ".out.npz.abc.partial"))

    monkeypatch.setattr(np, "savez", full_disk)
    with pytest.raises(ValueError) as error:
        atomic.savez(tmp_path / "out.npz", {"x": np.arange(3)})
    assert str(error.value).startswith(f"{tmp_path / 'out.npz'}: could not be written (No space left")
    assert list(tmp_path.iterdir()) == []


def test_demo_checks_its_methods_and_folder_before_collecting(files):
    code, _, err = run_cli(["demo", "-m", "nosuch"])
    assert code == 2 and "-m nosuch: unknown method" in one_error_line(err)
    code, _, err = run_cli(["demo", "--out", files["linear"]])
    assert code == 2 and "is a file" in one_error_line(err)


# ---------------------------------------------------------------------------------------- memory
def _header_only_npz(path: Path, curricula: np.ndarray, losses_shape: tuple[int, ...]) -> None:
    """A runs file whose 'losses' header declares ``losses_shape`` float64 (and holds no data)."""
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        data = io.BytesIO()
        np.save(data, curricula)
        archive.writestr("curricula.npy", data.getvalue())
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": losses_shape})
        archive.writestr("losses.npy", header.getvalue())


def test_huge_requests_are_refused_at_once_with_the_estimate_and_the_limit(files, tmp_path, monkeypatch):
    from bayes_simfluence.compare import simulate_draws_of

    class Posterior:  # the budget is checked before a single draw is taken (a ProbabilisticSimulator)
        name, train_ids = "bayes", np.arange(10).astype(str)

        def simulate_draws(self, *args, **kwargs):
            raise AssertionError("drew before the memory check")

        simulate = save = select_tests = describe_predictive = predictive_kind = simulate_draws

    held = Runs.load(files["held"])
    bomb = tmp_path / "bomb.npz"
    _header_only_npz(bomb, held.curricula, (3 * 10**12,))
    with pytest.raises(ValueError, match=r"--draws\): 100000000 draws .* would need about .* of memory; .* is"):
        simulate_draws_of(Posterior(), held.curricula, held.initial_losses, 10**8, 0, None)
    code, _, err = run_cli(["fit", "--train", bomb, "-m", "linear", "--out", tmp_path / "o.npz"])
    assert code == 2 and "would need about 87.3 TiB of memory" in one_error_line(err) and "'losses'" in err
    code, _, err = run_cli(["compare", "--simulator", files["linear"], "--curricula", f"{files['held']}:0",
                            "--repeat", "1", "--times", "100000000000"])
    assert code == 2 and "--times" in one_error_line(err) and "would need about" in err
    # decompressed sizes count, not the archive's: 8 MB of zeros compress to a few KB
    squeezed = tmp_path / "squeezed.npz"
    np.savez_compressed(squeezed, curricula=held.curricula, losses=np.zeros((1000, 1001, 1)))
    assert squeezed.stat().st_size < 100_000
    monkeypatch.setenv("BAYES_SIMFLUENCE_MEMORY_LIMIT", "16M")
    code, _, err = run_cli(["fit", "--train", squeezed, "-m", "linear", "--out", tmp_path / "o.npz"])
    assert code == 2 and "would need about 30.6 MiB of memory; 16.0 MiB is the limit" in one_error_line(err)


@pytest.mark.parametrize("content, message", [
    ("object_npz", "holds Python objects"),
    ("not_zip", "not a zip archive"),
    ("truncated_npz", "not a readable .npz"),
    ("object_npy", "holds Python objects"),
    ("truncated_npy", "not a readable .npy array"),
], ids=lambda value: value if " " not in value else "")
def test_unreadable_arrays_are_named_and_never_unpickled(files, tmp_path, content, message):
    held = Runs.load(files["held"])
    raw = _bytes(files["held"])
    path = tmp_path / ("c.npy" if content.endswith("npy") else "r.npz")
    if content == "object_npz":
        np.savez(path, curricula=np.array([{"a": 1}], dtype=object), losses=held.losses)
    elif content == "not_zip":
        path.write_bytes(b"\x93NUMPY\x01\x00 this is no archive")
    elif content == "truncated_npz":
        path.write_bytes(raw[: len(raw) // 2])
    elif content == "object_npy":
        np.save(path, np.array([[1, "a"]], dtype=object), allow_pickle=True)
    else:
        np.save(path, held.curricula[0])
        path.write_bytes(path.read_bytes()[:-20])
    argv = (["compare", "--simulator", files["linear"], "--curricula", f"{files['held']}:0", "--curricula", path]
            if path.suffix == ".npy" else ["simulate", "--simulator", files["linear"], "--curricula", path,
                                            "--out", tmp_path / "o.npz"])
    code, _, err = run_cli(argv)
    line = one_error_line(err)
    assert code == 2 and message in line and str(path) in line and "allow_pickle" not in line


@pytest.mark.parametrize("change, message", [
    ("empty", "every slot of 'curricula' is empty"),
    ("constant", "the losses never change"),
    ("huge_pool", "distinct training examples"),
])
def test_runs_nothing_can_be_learnt_from_are_refused(files, tmp_path, change, message):
    train = Runs.load(files["train"])
    curricula, losses, n_train = train.curricula, train.losses, train.n_train
    if change == "empty":
        curricula = np.full_like(curricula, -1)
    elif change == "constant":
        losses = np.full_like(losses, 0.75)
    else:
        n_train = 10**6
    path = tmp_path / "runs.npz"
    Runs.create(curricula, losses, n_train).save(path)
    for method in ("linear", "bayes"):
        code, _, err = run_cli(["fit", "--train", path, "-m", method, "--out", tmp_path / "o.nc"])
        assert code == 2 and message in one_error_line(err)


# -------------------------------------------------------------------------------------- numerics
def test_point_roll_outs_keep_tiny_and_huge_losses_in_float64(files, tmp_path):
    train, held = Runs.load(files["train"]), Runs.load(files["held"])
    linear = SimfluenceLinear(variant="multiplicative", ridge=0.1).fit(train)  # beta = 0: scales with L0
    expected = linear.simulate(held.curricula, held.initial_losses)
    for scale in (1e-40, 1e39):  # float32 gave 0 everywhere and inf
        scaled = linear.simulate(held.curricula, held.initial_losses * scale)
        np.testing.assert_allclose(scaled, expected * scale, rtol=1e-9)
    tiny = tmp_path / "tiny.npz"
    Runs.create(train.curricula, train.losses * 1e-40, train.n_train).save(tiny)
    predicted = SimfluenceLinear().fit(Runs.load(tiny)).simulate(held.curricula, held.initial_losses * 1e-40)
    assert np.median(np.abs(predicted / (held.losses * 1e-40) - 1)) < 0.1  # float32 predicted 0 here


def test_a_result_that_overflows_is_refused_without_blaming_the_inputs(files, tmp_path):
    doubling = SimfluenceLinear(multiplicative=np.full((3, 10), 0.5), additive=np.zeros((3, 10)), batch_size=4)
    model = tmp_path / "doubling.npz"
    doubling.save(model)
    held = Runs.load(files["held"])
    long = tmp_path / "long.npz"
    Runs.create(np.tile(held.curricula, (1, 150, 1)), np.ones((3, 1201, 3)), held.n_train).save(long)
    out = tmp_path / "out.npz"
    code, _, err = run_cli(["simulate", "--simulator", model, "--curricula", long, "--out", out])
    line = one_error_line(err)
    assert code == 2 and "the simulated trajectories overflowed" in line and "'losses'" not in line
    assert not out.exists()
    code, out_text, err = run_cli(["compare", "--simulator", model, "--curricula", f"{long}:0",
                                   "--curricula", f"{long}:1", "--json"])
    assert code == 2 and "simulating candidate" in one_error_line(err) and "overflowed" in err and out_text == ""


# ------------------------------------------------------------------------------- saved posteriors
def _posterior_file(path: Path, runs: Runs, change: str) -> Path:
    """A small posterior file (no fit) with one field corrupted as ``change`` says."""
    from bayes_simfluence.bayes import arviz_data, posterior_io
    from bayes_simfluence.bayes.model import ModelConfig

    draws = (1, 4, runs.n_tests)
    fields = {"method": "svi", "config": ModelConfig(), "a": np.zeros(draws + (runs.n_train,)),
              "b": np.zeros(draws + (runs.n_train,)), "drift": None, "sigma": np.ones(draws),
              "hyper": {"memory_decay": np.full(draws, 0.5)}, "scale": np.ones(runs.n_tests),
              "train_ids": runs.train_ids, "test_ids": runs.test_ids, "sample_stats": {}, "info": {},
              "batch_size": runs.batch_size, "run_residuals": np.zeros((2, 3, runs.n_tests))}
    if change == "residuals_nan":
        fields["run_residuals"] = np.full((2, 3, runs.n_tests), np.nan)
    elif change == "noise_inf":
        fields["sigma"] = np.full(draws, np.inf)
    elif change == "noise_negative":
        fields["sigma"] = -np.ones(draws)
    elif change == "decay":
        fields["hyper"]["memory_decay"] = np.full(draws, 1.5)
    elif change == "effects_huge":  # effects of 0.01 times 1e6
        fields["a"] = np.full(draws + (runs.n_train,), 0.01 * 1e6)
    elif change == "recency":
        fields.update(state=np.zeros(draws + (2,)), state_direction=np.ones(runs.n_train), state_recency=50.0)
    elif change == "state_without_direction":
        fields.update(state=np.zeros(draws + (2,)), state_direction=np.ones(runs.n_train), state_recency=0.5)
    elif change == "config_state_without_state":
        fields["config"] = ModelConfig(run_state=True)
    groups = posterior_io.posterior_groups(fields)
    if change == "method":
        groups["posterior"].attrs["method"] = "bogus"
    elif change == "state_without_direction":  # as a file written before the run state's direction was saved
        groups["constant_data"] = groups["constant_data"].drop_vars("state_direction")
        del groups["posterior"].attrs["state_recency"]
    elif change == "info":
        groups["posterior"].attrs["info"] = "[" * 100_000
    arviz_data.write_netcdf(arviz_data.container(groups), path)
    return path


@pytest.mark.parametrize("change, message", [
    ("valid", ""),
    ("residuals_nan", "'run_residuals' holds NaN or inf in 100%"),
    ("noise_inf", "'noise_scale' holds NaN or inf"),
    ("noise_negative", "'noise_scale' is a scale and must be > 0"),
    ("decay", "'memory_decay' must be in [0, 1)"),
    ("effects_huge", "'a' reaches 1e+04 of the loss's typical size per appearance"),
    ("recency", "'state_recency' must be in [0, 1), found 50"),
    ("state_without_direction", "holds 'run_state' but lacks ['state_direction', 'state_recency']"),
    ("config_state_without_state", "the file lacks 'run_state'"),
    ("method", "'method' is 'bogus'"),
    ("info", "'info' attribute is not valid JSON"),
])
def test_a_corrupted_posterior_is_refused_naming_the_field(files, tmp_path, change, message):
    path = _posterior_file(tmp_path / "posterior.nc", Runs.load(files["train"]), change)
    out = tmp_path / "out.npz"
    code, _, err = run_cli(["simulate", "--simulator", path, "--curricula", files["held"], "--out", out])
    if change == "valid":
        assert code == 0, err
        return
    line = one_error_line(err)
    assert code == 2 and str(path) in line and message in line
    assert not out.exists()


# --------------------------------------------------------------------------------------- options
@pytest.mark.parametrize("method, option, message", [
    ("bayes-svi", "learning_rate=-1", "-o learning_rate: expected a number > 0, got -1"),
    ("bayes-svi", "final_lr_fraction=2", "-o final_lr_fraction: expected a number in (0, 1]"),
    ("bayes-svi", "guide=nosuch", "-o guide: expected one of"),
    ("bayes-svi", "precision=16", "-o precision: expected one of ['float32', 'float64']"),
    ("bayes-nuts", "target_accept=5", "-o target_accept: expected a number in (0, 1), got 5"),
    ("bayes-nuts", "chain_method=bogus", "-o chain_method: expected one of ['parallel', 'sequential'"),
    ("bayes-svi", "num_steps=" + "9" * 5000, "-o num_steps: expected an integer"),
    ("bayes-svi", "nu=-1", "-o nu: expected a number > 0, got -1"),
    ("bayes-grid", "memory=sometimes", "-o memory: expected one of ['none', 'geometric'], got 'sometimes'"),
])
def test_option_values_are_checked_by_type_and_range_before_the_fit(files, tmp_path, method, option, message):
    out = tmp_path / "p.nc"
    code, _, err = run_cli(["fit", "--train", files["train"], "-m", method, "-o", option, "--out", out])
    assert code == 2 and message in one_error_line(err) and not out.exists()


def test_a_repeated_option_and_a_huge_seed_are_refused(files, tmp_path):
    code, _, err = run_cli(["fit", "--train", files["train"], "-m", "linear", "-o", "ridge=1", "-o", "ridge=2",
                            "--out", tmp_path / "o.npz"])
    assert code == 2 and "-o ridge: given twice (1 and 2)" in one_error_line(err)
    code, _, err = run_cli(["compare", "--simulator", files["linear"], "--curricula", f"{files['held']}:0",
                            "--curricula", f"{files['held']}:1", "--seed", "1" * 30])
    assert code == 2 and "--seed" in one_error_line(err) and "digits" in err


def test_the_python_api_refuses_coercions(files):
    from bayes_simfluence import compare as comparing
    from bayes_simfluence import counterfactuals

    held, linear = Runs.load(files["held"]), SimfluenceLinear.load(files["linear"])
    curriculum, initial = held.curricula[0], held.losses[0, 0]
    for index in ([1.5], ["1"], [True, 1], 1.5):
        with pytest.raises(ValueError, match="runs index"):
            held.select_runs(index)
    assert held.select_runs([True, False, True]).n_runs == 2 and held.select_runs([2]).n_runs == 1
    for candidate in ([[0, 1.5]], [[True, 1]], [["1", 2]]):
        with pytest.raises(ValueError, match="expected an integer"):
            comparing.compare(linear, [curriculum, candidate], initial)
    with pytest.raises(ValueError, match="examples: expected an integer, got 1.5"):
        counterfactuals.compare_leave_out(linear, curriculum, [1.5], initial)
    with pytest.raises(ValueError, match="n_draws: expected an integer >= 1, got -3"):
        comparing.compare(linear, [curriculum, curriculum], initial, n_draws=-3)
    with pytest.raises(ValueError, match="predictive: 'bogus' is not one of"):
        comparing.compare(linear, [curriculum, curriculum], initial, predictive="bogus")
    for tests in ([1.5], ["1"], [True]):
        with pytest.raises(ValueError, match="tests: expected an integer"):
            comparing.compare(linear, [curriculum, curriculum], initial, tests=tests)


# ------------------------------------------------------------------------------ semantics, messages
def test_linear_refuses_a_step_without_examples_and_keeps_the_papers_partial_batches(files, tmp_path):
    train, held = Runs.load(files["train"]), Runs.load(files["held"])
    linear = SimfluenceLinear(ridge=0.1).fit(train)
    curriculum = held.curricula[:1].copy()
    curriculum[0, 3, 2:] = -1  # half a batch: the paper's alpha = sum of A_i over the filled slots (README)
    half = linear.simulate(curriculum, held.initial_losses[:1])[0]
    kept = curriculum[0, 3, :2]
    np.testing.assert_allclose(half[4], linear.multiplicative[:, kept].sum(1) * half[3]
                               + linear.additive[:, kept].sum(1), rtol=1e-9)
    curriculum[0, 3] = -1  # no example at all: alpha = beta = 0 would predict a loss of 0
    with pytest.raises(ValueError, match=r"a step whose slots are all empty, at \[run, step\] = \[0, 3\]"):
        linear.simulate(curriculum, held.initial_losses[:1])
    path = tmp_path / "empty_step.npz"
    Runs.create(curriculum, held.losses[:1], held.n_train).save(path)
    code, _, err = run_cli(["simulate", "--simulator", files["linear"], "--curricula", path,
                            "--out", tmp_path / "o.npz"])
    assert code == 2 and "slots are all empty" in one_error_line(err)


def test_insert_into_a_full_batch_replaces_its_last_example(files):
    held = Runs.load(files["held"])
    code, out, err = run_cli(["compare", "--simulator", files["linear"], "--curricula", f"{files['held']}:0",
                              "--insert", "3", "--at-steps", "0", "--json"])
    assert code == 0, err
    import json

    labels = [candidate["label"] for candidate in json.loads(out)["candidates"]]
    assert labels == ["as given", f"+3 for {held.curricula[0, 0, -1]} at step 0"]


@pytest.mark.parametrize("content, message", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("[[0, " + "9" * 5000 + "]]", "not valid JSON (Exceeds the limit"),
    ("[[[[0, 1]]], [[[2, 3]]]]", "found items nested [3] deep"),
    ("[[0, 1], [[2, 3]]]", "found items nested [1, 2] deep"),
], ids=["deep", "5000 digits", "four deep", "mixed depth"])
def test_odd_json_is_refused_naming_the_file(files, tmp_path, content, message):
    path = tmp_path / "odd.json"
    path.write_text(content)
    code, _, err = run_cli(["compare", "--simulator", files["linear"], "--curricula", f"{files['held']}:0",
                            "--curricula", path])
    line = one_error_line(err)
    assert code == 2 and str(path) in line and message in line


def test_a_figure_of_thousands_of_panels_is_refused_at_once(files, tmp_path, monkeypatch):
    from bayes_simfluence import methods

    def load_simulator(path):
        raise AssertionError("loaded the simulator before the panel check")

    monkeypatch.setattr(methods, "load_simulator", load_simulator)  # the command imports it when it runs
    figure = tmp_path / "t.png"
    code, _, err = run_cli(["plot", "trajectories", "--simulator", files["linear"], "--runs", files["held"],
                            "--run", ",".join(["0"] * 3000), "--plot", figure])
    assert code == 2 and "3000 x 1 = 3000 panels" in one_error_line(err) and not figure.exists()


# ------------------------------------------------------------------------------------- interrupts
def _interrupt_at_random_times(files, tmp_path, tries: int, seed: int) -> list[tuple]:
    """SIGINT a small Bayesian fit (or evaluate) at random times; ``(argv, delay, rc, wrote, stderr)`` each."""
    import random
    import signal
    import subprocess
    import sys
    import time

    rng = random.Random(seed)
    outcomes = []
    for k in range(tries):
        if rng.random() < 0.7:
            out = tmp_path / f"p{k}.nc"
            argv = ["fit", "--train", files["train"], "-m", "bayes-svi", "-o", "guard=false", "-o", "num_steps=300",
                    "--out", out]
        else:
            out = tmp_path / f"s{k}.png"
            argv = ["evaluate", "--train", files["train"], "--heldout", files["held"], "-m", "bayes", "--draws", "20",
                    "--plot", out]
        delay = rng.uniform(0.2, 9.0)
        process = subprocess.Popen([sys.executable, "-m", "bayes_simfluence.cli", *map(str, argv)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        finished_first = process.poll() is not None or out.exists()  # done: nothing left to interrupt
        if not finished_first:
            process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
        outcomes.append((argv[0], round(delay, 1), process.returncode, out.exists(), finished_first, err))
    return outcomes


def _check_interrupts(outcomes: list[tuple]) -> None:
    for command, delay, code, wrote, finished_first, err in outcomes:
        context = (command, delay, code, wrote, err[-2000:])
        assert code >= 0 and "Traceback" not in err, context  # never a segfault (-11) or a bare SIGINT death
        if finished_first:
            assert code == 0 and wrote, context
            continue
        last = err.rstrip().splitlines()[-1]
        if code == 130:  # the usual case: nothing written; or the signal came just after the output was complete
            assert (not wrote and last.endswith("interrupted; nothing was written")) or (
                wrote and "interrupted after writing 1 file(s)" in last), context
        else:  # never exit 0 with an output unless the signal came after the command had finished
            assert code == 0 and wrote and "Ctrl-C came after the command had finished" in last, context
    assert sum(not outcome[4] for outcome in outcomes) >= len(outcomes) // 2  # most tries were interrupted


def test_ctrl_c_exits_130_writes_nothing_and_never_crashes(files, tmp_path):
    _check_interrupts(_interrupt_at_random_times(files, tmp_path, tries=4, seed=3))


@pytest.mark.slow
def test_ctrl_c_at_twenty_random_times(files, tmp_path):
    _check_interrupts(_interrupt_at_random_times(files, tmp_path, tries=20, seed=11))


def test_an_interrupt_swallowed_on_its_way_still_stops_the_command(files, tmp_path, monkeypatch):
    from bayes_simfluence import interrupts
    from bayes_simfluence.commands import simulate

    real = simulate.run

    def swallowed(args):  # as when the KeyboardInterrupt of SIGINT was dropped inside a JAX callback
        interrupts._requested.set()
        return real(args)

    monkeypatch.setattr(simulate, "run", swallowed)
    out = tmp_path / "o.npz"
    code, stdout, err = run_cli(["simulate", "--simulator", files["linear"], "--curricula", files["held"], "--out", out])
    assert code == 130 and "interrupted; nothing was written" in one_error_line(err)
    assert not out.exists() and list(tmp_path.iterdir()) == [] and "wrote" not in stdout


def test_a_huge_unnamed_pool_is_refused_at_once(files, tmp_path):
    import tracemalloc

    held = Runs.load(files["held"])
    path = tmp_path / "pool.npz"
    with open(path, "wb") as handle:
        np.savez(handle, curricula=held.curricula, losses=held.losses, n_train=np.int64(10**8))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="'n_train' = 100000000, but the curricula use indices up to 9"):
            Runs.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20  # nothing of the pool's size (10^8 entries) was allocated


SWALLOWED = """
import contextlib, gc, io, sys, time, weakref
from bayes_simfluence import interrupts

class Thing:
    pass

def callback(reference):  # Python prints and drops an exception raised here ("Exception ignored in")
    interrupts._handler(2, sys._getframe())

with interrupts.handling():
    thing = Thing()
    reference = weakref.ref(thing, callback)
    try:
        del thing
        gc.collect()
        time.sleep(5)
        print("ran on")
    except KeyboardInterrupt:
        print("raised again")
"""


def test_an_interrupt_python_swallows_is_raised_again_quietly():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", SWALLOWED], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "raised again", (done.stdout, done.stderr)
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr, done.stderr
