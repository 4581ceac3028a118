from mailowl.analysis.archive import ArchiveLimits
from mailowl.results import Result, RuleResult
from mailowl.rules import Option, Rule, rule
from mailowl.rules.context import AnalysisContext

_D = ArchiveLimits()


@rule
class Archive(Rule):
    """Members of an archive are analysed as samples of their own through the same ruleset; the worst
    member verdict of ``failed`` or ``bad`` decides. The limits are one budget for the top-level sample
    and everything nested in it, so they stop decompression bombs at any depth."""

    name = "archive"
    options = {
        "max_depth": Option("int", _D.max_depth),
        "max_members": Option("int", _D.max_members),
        "max_total_size": Option("int", _D.max_total_size),
        "max_ratio": Option("int", int(_D.max_ratio)),
        "limit_result": Option("result", Result.bad),
        "encrypted_result": Option("result", Result.bad),
        "damaged_result": Option("result", Result.failed),
    }

    def setup(self) -> None:
        c = self.config
        self.resources.archive_limits = ArchiveLimits(
            max_depth=c["max_depth"], max_members=c["max_members"], max_total_size=c["max_total_size"],
            max_ratio=float(c["max_ratio"]))

    def evaluate(self, ctx: AnalysisContext) -> RuleResult:
        report = ctx.report("archivereport")
        if not report.is_archive:
            return self.result(Result.unknown, "Not an archive", True)
        if report.limit_hit:
            return self.result(self.config["limit_result"], f"Archive exceeds a limit: {report.limit_hit}", False)
        if report.encrypted:
            return self.result(self.config["encrypted_result"], f"Encrypted {report.format} archive", False)
        if report.error:
            return self.result(self.config["damaged_result"], report.error, False)
        worst, worst_reason = Result.unchecked, ""
        for member in report.contents:
            verdict = ctx.engine.run(member, ctx.journal, ctx.budget)
            if verdict.result > worst:
                worst, worst_reason = verdict.result, f"member {member.filename!r}: {verdict.reason}"
        if worst >= Result.failed:
            return self.result(worst, f"{report.format} archive {worst_reason}", False)
        return self.result(Result.unknown, f"{report.format} archive with {report.member_count} member(s), "
                           f"worst member verdict: {worst.name}", True)
