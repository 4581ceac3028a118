from mailowl.results import Result, RuleResult
from mailowl.rules import Option, Rule, RulesetError, rule
from mailowl.rules.context import AnalysisContext


@rule
class Clamav(Rule):
    """A detection by clamd is bad, with the signature in the reason; no detection lets analysis go on.
    clamd unreachable, too slow or answering an error raises, so the verdict is failed, never clean."""

    name = "clamav"
    options = {"result": Option("result", Result.bad)}

    def setup(self) -> None:
        if self.resources.clamd is None:
            raise RulesetError("[clamav]: the rule needs clamd: set [clamav] socket in mailowl.toml or in the "
                               "analyzers file (a unix socket path or HOST:PORT)")

    def evaluate(self, ctx: AnalysisContext) -> RuleResult:
        report = ctx.report("clamavreport")
        if report.infected:
            return self.result(self.config["result"], f"ClamAV found {', '.join(report.signatures)}", False)
        return self.result(Result.unknown, "ClamAV found nothing", True)
