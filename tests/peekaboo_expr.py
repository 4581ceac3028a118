"""Evaluates rule expressions with PeekabooAV 2.1's own expressions rule; run by .venv-peekaboo/bin/python.

It is the reference side of the differential expression test and imports nothing from mailowl (that lives
in another virtual environment). Standard input: one JSON object per line, ``{"expression": "...",
"facts": {"sample": {...}, "filereport": {...}, ...}}``; standard output: one line per case, in order,
``{"outcome": "load" | "result" | "failed", "result": "<name>" | null, "error": "..." | null}``.

``load``: PeekabooAV would not start with this expression (its expressions rule raised while checking
it). ``result``: the rule's outcome; ``result`` null when no expression classified the sample.
``failed``: evaluating raised, which PeekabooAV's engine turns into ``failed`` ("Rule aborted with error").
The rule object is PeekabooAV's real ``ExpressionRule``: its start-up check (parse, implication, trial
run on its dummy reports) and its ``evaluate`` run unchanged; only the sample and reports are stand-ins
that carry the given facts.
"""

from __future__ import annotations

import builtins
import json
import logging
import sys
from typing import Any

from peekaboo.ruleset import Result
from peekaboo.ruleset import rules as pk_rules
from peekaboo.ruleset.expressions import ExpressionParser

# attributes whose JSON form is not the Python value PeekabooAV's reports return
SETS = {("filereport", "mime_types")}
RESULTS = {("knownreport", "last_result"), ("knownreport", "result"), ("knownreport", "worst_result")}
REPORT_SLOTS = {"filereport": "filetools_report", "olereport": "oletools_report", "knownreport": "knowntools_report"}


class FakeConfig:
    """Just enough of PeekabooConfigParser for ExpressionRule.get_config."""

    LOG_LEVEL = "log_level"

    def __init__(self, expression: str) -> None:
        self.expression = expression

    def get_by_type(self, section: str, option: str, fallback: Any = None, option_type: Any = None) -> Any:
        return [self.expression] if option == "expression" else fallback

    def check_section_options(self, section: str, options: Any) -> None:
        pass


class Facts:
    """A report (or the sample) whose attributes are the given facts. Lists and sets come back as fresh
    copies on every read, as PeekabooAV's report properties build them anew."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__["_values"] = values

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__["_values"]
        if name not in values:
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")
        value = values[name]
        return type(value)(value) if isinstance(value, (list, set)) else value


def convert(report: str, values: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, value in values.items():
        if (report, name) in SETS and isinstance(value, list):
            value = set(value)
        elif (report, name) in RESULTS and isinstance(value, str):
            value = Result[value]
        out[name] = value
    return out


def make_sample(facts: dict[str, Any]) -> Facts:
    sample = dict(convert("sample", facts.get("sample", {})))
    sample.update(cuckoo_failed=False, cortex_failed=False, cuckoo_report=None, cortex_report=None)
    for report, slot in REPORT_SLOTS.items():
        sample[slot] = Facts(convert(report, facts[report])) if report in facts else None
    return Facts(sample)


def main() -> None:
    logging.disable(logging.CRITICAL)
    builtins._ = str  # type: ignore[attr-defined]  # PeekabooAV's daemon installs gettext's _ at start-up
    # one parser for the whole batch: building PeekabooAV's grammar costs more than parsing with it
    from pyparsing import ParserElement
    ParserElement.enable_packrat(None)
    shared = ExpressionParser()
    pk_rules.ExpressionParser = lambda: shared  # type: ignore[assignment]
    loaded: dict[str, Any] = {}
    out = sys.stdout
    for line in sys.stdin:
        if not line.strip():
            continue
        case = json.loads(line)
        text = case["expression"]
        answer: dict[str, Any] = {"outcome": "result", "result": None, "error": None}
        rule = loaded.get(text)
        if rule is None:
            try:
                rule = pk_rules.ExpressionRule(FakeConfig(text), None)
            except BaseException as exc:  # noqa: BLE001 (anything stops PeekabooAV's start-up)
                rule = exc
            loaded[text] = rule
        if isinstance(rule, BaseException):
            answer.update(outcome="load", error=f"{type(rule).__name__}: {rule}")
        else:
            try:
                verdict = rule.evaluate(make_sample(case.get("facts", {})))
            except Exception as exc:  # noqa: BLE001 (the engine's "Rule aborted with error")
                answer.update(outcome="failed", result="failed", error=f"{type(exc).__name__}: {exc}")
            else:
                if not verdict.further_analysis:  # an expression decided
                    answer["result"] = verdict.result.name
                    if verdict.result is Result.failed and "classified" not in verdict.reason:
                        answer["error"] = verdict.reason
        out.write(json.dumps(answer) + "\n")
    out.flush()


if __name__ == "__main__":
    main()
