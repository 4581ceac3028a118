"""The store: SQLAlchemy 2 async on SQLite (WAL), MariaDB or PostgreSQL, as one object for its callers.

Each part does one job; this class only wires them together and keeps the callers' interface:

- ``database.py``: the engine, and SQLite's plain connections for the hot paths;
- ``writer.py``: group commit, which also hands out job ids (an id exists once its row is committed);
- ``job_repository.py``: recent jobs in memory, the rest from the table, purge, abandoned runs;
- ``verdicts.py``: the verdict cache the ``known`` rule reads;
- ``messages.py``: message records (typed ``MessageRecord``);
- ``parked.py``: samples waiting for Cortex;
- ``work.py``: cluster mode (MariaDB, PostgreSQL): which instance analyses what, heartbeats, take-over.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from mailowl.store.database import Database, StoreError
from mailowl.store.job_repository import JobRepository
from mailowl.store.jobs import Job
from mailowl.store.journal import KnownReport
from mailowl.store.messages import MessageRecord, MessageRepository
from mailowl.store.parked import ParkedTable
from mailowl.store.rows import compact
from mailowl.store.runs import run_name
from mailowl.store.verdicts import VerdictCache
from mailowl.store.work import Claim, Finish, WorkQueue
from mailowl.store.writer import GroupCommit

__all__ = ["Store", "StoreError"]


class Store:
    def __init__(self, url: str, max_age: int = 0, memory_jobs: int = 10_000, purge_min_age: int = 3600,
                 clock: Callable[[], datetime] | None = None, sqlite_synchronous: str = "normal",
                 lease: float = 15.0) -> None:
        self.url = url
        self.db = Database(url, sqlite_synchronous)
        #: several instances may share this database: work and verdicts go through it (store/work.py)
        self.cluster = self.db.backend != "sqlite"
        self.max_age = max_age
        self.purge_min_age = purge_min_age
        self.clock = clock or _utcnow
        self.memory_jobs = memory_jobs
        #: who we are in the jobs' ``run`` column
        self.run = run_name()
        self.jobs = JobRepository(self.db, memory_jobs, purge_min_age, self.clock)
        self.messages = MessageRepository()
        self.work = WorkQueue(self.db, self.run, lease)
        # the parts that need the event loop are made in open()
        self._writer: GroupCommit | None = None
        self._verdicts: VerdictCache | None = None

    @property
    def engine(self) -> AsyncEngine | None:
        return self.db.engine

    @property
    def sqlite_synchronous(self) -> str:
        return self.db.sqlite_synchronous

    # life cycle -----------------------------------------------------------------------------------------
    async def open(self) -> None:
        await self.db.open()
        assert self.db.engine is not None
        #: samples parked while Cortex analyses them (core/parking.py)
        self.parked = ParkedTable(self.url, self.db.engine, self.db.sqlite_synchronous)
        self._verdicts = VerdictCache(self.db, self.memory_jobs, self.max_age, self.clock, shared=self.cluster)
        self._writer = GroupCommit(self.db, self.run, self.jobs.stored, self._verdicts.written)
        self._writer.start()
        self._verdicts.start()

    async def close(self) -> None:
        for part in (self._writer, self._verdicts):
            if part is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await part.close()
        if self.db.engine is not None:
            self.parked.close()
        await self.db.close()

    @property
    def writer(self) -> GroupCommit:
        if self._writer is None:
            raise StoreError("the store is not open")
        return self._writer

    @property
    def verdicts(self) -> VerdictCache:
        if self._verdicts is None:
            raise StoreError("the store is not open")
        return self._verdicts

    # jobs -------------------------------------------------------------------------------------------------
    def add_job(self, facts: dict[str, Any], claim: Claim | None = None) -> Job:
        """A pending job without an id yet: its row goes into the next group commit, which gives it its id
        (and writes its cluster-mode ``claim``). Await ``committed(job)`` before telling anyone about the job."""
        assert self._writer is not None
        return self._writer.add_job(facts, self.clock(), claim)

    def finish_work(self, item: Finish) -> None:
        """Cluster mode: the verdict of a claimed key, for its jobs on every instance."""
        self.writer.finish(item)

    async def committed(self, job: Job) -> None:
        """Wait until the job's row is committed and its id assigned; raises StoreError if it could not be."""
        if job._commit is not None:
            await asyncio.shield(job._commit)

    async def new_job(self, facts: dict[str, Any]) -> Job:
        """A pending job whose row is committed: its id is durable and never handed out again."""
        job = self.add_job(facts)
        await self.committed(job)
        return job

    def job_finished(self, job: Job, covered: bool = False) -> None:
        """``covered``: a cluster-mode finish of its key writes the verdict into its committed row."""
        compact(job)
        assert self._writer is not None and self._verdicts is not None
        self._verdicts.job_finished(job)
        if not (covered and job.id > 0):
            self._writer.job_finished(job)

    async def get_job(self, job_id: int) -> Job | None:
        """The job, or None if it never existed or was purged."""
        return await self.jobs.get(job_id)

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        await self.writer.flush()

    # messages ---------------------------------------------------------------------------------------------
    def record_message(self, record: MessageRecord | Mapping[str, Any]) -> None:
        """Queue a decided message (see mailowl.mail.policy) for writing."""
        if not isinstance(record, MessageRecord):
            # tests/test_web_store.py still builds dicts (the web work owns it): converted once, here
            record = MessageRecord.from_mapping(record)
        self.messages.remember(record)
        self.writer.add_message(record)

    async def get_message(self, support_id: str) -> MessageRecord | None:
        return await self.messages.get(self.db.engine, support_id)

    # verdict cache --------------------------------------------------------------------------------------
    def journal_now(self, identity: str) -> KnownReport | None:
        """The journal if it can be had without the database, else None."""
        assert self._verdicts is not None
        return self._verdicts.journal_now(identity)

    async def journal(self, identity: str) -> KnownReport:
        """Earlier finished, non-failed verdicts for an identity, no older than max_age."""
        return await self.verdicts.journal(identity)

    # maintenance ----------------------------------------------------------------------------------------
    async def purge(self, older_than: int) -> int:
        """Delete finished jobs created more than ``older_than`` seconds ago, in batches; returns how many."""
        deleted = await self.jobs.purge(older_than)
        self.verdicts.clear()
        return deleted

    async def abandon_pending(self) -> int:
        """Mark failed the jobs left pending by a run that died (see JobRepository.abandon_pending)."""
        # parked samples' jobs are not lost: the next start resumes tracking them (core/parking.py)
        return await self.jobs.abandon_pending(self.run, await self.parked.job_ids(), self.clock(), self.cluster)


def _utcnow() -> datetime:
    return datetime.now(UTC)
