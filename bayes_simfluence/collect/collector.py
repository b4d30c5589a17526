"""Collect real training runs: fine-tune a Hugging Face model under many curricula, log test losses.

Every run starts from the same initial weights and a fresh optimiser (same state), and trains
with the same optimiser, schedule and noise seed; only the curriculum differs (unless
``vary_noise`` gives each run its own dropout seed ``[noise_seed, run]``, recorded in ``meta``).
The loss of every test example is logged before training and after every ``eval_every``
optimiser steps, in batched ``inference_mode`` forward passes.

``eval_every = k > 1`` is stored honestly in the runs format: one runs-file step is ``k``
optimiser steps, and its batch is the ``k`` optimiser batches side by side (``k * batch``
slots, see :func:`~bayes_simfluence.curricula.group_steps`).

Durability: ``<out>.partial/`` holds ``config.json`` and one ``run_XXXXX.npz`` per finished
run, each written atomically. Run the same command again after a crash and it redoes at most
the runs that were in progress; a different configuration is refused. At the end the runs file
(and the scores companion, if asked) is written atomically and the partial directory removed.
Results do not depend on ``workers``: each run is seeded by itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import shutil
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from bayes_simfluence import atomic, interrupts
from bayes_simfluence import curricula as curricula_lib
from bayes_simfluence.collect.data import Examples, load_examples
from bayes_simfluence.collect.dattri_scores import dattri_scores
from bayes_simfluence.collect.gradients import loss_gradients, parameter_count
from bayes_simfluence.collect.influence import (default_damping, influence_scores,
                                                train_gradients_and_curvature)
from bayes_simfluence.collect.losses import LossEvaluator, collate, encode, example_losses
from bayes_simfluence.collect.model import load_model, select_parameters, set_trainable
from bayes_simfluence.collect.optim import OptimConfig, build_optimizer, learning_rates
from bayes_simfluence.collect.ray_runs import RayOptions, train_on_ray
from bayes_simfluence.runs import Runs
from bayes_simfluence.score_files import SCORE_METHODS, ScoreSet, save_scores, scores_path_for

WORKER_RESTARTS = 2
"""How many times a collection replaces worker processes that died before it gives up."""


@dataclass(frozen=True)
class CollectConfig:
    """Everything that determines a collection's result (``workers`` does not).

    Attributes:
        model: local model directory, or a model name already in the local Hugging Face cache.
        train, test: json/jsonl/csv/parquet files or saved ``datasets`` directories.
        task: ``"classification"`` or ``"causal-lm"``.
        text_field, label_field: classification fields.
        prompt_field, target_field: causal-LM fields (loss on the target tokens only).
        id_field: optional example-id field.
        train_size, test_size: use only the first N rows (``None``: all).
        max_length: token limit per example.
        runs: number of runs.
        protocol: ``"orderings"`` (whole pool each epoch) or ``"subsets"`` (``subset_size`` of it).
        subset_size: examples per run for ``"subsets"``.
        batch_size, epochs: optimiser batch size and epochs over the run's examples.
        eval_every: log test losses every k optimiser steps (see the module docstring).
        curriculum_seed: seed of the curricula.
        init_seed: seed of a new classification head (identical in every run).
        noise_seed: torch seed of each run (dropout); ``vary_noise`` makes it ``[noise_seed, run]``.
        dropout: ``False`` switches dropout off.
        trainable: parameter spec of what trains (see :mod:`bayes_simfluence.collect.model`).
        optim: optimiser and schedule.
        scores: attribution scores to compute (``"tracin"``, ``"influence"``), on ``score_params``.
        checkpoint_every: optimiser steps between score checkpoints (``None``: 4 checkpoints).
        reference_run: the run whose checkpoints are used for scores.
        damping: influence-function damping ``lambda`` (``None``: ``1 / sum of learning rates``).
        eval_batch_size: test examples per forward pass.
    """

    model: str
    train: str
    test: str
    task: str = "classification"
    text_field: str = "text"
    label_field: str = "label"
    prompt_field: str = "prompt"
    target_field: str = "target"
    id_field: str | None = None
    train_size: int | None = None
    test_size: int | None = None
    max_length: int = 128
    runs: int = 8
    protocol: str = "orderings"
    subset_size: int | None = None
    batch_size: int = 8
    epochs: int = 1
    eval_every: int = 1
    curriculum_seed: int = 0
    init_seed: int = 0
    noise_seed: int = 0
    vary_noise: bool = False
    dropout: bool = True
    trainable: str = "all"
    optim: OptimConfig = field(default_factory=OptimConfig)
    scores: tuple[str, ...] = ()
    score_params: str = "last:1"
    checkpoint_every: int | None = None
    reference_run: int = 0
    damping: float | None = None
    eval_batch_size: int = 64

    def __post_init__(self) -> None:
        for name in ("model", "train", "test"):
            object.__setattr__(self, name, str(getattr(self, name)))
        object.__setattr__(self, "scores", tuple(self.scores))
        unknown = [method for method in self.scores if method not in SCORE_METHODS]
        if unknown:
            raise ValueError(f"unknown score method(s) {unknown}; choose from {SCORE_METHODS}")
        if self.runs < 1:
            raise ValueError(f"runs must be >= 1, got {self.runs}")
        if not 0 <= self.reference_run < self.runs:
            raise ValueError(f"reference_run must be in [0, {self.runs}), got {self.reference_run}")
        if self.eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {self.eval_every}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _seed_for(seed: int, run: int) -> int:
    return int(np.random.default_rng([seed, run]).integers(2**31))


def configured_examples(config: CollectConfig) -> tuple[Examples, Examples, list]:
    """``(train, test, label_names)`` as ``config`` selects them."""
    train, test, label_names = load_examples(
        config.train, config.test, config.task, config.text_field, config.label_field,
        config.prompt_field, config.target_field, config.id_field)
    if config.train_size is not None:
        train = train.subset(np.arange(min(config.train_size, len(train))))
    if config.test_size is not None:
        test = test.subset(np.arange(min(config.test_size, len(test))))
    return train, test, label_names


class RunExecutor:
    """Holds the model, data and initial state of a collection; :meth:`run` trains one run."""

    def __init__(self, config: CollectConfig, curricula: np.ndarray) -> None:
        self.config = config
        self.curricula = curricula  # [runs, optimiser steps, batch]
        self.train_examples, self.test_examples, self.label_names = configured_examples(config)
        self.model, self.tokenizer = load_model(config.model, config.task, max(len(self.label_names), 2),
                                                config.init_seed, config.dropout)
        self.train_encoded = encode(self.train_examples, self.tokenizer, config.max_length)
        # the examples the scores cover: the pool, followed by any added with add_scored_examples
        self.scored_examples, self.scored_encoded = self.train_examples, self.train_encoded
        self.test_encoded = encode(self.test_examples, self.tokenizer, config.max_length)
        self.evaluate = LossEvaluator(self.test_encoded, config.eval_batch_size)
        self.trainable_names = select_parameters(self.model, config.trainable)
        self.parameters = set_trainable(self.model, self.trainable_names)
        self.score_names = select_parameters(self.model, config.score_params) if config.scores else []
        self.initial_state = {name: value.detach().clone() for name, value in self.model.state_dict().items()}
        self.n_steps = curricula.shape[1]
        self.learning_rates = learning_rates(config.optim, self.n_steps)

    def add_scored_examples(self, added: Examples) -> None:
        """Score ``added`` too (after the pool, on the same footing); no run trains on them
        (:mod:`.added_examples`)."""
        self.scored_examples = self.train_examples.followed_by(added)
        self.scored_encoded = encode(self.scored_examples, self.tokenizer, self.config.max_length)

    def checkpoint_steps(self) -> np.ndarray:
        every = self.config.checkpoint_every or max(1, self.n_steps // 4)
        return np.arange(0, self.n_steps, every)

    def _scores_now(self) -> dict[str, tuple[np.ndarray, float]]:
        """``{method: ([tests, scored examples] pair scores, seconds taken)}`` at the current weights.

        ``influence`` is this package's (exact damped Gauss-Newton, :mod:`.influence`); ``tracin`` is
        the dot product ``<grad L(z_test), grad L(z_i)>`` of the same per-example gradients (computed
        once when both are asked: influence's undamped term *is* TracIn); the others come from dattri
        (:mod:`.dattri_scores`). dattri's TracIn gives the same numbers (a test checks it) but computes
        the gradients again, vmapped over the whole forward pass, and the reference run's scores are
        the collection's longest task. A method's seconds include the gradients it used.
        """
        damping = self.config.damping or default_damping(self.learning_rates)
        methods = self.config.scores
        gradient_seconds = 0.0
        if {"tracin", "influence"} & set(methods):
            start = time.perf_counter()
            test_gradients = loss_gradients(self.model, self.test_encoded, self.score_names)
            if "influence" in methods:  # the loss gradients come with the curvature rows
                train_gradients, curvature = train_gradients_and_curvature(self.model, self.scored_encoded,
                                                                           self.score_names)
            else:
                train_gradients = loss_gradients(self.model, self.scored_encoded, self.score_names)
            gradient_seconds = time.perf_counter() - start
        results = {}
        for method in methods:
            start = time.perf_counter()
            if method == "influence":
                scores = influence_scores(test_gradients, train_gradients, curvature, damping)
            elif method == "tracin":
                scores = (test_gradients @ train_gradients.T).numpy().astype(np.float32)
            else:
                scores = dattri_scores(self.model, self.scored_encoded, self.test_encoded, self.score_names,
                                       (method,), damping)[method]
            seconds = time.perf_counter() - start
            if method in ("tracin", "influence"):  # its own work, plus the gradients it used
                seconds += gradient_seconds
            results[method] = (scores, seconds)
        return results

    def run(self, run: int, position: int = 0, progress: bool = True) -> dict[str, np.ndarray]:
        """Train run ``run`` from the initial state.

        Returns:
            ``curriculum [steps, batch]``, ``losses [steps / eval_every + 1, tests]`` and, for the
            reference run with scores, ``<method> [checkpoints, tests, n_train]`` and
            ``<method>_seconds`` (time spent computing them).
        """
        config = self.config
        self.model.load_state_dict(self.initial_state)
        optimizer, scheduler = build_optimizer(self.parameters, config.optim, self.n_steps)
        torch.manual_seed(_seed_for(config.noise_seed, run) if config.vary_noise else config.noise_seed)
        self.model.train()
        wants_scores = bool(config.scores) and run == config.reference_run
        checkpoints = set(self.checkpoint_steps().tolist()) if wants_scores else set()
        scores: dict[str, list[np.ndarray]] = {method: [] for method in config.scores if wants_scores}
        seconds = {method: 0.0 for method in scores}
        losses = [self.evaluate(self.model)]
        curriculum = self.curricula[run]
        bar = tqdm(total=self.n_steps, desc=f"run {run}", leave=False, position=position,
                   disable=not progress, dynamic_ncols=True)
        for step, slots in enumerate(curriculum):
            if step in checkpoints:
                with torch.random.fork_rng(devices=[]):  # scoring must not move the run's dropout stream
                    for method, (value, taken) in self._scores_now().items():
                        scores[method].append(value)
                        seconds[method] += taken
            indices = slots[slots >= 0]
            if indices.size:
                loss = example_losses(self.model, collate(self.train_encoded, indices)).mean()
                loss.backward()
                if config.optim.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(self.parameters, config.optim.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if (step + 1) % config.eval_every == 0:
                losses.append(self.evaluate(self.model))
            bar.update()
        bar.close()
        result = {"curriculum": curriculum, "losses": np.stack(losses)}
        result.update({method: np.stack(values) for method, values in scores.items()})
        result.update({f"{method}_seconds": np.float64(taken) for method, taken in seconds.items()})
        return result

    def meta(self) -> dict:
        config = self.config
        return {
            "collector": "bayes_simfluence.collect",
            "config": config.to_dict(),
            "model": config.model,
            "task": config.task,
            "label_names": [str(label) for label in self.label_names],
            "optimizer": dataclasses.asdict(config.optim),
            "learning_rates": self.learning_rates.tolist(),
            "seeds": {"curriculum": config.curriculum_seed, "init": config.init_seed,
                      "noise": config.noise_seed, "vary_noise": config.vary_noise},
            "optimizer_steps": self.n_steps,
            "eval_every": config.eval_every,
            "trainable_parameters": parameter_count(self.model, self.trainable_names),
            "versions": package_versions(),
        }


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape a collection's numbers."""
    import datasets
    import transformers

    import bayes_simfluence

    return {"bayes_simfluence": bayes_simfluence.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "datasets": datasets.__version__,
            "numpy": np.__version__}


def _identity(config: CollectConfig, curricula: np.ndarray) -> dict:
    """What a resumed collection must share with the original, as it reads back from JSON."""
    identity = {"config": config.to_dict(),
                "curricula_sha256": hashlib.sha256(np.ascontiguousarray(curricula, dtype=np.int64).tobytes()).hexdigest()}
    return json.loads(json.dumps(identity))


def partial_dir_for(out: Path) -> Path:
    """Where finished runs of an unfinished collection of ``out`` are kept."""
    return out.with_name(out.name + ".partial")


def _prepare_partial(partial: Path, identity: dict) -> None:
    config_path = partial / "config.json"
    if config_path.exists():
        saved = json.loads(config_path.read_text())
        if saved != identity:
            differing = sorted(key for key in set(saved["config"]) | set(identity["config"])
                               if saved["config"].get(key) != identity["config"].get(key))
            if saved["curricula_sha256"] != identity["curricula_sha256"]:
                differing.append("curricula")
            raise ValueError(
                f"{partial} holds an unfinished collection with a different configuration "
                f"(differs in: {', '.join(differing)}); rerun with the same settings to resume, "
                f"or delete {partial} to start over")
        return
    partial.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(config_path) as temporary:
        temporary.write_text(json.dumps(identity, indent=2, sort_keys=True))


def _run_path(partial: Path, run: int) -> Path:
    return partial / f"run_{run:05d}.npz"


# ------------------------------------------------------------------ workers
_EXECUTOR: RunExecutor | None = None


def _init_worker(config: CollectConfig, curricula: np.ndarray, threads: int) -> None:
    """A worker's set-up (loading the model and data). Ctrl-C reaches the whole process group; a
    worker still setting up has trained nothing, so it ends at once and quietly (exit code 130)
    instead of ``concurrent.futures`` printing the interrupted imports' traceback; the main process
    reports the interrupt."""
    global _EXECUTOR
    try:
        torch.set_num_threads(threads)
        _EXECUTOR = RunExecutor(config, curricula)
    except KeyboardInterrupt:
        os._exit(130)


def _work(task: tuple[int, str, bool]) -> int:
    run, partial, progress = task
    identity = multiprocessing.current_process()._identity
    position = identity[0] if identity else 1
    result = _EXECUTOR.run(run, position=position, progress=progress)
    atomic.savez(_run_path(Path(partial), run), result)
    return run


def _train_in_processes(config: CollectConfig, curricula: np.ndarray, partial: Path, todo: list[int],
                        workers: int, threads: int, progress: bool, bar: tqdm) -> None:
    """Train the runs ``todo`` (none of them saved yet) in ``workers`` spawned processes, each run saved to
    ``partial`` as it ends.

    A worker that dies (a crash in native code, the OOM killer) breaks the pool: ``concurrent.futures``
    says so (``BrokenProcessPool``) where ``multiprocessing.Pool`` would wait forever for the lost run.
    The runs left go to fresh workers, up to :data:`WORKER_RESTARTS` times; then the error names them,
    and the finished runs stay saved for a resume. Each run is seeded by its index, so a run trained
    again gives the same losses."""
    context = multiprocessing.get_context("spawn")
    left = todo
    for attempt in range(WORKER_RESTARTS + 1):
        if not left:
            return
        pool = ProcessPoolExecutor(min(workers, len(left)), mp_context=context, initializer=_init_worker,
                                   initargs=(config, curricula, threads))
        try:
            # workers exit by themselves at shutdown: a terminated worker would leave its semaphores
            # (tqdm's lock) behind ("resource_tracker: ... leaked semaphore objects")
            for future in as_completed([pool.submit(_work, (run, str(partial), progress)) for run in left]):
                interrupts.written(_run_path(partial, future.result()))  # saved by the worker: a Ctrl-C names it
                bar.update()
            pool.shutdown()
            return
        except BrokenProcessPool as error:
            pool.shutdown(cancel_futures=True)
            interrupts.check()  # a worker ended by Ctrl-C: the interrupt, not a restart
            failure = error
            left = [run for run in left if not _run_path(partial, run).exists()]
            if left and attempt < WORKER_RESTARTS:
                warnings.warn(f"collect: a worker process died ({error}); runs {_run_list(left)} go to fresh "
                              f"workers (restart {attempt + 1} of {WORKER_RESTARTS})", RuntimeWarning,
                              stacklevel=2)
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    if not left:  # the last pool broke after its workers had saved every run
        return
    raise RuntimeError(f"collect: worker processes died {WORKER_RESTARTS + 1} times; runs {_run_list(left)} "
                       f"are unfinished (the finished ones are kept in {partial}: the same command resumes)"
                       ) from failure


def _run_list(runs: list[int]) -> str:
    return ", ".join(map(str, runs[:10])) + (f" and {len(runs) - 10} more" if len(runs) > 10 else "")


def default_curricula(config: CollectConfig, n_train: int) -> np.ndarray:
    """``[runs, optimiser steps, batch]`` curricula sampled by ``config``'s protocol and seed."""
    return curricula_lib.sample_curricula(config.protocol, n_train, config.runs, config.batch_size,
                                          config.epochs, config.curriculum_seed, config.subset_size)


def collect(config: CollectConfig, out: str | os.PathLike, curricula: np.ndarray | None = None,
            workers: int = 1, threads: int | None = None, progress: bool = True,
            overwrite: bool = False, ray: RayOptions | None = None) -> Runs:
    """Run the collection (resuming an unfinished one) and write ``out`` (runs format).

    Args:
        config: what to train and log.
        out: the runs file to write; scores (if any) go to its companion ``.scores.npz``.
        curricula: ``[runs, optimiser steps, batch]`` to use instead of sampling (``-1`` = empty).
        workers: parallel processes, one run each at a time.
        threads: torch threads per process (default: CPU cores / workers).
        progress: show progress bars.
        overwrite: replace an existing ``out`` (otherwise refused unless resuming).
        ray: train the runs as Ray actors (:mod:`.ray_runs`) instead of local processes;
            ``workers`` is ignored (``ray.actors`` says how many at once).

    Returns:
        The runs as written: ``curricula [runs, steps, batch]``, ``losses [runs, steps + 1, tests]``.
    """
    out = Path(out)
    partial = partial_dir_for(out)
    if out.exists() and not partial.exists() and not overwrite:
        raise ValueError(f"{out} exists; pass overwrite (--overwrite) to replace it")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    with deterministic_torch(threads):
        return _collect(config, out, partial, curricula, workers, threads, progress, ray)


@contextlib.contextmanager
def deterministic_torch(threads: int) -> Iterator[None]:
    """Torch on ``threads`` threads with deterministic algorithms (a run trains the same every time, which
    resuming and replaying rely on), both settings restored on exit."""
    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_deterministic)


