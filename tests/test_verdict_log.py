"""The verdict log: KLMS lines (or ECS JSON) per message and per REST job, to a file or to syslog."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from mailowl.analysis.sample import Sample
from mailowl.analysis.service import AnalysisService
from mailowl.logs.klms import parse
from mailowl.logs.verdicts import VerdictLog
from mailowl.mail.policy import Envelope, MailPolicy, decide
from mailowl.rules.loader import build_engine
from mailowl.store import Store

from .helpers import mail_with


def message(*attachments: tuple[str, bytes]) -> bytes:
    return mail_with(*attachments, message_id="<m1@x>")


@pytest.fixture
async def make_service(tmp_path: Path) -> AsyncIterator[object]:
    services: list[AnalysisService] = []

    async def make(log: VerdictLog) -> AnalysisService:
        engine = build_engine({"rules": ["expressions", "final_rule"], "expressions": {
            "expression": ["sample.file_extension == 'bat' -> bad"]}}, "test")
        store = Store(f"sqlite+aiosqlite:///{tmp_path / f'db{len(services)}.sqlite'}")
        await store.open()
        service = AnalysisService(engine, store, verdict_log=log)
        await service.start()
        services.append(service)
        return service

    yield make
    for service in services:
        await service.stop()
        await service.store.close()
        service.verdict_log.close()


ENV = Envelope("a@example.org", ["b@example.net", "c, d@example.net"], "192.0.2.7")


async def test_message_and_job_lines_parse_back(make_service: object, tmp_path: Path) -> None:
    path = tmp_path / "verdicts.log"
    service = await make_service(VerdictLog(f"file:{path}"))  # type: ignore[operator]
    decision = await decide(service, message(("in: voice, 1.bat", b"@echo off"), ("a.pdf", b"%PDF-1.4")), ENV,
                            MailPolicy(), "milter")
    job = service.submit(Sample(b"@echo rest", "rest.bat"))
    await job.wait(10)
    assert service.verdict_log.flush()
    lines = path.read_text().splitlines()
    assert len(lines) == 2  # one for the message (its parts are in it), one for the REST job
    doc = parse(lines[0])
    assert doc["status_letter"] == "infected" and doc["action"] == "Rejected"
    assert doc["message_id"] == "<m1@x>" and doc["relay_ip"] == "192.0.2.7" and doc["support_id"] == decision.support_id
    assert doc["mail_from"] == "a@example.org" and doc["rcpt_to"] == ["b@example.net", "c,d@example.net"]
    assert doc["part"] == [{"name": "in: voice, 1.bat", "av_status": "Infected", "threats": ["expressions"]},
                           {"name": "a.pdf", "av_status": "NotDetected"}]
    assert isinstance(doc["size"], int) and doc["size"] > 100 and doc["rules"] == 1
    rest = parse(lines[1])
    assert rest["status_letter"] == "job" and rest["result"] == "bad" and rest["job_id"] == str(job.id)


async def test_ecs_documents(make_service: object, tmp_path: Path) -> None:
    path = tmp_path / "ecs.log"
    service = await make_service(VerdictLog(f"file:{path}", fmt="ecs"))  # type: ignore[operator]
    await decide(service, message(("x.bat", b"@echo x")), ENV, MailPolicy(), "milter")
    assert service.verdict_log.flush()
    doc = json.loads(path.read_text().splitlines()[0])
    assert doc["email"]["message_id"] == "<m1@x>" and doc["email"]["to"]["address"][0] == "b@example.net"
    assert doc["email"]["attachments"][0]["file"]["name"] == "x.bat"
    assert doc["event"]["action"] == "reject" and doc["source"]["ip"] == "192.0.2.7"


@pytest.fixture
def receiver() -> Iterator[tuple[socket.socket, list[bytes]]]:
    got: list[bytes] = []
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen()

    def accept() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(65536):
                got.append(data)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server, got
    server.close()


async def test_syslog_tcp_rfc5424_keeps_long_lines_whole(make_service: object,
                                                           receiver: tuple[socket.socket, list[bytes]]) -> None:
    server, got = receiver
    port = server.getsockname()[1]
    log = VerdictLog(f"syslog:tcp:127.0.0.1:{port}", syslog_format="rfc5424")
    service = await make_service(log)  # type: ignore[operator]
    many = Envelope("a@example.org", [f"user{i}@example.net" for i in range(300)], "192.0.2.7")
    await decide(service, message(("x.bat", b"@echo x")), many, MailPolicy(), "milter")
    log.close()
    import time

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not got:
        time.sleep(0.05)
    time.sleep(0.2)
    data = b"".join(got)
    length, _, frame = data.partition(b" ")
    assert int(length) == len(frame)  # RFC 6587 octet counting
    text = frame.decode()
    assert text.startswith("<22>1 ")  # facility mail, severity info
    doc = parse(text)
    assert doc["program"] == "mailowl" and len(doc["rcpt_to"]) == 300 and doc["rcpt_to"][-1] == "user299@example.net"


async def test_syslog_unix_and_udp_rfc3164(make_service: object, tmp_path: Path) -> None:
    path = str(tmp_path / "log.sock")
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    unix.bind(path)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    try:
        for target, sock in ((f"syslog:unix:{path}", unix), (f"syslog:udp:127.0.0.1:{udp.getsockname()[1]}", udp)):
            service = await make_service(VerdictLog(target))  # type: ignore[operator]
            job = service.submit(Sample(b"@echo udp", "u.bat"))
            await job.wait(10)
            sock.settimeout(5)
            text = sock.recv(65536).decode()
            assert text.startswith("<22>")
            doc = parse(text[4:])
            assert doc["program"] == "mailowl" and doc["status_letter"] == "job" and doc["result"] == "bad"
    finally:
        unix.close()
        udp.close()


def test_bad_targets_are_config_errors() -> None:
    from mailowl.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"\[log\] target: expected"):
        load_config(environ={"MAILOWL_LOG_TARGET": "syslog:carrier-pigeon"})
    with pytest.raises(ConfigError, match=r"\[log\] format"):
        load_config(environ={"MAILOWL_LOG_FORMAT": "xml"})


async def test_stdout_target(make_service: object, capsys: pytest.CaptureFixture[str]) -> None:
    service = await make_service(VerdictLog("stdout"))  # type: ignore[operator]
    job = service.submit(Sample(b"@echo out", "o.bat"))
    await job.wait(10)
    assert service.verdict_log.flush()
    doc = parse(capsys.readouterr().out.splitlines()[-1])
    assert doc["status_letter"] == "job" and doc["filename"] == "o.bat" and doc["result"] == "bad"
