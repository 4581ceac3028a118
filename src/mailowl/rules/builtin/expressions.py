from mailowl.analysis.archive import ArchiveReport
from mailowl.analysis.filetype import FileReport
from mailowl.analysis.known import KnownReport
from mailowl.analysis.ole import OleReport
from mailowl.analysis.pe import PeReport
from mailowl.analysis.yara import YaraReport
from mailowl.expr import ExpressionError, compile_expression
from mailowl.results import Result, RuleResult
from mailowl.rules import Option, Rule, RulesetError, rule
from mailowl.rules.context import AnalysisContext, SampleView

#: identifier -> attributes an expression may read
SCHEMA: dict[str, frozenset[str] | None] = {
    "sample": SampleView.FIELDS,
    "filereport": FileReport.FIELDS,
    "olereport": OleReport.FIELDS,
    "knownreport": KnownReport.FIELDS,
    "pereport": PeReport.FIELDS,
    "yarareport": YaraReport.FIELDS,
    "archivereport": ArchiveReport.FIELDS,
}
_UNSUPPORTED = {
    "cuckooreport": "Cuckoo is not supported by mailowl; use yara, pe or archive reports instead",
    "cortexreport": "the Cortex backend is not configured in this build of mailowl",
}


class ExpressionFailed(RuntimeError):
    pass


@rule
class Expressions(Rule):
    """The first expression whose condition holds decides; none holding lets analysis continue."""

    name = "expressions"
    options = {"expression": Option("list", required=True), "log_level": Option("str", "WARNING")}

    def setup(self) -> None:
        self.expressions = []
        for index, text in enumerate(self.config["expression"]):
            try:
                expression = compile_expression(text, SCHEMA | {k: None for k in _UNSUPPORTED})
            except ExpressionError as exc:
                raise RulesetError(f"[expressions] expression ({index}) {text!r}: {exc}") from None
            for identifier in expression.identifiers & set(_UNSUPPORTED):
                raise RulesetError(f"[expressions] expression ({index}) {text!r}: '{identifier}': "
                                   f"{_UNSUPPORTED[identifier]}")
            self.expressions.append(expression)

    def evaluate(self, ctx: AnalysisContext) -> RuleResult:
        for index, expression in enumerate(self.expressions):
            try:
                result = expression.evaluate(ctx.report)
            except Exception as exc:
                raise ExpressionFailed(f"expression ({index}) {expression.text!r}: {exc}") from exc
            if result is not None:
                return self.result(result, f"The expression ({index}) classified the sample as {result}", False)
        return self.result(Result.unknown, "No expression classified the sample in any way.", True)
