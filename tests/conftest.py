"""Shared test settings: everything offline, figures without a screen, JAX's persistent
compilation cache; a local Ray instance; quiet ends of pytest-xdist workers."""

import importlib.util
import logging
import os
import signal
from importlib import metadata
from pathlib import Path

import pytest

# XLA compilation is most of a Bayesian test's time (a small fit compiles for 15-25 s, then runs
# in well under a second), so compiled programs are kept between test sessions and shared with the
# processes tests start (CLI subprocesses, workers inherit the environment). Set before JAX is
# imported; an existing JAX_COMPILATION_CACHE_DIR wins. Entries are keyed by the program and the
# JAX, jaxlib and XLA versions, so a stale entry is never used. One folder per JAX version: where
# `filelock` is installed the size is capped at 2 GiB (least recently used entries go first), and
# JAX's eviction fails on entries written without it (a core-only environment has no filelock).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path.home() / ".cache" / "bayes-simfluence"
                                                       / f"jax-{metadata.version('jax')}-compilation-tests"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
if importlib.util.find_spec("filelock") is not None:
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2 * 1024**3))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance with 2 CPUs (skips where the 'ray' extra is not installed)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="bayes-simfluence",
             logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


def pytest_sessionfinish(session):
    """A pytest-xdist worker that has run its tests ignores SIGINT from here on.

    When the session ends, execnet gives each worker 5 s to finish and then sends it SIGINT. A
    worker still tearing down then (pytest's closing ``gc.collect()`` runs JAX's garbage-collection
    callback, which can take seconds in a process that compiled many programs) got the
    ``KeyboardInterrupt`` inside that callback, where Python can only print it: "Exception ignored
    in: <function _xla_gc_callback>" with a traceback, after a run whose tests all passed. Every
    result has been reported by now (this runs before the worker says it has finished), so the
    worker finishes its teardown instead.
    """
    if hasattr(session.config, "workerinput"):  # pytest-xdist's mark of a worker
        signal.signal(signal.SIGINT, signal.SIG_IGN)
