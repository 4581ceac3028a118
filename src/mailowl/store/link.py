"""One asyncpg connection of its own, for a task that runs one statement or transaction at a time (the
group commit, the verdict lookup on PostgreSQL): no pool to check a connection out of and back into, which
through asyncpg's pool costs a reset round trip per use (store/postgres.py)."""

from __future__ import annotations

import time
from typing import Any

import asyncpg

#: a plan for each execution's own values: a prepared statement's generic plan, made once while the tables
#: were small (a new store), scans the whole jobs table for every lookup until autovacuum's next ANALYZE
#: (measured: 5,393 of 5,393 lookups of a benchmark's cached round); planning each time costs far less
PG_SETTINGS = {"plan_cache_mode": "force_custom_plan"}


class Link:
    """One connection for one task. A connection idle longer than ``idle_ping`` seconds is pinged before
    use and replaced if the server went away meanwhile (a restart); one that fails while busy is replaced at
    the next use."""

    def __init__(self, connect: dict[str, Any], timeout: float, idle_ping: float) -> None:
        self._connect = connect
        self._timeout = timeout
        self._idle_ping = idle_ping
        self._conn: asyncpg.Connection | None = None
        self._used = 0.0

    async def get(self) -> asyncpg.Connection:
        conn = self._conn
        now = time.monotonic()
        if conn is not None and not conn.is_closed() and now - self._used > self._idle_ping:
            try:
                await conn.fetchval("SELECT 1")
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                conn.terminate()
        if conn is None or conn.is_closed():
            self._conn = conn = await asyncpg.connect(**self._connect, timeout=self._timeout,
                                                      server_settings=PG_SETTINGS)
        self._used = now
        return conn

    async def close(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close(timeout=self._timeout)
        self._conn = None
