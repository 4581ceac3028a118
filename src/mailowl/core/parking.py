"""Parking: samples waiting for Cortex are held by no worker; their ruleset runs again with the report.

When an expression reads a Cortex report the sample does not have yet, the analysis ends with
NeedsRemote instead of a verdict. The service hands the sample here: its row in the store (the sample's
bytes, the jobs waiting, the Cortex job) is written first, so a restart resumes tracking it; then the
job is submitted to Cortex and waited for on the event loop (``waitreport``, or polling ``report`` every
``poll_interval`` where Cortex has no waitreport). While it waits, memory holds a small record and the
waiting jobs, not the sample. When the report arrives (or the job fails, is deleted, sends a malformed
report or outlives ``maximum_job_age``), the sample is read back, the report or the failure attached,
and it goes back into the queue: the ruleset runs again from the start, as in PeekabooAV.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from mailowl import metrics
from mailowl.analysis.cortex import (
    CortexClient,
    CortexError,
    CortexReport,
    CortexSettings,
    Malformed,
    NeedsRemote,
    validate,
)
from mailowl.analysis.filetype import FileReport
from mailowl.analysis.sample import Sample
from mailowl.store import Job, Store

log = logging.getLogger(__name__)
_ANALYSER = "cortexreport"


@dataclass(slots=True)
class Parked:
    """What memory holds of a parked sample."""

    row: int
    key: str
    identity: str
    analyzer: str
    data_type: str
    remote_job: str | None
    submitted: float
    deadline: float
    filename: str | None
    type_declared: str | None
    content_disposition: str | None
    reports: dict[str, Any] = field(default_factory=dict)
    #: the jobs waiting for the verdict: the service's list, which duplicates join (``joined``)
    jobs: list[Job] = field(default_factory=list)
    #: the job ids the row has
    written: list[int] = field(default_factory=list)
    #: one write of the row's job ids at a time, so the last one written is the newest list
    writing: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: libmagic's answer from the first run, without the bytes (see _unpark)
    filetype: FileReport | None = None


class Parking:
    def __init__(self, settings: CortexSettings, store: Store, resume: Callable[[str, Sample], bool],
                 fail: Callable[[str, str], None], clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.store = store
        #: hands a sample back to the service's queue under its in-flight key; False while stopping
        self.resume = resume
        #: answers a key's jobs failed when its sample cannot be handed back
        self.fail = fail
        self.clock = clock
        self.client = CortexClient(settings, on_error=self._error)
        self.parked: dict[int, Parked] = {}
        #: the same entries by in-flight key, for duplicates joining a parked sample
        self._by_key: dict[str, Parked] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: short writes (joined jobs' ids, remote jobs' ids): awaited, not cancelled, at stop, so a restart finds them
        self._writes: set[asyncio.Task[None]] = set()
        #: waitreport works (until Cortex answers 404 for it)
        self._wait = settings.wait > 0

    def _error(self, kind: str, analyzer: str = "any") -> None:
        metrics.BACKEND_ERRORS.labels(_ANALYSER, "cortex", kind).inc()

    def health(self) -> dict[str, Any]:
        return {"url": self.settings.url, "parked": len(self.parked), "problem": self.client.problem}

    # parking -------------------------------------------------------------------------------------------
    def park(self, key: str, sample: Sample, jobs: list[Job], need: NeedsRemote) -> None:
        """Take the sample out of the queue until Cortex has answered; called on the event loop."""
        # only names are kept of the request: its traceback holds the whole analysis (sample included).
        # ``jobs`` is the service's list, not a copy: duplicates that join while the row is written are in it
        self._spawn(self._park(key, sample, jobs, need.analyzer, need.data_type))

    def joined(self, key: str, jobs: list[Job]) -> None:
        """A duplicate job (committed) joined the jobs of ``key``: if that sample is parked, its row gets the
        job's id too, so a restart completes it with the others. Called on the event loop."""
        entry = self._by_key.get(key)
        if entry is not None:
            entry.jobs = jobs
            self._write_job_ids(entry)

    def _write_job_ids(self, entry: Parked) -> None:
        if [job.id for job in entry.jobs if job.id > 0] == entry.written:
            return
        self._short_write(self._job_ids(entry))

    def _short_write(self, write: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A write that a stop waits for instead of cancelling it: what a restart must find."""
        task = asyncio.get_running_loop().create_task(write)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        return task

    async def _job_ids(self, entry: Parked) -> None:
        async with entry.writing:
            ids = [job.id for job in entry.jobs if job.id > 0]  # read under the lock: the newest list wins
            if ids == entry.written or entry.row not in self.parked:
                return
            try:
                await self.store.parked.set_job_ids(entry.row, ids)
            except Exception as exc:  # the jobs still get the verdict from memory; only a restart loses them
                log.warning("jobs joining parked sample %s could not be stored: %s", entry.identity, exc)
                return
            entry.written = ids

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _park(self, key: str, sample: Sample, jobs: list[Job], analyzer: str, data_type: str) -> None:
        cortex = sample.reports.get(_ANALYSER)
        reports = dict(cortex.reports) if isinstance(cortex, CortexReport) else {}
        now = self.clock()
        try:
            index = 0
            while index < len(jobs):  # by index: duplicates may join while this waits
                await self.store.committed(jobs[index])
                index += 1
            ids = [j.id for j in jobs if j.id > 0]
            row = await self.store.parked.add(sample.identity, ids, analyzer, data_type, _utc(now),
                                              _utc(now + self.settings.maximum_job_age), sample.filename,
                                              sample.type_declared, sample.content_disposition, reports,
                                              sample.content, self.store.run)
        except Exception as exc:
            log.error("sample %s could not be parked for Cortex: %s", sample.sha256, exc)
            self.fail(key, f"Cortex analysis not started: the sample could not be parked in the store: {exc}")
            return
        entry = Parked(row, key, sample.identity, analyzer, data_type, None, now,
                       now + self.settings.maximum_job_age, sample.filename, sample.type_declared,
                       sample.content_disposition, reports, jobs, ids)
        filetype = sample.reports.get("filereport")
        if isinstance(filetype, FileReport):
            entry.filetype = replace(filetype, content=b"")
        self.parked[row] = entry
        self._by_key[key] = entry
        self._write_job_ids(entry)  # those that joined while the row was written
        metrics.PARKED.set(len(self.parked))
        try:
            failure = await self._submit(entry, sample)
        except Exception as exc:
            failure = f"Cortex analysis could not be submitted to {analyzer}: {type(exc).__name__}: {exc}"
        del sample, jobs  # nothing of the sample stays in memory while Cortex works: it is in the store
        await self._follow(entry, failure)

    async def resume_all(self, jobs_by_id: Callable[[int], Any],
                         ids: list[int] | None = None) -> list[tuple[str, list[Job]]]:
        """After a restart: track every parked row again (in cluster mode: those of ``ids``, which this
        instance has claimed). Returns (key, jobs) of each, for the service's in-flight table; rows whose
        jobs are all gone are dropped."""
        entries = []
        for row in await self.store.parked.all_rows(ids):
            jobs = [job for job in [await jobs_by_id(i) for i in row.job_ids] if job is not None and not job.finished]
            if not jobs:
                await self.store.parked.remove(row.id)
                continue
            entry = Parked(row.id, row.identity, row.identity, row.analyzer, row.data_type, row.remote_job,
                           row.submitted_at.timestamp(), row.deadline.timestamp(), row.filename,
                           row.type_declared, row.content_disposition, row.reports, jobs, row.job_ids)
            self.parked[row.id] = entry
            self._by_key[entry.key] = entry
            entries.append(entry)
        # tracking starts only now, with nothing awaited after it: the caller puts the jobs in its in-flight
        # table before any of them can run. Started during the loop above, a job Cortex had finished already
        # was answered while later rows were read, before its key was in flight, and its sample was dropped
        for entry in entries:
            self._spawn(self._resume(entry))
        metrics.PARKED.set(len(self.parked))
        return [(entry.key, entry.jobs) for entry in entries]

    # tracking ------------------------------------------------------------------------------------------
    async def _resume(self, entry: Parked) -> None:
        failure = None
        if entry.remote_job is None:  # stopped before Cortex took the job: submit it now
            try:
                failure = await self._submit(entry, None)
            except Exception as exc:
                failure = f"Cortex analysis could not be submitted to {entry.analyzer}: {type(exc).__name__}: {exc}"
        await self._follow(entry, failure)

    async def _follow(self, entry: Parked, failure: str | None) -> None:
        """Wait for the Cortex job (unless submitting it failed), then hand the sample back."""
        try:
            if failure is None:
                failure = await self._wait_for(entry)
        except asyncio.CancelledError:
            raise  # shutdown: the row stays, the next start resumes it
        except Exception as exc:  # never lose a parked sample
            log.exception("tracking Cortex job %s failed", entry.remote_job)
            failure = f"Cortex analysis by {entry.analyzer} failed: {type(exc).__name__}: {exc}"
        await self._unpark(entry, failure)

    async def _submit(self, entry: Parked, sample: Sample | None) -> str | None:
        content = sample.content if sample is not None else await self.store.parked.content(entry.row)
        if content is None:
            return "Cortex analysis failed: the parked sample is gone from the store"
        probe = Sample(content, filename=entry.filename, type_declared=entry.type_declared,
                       content_disposition=entry.content_disposition)
        try:
            entry.remote_job = await self.client.submit(entry.analyzer, entry.data_type, content, probe.sha256,
                                                        probe.filename, probe.file_extension, probe.type_declared)
        except CortexError as exc:
            if exc.kind == "auth":
                log.error("%s", exc)
            else:
                log.warning("submitting sample %s to Cortex failed: %s", probe.sha256, exc)
            self._error("submit")
            return f"Cortex analysis could not be submitted to {entry.analyzer}: {exc}"
        # a stop waits for this write: without the remote job's id, a restart would submit the sample again
        await asyncio.shield(self._short_write(self.store.parked.set_remote_job(entry.row, entry.remote_job)))
        log.info("sample %s parked: Cortex job %s of %s", probe.sha256, entry.remote_job, entry.analyzer)
        return None

    async def _wait_for(self, entry: Parked) -> str | None:
        job = entry.remote_job
        assert job is not None
        while True:
            left = entry.deadline - self.clock()
            if left <= 0:
                self._error("max_age")
                return (f"Cortex job {job} of {entry.analyzer} did not finish within maximum_job_age "
                        f"({self.settings.maximum_job_age:g} s)")
            wait = min(self.settings.wait, left) if self._wait else 0
            try:
                status, report = await self.client.status(job, wait)
            except CortexError as exc:
                if exc.kind == "no_waitreport":
                    self._wait = False
                    continue
                if exc.kind == "too_large":  # asking again would fetch the same answer
                    self._error("too_large")
                    return f"Cortex analyzer {entry.analyzer} sent a malformed answer (job {job}): {exc}"
                (log.error if exc.kind == "auth" else log.warning)("Cortex job %s: %s", job, exc)
                await asyncio.sleep(min(self.settings.poll_interval, max(left, 0.01)))
                continue
            if status == "Success":
                try:
                    entry.reports[entry.analyzer] = validate(entry.analyzer, report)
                except Malformed as exc:
                    self._error("malformed")
                    return f"Cortex analyzer {entry.analyzer} sent a malformed report (job {job}): {exc}"
                metrics.BACKEND_LATENCY.labels(_ANALYSER, entry.analyzer).observe(self.clock() - entry.submitted)
                return None
            if status in ("Failure", "Deleted"):
                self._error(status.lower())
                why = report.get("errorMessage") if isinstance(report, dict) else None
                return f"Cortex job {job} of {entry.analyzer} ended in state {status}" + (f": {why}" if why else "")
            if not wait:
                await asyncio.sleep(min(self.settings.poll_interval, left))

    async def _unpark(self, entry: Parked, failure: str | None) -> None:
        try:
            content = await self.store.parked.content(entry.row)
        except asyncio.CancelledError:
            raise  # shutdown: the row stays, the next start resumes it
        except Exception as exc:
            log.error("parked sample %s could not be read back: %s", entry.identity, exc)
            content = None
        if content is None:
            self._forget(entry)
            self.fail(entry.key, failure or "Cortex analysis failed: the parked sample could not be read back")
            return
        sample = Sample(content, filename=entry.filename, type_declared=entry.type_declared,
                        content_disposition=entry.content_disposition)
        sample.reports[_ANALYSER] = CortexReport(entry.reports, failure)
        if entry.filetype is not None:
            # the same bytes get the same file type: libmagic is most of what running the ruleset again
            # costs (BENCHMARKS.md, "Cortex parking"); the other reports are computed again
            sample.reports["filereport"] = replace(entry.filetype, content=content)
        if not self.resume(entry.key, sample):
            return  # stopping: still parked here and in the store, the next start resumes it
        self._forget(entry)
        try:  # only now: until the sample is back in the queue, a restart must find it here
            await self.store.parked.discard(entry.row)
        except Exception as exc:  # the next start finds the row; its jobs, if answered by then, drop it
            log.warning("parked row of sample %s could not be deleted: %s", entry.identity, exc)

    def _forget(self, entry: Parked) -> None:
        self.parked.pop(entry.row, None)
        if self._by_key.get(entry.key) is entry:
            del self._by_key[entry.key]
        metrics.PARKED.set(len(self.parked))

    async def stop(self) -> None:
        if self._writes:  # short writes: a restart must find the jobs that joined and the remote jobs' ids
            await asyncio.gather(*self._writes, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._writes:  # started by a submission that ended while the tracking was cancelled
            await asyncio.gather(*self._writes, return_exceptions=True)
        self.parked.clear()
        self._by_key.clear()
        metrics.PARKED.set(0)
        await self.client.close()


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


__all__ = ["Parked", "Parking"]
