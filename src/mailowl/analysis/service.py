"""The analysis service: a bounded queue, a pool of workers, CPU-heavy work in threads.

An identity already being analysed is analysed once; every duplicate job gets that verdict.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from mailowl import metrics
from mailowl.analysis.filetype import FileReport
from mailowl.analysis.known import KnownReport
from mailowl.analysis.sample import Sample
from mailowl.results import Result
from mailowl.rules.engine import Engine, Verdict
from mailowl.store import Job, Store

log = logging.getLogger(__name__)


class QueueFull(Exception):
    pass


class AnalysisService:
    def __init__(self, engine: Engine, store: Store, queue_size: int = 10_000, workers: int = 16,
                 threads: int = 2) -> None:
        self.engine = engine
        self.store = store
        self.queue: asyncio.Queue[tuple[Job, Sample, bool]] = asyncio.Queue(queue_size)
        self.workers = workers
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="analysis")
        self._tasks: list[asyncio.Task[None]] = []
        self._in_flight: dict[str, asyncio.Future[Verdict]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._tasks = [asyncio.create_task(self._work(), name=f"worker-{i}") for i in range(self.workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, sample: Sample, force: bool = False) -> Job:
        """Queue a sample; raises QueueFull instead of letting the queue grow without bound. ``force``
        analyses it afresh even if a verdict is cached or the same identity is being analysed."""
        if self.queue.full():
            metrics.REJECTED.inc()
            raise QueueFull()
        job = self.store.new_job(sample.facts(light=True))
        self.queue.put_nowait((job, sample, force))
        metrics.QUEUE_DEPTH.set(self.queue.qsize())
        return job

    async def analyse(self, sample: Sample, wait: float | None = None) -> Job:
        """Submit and wait for the verdict (used in-process by the CLI and mail ingress)."""
        job = self.submit(sample)
        await job.wait(wait if wait is not None else 3600.0)
        return job

    async def _work(self) -> None:
        while True:
            job, sample, force = await self.queue.get()
            metrics.QUEUE_DEPTH.set(self.queue.qsize())
            try:
                await self._process(job, sample, force)
            except Exception as exc:  # never lose a job: a broken analysis is failed, not bad
                log.exception("analysis of job %d crashed", job.id)
                self._finish(job, sample, Verdict(Result.failed, f"Analysis crashed: {exc}", []))

    async def _process(self, job: Job, sample: Sample, force: bool) -> None:
        started = time.perf_counter()
        identity = sample.identity
        running = self._in_flight.get(identity)
        if force:
            verdict = await self._analyse(sample, KnownReport())
            self._finish(job, sample, verdict)
            return
        if running is not None:
            verdict = await asyncio.shield(running)
            self._finish(job, sample, verdict)
            return
        assert self._loop is not None
        future: asyncio.Future[Verdict] = self._loop.create_future()
        self._in_flight[identity] = future
        try:
            verdict = await self._analyse(sample, await self.store.journal(identity))
        except Exception as exc:
            verdict = Verdict(Result.failed, f"Analysis failed: {exc}", [])
        finally:
            del self._in_flight[identity]
        future.set_result(verdict)
        self._finish(job, sample, verdict)
        metrics.LATENCY.observe(time.perf_counter() - started)

    async def _analyse(self, sample: Sample, journal: KnownReport) -> Verdict:
        assert self._loop is not None
        if journal.known and self.engine.decided_by_known:
            # the cached verdict decides at the first rule: no heavy work, so no thread hand-off
            return self._run(sample, journal)
        return await self._loop.run_in_executor(self.pool, self._run, sample, journal)

    def _run(self, sample: Sample, journal: KnownReport) -> Verdict:
        top = sample.identity

        def lookup(identity: str) -> KnownReport:
            if identity == top:
                return journal
            # archive members: ask the store on the event loop and wait here in the worker thread
            assert self._loop is not None
            return asyncio.run_coroutine_threadsafe(self.store.journal(identity), self._loop).result(60)

        verdict = self.engine.run(sample, lookup)
        sample.facts()  # hashes computed here, in the worker thread
        return verdict

    def _finish(self, job: Job, sample: Sample, verdict: Verdict) -> None:
        job.facts = sample.facts()
        report: Any = sample.reports.get("filereport")
        if isinstance(report, FileReport):
            job.facts["type_by_content"] = report.type_by_content
        job.finish(verdict.result, verdict.reason, verdict.rules, datetime.now(UTC))
        self.store.job_finished(job)
        metrics.JOBS.labels(result=verdict.result.name).inc()
