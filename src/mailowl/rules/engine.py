"""Runs a ruleset over a sample and combines the rules' results the way PeekabooAV does."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from mailowl.analysis import activity
from mailowl.analysis.archive import Budget
from mailowl.analysis.contract import Resources
from mailowl.analysis.cortex import NeedsRemote
from mailowl.analysis.sample import Sample
from mailowl.results import Result, RuleResult
from mailowl.rules import Rule
from mailowl.rules.context import AnalysisContext, JournalLookup, Timing
from mailowl.store.journal import KnownReport

log = logging.getLogger(__name__)


Wire = tuple[int, str, list[tuple[str, int, str, bool]], str | None, list[Timing]]
#: the analyser timings of the top-level analysis running in this thread, which its archive members share
_running = threading.local()


@dataclass
class Verdict:
    result: Result
    reason: str
    rules: list[RuleResult]
    #: JSON of the reports the rules read (AnalysisContext.seen), kept with the job; None for none
    facts: str | None = None
    #: every analyser run, archive members' included, for the metrics (recorded by the parent process)
    timings: list[Timing] = field(default_factory=list)

    def to_wire(self) -> Wire:
        """Plain tuples for the pipe from a worker process: unpickling dataclasses and enums costs the
        parent several times more."""
        return (int(self.result), self.reason,
                [(r.rule, int(r.result), r.reason, r.further_analysis) for r in self.rules], self.facts, self.timings)

    @classmethod
    def from_wire(cls, wire: Wire) -> Verdict:
        result, reason, rules, facts, timings = wire
        return cls(Result(result), reason, [RuleResult(n, Result(r), why, go) for n, r, why, go in rules],
                   facts, timings)


def _no_journal(identity: str) -> KnownReport:
    return KnownReport()


class Engine:
    def __init__(self, rules: list[Rule], resources: Resources) -> None:
        self.rules = rules
        self.resources = resources
        #: set by the analysis service, which parks a sample needing a remote report (NeedsRemote); where
        #: nobody would (``mailowl scan``), such a rule fails instead
        self.parks = False

    @property
    def decided_by_known(self) -> bool:
        """True when a known sample is decided by the first rule alone."""
        return bool(self.rules) and self.rules[0].name == "known"

    @property
    def rule_names(self) -> list[str]:
        return [r.name for r in self.rules]

    def run(self, sample: Sample, journal: JournalLookup = _no_journal, budget: Budget | None = None) -> Verdict:
        """Evaluate rules in order. The verdict is the worst result seen, with the reason of the last
        rule that reached it; a rule that raises makes the verdict ``failed`` and ends the run, except
        NeedsRemote (a remote report is needed: the sample is parked), which is raised to the caller.
        ``budget`` is the archive budget of the top-level sample when ``sample`` is an archive member."""
        member = budget is not None
        if budget is None:
            budget = Budget(self.resources.archive_limits, sample.size)
        outer: list[Timing] | None = getattr(_running, "timings", None)
        timings = outer if member and outer is not None else []
        _running.timings = timings
        try:
            ctx = AnalysisContext(sample, self, journal, budget, timings)
            result, reason, done = self._rules(ctx, sample, member)
        finally:
            _running.timings = outer
        if member:  # a member's facts and timings belong to the top-level sample's analysis
            return Verdict(result, reason, done)
        if len(done) == 1 and done[0].rule == "known" and not done[0].further_analysis:
            # answered by the verdict cache: expr/facts.py rebuilds the known report, the only one read
            return Verdict(result, reason, done, None, timings)
        try:
            facts = ctx.seen()
        except Exception:  # recording the facts must never cost the verdict
            log.warning("facts of %s could not be recorded", sample.sha256, exc_info=True)
            facts = None
        return Verdict(result, reason, done, facts, timings)

    def _rules(self, ctx: AnalysisContext, sample: Sample, member: bool) -> tuple[Result, str, list[RuleResult]]:
        result, reason = Result.unchecked, ""
        done: list[RuleResult] = []
        for rule in self.rules:
            ctx.rule = rule.name
            activity.doing(f"rule {rule.name}")
            try:
                outcome = rule.evaluate(ctx)
            except NeedsRemote as need:
                if self.parks and not member:
                    raise  # not a verdict: the caller parks the sample and runs the ruleset again later
                # archive members are not sent to Cortex (their report would be attached to the archive)
                why = "Cortex analyses top-level samples only" if member else "only mailowl serve waits for Cortex"
                outcome = RuleResult(rule.name, Result.failed, f"Rule '{rule.name}' needs Cortex "
                                     f"({need.analyzer}){' for an archive member' if member else ''}; {why}", False)
            except Exception as exc:
                log.warning("rule %s failed on %s", rule.name, sample.sha256, exc_info=True)
                outcome = RuleResult(rule.name, Result.failed,
                                     f"Rule '{rule.name}' aborted with error: {type(exc).__name__}: {exc}", False)
            done.append(outcome)
            if outcome.result >= result:
                result, reason = outcome.result, outcome.reason
            if not outcome.further_analysis:
                break
        return result, reason, done
