"""The store: SQLAlchemy 2 async on SQLite (WAL), MariaDB or PostgreSQL.

Writes use group commit: a single writer task commits at once when it is idle, and everything queued
while a commit is in flight goes into the next one, so 16 clients' jobs cost one commit, not 32. A new
job's id comes from the database (autoincrement / sequence, via INSERT ... RETURNING) and exists only
once the commit carrying the row is done: an acknowledged id is durable and never handed out again. Report and verdict lookups are answered from
memory when possible and otherwise batched into one ``IN (...)`` query per round.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import sqlite3
import sys
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, Table, and_, bindparam, delete, event, exists, or_, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from mailowl.results import Result, RuleResult
from mailowl.store.bloom import IdentityBloom
from mailowl.store.checkpoint import Checkpoints
from mailowl.store.jobs import DONE, PENDING, Job
from mailowl.store.journal import JournalEntry, KnownReport, append_compact
from mailowl.store.migrate import upgrade
from mailowl.store.models import jobs, messages, samples
from mailowl.store.parked import ParkedTable

log = logging.getLogger(__name__)

_FACT_COLUMNS = ("identity", "sha256", "sha1", "md5", "size", "filename", "type_declared",
                 "content_disposition", "file_extension", "type_by_content", "type_by_name")


_GATHER_TURNS = 4
#: seconds the writer tries to get SQLite's write lock before the commit fails
_SQLITE_LOCK_WAIT = 30.0


class StoreError(RuntimeError):
    pass


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class _Lru(OrderedDict[Any, Any]):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


class Store:
    def __init__(self, url: str, max_age: int = 0, memory_jobs: int = 10_000, purge_min_age: int = 3600,
                 clock: Callable[[], datetime] | None = None, sqlite_synchronous: str = "normal") -> None:
        self.url = url
        #: SQLite's PRAGMA synchronous in WAL mode: "normal" survives a killed process, "full" also a power loss
        self.sqlite_synchronous = sqlite_synchronous.upper()
        if self.sqlite_synchronous not in ("NORMAL", "FULL"):
            raise StoreError(f"sqlite_synchronous: expected normal or full, got {sqlite_synchronous!r}")
        self.max_age = max_age
        #: `db purge` never deletes jobs younger than this; memory answers only for jobs younger than half of it
        self.purge_min_age = purge_min_age
        self.clock = clock or _utcnow
        self.engine: AsyncEngine | None = None
        self._jobs: _Lru = _Lru(memory_jobs)
        self._journals: _Lru = _Lru(memory_jobs)
        #: who we are in the jobs' ``run`` column
        self.run = _run_name()
        #: jobs waiting for the next group commit, and the future that commit resolves
        self._inserts: list[Job] = []
        self._commit: asyncio.Future[None] | None = None
        #: finished jobs whose row exists: their state is written by the next commit
        self._finished: dict[int, Job] = {}
        #: jobs that finished while the commit carrying their row was in flight
        self._late: list[Job] = []
        self._writing = False
        self._messages: list[dict[str, Any]] = []
        self._recent_messages: _Lru = _Lru(10_000)
        self._lookups: dict[str, asyncio.Future[KnownReport]] = {}
        self._wake = asyncio.Event()
        self._flushed = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._lookup_wake = asyncio.Event()
        self._closing = False
        #: identities with a usable verdict in the store; None means always ask the database
        self._seen: IdentityBloom | None = None
        #: SQLite only: the writer's own plain connection (a group commit is a few driver calls)
        self._sqlite: sqlite3.Connection | None = None
        self._checkpoints: Checkpoints | None = None

    # life cycle -----------------------------------------------------------------------------------------
    async def open(self) -> None:
        url = make_url(self.url)
        kwargs: dict[str, Any] = {}
        if url.get_backend_name() == "sqlite" and url.database:
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs.update(pool_size=8, max_overflow=8, pool_pre_ping=True, pool_recycle=3600)
        engine = create_async_engine(self.url, **kwargs)
        if url.get_backend_name() == "sqlite":
            pragmas = functools.partial(_sqlite_pragmas, synchronous=self.sqlite_synchronous)
            event.listen(engine.sync_engine, "connect", pragmas)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(upgrade)
            if url.get_backend_name() == "sqlite":
                # autocommit mode: the writer issues BEGIN IMMEDIATE / COMMIT itself
                self._sqlite = sqlite3.connect(url.database or ":memory:", timeout=30, isolation_level=None,
                                               check_same_thread=False)
                pragmas(self._sqlite, None)
                self._sqlite.execute("PRAGMA busy_timeout=0")  # see _begin_sqlite
                if url.database and url.database != ":memory:":
                    self._checkpoints = Checkpoints(url.database, self._sqlite)
        except Exception as exc:
            await engine.dispose()
            raise StoreError(f"store {url.render_as_string(hide_password=True)}: {exc}") from exc
        self.engine = engine
        #: samples parked while Cortex analyses them (core/parking.py)
        self.parked = ParkedTable(self.url, engine, self.sqlite_synchronous)
        await self._load_seen()
        self._writer = asyncio.create_task(self._write_loop(), name="store-writer")
        self._reader = asyncio.create_task(self._lookup_loop(), name="store-reader")

    async def _load_seen(self) -> None:
        assert self.engine is not None
        seen = IdentityBloom()
        async with self.engine.connect() as conn:
            rows = await conn.stream(select(jobs.c.identity).where(jobs.c.state == DONE,
                                                                   jobs.c.result != Result.failed.name))
            async for (identity,) in rows:
                seen.add(identity)
        self._seen = seen

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        self._lookup_wake.set()
        for task in (self._writer, self._reader):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.engine is not None:
            self.parked.close()
            await self.engine.dispose()
        if self._checkpoints is not None:
            await asyncio.to_thread(self._checkpoints.stop)
        if self._sqlite is not None:
            self._sqlite.close()

    # jobs -------------------------------------------------------------------------------------------------
    def add_job(self, facts: dict[str, Any]) -> Job:
        """A pending job without an id yet: its row goes into the next group commit, which gives it its id.
        Await ``committed(job)`` before telling anyone about the job."""
        if self._commit is None:
            self._commit = asyncio.get_running_loop().create_future()
        job = Job(id=0, facts=facts, created_at=self.clock(), _commit=self._commit)
        self._inserts.append(job)
        self._wake.set()
        return job

    async def committed(self, job: Job) -> None:
        """Wait until the job's row is committed and its id assigned; raises StoreError if it could not be."""
        if job._commit is not None:
            await asyncio.shield(job._commit)

    async def new_job(self, facts: dict[str, Any]) -> Job:
        """A pending job whose row is committed: its id is durable and never handed out again."""
        job = self.add_job(facts)
        await self.committed(job)
        return job

    def job_finished(self, job: Job) -> None:
        _compact(job)
        if job.result is not None and job.result != Result.failed and job.finished_at is not None:
            if self._seen is not None and not _answered_by_cache(job):  # a cached answer's identity is in already
                self._seen.add(job.identity)
            journal = self._journals.get(job.identity)
            if journal is not None:
                append_compact(journal, JournalEntry(job.finished_at, job.result, job.reason or ""))
        if job.id > 0:
            self._finished[job.id] = job
        elif job.id == 0:
            # its insert is queued (it then carries the finished state) or in flight (an update follows)
            self._late.append(job)
        self._wake.set()

    async def get_job(self, job_id: int) -> Job | None:
        """The job, or None if it never existed or was purged."""
        if job_id <= 0:
            return None
        job = self._jobs.get(job_id)
        if job is not None and job.created_at >= self.clock() - timedelta(seconds=self.purge_min_age / 2):
            return job  # too young for any `db purge`, which may run in another process
        if self.engine is None:
            return job
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).mappings().first()
        if row is None:
            self._jobs.pop(job_id, None)  # purged
            return None
        return job if job is not None else _job_from_row(row)

    def record_message(self, record: dict[str, Any]) -> None:
        """Queue a decided message (see mailowl.mail.policy) for writing."""
        self._recent_messages.put(record["support_id"], record)
        self._messages.append(record)
        self._wake.set()

    async def get_message(self, support_id: str) -> dict[str, Any] | None:
        record = self._recent_messages.get(support_id)
        if record is not None:
            return dict(record)
        if self.engine is None:
            return None
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(messages).where(messages.c.support_id == support_id))).mappings().first()
        if row is None:
            return None
        record = dict(row)
        for key in ("rcpt_to", "parts", "findings"):
            record[key] = orjson.loads(record[key] or "[]")
        record["created_at"] = _aware(record["created_at"])
        return record

    def _queued(self) -> bool:
        return bool(self._inserts or self._finished or self._late or self._messages)

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        while self._queued() or self._writing:
            self._flushed.clear()
            self._wake.set()
            await self._flushed.wait()

    async def _write_loop(self) -> None:
        """Group commit: commit at once when idle; whatever arrives meanwhile goes into the next commit."""
        assert self.engine is not None
        while True:
            if not self._queued():
                self._flushed.set()
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._sqlite is not None and self.sqlite_synchronous == "NORMAL":
                await self._gather()
            inserts, commit, msgs = self._inserts, self._commit, self._messages
            self._inserts, self._commit, self._messages = [], None, []
            carried = {id(job) for job in inserts}
            updates = self._finished
            # a late job whose insert was in the last commit has its id now; one in this commit needs no update
            for job in self._late:
                if job.id > 0:
                    updates[job.id] = job
            self._finished, self._late = {}, [job for job in self._late if job.id == 0 and id(job) not in carried]
            self._writing = True
            try:
                await self._write(inserts, updates, msgs)
            except Exception as exc:
                log.exception("store write failed")
                failure = StoreError(f"cannot store the job: {exc}")
                for job in inserts:
                    job.id, job._commit = -1, None  # never stored: never finished into the store either
                if commit is not None and not commit.done():
                    commit.set_exception(failure)
                    commit.exception()  # a caller that went away must not leave "exception never retrieved"
                # rows that exist keep their newer states; messages are written later
                self._finished = updates | self._finished
                self._messages = msgs + self._messages
                if not self._closing:
                    await asyncio.sleep(1)
            else:
                if commit is not None and not commit.done():
                    commit.set_result(None)
            finally:
                self._writing = False
            self._flushed.set()
            if self._checkpoints is not None:
                self._checkpoints.committed(len(inserts) + len(updates) + len(msgs))

    async def _gather(self) -> None:
        """A commit on the event loop leaves no time in which the next group could form: let the requests
        that are already running reach their insert first (a few loop turns, never a fixed wait)."""
        queued = -1
        for _ in range(_GATHER_TURNS):
            if len(self._inserts) == queued:
                return  # a turn brought nothing new
            queued = len(self._inserts)
            await asyncio.sleep(0)

    async def _write(self, inserts: list[Job], updates: dict[int, Job], msgs: list[dict[str, Any]]) -> None:
        assert self.engine is not None
        message_rows = [_message_row(m) for m in msgs]
        new_rows = [_row(job, self.run) for job in inserts]
        sample_rows = [{"sha256": job.facts["sha256"], "identity": job.identity} for job in inserts
                       if not _answered_by_cache(job)]
        update_rows = [{**_row(job, None), "b_id": job_id} for job_id, job in updates.items()]
        if self._sqlite is not None:
            await self._begin_sqlite(self._sqlite)
        if self._sqlite is not None and self.sqlite_synchronous == "NORMAL":
            # a WAL commit without fsync takes well under a millisecond: done right here, it beats any thread
            # hand-off, which waits for the GIL behind the analysis threads
            ids = _write_sqlite(self._sqlite, new_rows, message_rows, update_rows, sample_rows)
        elif self._sqlite is not None:
            # fsync takes milliseconds: one thread hop for the whole transaction (aiosqlite hops per statement)
            ids = await asyncio.to_thread(_write_sqlite, self._sqlite, new_rows, message_rows, update_rows,
                                        sample_rows)
        else:
            async with self.engine.begin() as conn:
                ids = await conn.run_sync(_write_rows, new_rows, message_rows, update_rows, sample_rows)
        # committed: only now do the ids exist
        for job, job_id in zip(inserts, ids, strict=True):
            job.id, job._commit = job_id, None
            self._jobs.put(job_id, job)

    async def _begin_sqlite(self, db: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE without waiting on the event loop: the writer's connection has no busy timeout, so
        while another connection (a parked sample's row, `db purge`) holds the write lock the loop keeps
        serving and the writer tries again a moment later."""
        deadline = asyncio.get_running_loop().time() + _SQLITE_LOCK_WAIT
        pause = 0.001
        while True:
            try:
                db.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or asyncio.get_running_loop().time() > deadline:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)

    # verdict cache --------------------------------------------------------------------------------------
    def _cutoff(self) -> datetime | None:
        return self.clock() - timedelta(seconds=self.max_age) if self.max_age else None

    def _report(self, entries: list[JournalEntry]) -> KnownReport:
        cutoff = self._cutoff()
        if cutoff is not None and entries and entries[0].analysis_time < cutoff:
            entries[:] = [e for e in entries if e.analysis_time >= cutoff]  # old verdicts are forgotten for good
        return KnownReport(list(entries))

    def journal_now(self, identity: str) -> KnownReport | None:
        """The journal if it can be had without the database, else None."""
        entries = self._journals.get(identity)
        if entries is not None:
            self._journals.move_to_end(identity)
            return self._report(entries)
        if self._seen is not None and identity not in self._seen:
            self._journals.put(identity, [])
            return KnownReport()
        return None

    async def journal(self, identity: str) -> KnownReport:
        """Earlier finished, non-failed verdicts for an identity, no older than max_age."""
        report = self.journal_now(identity)
        if report is not None:
            return report
        future = self._lookups.get(identity)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._lookups[identity] = future
            self._lookup_wake.set()
        return await asyncio.shield(future)

    async def _lookup_loop(self) -> None:
        while not self._closing:
            await self._lookup_wake.wait()
            self._lookup_wake.clear()
            batch, self._lookups = self._lookups, {}
            if not batch:
                continue
            try:
                found = await self._fetch_journals(batch.keys())
            except Exception as exc:
                for future in batch.values():
                    if not future.done():
                        future.set_exception(StoreError(f"verdict lookup failed: {exc}"))
                continue
            for identity, future in batch.items():
                entries = found.get(identity, [])
                # an analysis that finished while we were reading is already in the live journal
                known = self._journals.get(identity)
                if known is not None:
                    entries = known
                else:
                    self._journals.put(identity, entries)
                if not future.done():
                    future.set_result(self._report(entries))

    async def _fetch_journals(self, identities: Iterable[str]) -> dict[str, list[JournalEntry]]:
        assert self.engine is not None
        ids = list(identities)
        found: dict[str, list[JournalEntry]] = {}
        async with self.engine.connect() as conn:
            for start in range(0, len(ids), 500):
                stmt = (select(jobs.c.identity, jobs.c.finished_at, jobs.c.result, jobs.c.reason)
                        .where(jobs.c.identity.in_(ids[start:start + 500]), jobs.c.state == DONE,
                               jobs.c.result != Result.failed.name)
                        .order_by(jobs.c.finished_at, jobs.c.id))
                for row in await conn.execute(stmt):
                    when = _aware(row.finished_at)
                    assert when is not None
                    append_compact(found.setdefault(row.identity, []),
                                   JournalEntry(when, Result[row.result], row.reason or ""))
        return found

    # maintenance ----------------------------------------------------------------------------------------
    async def purge(self, older_than: int) -> int:
        """Delete finished jobs created more than ``older_than`` seconds ago; returns how many."""
        assert self.engine is not None
        if older_than < self.purge_min_age:
            raise StoreError(f"cannot purge jobs younger than {self.purge_min_age} s ([store] purge_min_age): "
                             "a running server answers those from memory without asking the database")
        cutoff = self.clock() - timedelta(seconds=older_than)
        async with self.engine.begin() as conn:
            result = await conn.execute(delete(jobs).where(jobs.c.created_at < cutoff, jobs.c.state == DONE))
            await conn.execute(delete(messages).where(messages.c.created_at < cutoff))
            await conn.execute(delete(samples).where(~exists().where(jobs.c.identity == samples.c.identity)))
        self._journals.clear()
        await self._load_seen()
        for job_id in [j for j, job in self._jobs.items() if job.created_at < cutoff and job.finished]:
            del self._jobs[job_id]
        return int(result.rowcount or 0)

    async def abandon_pending(self) -> int:
        """Jobs left pending by a run that died can never finish: mark them failed so clients stop waiting.
        Pending jobs of a process that is still running (another `mailowl serve` on this database) are left
        alone; a run on another host counts as dead only once its pending job is a day old."""
        assert self.engine is not None
        now = self.clock()
        # parked samples' jobs are not lost: the next start resumes tracking them (core/parking.py)
        waiting = await self.parked.job_ids()
        async with self.engine.begin() as conn:
            runs = [r for (r,) in await conn.execute(select(jobs.c.run).where(jobs.c.state == PENDING).distinct())]
            here = [r for r in runs if r is not None and _on_this_host(r)]
            dead = [r for r in here if r != self.run and not _alive(r)]
            elsewhere = [r for r in runs if r is not None and r not in here]
            condition = or_(jobs.c.run.is_(None), jobs.c.run.in_(dead),
                            and_(jobs.c.run.in_(elsewhere), jobs.c.created_at < now - timedelta(days=1)))
            result = await conn.execute(
                update(jobs).where(jobs.c.state == PENDING, condition, jobs.c.id.not_in(waiting)).values(
                    state=DONE, result=Result.failed.name, finished_at=now,
                    reason="Analysis was interrupted: the mailowl process running it stopped"))
        return int(result.rowcount or 0)


_UPDATE = (update(jobs).where(jobs.c.id == bindparam("b_id"))
           .values(state=bindparam("state"), result=bindparam("result"), reason=bindparam("reason"),
                   rule_results=bindparam("rule_results"), finished_at=bindparam("finished_at"),
                   type_by_content=bindparam("type_by_content"), sha1=bindparam("sha1"), md5=bindparam("md5"),
                   file_extension=bindparam("file_extension"), type_by_name=bindparam("type_by_name"),
                   facts=bindparam("facts")))


def _write_rows(conn: Connection, new_rows: list[dict[str, Any]], message_rows: list[dict[str, Any]],
                update_rows: list[dict[str, Any]], sample_rows: list[dict[str, Any]]) -> list[int]:
    """One group commit's statements; the new jobs' ids in the order of ``new_rows``."""
    ids = _insert(conn, new_rows) if new_rows else []
    if sample_rows:
        conn.execute(_insert_samples(conn.dialect.name), sample_rows)
    if message_rows:
        conn.execute(messages.insert(), message_rows)
    if update_rows:
        conn.execute(_UPDATE, update_rows)
    return ids


# SQLite is the default store and its writer runs on the event loop: plain driver statements on one
# connection cost a fraction of SQLAlchemy's per-round and per-row work
_SQLITE = sqlite_dialect.dialect()


def _processors(table: Table) -> dict[str, Callable[[Any], Any]]:
    found: dict[str, Callable[[Any], Any]] = {}
    for column in table.columns:
        processor = column.type.dialect_impl(_SQLITE).bind_processor(_SQLITE)
        if processor is not None:
            found[column.name] = processor
    return found


_JOB_PROCESSORS = _processors(jobs)
_MESSAGE_PROCESSORS = _processors(messages)
_INSERT_COLUMNS = [c.name for c in jobs.columns if c.name != "id"]
_MESSAGE_COLUMNS = [c.name for c in messages.columns]
_UPDATE_COLUMNS = ["b_id", "state", "result", "reason", "rule_results", "finished_at", "type_by_content", "sha1",
                   "md5", "file_extension", "type_by_name", "facts"]
# UPDATE ... FROM (SQLite >= 3.33): the VALUES rows' columns are named column1, column2, ...
_SQLITE_UPDATE = ("UPDATE jobs SET "
                  + ", ".join(f"{c} = v.column{i}" for i, c in enumerate(_UPDATE_COLUMNS, 1) if c != "b_id")
                  + " FROM (VALUES {values}) AS v WHERE jobs.id = v.column1")
_SQLITE_ROWS_PER_UPDATE = 32766 // len(_UPDATE_COLUMNS)
_SQLITE_MESSAGE = (f"INSERT INTO messages ({', '.join(_MESSAGE_COLUMNS)}) "
                   f"VALUES ({', '.join('?' * len(_MESSAGE_COLUMNS))})")
_SQLITE_ROWS_PER_INSERT = 32766 // len(_INSERT_COLUMNS)


def _values(processors: dict[str, Callable[[Any], Any]], row: dict[str, Any], columns: list[str]) -> tuple[Any, ...]:
    return tuple(processors[c](row.get(c)) if c in processors and row.get(c) is not None else row.get(c)
                 for c in columns)


def _write_sqlite(db: sqlite3.Connection, new_rows: list[dict[str, Any]], message_rows: list[dict[str, Any]],
                  update_rows: list[dict[str, Any]], sample_rows: list[dict[str, Any]]) -> list[int]:
    """The group commit's statements and COMMIT, in the transaction ``Store._begin_sqlite`` opened."""
    try:
        ids = _insert_sqlite(db, new_rows) if new_rows else []
        if sample_rows:
            db.executemany("INSERT OR IGNORE INTO samples (sha256, identity) VALUES (?, ?)",
                           [(r["sha256"], r["identity"]) for r in sample_rows])
        if message_rows:
            db.executemany(_SQLITE_MESSAGE, [_values(_MESSAGE_PROCESSORS, r, _MESSAGE_COLUMNS) for r in message_rows])
        if update_rows:
            _update_sqlite(db, update_rows)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return ids


def _update_sqlite(db: sqlite3.Connection, rows: list[dict[str, Any]]) -> None:
    # one statement for all rows: every driver call gives up the GIL, and getting it back from busy analysis
    # threads is what a commit on the event loop mostly waits for
    for start in range(0, len(rows), _SQLITE_ROWS_PER_UPDATE):
        chunk = rows[start:start + _SQLITE_ROWS_PER_UPDATE]
        marks = "(" + ", ".join("?" * len(_UPDATE_COLUMNS)) + ")"
        params = tuple(value for row in chunk for value in _values(_JOB_PROCESSORS, row, _UPDATE_COLUMNS))
        db.execute(_SQLITE_UPDATE.format(values=", ".join([marks] * len(chunk))), params)


def _insert_sqlite(db: sqlite3.Connection, rows: list[dict[str, Any]]) -> list[int]:
    ids: list[int] = []
    for start in range(0, len(rows), _SQLITE_ROWS_PER_INSERT):
        chunk = rows[start:start + _SQLITE_ROWS_PER_INSERT]
        marks = "(" + ", ".join("?" * len(_INSERT_COLUMNS)) + ")"
        sql = (f"INSERT INTO jobs ({', '.join(_INSERT_COLUMNS)}) VALUES {', '.join([marks] * len(chunk))} "
               "RETURNING id, identity")
        params = tuple(value for row in chunk for value in _values(_JOB_PROCESSORS, row, _INSERT_COLUMNS))
        # SQLite inserts a multi-row VALUES in order and AUTOINCREMENT makes each id larger than the one
        # before, so sorting puts the ids in row order, whatever order RETURNING uses
        ids += _check(sorted(db.execute(sql, params).fetchall()), chunk)
    return ids


def _insert_samples(dialect: str) -> Any:
    """INSERT that skips a (sha256, identity) already there: another job of the identity, or another instance."""
    if dialect == "postgresql":
        return postgresql.insert(samples).on_conflict_do_nothing()
    if dialect in ("mysql", "mariadb"):
        return samples.insert().prefix_with("IGNORE")
    return sqlite_dialect.insert(samples).on_conflict_do_nothing()


def _answered_by_cache(job: Job) -> bool:
    """Finished by the verdict cache at the first rule: an earlier job of its identity wrote the samples row."""
    return bool(job.rules) and job.rules[0].rule == "known" and not job.rules[0].further_analysis


def _insert(conn: Connection, rows: list[dict[str, Any]]) -> list[int]:
    return _check(list(conn.execute(
        jobs.insert().returning(jobs.c.id, jobs.c.identity, sort_by_parameter_order=True), rows).all()), rows)


def _check(returned: list[Any], rows: list[dict[str, Any]]) -> list[int]:
    # a mismatch would hand one sample's id to another: refuse the whole commit instead
    if [identity for _, identity in returned] != [row["identity"] for row in rows]:
        raise StoreError(f"the database returned ids for {len(returned)} rows that do not match the "
                         f"{len(rows)} new jobs")
    return [int(job_id) for job_id, _ in returned]


_SHARED: dict[RuleResult, RuleResult] = {}
_SHARED_LIMIT = 20_000
_PLAIN_FACTS = ("type_declared", "content_disposition", "file_extension", "type_by_name", "type_by_content")


def _compact(job: Job) -> None:
    """Jobs stay in memory for quick answers: share what most of them have in common (per-rule results,
    reasons, type names) instead of keeping a copy per job."""
    if len(_SHARED) > _SHARED_LIMIT:
        _SHARED.clear()  # reasons that name sizes or files make many distinct results: start again
    job.rules = [_SHARED.setdefault(r, r) for r in job.rules]
    if job.reason is not None:
        job.reason = sys.intern(job.reason)
    facts = job.facts
    for key in _PLAIN_FACTS:
        value = facts.get(key)
        if isinstance(value, str):
            facts[key] = sys.intern(value)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _start_ticks(pid: int | str) -> str | None:
    """When the process started, in clock ticks since boot: with the pid, names one process for good."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _run_name() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()} {pid} {_start_ticks(pid) or uuid.uuid4().hex}"[:128]


def _on_this_host(run: str) -> bool:
    return run.rsplit(" ", 2)[0] == socket.gethostname()


def _alive(run: str) -> bool:
    _host, pid, ticks = run.rsplit(" ", 2)
    return pid.isdigit() and _start_ticks(pid) == ticks


def _sqlite_pragmas(dbapi_conn: Any, _record: Any, synchronous: str = "NORMAL") -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA synchronous={synchronous}")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


_FACT_LIMITS = [(k, getattr(jobs.c[k].type, "length", None) or 0) for k in _FACT_COLUMNS]


def _row(job: Job, run: str | None) -> dict[str, Any]:
    facts = job.facts
    row = {}
    for key, limit in _FACT_LIMITS:
        value = facts.get(key)
        # declared names and types come from senders: never let one overflow a column and stall writes
        if limit and isinstance(value, str) and len(value) > limit:
            value = value[:limit]
        row[key] = value
    row.update(
        state=job.state, result=job.result.name if job.result is not None else None,
        reason=job.reason, rule_results=orjson.dumps([r.as_dict() for r in job.rules]).decode() if job.rules else None,
        created_at=job.created_at, finished_at=job.finished_at, facts=job.rule_facts,
    )
    if run is not None:
        row["run"] = run
    return row


def _message_row(record: dict[str, Any]) -> dict[str, Any]:
    row = dict(record)
    for key in ("rcpt_to", "parts", "findings"):
        row[key] = orjson.dumps(row.get(key) or []).decode()
    for key in ("message_id", "mail_from"):
        limit = getattr(messages.c[key].type, "length", None)
        if limit and isinstance(row.get(key), str):
            row[key] = row[key][:limit]
    return row


def _job_from_row(row: Any) -> Job:
    facts = {k: row[k] for k in _FACT_COLUMNS}
    rules = [RuleResult(r["rule"], Result[r["result"]], r["reason"], True)
             for r in orjson.loads(row["rule_results"] or "[]")]
    created = _aware(row["created_at"])
    assert created is not None
    return Job(id=row["id"], facts=facts, created_at=created, state=row["state"],
               result=Result[row["result"]] if row["result"] else None, reason=row["reason"], rules=rules,
               finished_at=_aware(row["finished_at"]), rule_facts=row["facts"])
