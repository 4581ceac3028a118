"""The 451 path under real load: a verdict slower than mail.wait, through a sending and a receiving Postfix.

The sending Postfix keeps the mail queued after mailowl's 451 4.7.1 and retries; the retry is answered from
the verdict cache: the bad attachment is refused with 554 5.7.1 (and bounced to the sender), the clean one
delivered with mailowl's header. Each attachment is analysed once."""

from __future__ import annotations

import os
import time
from pathlib import Path

from .postfix import receiver, sender
from .server import Server, free_port
from .test_postfix_milter import BAT, PDF, mail, send, support_id

_RULES = Path(__file__).parent.parent / "src/mailowl/defaults/ruleset.toml"


def _wait(what: str, check: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_slow_analysis_is_deferred_then_answered_from_the_cache(tmp_path: Path) -> None:
    ruleset = tmp_path / "ruleset.toml"
    ruleset.write_text(_RULES.read_text().replace('rules = [\n  "known",', 'rules = [\n  "known",\n  "hold_until_released",'))
    release = tmp_path / "release"
    milter = free_port()
    owl = Server(tmp_path / "owl", f'[milter]\nlisten = "127.0.0.1:{milter}"\n[mail]\nwait = 1.0\n',
                 ruleset=str(ruleset),
                 env={"PYTHONPATH": os.pathsep.join([str(Path(__file__).parent / "slowrule"),
                                                     os.environ.get("PYTHONPATH", "")]),
                      "SLOWRULE_RELEASE": str(release)})
    rx = receiver(tmp_path / "rx", milter)
    tx = sender(tmp_path / "tx", rx.port)
    try:
        assert send(tx.port, mail(BAT, "slow-invoice.bat", subject="invoice"))[0] == 250
        assert send(tx.port, mail(PDF, "slow-minutes.pdf", "application/pdf", "minutes"))[0] == 250
        # both reach mailowl, wait out mail.wait, and are deferred by the sending Postfix
        _wait("two deferrals", lambda: tx.log.read_text().count("status=deferred") >= 2)
        deferrals = [line for line in tx.log.read_text().splitlines() if "status=deferred" in line]
        assert all("451 4.7.1 Attachment analysis in progress" in line for line in deferrals), deferrals
        ids = [support_id(line) for line in deferrals[:2]]
        for sid in ids:
            status, record, _ = owl.request("GET", f"/v2/messages/{sid}")
            assert status == 200 and record["action"] == "tempfail", record
            assert record["parts"][0]["result"] is None  # still being analysed
        assert rx.delivered() == [] and tx.queue().count("alice@example.org") == 2

        release.touch()
        for sid in ids:
            job = owl.request("GET", f"/v2/messages/{sid}")[1]["parts"][0]["job_id"]
            owl.verdict(job)
        for _ in range(60):  # the sender's retries: now answered from the cache
            tx.flush()
            if rx.delivered() and "Mail queue is empty" in tx.queue():
                break
            time.sleep(1)
        delivered = rx.delivered()
        assert len(delivered) == 1 and b"Subject: minutes" in delivered[0], delivered
        assert b"X-Mailowl-Result: unknown; support-id=mo-" in delivered[0]
        assert "Mail queue is empty" in tx.queue()
        refused = [line for line in tx.log.read_text().splitlines() if "554 5.7.1" in line]
        assert refused and "status=bounced" in refused[0], tx.log.read_text()
        # one analysis per attachment: the retries never reached the rule again
        seen = release.with_suffix(".seen").read_text().split()
        assert sorted(seen) == ["slow-invoice.bat", "slow-minutes.pdf"]
    finally:
        tx.stop()
        rx.stop()
        owl.stop()
