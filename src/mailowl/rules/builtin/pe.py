from mailowl.results import Result, RuleResult
from mailowl.rules import Option, Rule, rule
from mailowl.rules.context import AnalysisContext


@rule
class Pe(Rule):
    """Reads PE facts for expressions (``pereport.*``); optionally judges packed or unsigned executables."""

    name = "pe"
    options = {"packed_result": Option("str", "continue"), "unsigned_result": Option("str", "continue")}

    def setup(self) -> None:
        for key in ("packed_result", "unsigned_result"):
            value = self.config[key]
            if value != "continue":
                self.config[key] = _result(key, value)

    def evaluate(self, ctx: AnalysisContext) -> RuleResult:
        report = ctx.report("pereport")
        if not report.is_pe:
            return self.result(Result.unknown, "Not a PE executable", True)
        facts = (f"PE {'DLL' if report.is_dll else 'executable'}, {len(report.sections)} sections, "
                 f"{len(report.imports)} imports, {'signed' if report.has_signature else 'unsigned'}")
        if report.packed and self.config["packed_result"] != "continue":
            hints = ", ".join(report.packer_hints)
            return self.result(self.config["packed_result"], f"{facts}; packer hints: {hints}", False)
        if not report.has_signature and self.config["unsigned_result"] != "continue":
            return self.result(self.config["unsigned_result"], f"{facts}", False)
        return self.result(Result.unknown, facts, True)


def _result(key: str, value: str) -> Result:
    from mailowl.rules import Option, coerce_option

    result: Result = coerce_option("pe", key, Option("result"), value)
    return result
