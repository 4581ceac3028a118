"""The store's parts (issue 10): typed message records, the verdict cache without a start-up filter, and
`db purge` in batches; on SQLite, MariaDB and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update

from mailowl.analysis.sample import Sample
from mailowl.results import Result, RuleResult
from mailowl.store import Job, MessageRecord, Store
from mailowl.store.models import jobs, messages, samples


def finish(store: Store, job: Job, result: Result, reason: str = "because") -> None:
    job.finish(result, reason, [RuleResult("final_rule", result, reason, True)], datetime.now(UTC))
    store.job_finished(job)


def record(support_id: str, when: datetime, **values: object) -> MessageRecord:
    return MessageRecord(support_id=support_id, created_at=when, ingress="smtp", action="reject",
                         rcpt_to=["b@example.net"], parts=[{"filename": "run.bat", "job_id": 7, "result": "bad"}],
                         **values)  # type: ignore[arg-type]


async def test_message_records_come_back_typed_from_memory_and_from_the_table(store_url: str) -> None:
    store = Store(store_url)
    await store.open()
    try:
        when = datetime(2026, 3, 1, 12, 30, 15, tzinfo=UTC)  # MariaDB keeps whole seconds (DATETIME)
        sent = record("mo-00000000000a", when, message_id="<m@x>", mail_from="a" * 600 + "@x",
                      client_ip="192.0.2.1", size=1234, reply="554 5.7.1 no", findings=[{"kind": "macro"}])
        store.record_message(sent)
        fresh = await store.get_message(sent.support_id)
        assert fresh == sent and fresh is not sent  # a copy: the caller may change it
        await store.flush()
        store.messages.forget_recent()
        stored = await store.get_message(sent.support_id)
        assert isinstance(stored, MessageRecord)
        assert stored.created_at == when and stored.parts == sent.parts and stored.findings == sent.findings
        assert stored.rcpt_to == ["b@example.net"] and stored.client_ip == "192.0.2.1" and stored.size == 1234
        assert stored.mail_from == ("a" * 600 + "@x")[:512]  # a stranger's sender never overflows the column
        assert await store.get_message("mo-0000000000ff") is None
    finally:
        await store.close()


async def test_a_verdict_stored_by_another_instance_is_known_at_once(store_url: str) -> None:
    """Nothing is loaded at start-up any more: an identity this instance never saw is looked up, so a
    verdict another instance wrote after this one started is found (a filter loaded at start-up said
    "never seen" here: a wrong, fresh analysis)."""
    here, there = Store(store_url), Store(store_url)
    await here.open()
    await there.open()
    try:
        job = await there.new_job(Sample(b"analysed over there", "x.exe").facts())
        finish(there, job, Result.bad, "evil")
        await there.flush()
        assert here.journal_now(job.identity) is None  # not in memory: never a guess
        report = await here.journal(job.identity)
        assert report.known and report.worst() == (Result.bad, "evil")
        never = Sample(b"nobody has seen this").identity
        assert not (await here.journal(never)).known
        if not here.cluster:
            assert here.journal_now(never) is not None  # one process on SQLite: the answer is remembered
            return
        # several instances may share MariaDB / PostgreSQL: "never seen" is never remembered, so a verdict
        # the other instance reaches afterwards is used here at once
        assert here.journal_now(never) is None
        later = await there.new_job(Sample(b"nobody has seen this").facts())
        finish(there, later, Result.good, "fine")
        await there.flush()
        assert (await here.journal(never)).last_result == Result.good
    finally:
        await here.close()
        await there.close()


async def test_purge_deletes_old_finished_jobs_in_batches_and_keeps_the_rest(store_url: str) -> None:
    store = Store(store_url, purge_min_age=60)
    await store.open()
    try:
        old = datetime.now(UTC) - timedelta(days=40)
        made = [await store.new_job(Sample(f"sample {i}".encode(), f"{i}.bin").facts()) for i in range(23)]
        for job in made[:-1]:
            finish(store, job, Result.good)
        await store.flush()
        keep_identity = made[0].identity
        again = await store.new_job(Sample(b"sample 0", "0.bin").facts())  # same identity, new: stays
        finish(store, again, Result.good)
        store.record_message(record("mo-0000000000a1", old))
        store.record_message(record("mo-0000000000a2", old))
        store.record_message(record("mo-0000000000a3", datetime.now(UTC)))
        await store.flush()
        assert store.engine is not None
        async with store.engine.begin() as conn:
            # all but the newest job are old; the last one is old but still pending: never purged
            await conn.execute(update(jobs).where(jobs.c.id.in_([j.id for j in made])).values(created_at=old))
        deleted = await store.jobs.purge(30 * 86400, batch=4)
        assert deleted == 22
        async with store.engine.connect() as conn:
            left = sorted(i for (i,) in await conn.execute(select(jobs.c.id)))
            sample_identities = {i for (i,) in await conn.execute(select(samples.c.identity))}
            message_ids = sorted(s for (s,) in await conn.execute(select(messages.c.support_id)))
            assert (await conn.execute(select(func.count()).select_from(samples))).scalar() == 2
        assert left == sorted([made[-1].id, again.id])
        # the search by hash keeps identities that still have a job, drops the ones whose jobs are all gone
        assert sample_identities == {keep_identity, made[-1].identity}
        assert message_ids == ["mo-0000000000a3"]
    finally:
        await store.close()


async def test_purge_lets_a_running_servers_commits_through_between_batches(tmp_path: object) -> None:
    """`db purge` is another process on the same SQLite file: the server's group commits must get the
    write lock between two batches, not only once the whole purge is done."""
    url = f"sqlite+aiosqlite:///{tmp_path}/store.db"
    server, purger = Store(url), Store(url, purge_min_age=60)
    await server.open()
    await purger.open()
    try:
        old = datetime.now(UTC) - timedelta(days=40)
        made = [server.add_job(Sample(f"old {i}".encode()).facts()) for i in range(3000)]
        for job in made:
            await server.committed(job)
            finish(server, job, Result.good)
        await server.flush()
        assert server.engine is not None
        async with server.engine.begin() as conn:
            await conn.execute(update(jobs).values(created_at=old))
        purge = asyncio.create_task(purger.jobs.purge(30 * 86400, batch=100))
        during = 0
        while not purge.done():
            await server.new_job(Sample(f"new {during}".encode()).facts())
            if not purge.done():
                during += 1
        assert await purge == 3000
        assert during >= 5  # 30 batches: commits went through while the purge ran
    finally:
        await purger.close()
        await server.close()


async def test_a_senders_nul_never_stalls_the_writer(store_url: str) -> None:
    """PostgreSQL refuses NUL in text: a Subject's encoded-word, a MIME header or an archive member's name
    in a rule's reason could carry one, and the group commit holding it would fail (the message record
    tried again for ever, other uploads' jobs with it). The store drops NUL on every backend."""
    store = Store(store_url)
    await store.open()
    try:
        when = datetime(2026, 3, 1, 12, 30, 15, tzinfo=UTC)
        store.record_message(record("mo-00000000000c", when, subject="a\x00b", message_id="<m\x00@x>",
                                    reply="554 \x00no"))
        sample = Sample(b"nul in headers", "x.exe", "application/x-\x00dosexec", "attachment;\x00")
        assert sample.type_declared == "application/x-dosexec" and sample.content_disposition == "attachment;"
        job = await store.new_job({**sample.facts(), "type_by_name": "text/\x00plain"})
        finish(store, job, Result.bad, "member evil\x00.exe")
        await asyncio.wait_for(store.flush(), 10)
        store.messages.forget_recent()
        stored = await store.get_message("mo-00000000000c")
        assert stored is not None and (stored.subject, stored.message_id, stored.reply) == ("ab", "<m@x>", "554 no")
        assert store.engine is not None
        async with store.engine.connect() as conn:
            row = (await conn.execute(select(jobs.c.reason, jobs.c.type_by_name).where(jobs.c.id == job.id))).one()
        assert tuple(row) == ("member evil.exe", "text/plain")
    finally:
        await store.close()
