"""Read-only queries for the web interface: typed records, SQLAlchemy Core, SQLite, MariaDB and PostgreSQL.

Every query is bounded, so a page costs the same with a thousand jobs or millions: lists are keyset-paginated
on an indexed order (jobs by id, messages by created_at), lookups use an index (job id, support id, sha256,
sender), and what no index can serve (a recipient inside the JSON list, a part of a filename, the dashboard's
frequencies) is looked for among the newest ``WINDOW`` rows only.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

import orjson
from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from mailowl.store.models import jobs, messages, samples

T = TypeVar("T")

#: how many of the newest rows a search that no index serves looks through
WINDOW = 100_000
#: how many of the newest finished jobs the dashboard's frequencies are counted over
RECENT = 1000
#: a hash analysed under at most this many identities is searched one identity at a time
_PER_IDENTITY = 20


@dataclass(frozen=True)
class RuleRow:
    rule: str
    result: str
    reason: str


@dataclass(frozen=True)
class JobRow:
    id: int
    state: str
    result: str | None
    reason: str | None
    filename: str | None
    sha256: str
    size: int
    created_at: datetime
    finished_at: datetime | None = None
    identity: str = ""
    sha1: str | None = None
    md5: str | None = None
    type_declared: str | None = None
    type_by_content: str | None = None
    type_by_name: str | None = None
    file_extension: str | None = None
    content_disposition: str | None = None
    rules: list[RuleRow] = field(default_factory=list)
    #: what the analysers reported to the rules, by report (archive members, YARA, ClamAV, Cortex, ...)
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def deciding_rule(self) -> RuleRow | None:
        """The rule whose result is the verdict: the engine stops at the first one that decides."""
        return self.rules[-1] if self.rules else None


@dataclass(frozen=True)
class PartRow:
    filename: str | None
    content_type: str | None
    disposition: str | None
    size: int
    sha256: str | None
    job_id: int | None
    result: str | None
    reason: str | None
    findings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class MessageRow:
    support_id: str
    created_at: datetime
    ingress: str
    action: str
    mail_from: str | None
    rcpt_to: list[str]
    reply: str | None = None
    message_id: str | None = None
    subject: str | None = None
    client_ip: str | None = None
    size: int | None = None
    parts: list[PartRow] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        """The worst part's result at decision time ("clean" without parts)."""
        order = ["unchecked", "unknown", "ignored", "good", "failed", "bad"]
        results = [p.result for p in self.parts if p.result in order]
        if any(p.result is None and p.job_id for p in self.parts):
            return "pending"
        return max(results, key=order.index) if results else "clean"


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    #: the cursor of the next (older) page, None on the last one
    next: str | None


@dataclass(frozen=True)
class Bucket:
    start: datetime
    counts: dict[str, int]


@dataclass(frozen=True)
class Summary:
    jobs_last_minute: int
    jobs_last_hour: int
    reasons: list[tuple[str, int]]
    rules: list[tuple[str, int]]
    types: list[tuple[str, int]]


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _job(row: Any, full: bool = True) -> JobRow:
    rules = [RuleRow(r["rule"], r["result"], r["reason"]) for r in orjson.loads(row.rule_results or "[]")] \
        if full else []
    return JobRow(
        id=row.id, state=row.state, result=row.result, reason=row.reason, filename=row.filename, sha256=row.sha256,
        size=row.size, created_at=_aware(row.created_at),
        finished_at=_aware(row.finished_at) if row.finished_at else None, identity=row.identity, sha1=row.sha1,
        md5=row.md5, type_declared=row.type_declared, type_by_content=row.type_by_content,
        type_by_name=row.type_by_name, file_extension=row.file_extension,
        content_disposition=row.content_disposition, rules=rules, reports=_reports(row) if full else {})


def _reports(row: Any) -> dict[str, dict[str, Any]]:
    """jobs.facts (migration 0006): the reports the rules read, without the empty ones."""
    raw = row._mapping.get("facts")
    try:
        found = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return {}
    return {name: report for name, report in found.items() if isinstance(report, dict) and report} \
        if isinstance(found, dict) else {}


