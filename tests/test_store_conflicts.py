"""A group commit that the database picks as a deadlock's victim (another instance's transaction locked the
same sample rows in the other order) runs again at once: its jobs are stored, not failed with a 503.
Against the machine's MariaDB and PostgreSQL, with a real deadlock."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from mailowl.analysis.sample import Sample
from mailowl.store import Store

from .conftest import fresh_database

#: a transaction waiting for a lock, by backend
_WAITING = {
    "postgresql": "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                  "AND datname = current_database()",
    "mysql": "SELECT count(*) FROM information_schema.innodb_trx WHERE trx_state = 'LOCK WAIT'",
}


@pytest.fixture(params=["mariadb", "postgresql"])
def network_url(request: pytest.FixtureRequest) -> Iterator[str]:
    with fresh_database(request.param) as url:
        yield url


async def _until_waiting(conn: AsyncConnection, count: int) -> None:
    deadline = time.monotonic() + 30
    while (seen := (await conn.execute(text(_WAITING[conn.dialect.name]))).scalar()) != count:
        assert time.monotonic() < deadline, f"{seen} transactions wait for a lock, expected {count}"
        # not faster: polled every 10 ms, MariaDB's view of waiting transactions never showed the commit's wait
        await asyncio.sleep(0.1)


async def test_a_commit_that_loses_a_deadlock_runs_again(network_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mailowl.store.writer")
    # the commit inserts sample rows in key order: ``first`` is locked by it, then it waits for ``second``
    first, second = sorted([Sample(b"deadlock a"), Sample(b"deadlock b")], key=lambda s: s.sha256)
    store = Store(network_url)
    await store.open()
    other = create_async_engine(network_url)
    try:
        async with other.connect() as conn, other.connect() as watch:
            await watch.execution_options(isolation_level="AUTOCOMMIT")
            if conn.dialect.name == "postgresql":
                # the store's session checks for the deadlock first (1 s, the default) and is its victim
                await conn.execute(text("SET deadlock_timeout = '60s'"))
            else:
                # InnoDB rolls back the transaction that changed fewer rows: make the other one heavier
                await conn.execute(text("INSERT INTO samples (sha256, identity) VALUES (:sha, :id)"),
                                   [{"sha": f"{i:064x}", "id": f"heavy-{i}"} for i in range(50)])
            await conn.execute(text("INSERT INTO samples (sha256, identity) VALUES (:sha, :id)"),
                               {"sha": second.sha256, "id": second.identity})
            jobs = [store.add_job(first.facts()), store.add_job(second.facts())]
            await _until_waiting(watch, 1)
            # now the other transaction wants ``first``: each waits for the other
            await conn.execute(text("INSERT INTO samples (sha256, identity) VALUES (:sha, :id)"),
                               {"sha": first.sha256, "id": first.identity})
            await conn.commit()
        for job in jobs:
            await asyncio.wait_for(store.committed(job), 60)
            assert job.id > 0
        assert "lost a lock conflict" in caplog.text
        for job in jobs:
            stored = await store.get_job(job.id)
            assert stored is not None and stored.facts["sha256"] == job.facts["sha256"]
    finally:
        await other.dispose()
        await store.close()
