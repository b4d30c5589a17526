"""Every entry point is as strict as the runs loader: a table of hostile inputs, a fuzz test, a memory test.

Each case runs the CLI in-process and asserts exit code 2, one error line naming the problem,
no traceback, and no file left where the command would have written.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from bayes_simfluence.bayes import posterior_io
from bayes_simfluence.bayes.model import ModelConfig
from bayes_simfluence.cli import main
from bayes_simfluence.runs import Runs
from bayes_simfluence.simulators import SimfluenceLinear
from bayes_simfluence.synthetic import synthetic_runs


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``(exit code, stdout, stderr)`` of one command, argparse's own exits included."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code
    return code, out.getvalue(), err.getvalue()


def _save_raw(path, **arrays) -> str:
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    runs, _ = synthetic_runs(n_train=10, n_tests=3, n_runs=10, n_steps=8, batch_size=4, effect_scale=0.03, seed=5)
    train, held = runs.split(3)
    paths = {"train": folder / "train.npz", "held": folder / "held.npz"}
    train.save(paths["train"])
    held.save(paths["held"])
    linear = SimfluenceLinear(ridge=0.1).fit(train)
    paths["linear"] = folder / "linear.npz"
    linear.save(paths["linear"])
    arrays = train.arrays()
    paths["huge_losses"] = _save_raw(folder / "huge.npz", **{**arrays, "losses": arrays["losses"] * 1e200})
    paths["fraction_pool"] = _save_raw(folder / "fraction.npz", **{**arrays, "n_train": np.float64(20.7)})
    paths["array_pool"] = _save_raw(folder / "array_pool.npz", **{**arrays, "n_train": np.array([10, 10])})
    paths["list_meta"] = _save_raw(folder / "list_meta.npz", **{**arrays, "meta": np.array("[1, 2]")})
    paths["huge_pool"] = _save_raw(folder / "huge_pool.npz", curricula=arrays["curricula"], losses=arrays["losses"],
                                   n_train=np.int64(10**9))
    wide = np.concatenate([held.curricula, held.curricula], axis=2)  # 8 slots; the model saw 4
    paths["wide"] = folder / "wide.npz"
    Runs.create(wide, held.losses, held.n_train).save(paths["wide"])
    with np.load(paths["linear"]) as archive:
        saved = dict(archive)
    paths["missing_variable"] = _save_raw(folder / "missing.npz", **{k: v for k, v in saved.items() if k != "additive"})
    paths["nan_model"] = _save_raw(folder / "nan_model.npz", **{**saved, "additive": saved["additive"] * np.nan})
    paths["kind_only"] = _save_raw(folder / "kind_only.npz", kind=np.array("simfluence-point"))
    paths["bad_config"] = folder / "bad_config.nc"
    posterior_io.write_posterior(_posterior_fields(train, config=_UnknownKeyConfig()), paths["bad_config"])
    for name, content in {"fraction.json": [[0, 1.5], [2, 3]], "strings.json": [["0", "1"], [2, 3]],
                          "bools.json": [[True, False], [2, 3]], "null.json": [[0, None], [2, 3]],
                          "bigint.json": [[0, 10**30], [2, 3]], "flat.json": [0, 1, 2], "object.json": {"a": 1},
                          "losses_nan.json": [1.0, None, 1.0]}.items():
        paths[name.replace(".", "_")] = folder / name
        (folder / name).write_text(json.dumps(content))
    paths["not_json_json"] = folder / "not_json.json"
    paths["not_json_json"].write_text("[[0, 1],")
    paths["regular_file"] = folder / "a_file"
    paths["regular_file"].write_text("x")
    paths["folder"] = folder
    return {k: str(v) for k, v in paths.items()}


class _UnknownKeyConfig:
    def to_dict(self) -> dict:
        return {**ModelConfig().to_dict(), "no_such_setting": 1}


def _posterior_fields(runs: Runs, config) -> dict:
    draws = (1, 4, runs.n_tests)
    return {"method": "svi", "config": config, "a": np.zeros(draws + (runs.n_train,)),
            "b": np.zeros(draws + (runs.n_train,)), "drift": None, "sigma": np.ones(draws), "hyper": {},
            "scale": np.ones(runs.n_tests), "train_ids": runs.train_ids, "test_ids": runs.test_ids,
            "sample_stats": {}, "info": {}, "batch_size": runs.batch_size}


@dataclass(frozen=True)
class Case:
    name: str
    argv: list[str]
    message: str
    outputs: list[str] = field(default_factory=list)


def _cases() -> list[Case]:
    out = "{folder}/out.npz"
    compare = ["compare", "--simulator", "{linear}", "--curricula", "{held}:0", "--curricula"]
    return [
        Case("JSON fraction index", compare + ["{fraction_json}"], "1.5 is not an integer index"),
        Case("JSON string index", compare + ["{strings_json}"], 'strings.json[0][0]: "0" is not an integer index'),
        Case("JSON boolean index", compare + ["{bools_json}"], "true is not an integer index"),
        Case("JSON null index", compare + ["{null_json}"], "null is not an integer index"),
        Case("JSON huge index", compare + ["{bigint_json}"], "out of range"),
        Case("JSON flat list", compare + ["{flat_json}"], "expected a JSON list of batches"),
        Case("JSON object", compare + ["{object_json}"], "is not an integer index"),
        Case("invalid JSON", compare + ["{not_json_json}"], "not valid JSON"),
        Case("run index out of range", compare + ["{held}:9"], "run 9 does not exist"),
        Case("initial losses with null", compare + ["{held}:1", "--initial-losses", "{losses_nan_json}"],
             "flat list of numbers"),
        Case("compare level", compare + ["{held}:1", "--level", "1.5"], "--level must be in (0, 1)"),
        Case("compare plot extension", compare + ["{held}:1", "--plot", "{folder}/figure.bmp"], "a figure is written as",
             ["{folder}/figure.bmp"]),
        Case("test index out of range", compare + ["{held}:1", "--tests", "7"], "out of range"),
        Case("negative test index", compare + ["{held}:1", "--tests", "-1"], "integers >= 0"),
        Case("losses overflow", ["fit", "--train", "{huge_losses}", "-m", "linear", "--out", out], "beyond +-1e+100",
             [out]),
        Case("losses overflow in evaluate", ["evaluate", "--train", "{huge_losses}", "--heldout", "{held}", "-m",
                                             "linear", "--json"], "beyond +-1e+100"),
        Case("fractional n_train", ["fit", "--train", "{fraction_pool}", "-m", "linear", "--out", out],
             "'n_train' must be an integer", [out]),
        Case("n_train as an array", ["fit", "--train", "{array_pool}", "-m", "linear", "--out", out],
             "'n_train' must be one integer", [out]),
        Case("meta a JSON list", ["fit", "--train", "{list_meta}", "-m", "linear", "--out", out],
             "'meta' must be a JSON object", [out]),
        Case("ridge not a number", ["fit", "--train", "{train}", "-m", "linear", "-o", "ridge=abc", "--out", out],
             "-o ridge: expected a number", [out]),
        Case("negative ridge", ["fit", "--train", "{train}", "-m", "linear", "-o", "ridge=-1", "--out", out],
             "-o ridge: expected a number >= 0", [out]),
        Case("unknown option", ["fit", "--train", "{train}", "-m", "linear", "-o", "nosuch=1", "--out", out],
             "-o nosuch", [out]),
        Case("unknown option in evaluate", ["evaluate", "--train", "{train}", "--heldout", "{held}", "-m", "mean",
                                            "-m", "linear", "-o", "num_steps=5"], "-o num_steps"),
        Case("posterior to .npz, before the fit", ["fit", "--train", "{train}", "-m", "bayes-svi", "--out", out],
             "NetCDF", [out]),
        Case("out under a regular file", ["fit", "--train", "{train}", "-m", "linear", "--out",
                                          "{regular_file}/model.npz"], "is a file, not a folder"),
        Case("out onto a directory", ["fit", "--train", "{train}", "-m", "linear", "--out", "{folder}"],
             "is a directory"),
        Case("batch wider than fitted", ["simulate", "--simulator", "{linear}", "--curricula", "{wide}", "--out", out],
             "fitted on batches of 4", [out]),
        Case("simulator missing a variable", ["simulate", "--simulator", "{missing_variable}", "--curricula", "{held}",
                                              "--out", out], "lacks 'additive'", [out]),
        Case("simulator with NaN effects", ["compare", "--simulator", "{nan_model}", "--curricula", "{held}:0",
                                            "--curricula", "{held}:1", "--json"], "NaN or inf"),
        Case("npz holding only kind", ["simulate", "--simulator", "{kind_only}", "--curricula", "{held}", "--out", out],
             "lacks 'multiplicative'", [out]),
        Case("posterior with unknown config key", ["simulate", "--simulator", "{bad_config}", "--curricula", "{held}",
                                                   "--out", out], "model config is unreadable", [out]),
        Case("simulate draws negative", ["simulate", "--simulator", "{linear}", "--curricula", "{held}", "--out", out,
                                         "--draws", "-3"], "expected an integer >= 0", [out]),
        Case("attributions top negative", ["plot", "attributions", "--simulator", "{linear}", "--curricula",
                                           "{held}:0", "--top", "-3", "--plot", "{folder}/a.png"],
             "expected an integer >= 1", ["{folder}/a.png"]),
        Case("plot run out of range", ["plot", "trajectories", "--simulator", "{linear}", "--runs", "{held}", "--run",
                                       "5", "--plot", "{folder}/t.png"], "--run 5: out of range", ["{folder}/t.png"]),
        Case("evaluate draws zero", ["evaluate", "--train", "{train}", "--heldout", "{held}", "-m", "mean",
                                     "--draws", "0"], "expected an integer >= 1"),
        Case("huge pool fails fast", ["fit", "--train", "{huge_pool}", "-m", "linear", "--out", out],
             "is 'n_train' right?", [out]),
        Case("huge pool, Bayesian", ["fit", "--train", "{huge_pool}", "-m", "bayes-svi", "--out", "{folder}/p.nc"],
             "is 'n_train' right?", ["{folder}/p.nc"]),
    ]


@pytest.mark.parametrize("case", _cases(), ids=lambda case: case.name)
def test_hostile_input_exits_2_with_a_named_error_and_leaves_nothing(case, files):
    argv = [part.format(**files) for part in case.argv]
    code, _, err = run_cli(argv)
    assert code == 2, (case.name, err)
    assert case.message in err, (case.name, err)
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if not line.startswith(("usage:", " "))]
    assert len(lines) == 1, err
    for output in case.outputs:
        assert not Path(output.format(**files)).exists(), output


def test_point_simulators_say_they_carry_no_uncertainty(files):
    code, out, _ = run_cli(["compare", "--simulator", files["linear"], "--curricula", f"{files['held']}:0",
                            "--curricula", f"{files['held']}:1", "--json"])
    report = json.loads(out)
    assert code == 0 and report["uncertainty"].startswith("none")
    final = report["candidates"][1]["final"]
    assert final["prob_better"] is None and final["prob_best"] is None and final["difference_interval"] is None
    code, out, _ = run_cli(["compare", "--simulator", files["linear"], "--curricula", f"{files['held']}:0",
                            "--curricula", f"{files['held']}:1"])
    assert code == 0 and "uncertainty: none" in out and "1.000" not in out
    code, out, _ = run_cli(["plot", "attributions", "--simulator", files["linear"], "--curricula",
                            f"{files['held']}:0", "--top", "3", "--json", "--plot", f"{files['folder']}/eff.png"])
    report = json.loads(out)
    assert code == 0 and report["uncertainty"].startswith("none")
    assert all(row["mean"] < 0 and row["prob_helpful"] is None for row in report["top_helpful"])
    assert all(row["mean"] > 0 for row in report["top_harmful"])


def _random_curricula(rng: np.random.Generator):
    """Malformed (and occasionally valid) curricula as JSON values."""
    atoms = [0, 1, 3, 9, -1, -2, 10, 1.5, "2", True, None, 10**25, [], [1, [2]], {"x": 1}]
    if rng.random() < 0.2:
        return atoms[rng.integers(len(atoms))]
    steps = int(rng.integers(0, 4))
    return [[atoms[rng.integers(len(atoms))] if rng.random() < 0.3 else int(rng.integers(0, 10))
             for _ in range(int(rng.integers(0, 5)))] for _ in range(steps)]


def test_fuzzed_curricula_and_simulator_files_never_crash_or_print_nan(files, tmp_path):
    rng = np.random.default_rng(0)
    with np.load(files["linear"]) as archive:
        saved = dict(archive)
    for trial in range(30):
        candidate = tmp_path / f"c{trial}.json"
        candidate.write_text(json.dumps(_random_curricula(rng)))
        code, out, err = run_cli(["compare", "--simulator", files["linear"], "--curricula", f"{files['held']}:0",
                                  "--curricula", str(candidate), "--json"])
        assert code in (0, 2) and "Traceback" not in err, (candidate.read_text(), err)
        if code == 0:
            report = json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} in JSON output"))
            assert all(np.isfinite(c["final"]["loss"]) for c in report["candidates"])
        # a simulator file with one array replaced by noise of a random shape and dtype
        name = list(saved)[rng.integers(len(saved))]
        broken = dict(saved)
        replacements = [rng.normal(size=tuple(rng.integers(0, 4, rng.integers(0, 3)))), np.array("text"),
                        np.array([np.nan, 1.0]), np.int64(rng.integers(-5, 5))]
        broken[name] = replacements[rng.integers(len(replacements))]
        path = _save_raw(tmp_path / f"s{trial}.npz", **broken)
        code, out, err = run_cli(["simulate", "--simulator", path, "--curricula", files["held"],
                                  "--out", str(tmp_path / f"o{trial}.npz")])
        assert code in (0, 2) and "Traceback" not in err, (name, err)
        if code == 0:
            assert np.isfinite(Runs.load(tmp_path / f"o{trial}.npz").losses).all()
        code, out, err = run_cli(["plot", "attributions", "--simulator", path, "--curricula", f"{files['held']}:0",
                                  "--json", "--plot", str(tmp_path / f"a{trial}.png")])
        assert code in (0, 2) and "Traceback" not in err, (name, err)
        if code == 0:
            json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} in JSON output"))


def _random_runs_arrays(rng: np.random.Generator, valid: dict) -> dict:
    """A runs file's arrays with one of them replaced by something of a random shape, dtype or value."""
    broken = dict(valid)
    name = list(valid)[rng.integers(len(valid))]
    replacements = [rng.normal(size=tuple(rng.integers(0, 4, rng.integers(0, 4)))), np.array("x"),
                    np.array([np.inf]), valid[name] * 1e120 if valid[name].dtype.kind == "f" else np.array(-7),
                    np.int64(rng.integers(-3, 40)), rng.integers(-5, 50, size=valid[name].shape)]
    broken[name] = replacements[rng.integers(len(replacements))]
    return broken


def test_fuzzed_runs_files_never_crash_any_command(files, tmp_path):
    rng = np.random.default_rng(1)
    with np.load(files["train"]) as archive:
        valid = dict(archive)
    for trial in range(25):
        path = _save_raw(tmp_path / f"r{trial}.npz", **_random_runs_arrays(rng, valid))
        for argv in (["fit", "--train", path, "-m", "linear", "--out", str(tmp_path / f"m{trial}.npz")],
                     ["evaluate", "--train", path, "--heldout", files["held"], "-m", "mean", "--json"],
                     ["simulate", "--simulator", files["linear"], "--curricula", path,
                      "--out", str(tmp_path / f"p{trial}.npz")],
                     ["plot", "trajectories", "--simulator", files["linear"], "--runs", path,
                      "--plot", str(tmp_path / f"t{trial}.png")]):
            code, out, err = run_cli(argv)
            assert code in (0, 2) and "Traceback" not in err, (argv[0], err)
            if code == 0 and argv[0] == "evaluate":
                json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} in JSON output"))
