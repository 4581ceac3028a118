"""The attribute list in docs/rules.md is the expression schema, which comes from the analyser table."""

from __future__ import annotations

import re
from pathlib import Path

from mailowl.analysis.table import ANALYSERS
from mailowl.expr.schema import SCHEMA

RULES_MD = Path(__file__).parent.parent / "docs" / "rules.md"


def test_the_documented_attributes_are_the_schema() -> None:
    text = RULES_MD.read_text()
    start = text.index("- Attributes:")
    listed: dict[str, frozenset[str]] = {}
    for name, attrs in re.findall(r"`(\w+)\.\{([^}]*)\}`", text[start:text.index("\n- ", start + 1)]):
        listed.setdefault(name, frozenset(a.strip() for a in attrs.split(",")))  # the first mention lists them
    assert set(ANALYSERS) <= set(SCHEMA)
    for report, fields in SCHEMA.items():
        if report == "cortexreport":  # nested by analyzer name; documented in docs/backends.md
            continue
        assert listed.get(report) == fields, f"docs/rules.md lists {report} as {listed.get(report)}, the schema has {fields}"
