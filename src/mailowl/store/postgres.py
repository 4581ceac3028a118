"""The hot paths on PostgreSQL through asyncpg directly: the group commit and the verdict lookup.

Each of the two runs one statement or transaction at a time, so each has one connection of its own
(store/link.py) instead of a pool, and every statement is fixed text that asyncpg prepares once: arrays carry the
rows (``unnest``, ``= ANY``), whatever their number. Through SQLAlchemy the same lookup of 8 identities
cost 440 µs of CPU, here 65 µs: in cluster mode, where every sample is looked up and written through the
database, that per-statement cost is most of what one instance spends beyond SQLite (BENCHMARKS.md,
"Cluster mode, eighth session"). MariaDB keeps the SQLAlchemy statements of writer.py and work.py.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy import BigInteger, Column, DateTime, LargeBinary, Table

from mailowl.results import Result
from mailowl.store.jobs import DONE, PENDING
from mailowl.store.link import Link
from mailowl.store.models import jobs, messages, samples
from mailowl.store.rows import VERDICT_COLUMNS, check_ids
from mailowl.store.work import Claim, Finish, settle_claims

_DONE_NOT_FAILED = f"state = '{DONE}' AND result <> '{Result.failed.name}'"


def _pg_type(column: Column[Any]) -> str:
    if isinstance(column.type, DateTime):
        return "timestamptz"
    if isinstance(column.type, BigInteger):
        return "bigint"
    if isinstance(column.type, LargeBinary):
        return "bytea"
    return "text"


class _Params:
    """Numbers a statement's parameters as it is written."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, pg_type: str) -> str:
        self.count += 1
        return f"${self.count}::{pg_type}"

    def arrays(self, table: Table, columns: list[str]) -> str:
        return ", ".join(self(_pg_type(table.c[c]) + "[]") for c in columns)


def _columns(rows: list[dict[str, Any]], columns: list[str]) -> list[list[Any]]:
    return [[row.get(c) for row in rows] for c in columns]


_JOB_COLUMNS = [c.name for c in jobs.columns if c.name != "id"]
_MESSAGE_COLUMNS = [c.name for c in messages.columns]
_UPDATE_COLUMNS = ["state", "result", "reason", "rule_results", "finished_at", "type_by_content", "sha1", "md5",
                   "file_extension", "type_by_name", "facts"]
_CLAIM_COLUMNS = ["key", "identity", "n", "force", "filename", "type_declared", "content_disposition", "content"]


def _insert_jobs(p: _Params) -> str:
    """The new jobs, inserted in array order: ids from the sequence rise with the rows."""
    names = ", ".join(_JOB_COLUMNS)
    return (f"INSERT INTO jobs ({names}) SELECT {names} FROM unnest({p.arrays(jobs, _JOB_COLUMNS)}) "
            f"WITH ORDINALITY AS v({names}, n) ORDER BY n RETURNING id, identity")


def _set(columns: list[str]) -> str:
    return ", ".join(f"{c} = v.{c}" for c in columns)


#: the kinds of rows a group commit can hold, in the order their parameters come
_KINDS = ("jobs", "updates", "samples", "messages", "shared", "forced", "claims")


