"""What the analysis is doing right now, so a timeout can name the analyser that hung.

A worker process points ``set_sink`` at memory its parent can read; the parent reads it after the
deadline passed, when the worker may be stuck inside a C library and cannot answer.
"""

from __future__ import annotations

from collections.abc import Callable

_sink: Callable[[str], None] | None = None


def set_sink(sink: Callable[[str], None] | None) -> None:
    global _sink
    _sink = sink


def doing(what: str) -> None:
    if _sink is not None:
        _sink(what)