def _message(row: Any) -> MessageRow:
    parts = [PartRow(filename=p.get("filename"), content_type=p.get("content_type"),
                     disposition=p.get("disposition"), size=int(p.get("size") or 0), sha256=p.get("sha256"),
                     job_id=p.get("job_id"), result=p.get("result"), reason=p.get("reason"),
                     findings=list(p.get("findings") or []))
             for p in orjson.loads(row.parts or "[]")]
    return MessageRow(support_id=row.support_id, created_at=_aware(row.created_at), ingress=row.ingress,
                      action=row.action, mail_from=row.mail_from, rcpt_to=orjson.loads(row.rcpt_to or "[]"),
                      reply=row.reply, message_id=row.message_id, subject=row.subject, client_ip=row.client_ip,
                      size=row.size,
                      parts=parts, findings=orjson.loads(row.findings or "[]"))


# jobs -------------------------------------------------------------------------------------------------------
async def job(engine: AsyncEngine, job_id: int) -> JobRow | None:
    async with engine.connect() as conn:
        row = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).first()
    return _job(row) if row is not None else None


def _job_cursor(before: str | None) -> int | None:
    return int(before) if before and before.isdigit() else None


async def _job_page(engine: AsyncEngine, where: list[ColumnElement[bool]], limit: int,
                    before: str | None) -> Page[JobRow]:
    after = _job_cursor(before)
    if after is not None:
        where = [*where, jobs.c.id < after]
    stmt = select(jobs).where(*where).order_by(jobs.c.id.desc()).limit(limit + 1)
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    found = [_job(r) for r in rows[:limit]]
    return Page(found, str(found[-1].id) if len(rows) > limit else None)


async def latest_jobs(engine: AsyncEngine, limit: int = 50, before: str | None = None) -> Page[JobRow]:
    return await _job_page(engine, [], limit, before)


async def jobs_by_sha256(engine: AsyncEngine, sha256: str, limit: int = 50,
                         before: str | None = None) -> Page[JobRow]:
    """Through the identities the hash was analysed under (samples), then ix_jobs_identity: jobs.sha256 has
    no index. One identity's jobs leave that index in id order on SQLite and MariaDB (its entries end with
    the primary key), so a page of each, merged here, needs no sort of all the jobs of a popular file; a
    hash seen under very many names is read with one IN query instead, which sorts its jobs."""
    async with engine.connect() as conn:
        identities = [i for (i,) in await conn.execute(
            select(samples.c.identity).where(samples.c.sha256 == sha256.lower()).limit(_PER_IDENTITY + 1))]
    if len(identities) > _PER_IDENTITY:
        names = select(samples.c.identity).where(samples.c.sha256 == sha256.lower())
        return await _job_page(engine, [jobs.c.identity.in_(names)], limit, before)
    pages = [await _job_page(engine, [jobs.c.identity == identity], limit, before) for identity in identities]
    found = sorted((j for page in pages for j in page.items), key=lambda j: j.id, reverse=True)
    more = len(found) > limit or any(page.next is not None for page in pages)
    return Page(found[:limit], str(found[limit - 1].id) if more and len(found) >= limit else None)


async def jobs_by_filename(engine: AsyncEngine, text: str, limit: int = 50,
                           before: str | None = None) -> Page[JobRow]:
    """Jobs whose filename contains ``text`` (case-insensitive), among the newest WINDOW jobs."""
    async with engine.connect() as conn:
        newest = (await conn.execute(select(func.max(jobs.c.id)))).scalar() or 0
    pattern = "%" + _escape(text.lower()) + "%"
    where = [jobs.c.id > newest - WINDOW, func.lower(jobs.c.filename).like(pattern, escape="\\")]
    return await _job_page(engine, where, limit, before)


# messages ---------------------------------------------------------------------------------------------------
async def message(engine: AsyncEngine, support_id: str) -> MessageRow | None:
    async with engine.connect() as conn:
        row = (await conn.execute(select(messages).where(messages.c.support_id == support_id))).first()
    return _message(row) if row is not None else None


def _message_cursor(before: str | None) -> tuple[datetime, str] | None:
    """Cursors are "<created_at as microseconds>.<support id>": the keyset of (created_at, support_id)."""
    if not before:
        return None
    micros, _, support_id = before.partition(".")
    if not micros.isdigit() or not support_id:
        return None
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(micros)), support_id


def _cursor_of(row: MessageRow) -> str:
    delta = row.created_at - datetime(1970, 1, 1, tzinfo=UTC)
    return f"{delta // timedelta(microseconds=1)}.{row.support_id}"


