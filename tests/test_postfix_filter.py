"""End to end with a real Postfix using mailowl as an after-queue SMTP content filter."""

from __future__ import annotations

import shutil
import smtplib
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from .postfix import Postfix, access_map, receiver, write_access_map
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
    # whether the first attempt was deferred (451 4.7.1) while analysing depends on how fast the analysis is
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


@dataclass
class Chain:
    """front Postfix -> content_filter -> mailowl -> next-hop Postfix, which refuses what `refusals` says."""

    front: Postfix
    owl: Server
    hop: Postfix
    refusals: Path


@contextmanager
def chain(tmp: Path, restriction: str, refusals: dict[str, str], mail_config: str = "wait = 10\n") -> Iterator[Chain]:
    """`restriction` is a next-hop main.cf setting naming the access map as {map}."""
    filter_port = free_port()
    path = access_map(refusals)
    started: list[Postfix | Server] = []
    try:
        hop = receiver(tmp / "hop", extra=[restriction.format(map=f"texthash:{path}")])
        started.append(hop)
        front = filtered_receiver(tmp / "front", filter_port)
        started.append(front)
        owl = Server(tmp / "owl", f'[milter]\nlisten = ""\n[smtp]\nlisten = "127.0.0.1:{filter_port}"\n'
                     f'next_hop = "127.0.0.1:{hop.port}"\n[mail]\n{mail_config}', ruleset=str(yara_ruleset(tmp)))
        started.append(owl)
        yield Chain(front, owl, hop, path)
    finally:
        for part in reversed(started):
            part.stop()
        shutil.rmtree(path.parent, ignore_errors=True)


