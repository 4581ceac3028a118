from mailowl.results import Result, RuleResult
from mailowl.rules import Option, Rule, rule
from mailowl.rules.context import AnalysisContext


@rule
class FileLargerThan(Rule):
    """Files up to ``bytes`` long are too small to do harm."""

    name = "file_larger_than"
    options = {"bytes": Option("int", 5)}

    def evaluate(self, ctx: AnalysisContext) -> RuleResult:
        limit, size = self.config["bytes"], ctx.sample.size
        if size > limit:
            return self.result(Result.unknown, f"File has more than {limit} bytes", True)
        return self.result(Result.ignored, f"File is only {size} bytes long", False)
