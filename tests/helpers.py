"""Shared test helpers."""

from __future__ import annotations

from typing import Any

from mailowl.analysis.known import KnownReport
from mailowl.analysis.sample import Sample
from mailowl.rules.engine import Engine, Verdict
from mailowl.rules.loader import build_engine


def engine(rules: list[str], **sections: dict[str, Any]) -> Engine:
    return build_engine({"rules": rules, **sections}, "test ruleset")


def run(eng: Engine, content: bytes, filename: str | None = None, type_declared: str | None = None,
        disposition: str | None = None, journal: KnownReport | None = None) -> Verdict:
    sample = Sample(content, filename=filename, type_declared=type_declared, content_disposition=disposition)
    return eng.run(sample, (lambda identity: journal) if journal is not None else (lambda identity: KnownReport()))