def _collect(config: CollectConfig, out: Path, partial: Path, curricula: np.ndarray | None,
             workers: int, threads: int, progress: bool, ray: RayOptions | None) -> Runs:
    n_train = len(configured_examples(config)[0])
    if curricula is None:
        curricula = default_curricula(config, n_train)
    curricula = np.asarray(curricula, dtype=np.int64)
    if curricula.ndim != 3 or curricula.shape[0] != config.runs:
        raise ValueError(f"curricula must be [runs = {config.runs}, steps, batch], got shape {curricula.shape}")
    if curricula.max() >= n_train or curricula.min() < -1:
        raise ValueError(f"curricula hold indices outside [0, {n_train}) (and -1 for empty slots)")
    curricula_lib.group_steps(curricula, config.eval_every)  # checks steps % eval_every
    executor = RunExecutor(config, curricula) if workers == 1 and ray is None else None
    _prepare_partial(partial, _identity(config, curricula))
    todo = [run for run in range(config.runs) if not _run_path(partial, run).exists()]
    bar = tqdm(total=config.runs, initial=config.runs - len(todo), desc="runs", disable=not progress,
               dynamic_ncols=True)
    if ray is not None:
        def finished(run: int, result: dict[str, np.ndarray]) -> None:
            atomic.savez(_run_path(partial, run), result)
            bar.update()

        train_on_ray(functools.partial(RunExecutor, config, curricula), todo, threads, ray, finished)
    elif executor is not None:
        for run in todo:
            atomic.savez(_run_path(partial, run), executor.run(run, position=1, progress=progress))
            bar.update()
    elif todo:
        _train_in_processes(config, curricula, partial, todo, workers, threads, progress, bar)
    bar.close()
    executor = executor or RunExecutor(config, curricula)
    runs = _assemble(executor, partial, out)
    shutil.rmtree(partial)
    return runs


