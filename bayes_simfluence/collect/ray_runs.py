"""Training runs on a Ray cluster: ``collect --ray [ADDRESS]`` (the optional ``ray`` extra).

Each Ray actor loads the model once (a :class:`~bayes_simfluence.collect.collector.RunExecutor`)
and trains the runs it is sent, one at a time, with the resources asked for (``cpus_per_run``,
``gpus_per_run``). A run's result comes back to the driver, which writes it into
``OUT.partial/`` atomically, exactly as a local collection does: kill-and-resume works the same,
and the runs file is identical to a local one (every run is seeded by itself). An actor that
dies (its process killed, its node lost) is restarted by Ray and its run retried, up to
``max_retries`` times. On a multi-node cluster the model and data paths must exist on every node.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

#: Ray namespace of the collection actors (named ``collect-<collection>-<i>``).
NAMESPACE = "bayes-simfluence"


@dataclass(frozen=True)
class RayOptions:
    """Where and how runs are trained on Ray.

    Attributes:
        address: ``None`` starts a local instance (if none is running in this process); otherwise
            an address ``ray.init`` accepts (``"auto"``, ``"ray://host:10001"``).
        actors: actors training at once (each holds one copy of the model).
        cpus_per_run, gpus_per_run: resources of each actor (fractions allowed, e.g. ``0.25`` GPU).
        max_retries: restarts of a dead actor, and retries of its run.
    """

    address: str | None = None
    actors: int = 1
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    max_retries: int = 3

    def __post_init__(self) -> None:
        if self.actors < 1:
            raise ValueError(f"actors must be >= 1, got {self.actors}")
        if not self.cpus_per_run > 0 or self.gpus_per_run < 0:
            raise ValueError(f"cpus_per_run must be > 0 and gpus_per_run >= 0, got {self.cpus_per_run}, "
                             f"{self.gpus_per_run}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")


class RunActor:
    """Holds the model of one collection on a Ray worker; :meth:`run` trains one run.

    ``make_executor()`` builds the collection's ``RunExecutor`` (passed in, so that this module
    does not import the collector that calls it).
    """

    def __init__(self, make_executor: Callable[[], Any], threads: int) -> None:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True, warn_only=True)  # as the local collection does
        self.executor = make_executor()

    def run(self, run: int) -> dict[str, np.ndarray]:
        return self.executor.run(run, progress=False)


def _ray():
    try:
        import ray
    except ModuleNotFoundError:
        raise ValueError("collect --ray needs the 'ray' extra: pip install 'bayes-simfluence[ray]'") from None
    return ray


def train_on_ray(make_executor: Callable[[], Any], todo: list[int], threads: int, options: RayOptions,
                 on_result: Callable[[int, dict[str, np.ndarray]], None]) -> None:
    """Train runs ``todo`` on Ray; ``on_result(run, result)`` is called in the driver as each finishes.

    ``make_executor()`` builds the collection's ``RunExecutor`` on each actor.

    Connects to ``options.address`` (or starts a local instance) unless Ray is already
    initialised in this process; what this call started it shuts down, and its actors are
    always removed.
    """
    if not todo:
        return
    ray = _ray()
    started = not ray.is_initialized()
    if started:
        ray.init(address=options.address, namespace=NAMESPACE, include_dashboard=False, log_to_driver=False)
    collection = uuid.uuid4().hex[:8]
    actor_class = ray.remote(RunActor)
    actors = []
    try:
        actors = [actor_class.options(name=f"collect-{collection}-{i}", namespace=NAMESPACE,
                                      num_cpus=options.cpus_per_run, num_gpus=options.gpus_per_run,
                                      max_restarts=options.max_retries, max_task_retries=options.max_retries
                                      ).remote(make_executor, threads)
                  for i in range(min(options.actors, len(todo)))]
        queue = list(todo)
        pending = {}
        for actor in actors:
            run = queue.pop(0)
            pending[actor.run.remote(run)] = (actor, run)
        while pending:
            (done,), _ = ray.wait(list(pending), num_returns=1)
            actor, run = pending.pop(done)
            on_result(run, ray.get(done))
            if queue:
                following = queue.pop(0)
                pending[actor.run.remote(following)] = (actor, following)
    finally:
        for actor in actors:
            ray.kill(actor)
        if started:
            ray.shutdown()
