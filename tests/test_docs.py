"""The documentation site: every committed results file is on a page, the generated tables are
filled in, and ``mkdocs build --strict`` passes (where the ``docs`` extra is installed; CI builds
the site after the full suite)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SNIPPET = re.compile(r'^--8<-- "([^"]+)"\s*$', re.MULTILINE)


def _hooks():
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("the docs extra is not installed (pip install -e '.[docs]')")
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def included() -> set[str]:
    return {path for page in DOCS.glob("**/*.md") for path in SNIPPET.findall(page.read_text())}


def test_every_results_file_is_included_by_a_page_and_every_include_exists():
    results = {str(p.relative_to(ROOT)) for folder in ("experiments/results", "benchmarks/results")
               for p in (ROOT / folder).glob("*.md")}
    assert results - included() == set(), "results files no docs page includes"
    assert [path for path in included() if not (ROOT / path).is_file()] == []


def test_the_options_and_backends_tables_are_generated_and_never_empty():
    hooks = _hooks()
    options = hooks.options_markdown()
    assert "`guard`" in options and "`ridge`" in options
    fallback = hooks._fallback_options()
    assert "| `linear` | `guard`, `guard_folds`, `ridge`, `ridge_centre` |" in fallback and "`bayes-grid`" in fallback
    assert "`bayes-grid`" in hooks.backends_markdown()
    page = hooks.on_page_markdown((DOCS / "options.md").read_text(), None, None, None)
    assert hooks.OPTIONS_MARKER not in page and "`num_steps`" in page


def test_the_site_builds_with_strict(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings_handlers"):
        if importlib.util.find_spec(module) is None:
            pytest.skip("the docs extra is not installed (pip install -e '.[docs]')")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "options" / "index.html").is_file()
