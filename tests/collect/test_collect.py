"""The collector on tiny models: valid runs, exact step-0 losses, resume after a kill, workers, CLI, errors."""

import functools
import json
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pytest
import torch
from tqdm import tqdm

from bayes_simfluence import atomic, cli, interrupts
from bayes_simfluence.collect import CollectConfig, OptimConfig, collect, collector
from bayes_simfluence.collect.collector import (RunExecutor, _identity, _prepare_partial, default_curricula,
                                                partial_dir_for)
from bayes_simfluence.collect.data import load_examples
from bayes_simfluence.collect.losses import collate, encode, example_losses
from bayes_simfluence.collect.model import load_model, select_parameters
from bayes_simfluence.runs import Runs
from bayes_simfluence.score_files import SCORE_METHODS, load_scores, scores_path_for

from collect_fixtures import lm_files, sentiment_files, tiny_bert, tiny_gpt2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny")
    train, test = sentiment_files(directory)
    return {"model": tiny_bert(directory, dropout=0.1), "train": train, "test": test, "dir": directory}


def _config(tiny, **overrides):
    settings = dict(model=tiny["model"], train=tiny["train"], test=tiny["test"], id_field="id", runs=3,
                    batch_size=4, epochs=2, optim=OptimConfig(lr=0.1))
    settings.update(overrides)
    return CollectConfig(**settings)


def _direct_losses(model_path, train, test, task="classification"):
    _, test_examples, labels = load_examples(train, test, task, id_field=None)
    model, tokenizer = load_model(model_path, task, max(len(labels), 2))
    model.eval()
    with torch.no_grad():
        batch = collate(encode(test_examples, tokenizer), np.arange(len(test_examples)))
        return example_losses(model, batch).double().numpy()


def test_collection_writes_valid_runs_with_exact_initial_losses(tiny, tmp_path):
    runs = collect(_config(tiny), tmp_path / "runs.npz", progress=False)
    loaded = Runs.load(tmp_path / "runs.npz")
    assert loaded.losses.shape == (3, 7, 4) and loaded.curricula.shape == (3, 6, 4)
    np.testing.assert_array_equal(loaded.losses, runs.losses)
    assert list(loaded.train_ids[:2]) == ["ex0", "ex1"]
    direct = _direct_losses(tiny["model"], tiny["train"], tiny["test"])
    np.testing.assert_allclose(loaded.losses[:, 0], np.broadcast_to(direct, (3, 4)), rtol=1e-5)
    assert not np.allclose(loaded.losses[:, -1], loaded.losses[:, 0])  # training moved the losses
    meta = loaded.meta
    assert meta["optimizer"]["lr"] == 0.1 and meta["seeds"]["curriculum"] == 0
    assert set(meta["versions"]) >= {"torch", "transformers", "datasets"}
    assert len(meta["learning_rates"]) == 6
    assert not partial_dir_for(tmp_path / "runs.npz").exists()


def test_workers_and_scores_do_not_change_the_runs(tiny, tmp_path):
    one = collect(_config(tiny), tmp_path / "one.npz", progress=False, threads=1)
    # every score method (dattri's switch attention and mode while scoring; dropout is on here)
    scored = collect(_config(tiny, scores=SCORE_METHODS), tmp_path / "scored.npz", progress=False, threads=1)
    two = collect(_config(tiny), tmp_path / "two.npz", progress=False, workers=2, threads=1)
    np.testing.assert_array_equal(one.losses, scored.losses)
    np.testing.assert_array_equal(one.losses, two.losses)
    np.testing.assert_array_equal(one.curricula, two.curricula)


