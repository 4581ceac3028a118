"""Parked samples' rows: a sample waiting for a remote analysis survives a restart of mailowl.

A row is written once when the sample is parked (with the sample's bytes, so memory holds none of it
while it waits), updated once with the remote job's id, and deleted when the sample goes back into the
queue. Only parking uses this table; non-parked samples never touch it. Each of those four steps of
samples parked or answered within 20 ms of each other shares one transaction (``_Gathered``): a thousand
samples parked or answered in a few seconds cost some hundred transactions, not thousands.

On SQLite each statement runs in a thread on a connection of its own: the store's group commit takes
the write lock on the event loop's thread, so a transaction that awaited the loop while holding the
lock would wait for it for ever (until the busy timeout).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, Generic, TypeVar

import orjson
from sqlalchemy import Connection, bindparam, create_engine, delete, event, insert, select, update
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from mailowl.store.database import StoreError
from mailowl.store.models import parked

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")
R = TypeVar("R")
#: rows read or deleted in one transaction at most, and how long a row waits for others to join it (seconds)
_BATCH = 500
_GATHER = 0.02


@dataclass(slots=True)
class ParkedRow:
    id: int
    identity: str
    job_ids: list[int]
    analyzer: str
    data_type: str
    remote_job: str | None
    submitted_at: datetime
    deadline: datetime
    filename: str | None
    type_declared: str | None
    content_disposition: str | None
    reports: dict[str, Any]


class ParkedTable:
    def __init__(self, url: str, engine: AsyncEngine, synchronous: str = "NORMAL") -> None:
        self.engine = engine
        self._sync: Engine | None = None
        self._lock = threading.Lock()
        self._reads: _Gathered[int, None, bytes] = _Gathered(self._run, _read_rows)
        self._deletes: _Gathered[int, None, None] = _Gathered(self._run, _delete_rows)
        self._inserts: _Gathered[int, dict[str, Any], int] = _Gathered(self._run, _insert_rows)
        self._remote_jobs: _Gathered[int, str, None] = _Gathered(self._run, _set_remote_jobs)
        self._keys = itertools.count()
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database:
            self._sync = create_engine(f"sqlite:///{parsed.database}", connect_args={"timeout": 30})

            def pragmas(dbapi_conn: Any, _record: Any) -> None:  # as the store's own connections
                dbapi_conn.execute(f"PRAGMA synchronous = {synchronous}")
                # the store's checkpoint thread copies the WAL back (store/checkpoint.py); left on, a commit
                # here would do it itself whenever the writer has filled the WAL, in the unparking's time
                dbapi_conn.execute("PRAGMA wal_autocheckpoint = 0")

            event.listen(self._sync, "connect", pragmas)

    async def _run(self, fn: Callable[[Connection], T]) -> T:
        if self._sync is not None:
            sync = self._sync

            def in_thread() -> T:
                with self._lock, sync.begin() as conn:
                    return fn(conn)

            return await asyncio.to_thread(in_thread)
        async with self.engine.begin() as conn:
            return await conn.run_sync(fn)

    def close(self) -> None:
        if self._sync is not None:
            self._sync.dispose()

    async def add(self, identity: str, job_ids: list[int], analyzer: str, data_type: str, submitted_at: datetime,
                  deadline: datetime, filename: str | None, type_declared: str | None,
                  content_disposition: str | None, reports: dict[str, Any], content: bytes,
                  owner: str | None = None) -> int:
        """The new row's id. Rows added within _GATHER of each other share a transaction."""
        row = {"owner": owner, "identity": identity, "job_ids": ",".join(map(str, job_ids)), "analyzer": analyzer,
               "data_type": data_type, "submitted_at": submitted_at, "deadline": deadline, "filename": filename,
               "type_declared": type_declared, "content_disposition": content_disposition,
               "reports": orjson.dumps(reports).decode(), "content": content}
        row_id = await self._inserts.ask(next(self._keys), row)
        assert row_id is not None
        return row_id

    async def set_remote_job(self, row_id: int, remote_job: str) -> None:
        await self._remote_jobs.ask(row_id, remote_job)

    async def set_job_ids(self, row_id: int, job_ids: list[int]) -> None:
        """The jobs waiting for the sample, duplicates that joined after it was parked included."""
        statement = update(parked).where(parked.c.id == row_id).values(job_ids=",".join(map(str, job_ids)))
        await self._run(lambda conn: conn.execute(statement))

    async def remove(self, row_id: int) -> None:
        statement = delete(parked).where(parked.c.id == row_id)
        await self._run(lambda conn: conn.execute(statement))

    async def content(self, row_id: int) -> bytes | None:
        """The sample's bytes (None if the row is gone), read together with the other rows asked for within
        _GATHER: a thousand Cortex answers in a few seconds cost some hundred transactions, not a thousand."""
        return await self._reads.ask(row_id, None)

    async def discard(self, row_id: int) -> None:
        """Delete a row whose sample is back in the queue, together with the others deleted within _GATHER."""
        await self._deletes.ask(row_id, None)

    async def all_rows(self, ids: list[int] | None = None) -> list[ParkedRow]:
        """Every row (or those of ``ids``), without the samples' bytes."""
        statement = select(*[c for c in parked.c if c.name != "content"]).order_by(parked.c.id)
        if ids is not None:
            statement = statement.where(parked.c.id.in_(ids))
        rows = await self._run(lambda conn: conn.execute(statement).mappings().all())
        return [ParkedRow(r["id"], r["identity"], _ids(r["job_ids"]), r["analyzer"], r["data_type"], r["remote_job"],
                          _aware(r["submitted_at"]), _aware(r["deadline"]), r["filename"], r["type_declared"],
                          r["content_disposition"], orjson.loads(r["reports"]))
                for r in rows]

    async def job_ids(self) -> list[int]:
        statement = select(parked.c.job_ids)
        rows = await self._run(lambda conn: conn.execute(statement).scalars().all())
        return [i for ids in rows for i in _ids(ids)]


