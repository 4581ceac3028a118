"""What expressions can read: every report's attributes, their JSON form, and PeekabooAV's start-up dummies.

PeekabooAV checks an expression at start-up by evaluating it once on a sample of five bytes without a
name and on empty reports; an expression that raises there (unknown attribute, a type error...) stops
its start-up. mailowl repeats that trial with the same values (here for the sample and the known
report, in each analyser's row of ``analysis/table.py`` for the others), so it refuses exactly those
expressions too. Reports PeekabooAV does not have get the values an empty report of mailowl's has.

The JSON form (``mailowl expr eval --facts``, ``mailowl expr facts``) is the attribute's value, except
that sets are lists and results are their names.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from functools import cache
from typing import Any

from mailowl.analysis.table import ANALYSERS
from mailowl.expr.values import Result

SET, RESULT, PLAIN = "set", "result", "plain"
_DUMMY = b"dummy"

#: identifier -> attribute -> (kind, value on PeekabooAV's start-up check); the sample and the known report
#: are here, every analyser's report comes from its row in mailowl/analysis/table.py
REPORTS: dict[str, dict[str, tuple[str, Any]]] = {
    "sample": {
        "filename": (PLAIN, None), "name_declared": (PLAIN, None), "type_declared": (PLAIN, None),
        "content_disposition": (PLAIN, None), "file_extension": (PLAIN, None), "file_size": (PLAIN, len(_DUMMY)),
        "sha256sum": (PLAIN, hashlib.sha256(_DUMMY).hexdigest()), "sha1sum": (PLAIN, hashlib.sha1(_DUMMY).hexdigest()),
        "md5sum": (PLAIN, hashlib.md5(_DUMMY).hexdigest()),
        "identity": (PLAIN, hashlib.sha256(hashlib.sha256(_DUMMY).hexdigest().encode()).hexdigest()),
    },
    "knownreport": {
        "known": (PLAIN, False), "last_result": (RESULT, Result.unknown), "result": (RESULT, Result.unknown),
        "worst_result": (RESULT, Result.unchecked), "first": (PLAIN, 0), "last": (PLAIN, 0),
    },
    **{name: {attr: (spec.kind, spec.empty) for attr, spec in analyser.fields.items()}
       for name, analyser in ANALYSERS.items()},
}

#: identifier -> the attributes an expression may read
SCHEMA: dict[str, frozenset[str]] = {name: frozenset(attrs) for name, attrs in REPORTS.items()}

#: attributes of PeekabooAV's objects that are its internals, not facts about the sample
PEEKABOO_INTERNALS: dict[str, frozenset[str]] = {
    "sample": frozenset({"content", "result", "reason", "peekaboo_report", "id", "state", "update_id", "mark_done",
                         "add_rule_result", "dump_processing_info", "cuckoo_failed", "cuckoo_report", "cortex_failed",
                         "cortex_report", "oletools_report", "filetools_report", "knowntools_report",
                         "mark_cuckoo_failure", "register_cuckoo_report", "mark_cortex_failure",
                         "register_cortex_report", "register_oletools_report", "register_filetools_report",
                         "register_knowntools_report"}),
    "filereport": frozenset({"report"}),
    "olereport": frozenset({"report", "has_office_macros_with_suspicious_keyword"}),
    "knownreport": frozenset({"sample_journal", "worst"}),
}


class Facts:
    """A report (or the sample) whose attributes are given values. Lists and sets are handed out as
    copies, so an expression never changes them for the next one."""

    __slots__ = ("_name", "_values")

    def __init__(self, name: str, values: Mapping[str, Any]) -> None:
        self._name = name
        self._values = dict(values)

    def __getattr__(self, attr: str) -> Any:
        try:
            value = self._values[attr]
        except KeyError:
            raise MissingFact(f"no fact {self._name}.{attr} given") from None
        return type(value)(value) if isinstance(value, (list, set)) else value

    def __repr__(self) -> str:
        return f"<{self._name}>"


class MissingFact(AttributeError):
    pass


class AnalyzerFacts(str):
    """One Cortex analyzer's report given as facts (``{"cortexreport": {"FileInfoReport": {"level": ...}}}``).
    A str, as the real report is, because expressions read attributes of plain values only."""

    _values: dict[str, Any]

    def __new__(cls, name: str, values: Mapping[str, Any]) -> AnalyzerFacts:
        self = super().__new__(cls, name)
        self._values = dict(values)
        return self

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        try:
            value = self._values[attr]
        except KeyError:
            raise MissingFact(f"no fact cortexreport.{self}.{attr} given") from None
        return type(value)(value) if isinstance(value, (list, dict)) else value  # as the real report: fresh


@cache
def trial_reports() -> dict[str, Facts]:
    """PeekabooAV's start-up dummies, one object per report (shared: Facts hands out copies)."""
    return {name: Facts(name, {attr: value for attr, (_, value) in attrs.items()}) for name, attrs in REPORTS.items()}


def from_json(facts: Mapping[str, Any]) -> dict[str, Facts]:
    """FACTS.json (``{"sample": {...}, "filereport": {...}}``) as report objects; unknown reports and
    attributes are kept, so an expression reading them gets PeekabooAV's outcome for a missing one."""
    out: dict[str, Facts] = {}
    for name, values in facts.items():
        if not isinstance(values, Mapping):
            raise ValueError(f"facts of {name!r} must be an object of attribute values")
        kinds = REPORTS.get(name, {})
        converted: dict[str, Any] = {}
        if name == "cortexreport":  # one object of attributes per analyzer
            for analyzer, report in values.items():
                if not isinstance(report, Mapping):
                    raise ValueError(f"facts of cortexreport.{analyzer} must be an object of attribute values")
                converted[analyzer] = AnalyzerFacts(analyzer, report)
            out[name] = Facts(name, converted)
            continue
        for attr, value in values.items():
            kind = kinds.get(attr, (PLAIN, None))[0]
            if kind == SET and isinstance(value, list):
                value = set(value)
            elif kind == RESULT and isinstance(value, str):
                try:
                    value = Result[value]
                except KeyError:
                    raise ValueError(f"{name}.{attr}: {value!r} is not a result name") from None
            converted[attr] = value
        out[name] = Facts(name, converted)
    return out


def to_json(value: Any) -> Any:
    """An attribute's value in its JSON form."""
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=lambda v: (type(v).__name__, str(v)))
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, enum.Enum):  # results, mailowl's or the expressions'
        return value.name
    return value
