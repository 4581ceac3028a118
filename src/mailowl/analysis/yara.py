"""YARA matching with rules compiled once at start-up."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yara

from mailowl.analysis.sample import Sample

_SUFFIXES = {".yar", ".yara"}


class YaraRulesError(ValueError):
    pass


def compile_directory(directory: Path) -> yara.Rules:
    files = sorted(p for p in directory.rglob("*") if p.suffix in _SUFFIXES and p.is_file())
    if not files:
        raise YaraRulesError(f"{directory}: no *.yar or *.yara files")
    try:
        return yara.compile(filepaths={str(i): str(p) for i, p in enumerate(files)})
    except yara.SyntaxError as exc:
        raise YaraRulesError(f"{directory}: {exc}") from exc


@dataclass(slots=True)
class YaraReport:
    FIELDS = frozenset({"matched", "rules", "tags"})

    rules: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)

    @property
    def matched(self) -> bool:
        return bool(self.rules)


def yara_report(sample: Sample, rules: yara.Rules | None, timeout: int = 30) -> YaraReport:
    report = YaraReport()
    if rules is None:
        return report
    for match in rules.match(data=bytes(sample.content), timeout=timeout):
        report.rules.append(match.rule)
        report.tags.extend(t for t in match.tags if t not in report.tags)
    return report
