"""The connection to the store's database: the SQLAlchemy engine every part uses, and on SQLite the plain
``sqlite3`` connections that the hot paths use on the event loop (a driver call there costs a fraction of
an async engine's thread hop, which waits for the GIL behind the analysis threads)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from mailowl.store.checkpoint import Checkpoints
from mailowl.store.migrate import upgrade

#: seconds to connect to MariaDB / PostgreSQL before the attempt counts as an outage
CONNECT_TIMEOUT = 5
_CONNECT_TIMEOUT_ARG = {"asyncpg": "timeout", "asyncmy": "connect_timeout", "aiomysql": "connect_timeout"}


class StoreError(RuntimeError):
    pass


@contextlib.contextmanager
def reading() -> Iterator[None]:
    """A read the database cannot answer (down, unreachable, a connection lost mid-query) is a StoreError:
    the API answers 503 with Retry-After instead of 500, and the next read reconnects."""
    try:
        yield
    except (SQLAlchemyError, OSError) as exc:
        raise StoreError(f"the database is unavailable: {exc}") from exc


class Database:
    def __init__(self, url: str, sqlite_synchronous: str = "normal") -> None:
        self.url = url
        #: SQLite's PRAGMA synchronous in WAL mode: "normal" survives a killed process, "full" also a power loss
        self.sqlite_synchronous = sqlite_synchronous.upper()
        if self.sqlite_synchronous not in ("NORMAL", "FULL"):
            raise StoreError(f"sqlite_synchronous: expected normal or full, got {sqlite_synchronous!r}")
        self.engine: AsyncEngine | None = None
        #: SQLite only: the writer's connection, in autocommit mode (it issues BEGIN IMMEDIATE / COMMIT itself)
        self.sqlite_writer: sqlite3.Connection | None = None
        #: SQLite file only: a connection for verdict lookups on the event loop (WAL readers never wait for writers)
        self.sqlite_reader: sqlite3.Connection | None = None
        self.checkpoints: Checkpoints | None = None

    @property
    def backend(self) -> str:
        return make_url(self.url).get_backend_name()

    async def open(self) -> None:
        url = make_url(self.url)
        sqlite = url.get_backend_name() == "sqlite"
        kwargs: dict[str, Any] = {}
        if sqlite and url.database:
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 30}
        elif not sqlite:
            # pre-ping: a connection that died with the server is replaced, so the store reconnects by itself
            kwargs.update(pool_size=8, max_overflow=8, pool_pre_ping=True, pool_recycle=3600)
            # an unreachable server (not a refusing one) must not hold requests for the drivers' 60 s default
            timeout = _CONNECT_TIMEOUT_ARG.get(url.get_driver_name())
            if timeout is not None:
                kwargs["connect_args"] = {timeout: CONNECT_TIMEOUT}
        engine = create_async_engine(self.url, **kwargs)
        pragmas = functools.partial(sqlite_pragmas, synchronous=self.sqlite_synchronous)
        if sqlite:
            event.listen(engine.sync_engine, "connect", pragmas)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(upgrade)
            if sqlite:
                self.sqlite_writer = sqlite3.connect(url.database or ":memory:", timeout=30, isolation_level=None,
                                                     check_same_thread=False)
                pragmas(self.sqlite_writer, None)
                self.sqlite_writer.execute("PRAGMA busy_timeout=0")  # see sqlite_writes.begin
                if url.database and url.database != ":memory:":
                    self.checkpoints = Checkpoints(url.database, self.sqlite_writer)
                    self.sqlite_reader = sqlite3.connect(url.database, isolation_level=None)
                    # a WAL reader waits only while SQLite recovers the WAL index: rare and short
                    self.sqlite_reader.execute("PRAGMA busy_timeout=200")
        except Exception as exc:
            await engine.dispose()
            raise StoreError(f"store {url.render_as_string(hide_password=True)}: {exc}") from exc
        self.engine = engine

    async def close(self) -> None:
        if self.engine is not None:
            await self.engine.dispose()
        if self.checkpoints is not None:
            await asyncio.to_thread(self.checkpoints.stop)
        for conn in (self.sqlite_reader, self.sqlite_writer):
            if conn is not None:
                conn.close()


def sqlite_pragmas(dbapi_conn: Any, _record: Any, synchronous: str = "NORMAL") -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA synchronous={synchronous}")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
