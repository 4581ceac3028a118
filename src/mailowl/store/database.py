"""The connection to the store's database: the SQLAlchemy engine every part uses, and on SQLite the plain
``sqlite3`` connections that the hot paths use on the event loop (a driver call there costs a fraction of
an async engine's thread hop, which waits for the GIL behind the analysis threads)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from mailowl.store.checkpoint import Checkpoints
from mailowl.store.link import PG_SETTINGS, Link
from mailowl.store.migrate import upgrade

#: seconds to connect to MariaDB / PostgreSQL before the attempt counts as an outage
CONNECT_TIMEOUT = 5
#: seconds a pooled connection may sit idle and still be used without a ping first
IDLE_PING = 1.0
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


#: a transaction the server aborted to break a deadlock, or for a serialization conflict: PostgreSQL's
#: SQLSTATEs, MariaDB's error numbers (1213 deadlock; a lock wait timeout, 1205, is not: it took long already)
_CONFLICT_STATES = frozenset({"40P01", "40001"})
_CONFLICT_ERRORS = frozenset({1213})


def lost_conflict(exc: BaseException) -> bool:
    """The transaction was chosen as a deadlock's victim (or lost a serialization conflict): running it
    again at once succeeds, the other transaction having gone on. ``exc`` is SQLAlchemy's (the driver's
    error in ``orig``) or asyncpg's own."""
    orig = getattr(exc, "orig", exc)
    if getattr(orig, "sqlstate", None) in _CONFLICT_STATES:
        return True
    args: tuple[Any, ...] = getattr(orig, "args", ())
    return bool(args) and args[0] in _CONFLICT_ERRORS


def _ping_when_idle(engine: AsyncEngine) -> None:
    """A pooled connection that sat idle longer than IDLE_PING is pinged before use, and replaced if the
    server has gone away meanwhile (a restart), so the store reconnects by itself. SQLAlchemy's
    pool_pre_ping would ping before every use: a round trip per transaction, about a tenth of the event
    loop under load (BENCHMARKS.md, "Cluster mode"). A connection busy a moment ago that dies with the
    server fails its transaction once; that error invalidates the whole pool."""

    @event.listens_for(engine.sync_engine, "checkin")
    def checkin(dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < IDLE_PING:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # the pool drops this connection and checks out another
            raise DisconnectionError(f"the database connection went away while idle: {exc}") from exc


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
        #: PostgreSQL only: asyncpg's connect arguments for the hot paths' own connections (store/postgres.py)
        self.postgres: dict[str, Any] | None = None
        self._links: list[Link] = []

    @functools.cached_property
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
            kwargs.update(pool_size=8, max_overflow=8, pool_recycle=3600)
            # an unreachable server (not a refusing one) must not hold requests for the drivers' 60 s default
            timeout = _CONNECT_TIMEOUT_ARG.get(url.get_driver_name())
            if timeout is not None:
                kwargs["connect_args"] = {timeout: CONNECT_TIMEOUT}
            if url.get_driver_name() == "asyncpg":
                kwargs["connect_args"]["server_settings"] = PG_SETTINGS
        engine = create_async_engine(self.url, **kwargs)
        pragmas = functools.partial(sqlite_pragmas, synchronous=self.sqlite_synchronous)
        if sqlite:
            event.listen(engine.sync_engine, "connect", pragmas)
        else:
            _ping_when_idle(engine)
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
        if url.get_backend_name() == "postgresql" and url.get_driver_name() == "asyncpg":
            args, connect = engine.dialect.create_connect_args(url)
            assert not args
            self.postgres = dict(connect)

    def link(self) -> Link:
        """PostgreSQL: a connection of its own for a task that runs one statement at a time."""
        assert self.postgres is not None
        link = Link(self.postgres, CONNECT_TIMEOUT, IDLE_PING)
        self._links.append(link)
        return link

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads outside any transaction. On PostgreSQL in autocommit mode: no BEGIN and
        no ROLLBACK around the query, two round trips fewer (asyncpg switches it without asking the
        server); MariaDB would ask the server to switch, so it reads as before."""
        assert self.engine is not None
        async with self.engine.connect() as conn:
            if self.backend == "postgresql":
                await conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn

    async def close(self) -> None:
        for link in self._links:
            with contextlib.suppress(Exception):  # a server that is gone already has nothing to close
                await link.close()
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