class _Gathered(Generic[K, V, R]):
    """One transaction for many rows: rows asked for within _GATHER of each other, or while a transaction
    runs, go into one transaction (at most _BATCH rows each): ``run`` runs ``statement``, which gets each
    row's key and value and answers by key."""

    def __init__(self, run: Callable[[Callable[[Connection], dict[K, R]]], Awaitable[dict[K, R]]],
                 statement: Callable[[dict[K, V], Connection], dict[K, R]]) -> None:
        self._run = run
        self._statement = statement
        self._waiting: dict[K, tuple[V, asyncio.Future[R | None]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def ask(self, key: K, value: V) -> R | None:
        loop = asyncio.get_running_loop()
        asked = self._waiting.get(key)
        future = asked[1] if asked is not None else loop.create_future()
        self._waiting[key] = (value, future)
        if self._task is None:
            self._task = loop.create_task(self._loop())
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # the caller is gone (shutdown): a row not yet in a transaction is left alone
            if self._waiting.get(key, (None, None))[1] is future:
                del self._waiting[key]
            raise

    async def _loop(self) -> None:
        try:
            await asyncio.sleep(_GATHER)
            while self._waiting:
                batch = {key: self._waiting.pop(key) for key in list(self._waiting)[:_BATCH]}
                try:
                    found = await self._run(partial(self._statement, {key: value for key, (value, _) in batch.items()}))
                except BaseException as exc:
                    for _, future in batch.values():
                        if not future.done():
                            future.set_exception(exc if isinstance(exc, Exception) else StoreError("interrupted"))
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for key, (_, future) in batch.items():
                    if not future.done():
                        future.set_result(found.get(key))
        finally:
            self._task = None
            for _, future in self._waiting.values():
                if not future.done():
                    future.set_exception(StoreError("interrupted"))
            self._waiting.clear()


def _read_rows(batch: dict[int, None], conn: Connection) -> dict[int, bytes]:
    return {row.id: bytes(row.content)
            for row in conn.execute(select(parked.c.id, parked.c.content).where(parked.c.id.in_(list(batch))))}


def _delete_rows(batch: dict[int, None], conn: Connection) -> dict[int, None]:
    conn.execute(delete(parked).where(parked.c.id.in_(list(batch))))
    return {}


def _insert_rows(batch: dict[int, dict[str, Any]], conn: Connection) -> dict[int, int]:
    # one statement each: every row's id is needed, and inserting many with RETURNING differs by backend
    return {key: int(conn.execute(insert(parked).values(**row)).inserted_primary_key[0])  # type: ignore[index]
            for key, row in batch.items()}


def _set_remote_jobs(batch: dict[int, str], conn: Connection) -> dict[int, None]:
    conn.execute(update(parked).where(parked.c.id == bindparam("row")).values(remote_job=bindparam("job")),
                 [{"row": row, "job": job} for row, job in batch.items()])
    return {}


def _ids(text: str) -> list[int]:
    return [int(j) for j in text.split(",") if j]


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