def _assemble(executor: RunExecutor, partial: Path, out: Path) -> Runs:
    config = executor.config
    results = []
    for run in range(config.runs):
        with np.load(_run_path(partial, run), allow_pickle=False) as archive:
            results.append({name: archive[name] for name in archive.files})
    runs = Runs.create(
        curricula_lib.group_steps(np.stack([r["curriculum"] for r in results]), config.eval_every),
        np.stack([r["losses"] for r in results]),
        n_train=len(executor.train_examples), train_ids=executor.train_examples.ids,
        test_ids=executor.test_examples.ids, meta=executor.meta(), source=str(out))
    if config.scores:
        save_scores(scores_path_for(out), reference_score_sets(executor, results[config.reference_run]))
    runs.save(out)
    return runs


def reference_score_sets(executor: RunExecutor, reference: dict[str, np.ndarray]) -> list[ScoreSet]:
    """One :class:`ScoreSet` per scored method from the reference run's result (:meth:`RunExecutor.run`),
    over the executor's scored examples (the pool, then any added examples) and its test examples."""
    config = executor.config
    rates = executor.learning_rates.reshape(-1, config.eval_every).mean(axis=1)
    damping = config.damping or default_damping(executor.learning_rates)
    return [
        ScoreSet(method, reference[method], executor.checkpoint_steps(), rates, config.eval_every,
                 np.asarray(executor.scored_examples.ids), np.asarray(executor.test_examples.ids),
                 {"score_params": config.score_params, "reference_run": config.reference_run,
                  "optimizer": config.optim.optimizer, "model": config.model,
                  # absent for a reference run finished before timings were recorded (resumed)
                  **({"seconds": round(float(reference[f"{method}_seconds"]), 3)}
                     if f"{method}_seconds" in reference else {}),
                  **({"damping": damping} if method in ("influence", "influence-cg") else {})})
        for method in config.scores
    ]
