"""The milter while the database is down (issue 10 point 3), with real private Postfix instances and a
private PostgreSQL that the test stops and starts: mail is tempfailed (451 4.7.1 with the configured
tempfail text, never the database's error), stays in the sending Postfix's queue, and is decided once the
database is back and the queue is flushed — the clean message delivered, the downloader refused."""

from __future__ import annotations

import time
from pathlib import Path

from .postfix import receiver, sender
from .private_db import private_database
from .server import Server, free_port
from .test_postfix_milter import BAT, PDF, mail, send

TEMPFAIL_TEXT = "Mail scanning unavailable, try again later"


def _wait(what: str, predicate: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_milter_tempfails_while_the_database_is_down_and_decides_after(tmp_path: Path) -> None:
    with private_database("postgresql") as db:
        milter = free_port()
        owl = Server(tmp_path / "owl", f'[store]\nurl = "{db.url}"\n[milter]\nlisten = "127.0.0.1:{milter}"\n'
                                       f'[mail]\ntempfail_text = "{TEMPFAIL_TEXT}"\n')
        rx = receiver(tmp_path / "rx", milter)
        tx = sender(tmp_path / "tx", rx.port)
        try:
            db.stop()
            # straight to the Postfix with the milter: what a sending server is told
            code, text = send(rx.port, mail(PDF, "direct.pdf", "application/pdf", "direct"))
            assert code == 451 and text.startswith("4.7.1 " + TEMPFAIL_TEXT), (code, text)
            assert "refused" not in text.lower() and "postgres" not in text.lower(), text

            # through a sending Postfix: both messages stay in its queue, nothing reaches the mailbox
            clean = mail(PDF, "minutes.pdf", "application/pdf", "minutes")
            bad = mail(BAT, "invoice.pdf.bat", subject="invoice")
            assert send(tx.port, clean)[0] == 250 and send(tx.port, bad)[0] == 250
            tx.flush()
            _wait("both messages tempfailed by the milter",
                  lambda: sum(TEMPFAIL_TEXT in str(r.get("delay_reason", "")) for e in tx.queue_entries()
                              for r in e.get("recipients", [])) >= 2)
            assert len(tx.queue_entries()) == 2
            assert rx.delivered() == []
            assert owl.proc.poll() is None and owl.request("GET", "/healthz")[0] == 200

            db.start()

            def decided() -> bool:
                tx.flush()
                return bool(tx.queue_entries() == [] and any(b"Subject: minutes" in m for m in rx.delivered()))

            _wait("the queue decided after the database is back", decided, timeout=90)
            delivered = rx.delivered()
            assert len(delivered) == 1 and b"Subject: minutes" in delivered[0], delivered
            assert b"X-Mailowl-Result: unknown; support-id=mo-" in delivered[0]
            assert "5.7.1" in tx.log.read_text()  # the downloader was refused (and bounced), not lost
        finally:
            owl.stop()
            tx.stop()
            rx.stop()
