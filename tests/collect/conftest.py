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


def pytest_collection_modifyitems(items):
    """Each of these tests takes well under a minute: one still running after five (a collection waiting
    on a worker that died, say) fails with every thread's stack, and the rest of the session goes on."""
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(300))
