"""Samples waiting for Cortex are parked: no worker held, the ruleset runs again with the report, a
restart resumes tracking them, and every way a Cortex job can end gives the verdict it should."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mailowl import metrics
from mailowl.analysis.contract import Resources
from mailowl.analysis.cortex import CortexSettings
from mailowl.analysis.sample import Sample
from mailowl.api.app import create_app
from mailowl.core.service import AnalysisService
from mailowl.results import Result
from mailowl.rules.loader import build_engine
from mailowl.store import Job, Store
from tests.cortex_server import CortexStandIn, running

EXPRESSIONS = [
    "sample.file_extension == 'txt' -> good",  # decided without Cortex
    "cortexreport.FileInfoReport.level == 'malicious' -> bad",
    "cortexreport.FileInfoReport.level == 'safe' -> good",
]


def make_engine(url: str, expressions: list[str] = EXPRESSIONS, **settings: Any) -> Any:
    cortex = CortexSettings(url=url, api_token=settings.pop("api_token", "cortex-key"), backoff=0.05,
                            poll_interval=settings.pop("poll_interval", 0.2), **settings)
    raw = {"rules": ["expressions", "final_rule"], "expressions": {"expression": expressions}}
    return build_engine(raw, "test", Resources(cortex=cortex))


async def start(url: str, store_url: str, workers: int = 2, **settings: Any) -> AnalysisService:
    store = Store(store_url)
    await store.open()
    await store.abandon_pending()
    service = AnalysisService(make_engine(url, **settings), store, workers=workers, timeout=60)
    await service.start()
    return service


async def finish(service: AnalysisService) -> None:
    await service.stop()
    await service.store.flush()
    await service.store.close()


@pytest.fixture
def cortex() -> Iterator[CortexStandIn]:
    with running() as server:
        yield server


@pytest.fixture
async def service(cortex: CortexStandIn, tmp_path: Path) -> AsyncIterator[AnalysisService]:
    svc = await start(cortex.url, f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    yield svc
    await finish(svc)


async def verdict(service: AnalysisService, content: bytes, name: str = "a.bin", wait: float = 60) -> Job:
    job = await service.submit(Sample(content, filename=name))
    await job.wait(wait)
    assert job.finished, f"no verdict within {wait} s"
    return job


async def test_the_report_decides_and_the_ruleset_runs_again(service: AnalysisService, cortex: CortexStandIn) -> None:
    bad = await verdict(service, b"EVIL one")
    assert (bad.result, bad.reason) == (Result.bad, "The expression (1) classified the sample as Result.bad")
    good = await verdict(service, b"SAFE one")
    assert good.result == Result.good
    neither = await verdict(service, b"plain one")
    assert neither.result == Result.unknown
    assert len(cortex.submissions("FileInfo_8_0")) == 3
    assert cortex.submissions()[0].filename == "a.bin" and cortex.submissions()[0].tlp == 2
    assert service.parking is not None and not service.parking.parked


async def test_samples_decided_without_cortex_are_not_submitted(service: AnalysisService,
                                                                 cortex: CortexStandIn) -> None:
    job = await verdict(service, b"EVIL", name="note.txt")
    assert job.result == Result.good
    assert cortex.submissions() == []


async def test_once_per_sample_and_analyzer(cortex: CortexStandIn, tmp_path: Path) -> None:
    cortex.delay = 0.5
    expressions = ["cortexreport.FileInfoReport.level == 'info' and cortexreport.FileInfoReport.md5sum == '' -> bad",
                   "cortexreport.FileInfoReport.sha256sum == sample.sha256sum -> good"]
    svc = await start(cortex.url, f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", expressions=expressions)
    try:
        jobs = [await svc.submit(Sample(b"same content", filename="a.bin")) for _ in range(3)]
        for job in jobs:
            await job.wait(60)
        assert [j.result for j in jobs] == [Result.good] * 3
        assert len(cortex.submissions()) == 1
    finally:
        await finish(svc)


async def test_two_analyzers_one_after_the_other(cortex: CortexStandIn, tmp_path: Path) -> None:
    expressions = ["cortexreport.FileInfoReport.level == 'info' and cortexreport.MISP_2_1Report.level == 'info' -> bad"]
    svc = await start(cortex.url, f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", expressions=expressions)
    try:
        assert (await verdict(svc, b"x")).result == Result.bad
        assert [j.analyzer for j in cortex.submissions()] == ["FileInfo_8_0", "MISP_2_1"]
    finally:
        await finish(svc)


async def test_parked_samples_hold_no_worker(cortex: CortexStandIn, tmp_path: Path) -> None:
    cortex.delay = 10.0
    svc = await start(cortex.url, f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", workers=1)
    try:
        parked = [await svc.submit(Sample(b"EVIL %d" % i, filename="a.bin")) for i in range(20)]
        deadline = time.monotonic() + 30
        while len(cortex.submissions()) < 20 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert len(cortex.submissions()) == 20
        assert svc.parking is not None and len(svc.parking.parked) == 20
        assert metrics.PARKED._value.get() == 20
        # with the one worker held by a parked sample, this would wait for Cortex's answer
        quick = await verdict(svc, b"anything", name="x.txt", wait=30)
        assert quick.result == Result.good
        assert not any(job.finished for job in parked)
        for job in parked:
            await job.wait(60)
        assert {job.result for job in parked} == {Result.bad}
    finally:
        await finish(svc)


@pytest.mark.parametrize("final", ["Failure", "Deleted"])
async def test_failed_and_deleted_jobs_fail_the_sample(cortex: CortexStandIn, service: AnalysisService,
                                                        final: str) -> None:
    cortex.final = final
    job = await verdict(service, b"EVIL")
    assert job.result == Result.failed
    assert f"ended in state {final}: stand-in job {final}" in (job.reason or "")


async def test_a_malformed_report_fails_the_sample(cortex: CortexStandIn, service: AnalysisService) -> None:
    cortex.report = lambda job: {"summary": {"taxonomies": [{"level": "purple"}]}}
    job = await verdict(service, b"EVIL")
    assert job.result == Result.failed and "malformed report" in (job.reason or "")


async def test_an_oversized_answer_fails_the_sample_at_once(cortex: CortexStandIn, service: AnalysisService,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from mailowl.analysis import cortex as module

    monkeypatch.setattr(module, "MAX_ANSWER", 300)  # a FileInfo report is about 1 KB
    job = await verdict(service, b"EVIL")
    assert job.result == Result.failed and "malformed answer" in (job.reason or "")
    assert "larger than" in (job.reason or "")
    waits = [path for method, path in cortex.requests if path.endswith("/waitreport")]
    assert len(waits) == 1  # not asked again every poll_interval until maximum_job_age


async def test_the_second_run_keeps_the_file_type_of_the_first(cortex: CortexStandIn, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """libmagic is most of what running the ruleset again costs: its answer is kept while the sample is
    parked, and the report it is in gets the sample's bytes back (type_as_text is read after the report)."""
    from mailowl.analysis import filetype

    calls: list[int] = []
    real = filetype.type_by_content
    monkeypatch.setattr(filetype, "type_by_content", lambda content: calls.append(1) or real(content))
    expressions = ["filereport.type_by_content == 'application/x-nothing' -> good",
                   "cortexreport.FileInfoReport.level == 'malicious' and filereport.type_as_text != '' -> bad"]
    svc = await start(cortex.url, f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", expressions=expressions)
    try:
        job = await verdict(svc, b"EVIL as plain text")
    finally:
        await finish(svc)
    assert job.result == Result.bad
    assert len(calls) == 1
    assert "ASCII text" in (job.rule_facts or "") and '"type_by_content":"text/plain"' in (job.rule_facts or "")


async def test_maximum_job_age(cortex: CortexStandIn, tmp_path: Path) -> None:
    cortex.final = "never"
    svc = await start(cortex.url, f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", maximum_job_age=1.0)
    try:
        job = await verdict(svc, b"EVIL")
        assert job.result == Result.failed and "maximum_job_age (1 s)" in (job.reason or "")
    finally:
        await finish(svc)


async def test_polling_where_there_is_no_waitreport(cortex: CortexStandIn, service: AnalysisService) -> None:
    cortex.waitreport, cortex.delay = False, 0.5
    assert (await verdict(service, b"EVIL")).result == Result.bad
    assert ("GET", "/api/job/job-1/report") in cortex.requests


async def test_5xx_bursts_are_ridden_out(cortex: CortexStandIn, service: AnalysisService) -> None:
    cortex.errors_5xx = 4
    assert (await verdict(service, b"EVIL")).result == Result.bad


async def test_missing_analyzer_fails_the_sample(cortex: CortexStandIn, service: AnalysisService) -> None:
    cortex.analyzers = {}
    job = await verdict(service, b"EVIL")
    assert job.result == Result.failed and "FileInfo_8_0 is not enabled" in (job.reason or "")


async def test_wrong_token_is_shown_in_healthz(cortex: CortexStandIn, tmp_path: Path) -> None:
    svc = await start(cortex.url, f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", api_token="wrong")
    try:
        job = await verdict(svc, b"EVIL")
        assert job.result == Result.failed and "refused the api_token" in (job.reason or "")
        app = create_app(svc, 1 << 20)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            health = (await client.get("/healthz")).json()
            assert "refused the api_token" in health["cortex"]["problem"]
            text = (await client.get("/metrics")).text
            assert 'mailowl_backend_errors_total{analyser="cortexreport",backend="cortex",kind="auth"}' in text
            assert "mailowl_parked_samples" in text
    finally:
        await finish(svc)


async def test_worker_processes_park_too(cortex: CortexStandIn, service: AnalysisService) -> None:
    # MZ: analysed in a forked worker process (needs_isolation), which sends the park request back
    job = await verdict(service, b"MZ EVIL in a worker process")
    assert job.result == Result.bad
    assert len(cortex.submissions()) == 1


async def _resumed_bad(svc: AnalysisService, job: Job) -> None:
    """After a restart: the one parked sample is tracked again and its job gets the report's verdict."""
    assert svc.parking is not None and len(svc.parking.parked) == 1
    resumed = svc._in_flight[job.identity][0]
    await resumed.wait(60)
    assert (resumed.id, resumed.result) == (job.id, Result.bad)


async def test_a_restart_resumes_tracking(cortex: CortexStandIn, store_url: str) -> None:
    cortex.delay = 3.0
    svc = await start(cortex.url, store_url)
    job = await svc.submit(Sample(b"EVIL resumed", filename="r.bin"))
    deadline = time.monotonic() + 30
    while not cortex.submissions() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # the Cortex job id is written
    await finish(svc)
    assert not job.finished
    svc = await start(cortex.url, store_url)
    try:
        await _resumed_bad(svc, job)
        assert len(cortex.submissions()) == 1  # tracked again, not submitted again
        await svc.store.flush()
        stored = await svc.store.get_job(job.id)
        assert stored is not None and stored.result == Result.bad
    finally:
        await finish(svc)


async def test_a_restart_resumes_many_samples_whose_cortex_jobs_have_ended(cortex: CortexStandIn,
                                                                          store_url: str) -> None:
    """Cortex finished the jobs while mailowl was down: every resumed sample's answer comes at once, while
    the other rows are still being read. Each must reach its jobs (a sample answered before its jobs were
    in flight again used to be dropped, its job pending for ever)."""
    cortex.delay = 1.0
    svc = await start(cortex.url, store_url)
    jobs = [await svc.submit(Sample(b"EVIL many %d" % i, filename=f"m{i}.bin")) for i in range(20)]
    deadline = time.monotonic() + 30
    while len(cortex.submissions()) < 20 or any(j.remote_job is None for j in svc.parking.parked.values()):  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "not all samples were parked"
        await asyncio.sleep(0.05)
    await finish(svc)
    await asyncio.sleep(1.5)  # Cortex ends every job meanwhile
    svc = await start(cortex.url, store_url)
    live = {job.id: job for waiting in svc._in_flight.values() for job in waiting}  # before any can finish
    try:
        assert sorted(live) == sorted(job.id for job in jobs)
        for job in live.values():
            await job.wait(60)
            assert job.result == Result.bad, (job.id, job.state, job.result)
        assert len(cortex.submissions()) == 20
    finally:
        await finish(svc)


async def test_a_stop_while_the_answer_is_read_back_keeps_the_sample_parked(
        cortex: CortexStandIn, store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cortex has answered, and the sample's row is being read back when mailowl stops: the row stays, and
    the next start resumes the sample and answers its job (never "interrupted")."""
    from mailowl.store import parked as parked_table

    monkeypatch.setattr(parked_table, "_GATHER", 3.0)  # the read-back waits long enough to stop meanwhile
    cortex.delay = 0.5
    svc = await start(cortex.url, store_url)
    job = await svc.submit(Sample(b"EVIL read back", filename="r.bin"))
    deadline = time.monotonic() + 30
    while not svc.store.parked._reads._waiting:
        assert time.monotonic() < deadline, "the answer never came"
        await asyncio.sleep(0.05)
    await finish(svc)
    assert not job.finished
    monkeypatch.setattr(parked_table, "_GATHER", 0.02)
    svc = await start(cortex.url, store_url)
    try:
        await _resumed_bad(svc, job)
        deadline = time.monotonic() + 30
        while await svc.store.parked.all_rows():  # deleted once the sample is back in the queue
            assert time.monotonic() < deadline, "the parked row was never deleted"
            await asyncio.sleep(0.05)
    finally:
        await finish(svc)


async def test_archive_members_are_not_sent_to_cortex(cortex: CortexStandIn, tmp_path: Path) -> None:
    """A member's report would be attached to the archive: members needing Cortex fail, never loop."""
    import io
    import zipfile

    cortex_settings = CortexSettings(url=cortex.url, api_token="cortex-key", backoff=0.05)
    raw = {"rules": ["archive", "expressions", "final_rule"],
           "expressions": {"expression": ["cortexreport.FileInfoReport.md5sum != '' -> bad"]}}
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await store.open()
    svc = AnalysisService(build_engine(raw, "test", Resources(cortex=cortex_settings)), store, workers=1)
    await svc.start()
    try:
        packed = io.BytesIO()
        with zipfile.ZipFile(packed, "w") as zf:
            zf.writestr("inner.bin", b"EVIL inside")
        job = await verdict(svc, packed.getvalue(), name="a.zip")
        assert job.result == Result.failed
        assert "for an archive member; Cortex analyses top-level samples only" in (job.reason or "")
        assert cortex.submissions() == []
    finally:
        await finish(svc)


async def test_a_duplicate_joining_a_parked_sample_survives_a_restart(cortex: CortexStandIn, store_url: str) -> None:
    """The duplicate's job id goes into the parked row: after a restart both jobs get the verdict."""
    cortex.delay = 3.0
    svc = await start(cortex.url, store_url)
    first = await svc.submit(Sample(b"EVIL twice", filename="d.bin"))
    deadline = time.monotonic() + 30
    while not (svc.parking and svc.parking.parked and cortex.submissions()) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    second = await svc.submit(Sample(b"EVIL twice", filename="d.bin"))  # joins the parked analysis
    await finish(svc)
    assert not first.finished and not second.finished and first.id != second.id
    store = Store(store_url)
    await store.open()
    try:
        assert [row.job_ids for row in await store.parked.all_rows()] == [[first.id, second.id]]
    finally:
        await store.close()
    svc = await start(cortex.url, store_url)
    try:
        resumed = svc._in_flight[first.identity]
        assert sorted(job.id for job in resumed) == [first.id, second.id]
        for job in resumed:
            await job.wait(60)
        assert [job.result for job in resumed] == [Result.bad, Result.bad]
        assert len(cortex.submissions()) == 1
        await svc.store.flush()
        stored = [await svc.store.get_job(job_id) for job_id in (first.id, second.id)]
        assert [job.result if job else None for job in stored] == [Result.bad, Result.bad]
    finally:
        await finish(svc)
