"""End to end with a real Postfix using mailowl as an after-queue SMTP content filter."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .postfix import Postfix, receiver
from .server import Server, free_port
from .test_postfix_milter import BAT, EICAR, PDF, mail, send, yara_ruleset


def filtered_receiver(tmp: Path, filter_port: int) -> Postfix:
    reinject = free_port()
    postfix = receiver(
        tmp, extra=[f"content_filter = scan:[127.0.0.1]:{filter_port}"],
        services=[
            "scan/unix = scan unix - - n - 4 smtp -o smtp_send_xforward_command=yes "
            "-o disable_mime_output_conversion=yes",
            f"127.0.0.1:{reinject}/inet = 127.0.0.1:{reinject} inet n - n - - smtpd -o content_filter= "
            "-o receive_override_options=no_unknown_recipient_checks,no_header_body_checks,no_milters "
            "-o smtpd_recipient_restrictions=permit_mynetworks,reject -o mynetworks=127.0.0.0/8",
        ])
    postfix.reinject_port = reinject  # type: ignore[attr-defined]
    return postfix


def subjects(postfix: Postfix) -> list[str]:
    out = []
    for message in postfix.delivered():
        head = message.split(b"\n\n", 1)[0]
        for line in head.splitlines():
            if line.startswith(b"Subject: "):
                out.append(line[9:].decode().strip())
    return out


def wait_for(condition: object, postfix: Postfix, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        postfix.flush()
        time.sleep(0.5)
    raise AssertionError(f"condition not met; log:\n{postfix.log.read_text()[-3000:]}")


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Server, Postfix]]:
    filter_port = free_port()
    rx = filtered_receiver(tmp_path / "rx", filter_port)
    owl = Server(tmp_path / "owl", f'[milter]\nlisten = ""\n[smtp]\nlisten = "127.0.0.1:{filter_port}"\n'
                 f'next_hop = "127.0.0.1:{rx.reinject_port}"\n[mail]\nwait = 0\n',  # type: ignore[attr-defined]
                 ruleset=str(yara_ruleset(tmp_path)))
    yield owl, rx
    owl.stop()
    rx.stop()


def test_clean_mail_passes_with_header(setup: tuple[Server, Postfix]) -> None:
    owl, rx = setup
    assert send(rx.port, mail(PDF, "report.pdf", "application/pdf", "filtered report"))[0] == 250
    wait_for(lambda: "filtered report" in subjects(rx), rx)
    delivered = next(m for m in rx.delivered() if b"Subject: filtered report" in m)
    assert b"X-Mailowl-Result: unknown; support-id=mo-" in delivered


@pytest.mark.parametrize(("attachment", "name", "subject"), [(BAT, "cat.png.bat", "cute cat"),
                                                             (EICAR, "eicar.com", "eicar test")])
def test_bad_mail_is_deferred_then_refused(setup: tuple[Server, Postfix], attachment: bytes, name: str,
                                           subject: str) -> None:
    owl, rx = setup
    assert send(rx.port, mail(attachment, name, subject=subject))[0] == 250  # after-queue: accepted first
    wait_for(lambda: "5.7.1" in rx.log.read_text(), rx)
    log = rx.log.read_text()
    if name == "cat.png.bat":
        assert "451 4.7.1" in log  # first sight: deferred while analysing, kept in the queue
    assert subject not in subjects(rx)  # never delivered to bob
    wait_for(lambda: "Undelivered Mail Returned to Sender" in subjects(rx), rx)  # the sender is told


def test_nothing_is_lost_while_the_filter_is_down(tmp_path: Path) -> None:
    filter_port = free_port()
    rx = filtered_receiver(tmp_path / "rx", filter_port)
    owl: Server | None = None
    try:
        assert send(rx.port, mail(PDF, "minutes.pdf", "application/pdf", "while down"))[0] == 250
        wait_for(lambda: "deferred" in rx.log.read_text(), rx)
        assert subjects(rx) == [] and "while down" not in subjects(rx)
        assert "Mail queue is empty" not in rx.queue()
        owl = Server(tmp_path / "owl", f'[milter]\nlisten = ""\n[smtp]\nlisten = "127.0.0.1:{filter_port}"\n'
                     f'next_hop = "127.0.0.1:{rx.reinject_port}"\n')  # type: ignore[attr-defined]
        wait_for(lambda: "while down" in subjects(rx), rx)
    finally:
        if owl is not None:
            owl.stop()
        rx.stop()
