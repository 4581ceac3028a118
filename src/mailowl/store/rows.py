"""Jobs to table rows and back: what every backend's writer and reader share."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from mailowl.results import Result, RuleResult
from mailowl.store.database import StoreError
from mailowl.store.jobs import Job
from mailowl.store.models import jobs

FACT_COLUMNS = ("identity", "sha256", "sha1", "md5", "size", "filename", "type_declared",
                "content_disposition", "file_extension", "type_by_content", "type_by_name")
_FACT_LIMITS = [(k, getattr(jobs.c[k].type, "length", None) or 0) for k in FACT_COLUMNS]


def storable_text(value: str) -> str:
    """Text as every backend stores it: PostgreSQL refuses NUL in text, and a sender's NUL (an encoded-word
    in a Subject, an archive member's name in a rule's reason) would fail every group commit it is in,
    the other uploads' jobs with it, and a message record would be tried again for ever."""
    return value.replace("\x00", "") if "\x00" in value else value


def aware(value: datetime | None) -> datetime | None:
    """SQLite and MariaDB give back naive datetimes: every time the store holds is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def job_row(job: Job, run: str | None) -> dict[str, Any]:
    """The row's columns; ``run`` only on insert (an update never changes who created the job)."""
    facts = job.facts
    row = {}
    for key, limit in _FACT_LIMITS:
        value = facts.get(key)
        # declared names and types come from senders: never let one overflow a column and stall writes
        if isinstance(value, str):
            value = storable_text(value)
            if limit and len(value) > limit:
                value = value[:limit]
        row[key] = value
    row.update(
        state=job.state, result=job.result.name if job.result is not None else None,
        reason=storable_text(job.reason) if job.reason is not None else None, rule_results=orjson.dumps([r.as_dict() for r in job.rules]).decode() if job.rules else None,
        created_at=job.created_at, finished_at=job.finished_at, facts=job.rule_facts,
    )
    if run is not None:
        row["run"] = run
    return row


#: what a verdict changes in a job's row (not what the client sent with the sample, nor who created it)
VERDICT_COLUMNS = ("state", "result", "reason", "rule_results", "finished_at", "facts", "sha1", "md5",
                   "type_by_content", "file_extension", "type_by_name")


def verdict_values(job: Job) -> dict[str, Any]:
    """A finished job's verdict columns, to write into other jobs of its identity (cluster mode)."""
    row = job_row(job, None)
    return {k: row[k] for k in VERDICT_COLUMNS}


def job_from_row(row: Any) -> Job:
    facts = {k: row[k] for k in FACT_COLUMNS}
    rules = [RuleResult(r["rule"], Result[r["result"]], r["reason"], True)
             for r in orjson.loads(row["rule_results"] or "[]")]
    created = aware(row["created_at"])
    assert created is not None
    return Job(id=row["id"], facts=facts, created_at=created, state=row["state"],
               result=Result[row["result"]] if row["result"] else None, reason=row["reason"], rules=rules,
               finished_at=aware(row["finished_at"]), rule_facts=row["facts"], from_row=True)


def check_ids(returned: list[Any], rows: list[dict[str, Any]]) -> list[int]:
    # a mismatch would hand one sample's id to another: refuse the whole commit instead
    if [identity for _, identity in returned] != [row["identity"] for row in rows]:
        raise StoreError(f"the database returned ids for {len(returned)} rows that do not match the "
                         f"{len(rows)} new jobs")
    return [int(job_id) for job_id, _ in returned]


def answered_by_cache(job: Job) -> bool:
    """Finished by the verdict cache at the first rule: an earlier job of its identity wrote the samples row."""
    return job.answered_by_cache


_SHARED: dict[RuleResult, RuleResult] = {}
_SHARED_LIMIT = 20_000
_PLAIN_FACTS = ("type_declared", "content_disposition", "file_extension", "type_by_name", "type_by_content")


def compact(job: Job) -> None:
    """Jobs stay in memory for quick answers: share what most of them have in common (per-rule results,
    reasons, type names) instead of keeping a copy per job."""
    if len(_SHARED) > _SHARED_LIMIT:
        _SHARED.clear()  # reasons that name sizes or files make many distinct results: start again
    job.rules = [_SHARED.setdefault(r, r) for r in job.rules]
    if job.reason is not None:
        job.reason = sys.intern(job.reason)
    facts = job.facts
    for key in _PLAIN_FACTS:
        value = facts.get(key)
        if isinstance(value, str):
            facts[key] = sys.intern(value)
