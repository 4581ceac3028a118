"""The analysis service: deduplication of identities in flight, a bounded queue, failures stay failed."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from mailowl.analysis.known import KnownReport
from mailowl.analysis.sample import Sample
from mailowl.analysis.service import AnalysisService, QueueFull
from mailowl.results import Result
from mailowl.rules.context import JournalLookup
from mailowl.rules.engine import Engine, Verdict
from mailowl.store import Store

from .helpers import engine


class CountingEngine(Engine):
    """The real engine, counting and slowing its runs so duplicates overlap."""

    def __init__(self, inner: Engine, delay: float = 0.2) -> None:
        super().__init__(inner.rules, inner.resources)
        self.runs = 0
        self.delay = delay
        self.lock = threading.Lock()

    def run(self, sample: Sample, journal: JournalLookup = lambda i: KnownReport()) -> Verdict:
        with self.lock:
            self.runs += 1
        time.sleep(self.delay)
        return super().run(sample, journal)


async def make_service(tmp_path: Path, eng: Engine, **kwargs: int) -> AnalysisService:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await store.open()
    service = AnalysisService(eng, store, **kwargs)
    await service.start()
    return service


async def test_identity_in_flight_is_analysed_once(tmp_path: Path) -> None:
    counting = CountingEngine(engine(["known", "expressions", "final_rule"],
                                     expressions={"expression": ["sample.file_extension == 'bat' -> bad"]}))
    service = await make_service(tmp_path, counting)
    try:
        jobs = [service.submit(Sample(b"@echo off\r\n", "x.bat")) for _ in range(10)]
        other = service.submit(Sample(b"@echo off\r\n", "y.bat"))
        await asyncio.gather(*(job.wait(10) for job in [*jobs, other]))
        assert all(job.result is Result.bad for job in jobs)
        assert len({job.id for job in jobs}) == 10
        assert counting.runs == 2  # one per identity
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
        accepted = []
        with pytest.raises(QueueFull):
            for i in range(10):
                accepted.append(service.submit(Sample(f"sample {i}".encode(), f"{i}.bin")))
                await asyncio.sleep(0)
        assert 2 <= len(accepted) <= 3
        await asyncio.gather(*(job.wait(10) for job in accepted))
        assert all(job.finished for job in accepted)
    finally:
        await service.stop()
        await service.store.close()


async def test_crashing_analysis_is_failed_and_store_failure_is_failed(tmp_path: Path) -> None:
    class Broken(Engine):
        def run(self, sample: Sample, journal: JournalLookup = lambda i: KnownReport()) -> Verdict:
            raise MemoryError("out of memory while unpacking")

    service = await make_service(tmp_path, Broken([], engine(["final_rule"]).resources))
    try:
        job = await service.analyse(Sample(b"whatever", "x.bin"), 10)
        assert job.result is Result.failed and "out of memory" in (job.reason or "")
    finally:
        await service.stop()
        await service.store.close()
