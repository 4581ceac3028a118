"""The hot paths on PostgreSQL through asyncpg directly (store/postgres.py, store/link.py), against the
machine's PostgreSQL: lookups stay on the identity index however small the store was when they began, and
the paths' own connections survive the server dropping them."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections.abc import Iterator
from datetime import UTC, datetime

import asyncpg
import pytest

from mailowl.analysis.sample import Sample
from mailowl.results import Result, RuleResult
from mailowl.store import Store, postgres
from mailowl.store.database import IDLE_PING, Database
from tests.conftest import fresh_database


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_database("postgresql") as url:
        yield url


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def _scans(admin: asyncpg.Connection) -> int:
    # the statistics a backend reports at the end of each transaction reach the view with a short delay
    await asyncio.sleep(0.6)
    await admin.execute("SELECT pg_stat_clear_snapshot()")
    value = await admin.fetchval("SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'jobs'")
    return int(value)


async def test_lookups_begun_on_an_empty_store_use_the_index_once_it_has_grown(pg_url: str) -> None:
    """A prepared statement's generic plan, made while the store is new, would scan every job for every
    lookup from then on (measured in the cluster benchmark before the fix: every lookup of a cached round)."""
    store = Store(pg_url)
    await store.open()
    admin = await asyncpg.connect(_dsn(pg_url))
    try:
        await admin.execute("ALTER TABLE jobs SET (autovacuum_enabled = false)")  # no re-plan by ANALYZE
        for n in range(12):  # more than the 5 custom plans after which PostgreSQL may settle on a generic one
            assert not (await store.journal(f"{n:064x}")).known
        await admin.execute(
            "INSERT INTO jobs (identity, sha256, size, state, result, reason, created_at, finished_at) "
            "SELECT md5(i::text), md5(i::text), 1, 'done', 'good', 'fine', now(), now() "
            "FROM generate_series(1, 50000) AS i")
        before = await _scans(admin)
        for n in range(1, 13):
            report = await store.journal(hashlib.md5(str(n).encode()).hexdigest())
            assert report.known and report.last_result == Result.good
        assert await _scans(admin) == before
    finally:
        await admin.close()
        await store.close()


async def test_the_paths_reconnect_after_the_server_dropped_their_connections(pg_url: str) -> None:
    """Idle connections the server closed (a restart, an administrator) are replaced before use: the next
    upload neither fails nor waits for a retry."""
    store = Store(pg_url)
    await store.open()
    admin = await asyncpg.connect(_dsn(pg_url))
    try:
        first = await store.new_job(Sample(b"before", "a.exe").facts())
        first.finish(Result.bad, "evil", [RuleResult("r", Result.bad, "evil", True)], datetime.now(UTC))
        store.job_finished(first)
        await store.flush()
        assert (await store.journal(first.identity)).known
        dropped = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        assert dropped >= 2  # the writer's and the lookups' own connections at least
        await asyncio.sleep(IDLE_PING + 0.3)
        second = await store.new_job(Sample(b"after", "b.exe").facts())
        assert second.id > first.id
        store.verdicts.clear()
        assert (await store.journal(first.identity)).known
    finally:
        await admin.close()
        await store.close()


async def test_a_commit_whose_new_ids_are_out_of_row_order_writes_nothing(pg_url: str) -> None:
    """The group commit is one statement that checks its ids itself: should the sequence ever hand out ids
    in another order than the rows', the whole commit is refused instead of one sample getting another's
    id. A sequence that counts down makes that happen."""
    db = Database(pg_url)
    await db.open()
    admin = await asyncpg.connect(_dsn(pg_url))
    try:
        await admin.execute("ALTER SEQUENCE jobs_id_seq INCREMENT BY -1 MINVALUE 1 RESTART WITH 1000")
        now = datetime.now(UTC)
        rows = [{"identity": f"{n:064x}", "sha256": f"{n:064x}", "size": 1, "state": "pending", "created_at": now,
                 "run": "test"} for n in range(3)]
        with pytest.raises(asyncpg.PostgresError, match="new job ids out of row order"):
            await postgres.write(db.link(), rows, [], [], [{"sha256": "a" * 64, "identity": "b" * 64}], [], [],
                                 "test", now)
        assert await admin.fetchval("SELECT count(*) FROM jobs") == 0
        assert await admin.fetchval("SELECT count(*) FROM samples") == 0
        await admin.execute("ALTER SEQUENCE jobs_id_seq INCREMENT BY 1 RESTART WITH 1")
        ids = await postgres.write(db.link(), rows, [], [], [{"sha256": "a" * 64, "identity": "b" * 64}], [], [],
                                   "test", now)
        assert ids == [1, 2, 3]
    finally:
        await admin.close()
        await db.close()


async def test_every_combination_of_row_kinds_is_one_valid_statement(pg_url: str) -> None:
    """A group commit's statement holds only the kinds of rows it carries: each of the 127 combinations is
    prepared by the server (syntax, types, the parameters' count and order)."""
    db = Database(pg_url)
    await db.open()
    try:
        conn = await db.link().get()
        for size in range(1, len(postgres._KINDS) + 1):
            for kinds in itertools.combinations(postgres._KINDS, size):
                statement = await conn.prepare(postgres._commit_statement(frozenset(kinds)))
                assert [a.name for a in statement.get_attributes()] == ["kind", "id", "a", "b"]
    finally:
        await db.close()
