"""A job: one sample's analysis as the API reports it."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from mailowl.results import Result, RuleResult

if TYPE_CHECKING:
    from mailowl.store.work import Claim

PENDING, DONE = "pending", "done"


@dataclass(eq=False, slots=True)
class Job:
    id: int
    facts: dict[str, Any]
    created_at: datetime
    state: str = PENDING
    result: Result | None = None
    reason: str | None = None
    rules: list[RuleResult] = field(default_factory=list)
    finished_at: datetime | None = None
    #: who asked: "rest" jobs get a verdict log line of their own, "mail" parts are in their message's line
    origin: str = "rest"
    #: JSON of the reports the rules read (the ``facts`` column; ``mailowl expr facts`` shows them)
    rule_facts: str | None = None
    #: cluster mode: the work row its insert also writes (store/work.py)
    claim: Claim | None = field(default=None, repr=False)
    #: read back from its row, not one this process tracks
    from_row: bool = False
    _done: asyncio.Event | None = field(default=None, repr=False)
    #: the group commit that carries this job's row; None once it is committed (or for unstored jobs)
    _commit: asyncio.Future[None] | None = field(default=None, repr=False)

    @property
    def identity(self) -> str:
        return str(self.facts["identity"])

    @property
    def answered_by_cache(self) -> bool:
        """Decided by the verdict cache at the first rule. A job read back from its row has lost
        ``further_analysis``: there, `known` with another result than unknown (it gives unknown, and goes
        on, for a sample it does not know) says so."""
        first = self.rules[0] if self.rules else None
        return (first is not None and first.rule == "known"
                and (not first.further_analysis or first.result != Result.unknown))

    @property
    def finished(self) -> bool:
        return self.state == DONE

    def finish(self, result: Result, reason: str, rules: list[RuleResult], when: datetime) -> None:
        self.state, self.result, self.reason, self.rules, self.finished_at = DONE, result, reason, rules, when
        if self._done is not None:
            self._done.set()
            self._done = None  # nobody can wait for a finished job: don't keep the event alive

    async def wait(self, timeout: float) -> None:
        if self.finished or timeout <= 0:
            return
        if self._done is None:
            self._done = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._done.wait()

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.id,
            "state": self.state,
            "result": self.result.name if self.result is not None else None,
            "reason": self.reason,
            "rules": [r.as_dict() for r in self.rules],
            "sample": self.facts,
            "created_at": self.created_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
        }
