"""The analysis service: deduplication of identities in flight, a bounded queue, failures stay failed,
a deadline for every analysis in killable worker processes, and a shutdown that does not wait."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import multiprocessing
import os
import signal
import threading
import time
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from mailowl.analysis.archive import Budget
from mailowl.analysis.contract import Resources
from mailowl.analysis.pe import PeReport
from mailowl.analysis.sample import Sample
from mailowl.analysis.table import ANALYSERS
from mailowl.core.service import AnalysisService, QueueFull
from mailowl.results import Result
from mailowl.rules.context import JournalLookup
from mailowl.rules.engine import Engine, Verdict
from mailowl.store import Store
from mailowl.store.journal import KnownReport

from .helpers import engine


class CountingEngine(Engine):
    """The real engine, counting (in memory shared with the worker processes) and slowing its runs so
    duplicates overlap."""

    def __init__(self, inner: Engine, delay: float = 0.2) -> None:
        super().__init__(inner.rules, inner.resources)
        self.counter = multiprocessing.Value("i", 0)
        self.delay = delay

    @property
    def runs(self) -> int:
        return int(self.counter.value)

    def run(self, sample: Sample, journal: JournalLookup = lambda i: KnownReport(), budget: Any = None) -> Verdict:
        with self.counter.get_lock():
            self.counter.value += 1
        time.sleep(self.delay)
        return super().run(sample, journal, budget)


async def make_service(tmp_path: Path, eng: Engine, **kwargs: Any) -> AnalysisService:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await store.open()
    service = AnalysisService(eng, store, **kwargs)
    await service.start()
    return service


@pytest.fixture
def hanging_pe(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """pereport hangs in a real sleep for content starting with MZHANG, and eats memory for MZHOG;
    worker processes forked afterwards inherit it."""
    real = ANALYSERS["pereport"]
    release = threading.Event()

    def pereport(sample: Sample, resources: Resources, budget: Budget) -> PeReport:
        if sample.content.startswith(b"MZHANG"):
            time.sleep(3600)
        if sample.content.startswith(b"TEXTHANG"):  # small text: analysed in the service's thread
            release.wait(3600)
        if sample.content.startswith(b"MZHOG"):
            hog = [bytearray(64 * 2**20) for _ in range(64)]  # 4 GiB, far past the memory limit
            del hog
        if sample.content.startswith(b"MZDIE"):
            os.kill(os.getpid(), signal.SIGKILL)
        report: PeReport = real.run(sample, resources, budget)
        return report

    monkeypatch.setitem(ANALYSERS, "pereport", dataclasses.replace(real, run=pereport))
    yield
    release.set()


@pytest.fixture
async def pe_service(tmp_path: Path, hanging_pe: None) -> AsyncIterator[AnalysisService]:
    service = await make_service(tmp_path, engine(["pe", "final_rule"]), workers=1, timeout=5,
                                 memory_limit=128 * 2**20)
    try:
        yield service
    finally:
        await service.stop()
        await service.store.close()


async def test_identity_in_flight_is_analysed_once(tmp_path: Path) -> None:
    counting = CountingEngine(engine(["known", "expressions", "final_rule"],
                                     expressions={"expression": ["sample.file_extension == 'bat' -> bad"]}))
    service = await make_service(tmp_path, counting)
    try:
        jobs = await asyncio.gather(*(service.analyse(Sample(b"@echo off\r\n", "x.bat"), 10) for _ in range(10)),
                                    service.analyse(Sample(b"@echo off\r\n", "y.bat"), 10))
        assert all(job.result is Result.bad for job in jobs)
        assert len({job.id for job in jobs}) == 11
        assert counting.runs == 2  # one per identity
        # facts computed in the worker process reach the job
        assert jobs[0].facts["sha1"] == hashlib.sha1(b"@echo off\r\n").hexdigest()
        # afterwards the cache answers through the `known` rule
        again = await service.analyse(Sample(b"@echo off\r\n", "x.bat"), 10)
        assert again.result is Result.bad and [r.rule for r in again.rules] == ["known"]
    finally:
        await service.stop()
        await service.store.close()


async def test_full_queue_refuses_instead_of_growing(tmp_path: Path) -> None:
    counting = CountingEngine(engine(["final_rule"]), delay=0.5)
    service = await make_service(tmp_path, counting, queue_size=2, workers=1)
    try:
        accepted: list[asyncio.Task[Any]] = []
        with pytest.raises(QueueFull):
            for i in range(10):
                task = asyncio.ensure_future(service.analyse(Sample(f"sample {i}".encode(), f"{i}.bin"), 10))
                await asyncio.sleep(0.05)
                if task.done() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
                accepted.append(task)
        assert 2 <= len(accepted) <= 3
        jobs = await asyncio.gather(*accepted)
        assert all(job.finished for job in jobs)
    finally:
        await service.stop()
        await service.store.close()


async def test_crashing_analysis_is_failed_and_store_failure_is_failed(tmp_path: Path) -> None:
    class Broken(Engine):
        def run(self, sample: Sample, journal: JournalLookup = lambda i: KnownReport(),
                budget: Any = None) -> Verdict:
            raise MemoryError("out of memory while unpacking")

    service = await make_service(tmp_path, Broken([], engine(["final_rule"]).resources))
    try:
        job = await service.analyse(Sample(b"whatever", "x.bin"), 10)
        assert job.result is Result.failed and "out of memory" in (job.reason or "")
    finally:
        await service.stop()
        await service.store.close()


# --- Every analysis has a deadline; hung work is killed (issue 7, point 4) ---

def worker_pids(service: AnalysisService) -> list[int]:
    return [w.pid for w in service._workers]


async def test_hung_analyser_is_failed_naming_it_and_the_worker_is_replaced(pe_service: AnalysisService) -> None:
    await pe_service.analyse(Sample(b"MZ warm-up", "warm.exe"), 30)
    before = worker_pids(pe_service)
    hung = await pe_service.analyse(Sample(b"MZHANG" + b"\x00" * 100, "hang.exe"), 30)
    assert hung.result is Result.failed
    assert hung.reason == "Analysis timed out in pereport (rule pe)", hung.reason
    # the only worker was killed and replaced: the next samples are analysed normally
    after = await pe_service.analyse(Sample(b"MZ not really a PE", "next.exe"), 30)
    assert after.result is Result.unknown and after.reason, after.reason
    assert worker_pids(pe_service) != before
    with pytest.raises(ProcessLookupError):
        os.kill(before[0], 0)  # killed and reaped, no zombie left
    text = await pe_service.analyse(Sample(b"just text", "a.txt"), 30)
    assert text.result is Result.unknown


async def test_memory_hog_is_failed_by_the_memory_limit(pe_service: AnalysisService) -> None:
    hog = await pe_service.analyse(Sample(b"MZHOG", "hog.exe"), 30)
    assert hog.result is Result.failed and "MemoryError" in (hog.reason or ""), hog.reason
    fine = await pe_service.analyse(Sample(b"MZ fine", "fine.exe"), 30)
    assert fine.result is Result.unknown


async def test_worker_that_dies_is_failed_and_replaced(pe_service: AnalysisService) -> None:
    died = await pe_service.analyse(Sample(b"MZDIE", "die.exe"), 30)
    assert died.result is Result.failed
    assert died.reason == "Analysis crashed in pereport (rule pe): the worker process was killed by signal SIGKILL"
    fine = await pe_service.analyse(Sample(b"MZ fine", "fine.exe"), 30)
    assert fine.result is Result.unknown


async def test_stop_does_not_wait_for_a_hung_analysis(tmp_path: Path, hanging_pe: None) -> None:
    service = await make_service(tmp_path, engine(["pe", "final_rule"]), workers=1, timeout=3600)
    try:
        hung = asyncio.ensure_future(service.analyse(Sample(b"MZHANG", "hang.exe"), 3600))
        queued = asyncio.ensure_future(service.analyse(Sample(b"MZ queued behind it", "q.exe"), 3600))
        while "pereport" not in service._workers[0].where():
            await asyncio.sleep(0.05)
        pid = service._workers[0].pid
        await asyncio.wait_for(service.stop(), 30)  # generous: the hang itself would last an hour
        for task in (hung, queued):
            job = await asyncio.wait_for(task, 30)
            assert job.result is Result.failed and job.reason == "Analysis interrupted by shutdown of mailowl"
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    finally:
        await service.store.close()


async def test_archive_members_are_looked_up_in_the_store_from_the_worker(tmp_path: Path) -> None:
    eng = engine(["archive", "expressions", "final_rule"], expressions={"expression": ["knownreport.known -> bad"]})
    service = await make_service(tmp_path, eng)
    try:
        first = await service.analyse(Sample(b"hello world", "note.txt"), 30)
        assert first.result is Result.unknown
        await service.store.flush()
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("note.txt", b"hello world")
        packed = await service.analyse(Sample(buf.getvalue(), "notes.zip"), 30)
        assert packed.result is Result.bad and "member 'note.txt'" in (packed.reason or ""), packed.reason
    finally:
        await service.stop()
        await service.store.close()


def test_only_small_samples_no_risky_parser_reads_stay_in_the_thread() -> None:
    from mailowl.core.workers import IN_THREAD_MAX, needs_isolation

    assert not needs_isolation(b"@echo off\r\ncurl http://x.invalid/a.exe\r\n")
    assert not needs_isolation(bytes(range(256)) * 8)
    for risky in (b"MZ\x90\x00", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", b"PK\x03\x04", b"Rar!\x1a\x07\x01\x00",
                  b"\x1f\x8b\x08", b"<?xml version='1.0'?><w:wordDocument/>", b"x" * (IN_THREAD_MAX + 1)):
        assert needs_isolation(risky), risky[:20]


def test_timeout_and_max_memory_settings() -> None:
    from mailowl.config import ConfigError, load_config

    default = load_config(environ={})
    assert default.analysis.timeout == 60 and default.analysis.max_memory == 256 * 2**20
    assert load_config(environ={"MAILOWL_ANALYSIS_TIMEOUT": "2m"}).analysis.timeout == 120
    assert load_config(environ={"MAILOWL_ANALYSIS_TIMEOUT": "1.5"}).analysis.timeout == 1.5
    assert load_config(environ={"MAILOWL_ANALYSIS_MAX_MEMORY": "1GiB"}).analysis.max_memory == 2**30
    for bad in ("0", "soon", "-5"):
        with pytest.raises(ConfigError, match=r"\[analysis\] timeout"):
            load_config(environ={"MAILOWL_ANALYSIS_TIMEOUT": bad})
    with pytest.raises(ConfigError, match=r"\[analysis\] max_memory"):
        load_config(environ={"MAILOWL_ANALYSIS_MAX_MEMORY": "lots"})


async def test_hang_in_the_thread_path_is_answered_and_the_thread_replaced(pe_service: AnalysisService) -> None:
    before = list(pe_service._threads)
    hung = await pe_service.analyse(Sample(b"TEXTHANG small text", "hang.txt"), 30)
    assert hung.result is Result.failed
    assert hung.reason == "Analysis timed out in pereport (rule pe)", hung.reason
    assert pe_service._threads != before  # the only thread was replaced, the next sample goes to the new one
    after = await pe_service.analyse(Sample(b"some other text", "next.txt"), 30)
    assert after.result is Result.unknown


def test_a_failed_member_lookup_leaves_the_worker_usable() -> None:
    from mailowl.core.workers import Worker, WorkerError

    eng = engine(["archive", "known", "final_rule"])
    worker = Worker(lambda sample, lookup: eng.run(sample, lookup).to_wire(), "lookup-test", 256 * 2**20)
    worker.start()

    def broken(identity: str, timeout: float) -> KnownReport:
        raise RuntimeError("database is down")

    try:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("note.txt", b"hello")
        with pytest.raises(WorkerError, match="lookup for an archive member failed: RuntimeError: database is down"):
            worker.analyse(Sample(buf.getvalue(), "a.zip"), KnownReport(), broken, 30)
        fine = worker.analyse(Sample(b"MZ next", "b.exe"), KnownReport(), broken, 30)
        assert Verdict.from_wire(fine.verdict).result is Result.unknown
    finally:
        worker.kill()
