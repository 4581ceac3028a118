"""The store on SQLite and on the MariaDB and PostgreSQL servers of this machine."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, text, update

from mailowl.analysis.sample import Sample
from mailowl.results import Result, RuleResult
from mailowl.store import Job, Store, StoreError
from mailowl.store.models import jobs

from .server import Server


def finish(store: Store, job: Job, result: Result, reason: str = "because") -> None:
    job.finish(result, reason, [RuleResult("final_rule", result, reason, True)], datetime.now(UTC))
    store.job_finished(job)


async def test_jobs_verdicts_and_purge(store_url: str) -> None:
    store = Store(store_url, max_age=7 * 86400)
    await store.open()
    try:
        a = await store.new_job(Sample(b"alpha content", "a.exe", "application/octet-stream").facts())
        b = await store.new_job(Sample(b"beta content", "b.txt").facts())
        c = await store.new_job(Sample(b"gamma content", "c.bin").facts())
        assert (a.id, b.id, c.id) == (1, 2, 3)
        finish(store, a, Result.bad, "evil")
        finish(store, b, Result.failed, "broke")
        await store.flush()
    finally:
        await store.close()

    store = Store(store_url, max_age=7 * 86400)  # a restart: everything below comes from the database
    await store.open()
    try:
        job = await store.get_job(a.id)
        assert job is not None and job.result is Result.bad and job.reason == "evil"
        assert job.rules[0].rule == "final_rule" and job.facts["filename"] == "a.exe"
        assert job.facts["sha256"] == Sample(b"alpha content").sha256
        assert (await store.get_job(c.id)) is not None and (await store.get_job(c.id)).state == "pending"  # type: ignore[union-attr]
        assert await store.get_job(99) is None
        assert (await store.new_job(Sample(b"x").facts())).id == 4  # ids continue

        known = await store.journal(a.identity)
        assert known.known and known.worst() == (Result.bad, "evil")
        assert not (await store.journal(b.identity)).known  # failed verdicts are never reused
        assert not (await store.journal(Sample(b"never seen").identity)).known

        await store.flush()
        assert await store.abandon_pending() == 0  # this process is alive: its pending jobs stay
        async with store.engine.begin() as conn:  # type: ignore[union-attr]
            await conn.execute(update(jobs).values(run=f"{socket.gethostname()} 99999999 1"))
        assert await store.abandon_pending() == 2  # c and the new job: what a crash leaves behind
        store.jobs._jobs.clear()
        assert (await store.get_job(c.id)).result is Result.failed  # type: ignore[union-attr]

        # an old verdict is ignored by `known`, then purged
        assert store.engine is not None
        async with store.engine.begin() as conn:
            old = datetime.now(UTC) - timedelta(days=40)
            await conn.execute(update(jobs).where(jobs.c.id == a.id).values(finished_at=old, created_at=old))
        store.verdicts.clear()
        assert not (await store.journal(a.identity)).known
        assert await store.purge(30 * 86400) == 1
        assert await store.get_job(a.id) is None
    finally:
        await store.close()


async def test_long_declared_values_do_not_stall_writes(store_url: str) -> None:
    store = Store(store_url)
    await store.open()
    try:
        job = await store.new_job(Sample(b"x" * 10, "n" * 2000 + ".exe", "t/" + "y" * 400).facts())
        finish(store, job, Result.unknown)
        await store.flush()
        store.jobs._jobs.clear()
        again = await store.get_job(job.id)
        assert again is not None and again.result is Result.unknown
        assert again.facts["filename"] is not None and len(again.facts["filename"]) == 512
    finally:
        await store.close()


async def test_verdict_lookups_are_batched_and_cached(sqlite_store: Store) -> None:
    store = sqlite_store
    job = await store.new_job(Sample(b"known sample", "k.bin").facts())
    finish(store, job, Result.good, "fine")
    await store.flush()
    # in memory right away, before and after the write
    assert (await store.journal(job.identity)).result is Result.good
    store.verdicts.clear()
    reports = await asyncio.gather(*(store.journal(job.identity) for _ in range(20)))
    assert all(r.known for r in reports)


def test_purge_by_another_process_is_not_served_from_memory(tmp_path: Path) -> None:
    """`mailowl db purge` runs beside `mailowl serve`: what it deleted must answer 404, not the memory copy."""
    config = f'[server]\ndata_dir = "{tmp_path / "data"}"\n[store]\npurge_min_age = "1s"\n'
    srv = Server(tmp_path, config)
    try:
        old = [srv.scan(f"@echo old {i}\r\n".encode(), f"old{i}.bat")[1]["job_id"] for i in range(3)]
        created = [datetime.fromisoformat(srv.verdict(j)["created_at"]) for j in old]
        assert all(srv.request("GET", f"/v1/report/{j}")[0] == 200 for j in old)  # served from memory
        # the jobs must be older than --older-than by this machine's clock; waiting only makes them older
        while datetime.now(UTC) < max(created) + timedelta(seconds=1.5):
            time.sleep(0.1)
        purge = subprocess.run([sys.executable, "-m", "mailowl.cli", "db", "purge", "--older-than", "1s",
                                "--config", str(tmp_path / "mailowl.toml")], capture_output=True, text=True,
                               timeout=120)
        assert purge.returncode == 0 and "deleted 3 " in purge.stdout, purge.stdout + purge.stderr
        for job_id in old:
            assert srv.request("GET", f"/v1/report/{job_id}")[:2] == (
                404, {"message": f"No analysis result yet for job {job_id}"})
            assert srv.request("GET", f"/v2/jobs/{job_id}")[0] == 404
        status, payload, _ = srv.scan(b"@echo new\r\n", "new.bat")
        assert payload["job_id"] > max(old)  # purging the newest rows made no id reusable
        assert srv.verdict(payload["job_id"])["result"] == "bad"
        assert srv.request("GET", f"/v1/report/{payload['job_id']}")[0] == 200
    finally:
        srv.stop()

    refused = subprocess.run([sys.executable, "-m", "mailowl.cli", "db", "purge", "--older-than", "0s", "--config",
                              str(tmp_path / "mailowl.toml")], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "purge_min_age" in refused.stderr


async def test_ids_are_never_reused_after_deleting_the_newest_or_by_two_processes(store_url: str) -> None:
    first, second = Store(store_url), Store(store_url)  # two servers on one database
    await first.open()
    await second.open()
    try:
        jobs_ = await asyncio.gather(*(s.new_job(Sample(f"s{i}".encode(), f"{i}.bin").facts())
                                       for i in range(40) for s in (first, second)))
        ids = [j.id for j in jobs_]
        assert len(set(ids)) == len(ids) and min(ids) > 0
        assert first.engine is not None
        async with first.engine.begin() as conn:  # what a purge of the newest rows does
            await conn.execute(delete(jobs))
    finally:
        await first.close()
        await second.close()
    again = Store(store_url)  # a restart
    await again.open()
    try:
        assert (await again.new_job(Sample(b"after").facts())).id > max(ids)
        assert await again.get_job(max(ids)) is None
    finally:
        await again.close()


async def test_restart_abandons_only_pending_jobs_of_dead_runs(sqlite_store: Store) -> None:
    store = sqlite_store
    mine = await store.new_job(Sample(b"mine").facts())
    dead = await store.new_job(Sample(b"dead").facts())
    remote = await store.new_job(Sample(b"remote").facts())
    assert store.engine is not None
    async with store.engine.begin() as conn:
        # a pid that cannot exist on Linux (above pid_max) is a process of this host that is gone
        await conn.execute(update(jobs).where(jobs.c.id == dead.id).values(run=f"{socket.gethostname()} 99999999 1"))
        await conn.execute(update(jobs).where(jobs.c.id == remote.id).values(run="elsewhere.example 1 1"))
    other = Store(store.url)  # a second server starting beside this (live) one
    await other.open()
    try:
        assert await other.abandon_pending() == 1
        found = {j.id: await other.get_job(j.id) for j in (mine, dead, remote)}
        assert found[dead.id].result is Result.failed and "interrupted" in found[dead.id].reason  # type: ignore[union-attr,operator]
        assert found[mine.id].state == "pending" and found[remote.id].state == "pending"  # type: ignore[union-attr]
    finally:
        await other.close()


async def test_memory_answers_only_jobs_too_young_to_be_purged(tmp_path: Path) -> None:
    now = [datetime(2026, 1, 10, 12, tzinfo=UTC)]
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}", purge_min_age=3600, clock=lambda: now[0])
    await store.open()
    try:
        job = await store.new_job(Sample(b"kept in memory").facts())
        assert store.engine is not None
        async with store.engine.begin() as conn:  # another process deletes the row behind our back
            await conn.execute(delete(jobs))
        now[0] += timedelta(minutes=29)
        assert await store.get_job(job.id) is job  # no purge can have deleted it: answered from memory
        now[0] += timedelta(minutes=2)
        assert await store.get_job(job.id) is None  # old enough to be purged: the database decides
        assert job.id not in store.jobs._jobs
    finally:
        await store.close()


async def test_a_job_that_cannot_be_committed_gets_no_id(sqlite_store: Store) -> None:
    store = sqlite_store
    kept = await store.new_job(Sample(b"stored first").facts())
    assert store.engine is not None
    async with store.engine.begin() as conn:  # the database refuses every new row from now on
        await conn.execute(text("CREATE TRIGGER refuse BEFORE INSERT ON jobs BEGIN SELECT RAISE(ABORT, 'disk says no'); END"))
    with pytest.raises(StoreError, match="disk says no"):
        await store.new_job(Sample(b"never stored").facts())
    async with store.engine.begin() as conn:
        await conn.execute(text("DROP TRIGGER refuse"))
    again = await store.new_job(Sample(b"stored again").facts())  # the writer carries on
    assert again.id > kept.id


async def test_upgrade_from_0003_keeps_verdicts_and_finds_them_by_identity(store_url: str) -> None:
    from sqlalchemy import inspect


    facts = Sample(b"judged before the upgrade", "old.bin").facts()
    await _judged_at_revision(store_url, "0003", [facts])
    store = Store(store_url)
    await store.open()
    try:
        assert store.engine is not None
        async with store.engine.connect() as conn:
            indexes = await conn.run_sync(lambda c: {i["name"]: i["column_names"]
                                                     for i in inspect(c).get_indexes("jobs")})
        assert indexes.get("ix_jobs_identity") == ["identity"] and "ix_jobs_identity_finished" not in indexes
        journal = await store.journal(facts["identity"])
        assert journal.result is Result.bad and journal.known
    finally:
        await store.close()


async def test_sqlite_checkpoints_happen_off_the_event_loop_and_keep_the_wal_small(tmp_path: Path) -> None:
    """The writer commits on the event loop and must not stall on a checkpoint's fsyncs: its connection
    never checkpoints on commit; the writer runs checkpoints in a thread between commits, and they must still
    let the WAL start over, so it stays small under steady writes."""
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}")
    await store.open()
    try:
        assert store.db.sqlite_writer is not None and store.db.checkpoints is not None
        assert store.db.sqlite_writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        for round_ in range(100):
            jobs_ = [store.add_job(Sample(f"row {round_} {i}".encode() * 20, f"{i}.bin").facts()) for i in range(40)]
            for job in jobs_:
                await store.committed(job)
                finish(store, job, Result.unknown)
            await store.flush()
        # 4,000 jobs written twice: without checkpoints the WAL passes 20 MB
        assert (tmp_path / "store.db-wal").stat().st_size <= 4 * 2**20
    finally:
        await store.close()
    import sqlite3

    with sqlite3.connect(tmp_path / "store.db") as db:
        assert db.execute("SELECT count(*) FROM jobs WHERE state = 'done'").fetchone()[0] == 4000


async def test_sqlite_writer_waits_for_another_writers_lock_without_stalling_the_event_loop(tmp_path: Path) -> None:
    """Another connection (a parked sample's row, `db purge` in another process) holds SQLite's write lock.
    The group commit must wait for it off the event loop: requests keep being served meanwhile, and the
    job is committed once the lock is released."""
    import sqlite3
    import threading

    path = tmp_path / "store.db"
    store = Store(f"sqlite+aiosqlite:///{path}")
    await store.open()
    holding, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        holding.set()
        release.wait(60)
        db.execute("COMMIT")
        db.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert await asyncio.to_thread(holding.wait, 30)
        job = store.add_job(Sample(b"waits for the lock").facts())
        ticks = 0
        for _ in range(20):  # with the loop blocked inside BEGIN IMMEDIATE, not one of these would run
            await asyncio.sleep(0.005)
            ticks += 1
        assert ticks == 20 and job.id == 0  # the loop ran; the row waits for the lock
        release.set()
        await asyncio.wait_for(store.committed(job), 30)
        assert job.id > 0 and await store.get_job(job.id) is not None
    finally:
        release.set()
        await asyncio.to_thread(holder.join, 60)
        await store.close()


async def test_search_by_sha256_finds_cached_repeats_without_a_samples_row_for_them(store_url: str) -> None:
    """The samples table gets a row when an identity is analysed, none for a job the verdict cache answered at
    the first rule; the search by hash still lists both, through the identity. Purge drops rows of identities
    whose jobs are all gone."""
    from sqlalchemy import func, select

    from mailowl.store import browse
    from mailowl.store.models import samples

    clock = [datetime.now(UTC) - timedelta(days=2)]
    store = Store(store_url, clock=lambda: clock[0])
    await store.open()
    try:
        assert store.engine is not None
        data = b"the same bytes under two names"
        analysed = await store.new_job(Sample(data, "a.bin").facts())
        finish(store, analysed, Result.bad)
        other_name = await store.new_job(Sample(data, "b.bin").facts())
        finish(store, other_name, Result.bad)
        cached = store.add_job(Sample(data, "a.bin").facts())
        cached.finish(Result.bad, "known", [RuleResult("known", Result.bad, "known", False)], clock[0])
        store.job_finished(cached)  # answered before its row is written, as the verdict cache does
        await store.committed(cached)
        await store.flush()
        async with store.engine.connect() as conn:
            rows = (await conn.execute(select(samples.c.sha256, samples.c.identity))).all()
        sha256 = Sample(data).sha256
        assert sorted(rows) == sorted({(sha256, analysed.identity), (sha256, other_name.identity)})
        page = await browse.jobs_by_sha256(store.engine, sha256.upper())
        assert [j.id for j in page.items] == [cached.id, other_name.id, analysed.id]
        clock[0] = datetime.now(UTC)
        assert await store.purge(86_400) == 3
        async with store.engine.connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(samples))).scalar() == 0
    finally:
        await store.close()


async def test_upgrade_from_0007_moves_the_search_by_hash_to_samples(store_url: str) -> None:
    from sqlalchemy import inspect, select

    from mailowl.store import browse
    from mailowl.store.models import samples

    facts = [Sample(b"judged before the upgrade", name).facts() for name in ("old.bin", "old.bin", "new.bin")]
    await _judged_at_revision(store_url, "0007", facts)
    store = Store(store_url)
    await store.open()
    try:
        assert store.engine is not None
        async with store.engine.connect() as conn:
            indexes = await conn.run_sync(lambda c: {i["name"] for i in inspect(c).get_indexes("jobs")})
            rows = (await conn.execute(select(samples.c.identity))).scalars().all()
        assert "ix_jobs_sha256" not in indexes
        assert sorted(rows) == sorted({f["identity"] for f in facts})
        page = await browse.jobs_by_sha256(store.engine, facts[0]["sha256"])
        assert len(page.items) == 3
    finally:
        await store.close()


async def _judged_at_revision(store_url: str, revision: str, facts: list[dict[str, object]]) -> None:
    """A database at an older schema revision holding one finished (bad) job per ``facts``."""
    from alembic import command
    from sqlalchemy.ext.asyncio import create_async_engine

    from mailowl.store.migrate import alembic_config

    engine = create_async_engine(store_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(alembic_config(c), revision))
            now = datetime.now(UTC)
            for f in facts:
                await conn.execute(jobs.insert().values(
                    **{k: f[k] for k in ("identity", "sha256", "size", "filename")},
                    state="done", result="bad", reason=f"judged by {revision}", created_at=now, finished_at=now))
    finally:
        await engine.dispose()
