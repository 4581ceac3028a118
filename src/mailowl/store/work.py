"""Cluster mode's shared work: which instance analyses which sample, and who is still alive.

On MariaDB and PostgreSQL every sample that needs an analysis has a ``work`` row, written in the same
transaction as the job that asked for it, with the sample's bytes: the first instance to insert the row for
an identity (its key) owns it and analyses it; every other job of that identity, on any instance, waits for
that verdict. Finishing writes the verdict into every pending job of the identity and deletes the row, in
one transaction. Each instance heartbeats into ``instances`` (the database's clock, so hosts' clocks do not
matter); rows whose owner has not heartbeaten for ``lease`` seconds are claimed by another instance with
``SELECT … FOR UPDATE SKIP LOCKED`` (two instances never claim the same row, and neither waits for the
other) and analysed again from their stored bytes. No instance ids are handed out: an instance is its
``run`` name (host, pid, process start).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    bindparam,
    delete,
    exists,
    func,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import mysql, postgresql

from mailowl.results import Result
from mailowl.store.database import Database, reading
from mailowl.store.jobs import DONE, PENDING
from mailowl.store.models import instances, jobs, parked, work
from mailowl.store.rows import VERDICT_COLUMNS
from mailowl.store.sql import insert_ignoring_duplicates

#: claimed rows per take-over statement
TAKE_OVER_BATCH = 100


@dataclass(slots=True)
class Claim:
    """A job's request to analyse its sample; the group commit that inserts the job writes it."""

    key: str
    identity: str
    content: bytes
    filename: str | None
    type_declared: str | None
    content_disposition: str | None
    #: a forced analysis: only its own job gets the verdict
    force: bool = False
    #: who owns the key once the commit is done (this instance's run name if the claim won)
    owner: str | None = None
    #: the claim won, but a verdict for the identity was committed meanwhile: look it up again
    verdict_since: bool = False


@dataclass(slots=True)
class Finish:
    """A verdict for a key's jobs on every instance, and the end of its work row."""

    key: str
    identity: str
    #: a forced analysis' job; None: every pending job of the identity
    job_id: int | None
    values: dict[str, Any]


@dataclass(slots=True)
class WorkItem:
    key: str
    identity: str
    job_id: int | None
    content: bytes
    filename: str | None
    type_declared: str | None
    content_disposition: str | None


# built once (a statement's construction and cache key cost more than its execution's share of the CPU)
_OWNERS = select(work.c.key, work.c.owner).where(work.c.key.in_(bindparam("keys", expanding=True)))
_KNOWN = select(jobs.c.identity).where(
    jobs.c.identity.in_(bindparam("identities", expanding=True)), jobs.c.state == literal_column(f"'{DONE}'"),
    jobs.c.result != literal_column(f"'{Result.failed.name}'")).distinct()
_DELETE_WORK = delete(work).where(work.c.key.in_(bindparam("keys", expanding=True)))


def settle_claims(claims: list[tuple[int, Claim]], owners: dict[str, str | None], run: str,
                  known: set[str] | None = None) -> set[str]:
    """Who owns each claim's key now; the identities of the claims this instance won. With ``known`` (the
    won identities that have a verdict), marks the won claims that must look their verdict up again."""
    for _, claim in claims:
        # a key without a row: its verdict was committed and the row deleted between the two statements
        claim.owner = owners.get(claim.key) or ""
    # a won claim whose identity got a verdict after the caller looked it up (its work row was gone by
    # then): asked in the same transaction, rather than by a second lookup for every won claim
    won = {c.identity for _, c in claims if c.owner == run and not c.force}
    if known is not None:
        for _, claim in claims:
            claim.verdict_since = claim.identity in known and claim.owner == run and not claim.force
    return won


def write_claims(conn: Connection, claims: list[tuple[int, Claim]], run: str, now: datetime) -> None:
    """Insert the claims' rows (skipping keys that exist), then learn who owns each key."""
    rows = [{"key": c.key, "identity": c.identity, "job_id": job_id if c.force else None, "owner": run,
             "created_at": now, "filename": c.filename, "type_declared": c.type_declared,
             "content_disposition": c.content_disposition, "content": c.content} for job_id, c in claims]
    conn.execute(insert_ignoring_duplicates(work, conn.dialect.name), rows)
    owners = dict(conn.execute(_OWNERS, {"keys": [c.key for _, c in claims]}).all())
    won = settle_claims(claims, owners, run)
    if won:
        settle_claims(claims, owners, run, set(conn.execute(_KNOWN, {"identities": list(won)}).scalars()))


_PENDING = jobs.c.state == literal_column(f"'{PENDING}'")


_BY_IDENTITY = (update(jobs).where(jobs.c.identity == bindparam("b_identity"), _PENDING)
                .values({c: bindparam(c) for c in VERDICT_COLUMNS}))
_BY_ID = update(jobs).where(jobs.c.id == bindparam("b_id"), _PENDING).values({c: bindparam(c) for c in VERDICT_COLUMNS})


def write_finishes(conn: Connection, finishes: list[Finish]) -> None:
    """One statement per kind for the whole group commit (executemany), not two per key; in key order, like
    the writer's other rows (two instances' commits lock shared keys in the same order)."""
    finishes = sorted(finishes, key=lambda f: f.key)
    shared = [{**f.values, "b_identity": f.identity} for f in finishes if f.job_id is None]
    forced = [{**f.values, "b_id": f.job_id} for f in finishes if f.job_id is not None]
    if shared:
        conn.execute(_BY_IDENTITY, shared)
    if forced:
        conn.execute(_BY_ID, forced)
    keys = [f.key for f in finishes]
    for start in range(0, len(keys), 500):
        conn.execute(_DELETE_WORK, {"keys": keys[start:start + 500]})


