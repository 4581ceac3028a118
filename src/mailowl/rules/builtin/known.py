from mailowl.results import Result, RuleResult
from mailowl.rules import Rule, rule
from mailowl.rules.context import AnalysisContext


@rule
class Known(Rule):
    """An identity with an earlier (non-failed, not too old) verdict gets the worst of those verdicts."""

    name = "known"

    def evaluate(self, ctx: AnalysisContext) -> RuleResult:
        report = ctx.report("knownreport")
        if report.known:
            result, reason = report.worst()
            return self.result(result, reason, False)
        return self.result(Result.unknown, "File is not yet known to the system", True)
