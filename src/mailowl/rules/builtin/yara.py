from pathlib import Path

from mailowl.analysis.yara import YaraRulesError, compile_directory
from mailowl.results import Result, RuleResult
from mailowl.rules import Option, Rule, RulesetError, rule
from mailowl.rules.context import AnalysisContext


@rule
class Yara(Rule):
    """A match of any rule compiled from ``directory`` is bad; the reason names the matching rules."""

    name = "yara"
    options = {"directory": Option("str", None), "result": Option("result", Result.bad)}

    def setup(self) -> None:
        directory = self.config["directory"]
        if self.resources.yara_rules is None:
            if not directory:
                raise RulesetError("[yara] directory: required, the folder with *.yar rule files")
            path = Path(directory)
            if not path.is_dir():
                raise RulesetError(f"[yara] directory: {directory} is not a directory")
            try:
                self.resources.yara_rules = compile_directory(path)
            except YaraRulesError as exc:
                raise RulesetError(f"[yara] directory: {exc}") from None

    def evaluate(self, ctx: AnalysisContext) -> RuleResult:
        report = ctx.report("yarareport")
        if report.matched:
            return self.result(self.config["result"], f"YARA rules matched: {', '.join(report.rules)}", False)
        return self.result(Result.unknown, "No YARA rule matched", True)