class WorkQueue:
    def __init__(self, db: Database, run: str, lease: float) -> None:
        self.db = db
        self.run = run
        #: seconds without a heartbeat after which an instance's work is taken over
        self.lease = lease

    async def _db_now(self, conn: Any) -> datetime:
        value = (await conn.execute(select(func.now()))).scalar()
        assert isinstance(value, datetime)
        return value

    async def heartbeat(self) -> None:
        assert self.db.engine is not None
        # one statement: an UPDATE of a missing row then an INSERT deadlocks on MariaDB's gap locks when
        # instances start together
        if self.db.backend == "postgresql":
            pg = postgresql.insert(instances).values(name=self.run, started_at=func.now(), heartbeat_at=func.now())
            statement: Any = pg.on_conflict_do_update(index_elements=[instances.c.name],
                                                      set_={"heartbeat_at": func.now()})
        else:
            my = mysql.insert(instances).values(name=self.run, started_at=func.now(), heartbeat_at=func.now())
            statement = my.on_duplicate_key_update(heartbeat_at=func.now())
        with reading():
            async with self.db.engine.begin() as conn:
                await conn.execute(statement)

    async def _live(self, conn: Any) -> Any:
        """A subquery of the instances that heartbeat within the lease."""
        cutoff = await self._db_now(conn) - timedelta(seconds=self.lease)
        return select(instances.c.name).where(instances.c.heartbeat_at >= cutoff).scalar_subquery()

    async def take_over(self, limit: int = TAKE_OVER_BATCH) -> list[WorkItem]:
        """Claim rows nobody live owns (whose owner stopped heartbeating, or released them); a row whose
        sample is parked is taken over with its parked row (``take_over_parked``)."""
        assert self.db.engine is not None
        if limit <= 0:
            return []
        with reading():
            async with self.db.engine.begin() as conn:
                live = await self._live(conn)
                query = (select(work.c.key, work.c.identity, work.c.job_id, work.c.content, work.c.filename,
                                work.c.type_declared, work.c.content_disposition)
                         .where(or_(work.c.owner.is_(None), work.c.owner.not_in(live)),
                                ~exists().where(parked.c.identity == work.c.identity))
                         .order_by(work.c.created_at).limit(limit).with_for_update(skip_locked=True))
                rows = (await conn.execute(query)).all()
                if rows:
                    await conn.execute(update(work).where(work.c.key.in_([r.key for r in rows]))
                                       .values(owner=self.run))
        return [WorkItem(r.key, r.identity, r.job_id, bytes(r.content), r.filename, r.type_declared,
                         r.content_disposition) for r in rows]

    async def take_over_parked(self, limit: int = TAKE_OVER_BATCH) -> list[int]:
        """Claim parked rows nobody live tracks, with their samples' work rows; their ids."""
        assert self.db.engine is not None
        with reading():
            async with self.db.engine.begin() as conn:
                live = await self._live(conn)
                query = (select(parked.c.id, parked.c.identity)
                         .where(or_(parked.c.owner.is_(None), parked.c.owner.not_in(live)))
                         .order_by(parked.c.id).limit(limit).with_for_update(skip_locked=True))
                rows = (await conn.execute(query)).all()
                if rows:
                    await conn.execute(update(parked).where(parked.c.id.in_([r.id for r in rows]))
                                       .values(owner=self.run))
                    await conn.execute(update(work).where(work.c.identity.in_({r.identity for r in rows}))
                                       .values(owner=self.run))
        return [r.id for r in rows]

    async def claim(self, claim: Claim, job_id: int | None = None) -> bool:
        """Claim a key again whose row vanished while jobs here still wait for it; True if this instance
        owns it now."""
        assert self.db.engine is not None
        with reading():
            async with self.db.engine.begin() as conn:
                await conn.run_sync(lambda c: write_claims(c, [(job_id or 0, claim)], self.run, datetime.now(UTC)))
        return claim.owner == self.run

    async def existing(self, keys: list[str]) -> set[str]:
        assert self.db.engine is not None
        with reading():
            async with self.db.read() as conn:
                return set((await conn.execute(select(work.c.key).where(work.c.key.in_(keys)))).scalars())

    async def finished_jobs(self, ids: list[int]) -> list[Any]:
        """The rows of those jobs that are finished now."""
        assert self.db.engine is not None
        found: list[Any] = []
        with reading():
            async with self.db.read() as conn:
                for start in range(0, len(ids), 500):
                    query = select(jobs).where(jobs.c.id.in_(ids[start:start + 500]), ~_PENDING)
                    found.extend((await conn.execute(query)).mappings().all())
        return found

    async def release(self) -> None:
        """Stopping: hand this instance's work to the others at once, instead of after the lease."""
        assert self.db.engine is not None
        with reading():
            async with self.db.engine.begin() as conn:
                await conn.execute(update(work).where(work.c.owner == self.run).values(owner=None))
                await conn.execute(update(parked).where(parked.c.owner == self.run).values(owner=None))
                await conn.execute(delete(instances).where(instances.c.name == self.run))
