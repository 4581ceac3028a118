"""Parked samples' rows: a sample waiting for a remote analysis survives a restart of mailowl.

A row is written once when the sample is parked (with the sample's bytes, so memory holds none of it
while it waits), updated once with the remote job's id, and deleted when the sample goes back into the
queue. Only parking uses this table; non-parked samples never touch it.

On SQLite each statement runs in a thread on a connection of its own: the store's group commit takes
the write lock on the event loop's thread, so a transaction that awaited the loop while holding the
lock would wait for it for ever (until the busy timeout).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from sqlalchemy import Connection, create_engine, delete, event, insert, select, update
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from mailowl.store.models import parked

T = TypeVar("T")


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
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database:
            self._sync = create_engine(f"sqlite:///{parsed.database}", connect_args={"timeout": 30})

            def pragmas(dbapi_conn: Any, _record: Any) -> None:  # as the store's own connections
                dbapi_conn.execute(f"PRAGMA synchronous = {synchronous}")

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
        statement = insert(parked).values(owner=owner,
            identity=identity, job_ids=",".join(map(str, job_ids)), analyzer=analyzer, data_type=data_type,
            submitted_at=submitted_at, deadline=deadline, filename=filename, type_declared=type_declared,
            content_disposition=content_disposition, reports=orjson.dumps(reports).decode(), content=content)
        return await self._run(lambda conn: int(conn.execute(statement).inserted_primary_key[0]))  # type: ignore[index]

    async def set_remote_job(self, row_id: int, remote_job: str) -> None:
        statement = update(parked).where(parked.c.id == row_id).values(remote_job=remote_job)
        await self._run(lambda conn: conn.execute(statement))

    async def set_job_ids(self, row_id: int, job_ids: list[int]) -> None:
        """The jobs waiting for the sample, duplicates that joined after it was parked included."""
        statement = update(parked).where(parked.c.id == row_id).values(job_ids=",".join(map(str, job_ids)))
        await self._run(lambda conn: conn.execute(statement))

    async def remove(self, row_id: int) -> None:
        statement = delete(parked).where(parked.c.id == row_id)
        await self._run(lambda conn: conn.execute(statement))

    async def take(self, row_id: int) -> bytes | None:
        """The sample's bytes, deleting its row (one transaction)."""
        query = select(parked.c.content).where(parked.c.id == row_id)
        statement = delete(parked).where(parked.c.id == row_id)

        def take(conn: Connection) -> Any:
            value = conn.execute(query).scalar()
            conn.execute(statement)
            return value

        value = await self._run(take)
        return bytes(value) if value is not None else None

    async def content(self, row_id: int) -> bytes | None:
        statement = select(parked.c.content).where(parked.c.id == row_id)
        value = await self._run(lambda conn: conn.execute(statement).scalar())
        return bytes(value) if value is not None else None

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


def _ids(text: str) -> list[int]:
    return [int(j) for j in text.split(",") if j]


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
