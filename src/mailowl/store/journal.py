"""What the store remembers about earlier analyses of the same sample identity."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from mailowl.results import Result


@dataclass(frozen=True, slots=True)
class JournalEntry:
    analysis_time: datetime
    result: Result
    reason: str


def append_compact(journal: list[JournalEntry], entry: JournalEntry) -> None:
    """Append, keeping only the first and the last entry of a run of equal verdicts: a sample seen a
    million times with the same verdict costs two entries, and every answer stays the same."""
    if (len(journal) >= 2 and journal[-1].result == entry.result == journal[-2].result
            and journal[-1].reason == entry.reason == journal[-2].reason):
        journal[-1] = entry
    else:
        journal.append(entry)


@dataclass(slots=True)
class KnownReport:
    """Earlier finished, non-failed verdicts, oldest first, already limited to the configured max age."""

    FIELDS = frozenset({"known", "last_result", "result", "worst_result", "first", "last"})

    journal: list[JournalEntry] = field(default_factory=list)

    @property
    def known(self) -> bool:
        return bool(self.journal)

    @property
    def last_result(self) -> Result:
        return self.journal[-1].result if self.journal else Result.unknown

    @property
    def result(self) -> Result:
        return self.last_result

    def worst(self) -> tuple[Result, str]:
        worst, reason = Result.unchecked, ""
        for entry in self.journal:
            if entry.result > worst:
                worst, reason = entry.result, entry.reason
        return worst, reason

    @property
    def worst_result(self) -> Result:
        return self.worst()[0]

    def _days_since(self, entry: JournalEntry) -> int:
        return (datetime.now(UTC) - entry.analysis_time).days

    @property
    def first(self) -> int:
        return self._days_since(self.journal[0]) if self.journal else 0

    @property
    def last(self) -> int:
        return self._days_since(self.journal[-1]) if self.journal else 0
