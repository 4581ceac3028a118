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
from mailowl.store.models import jobs, messages, samples
from mailowl.store.rows import VERDICT_COLUMNS
from mailowl.store.sqlite_writes import check_ids
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


def _commit_statement() -> str:
    """A whole group commit as one statement, and so one transaction without BEGIN and COMMIT: every kind of
    row is an array (empty when there is none), so the commit costs one round trip instead of one per kind
    and two for the transaction (a won claim asks one more, see write). On a machine whose event loop is busy each round trip waits for the loop's
    next turn: a fresh sample's commit with BEGIN, a statement per kind and COMMIT (9 round trips) took 6.6
    ms, this one 2.6 ms (BENCHMARKS.md, "Cluster mode, eighth session"). The parts cannot see each other's rows (one
    snapshot), which is why the verdicts' updates skip the jobs this commit updates by id, and the work rows'
    delete skips keys claimed again here."""
    p = _Params()  # the arguments' order is _commit_arguments'
    jobs_sql = _insert_jobs(p)
    names = ", ".join(_MESSAGE_COLUMNS)
    updates = ", ".join(_UPDATE_COLUMNS)
    verdicts = ", ".join(VERDICT_COLUMNS)
    verdict_arrays = lambda: p.arrays(jobs, list(VERDICT_COLUMNS))  # noqa: E731
    updated = p("bigint[]")
    sql = (
        f"WITH j AS ({jobs_sql}), "
        "jn AS (SELECT id, identity, row_number() OVER (ORDER BY id) AS n FROM j), "
        f"s AS (INSERT INTO samples (sha256, identity) SELECT * FROM unnest({p.arrays(samples, ['sha256', 'identity'])}) "
        "ON CONFLICT DO NOTHING), "
        f"m AS (INSERT INTO messages ({names}) SELECT * FROM unnest({p.arrays(messages, _MESSAGE_COLUMNS)})), "
        f"u AS (UPDATE jobs SET {_set(_UPDATE_COLUMNS)} FROM unnest({updated}, "
        f"{p.arrays(jobs, _UPDATE_COLUMNS)}) AS v(b_id, {updates}) WHERE jobs.id = v.b_id), "
        f"fs AS (UPDATE jobs SET {_set(list(VERDICT_COLUMNS))} FROM unnest({p('text[]')}, {verdict_arrays()}) "
        f"AS v(b_identity, {verdicts}) WHERE jobs.identity = v.b_identity AND jobs.state = '{PENDING}' "
        f"AND jobs.id <> ALL({updated})), "
        f"ff AS (UPDATE jobs SET {_set(list(VERDICT_COLUMNS))} FROM unnest({p('bigint[]')}, {verdict_arrays()}) "
        f"AS v(b_id, {verdicts}) WHERE jobs.id = v.b_id AND jobs.state = '{PENDING}' AND jobs.id <> ALL({updated})), "
    )
    finished_keys = p("text[]")
    claim_keys = p("text[]")
    claims = (f"{claim_keys}, {p('text[]')}, {p('bigint[]')}, {p('boolean[]')}, {p('text[]')}, {p('text[]')}, "
              f"{p('text[]')}, {p('bytea[]')}")
    run, now = p("text"), p("timestamptz")
    sql += (
        f"d AS (DELETE FROM work WHERE key = ANY({finished_keys}) AND key <> ALL({claim_keys})), "
        f"c AS (SELECT * FROM unnest({claims}) AS c({', '.join(_CLAIM_COLUMNS)})), "
        "o AS (INSERT INTO work (key, identity, job_id, owner, created_at, filename, type_declared, "
        f"content_disposition, content) SELECT c.key, c.identity, CASE WHEN c.force THEN jn.id END, {run}, {now}, "
        "c.filename, c.type_declared, c.content_disposition, c.content FROM c "
        "LEFT JOIN jn ON jn.n = c.n AND jn.identity = c.identity ORDER BY c.key ON CONFLICT DO NOTHING "
        "RETURNING key) "
        "SELECT 0 AS kind, id, identity::text AS a, NULL::text AS b FROM j "
        f"UNION ALL SELECT 1, NULL, key::text, {run} FROM o "
        f"UNION ALL SELECT 1, NULL, key::text, owner::text FROM work WHERE key = ANY({claim_keys}) "
        "AND key NOT IN (SELECT key FROM o) "
        # a new job whose id is not in its row's place fails the statement (a text that is no number), and
        # with it the whole commit: one sample's id is never handed to another
        "UNION ALL SELECT 3, NULL, NULL, NULL FROM jn JOIN unnest($1::text[]) WITH ORDINALITY AS x(identity, n) "
        "ON x.n = jn.n WHERE (CASE WHEN jn.identity <> x.identity "
        "THEN ('new job ids out of row order at ' || jn.id)::bigint END) IS NOT NULL"
    )
    return sql


_INSERT_JOBS = _insert_jobs(_Params())
_COMMIT = _commit_statement()
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
    rows = await conn.fetch(_COMMIT, *_commit_arguments(new_rows, message_rows, update_rows, sample_rows, claims,
                                                         finishes, run, now))
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
                      now: datetime) -> list[Any]:
    updated = [row["b_id"] for row in update_rows]
    # one update per job: of two finishes for the same jobs the first wins, as it would one after the other
    shared: dict[str, Finish] = {}
    forced: dict[int, Finish] = {}
    for finish in sorted(finishes, key=lambda f: f.key):
        if finish.job_id is None:
            shared.setdefault(finish.identity, finish)
        else:
            forced.setdefault(finish.job_id, finish)
    shared_values = [[f.values[c] for f in shared.values()] for c in VERDICT_COLUMNS]
    forced_values = [[f.values[c] for f in forced.values()] for c in VERDICT_COLUMNS]
    claimed = [claim for _, claim in claims]
    return [
        *_columns(new_rows, _JOB_COLUMNS), updated,
        *_columns(sample_rows, ["sha256", "identity"]),
        *_columns(message_rows, _MESSAGE_COLUMNS),
        *_columns(update_rows, _UPDATE_COLUMNS),
        list(shared), *shared_values,
        list(forced), *forced_values,
        [f.key for f in finishes],
        [c.key for c in claimed], [c.identity for c in claimed], [index + 1 for index, _ in claims],
        [c.force for c in claimed], [c.filename for c in claimed], [c.type_declared for c in claimed],
        [c.content_disposition for c in claimed], [c.content for c in claimed],
        run, now,
    ]