def submit(postfix: Postfix, sender: str, recipients: list[str], data: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", postfix.port, timeout=60) as client:
        assert client.sendmail(sender, recipients, data) == {}


def lines(postfix: Postfix, *words: str) -> list[str]:
    return [line for line in postfix.log.read_text().splitlines() if all(word in line for word in words)]


def deferred_reasons(postfix: Postfix) -> dict[str, str]:
    """Recipient -> why it waits, for every recipient in the deferred queue."""
    return {rcpt["address"]: rcpt.get("delay_reason", "") for entry in postfix.queue_entries()
            if entry["queue_name"] == "deferred" for rcpt in entry["recipients"]}


def bounces(*postfixes: Postfix) -> list[bytes]:
    """Non-delivery reports in these mailboxes (the front's bounce may itself pass the filter to the hop)."""
    return [m for p in postfixes for m in p.delivered() if b"Subject: Undelivered Mail Returned to Sender" in m]


RECIPIENTS = "smtpd_recipient_restrictions = check_recipient_access {map}, permit_mynetworks, reject"


def test_each_recipient_gets_the_next_hops_answer(tmp_path: Path) -> None:
    refusals = {"refused@example.net": "550 5.1.1 No such user here",
                "later@example.net": "450 4.2.1 Mailbox busy, try later"}
    with chain(tmp_path, RECIPIENTS, refusals) as c:
        submit(c.front, "alice@example.org", ["ok@example.net", "refused@example.net", "later@example.net"],
               mail(PDF, "report.pdf", "application/pdf", "three recipients"))

        # refused permanently: Postfix bounces that recipient with the next hop's reason, and tells the sender
        wait_for(lambda: lines(c.front, "to=<refused@example.net>", "status=bounced"), c.front)
        assert "550 5.1.1" in lines(c.front, "to=<refused@example.net>", "status=bounced")[0]
        wait_for(lambda: any(b"refused@example.net" in m for m in bounces(c.front, c.hop)), c.front)
        # refused temporarily: kept in the front's deferred queue, for that recipient only
        wait_for(lambda: "later@example.net" in deferred_reasons(c.front), c.front)
        assert list(deferred_reasons(c.front)) == ["later@example.net"]
        assert "450 4.2.1" in deferred_reasons(c.front)["later@example.net"]
        # accepted: delivered once
        wait_for(lambda: lines(c.hop, "to=<ok@example.net>", "status=sent"), c.front)

        # once the next hop takes it, the deferred recipient arrives: nothing was lost
        write_access_map(c.refusals, {"refused@example.net": refusals["refused@example.net"]})
        c.hop.reload()
        wait_for(lambda: lines(c.hop, "to=<later@example.net>", "status=sent"), c.front)
        wait_for(lambda: "Mail queue is empty" in c.front.queue(), c.front)
        assert len(lines(c.hop, "to=<ok@example.net>", "status=sent")) == 1
        assert len(lines(c.hop, "to=<later@example.net>", "status=sent")) == 1
        assert lines(c.hop, "to=<refused@example.net>", "status=sent") == []
        assert subjects(c.hop).count("three recipients") == 2


def test_the_next_hops_answer_to_the_message_reaches_postfix(tmp_path: Path) -> None:
    refusals = {"refused@example.org": "554 5.7.1 Not with this content",
                "later@example.org": "451 4.7.1 Content check busy, try later"}
    restriction = "smtpd_end_of_data_restrictions = check_sender_access {map}"
    with chain(tmp_path, restriction, refusals) as c:
        submit(c.front, "refused@example.org", ["bob@example.net"],
               mail(PDF, "report.pdf", "application/pdf", "refused content"))
        submit(c.front, "later@example.org", ["carol@example.net"],
               mail(PDF, "report.pdf", "application/pdf", "deferred content"))
        wait_for(lambda: lines(c.front, "to=<bob@example.net>", "status=bounced"), c.front)
        assert "554 5.7.1" in lines(c.front, "to=<bob@example.net>", "status=bounced")[0]
        wait_for(lambda: "carol@example.net" in deferred_reasons(c.front), c.front)
        assert "451 4.7.1" in deferred_reasons(c.front)["carol@example.net"]
        assert "bob@example.net" not in deferred_reasons(c.front)
        assert lines(c.hop, "status=sent", "to=<bob@example.net>") == []
        assert lines(c.hop, "status=sent", "to=<carol@example.net>") == []


def test_mail_waits_in_the_queue_while_the_next_hop_is_down(tmp_path: Path) -> None:
    with chain(tmp_path, RECIPIENTS, {}) as c:
        c.hop.pause()
        submit(c.front, "alice@example.org", ["bob@example.net"],
               mail(PDF, "report.pdf", "application/pdf", "hop down"))
        wait_for(lambda: "bob@example.net" in deferred_reasons(c.front), c.front)
        assert " 451 4." in deferred_reasons(c.front)["bob@example.net"]
        c.hop.resume()
        wait_for(lambda: "hop down" in subjects(c.hop), c.front)
        assert subjects(c.hop).count("hop down") == 1


def test_a_silent_next_hop_is_a_tempfail(tmp_path: Path) -> None:
    filter_port = free_port()
    with socket.create_server(("127.0.0.1", 0), backlog=16) as silent:  # connections complete, nothing answers
        front = filtered_receiver(tmp_path / "front", filter_port)
        owl: Server | None = None
        try:
            owl = Server(tmp_path / "owl", f'[milter]\nlisten = ""\n[smtp]\nlisten = "127.0.0.1:{filter_port}"\n'
                         f'next_hop = "127.0.0.1:{silent.getsockname()[1]}"\n')
            submit(front, "alice@example.org", ["bob@example.net"],
                   mail(PDF, "report.pdf", "application/pdf", "silent hop"))
            wait_for(lambda: "bob@example.net" in deferred_reasons(front), front, timeout=200)
            assert "451 4.4.1" in deferred_reasons(front)["bob@example.net"]
        finally:
            if owl is not None:
                owl.stop()
            front.stop()


def two_pdfs(subject: str) -> bytes:
    message = message_from_bytes(mail(PDF, "a.pdf", "application/pdf", subject), policy=policy.default)
    message.add_attachment(PDF, maintype="application", subtype="pdf", filename="b.pdf")  # type: ignore[attr-defined]
    return message.as_bytes()


@pytest.mark.parametrize(("mail_config", "message", "reply", "outcome"), [
    ("wait = 10\n", mail(EICAR, "eicar.com", subject="judged"), "554 5.7.1", "bounced"),
    ("max_parts = 1\n", two_pdfs("judged"), "451 4.7.1", "deferred"),  # more parts than allowed: tempfail
])
def test_mailowls_own_decision_still_applies(tmp_path: Path, mail_config: str, message: bytes, reply: str,
                                             outcome: str) -> None:
    with chain(tmp_path, RECIPIENTS, {}, mail_config) as c:
        submit(c.front, "alice@example.org", ["bob@example.net"], message)
        wait_for(lambda: lines(c.front, "to=<bob@example.net>", f"status={outcome}"), c.front)
        assert reply in lines(c.front, "to=<bob@example.net>", f"status={outcome}")[0]
        assert "judged" not in subjects(c.hop)  # the next hop had the recipient, never the message