@functools.cache
def _commit_statement(kinds: frozenset[str]) -> str:
    """A whole group commit as one statement, and so one transaction without BEGIN and COMMIT: each kind of
    row the commit holds is one part (the statement for each combination is built once, and holds only
    its parts: PostgreSQL plans it at every execution), so a commit costs one round trip instead of one per
    kind and two for the transaction (a won claim asks one more, see write). On a machine whose event loop
    is busy each round trip waits for the loop's next turn (BENCHMARKS.md, "Cluster mode, eighth session").
    The parts cannot see each other's rows (one snapshot), which is why the verdicts' updates skip the jobs
    this commit updates by id, and the work rows' delete skips keys claimed again here. Parameters come in
    the order of _KINDS (_commit_arguments)."""
    p = _Params()
    parts: list[str] = []
    selects: list[str] = []
    if "jobs" in kinds:
        parts += [f"j AS ({_insert_jobs(p)})", "jn AS (SELECT id, identity, row_number() OVER (ORDER BY id) AS n FROM j)"]
        selects.append("SELECT 0 AS kind, id, identity::text AS a, NULL::text AS b FROM j")
        # a new job whose id is not in its row's place fails the statement (a text that is no number), and
        # with it the whole commit: one sample's id is never handed to another
        selects.append("SELECT 3, NULL, NULL, NULL FROM jn JOIN unnest($1::text[]) WITH ORDINALITY AS x(identity, n) "
                       "ON x.n = jn.n WHERE (CASE WHEN jn.identity <> x.identity "
                       "THEN ('new job ids out of row order at ' || jn.id)::bigint END) IS NOT NULL")
    not_updated = ""
    if "updates" in kinds:
        updated = p("bigint[]")
        not_updated = f" AND jobs.id <> ALL({updated})"
        parts.append(f"u AS (UPDATE jobs SET {_set(_UPDATE_COLUMNS)} FROM unnest({updated}, "
                     f"{p.arrays(jobs, _UPDATE_COLUMNS)}) AS v(b_id, {', '.join(_UPDATE_COLUMNS)}) "
                     "WHERE jobs.id = v.b_id)")
    if "samples" in kinds:
        parts.append(f"s AS (INSERT INTO samples (sha256, identity) SELECT * FROM "
                     f"unnest({p.arrays(samples, ['sha256', 'identity'])}) ON CONFLICT DO NOTHING)")
    if "messages" in kinds:
        parts.append(f"m AS (INSERT INTO messages ({', '.join(_MESSAGE_COLUMNS)}) SELECT * FROM "
                     f"unnest({p.arrays(messages, _MESSAGE_COLUMNS)}))")
    verdicts = list(VERDICT_COLUMNS)
    for kind, key, key_type in (("shared", "identity", "text"), ("forced", "id", "bigint")):
        if kind in kinds:
            parts.append(f"f_{kind} AS (UPDATE jobs SET {_set(verdicts)} FROM unnest({p(key_type + '[]')}, "
                         f"{p.arrays(jobs, verdicts)}) AS v(b_key, {', '.join(verdicts)}) "
                         f"WHERE jobs.{key} = v.b_key AND jobs.state = '{PENDING}'{not_updated})")
    finished_keys = p("text[]") if kinds & {"shared", "forced"} else None
    claim_keys = None
    if "claims" in kinds:
        claim_keys = p("text[]")
        claims = ", ".join([claim_keys, p("text[]"), p("bigint[]"), p("boolean[]"), p("text[]"), p("text[]"),
                            p("text[]"), p("bytea[]")])
        run, now = p("text"), p("timestamptz")
        job_id = "CASE WHEN c.force THEN jn.id END" if "jobs" in kinds else "NULL::bigint"
        new_jobs = "LEFT JOIN jn ON jn.n = c.n AND jn.identity = c.identity " if "jobs" in kinds else ""
        parts += [
            f"c AS (SELECT * FROM unnest({claims}) AS c({', '.join(_CLAIM_COLUMNS)}))",
            "o AS (INSERT INTO work (key, identity, job_id, owner, created_at, filename, type_declared, "
            f"content_disposition, content) SELECT c.key, c.identity, {job_id}, {run}, {now}, c.filename, "
            f"c.type_declared, c.content_disposition, c.content FROM c {new_jobs}ORDER BY c.key "
            "ON CONFLICT DO NOTHING RETURNING key)"]
        selects += [f"SELECT 1 AS kind, NULL::bigint AS id, key::text AS a, {run} AS b FROM o",
                    f"SELECT 1, NULL, key::text, owner::text FROM work WHERE key = ANY({claim_keys}) "
                    "AND key NOT IN (SELECT key FROM o)"]
    if finished_keys is not None:
        again = f" AND key <> ALL({claim_keys})" if claim_keys else ""
        parts.append(f"d AS (DELETE FROM work WHERE key = ANY({finished_keys}){again})")
    if not selects:
        selects.append("SELECT 0 AS kind, NULL::bigint AS id, NULL::text AS a, NULL::text AS b WHERE false")
    return "WITH " + ", ".join(parts) + " " + " UNION ALL ".join(selects)


