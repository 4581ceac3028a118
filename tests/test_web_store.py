"""store/browse.py, the web interface's queries, on SQLite, MariaDB and PostgreSQL; migration 0007."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event, inspect, update

from mailowl.analysis.sample import Sample
from mailowl.results import Result, RuleResult
from mailowl.store import Store, browse
from mailowl.store.models import jobs

SAME = b"the same content under three names"


def _message(support_id: str, when: datetime, sender: str, rcpt: list[str], parts: list[dict[str, Any]]) -> dict[str, Any]:
    return {"support_id": support_id, "created_at": when, "ingress": "smtp", "message_id": f"<{support_id}@x>",
            "mail_from": sender, "rcpt_to": rcpt, "client_ip": "127.0.0.1", "size": 100, "action": "accept",
            "reply": f"250 2.0.0 OK (support-id: {support_id})", "parts": parts, "findings": []}


async def _fill(store: Store, now: datetime) -> list[int]:
    samples = [Sample(SAME, "invoice.doc"), Sample(b"two", "Report-INVOICE.pdf"), Sample(SAME, "copy.doc"),
               Sample(b"four", "100%_sure.exe"), Sample(b"five", "photo.png"), Sample(SAME, "third.doc"),
               Sample(b"seven", None)]
    made = []
    for sample in samples:
        job = await store.new_job(sample.facts())
        rules = [RuleResult("known", Result.unknown, "not seen", True),
                 RuleResult("expressions", Result.bad, f"{sample.filename} is bad", False)]
        job.finish(Result.bad if sample.filename != "photo.png" else Result.good, f"{sample.filename} is bad",
                   rules, now)
        store.job_finished(job)
        made.append(job.id)
    part = {"filename": "<b>x</b>.bat", "content_type": "application/octet-stream", "disposition": "attachment",
            "size": 3, "sha256": Sample(SAME).sha256, "job_id": made[0], "result": "bad", "reason": "evil",
            "findings": []}
    store.record_message(_message("mo-000000000001", now - timedelta(seconds=40), "alice@x.example",
                                  ["bob@y.example"], [part]))
    store.record_message(_message("mo-000000000002", now - timedelta(seconds=30), "mallory@z.example",
                                  ["carol@y.example", "bob@y.example"], []))
    # two at the very same moment: keyset pages must show each exactly once
    store.record_message(_message("mo-000000000003", now - timedelta(seconds=20), "alice@x.example",
                                  ["acarol@y.example"], []))
    store.record_message(_message("mo-000000000004", now - timedelta(seconds=20), "alice@x.example",
                                  ["dave@y.example"], []))
    store.record_message(_message("mo-000000000005", now - timedelta(seconds=10), "bob@y.example",
                                  ["alice@x.example"], []))
    await store.flush()
    return made


async def _all_pages(fetch: Any, limit: int) -> list[list[Any]]:
    pages, cursor = [], None
    while True:
        page = await fetch(limit=limit, before=cursor)
        pages.append(page.items)
        if page.next is None:
            return pages
        cursor = page.next


async def test_lists_searches_and_pages(store_url: str) -> None:
    store = Store(store_url)
    await store.open()
    try:
        now = datetime.now(UTC).replace(microsecond=0)
        ids = await _fill(store, now)
        engine = store.engine
        assert engine is not None

        pages = await _all_pages(lambda **kw: browse.latest_jobs(engine, **kw), 3)
        assert [[j.id for j in p] for p in pages] == [ids[6:3:-1], ids[3:0:-1], ids[:1]]

        first = await browse.job(engine, ids[0])
        assert first is not None and first.filename == "invoice.doc" and first.result == "bad"
        assert [r.rule for r in first.rules] == ["known", "expressions"]
        assert first.deciding_rule is not None and first.deciding_rule.rule == "expressions"
        assert first.sha256 == Sample(SAME).sha256 and first.created_at.tzinfo is not None
        assert await browse.job(engine, 10**12) is None

        same = await browse.jobs_by_sha256(engine, Sample(SAME).sha256.upper())
        assert [j.id for j in same.items] == [ids[5], ids[2], ids[0]] and same.next is None
        paged = await _all_pages(lambda **kw: browse.jobs_by_sha256(engine, Sample(SAME).sha256, **kw), 2)
        assert [[j.id for j in p] for p in paged] == [[ids[5], ids[2]], [ids[0]]]

        found = await browse.jobs_by_filename(engine, "invoice")  # any case, any part of the name
        assert [j.filename for j in found.items] == ["Report-INVOICE.pdf", "invoice.doc"]
        assert [j.filename for j in (await browse.jobs_by_filename(engine, "0%_")).items] == ["100%_sure.exe"]
        assert (await browse.jobs_by_filename(engine, "_")).items[0].filename == "100%_sure.exe"
        assert len((await browse.jobs_by_filename(engine, "%")).items) == 1  # a percent sign, not "anything"

        pages_m = await _all_pages(lambda **kw: browse.latest_messages(engine, **kw), 2)
        assert [[m.support_id[-1] for m in p] for p in pages_m] == [["5", "4"], ["3", "2"], ["1"]]

        sent = await _all_pages(lambda **kw: browse.messages_from(engine, "alice@x.example", **kw), 1)
        assert [m.support_id[-1] for p in sent for m in p] == ["4", "3", "1"]
        to_carol = await browse.messages_to(engine, "carol@y.example")
        assert [m.support_id for m in to_carol.items] == ["mo-000000000002"]  # not acarol@
        to_bob = await browse.messages_to(engine, "bob@y.example")
        assert [m.support_id for m in to_bob.items] == ["mo-000000000002", "mo-000000000001"]

        record = await browse.message(engine, "mo-000000000001")
        assert record is not None and record.rcpt_to == ["bob@y.example"] and record.verdict == "bad"
        assert record.parts[0].filename == "<b>x</b>.bat" and record.parts[0].job_id == ids[0]
        assert (await browse.message(engine, "mo-000000000002")).verdict == "clean"  # type: ignore[union-attr]
        assert await browse.message(engine, "mo-nothing") is None
    finally:
        await store.close()


async def test_dashboard_figures(store_url: str) -> None:
    store = Store(store_url)
    await store.open()
    try:
        now = datetime.now(UTC)
        ids = await _fill(store, now)
        engine = store.engine
        assert engine is not None
        async with engine.begin() as conn:  # two jobs from three hours ago
            await conn.execute(update(jobs).where(jobs.c.id.in_(ids[:2])).values(created_at=now - timedelta(hours=3)))
        buckets = await browse.verdicts_over_time(engine, now + timedelta(seconds=1), timedelta(hours=1), 24)
        assert len(buckets) == 24 and buckets[-1].counts == {"bad": 4, "good": 1}
        assert buckets[-4].counts == {"bad": 2} and sum(sum(b.counts.values()) for b in buckets) == 7

        figures = await browse.summary(engine, now + timedelta(seconds=1))
        assert (figures.jobs_last_minute, figures.jobs_last_hour) == (5, 5)
        assert figures.rules == [("expressions", 7)]
        assert ("photo.png is bad", 1) in figures.reasons
        assert sum(n for _, n in figures.types) == 7
    finally:
        await store.close()


async def test_migration_0007_adds_and_removes_its_indexes(store_url: str) -> None:
    from alembic import command
    from sqlalchemy.ext.asyncio import create_async_engine

    from mailowl.store.migrate import alembic_config

    def indexes(conn: Any) -> dict[str, dict[str, list[str]]]:
        found = inspect(conn)
        return {t: {i["name"]: i["column_names"] for i in found.get_indexes(t)} for t in ("jobs", "messages")}

    async def at(revision: str, downgrade: bool = False) -> dict[str, dict[str, list[str]]]:
        move = command.downgrade if downgrade else command.upgrade
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: move(alembic_config(c), revision))
            return await conn.run_sync(indexes)

    engine = create_async_engine(store_url)
    try:
        before = await at("0006")
        assert "ix_jobs_sha256" not in before["jobs"] and "ix_messages_from" not in before["messages"]
        after = await at("0007")
        assert after["jobs"]["ix_jobs_sha256"] == ["sha256"]
        assert after["messages"]["ix_messages_from"] == ["mail_from", "created_at"]
        # 0008 finds hashes through its samples table instead of ix_jobs_sha256; the sender index stays
        head = await at("head")
        assert "ix_jobs_sha256" not in head["jobs"] and head["messages"]["ix_messages_from"] == ["mail_from", "created_at"]
        again = await at("0006", downgrade=True)
        assert "ix_jobs_sha256" not in again["jobs"] and "ix_messages_from" not in again["messages"]
    finally:
        await engine.dispose()


async def test_sqlite_answers_each_page_from_an_index(tmp_path: Path) -> None:
    """What keeps pages fast with millions of jobs: SQLite's own plan for every statement the pages run."""
    path = tmp_path / "store.db"
    store = Store(f"sqlite+aiosqlite:///{path}")
    await store.open()
    statements: list[tuple[str, Any]] = []
    try:
        now = datetime.now(UTC)
        await _fill(store, now)
        engine = store.engine
        assert engine is not None
        event.listen(engine.sync_engine, "before_cursor_execute",
                     lambda _c, _cur, sql, params, _ctx, _many: statements.append((sql, params)))
        await browse.latest_jobs(engine, before="5")
        await browse.jobs_by_sha256(engine, Sample(SAME).sha256)
        await browse.jobs_by_filename(engine, "invoice")
        await browse.latest_messages(engine, before="1000.mo-x")
        await browse.messages_from(engine, "alice@x.example")
        await browse.messages_to(engine, "bob@y.example")
        await browse.verdicts_over_time(engine, now, timedelta(hours=1), 2)
        await browse.summary(engine, now)
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        plans = {sql: " | ".join(row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", params))
                 for sql, params in statements}
    assert plans, "no statement was seen"
    for sql, plan in plans.items():
        # nothing sorts a whole table, and a table is only scanned in its primary key's order, up to a LIMIT
        # (ties on created_at are put in support id order: a sort of one timestamp's rows, not of the table;
        # GROUP BY counts the rows an index range found)
        assert "USE TEMP B-TREE FOR ORDER BY" not in plan, (sql, plan)
        for step in plan.split(" | "):
            if step in ("SCAN jobs", "SCAN messages"):
                assert "ORDER BY jobs.id DESC" in sql and "LIMIT" in sql, (sql, plan)
            if "messages.created_at <" in sql:  # a page after a cursor starts at the cursor
                assert "SEARCH messages USING INDEX ix_messages_created (created_at<?)" in plan, (sql, plan)
    joined = " ".join(plans.values())
    for index in ("ix_jobs_identity", "samples USING PRIMARY KEY", "ix_messages_from", "ix_messages_created",
                  "ix_jobs_created"):
        assert index in joined, (index, plans)


async def test_a_hash_under_many_names_is_found_whole(store_url: str) -> None:
    """One identity at a time up to 20 names, one IN query beyond: the same jobs, newest first, in pages."""
    store = Store(store_url)
    await store.open()
    try:
        made = []
        for count, content in ((3, b"three names"), (25, b"twenty-five names")):
            ids = []
            for i in range(count):
                job = await store.new_job(Sample(content, f"name-{i}.bin").facts())
                job.finish(Result.good, "fine", [RuleResult("final_rule", Result.good, "fine", True)], datetime.now(UTC))
                store.job_finished(job)
                ids.append(job.id)
            made.append(ids)
        await store.flush()
        assert store.engine is not None
        for ids, content in zip(made, (b"three names", b"twenty-five names"), strict=True):
            for size in (1, 2, 7, 50):
                pages = await _all_pages(lambda engine=store.engine, c=content, **kw:
                                         browse.jobs_by_sha256(engine, Sample(c).sha256, **kw), size)
                assert [j.id for p in pages for j in p] == ids[::-1], size
                assert all(len(p) == size for p in pages[:-1])
    finally:
        await store.close()
