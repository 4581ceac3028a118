from mailowl.results import Result, RuleResult
from mailowl.rules import Rule, rule
from mailowl.rules.context import AnalysisContext


@rule
class FinalRule(Rule):
    name = "final_rule"

    def evaluate(self, ctx: AnalysisContext) -> RuleResult:
        return self.result(Result.unknown, "File does not seem to exhibit recognizable malicious behaviour", True)