_INSERT_JOBS = _insert_jobs(_Params())
_KNOWN = f"SELECT DISTINCT identity FROM jobs WHERE identity = ANY($1::text[]) AND {_DONE_NOT_FAILED}"
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
    start.) Anything else is one statement too (_commit_statement), which checks the ids itself."""
    conn = await link.get()
    if new_rows and not (message_rows or update_rows or sample_rows or claims or finishes):
        returned = await conn.fetch(_INSERT_JOBS, *_columns(new_rows, _JOB_COLUMNS))
        return check_ids(sorted((r[0], r[1]) for r in returned), new_rows)
    kinds, arguments = _commit_arguments(new_rows, message_rows, update_rows, sample_rows, claims, finishes, run,
                                         now)
    rows = await conn.fetch(_commit_statement(kinds), *arguments)
    # ids rise in row order (see _insert_jobs): sorted by id, the rows are in the order they were sent
    ids = check_ids(sorted((r[1], r[2]) for r in rows if r[0] == 0), new_rows)
    if claims:
        owners = {r[2]: r[3] for r in rows if r[0] == 1}
        won = settle_claims(claims, owners, run)
        if won:
            # a statement of its own, after the claim's: it sees a verdict that another instance committed
            # while this commit waited for that instance's work row (the commit's snapshot is older)
            settle_claims(claims, owners, run, {r[0] for r in await conn.fetch(_KNOWN, list(won))})
    return ids


def _commit_arguments(new_rows: list[dict[str, Any]], message_rows: list[dict[str, Any]],
                      update_rows: list[dict[str, Any]], sample_rows: list[dict[str, Any]],
                      claims: list[tuple[int, Claim]], finishes: list[Finish], run: str,
                      now: datetime) -> tuple[frozenset[str], list[Any]]:
    """The kinds of rows the commit holds and its parameters, in the order of _KINDS."""
    # one update per job: of two finishes for the same jobs the first wins, as it would one after the other
    shared: dict[str, Finish] = {}
    forced: dict[int, Finish] = {}
    for finish in sorted(finishes, key=lambda f: f.key):
        if finish.job_id is None:
            shared.setdefault(finish.identity, finish)
        else:
            forced.setdefault(finish.job_id, finish)
    claimed = [claim for _, claim in claims]
    arguments: dict[str, list[Any]] = {
        "jobs": _columns(new_rows, _JOB_COLUMNS),
        "updates": [[row["b_id"] for row in update_rows], *_columns(update_rows, _UPDATE_COLUMNS)],
        "samples": _columns(sample_rows, ["sha256", "identity"]),
        "messages": _columns(message_rows, _MESSAGE_COLUMNS),
        "shared": [list(shared), *([f.values[c] for f in shared.values()] for c in VERDICT_COLUMNS)],
        "forced": [list(forced), *([f.values[c] for f in forced.values()] for c in VERDICT_COLUMNS)],
    }
    kinds = frozenset(kind for kind, rows in zip(_KINDS, (new_rows, update_rows, sample_rows, message_rows, shared,
                                                          forced, claims), strict=True) if rows)
    ordered = [value for kind in _KINDS[:-1] if kind in kinds for value in arguments[kind]]
    if finishes:
        ordered.append([f.key for f in finishes])
    if claims:
        ordered += [[c.key for c in claimed], [c.identity for c in claimed], [index + 1 for index, _ in claims],
                    [c.force for c in claimed], [c.filename for c in claimed], [c.type_declared for c in claimed],
                    [c.content_disposition for c in claimed], [c.content for c in claimed], run, now]
    return kinds, ordered