def test_worker_processes_end_without_leaking_semaphores(tiny, tmp_path):
    """Each worker holds semaphores (tqdm's lock); a worker terminated instead of left to exit leaves
    them to the resource tracker, which warns at shutdown ('There appear to be 2 leaked semaphore objects')."""
    out = tmp_path / "runs.npz"
    done = subprocess.run([sys.executable, "-m", "bayes_simfluence.cli", "collect", "--model", str(tiny["model"]),
                           "--train", str(tiny["train"]), "--test", str(tiny["test"]), "--runs", "2", "--workers", "2",
                           "--threads", "1", "--quiet", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and Runs.load(out).n_runs == 2, done.stderr[-2000:]
    assert "leaked" not in done.stderr and "resource_tracker" not in done.stderr, done.stderr[-2000:]


def test_a_worker_that_dies_is_replaced_and_the_runs_are_those_of_an_uninterrupted_collection(tiny, tmp_path):
    """A worker killed from outside (as a crash or the OOM killer would) must not hang the collection
    (multiprocessing.Pool waits forever for the lost run): its runs go to fresh workers, and the runs
    equal a collection in this process."""
    config = _config(tiny, runs=4, batch_size=2, epochs=10, optim=OptimConfig(lr=0.05))
    out = tmp_path / "two.npz"
    killed = []

    def kill_a_worker():
        # once the first run is saved, both workers are inside a run (runs 1 and 2 of 4): kill one
        deadline = time.time() + 120
        while not killed and time.time() < deadline:
            children = multiprocessing.active_children()
            if children and list(partial_dir_for(out).glob("run_*.npz")):
                os.kill(children[0].pid, signal.SIGKILL)
                killed.append(children[0].pid)
            time.sleep(0.02)

    killer = threading.Thread(target=kill_a_worker)
    killer.start()
    with pytest.warns(RuntimeWarning, match=r"a worker process died .*runs .* go to fresh workers"):
        two = collect(config, out, progress=False, workers=2, threads=1)
    killer.join()
    assert killed
    one = collect(config, tmp_path / "one.npz", progress=False, threads=1)
    np.testing.assert_array_equal(one.losses, two.losses)
    np.testing.assert_array_equal(one.curricula, two.curricula)


class _PoolThatBreaks:
    """Stands in for ``ProcessPoolExecutor``: every pool breaks (``BrokenProcessPool``); the pools
    numbered in ``saving`` (0 = the first) have saved every run submitted to them before breaking."""
    saving: tuple[int, ...] = ()
    made = 0

    def __init__(self, *args, **kwargs):
        self.number = type(self).made
        type(self).made += 1

    def submit(self, work, task):
        run, partial, _ = task
        if self.number in self.saving:
            atomic.savez(collector._run_path(Path(partial), run), {"losses": np.zeros(1)})
        future = Future()
        future.set_exception(BrokenProcessPool("a worker died"))
        return future

    def shutdown(self, cancel_futures=False):
        pass


@pytest.mark.parametrize("saving", [(collector.WORKER_RESTARTS,), ()])
def test_a_pool_that_breaks_after_saving_every_run_ends_the_collection_and_one_that_saves_none_names_them(
        tmp_path, monkeypatch, saving):
    """The last permitted pool breaks: if its workers had saved every run by then, nothing is left to
    train and the collection goes on; if they saved none, the error names the unfinished runs."""
    monkeypatch.setattr(_PoolThatBreaks, "saving", saving)
    monkeypatch.setattr(_PoolThatBreaks, "made", 0)
    monkeypatch.setattr(collector, "ProcessPoolExecutor", _PoolThatBreaks)
    train = functools.partial(collector._train_in_processes, None, None, tmp_path, [0, 1, 2], 2, 1, False,
                              tqdm(disable=True))
    with pytest.warns(RuntimeWarning, match="a worker process died"):
        if saving:
            train()
        else:
            with pytest.raises(RuntimeError, match=r"died \d+ times; runs 0, 1, 2 are unfinished"):
                train()
    assert _PoolThatBreaks.made == collector.WORKER_RESTARTS + 1
    assert all(collector._run_path(tmp_path, run).exists() for run in [0, 1, 2]) == bool(saving)


def test_ctrl_c_while_a_worker_sets_up_ends_it_quietly_and_the_broken_pool_is_the_interrupt(tmp_path, monkeypatch):
    """Ctrl-C reaches every worker: one still loading its model ends with 130 instead of letting
    ``concurrent.futures`` print the interrupted import's traceback (seen in CI), and the main
    process, finding its pool broken after the interrupt, raises the interrupt instead of
    restarting workers."""
    def interrupted(config, curricula):
        raise KeyboardInterrupt

    def exit_now(code):
        raise SystemExit(code)

    monkeypatch.setattr(collector, "RunExecutor", interrupted)
    monkeypatch.setattr(collector.os, "_exit", exit_now)
    with pytest.raises(SystemExit) as ended:
        collector._init_worker(None, None, 1)
    assert ended.value.code == 130

    requested = threading.Event()
    requested.set()
    monkeypatch.setattr(interrupts, "_requested", requested)
    monkeypatch.setattr(_PoolThatBreaks, "made", 0)
    monkeypatch.setattr(collector, "ProcessPoolExecutor", _PoolThatBreaks)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "a worker process died ... fresh workers" restart
        with pytest.raises(KeyboardInterrupt):
            collector._train_in_processes(None, None, tmp_path, [0, 1], 2, 1, False, tqdm(disable=True))
    assert _PoolThatBreaks.made == 1


def test_ctrl_c_with_workers_ends_every_process_and_names_the_runs_kept(tiny, tmp_path):
    """Ctrl-C (SIGINT to the terminal's process group) during a collection on two workers: exit code
    130 at once, one line naming a run file the workers finished (kept for the resume), no
    traceback, and no worker process left behind."""
    out = tmp_path / "runs.npz"
    command = [sys.executable, "-m", "bayes_simfluence.cli", "collect", "--model", str(tiny["model"]), "--train",
               str(tiny["train"]), "--test", str(tiny["test"]), "--id-field", "id", "--runs", "6", "--batch-size", "2",
               "--epochs", "10", "--lr", "0.05", "--workers", "2", "--threads", "1", "--quiet", "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    deadline = time.time() + 120
    while not list(partial_dir_for(out).glob("run_*.npz")) and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # the main process receives the worker's result
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "interrupted after writing" in stderr and "run_0000" in stderr, stderr[-2000:]
    time.sleep(1)
    listed = subprocess.run(["ps", "-o", "stat=,pid=,args=", "-s", str(process.pid)], capture_output=True, text=True)
    left = [line for line in listed.stdout.splitlines() if not line.startswith("Z")]  # ended, not yet reaped
    assert left == [], f"processes of the collection still running: {left}"
    assert not out.exists()


WORKER_IMPORTS = """
import json, pickle, sys
from bayes_simfluence.collect.collector import _init_worker, _work
with open(sys.argv[1], "rb") as file:
    config, curricula = pickle.load(file)
_init_worker(config, curricula, 1)
_work((0, sys.argv[2], False))
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules} & {"jax", "jaxlib", "numpyro", "arviz"})))
"""


def test_a_collection_worker_loads_no_jax(tiny, tmp_path):
    """A worker trains, scores and saves a run with torch alone: JAX beside torch in one process is
    where CI's native crashes happened (a segfault in libgcc_s's unwinder), so the collector keeps it out."""
    config = _config(tiny, scores=("tracin",))
    (tmp_path / "task.pkl").write_bytes(pickle.dumps((config, default_curricula(config, 12))))  # the tiny pool
    partial = tmp_path / "partial"
    partial.mkdir()
    done = subprocess.run([sys.executable, "-c", WORKER_IMPORTS, str(tmp_path / "task.pkl"), str(partial)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
    assert (partial / "run_00000.npz").exists()


def test_eval_every_groups_optimiser_steps(tiny, tmp_path):
    every = collect(_config(tiny, eval_every=2), tmp_path / "every.npz", progress=False)
    full = collect(_config(tiny), tmp_path / "full.npz", progress=False)
    assert every.curricula.shape == (3, 3, 8)
    np.testing.assert_allclose(every.losses, full.losses[:, ::2], rtol=1e-6)


def test_causal_lm_loss_covers_target_tokens_only(tmp_path):
    train, test = lm_files(tmp_path)
    model_path = tiny_gpt2(tmp_path)
    runs = collect(CollectConfig(model=model_path, train=train, test=test, task="causal-lm", runs=2, batch_size=3),
                   tmp_path / "lm.npz", progress=False)
    direct = _direct_losses(model_path, train, test, task="causal-lm")
    np.testing.assert_allclose(runs.losses[0, 0], direct, rtol=1e-5)
    # the loss ignores the prompt: changing the prompt's last token changes the loss, padding does not
    model, tokenizer = load_model(model_path, "causal-lm")
    _, examples, _ = load_examples(train, test, "causal-lm")
    encoded = encode(examples, tokenizer)
    alone = [example_losses(model, collate(encoded, [i])).item() for i in range(len(examples))]
    np.testing.assert_allclose(direct, alone, rtol=1e-5)


def test_resume_refuses_a_different_configuration(tiny, tmp_path):
    out = tmp_path / "runs.npz"
    partial = partial_dir_for(out)
    partial.mkdir()
    (partial / "config.json").write_text(json.dumps({"config": {**_config(tiny).to_dict(), "epochs": 5},
                                                     "curricula_sha256": "x"}))
    with pytest.raises(ValueError, match="differs in: epochs, curricula"):
        collect(_config(tiny), out, progress=False)


def test_existing_output_needs_overwrite(tiny, tmp_path):
    out = tmp_path / "runs.npz"
    out.write_bytes(b"old")
    with pytest.raises(ValueError, match="overwrite"):
        collect(_config(tiny), out, progress=False)


def test_kill_and_resume_gives_the_uninterrupted_result(tiny, tmp_path):
    arguments = ["collect", "--model", str(tiny["model"]), "--train", str(tiny["train"]), "--test",
                 str(tiny["test"]), "--id-field", "id", "--runs", "3", "--batch-size", "2", "--epochs", "10",
                 "--lr", "0.05", "--threads", "1", "--quiet"]
    out = tmp_path / "killed.npz"
    command = [sys.executable, "-m", "bayes_simfluence.cli", *arguments, "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first_run = partial_dir_for(out) / "run_00000.npz"
    deadline = time.time() + 120
    while not first_run.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert first_run.exists() and not out.exists(), process.stderr.read().decode()[-2000:]
    assert not (partial_dir_for(out) / "run_00002.npz").exists()  # killed while runs were left
    resumed = subprocess.run(command, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert cli.main([*arguments, "--out", str(tmp_path / "straight.npz")]) == 0
    killed, straight = Runs.load(out), Runs.load(tmp_path / "straight.npz")
    np.testing.assert_array_equal(killed.curricula, straight.curricula)
    np.testing.assert_array_equal(killed.losses, straight.losses)
    assert killed.meta == straight.meta
    assert not partial_dir_for(out).exists()


def test_resuming_a_reference_run_finished_before_timings_were_recorded(tiny, tmp_path):
    """A partial collection from an older version has no ``<method>_seconds``: it still assembles."""
    config = _config(tiny, runs=2, scores=("tracin",))
    out = tmp_path / "old.npz"
    whole = collect(config, tmp_path / "whole.npz", progress=False, threads=1)
    executor = RunExecutor(config, whole.curricula)
    partial = partial_dir_for(out)
    _prepare_partial(partial, _identity(config, whole.curricula))
    old_result = {k: v for k, v in executor.run(0, progress=False).items() if not k.endswith("_seconds")}
    atomic.savez(partial / "run_00000.npz", old_result)
    resumed = collect(config, out, whole.curricula, progress=False, threads=1)
    np.testing.assert_array_equal(resumed.losses, whole.losses)
    assert "seconds" not in load_scores(scores_path_for(out), "tracin").meta
    assert load_scores(scores_path_for(tmp_path / "whole.npz"), "tracin").meta["seconds"] > 0


def test_cli_collect_writes_runs_and_scores(tiny, tmp_path, capsys):
    out = tmp_path / "cli.npz"
    code = cli.main(["collect", "--model", str(tiny["model"]), "--train", str(tiny["train"]), "--test",
                     str(tiny["test"]), "--runs", "2", "--protocol", "subsets", "--subset-size", "8",
                     "--batch-size", "4", "--scores", "tracin", "--scores", "influence", "--score-params", "head",
                     "--quiet", "--out", str(out)])
    assert code == 0
    runs = Runs.load(out)
    assert runs.curricula.shape == (2, 2, 4) and runs.n_train == 12
    assert "wrote" in capsys.readouterr().out
    assert (tmp_path / "cli.scores.npz").exists()


@pytest.mark.parametrize("extra, message", [
    (["--text-field", "sentence"], "no text field 'sentence'"),
    (["--protocol", "subsets"], "subset_size"),
    (["--trainable", "encoder.nothing"], "matches no parameter"),
])
def test_cli_bad_inputs_give_clear_errors(tiny, tmp_path, capsys, extra, message):
    code = cli.main(["collect", "--model", str(tiny["model"]), "--train", str(tiny["train"]), "--test",
                     str(tiny["test"]), "--quiet", "--out", str(tmp_path / "bad.npz"), *extra])
    assert code == 2
    assert message in capsys.readouterr().err


def test_cli_missing_files_and_models(tiny, tmp_path, capsys):
    assert cli.main(["collect", "--model", str(tiny["model"]), "--train", str(tmp_path / "none.jsonl"),
                     "--test", str(tiny["test"]), "--out", str(tmp_path / "x.npz")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert cli.main(["collect", "--model", str(tmp_path / "no-model"), "--train", str(tiny["train"]),
                     "--test", str(tiny["test"]), "--quiet", "--out", str(tmp_path / "y.npz")]) == 2
    assert "could not load model" in capsys.readouterr().err


def test_parameter_specs(tiny):
    model, _ = load_model(tiny["model"], "classification")
    assert select_parameters(model, "head") == ["bert.pooler.dense.weight", "bert.pooler.dense.bias",
                                                "classifier.weight", "classifier.bias"]
    last = select_parameters(model, "last:1")
    assert all(n.startswith(("bert.encoder.layer.1.", "bert.pooler", "classifier")) for n in last)
    assert len(select_parameters(model, "all")) > len(last)
    with pytest.raises(ValueError, match="only 2 blocks"):
        select_parameters(model, "last:3")


def test_tracin_and_influence_share_gradients_and_tracin_equals_dattris(tiny):
    """The collector's TracIn is the dot product of the per-example gradients influence uses (computed
    once when both are asked): dattri's TracInAttributor (padded, vmapped) gives the same numbers, and
    each method's scores are those it gives when asked alone."""
    from bayes_simfluence.collect.dattri_scores import dattri_scores

    curricula = default_curricula(_config(tiny), 12)
    both = RunExecutor(_config(tiny, scores=("tracin", "influence")), curricula)
    scores = both._scores_now()
    reference = dattri_scores(both.model, both.scored_encoded, both.test_encoded, both.score_names, ("tracin",),
                              damping=1.0)["tracin"]
    tracin = scores["tracin"][0]
    assert tracin.shape == reference.shape == (len(both.test_encoded), len(both.scored_encoded))
    np.testing.assert_allclose(tracin, reference, rtol=1e-4, atol=1e-5 * np.abs(reference).max())
    for method in ("tracin", "influence"):
        alone = RunExecutor(_config(tiny, scores=(method,)), curricula)._scores_now()[method][0]
        np.testing.assert_allclose(scores[method][0], alone, rtol=1e-4, atol=1e-6 * np.abs(alone).max())
    assert scores["tracin"][1] > 0 and scores["influence"][1] > 0
