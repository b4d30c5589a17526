"""Shared test settings: everything offline, figures without a screen, JAX's persistent
compilation cache where torch is absent; a local Ray instance; quiet ends of pytest-xdist workers."""

import ctypes
import importlib.util
import logging
import os
import signal
import sys
from importlib import metadata
from pathlib import Path

import pytest

# JAX's persistent compilation cache, only where torch is not installed (the core-only job). With
# torch in the same process (as it was in every worker while tests/collect was collected with the
# rest), writing JAX 0.10's cache crashed pytest-xdist workers (a segfault in libgcc_s's unwinder
# under compilation_cache.put_executable_and_time), and a crashed worker then hung the session; that
# suite takes about as long without the cache. Where it is on, compiled programs are
# shared with the processes tests start (CLI subprocesses inherit the environment); entries are
# keyed by the program and the JAX, jaxlib and XLA versions, one folder per JAX version.
if importlib.util.find_spec("torch") is None:
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path.home() / ".cache" / "bayes-simfluence"
                                                           / f"jax-{metadata.version('jax')}-compilation-tests"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
    if importlib.util.find_spec("filelock") is not None:  # JAX evicts old entries only with filelock
        os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2 * 1024**3))
else:
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


@pytest.fixture(scope="module", autouse=True)
def compiled_programs_freed_after_each_file():
    """After each test file, JAX's compiled programs are dropped and freed memory goes back to the system.

    A pytest-xdist worker otherwise keeps every program each earlier file compiled: measured on eight
    model files run in one process, 5.4 GiB resident at the end without this and 1.0 GiB with it (peak
    2.5 GiB), in the same time. Workers near the end of the full suite had grown to 5-7 GiB each; in
    CI a worker that far in died without a traceback ("node down: Not properly terminated") in
    tests/test_cross_fit_quality.py, which passes alone and in every local CI run (memory is the
    likely difference). Module-level jitted functions recompile on their next call.
    """
    yield
    import gc

    jax = sys.modules.get("jax")
    if jax is not None:
        jax.clear_caches()
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc keeps freed arenas otherwise
        except (OSError, AttributeError):
            pass


@pytest.fixture(autouse=True)
def torch_stays_out(request):
    """A test outside tests/collect that loads torch into its process fails.

    Nothing else frees it: every later test of that pytest-xdist worker runs beside torch, and a
    worker with torch loaded crashed compiling XLA programs (a segfault, in three CI runs, in
    tests/test_cross_fit_quality.py; torch had come from a test's ``find_spec`` of a collect module).
    Such tests run their torch code in a subprocess instead.
    """
    before = "torch" in sys.modules
    yield
    if not before and "torch" in sys.modules and "collect" not in request.node.path.parts:
        pytest.fail("this test loaded torch into the test process (run that code in a subprocess)")


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
