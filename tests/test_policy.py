"""The per-message decision, in process, with the real analysis service and store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mailowl.core.service import AnalysisService
from mailowl.mail.parts import MailLimits
from mailowl.mail.policy import Envelope, MailPolicy, decide
from mailowl.rules.loader import build_engine
from mailowl.store import Store

from .helpers import mail_with


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[AnalysisService]:
    engine = build_engine({"rules": ["expressions", "final_rule"], "expressions": {"expression": [
        "sample.file_extension == 'bat' -> bad", "sample.file_extension == 'oops' -> fail"]}}, "test")
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await store.open()
    svc = AnalysisService(engine, store)
    await svc.start()
    yield svc
    await svc.stop()
    await store.close()


def message(*attachments: tuple[str, bytes]) -> bytes:
    return mail_with(*attachments, message_id="<t@x>")


ENV = Envelope("a@example.org", ["b@example.net"], "192.0.2.1")


async def test_clean_bad_failed_and_pending(service: AnalysisService) -> None:
    clean = await decide(service, message(("a.pdf", b"%PDF-1.4 fine")), ENV, MailPolicy(), "test")
    assert (clean.action, clean.code, clean.verdict) == ("accept", 250, "unknown")
    assert clean.header_value.startswith("unknown; support-id=mo-")
    bad = await decide(service, message(("a.pdf", b"%PDF"), ("run.bat", b"@echo off")), ENV, MailPolicy(), "test")
    assert (bad.action, bad.code, bad.status) == ("reject", 554, "5.7.1") and bad.support_id in bad.reply
    failed = await decide(service, message(("x.oops", b"data")), ENV, MailPolicy(), "test")
    assert (failed.action, failed.code) == ("tempfail", 451)
    assert (await decide(service, message(("y.oops", b"data")), ENV, MailPolicy(on_failed="accept"), "test")).action \
        == "accept"
    pending = await decide(service, message(("new.bat", b"@echo new")), ENV, MailPolicy(wait=0), "test")
    assert (pending.action, pending.code, pending.status, pending.verdict) == ("tempfail", 451, "4.7.1", "pending")
    quarantined = await decide(service, message(("q.bat", b"@echo q")), ENV, MailPolicy(on_bad="quarantine"), "test")
    assert quarantined.action == "quarantine"


async def test_unparsable_is_never_clean_unless_configured(service: AnalysisService) -> None:
    many = message(*[(f"f{i}.pdf", f"%PDF {i}".encode()) for i in range(5)])
    limited = MailPolicy(limits=MailLimits(max_parts=3))
    decision = await decide(service, many, ENV, limited, "test")
    assert (decision.action, decision.verdict) == ("tempfail", "unparsable")
    lenient = MailPolicy(limits=MailLimits(max_parts=3), on_unparsable="accept")
    assert (await decide(service, many, ENV, lenient, "test")).action == "accept"


async def test_support_id_finds_the_message(service: AnalysisService) -> None:
    decision = await decide(service, message(("run.bat", b"@echo off")), ENV, MailPolicy(), "test")
    record = await service.store.get_message(decision.support_id)
    assert record is not None and record.action == "reject" and record.message_id == "<t@x>"
    assert record.parts[0]["filename"] == "run.bat" and record.client_ip == "192.0.2.1"
    await service.store.flush()
    service.store.messages.forget_recent()
    again = await service.store.get_message(decision.support_id)
    assert again is not None and again.rcpt_to == ["b@example.net"] and again == record


def test_the_record_keeps_the_subject_unfolded_and_decoded() -> None:
    from mailowl.mail.policy import _decoded, _top_headers

    head = (b"From: a@x.example\r\nSubject: =?utf-8?q?=3Cscript=3E?=\r\n =?utf-8?b?w6TDtsO8?= tail\r\n"
            b"Message-ID: <m@x>\r\nSubject: a second one is ignored\r\n\r\nSubject: not a header\r\n")
    found = _top_headers(head, (b"message-id", b"subject"))
    assert found[b"message-id"] == "<m@x>"
    assert _decoded(found[b"subject"]) == "<script>äöü tail"
    assert _decoded("=?x-bogus?Q?=ff?=") == "=?x-bogus?Q?=ff?="  # an unknown charset stays as it came
    assert _top_headers(b"From: a\n\nSubject: body\n", (b"subject",)) == {}
