"""The verdict log's lines for what the store holds, in the format the log writes (logs/verdicts.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from mailowl.logs.verdicts import klms_job, klms_message
from mailowl.results import Result, RuleResult
from mailowl.store.browse import JobRow, MessageRow
from mailowl.store.jobs import Job


def as_job(row: JobRow) -> Job:
    facts = {"filename": row.filename, "size": row.size, "sha256": row.sha256, "identity": row.identity}
    return Job(id=row.id, facts=facts, created_at=row.created_at, state=row.state,
               result=_result(row.result), reason=row.reason,
               rules=[RuleResult(r.rule, Result[r.result], r.reason, True) for r in row.rules
                      if r.result in Result.__members__],
               finished_at=row.finished_at)


def job_line(row: JobRow) -> str:
    return klms_job(as_job(row))


def message_line(message: MessageRow, jobs: dict[int, JobRow]) -> str:
    """The message's line as it was logged: the parts' results at decision time, their jobs' rules."""
    part_jobs = []
    for part in message.parts:
        row = jobs.get(part.job_id or 0)
        result = _result(part.result)
        rules: list[RuleResult] = []
        if result is not None and row is not None:
            rules = as_job(row).rules
        elif result is not None:  # answered from the cache: the known rule decided
            rules = [RuleResult("known", result, part.reason or "", False)]
        part_jobs.append(Job(id=part.job_id or 0, facts={}, created_at=message.created_at,
                             state="done" if result is not None else "pending", result=result,
                             reason=part.reason, rules=rules))
    # klms_message reads these attributes of a decision and an envelope, nothing else
    decision = SimpleNamespace(action=message.action, support_id=message.support_id, jobs=part_jobs,
                               extraction=SimpleNamespace(parts=message.parts))
    envelope = SimpleNamespace(client_ip=message.client_ip, mail_from=message.mail_from or "",
                               rcpt_to=message.rcpt_to)
    return klms_message(cast(Any, decision), cast(Any, envelope), message.message_id, message.size or 0)


def _result(name: str | None) -> Result | None:
    return Result[name] if name is not None and name in Result.__members__ else None
