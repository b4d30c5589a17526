"""Shared test settings: everything offline, figures without a screen, no persistent JAX
compilation cache; a local Ray instance; quiet ends of pytest-xdist workers."""

import logging
import os
import signal

import pytest

# No persistent compilation cache: with torch in the same process (every worker of the full suite
# imports it while collecting tests/collect), writing JAX 0.10's cache crashed pytest-xdist workers
# (a segfault in libgcc_s's unwinder under compilation_cache.put_executable_and_time), and a
# crashed worker then hung the session. Compiling afresh cost nothing measurable: the full suite
# took 915 s without the cache against 13-15 minutes with it.
os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"
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
