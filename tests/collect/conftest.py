"""Tests of the ``collect`` extra (torch, transformers, datasets): skipped as a whole without it.

The core-only suite (CI's Python 3.12 job, ``pip install -e ".[dev]"``) has none of these
packages; everything outside this folder must pass there.
"""

import importlib.util

import pytest

MISSING = [name for name in ("torch", "transformers", "datasets") if importlib.util.find_spec(name) is None]

if MISSING:
    collect_ignore_glob = ["*.py"]


def pytest_report_header(config):
    if MISSING:
        return f"collect extra absent ({', '.join(MISSING)} missing): tests/collect skipped"
    return None


@pytest.fixture(autouse=True)
def _no_compilation_cache_beside_torch():
    """These tests run torch in the same process as JAX; there, writing JAX's persistent compilation
    cache (tests/conftest.py) crashed a worker twice under load (a segfault in libgcc_s's unwinder,
    faulthandler showing ``compilation_cache.put_executable_and_time`` inside the demo's fit). They
    compile without the cache."""
    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    yield
    jax.config.update("jax_enable_compilation_cache", True)
