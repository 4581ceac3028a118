"""The analysis service: a bounded queue feeding a pool of worker threads.

The event loop only does bookkeeping; analysers (libmagic, oletools, archives, YARA, pefile) run in the
worker threads. An identity already being analysed is analysed once: every duplicate job waits for that
verdict. A sample whose verdict is cached and decided by the first rule (`known`) is answered at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from mailowl import metrics
from mailowl.analysis import activity
from mailowl.analysis.cortex import NeedsRemote
from mailowl.analysis.filetype import FileReport
from mailowl.analysis.sample import Sample
from mailowl.core.cluster import Cluster, sample_of
from mailowl.core.parking import Parking
from mailowl.core.workers import Worker, WorkerDied, WorkerTimeout, analyser_in, needs_isolation
from mailowl.logs.verdicts import VerdictLog
from mailowl.results import Result
from mailowl.rules.context import JournalLookup
from mailowl.rules.engine import Engine, Verdict, Wire
from mailowl.store import Job, Store, StoreError
from mailowl.store.journal import KnownReport
from mailowl.store.rows import verdict_values
from mailowl.store.work import Claim, Finish, WorkItem

log = logging.getLogger(__name__)

_Work = tuple[Sample, KnownReport, float]
_INTERRUPTED = "Analysis interrupted by shutdown of mailowl"


class QueueFull(Exception):
    pass


class AnalysisService:
    def __init__(self, engine: Engine, store: Store, queue_size: int = 10_000, workers: int = 2,
                 verdict_log: VerdictLog | None = None, timeout: float = 60.0,
                 memory_limit: int = 256 * 2**20) -> None:
        self.engine = engine
        #: seconds one sample's analysis may take before its worker process is killed
        self.timeout = timeout
        self.memory_limit = memory_limit
        self._workers: list[Worker] = []
        self._stopping = False
        #: analysis thread -> (sample, started, deadline) of the in-thread analysis it is running
        self._busy: dict[threading.Thread, tuple[Sample, float, float]] = {}
        #: thread id -> what its in-thread analysis is doing, to name it when the deadline passes
        self._doing: dict[int, str] = {}
        #: threads whose analysis outlived the deadline: answered and replaced, left to finish alone
        self._abandoned: set[threading.Thread] = set()
        self._watchdog: asyncio.Task[None] | None = None
        self._run_wire: Any = None
        self._limit = 0
        self.verdict_log = verdict_log or VerdictLog()
        self.store = store
        self.queue_size = queue_size
        self.workers = workers
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        #: identity -> jobs waiting for the analysis of that identity (the first one started it)
        self._in_flight: dict[str, list[Job]] = {}
        #: analyses queued or running
        self.pending = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lookups: set[asyncio.Task[None]] = set()
        #: queued sample (by object id) -> its in-flight key
        self._keys: dict[int, str] = {}
        #: samples waiting for Cortex (None: Cortex is not configured)
        self.parking: Parking | None = None
        #: cluster mode (MariaDB, PostgreSQL): keys whose work row this instance owns -> the forced job's id
        self.cluster: Cluster | None = None
        self._claimed: dict[str, tuple[str, int | None]] = {}

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        # an archive budget configured above the memory bound is honoured: unpacked members are held
        # in memory, with the attachment and the analysers' working copies
        limit = max(self.memory_limit, 3 * self.engine.resources.archive_limits.max_total_size)
        engine = self.engine

        def run(sample: Sample, lookup: JournalLookup) -> Wire:  # runs in the worker process
            return engine.run(sample, lookup).to_wire()

        self._run_wire, self._limit = run, limit
        # samples needing Cortex are parked (set before the worker processes are forked)
        engine.parks = engine.resources.cortex is not None
        activity.set_sink(self._record)
        self._workers = [Worker(run, f"analysis-{i}", limit) for i in range(self.workers)]
        self._threads = [self._spawn(worker) for worker in self._workers]
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())
        if self.engine.resources.cortex is not None:
            self.parking = Parking(self.engine.resources.cortex, self.store, self._unparked, self._park_failed)
            if not self.store.cluster:
                for key, jobs in await self.parking.resume_all(self.store.get_job):
                    self._in_flight.setdefault(key, []).extend(jobs)
        if self.store.cluster:
            self.cluster = Cluster(self.store, self._adopt, self._resume_parked,
                                   lambda: self.queue_size - self.pending, self._finished_elsewhere)
            await self.cluster.start()
            if self.parking is not None:
                await self._resume_parked(await self.store.work.take_over_parked())

    def _spawn(self, worker: Worker) -> threading.Thread:
        thread = threading.Thread(target=self._thread, args=(worker,), name=worker.name, daemon=True)
        thread.start()
        return thread

    def _record(self, what: str) -> None:
        self._doing[threading.get_ident()] = what

    async def _watch(self) -> None:
        """Answer in-thread analyses that outlive the deadline and replace their thread; worker
        processes are timed by their own thread."""
        while True:
            await asyncio.sleep(min(1.0, self.timeout / 4))
            now = time.monotonic()
            for thread, (sample, started, deadline) in list(self._busy.items()):
                if now < deadline or self._busy.pop(thread, None) is None:
                    continue
                self._abandoned.add(thread)
                where = self._doing.get(thread.ident or 0, "unknown")
                metrics.analyser_stopped(analyser_in(where), "timeout")
                log.warning("%s: analysis timed out in %s (sample %s); a new thread takes over",
                            thread.name, where, sample.sha256)
                self._finished_in_thread(sample, Verdict(Result.failed, f"Analysis timed out in {where}", []),
                                         started)
                index = self._threads.index(thread)
                self._workers[index].signal()
                self._workers[index] = Worker(self._run_wire, thread.name, self._limit)
                self._threads[index] = self._spawn(self._workers[index])

    async def stop(self) -> None:
        """Stop at once: running analyses are killed, and every job not finished yet is answered
        failed, interrupted by the shutdown (a later start does not analyse it again)."""
        self._stopping = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        for _ in self._threads:
            self._work.put(None)
        for worker in self._workers:
            worker.signal()
        for thread in self._threads:
            await asyncio.to_thread(thread.join, 10)
        await asyncio.sleep(0)  # let verdicts the threads handed over land first
        for task in list(self._lookups):
            task.cancel()
        if self.parking is not None:  # parked jobs stay pending in the store: the next start resumes them
            for entry in self.parking.parked.values():
                self._in_flight.pop(entry.key, None)
            await self.parking.stop()
            self.parking = None
        interrupted = Verdict(Result.failed, _INTERRUPTED, [])
        while True:
            try:
                item = self._work.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self._finished_in_thread(item[0], interrupted, 0.0)
        now = datetime.now(UTC)
        for key in list(self._in_flight):  # their cache lookup was still running: no facts beyond the light ones
            self.pending -= 1
            if self.cluster is not None and key in self._claimed:
                del self._in_flight[key]  # left pending: its work row is taken over
                continue
            for job in self._in_flight.pop(key):
                job.finish(interrupted.result, interrupted.reason, [], now)
                self.store.job_finished(job)
        metrics.QUEUE_DEPTH.set(self.pending)
        self._keys.clear()
        self._threads, self._workers = [], []
        if self.cluster is not None:  # what this instance still owns goes to the others (or the next start)
            self._claimed.clear()
            await self.store.flush()
            await self.cluster.stop()
            self.cluster = None

    async def submit(self, sample: Sample, force: bool = False, origin: str = "rest") -> Job:
        """Queue a sample and return its job once the job's row is committed, so its id survives a crash.
        Raises QueueFull instead of letting the queue grow without bound, StoreError if the row cannot be
        stored. ``force`` analyses it afresh even if a verdict is cached."""
        if self.pending >= self.queue_size:
            metrics.REJECTED.inc()
            raise QueueFull()
        if self.cluster is not None:
            return await self._submit_shared(sample, force, origin)
        job = self.store.add_job(sample.facts(light=True))
        job.origin = origin
        identity = sample.identity
        key = f"force:{id(job)}" if force else identity  # no id before the commit
        waiting = self._in_flight.get(key)
        if waiting is not None:
            waiting.append(job)
            await self.store.committed(job)
            if self.parking is not None:  # joining a parked sample: into its row, to survive a restart
                self.parking.joined(key, waiting)
            return job
        self._in_flight[key] = [job]
        self.pending += 1
        metrics.QUEUE_DEPTH.set(self.pending)
        journal = KnownReport() if force else self.store.journal_now(identity)
        if journal is None:
            task = asyncio.get_running_loop().create_task(self._look_up(key, sample))
            self._lookups.add(task)
            task.add_done_callback(self._lookups.discard)
        elif journal.known and self.engine.decided_by_known:
            self._start(key, sample, journal)  # answered inline: the row is written once, already finished
        else:
            # nothing is analysed before its job is durable
            try:
                await self.store.committed(job)
            except StoreError as exc:
                self._complete(key, sample, Verdict(Result.failed, f"Job could not be stored: {exc}", []), 0.0)
                raise
            self._start(key, sample, journal)
            return job
        await self.store.committed(job)
        return job

    async def get_job(self, job_id: int) -> Job | None:
        """The job, or None if it never existed or was purged. In cluster mode a pending job another
        instance created is watched, so that waiting for it here ends with its verdict."""
        job = await self.store.get_job(job_id)
        if job is not None and job.from_row and not job.finished and self.cluster is not None:
            self.cluster.watch(job)
        return job

    def cached(self, sample: Sample) -> Job | None:
        """A finished, unstored job if the verdict cache decides this sample at the first rule; else None.
        Mail ingress uses it so a cached attachment costs no job row: the message record keeps the verdict."""
        if not self.engine.decided_by_known:
            return None
        journal = self.store.journal_now(sample.identity)
        if journal is None or not journal.known:
            return None
        verdict = self._run(sample, journal)
        job = Job(id=0, facts=sample.facts(light=True), created_at=datetime.now(UTC))
        job.finish(verdict.result, verdict.reason, verdict.rules, job.created_at)
        metrics.job_counter(verdict.result.name).inc()
        return job

    async def analyse(self, sample: Sample, wait: float | None = None) -> Job:
        """Submit and wait for the verdict (used in-process by the CLI and mail ingress)."""
        job = await self.submit(sample)
        await job.wait(wait if wait is not None else 3600.0)
        return job

    async def _look_up(self, key: str, sample: Sample) -> None:
        try:
            journal = await self.store.journal(sample.identity)
        except Exception as exc:
            if self.cluster is None:  # the store is down: the sample is failed, never bad, and never lost
                self._complete(key, sample, Verdict(Result.failed, f"Verdict cache unavailable: {exc}", []), 0.0)
                return
            # its work row is taken: a failed verdict would reach every instance's jobs of the identity
            log.warning("verdict cache unavailable for %s (%s): analysed without it", sample.sha256, exc)
            journal = KnownReport()
        self._start(key, sample, journal)

    def _start(self, key: str, sample: Sample, journal: KnownReport) -> None:
        started = time.perf_counter()
        if journal.known and self.engine.decided_by_known:
            # the cached verdict decides at the first rule: nothing heavy, no thread hand-off
            self._complete(key, sample, self._run(sample, journal), started)
        else:
            self._keys[id(sample)] = key
            self._work.put((sample, journal, started))

    def _thread(self, worker: Worker) -> None:
        # the worker process is forked here, so it dies with this thread
        try:
            worker.start()
        except OSError:
            log.exception("could not start worker process %s; it is retried with the first sample", worker.name)
        try:
            while True:
                item = self._work.get()
                if item is None:
                    return
                sample, journal, started = item
                verdict: Verdict | NeedsRemote
                if self._stopping:
                    verdict = Verdict(Result.failed, _INTERRUPTED, [])
                elif needs_isolation(sample.content):
                    verdict = self._in_worker(worker, sample, journal)
                else:
                    verdict = self._in_thread(sample, journal, started)
                if threading.current_thread() in self._abandoned:
                    return  # answered by the watchdog, and a new thread has taken over
                assert self._loop is not None
                self._loop.call_soon_threadsafe(self._finished_in_thread, sample, verdict, started)
        finally:
            worker.kill()

    def _in_thread(self, sample: Sample, journal: KnownReport, started: float) -> Verdict | NeedsRemote:
        """The verdict of a small sample no parser that can hang looks at (``needs_isolation``); if it
        hangs all the same, the watchdog answers it and replaces this thread."""
        me = threading.current_thread()
        self._busy[me] = (sample, started, time.monotonic() + self.timeout)
        try:
            verdict = self._run(sample, journal)
            sample.sha1, sample.md5  # noqa: B018 (hashes computed here, in the worker thread)
        except NeedsRemote as need:
            return need  # parked by _finished_in_thread
        except Exception as exc:  # never lose a job: a broken analysis is failed, not bad
            log.exception("analysis of %s crashed", sample.sha256)
            verdict = Verdict(Result.failed, f"Analysis crashed: {type(exc).__name__}: {exc}", [])
        finally:
            self._busy.pop(me, None)
        return verdict

    def _in_worker(self, worker: Worker, sample: Sample, journal: KnownReport) -> Verdict | NeedsRemote:
        """The verdict of the worker process; never raises: a broken analysis is failed, never bad."""

        def lookup(identity: str, timeout: float) -> KnownReport:
            # archive members: ask the store on the event loop and wait here in the worker thread
            assert self._loop is not None
            return asyncio.run_coroutine_threadsafe(self.store.journal(identity), self._loop).result(timeout)

        try:
            outcome = worker.analyse(sample, journal, lookup, self.timeout)
        except NeedsRemote as need:
            return need  # parked by _finished_in_thread
        except (WorkerTimeout, WorkerDied) as exc:
            if self._stopping:
                return Verdict(Result.failed, _INTERRUPTED, [])
            metrics.analyser_stopped(analyser_in(exc.where), "timeout" if isinstance(exc, WorkerTimeout) else "crash")
            log.warning("%s: %s (sample %s); a new worker process takes over", worker.name, exc, sample.sha256)
            return Verdict(Result.failed, str(exc)[:1].upper() + str(exc)[1:], [])
        except Exception as exc:
            if self._stopping:
                return Verdict(Result.failed, _INTERRUPTED, [])
            log.warning("analysis of %s crashed: %s", sample.sha256, exc)
            return Verdict(Result.failed, f"Analysis crashed: {exc}", [])
        sample.__dict__["sha1"], sample.__dict__["md5"] = outcome.sha1, outcome.md5
        sample.reports["filereport"] = FileReport(outcome.type_by_content, sample.type_by_name)
        return Verdict.from_wire(outcome.verdict)

    def _finished_in_thread(self, sample: Sample, verdict: Verdict | NeedsRemote, started: float) -> None:
        key = self._keys.pop(id(sample), None)
        if key is None:  # stop() already answered it
            return
        if isinstance(verdict, NeedsRemote):  # wait for Cortex without holding a worker
            self._park(key, sample, verdict)
            return
        self._complete(key, sample, verdict, started)

    # parking (Cortex) --------------------------------------------------------------------------------------
    def _park(self, key: str, sample: Sample, need: NeedsRemote) -> None:
        if self.parking is None or self._stopping:
            reason = _INTERRUPTED if self._stopping else f"{need}: Cortex is not configured"
            self._complete(key, sample, Verdict(Result.failed, reason, []), 0.0)
            return
        self.pending -= 1  # parked samples do not fill the queue
        metrics.QUEUE_DEPTH.set(self.pending)
        self.parking.park(key, sample, self._in_flight.get(key, []), need)

    def _unparked(self, key: str, sample: Sample) -> bool:
        """Cortex has answered (or failed): the ruleset runs again from the start with the report. False
        while stopping: the sample stays parked in the store for the next start."""
        if self._stopping:
            return False
        if key not in self._in_flight:
            return True
        self.pending += 1
        metrics.QUEUE_DEPTH.set(self.pending)
        task = asyncio.get_running_loop().create_task(self._look_up(key, sample))
        self._lookups.add(task)
        task.add_done_callback(self._lookups.discard)
        return True

    def _park_failed(self, key: str, reason: str) -> None:
        now = datetime.now(UTC)
        counter = metrics.job_counter(Result.failed.name)
        jobs = self._in_flight.pop(key, [])
        if key in self._claimed:
            facts = jobs[0].facts if jobs else {"identity": self._claimed[key][0]}
            self._finish_work(key, facts, Verdict(Result.failed, reason, []), now)
        for job in jobs:
            job.finish(Result.failed, reason, [], now)
            self.store.job_finished(job)
            counter.inc()

    def _run(self, sample: Sample, journal: KnownReport) -> Verdict:
        top = sample.identity

        def lookup(identity: str) -> KnownReport:
            if identity == top:
                return journal
            # archive members: ask the store on the event loop and wait here in the worker thread
            assert self._loop is not None
            return asyncio.run_coroutine_threadsafe(self.store.journal(identity), self._loop).result(60)

        return self.engine.run(sample, lookup)

    def _complete(self, key: str, sample: Sample, verdict: Verdict, started: float) -> None:
        self.pending -= 1
        metrics.QUEUE_DEPTH.set(self.pending)
        if started:
            metrics.LATENCY.observe(time.perf_counter() - started)
        if verdict.timings:
            metrics.analysers_ran(verdict.timings)
        if self.cluster is not None and self._stopping:
            self._in_flight.pop(key, None)  # left pending: its work row is taken over
            return
        facts: dict[str, Any] = sample.facts()
        report = sample.reports.get("filereport")
        if isinstance(report, FileReport):
            facts["type_by_content"] = report.type_by_content
        now = datetime.now(UTC)
        covered = key in self._claimed
        if covered:
            self._finish_work(key, facts, verdict, now)
        counter = metrics.job_counter(verdict.result.name)
        for job in self._in_flight.pop(key, []):
            job.facts = dict(facts)
            job.rule_facts = verdict.facts
            job.finish(verdict.result, verdict.reason, verdict.rules, now)
            self.store.job_finished(job, covered)
            counter.inc()
            if job.origin == "rest" and self.verdict_log.enabled:
                self.verdict_log.job(job)

    # cluster mode (MariaDB, PostgreSQL; store/work.py, core/cluster.py) ----------------------------------
    async def _submit_shared(self, sample: Sample, force: bool, origin: str) -> Job:
        """The job's row and, for a sample nobody has a verdict for, its work row go into one commit; the
        instance whose work row it is analyses the sample, every other job of the identity waits for it."""
        identity = sample.identity
        journal = KnownReport()
        if not force:
            job = await self._join_shared(identity, sample, origin)
            if job is not None:
                return job
            journal = await self.store.journal(identity)
            job = await self._join_shared(identity, sample, origin)  # one may have started while we looked
            if job is not None:
                return job
            if journal.known and self.engine.decided_by_known:
                job = self._new_job(identity, sample, origin, None)
                self._start(identity, sample, journal)  # finished before its row is written: one insert
                await self.store.committed(job)
                return job
        key = f"force:{uuid.uuid4().hex}" if force else identity
        claim = Claim(key, identity, sample.content, sample.filename, sample.type_declared,
                      sample.content_disposition, force=force)
        job = self._new_job(key, sample, origin, claim)
        try:
            await self.store.committed(job)
        except StoreError as exc:
            self._complete(key, sample, Verdict(Result.failed, f"Job could not be stored: {exc}", []), 0.0)
            raise
        if claim.owner == self.store.run:
            self._claimed[key] = (identity, job.id if force else None)
            if claim.verdict_since:  # a verdict committed after our lookup, whose work row was gone by then
                with contextlib.suppress(StoreError):
                    journal = await self.store.journal(identity)
            self._start(key, sample, journal)
        else:
            jobs = self._in_flight.pop(key, [])
            self.pending -= 1
            metrics.QUEUE_DEPTH.set(self.pending)
            assert self.cluster is not None
            self.cluster.wait(key, claim, jobs)
        return job

    def _new_job(self, key: str, sample: Sample, origin: str, claim: Claim | None) -> Job:
        job = self.store.add_job(sample.facts(light=True), claim)
        job.origin = origin
        self._in_flight[key] = [job]
        self.pending += 1
        metrics.QUEUE_DEPTH.set(self.pending)
        return job

    async def _join_shared(self, key: str, sample: Sample, origin: str) -> Job | None:
        """A job for a key already being analysed, here or on another instance."""
        assert self.cluster is not None
        waiting = self._in_flight.get(key)
        if waiting is None and not self.cluster.waiting_for(key):
            return None
        job = self.store.add_job(sample.facts(light=True))
        job.origin = origin
        if waiting is not None:
            waiting.append(job)
            await self.store.committed(job)
            if self.parking is not None:
                self.parking.joined(key, waiting)
        else:
            await self.store.committed(job)
            claim = Claim(key, key, sample.content, sample.filename, sample.type_declared,
                          sample.content_disposition)
            self.cluster.wait(key, claim, [job])
        return job

    def _adopt(self, item: WorkItem, jobs: list[Job]) -> None:
        """This instance now owns a key (taken over, or claimed again): analyse its sample."""
        waiting = self._in_flight.get(item.key)
        if waiting is not None:
            waiting.extend(jobs)
            return
        self._in_flight[item.key] = jobs
        self._claimed[item.key] = (item.identity, item.job_id)
        self.pending += 1
        metrics.QUEUE_DEPTH.set(self.pending)
        sample = sample_of(item)
        if item.job_id is not None:  # forced: analysed afresh
            self._start(item.key, sample, KnownReport())
            return
        task = asyncio.get_running_loop().create_task(self._look_up(item.key, sample))
        self._lookups.add(task)
        task.add_done_callback(self._lookups.discard)

    async def _resume_parked(self, ids: list[int]) -> None:
        if self.parking is None or not ids:
            return
        for key, jobs in await self.parking.resume_all(self.store.get_job, ids):
            self._in_flight.setdefault(key, []).extend(jobs)
            if self.cluster is not None:
                self._in_flight[key].extend(self.cluster.take(key))
            self._claimed[key] = (key, None)

    def _finish_work(self, key: str, facts: dict[str, Any], verdict: Verdict, now: datetime) -> None:
        identity, job_id = self._claimed.pop(key)
        template = Job(id=0, facts=dict(facts), created_at=now)
        template.rule_facts = verdict.facts
        template.finish(verdict.result, verdict.reason, verdict.rules, now)
        log.info("cluster: %s %s: %s", "answered from the verdict cache" if template.answered_by_cache else "analysed",
                 key, verdict.result.name)
        self.store.finish_work(Finish(key, identity, job_id, verdict_values(template)))

    def _finished_elsewhere(self, job: Job) -> None:
        """One of our jobs got another instance's verdict."""
        assert job.result is not None
        metrics.job_counter(job.result.name).inc()
        if job.origin == "rest" and self.verdict_log.enabled:
            self.verdict_log.job(job)
