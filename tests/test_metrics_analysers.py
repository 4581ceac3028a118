"""Built-in analysers in /metrics: each run's seconds in ``mailowl_backend_seconds{analyser,backend}`` and
errors in ``mailowl_backend_errors_total``, measured where the analyser runs (the service's thread or a
worker process) and recorded by the server process, which serves /metrics."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY, generate_latest

from mailowl.analysis.clamav import Clamd
from mailowl.analysis.contract import Resources
from mailowl.analysis.sample import Sample
from mailowl.analysis.table import ANALYSERS
from mailowl.core.service import AnalysisService
from mailowl.core.workers import needs_isolation
from mailowl.results import Result
from mailowl.rules.loader import build_engine
from mailowl.store import Job, Store


def count(analyser: str, backend: str) -> float:
    return REGISTRY.get_sample_value("mailowl_backend_seconds_count", {"analyser": analyser, "backend": backend}) or 0


def errors(analyser: str, backend: str, kind: str) -> float:
    labels = {"analyser": analyser, "backend": backend, "kind": kind}
    return REGISTRY.get_sample_value("mailowl_backend_errors_total", labels) or 0


async def service_for(tmp_path: Path, rules: list[str], expressions: list[str], resources: Resources,
                      timeout: float = 60) -> AnalysisService:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await store.open()
    raw = {"rules": rules, "expressions": {"expression": expressions}}
    service = AnalysisService(build_engine(raw, "test", resources), store, workers=1, timeout=timeout)
    await service.start()
    return service


async def stop(service: AnalysisService) -> None:
    await service.stop()
    await service.store.flush()
    await service.store.close()


async def verdict(service: AnalysisService, sample: Sample) -> Job:
    job = await service.submit(sample)
    await job.wait(60)
    assert job.finished, "no verdict within 60 s"
    return job


async def test_scans_count_in_the_histograms_of_the_analysers_they_ran(tmp_path: Path) -> None:
    # clamd is configured but nothing listens: the clamav analyser raises, an error of its backend
    resources = Resources(clamd=Clamd(str(tmp_path / "no-clamd.sock"), timeout=5))
    service = await service_for(tmp_path, ["known", "expressions", "clamav", "final_rule"],
                                ["filereport.type_by_content == 'no such type' -> bad"], resources)
    before = {"file": count("filereport", "libmagic"), "clamd": count("clamavreport", "clamd"),
              "clamd errors": errors("clamavreport", "clamd", "error"), "ole": count("olereport", "olevba")}
    try:
        in_thread, in_worker = Sample(b"words in a text file\n", "a.txt"), Sample(b"MZ" + b"\0" * 100, "b.exe")
        assert not needs_isolation(in_thread.content) and needs_isolation(in_worker.content)
        jobs = [await verdict(service, in_thread), await verdict(service, in_worker)]
    finally:
        await stop(service)
    assert [job.result for job in jobs] == [Result.failed, Result.failed]  # clamd unreachable: never clean
    assert count("filereport", "libmagic") == before["file"] + 2  # one from the thread, one from the process
    assert count("clamavreport", "clamd") == before["clamd"] + 2
    assert errors("clamavreport", "clamd", "error") == before["clamd errors"] + 2
    assert count("olereport", "olevba") == before["ole"]  # no rule read it: not run, not counted
    exposition = generate_latest(REGISTRY).decode()  # what /metrics serves
    assert 'mailowl_backend_seconds_bucket{analyser="filereport",backend="libmagic",le="0.001"}' in exposition


@pytest.fixture
def hanging_pe(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """pereport sleeps for an hour on content starting with MZHANG (set before the worker is forked)."""
    real = ANALYSERS["pereport"]

    def run(sample: Sample, resources: Resources, budget: Any) -> Any:
        if bytes(sample.content[:6]) == b"MZHANG":
            time.sleep(3600)
        return real.run(sample, resources, budget)

    def install() -> None:
        monkeypatch.setitem(ANALYSERS, "pereport", dataclasses.replace(real, run=run))

    return install


async def test_an_analyser_past_the_deadline_counts_as_its_timeout(tmp_path: Path,
                                                                    hanging_pe: Callable[[], None]) -> None:
    hanging_pe()
    service = await service_for(tmp_path, ["known", "expressions", "final_rule"], ["pereport.is_pe -> bad"],
                                Resources(), timeout=2)
    before = errors("pereport", "pefile", "timeout")
    try:
        job = await verdict(service, Sample(b"MZHANG" + b"\0" * 100, "hang.exe"))
    finally:
        await stop(service)
    assert job.result is Result.failed and "timed out in pereport" in (job.reason or "")
    assert errors("pereport", "pefile", "timeout") == before + 1
