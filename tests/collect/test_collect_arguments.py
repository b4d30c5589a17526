"""``collect``'s arguments are checked before any model is loaded: exit 2, one named error, nothing written."""

import contextlib
import io
import json

import pytest

from bayes_simfluence.cli import main


def _run(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code
    return code, err.getvalue()


@pytest.mark.parametrize("extra, curricula, message", [
    (["--threads", "-2"], None, "--threads: expected an integer >= 1"),
    (["--workers", "0"], None, "--workers: expected an integer >= 1"),
    (["--runs", "2.5"], None, "--runs: expected an integer >= 1"),
    ([], [[0, 1], [2, 3]], "expected a JSON list of runs, each a list of batches"),
    ([], [[[0, 1.5]]], "1.5 is not an integer index"),
    ([], [[[0, "1"]]], '"1" is not an integer index'),
])
def test_bad_collect_arguments_exit_2_before_any_work(tmp_path, extra, curricula, message):
    data = tmp_path / "t.jsonl"
    data.write_text(json.dumps({"text": "fine", "label": 1}) + "\n")
    argv = ["collect", "--model", str(tmp_path / "no-model"), "--train", str(data), "--test", str(data),
            "--out", str(tmp_path / "runs.npz"), *extra]
    if curricula is not None:
        (tmp_path / "c.json").write_text(json.dumps(curricula))
        argv += ["--curricula", str(tmp_path / "c.json")]
    code, err = _run(argv)
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "runs.npz").exists() and not (tmp_path / "runs.npz.partial").exists()


def test_collect_refuses_an_output_that_is_not_a_runs_file(tmp_path):
    code, err = _run(["collect", "--model", "m", "--train", "t.jsonl", "--test", "t.jsonl",
                      "--out", str(tmp_path / "runs.txt")])
    assert code == 2 and "a runs file is written as .npz" in err