async def _message_page(engine: AsyncEngine, where: list[ColumnElement[bool]], limit: int,
                        before: str | None) -> Page[MessageRow]:
    cursor = _message_cursor(before)
    if cursor is not None:
        when, support_id = cursor
        # MariaDB and SQLite keep naive timestamps: compare with what they hold
        if engine.dialect.name != "postgresql":
            when = when.replace(tzinfo=None)
        # the plain bound lets the database start the index range at the cursor; the OR settles the ties
        where = [*where, messages.c.created_at <= when,
                 or_(messages.c.created_at < when,
                     and_(messages.c.created_at == when, messages.c.support_id < support_id))]
    stmt = (select(messages).where(*where).order_by(messages.c.created_at.desc(), messages.c.support_id.desc())
            .limit(limit + 1))
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    found = [_message(r) for r in rows[:limit]]
    return Page(found, _cursor_of(found[-1]) if len(rows) > limit else None)


async def latest_messages(engine: AsyncEngine, limit: int = 50, before: str | None = None) -> Page[MessageRow]:
    return await _message_page(engine, [], limit, before)


async def messages_from(engine: AsyncEngine, sender: str, limit: int = 50,
                        before: str | None = None) -> Page[MessageRow]:
    return await _message_page(engine, [messages.c.mail_from == sender], limit, before)


async def messages_to(engine: AsyncEngine, recipient: str, limit: int = 50,
                      before: str | None = None) -> Page[MessageRow]:
    """Messages with ``recipient`` among their envelope recipients, among the newest WINDOW messages."""
    # the window's oldest moment, from the index alone; then newest first through the index until a page is full
    async with engine.connect() as conn:
        oldest = (await conn.execute(select(messages.c.created_at).order_by(messages.c.created_at.desc())
                                     .offset(WINDOW - 1).limit(1))).scalar()
    # rcpt_to is a JSON list of strings: the address with its quotes is one whole element
    pattern = "%" + _escape(orjson.dumps(recipient).decode()) + "%"
    where: list[ColumnElement[bool]] = [messages.c.rcpt_to.like(pattern, escape="\\")]
    if oldest is not None:
        where.append(messages.c.created_at >= oldest)
    return await _message_page(engine, where, limit, before)


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# the dashboard ----------------------------------------------------------------------------------------------
async def verdicts_over_time(engine: AsyncEngine, now: datetime, step: timedelta, count: int) -> list[Bucket]:
    """Jobs per result in ``count`` buckets of ``step`` ending at ``now``: one indexed range count each."""
    end = now
    start = end - step * count
    naive = engine.dialect.name != "postgresql"
    buckets: list[Bucket] = []
    async with engine.connect() as conn:
        for i in range(count):
            low, high = start + step * i, start + step * (i + 1)
            bounds = (low.replace(tzinfo=None), high.replace(tzinfo=None)) if naive else (low, high)
            stmt = (select(jobs.c.result, func.count()).where(jobs.c.created_at >= bounds[0],
                                                             jobs.c.created_at < bounds[1])
                    .group_by(jobs.c.result))
            counts = {result or "pending": int(n) for result, n in await conn.execute(stmt)}
            buckets.append(Bucket(low, counts))
    return buckets


async def summary(engine: AsyncEngine, now: datetime) -> Summary:
    """Throughput, and the most frequent reasons, deciding rules and file types of the newest RECENT jobs."""
    naive = engine.dialect.name != "postgresql"

    def since(seconds: int) -> datetime:
        moment = now - timedelta(seconds=seconds)
        return moment.replace(tzinfo=None) if naive else moment

    async with engine.connect() as conn:
        minute = (await conn.execute(select(func.count()).where(jobs.c.created_at >= since(60)))).scalar() or 0
        hour = (await conn.execute(select(func.count()).where(jobs.c.created_at >= since(3600)))).scalar() or 0
        recent = (select(jobs.c.reason, jobs.c.rule_results, jobs.c.type_by_content, jobs.c.state)
                  .order_by(jobs.c.id.desc()).limit(RECENT))
        rows = (await conn.execute(recent)).all()
    reasons: Counter[str] = Counter()
    rules: Counter[str] = Counter()
    types: Counter[str] = Counter()
    for reason, rule_results, type_by_content, state in rows:
        if state != "done":
            continue
        reasons[reason or ""] += 1
        decided = orjson.loads(rule_results or "[]")
        if decided:
            rules[decided[-1]["rule"]] += 1
        types[type_by_content or "(unknown)"] += 1
    return Summary(int(minute), int(hour), reasons.most_common(8), rules.most_common(8), types.most_common(8))
