"""MkDocs hooks of the documentation site (registered in ``mkdocs.yml`` under ``hooks:``).

- ``docs/options.md``: the marker ``<!-- options -->`` is replaced by the options reference that
  the package writes from its one definition of the settings (``options_markdown()``, looked up
  in :mod:`bayes_simfluence.settings`, then :mod:`bayes_simfluence.bayes.methods`); where neither
  has it, by a table of the option names each method reads, so the page is never empty.
- ``docs/methods.md``: the marker ``<!-- backends -->`` is replaced by the table of what each
  Bayesian backend supports (``bayes_simfluence.bayes.backends.backends_markdown()``), so the page
  says what the code declares.
- The figures of ``experiments/results/`` are served under ``results/``, so that the results
  files included into ``docs/results/*.md`` (pymdownx.snippets) show their images by the same
  relative names they use in the repository.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any, Callable

from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.bayes_simfluence")

ROOT = Path(__file__).resolve().parents[1]
OPTIONS_MARKER = "<!-- options -->"
BACKENDS_MARKER = "<!-- backends -->"
FIGURES = ROOT / "experiments" / "results"


def _first(candidates: list[tuple[str, str]]) -> Callable[[], str] | None:
    """The first ``module.name`` of ``candidates`` that imports and is callable."""
    for module_name, name in candidates:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        function = getattr(module, name, None)
        if callable(function):
            return function
    return None


def _fallback_options() -> str:
    """The option names each method reads, from the methods' registrations (no help texts)."""
    from bayes_simfluence import methods as point_methods
    from bayes_simfluence.bayes import methods as bayes_methods

    option_names = getattr(bayes_methods, "option_names", None)
    if option_names is None:
        from bayes_simfluence import settings

        option_names = settings.option_names
    lines = ["| method | options (`-o KEY=VALUE`) |", "|---|---|"]
    for method in point_methods.available_methods():
        try:
            names = sorted(option_names(method))
        except Exception:  # a method whose options are not registered there
            names = []
        lines.append(f"| `{method}` | {', '.join(f'`{n}`' for n in names) or 'none'} |")
    return "\n".join(lines)


def options_markdown() -> str:
    """The options reference, from the package (or the fallback table)."""
    function = _first([("bayes_simfluence.settings", "options_markdown"),
                       ("bayes_simfluence.bayes.methods", "options_markdown")])
    return function() if function is not None else _fallback_options()


def backends_markdown() -> str:
    function = _first([("bayes_simfluence.bayes.backends", "backends_markdown")])
    if function is None:
        return "The table of backends is written by `bayes_simfluence.bayes.backends.backends_markdown()`."
    return function()


def on_files(files: Files, config: Any) -> Files:
    for figure in sorted(FIGURES.glob("*.png")):
        uri = f"results/{figure.name}"
        if files.get_file_from_path(uri) is None:
            files.append(File.generated(config, uri, abs_src_path=str(figure)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    if OPTIONS_MARKER in markdown:
        markdown = markdown.replace(OPTIONS_MARKER, options_markdown())
    if BACKENDS_MARKER in markdown:
        markdown = markdown.replace(BACKENDS_MARKER, backends_markdown())
    return markdown
