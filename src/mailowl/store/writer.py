"""Group commit, and with it job ids.

A single writer task commits at once when it is idle, and everything queued while a commit is in flight
goes into the next one, so 16 clients' jobs cost one commit, not 32. A new job's id comes from the
database (autoincrement / sequence, via INSERT ... RETURNING) and exists only once the commit carrying its
row is done: an acknowledged id is durable and never handed out again (docs/durability.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import asyncpg
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from mailowl.store import postgres, sqlite_writes
from mailowl.store.database import Database, StoreError, lost_conflict
from mailowl.store.gather import gather
from mailowl.store.jobs import Job
from mailowl.store.messages import MessageRecord
from mailowl.store.models import jobs, messages, samples
from mailowl.store.rows import answered_by_cache, check_ids, job_row
from mailowl.store.sql import insert_ignoring_duplicates, update_job
from mailowl.store.work import Claim, Finish, write_claims, write_finishes

log = logging.getLogger(__name__)

#: seconds between two attempts to commit while the database fails, doubling up to the second value: a
#: submission waits at most this long for its 503, and a database that is back is used within it
_RETRY_FIRST, _RETRY_MAX = 0.1, 2.0
#: times a group commit that lost a deadlock runs again at once before it counts as a failed write
_CONFLICT_RETRIES = 3


class GroupCommit:
    def __init__(self, db: Database, run: str, stored: Callable[[Job], None],
                 written: Callable[[Iterable[str]], None] | None = None) -> None:
        self.db = db
        #: told the identities whose verdicts a commit just wrote (cluster mode's verdict cache)
        self._written = written
        #: who we are in the jobs' ``run`` column
        self.run = run
        #: told about every job whose row was just committed (it has its id now)
        self._stored = stored
        #: jobs waiting for the next group commit, and the future that commit resolves
        self._inserts: list[Job] = []
        self._commit: asyncio.Future[None] | None = None
        #: finished jobs whose row exists: their state is written by the next commit
        self._finished: dict[int, Job] = {}
        #: jobs that finished while the commit carrying their row was in flight
        self._late: list[Job] = []
        self._messages: list[MessageRecord] = []
        #: cluster mode: verdicts for a key's jobs on every instance (store/work.py)
        self._finishes: list[Finish] = []
        self._writing = False
        self._closing = False
        self._wake = asyncio.Event()
        self._flushed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: the pause before the next attempt while commits fail; None while they succeed
        self._retry: float | None = None
        #: SQLite without fsync commits right on the event loop
        self._gathers = db.sqlite_writer is not None and db.sqlite_synchronous == "NORMAL"
        # such a commit leaves no time in which the next group could form, and on PostgreSQL with several
        # instances on the cores groups stay small (BENCHMARKS.md, "Cluster mode, eighth session")
        self._gather_first = self._gathers or db.postgres is not None
        #: PostgreSQL: the commits' own connection (store/postgres.py)
        self._link = db.link() if db.postgres is not None else None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="store-writer")

    async def close(self) -> None:
        """Write what is queued, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    def add_job(self, facts: dict[str, Any], created_at: datetime, claim: Claim | None = None) -> Job:
        """A pending job without an id yet: its row goes into the next group commit, which gives it its id
        (and, in cluster mode, writes its ``claim`` in the same transaction)."""
        if self._commit is None:
            self._commit = asyncio.get_running_loop().create_future()
        job = Job(id=0, facts=facts, created_at=created_at, _commit=self._commit, claim=claim)
        self._inserts.append(job)
        self._wake.set()
        return job

    def job_finished(self, job: Job) -> None:
        if job.id > 0:
            self._finished[job.id] = job
        elif job.id == 0:
            # its insert is queued (it then carries the finished state) or in flight (an update follows)
            self._late.append(job)
        self._wake.set()

    def finish(self, item: Finish) -> None:
        self._finishes.append(item)
        self._wake.set()

    def add_message(self, record: MessageRecord) -> None:
        self._messages.append(record)
        self._wake.set()

    def _queued(self) -> bool:
        return bool(self._inserts or self._finished or self._late or self._messages or self._finishes)

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        while self._queued() or self._writing:
            self._flushed.clear()
            self._wake.set()
            await self._flushed.wait()

    async def _loop(self) -> None:
        """Commit at once when idle; whatever arrives meanwhile goes into the next commit."""
        while True:
            if not self._queued():
                self._flushed.set()
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._gather_first:
                await gather(lambda: len(self._inserts))
            inserts, commit, msgs, finishes = self._inserts, self._commit, self._messages, self._finishes
            self._inserts, self._commit, self._messages, self._finishes = [], None, [], []
            carried = {id(job) for job in inserts}
            updates = self._finished
            # a late job whose insert was in the last commit has its id now; one in this commit needs no update
            for job in self._late:
                if job.id > 0:
                    updates[job.id] = job
            self._finished, self._late = {}, [job for job in self._late if job.id == 0 and id(job) not in carried]
            self._writing = True
            try:
                await self._write(inserts, updates, msgs, finishes)
            except Exception as exc:
                if self._retry is None:
                    log.exception("store write failed; retrying with backoff")
                    self._retry = _RETRY_FIRST
                else:  # one traceback per outage, not one per attempt
                    log.warning("store write failed again: %s", exc)
                failure = StoreError(f"cannot store the job: {exc}")
                for job in inserts:
                    job.id, job._commit = -1, None  # never stored: never finished into the store either
                if commit is not None and not commit.done():
                    commit.set_exception(failure)
                    commit.exception()  # a caller that went away must not leave "exception never retrieved"
                # rows that exist keep their newer states; messages are written later
                self._finished = updates | self._finished
                self._messages = msgs + self._messages
                self._finishes = finishes + self._finishes
                if self._closing and self._retry >= _RETRY_MAX:
                    # shutting down with the database still gone: stop instead of hanging the shutdown; rows
                    # left pending are answered failed ("interrupted") at the next start
                    log.error("store unavailable at shutdown: %d finished job state(s) and %d message record(s) "
                              "not written", len(self._finished), len(self._messages))
                    return
                await asyncio.sleep(self._retry)
                self._retry = min(self._retry * 2, _RETRY_MAX)
            else:
                if commit is not None and not commit.done():
                    commit.set_result(None)
                if self._retry is not None:
                    log.warning("store writes work again")
                    self._retry = None
                if self._written is not None:
                    self._written([job.identity for job in updates.values()] + [f.identity for f in finishes])
            finally:
                self._writing = False
            self._flushed.set()
            if self.db.checkpoints is not None:
                self.db.checkpoints.committed(len(inserts) + len(updates) + len(msgs))

    async def _write(self, inserts: list[Job], updates: dict[int, Job], msgs: list[MessageRecord],
                     finishes: list[Finish]) -> None:
        message_rows = [m.row() for m in msgs]
        new_rows = [job_row(job, self.run) for job in inserts]
        # rows in key order: two instances' commits that insert the same keys at once lock them in the same
        # order, so neither waits for the other in a deadlock
        sample_rows = sorted(({"sha256": job.facts["sha256"], "identity": job.identity} for job in inserts
                              if not answered_by_cache(job)), key=lambda row: (row["sha256"], row["identity"]))
        update_rows = [{**job_row(job, None), "b_id": job_id} for job_id, job in sorted(updates.items())]
        claims = sorted(((index, job.claim) for index, job in enumerate(inserts) if job.claim is not None),
                        key=lambda item: item[1].key)
        sqlite = self.db.sqlite_writer
        if sqlite is not None:
            assert not claims and not finishes, "cluster mode runs on MariaDB and PostgreSQL only"
            await sqlite_writes.begin(sqlite)
            if self._gathers:
                # a WAL commit without fsync takes well under a millisecond: done right here, it beats any
                # thread hand-off, which waits for the GIL behind the analysis threads
                ids = sqlite_writes.write(sqlite, new_rows, message_rows, update_rows, sample_rows)
            else:
                # fsync takes milliseconds: one thread hop for the whole transaction (aiosqlite hops per statement)
                ids = await asyncio.to_thread(sqlite_writes.write, sqlite, new_rows, message_rows, update_rows,
                                              sample_rows)
        else:
            assert self.db.engine is not None
            for attempt in range(_CONFLICT_RETRIES + 1):
                try:
                    if self._link is not None:
                        ids = await postgres.write(self._link, new_rows, message_rows, update_rows, sample_rows,
                                                   claims, finishes, self.run, datetime.now(UTC))
                    else:
                        ids = await self._transaction(new_rows, message_rows, update_rows, sample_rows, claims,
                                                      finishes)
                    break
                except (DBAPIError, asyncpg.PostgresError) as exc:
                    # another instance's transaction locked the same keys: this one was rolled back to let
                    # it go on, and runs again now instead of failing its submissions with a 503
                    if attempt == _CONFLICT_RETRIES or not lost_conflict(exc):
                        raise
                    log.info("group commit lost a lock conflict (%s); running it again", getattr(exc, "orig", exc))
        # committed: only now do the ids exist
        for job, job_id in zip(inserts, ids, strict=True):
            job.id, job._commit = job_id, None
            self._stored(job)

    async def _transaction(self, new_rows: list[dict[str, Any]], message_rows: list[dict[str, Any]],
                           update_rows: list[dict[str, Any]], sample_rows: list[dict[str, Any]],
                           claims: list[tuple[int, Claim]], finishes: list[Finish]) -> list[int]:
        """One group commit through SQLAlchemy (MariaDB); the new ids in row order."""
        assert self.db.engine is not None
        async with self.db.engine.begin() as conn:
            ids = await conn.run_sync(_write_rows, new_rows, message_rows, update_rows, sample_rows)
            if claims:
                mine = [(ids[i], claim) for i, claim in claims]
                await conn.run_sync(write_claims, mine, self.run, datetime.now(UTC))
            if finishes:
                await conn.run_sync(write_finishes, finishes)
        return ids


# built once (see sql.insert_ignoring_duplicates)
_INSERT_JOBS = jobs.insert().returning(jobs.c.id, jobs.c.identity, sort_by_parameter_order=True)
_INSERT_MESSAGES = messages.insert()


def _write_rows(conn: Connection, new_rows: list[dict[str, Any]], message_rows: list[dict[str, Any]],
                update_rows: list[dict[str, Any]], sample_rows: list[dict[str, Any]]) -> list[int]:
    """One group commit's statements through SQLAlchemy (MariaDB, PostgreSQL); the new ids in row order."""
    ids = check_ids(list(conn.execute(_INSERT_JOBS, new_rows).all()), new_rows) if new_rows else []
    if sample_rows:
        conn.execute(insert_ignoring_duplicates(samples, conn.dialect.name), sample_rows)
    if message_rows:
        conn.execute(_INSERT_MESSAGES, message_rows)
    if update_rows:
        conn.execute(update_job, update_rows)
    return ids
