"""Analysers: each turns a sample into one report, computed lazily and at most once per sample.

Reports expose a fixed set of attribute names (``FIELDS``); the expression language can read those and
nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class Report(Protocol):
    FIELDS: frozenset[str]


#: report name (as used in expressions) -> analyser; registered by the analyser modules
ANALYZERS: dict[str, Callable[..., Any]] = {}


def analyzer(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        ANALYZERS[name] = func
        return func

    return register
