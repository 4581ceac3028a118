"""Loaded by every Python process started with this folder on PYTHONPATH (a `mailowl serve` under test and
its workers): registers a rule that holds samples named *slow* until the test creates a release file, so
an analysis is reliably slower than mail.wait without depending on the machine's speed."""

from __future__ import annotations

import os
import time
from pathlib import Path

from mailowl.results import Result, RuleResult
from mailowl.rules import Rule, rule
from mailowl.rules.context import AnalysisContext


@rule
class HoldUntilReleased(Rule):
    name = "hold_until_released"

    def evaluate(self, ctx: AnalysisContext) -> RuleResult:
        filename = ctx.sample.filename or ""
        if "slow" in filename:
            release = Path(os.environ["SLOWRULE_RELEASE"])
            with release.with_suffix(".seen").open("a") as seen:  # one line per analysis
                seen.write(filename + "\n")
            deadline = time.monotonic() + 120
            while not release.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        return self.result(Result.unchecked, "", True)
