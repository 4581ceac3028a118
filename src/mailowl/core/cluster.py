"""Cluster mode's running part: heartbeats, taking over dead instances' work, and waiting for verdicts that
another instance reaches.

Which instance analyses what is decided in the database (store/work.py); this keeps the instance alive in
it and brings other instances' verdicts to the jobs waiting here: jobs of a key another instance owns, and
pending jobs that a client asks about here although another instance created them. One query per
``poll`` seconds asks which of them are finished; every ``lease / 2`` seconds the keys still waited for are
checked, and one whose row vanished without a verdict here (a race with the owner's last commit) is
claimed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from mailowl.analysis.sample import Sample
from mailowl.store import Job, Store, StoreError
from mailowl.store.rows import job_from_row
from mailowl.store.work import Claim, WorkItem

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Waiting:
    claim: Claim
    ids: set[int] = field(default_factory=set)


class Cluster:
    def __init__(self, store: Store, adopt: Callable[[WorkItem, list[Job]], None],
                 resume_parked: Callable[[list[int]], Awaitable[None]], capacity: Callable[[], int],
                 finished: Callable[[Job], None], poll: float = 0.1) -> None:
        self.store = store
        self.work = store.work
        #: analyses here the sample of a key this instance now owns, for the given local jobs
        self._adopt = adopt
        #: resumes tracking parked rows this instance claimed (a coroutine function)
        self._resume_parked = resume_parked
        #: how many more samples the queue takes
        self._capacity = capacity
        #: told about each job of ours that another instance's verdict finished
        self._finished = finished
        self.poll = poll
        #: job id -> (job, submitted here) waiting for a verdict reached elsewhere
        self._by_id: dict[int, list[tuple[Job, bool]]] = {}
        #: key -> the claim to make again if its row vanishes, and the ids of our jobs waiting for it
        self._keys: dict[str, _Waiting] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for attempt in range(5):  # a deadlock with an instance starting at the same moment is retried
            try:
                await self.work.heartbeat()
                break
            except StoreError:
                if attempt == 4:
                    raise
                await asyncio.sleep(0.2 * (attempt + 1))
        self._tasks = [asyncio.create_task(self._beat(), name="cluster-heartbeat"),
                       asyncio.create_task(self._watch(), name="cluster-watch")]

    async def stop(self) -> None:
        """After the service has stopped and the store has written what it had: the work this instance
        still owns goes to the others now, not after the lease."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        try:
            await self.work.release()
        except Exception as exc:  # the lease hands it over all the same
            log.warning("could not release this instance's work: %s", exc)

    # waiting for verdicts reached elsewhere ---------------------------------------------------------------
    def waiting_for(self, key: str) -> bool:
        return key in self._keys

    def wait(self, key: str, claim: Claim, jobs: list[Job]) -> None:
        """Our jobs of a key another instance owns."""
        entry = self._keys.setdefault(key, _Waiting(claim))
        for job in jobs:
            entry.ids.add(job.id)
            self._by_id.setdefault(job.id, []).append((job, True))
        self._wake.set()

    def watch(self, job: Job) -> None:
        """A pending job read from its row (a client asks here about another instance's job)."""
        self._by_id.setdefault(job.id, []).append((job, False))
        self._wake.set()

    def take(self, key: str) -> list[Job]:
        """This instance now analyses ``key``: our jobs waiting for it are its local jobs."""
        entry = self._keys.pop(key, None)
        if entry is None:
            return []
        taken = []
        for job_id in entry.ids:
            for job, ours in self._by_id.pop(job_id, []):
                if ours:
                    taken.append(job)
                else:  # a client here waits on a copy: the local job's verdict reaches it through the poll
                    self._by_id.setdefault(job_id, []).append((job, False))
        return taken

    async def _watch(self) -> None:
        checked = time.monotonic()
        while True:
            if not self._by_id:
                self._wake.clear()
                await self._wake.wait()
            await asyncio.sleep(self.poll)
            try:
                await self._collect()
                if time.monotonic() - checked >= self.work.lease / 2:
                    checked = time.monotonic()
                    await self._reclaim()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is away: the next round asks again
                log.warning("cluster: could not read other instances' verdicts: %s", exc)
                await asyncio.sleep(1)

    async def _collect(self) -> None:
        for row in await self.work.finished_jobs(list(self._by_id)):
            done = job_from_row(row)
            for job, ours in self._by_id.pop(done.id, []):
                if job.finished:
                    continue
                job.facts.update(done.facts)
                job.rule_facts = done.rule_facts
                assert done.result is not None and done.reason is not None and done.finished_at is not None
                job.finish(done.result, done.reason, done.rules, done.finished_at)
                if ours:
                    self._finished(job)
        for key in [k for k, entry in self._keys.items() if not entry.ids.intersection(self._by_id)]:
            del self._keys[key]

    async def _reclaim(self) -> None:
        keys = list(self._keys)
        if not keys:
            return
        existing = await self.work.existing(keys)
        for key in keys:
            entry = self._keys.get(key)
            if key in existing or entry is None:
                continue
            if await self.work.claim(entry.claim):
                jobs = self.take(key)
                log.info("cluster: sample %s claimed again (its work row was gone)", entry.claim.identity)
                self._adopt(WorkItem(key, entry.claim.identity, None, entry.claim.content, entry.claim.filename,
                                     entry.claim.type_declared, entry.claim.content_disposition), jobs)

    # heartbeats and take-over -------------------------------------------------------------------------
    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.work.lease / 5)
            try:
                await self.work.heartbeat()
                parked = await self.work.take_over_parked()
                if parked:
                    log.warning("cluster: took over %d parked sample(s) of a stopped instance", len(parked))
                    await self._resume_parked(parked)
                items = await self.work.take_over(min(self._capacity(), 100))
                if items:
                    log.warning("cluster: took over %d sample(s) of a stopped instance", len(items))
                for item in items:
                    log.info("cluster: took over %s", item.key)
                    self._adopt(item, self.take(item.key))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cluster: heartbeat or take-over failed: %s", exc)


def sample_of(item: WorkItem) -> Sample:
    return Sample(item.content, filename=item.filename, type_declared=item.type_declared,
                  content_disposition=item.content_disposition)
