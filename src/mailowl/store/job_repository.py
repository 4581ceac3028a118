"""Job rows: recent jobs from memory, the rest from the table; purging old ones; abandoning dead runs' jobs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, exists, literal_column, or_, select, update

from mailowl.results import Result
from mailowl.store.database import Database, StoreError, reading
from mailowl.store.jobs import DONE, PENDING, Job
from mailowl.store.lru import Lru
from mailowl.store.models import jobs, messages, samples, work
from mailowl.store.rows import job_from_row
from mailowl.store.runs import alive, on_this_host

#: rows per purge transaction: each holds the write lock (SQLite) or its row locks for milliseconds only
PURGE_BATCH = 5000


class JobRepository:
    def __init__(self, db: Database, size: int, purge_min_age: int, clock: Callable[[], datetime]) -> None:
        self.db = db
        #: `db purge` never deletes jobs younger than this; memory answers only for jobs younger than half of it
        self.purge_min_age = purge_min_age
        self.clock = clock
        self._jobs: Lru[int, Job] = Lru(size)

    def stored(self, job: Job) -> None:
        """The job's row is committed: keep it for quick answers."""
        self._jobs.put(job.id, job)

    async def get(self, job_id: int) -> Job | None:
        """The job, or None if it never existed or was purged."""
        if job_id <= 0:
            return None
        job = self._jobs.get(job_id)
        if job is not None and job.created_at >= self.clock() - timedelta(seconds=self.purge_min_age / 2):
            return job  # too young for any `db purge`, which may run in another process
        if self.db.engine is None:
            return job
        with reading():
            async with self.db.engine.connect() as conn:
                row = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).mappings().first()
        if row is None:
            self._jobs.pop(job_id, None)  # purged
            return None
        return job if job is not None else job_from_row(row)

    async def purge(self, older_than: int, batch: int = PURGE_BATCH) -> int:
        """Delete finished jobs (and message records) created more than ``older_than`` seconds ago; returns
        how many jobs. Batches of ``batch`` ids, each its own short transaction, with a pause as long as
        the batch took in between: the writers of a running server get the lock between two batches."""
        assert self.db.engine is not None
        if older_than < self.purge_min_age:
            raise StoreError(f"cannot purge jobs younger than {self.purge_min_age} s ([store] purge_min_age): "
                             "a running server answers those from memory without asking the database")
        cutoff = self.clock() - timedelta(seconds=older_than)
        engine = self.db.engine
        # the oldest first, by ix_jobs_created: each batch starts where the index's deleted part ends, with
        # no OFFSET, no sort and no scan of the newer jobs
        oldest = (select(jobs.c.id, jobs.c.sha256, jobs.c.identity).where(jobs.c.created_at < cutoff, jobs.c.state == DONE)
                  .order_by(jobs.c.created_at).limit(batch))
        deleted = 0
        while True:
            started = time.monotonic()
            async with engine.begin() as conn:
                rows = (await conn.execute(oldest)).all()
                if not rows:
                    break
                # keys first, then delete by key: MariaDB refuses LIMIT in an IN (...) subquery
                await conn.execute(delete(jobs).where(jobs.c.id.in_([job_id for job_id, _, _ in rows])))
                deleted += len(rows)
                # the search by hash must not find identities whose last job is gone; found by sha256, the
                # samples table's leading key column (identity alone is no index there: a scan per statement)
                hashes = sorted({sha256 for _, sha256, _ in rows})
                for start in range(0, len(hashes), 500):
                    await conn.execute(delete(samples).where(
                        samples.c.sha256.in_(hashes[start:start + 500]),
                        ~exists().where(jobs.c.identity == samples.c.identity)))
            await asyncio.sleep(time.monotonic() - started)
        deleted_messages = -1
        while deleted_messages != 0:
            started = time.monotonic()
            async with engine.begin() as conn:
                keys = [k for (k,) in await conn.execute(
                    select(messages.c.support_id).where(messages.c.created_at < cutoff).limit(batch))]
                deleted_messages = len(keys)
                if keys:
                    await conn.execute(delete(messages).where(messages.c.support_id.in_(keys)))
            await asyncio.sleep(time.monotonic() - started)
        for job_id in [j for j, job in self._jobs.items() if job.created_at < cutoff and job.finished]:
            del self._jobs[job_id]
        return deleted

    async def abandon_pending(self, run: str, waiting: list[int], now: datetime, cluster: bool = False) -> int:
        """Jobs left pending by a run that died can never finish: mark them failed so clients stop waiting.
        Pending jobs of a process that is still running (another `mailowl serve` on this database) are left
        alone; a run on another host counts as dead only once its pending job is a day old. ``waiting``:
        parked samples' jobs, which the next start resumes tracking (core/parking.py). In ``cluster`` mode a job
        whose sample has a work row is never abandoned: a live instance takes that row over (store/work.py)."""
        assert self.db.engine is not None
        # a literal, not a bound parameter: only then may SQLite use the partial index ix_jobs_pending
        pending = jobs.c.state == literal_column(f"'{PENDING}'")
        async with self.db.engine.begin() as conn:
            runs = [r for (r,) in await conn.execute(select(jobs.c.run).where(pending).distinct())]
            here = [r for r in runs if r is not None and on_this_host(r)]
            dead = [r for r in here if r != run and not alive(r)]
            elsewhere = [r for r in runs if r is not None and r not in here]
            condition = or_(jobs.c.run.is_(None), jobs.c.run.in_(dead),
                            and_(jobs.c.run.in_(elsewhere), jobs.c.created_at < now - timedelta(days=1)))
            if cluster:
                condition = and_(condition, ~exists().where(work.c.identity == jobs.c.identity))
            result = await conn.execute(
                update(jobs).where(pending, condition, jobs.c.id.not_in(waiting)).values(
                    state=DONE, result=Result.failed.name, finished_at=now,
                    reason="Analysis was interrupted: the mailowl process running it stopped"))
        return int(result.rowcount or 0)
