"""The hot paths on PostgreSQL through asyncpg directly: the group commit and the verdict lookup.

Each of the two runs one statement or transaction at a time, so each has one connection of its own
(store/link.py) instead of a pool, and every statement is fixed text that asyncpg prepares once: arrays carry the
rows (``unnest``, ``= ANY``), whatever their number. Through SQLAlchemy the same lookup of 8 identities
cost 440 µs of CPU, here 65 µs: in cluster mode, where every sample is looked up and written through the
database, that per-statement cost is most of what one instance spends beyond SQLite (BENCHMARKS.md,
"Cluster mode, eighth session"). MariaDB keeps the SQLAlchemy statements of writer.py and work.py.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy import BigInteger, Column, DateTime, LargeBinary, Table

from mailowl.results import Result
from mailowl.store.jobs import DONE, PENDING
from mailowl.store.link import Link
from mailowl.store.models import jobs, messages, samples, work
from mailowl.store.rows import VERDICT_COLUMNS
from mailowl.store.sqlite_writes import check_ids
from mailowl.store.work import Claim, Finish, claim_rows, settle_claims

_DONE_NOT_FAILED = f"state = '{DONE}' AND result <> '{Result.failed.name}'"


def _pg_type(column: Column[Any]) -> str:
    if isinstance(column.type, DateTime):
        return "timestamptz"
    if isinstance(column.type, BigInteger):
        return "bigint"
    if isinstance(column.type, LargeBinary):
        return "bytea"
    return "text"


def _insert(table: Table, columns: list[str], tail: str = "") -> str:
    """INSERT of one row per array element, in array order (ids from a sequence then rise with the rows)."""
    arrays = ", ".join(f"${i}::{_pg_type(table.c[c])}[]" for i, c in enumerate(columns, 1))
    names = ", ".join(columns)
    return (f"INSERT INTO {table.name} ({names}) SELECT {names} FROM unnest({arrays}) WITH ORDINALITY "
            f"AS v({names}, n) ORDER BY n {tail}")


def _columns(rows: list[dict[str, Any]], columns: list[str]) -> list[list[Any]]:
    return [[row.get(c) for row in rows] for c in columns]


_JOB_COLUMNS = [c.name for c in jobs.columns if c.name != "id"]
_INSERT_JOBS = _insert(jobs, _JOB_COLUMNS, "RETURNING id, identity")
_MESSAGE_COLUMNS = [c.name for c in messages.columns]
_INSERT_MESSAGES = _insert(messages, _MESSAGE_COLUMNS)
_INSERT_SAMPLES = _insert(samples, ["sha256", "identity"], "ON CONFLICT DO NOTHING")
_UPDATE_COLUMNS = ["state", "result", "reason", "rule_results", "finished_at", "type_by_content", "sha1", "md5",
                   "file_extension", "type_by_name", "facts"]
_UPDATE_JOBS = ("UPDATE jobs SET " + ", ".join(f"{c} = v.{c}" for c in _UPDATE_COLUMNS)
                + " FROM unnest($1::bigint[], "
                + ", ".join(f"${i}::{_pg_type(jobs.c[c])}[]" for i, c in enumerate(_UPDATE_COLUMNS, 2))
                + ") AS v(b_id, " + ", ".join(_UPDATE_COLUMNS) + ") WHERE jobs.id = v.b_id")
_WORK_COLUMNS = ["key", "identity", "job_id", "owner", "created_at", "filename", "type_declared",
                 "content_disposition", "content"]
_INSERT_WORK = _insert(work, _WORK_COLUMNS, "ON CONFLICT DO NOTHING")
_OWNERS = "SELECT key, owner FROM work WHERE key = ANY($1::text[])"
_KNOWN = f"SELECT DISTINCT identity FROM jobs WHERE identity = ANY($1::text[]) AND {_DONE_NOT_FAILED}"
# one statement per finish, sent together (executemany): two finishes of one identity in one commit end as
# they would one after the other, the first one's verdict
_SET = ", ".join(f"{c} = ${i}" for i, c in enumerate(VERDICT_COLUMNS, 2))
_FINISH_SHARED = f"UPDATE jobs SET {_SET} WHERE identity = $1 AND state = '{PENDING}'"
_FINISH_FORCED = f"UPDATE jobs SET {_SET} WHERE id = $1 AND state = '{PENDING}'"
_DELETE_WORK = "DELETE FROM work WHERE key = ANY($1::text[])"
_LOOKUP = ("SELECT identity, finished_at, result, reason FROM jobs WHERE identity = ANY($1::text[]) "
           f"AND {_DONE_NOT_FAILED} ORDER BY finished_at, id")


async def lookup(link: Link, identities: list[str]) -> list[asyncpg.Record]:
    """The finished, non-failed jobs of those identities, oldest verdict first."""
    conn = await link.get()
    rows: list[asyncpg.Record] = await conn.fetch(_LOOKUP, identities)
    return rows


async def write(link: Link, new_rows: list[dict[str, Any]], message_rows: list[dict[str, Any]],
                update_rows: list[dict[str, Any]], sample_rows: list[dict[str, Any]],
                claims: list[tuple[int, Claim]], finishes: list[Finish], run: str, now: datetime) -> list[int]:
    """One group commit; the new ids in row order. A commit of new jobs only (cached verdicts) is a single
    INSERT outside a transaction: a statement is a transaction of its own, committed and flushed before it
    answers, and BEGIN and COMMIT would be two more round trips. (Should check_ids refuse its ids, the rows
    stay without anyone holding their ids: pending rows of this run, answered "interrupted" at its next
    start.)"""
    conn = await link.get()
    if new_rows and not (message_rows or update_rows or sample_rows or claims or finishes):
        return await _insert_jobs(conn, new_rows)
    async with conn.transaction():
        ids = await _insert_jobs(conn, new_rows) if new_rows else []
        if sample_rows:
            await conn.execute(_INSERT_SAMPLES, *_columns(sample_rows, ["sha256", "identity"]))
        if message_rows:
            await conn.execute(_INSERT_MESSAGES, *_columns(message_rows, _MESSAGE_COLUMNS))
        if update_rows:
            await conn.execute(_UPDATE_JOBS, *_columns(update_rows, ["b_id", *_UPDATE_COLUMNS]))
        if claims:
            await _claim(conn, [(ids[i], claim) for i, claim in claims], run, now)
        if finishes:
            await _finish(conn, finishes)
    return ids


async def _insert_jobs(conn: asyncpg.Connection, rows: list[dict[str, Any]]) -> list[int]:
    returned = await conn.fetch(_INSERT_JOBS, *_columns(rows, _JOB_COLUMNS))
    # ids rise in row order (see _insert): sorted by id, the rows are in the order they were sent
    return check_ids(sorted((r[0], r[1]) for r in returned), rows)


async def _claim(conn: asyncpg.Connection, claims: list[tuple[int, Claim]], run: str, now: datetime) -> None:
    """Like work.write_claims."""
    await conn.execute(_INSERT_WORK, *_columns(claim_rows(claims, run, now), _WORK_COLUMNS))
    owners = {r[0]: r[1] for r in await conn.fetch(_OWNERS, [c.key for _, c in claims])}
    won = settle_claims(claims, owners, run)
    if won:
        known = {r[0] for r in await conn.fetch(_KNOWN, list(won))}
        settle_claims(claims, owners, run, known)


async def _finish(conn: asyncpg.Connection, finishes: list[Finish]) -> None:
    """Like work.write_finishes."""
    finishes = sorted(finishes, key=lambda f: f.key)
    shared = [(f.identity, *(f.values[c] for c in VERDICT_COLUMNS)) for f in finishes if f.job_id is None]
    forced = [(f.job_id, *(f.values[c] for c in VERDICT_COLUMNS)) for f in finishes if f.job_id is not None]
    if shared:
        await conn.executemany(_FINISH_SHARED, shared)
    if forced:
        await conn.executemany(_FINISH_FORCED, forced)
    await conn.execute(_DELETE_WORK, [f.key for f in finishes])
