"""Database outages (issue 10 point 3) against a private PostgreSQL server that this test starts and stops
itself (never the machine's shared servers): writes and reads fail with StoreError, the API answers 503
with Retry-After, and once the server is back the store reconnects and loses nothing acknowledged."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mailowl.analysis.sample import Sample
from mailowl.results import Result, RuleResult
from mailowl.store import Store, StoreError

from .private_db import PrivatePostgres
from .server import Server


@pytest.fixture
def postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    try:
        yield server
    finally:
        server.remove()


async def _until_stored(store: Store, content: bytes) -> int:
    """Submit until the store takes it (it reconnects with backoff); the id of the stored job."""
    for _ in range(200):
        try:
            return (await asyncio.wait_for(store.new_job(Sample(content).facts()), 60)).id
        except StoreError:
            await asyncio.sleep(0.1)
    raise AssertionError("the store never reconnected")


async def test_store_fails_cleanly_while_the_database_is_down_and_reconnects(postgres: PrivatePostgres) -> None:
    store = Store(postgres.url, purge_min_age=0)  # 0: every read of a job asks the database
    await store.open()
    try:
        before = [await store.new_job(Sample(f"before {i}".encode()).facts()) for i in range(5)]
        pending = before[-1]
        for job in before[:-1]:
            job.finish(Result.good, "fine", [RuleResult("r", Result.good, "fine", True)], datetime.now(UTC))
            store.job_finished(job)
        await store.flush()
        postgres.stop()

        # a hang would be a failure too: every call must come back, with StoreError
        with pytest.raises(StoreError):
            await asyncio.wait_for(store.new_job(Sample(b"during the outage").facts()), 60)
        with pytest.raises(StoreError):
            await asyncio.wait_for(store.get_job(before[0].id), 60)
        with pytest.raises(StoreError):
            await asyncio.wait_for(store.journal(Sample(b"not in memory").identity), 60)
        with pytest.raises(StoreError):
            await asyncio.wait_for(store.get_message("mo-000000000001"), 60)
        # an acknowledged job finishing meanwhile: its state waits in memory for the database
        pending.finish(Result.bad, "evil", [RuleResult("r", Result.bad, "evil", True)], datetime.now(UTC))
        store.job_finished(pending)

        postgres.start()
        after = await _until_stored(store, b"after the outage")
        assert after > max(j.id for j in before)
        await asyncio.wait_for(store.flush(), 60)
    finally:
        await store.close()

    again = Store(postgres.url)  # a restart: what the database holds
    await again.open()
    try:
        for job in before:
            stored = await again.get_job(job.id)
            assert stored is not None and stored.state == "done" and stored.facts["sha256"] == job.facts["sha256"]
        last = await again.get_job(pending.id)
        assert last is not None and last.result is Result.bad and last.reason == "evil"
        assert (await again.journal(pending.identity)).known
    finally:
        await again.close()


async def test_closing_while_the_database_is_down_does_not_hang(postgres: PrivatePostgres) -> None:
    store = Store(postgres.url)
    await store.open()
    job = await store.new_job(Sample(b"finished during the outage").facts())
    postgres.stop()
    job.finish(Result.good, "fine", [RuleResult("r", Result.good, "fine", True)], datetime.now(UTC))
    store.job_finished(job)
    await asyncio.wait_for(store.close(), 60)  # gives up after a few attempts instead of retrying for ever
    postgres.start()
    again = Store(postgres.url)
    await again.open()
    try:
        stored = await again.get_job(job.id)
        assert stored is not None and stored.state == "pending"  # the next start of a server abandons it
    finally:
        await again.close()


def test_api_answers_503_with_retry_after_while_the_database_is_down(postgres: PrivatePostgres,
                                                                     tmp_path: Path) -> None:
    srv = Server(tmp_path, f'[store]\nurl = "{postgres.url}"\npurge_min_age = "1s"\n')
    try:
        status, payload, _ = srv.scan(b"@echo before\r\n", "before.bat")
        assert status == 200
        first = payload["job_id"]
        assert srv.verdict(first)["result"] == "bad"
        time.sleep(1)  # older than half of purge_min_age: the next read asks the database
        postgres.stop()

        status, payload, headers = srv.scan(b"@echo during\r\n", "during.bat")
        assert (status, headers.get("retry-after")) == (503, "5"), payload
        assert "Store unavailable" in payload["message"]
        for path in (f"/v1/report/{first}", f"/v2/jobs/{first}", "/v2/messages/mo-000000000001"):
            status, payload, headers = srv.request("GET", path)
            assert (status, headers.get("retry-after")) == (503, "5"), (path, payload)
        assert srv.request("GET", "/healthz")[0] == 200  # the process itself is fine

        postgres.start()
        for _ in range(100):
            status, payload, _ = srv.scan(b"@echo after\r\n", "after.bat")
            if status == 200:
                break
            assert status == 503
            time.sleep(0.2)
        assert status == 200 and payload["job_id"] > first
        assert srv.verdict(payload["job_id"])["result"] == "bad"
        assert srv.request("GET", f"/v1/report/{first}")[0] == 200
    finally:
        srv.stop()
