"""Analysis results, ordered from best to worst as PeekabooAV orders them."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Result(enum.IntEnum):
    unchecked = 0
    unknown = 1
    ignored = 2
    good = 3
    failed = 4
    bad = 5

    def __str__(self) -> str:
        # PeekabooAV's expression reasons print results this way; keep it for compatibility.
        return f"Result.{self.name}"


@dataclass(frozen=True, slots=True)
class RuleResult:
    rule: str
    result: Result
    reason: str
    further_analysis: bool

    def as_dict(self) -> dict[str, str]:
        return {"rule": self.rule, "result": self.result.name, "reason": self.reason}
