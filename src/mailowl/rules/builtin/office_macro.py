from mailowl.results import Result, RuleResult
from mailowl.rules import Option, Rule, rule
from mailowl.rules.context import AnalysisContext


@rule
class OfficeMacro(Rule):
    """Any VBA or XLM macro is bad."""

    name = "office_macro"

    def evaluate(self, ctx: AnalysisContext) -> RuleResult:
        if ctx.report("olereport").has_office_macros:
            return self.result(Result.bad, "The file contains an Office macro", False)
        return self.result(Result.unknown, "The file does not contain a recognizable Office macro", True)


@rule
class OfficeMacroWithSuspiciousKeyword(Rule):
    """A macro whose source matches one of the case-insensitive ``keyword`` regexes is bad."""

    name = "office_macro_with_suspicious_keyword"
    options = {"keyword": Option("irelist", required=True)}

    def evaluate(self, ctx: AnalysisContext) -> RuleResult:
        report = ctx.report("olereport")
        # Unlike PeekabooAV, only real macros are searched: olevba also "reveals" plain text files,
        # and a .txt that mentions AutoOpen is not an Office macro.
        if not report.has_office_macros:
            return self.result(Result.unknown, "The file does not contain a recognizable Office macro", True)
        for pattern in self.config["keyword"]:
            if report.vba_found and pattern.search(report.vba_code):
                return self.result(Result.bad, f"The file contains an Office macro with the suspicious "
                                   f"keyword /{pattern.pattern}/", False)
        return self.result(Result.unknown, "The file does not contain a recognizable Office macro with a "
                           "suspicious keyword", True)
