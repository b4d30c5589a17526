"""Training examples added after a collection: their one-step scores, from the reference run replayed.

The feature prior (:mod:`bayes_simfluence.bayes.features`) predicts the effect of a training example
that no run used from its features, for instance its one-step scores against each test example. Those
scores need the reference run's checkpoints, which a collection does not keep; the run is cheap to
rebuild instead: training is deterministic (same initial weights, curriculum and dropout seed, scoring
leaves the run untouched), so :func:`collect_added` trains the reference run again, checks that it
reproduces the logged losses, and scores the pool *followed by* the added examples at the same
checkpoints. It writes

- a runs file whose pool is the collection's pool followed by the added examples (indices
  ``n_train ..``), with the same runs: no run trains on an added example;
- its scores companion over that pool, every column scored on the same footing (for ``influence`` the
  curvature, for ``trak`` the kernel, over the whole pool): ``tracin`` columns of the pool equal the
  collection's.

``bayes-simfluence features`` then attaches the scores as features, a fit regresses the effects on
them, and ``simulate`` / ``compare`` accept curricula with the added examples' indices.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from bayes_simfluence import curricula as curricula_lib
from bayes_simfluence.collect.collector import (CollectConfig, RunExecutor, default_curricula,
                                                deterministic_torch, reference_score_sets)
from bayes_simfluence.collect.data import load_added_examples
from bayes_simfluence.runs import Runs
from bayes_simfluence.score_files import save_scores, scores_path_for

#: how far the replayed reference run's losses may be from the logged ones (relative; the replay is
#: deterministic on one machine, thread counts may move the last digits of float32 sums)
REPLAY_TOLERANCE = 1e-4


def added_path_for(out: str | os.PathLike, added: str | os.PathLike) -> Path:
    """``runs+new.npz`` beside ``runs.npz``: the pool of ``out`` followed by the file ``added``'s examples."""
    out, added = Path(out), Path(added)
    return out.with_name(f"{out.stem}+{added.stem}.npz")


def collect_added(config: CollectConfig, out: str | os.PathLike, added: str | os.PathLike,
                  curricula: np.ndarray | None = None, threads: int | None = None, progress: bool = True,
                  overwrite: bool = False) -> tuple[Runs, Path]:
    """Score the examples of ``added`` with the pool of the finished collection ``out``.

    Args:
        config: the collection's own configuration (checked against ``out``'s ``meta``), with scores.
        out: the runs file the collection wrote.
        added: training examples to add (a file or dataset read like the pool, with its fields).
        curricula: the collection's ``[runs, optimiser steps, batch]`` if it was given them.
        threads: torch threads (default: every core).
        progress: show a progress bar over the replayed run's steps.
        overwrite: replace existing outputs.

    Returns:
        ``(runs, path)``: the runs with the extended pool (``n_train + added`` examples) and where they
        were written (:func:`added_path_for`); the scores went to the path's companion.
    """
    out = Path(out)
    if not config.scores:
        raise ValueError("--features-for scores the added examples: give the collection's --scores "
                         "(e.g. --scores tracin)")
    if not out.exists():
        raise FileNotFoundError(f"{out}: no such runs file; collect the runs first (the same command without "
                                f"--features-for)")
    target = added_path_for(out, added)
    if not overwrite and (target.exists() or scores_path_for(target).exists()):
        raise ValueError(f"{target} exists; pass overwrite (--overwrite) to replace it")
    runs = Runs.load(out)
    _check_same_collection(config, runs, out)
    n_train = runs.n_train
    curricula = default_curricula(config, n_train) if curricula is None else np.asarray(curricula, np.int64)
    if not np.array_equal(curricula_lib.group_steps(curricula, config.eval_every), runs.curricula):
        raise ValueError(f"{out}: its curricula are not the ones these settings give; pass the collection's "
                         f"own --curricula and seeds")
    with deterministic_torch(threads or os.cpu_count() or 1):
        executor = RunExecutor(config, curricula)
        executor.add_scored_examples(load_added_examples(
            added, config.task, executor.label_names, config.text_field, config.label_field,
            config.prompt_field, config.target_field, config.id_field))
        reference = executor.run(config.reference_run, progress=progress)
    logged = runs.losses[config.reference_run]
    if not np.allclose(reference["losses"], logged, rtol=REPLAY_TOLERANCE, atol=REPLAY_TOLERANCE * 1e-2):
        difference = float(np.max(np.abs(reference["losses"] - logged)))
        raise ValueError(f"{out}: the replayed reference run {config.reference_run} does not reproduce its "
                         f"logged losses (largest difference {difference:.3g}); the model, data or package "
                         f"versions differ from the collection's")
    extended = Runs.create(
        runs.curricula, runs.losses, n_train=len(executor.scored_examples),
        train_ids=executor.scored_examples.ids, test_ids=runs.test_ids,
        meta={**runs.meta, "added_examples": {"source": str(added), "first_index": n_train,
                                              "count": len(executor.scored_examples) - n_train}},
        source=str(target))
    save_scores(scores_path_for(target), reference_score_sets(executor, reference))
    extended.save(target)
    return extended, target


def _check_same_collection(config: CollectConfig, runs: Runs, out: Path) -> None:
    logged = runs.meta.get("config")
    if logged is None:
        raise ValueError(f"{out}: not written by 'bayes-simfluence collect' (no config in its meta); "
                         f"--features-for needs the collection's reference run")
    asked = json.loads(json.dumps(config.to_dict()))
    differ = sorted(key for key in set(asked) | set(logged)
                    if key != "scores" and asked.get(key) != logged.get(key))
    if differ:
        raise ValueError(f"{out}: collected with other settings ({', '.join(differ)} differ); give "
                         f"--features-for the collection's own arguments")

