"""Griffe extension of the API reference: the package's docstrings cross-reference with Sphinx
roles (:func:`fit`, :class:`~bayes_simfluence.runs.Runs`), which Markdown would show
literally; they are rendered as inline code (the last part of the name where ``~`` asks for it).
Registered in ``mkdocs.yml`` under the python handler's ``extensions``."""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|obj|exc|const):`(~?)([^`]+)`")


def _code(match: re.Match[str]) -> str:
    short, name = match.group(1), match.group(2)
    return f"`{name.rsplit('.', 1)[-1] if short else name}`"


def convert(text: str) -> str:
    return ROLE.sub(_code, text)


class SphinxRoles(griffe.Extension):
    def _walk(self, obj: Any, seen: set[int]) -> None:
        if id(obj) in seen or obj.is_alias:
            return
        seen.add(id(obj))
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value)
        for member in obj.members.values():
            self._walk(member, seen)

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._walk(pkg, set())
