"""The verdict cache: earlier finished, non-failed verdicts by sample identity (what the ``known`` rule reads).

Journals of recently used identities are kept in memory; a miss is answered by the database, all misses
of one event-loop round in one ``IN (...)`` query on the identity index. There is no never-seen filter
any more (it was a Bloom filter loaded at start-up from every stored identity: start-up time grew with the
store, and another instance's verdicts never reached it). A sample whose identity is not in memory costs
one indexed lookup, which on SQLite runs on its own plain connection right on the event loop
(BENCHMARKS.md, "Big stores").

With several instances on one database (``shared``), memory would miss the other instances' verdicts (and
would keep saying "never seen" after another instance finished one), so nothing is kept: every lookup asks
the database (still one query per event-loop round), and only this instance's verdicts that are not
committed yet are added from memory (BENCHMARKS.md, "Cluster").
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.dialects import sqlite as sqlite_dialect

from mailowl.results import Result
from mailowl.store import postgres
from mailowl.store.database import Database, StoreError
from mailowl.store.gather import gather
from mailowl.store.jobs import DONE, Job
from mailowl.store.journal import JournalEntry, KnownReport, append_compact
from mailowl.store.lru import Lru
from mailowl.store.models import jobs
from mailowl.store.rows import aware

#: identities per lookup statement (bound parameters are limited on every backend)
_CHUNK = 500
_FAILED = Result.failed.name
_SQLITE_LOOKUP = ("SELECT identity, finished_at, result, reason FROM jobs WHERE identity IN ({marks}) "
                  f"AND state = '{DONE}' AND result != '{_FAILED}' ORDER BY finished_at, id")
#: built once: a statement built per lookup cost more than its execution's share of the CPU (its cache key
#: too); the identities are an expanding parameter
_LOOKUP = (select(jobs.c.identity, jobs.c.finished_at, jobs.c.result, jobs.c.reason)
           .where(jobs.c.identity.in_(bindparam("ids", expanding=True)), jobs.c.state == DONE,
                  jobs.c.result != _FAILED)
           .order_by(jobs.c.finished_at, jobs.c.id))
_SQLITE_TIME = jobs.c.finished_at.type.dialect_impl(sqlite_dialect.dialect()).result_processor(
    sqlite_dialect.dialect(), None)


class VerdictCache:
    def __init__(self, db: Database, size: int, max_age: int, clock: Callable[[], datetime],
                 shared: bool = False) -> None:
        self.db = db
        self.shared = shared
        #: shared: this instance's verdicts whose rows are not committed yet, by identity
        self._unwritten: dict[str, list[JournalEntry]] = {}
        self.max_age = max_age
        self.clock = clock
        self._journals: Lru[str, list[JournalEntry]] = Lru(size)
        self._lookups: dict[str, asyncio.Future[KnownReport]] = {}
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        #: PostgreSQL: the lookups' own connection (store/postgres.py)
        self._link = db.link() if db.postgres is not None else None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="store-reader")

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    def clear(self) -> None:
        self._journals.clear()

    def job_finished(self, job: Job) -> None:
        """A verdict to remember: usable at once, before its row is written."""
        if job.result is not None and job.result != Result.failed and job.finished_at is not None:
            if self.shared:
                append_compact(self._unwritten.setdefault(job.identity, []),
                               JournalEntry(job.finished_at, job.result, job.reason or ""))
                return
            journal = self._journals.get(job.identity)
            if journal is not None:
                append_compact(journal, JournalEntry(job.finished_at, job.result, job.reason or ""))

    def _report(self, entries: list[JournalEntry]) -> KnownReport:
        if self.max_age and entries:
            cutoff = self.clock() - timedelta(seconds=self.max_age)
            if entries[0].analysis_time < cutoff:
                entries[:] = [e for e in entries if e.analysis_time >= cutoff]  # old verdicts are forgotten for good
        return KnownReport(list(entries))

    def written(self, identities: Iterable[str]) -> None:
        """Those identities' verdicts are committed: the database has them now."""
        if self._unwritten:
            for identity in identities:
                self._unwritten.pop(identity, None)

    def journal_now(self, identity: str) -> KnownReport | None:
        """The journal if it can be had without the database, else None."""
        if self.shared:
            return None
        entries = self._journals.get(identity)
        if entries is None:
            return None
        self._journals.move_to_end(identity)
        return self._report(entries)

    async def journal(self, identity: str) -> KnownReport:
        """Earlier finished, non-failed verdicts for an identity, no older than max_age."""
        report = self.journal_now(identity)
        if report is not None:
            return report
        future = self._lookups.get(identity)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._lookups[identity] = future
            self._wake.set()
        return await asyncio.shield(future)

    async def _loop(self) -> None:
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            if self._link is not None:
                await gather(lambda: len(self._lookups))
            batch, self._lookups = self._lookups, {}
            if not batch:
                continue
            try:
                found = await self._fetch(batch.keys())
            except Exception as exc:
                for future in batch.values():
                    if not future.done():
                        future.set_exception(StoreError(f"verdict lookup failed: {exc}"))
                continue
            for identity, future in batch.items():
                entries = found.get(identity, [])
                if self.shared:
                    for entry in self._unwritten.get(identity, ()):
                        append_compact(entries, entry)
                    if not future.done():
                        future.set_result(self._report(entries))
                    continue
                # an analysis that finished while we were reading is already in the live journal
                known = self._journals.get(identity)
                if known is not None:
                    entries = known
                else:
                    self._journals.put(identity, entries)
                if not future.done():
                    future.set_result(self._report(entries))

    async def _fetch(self, identities: Iterable[str]) -> dict[str, list[JournalEntry]]:
        ids = list(identities)
        found: dict[str, list[JournalEntry]] = {}
        if self.db.sqlite_reader is not None:
            for start in range(0, len(ids), _CHUNK):
                _fetch_sqlite(self.db.sqlite_reader, ids[start:start + _CHUNK], found)
            return found
        if self._link is not None:
            for row in await postgres.lookup(self._link, ids):
                _add(found, row[0], row[1], row[2], row[3])
            return found
        async with self.db.read() as conn:
            for start in range(0, len(ids), _CHUNK):
                for row in await conn.execute(_LOOKUP, {"ids": ids[start:start + _CHUNK]}):
                    _add(found, row.identity, row.finished_at, row.result, row.reason)
        return found


def _fetch_sqlite(db: sqlite3.Connection, ids: list[str], found: dict[str, list[JournalEntry]]) -> None:
    # an indexed read in WAL mode never waits for a writer: cheaper here than a hop to aiosqlite's thread
    sql = _SQLITE_LOOKUP.format(marks=", ".join("?" * len(ids)))
    for identity, finished_at, result, reason in db.execute(sql, ids):
        _add(found, identity, _SQLITE_TIME(finished_at) if _SQLITE_TIME else finished_at, result, reason)


def _add(found: dict[str, list[JournalEntry]], identity: str, finished_at: Any, result: str,
         reason: str | None) -> None:
    when = aware(finished_at)
    assert when is not None
    append_compact(found.setdefault(identity, []), JournalEntry(when, Result[result], reason or ""))
