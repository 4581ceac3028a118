import logging

from mailowl.analysis.cortex import NeedsRemote, TrialCortexReport
from mailowl.analysis.table import ANALYSERS
from mailowl.expr import DIALECTS, ExpressionError
from mailowl.expr.evaluate import UNSUPPORTED, Expression, compile_expression
from mailowl.expr.schema import SCHEMA, trial_reports
from mailowl.results import Result, RuleResult
from mailowl.rules import Option, Rule, RulesetError, rule
from mailowl.rules.context import AnalysisContext

log = logging.getLogger(__name__)


class ExpressionFailed(RuntimeError):
    pass


def load_expression(text: str, dialect: str) -> Expression:
    """``mailowl.expr.load`` that also accepts ``cortexreport.<AnalyzerName>Report.<attribute>`` (any
    analyzer, nested attributes); whether Cortex is configured is checked by the caller, from the table."""
    refused = {name: None for name in UNSUPPORTED if name != "cortexreport"}
    expression = compile_expression(text, {**SCHEMA, **refused, "cortexreport": None}, dialect,
                                    {**trial_reports(), "cortexreport": TrialCortexReport()})
    for identifier in sorted(expression.identifiers & refused.keys()):
        raise ExpressionError(f"'{identifier}': {UNSUPPORTED[identifier]}")
    return expression


@rule
class Expressions(Rule):
    """The first expression whose condition holds decides; none holding lets analysis continue."""

    name = "expressions"
    options = {"expression": Option("list", required=True), "log_level": Option("str", "WARNING"),
               "dialect": Option("str", "peekaboo")}

    def setup(self) -> None:
        dialect = self.config["dialect"]
        if dialect not in DIALECTS:
            raise RulesetError(f"[expressions] dialect: expected one of {', '.join(DIALECTS)}, got {dialect!r}")
        self.expressions = []
        for index, text in enumerate(self.config["expression"]):
            try:
                expression = load_expression(text, dialect)
            except ExpressionError as exc:
                raise RulesetError(f"[expressions] expression ({index}) {text!r}: {exc}") from None
            for identifier in sorted(expression.identifiers & ANALYSERS.keys()):
                missing = ANALYSERS[identifier].unavailable(self.resources)
                if missing is not None:
                    raise RulesetError(f"[expressions] expression ({index}) {text!r}: '{identifier}': {missing}")
            for warning in expression.warnings:
                log.warning("[expressions] expression (%d) %r: %s", index, text, warning)
            self.expressions.append(expression)

    def evaluate(self, ctx: AnalysisContext) -> RuleResult:
        for index, expression in enumerate(self.expressions):
            try:
                result = expression.evaluate(ctx.report)
            except NeedsRemote:
                raise  # the sample is parked until the report is there, then the ruleset runs again
            except Exception as exc:
                raise ExpressionFailed(f"expression ({index}) {expression.text!r}: {exc}") from exc
            if result is not None:
                return self.result(result, f"The expression ({index}) classified the sample as {result}", False)
        return self.result(Result.unknown, "No expression classified the sample in any way.", True)
