from mailowl.results import Result, RuleResult
from mailowl.rules import Option, Rule, rule
from mailowl.rules.context import AnalysisContext


def sample_types(ctx: AnalysisContext) -> set[str]:
    """Type by content and by name, plus the declared type; lower case, as MIME types compare."""
    types = {t.lower() for t in ctx.report("filereport").mime_types}
    if ctx.sample.type_declared is not None:
        types.add(ctx.sample.type_declared.lower())
    return types


@rule
class FileTypeOnWhitelist(Rule):
    """Ignore a file when every type we know of it is whitelisted (and we know at least one)."""

    name = "file_type_on_whitelist"
    options = {"whitelist": Option("list", required=True)}

    def setup(self) -> None:
        self.allowed = {t.lower() for t in self.config["whitelist"]}

    def evaluate(self, ctx: AnalysisContext) -> RuleResult:
        types = sample_types(ctx)
        if types and types <= self.allowed:
            return self.result(Result.ignored, "File type is on whitelist", False)
        return self.result(Result.unknown, "File type is not on whitelist", True)


@rule
class FileTypeOnGreylist(Rule):
    """Analyse further only files with a greylisted type, or with no known type at all."""

    name = "file_type_on_greylist"
    options = {"greylist": Option("list", required=True)}

    def setup(self) -> None:
        self.listed = {t.lower() for t in self.config["greylist"]}

    def evaluate(self, ctx: AnalysisContext) -> RuleResult:
        types = sample_types(ctx)
        if not types or types & self.listed:
            return self.result(Result.unknown, "File type is on the list of types to analyze", True)
        shown = ", ".join(sorted(types))
        return self.result(Result.unknown, f"File type is not on the list of types to analyse ({shown})", False)
