"""The verdict log: KLMS lines (or ECS JSON) per message and per REST job, to a file or to syslog."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mailowl import metrics
from mailowl.analysis.sample import Sample
from mailowl.core.service import AnalysisService
from mailowl.logs.klms import parse
from mailowl.logs.verdicts import VerdictLog
from mailowl.mail.policy import Envelope, MailPolicy, decide
from mailowl.results import Result
from mailowl.rules.loader import build_engine
from mailowl.store import Job, Store

from .helpers import mail_with
from .server import Server, free_port


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


async def submit(service: AnalysisService, sample: Sample) -> Job:
    """submit() becomes a coroutine when job rows are committed before the id is handed out."""
    job = service.submit(sample)
    return await job if inspect.isawaitable(job) else job


ENV = Envelope("a@example.org", ["b@example.net", "c, d@example.net"], "192.0.2.7")


async def test_message_and_job_lines_parse_back(make_service: object, tmp_path: Path) -> None:
    path = tmp_path / "verdicts.log"
    service = await make_service(VerdictLog(f"file:{path}"))  # type: ignore[operator]
    decision = await decide(service, message(("in: voice, 1.bat", b"@echo off"), ("a.pdf", b"%PDF-1.4")), ENV,
                            MailPolicy(), "milter")
    job = await submit(service, Sample(b"@echo rest", "rest.bat"))
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
            job = await submit(service, Sample(b"@echo udp", "u.bat"))
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
    with pytest.raises(ConfigError, match=r"\[log\] queue_size: .*greater than or equal to 1"):
        load_config(environ={"MAILOWL_LOG_QUEUE_SIZE": "0"})
    with pytest.raises(ConfigError, match=r"\[log\] send_timeout"):
        load_config(environ={"MAILOWL_LOG_SEND_TIMEOUT": "0"})
    log = load_config(environ={"MAILOWL_LOG_QUEUE_SIZE": "7", "MAILOWL_LOG_SEND_TIMEOUT": "1.5"}).log
    verdicts = VerdictLog.from_config(log)
    assert (verdicts.queue_size, verdicts.send_timeout, verdicts.enabled) == (7, 1.5, False)


async def test_stdout_target(make_service: object, capsys: pytest.CaptureFixture[str]) -> None:
    service = await make_service(VerdictLog("stdout"))  # type: ignore[operator]
    job = await submit(service, Sample(b"@echo out", "o.bat"))
    await job.wait(10)
    assert service.verdict_log.flush()
    doc = parse(capsys.readouterr().out.splitlines()[-1])
    assert doc["status_letter"] == "job" and doc["filename"] == "o.bat" and doc["result"] == "bad"


# --- timestamps (issue 7, point 7) -------------------------------------------------------------------------

# the RFC 3164 stamp each clock must give: the day padded with a space, the hour with a zero
CLOCKS = {
    "day < 10, hour < 10": (datetime(2026, 11, 4, 3, 54, 1, tzinfo=UTC), "Nov  4 03:54:01"),
    "day >= 10, hour < 10": (datetime(2026, 11, 24, 3, 54, 1, tzinfo=UTC), "Nov 24 03:54:01"),
    "day >= 10, hour >= 10": (datetime(2026, 11, 24, 13, 5, 9, tzinfo=UTC), "Nov 24 13:05:09"),
    "day < 10, hour >= 10": (datetime(2026, 3, 9, 23, 59, 59, tzinfo=UTC), "Mar  9 23:59:59"),
    "midnight": (datetime(2026, 12, 31, 0, 0, 0, tzinfo=UTC), "Dec 31 00:00:00"),
}


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


async def _lines_at_each_clock(make_service: object, log: VerdictLog, clock: Clock,
                               read: Callable[[], list[str]]) -> list[str]:
    service = await make_service(log)  # type: ignore[operator]
    for number, (now, _) in enumerate(CLOCKS.values()):
        clock.now = now
        job = await submit(service, Sample(b"@echo %d" % number, f"{number}.bat"))
        await job.wait(10)
        assert log.flush()
    lines = read()
    assert len(lines) == len(CLOCKS), lines
    return lines


@pytest.fixture
def udp() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(10)
    yield sock
    sock.close()


async def test_syslog_rfc3164_stamps_at_every_day_and_hour(make_service: object, udp: socket.socket) -> None:
    clock = Clock()
    log = VerdictLog(f"syslog:udp:127.0.0.1:{udp.getsockname()[1]}", clock=clock)
    lines = await _lines_at_each_clock(make_service, log, clock,
                                       lambda: [udp.recv(65536).decode() for _ in CLOCKS])
    for line, (name, (_, stamp)) in zip(lines, CLOCKS.items(), strict=True):
        assert line.startswith(f"<22>{stamp} {log.hostname} mailowl[{log.pid}]: job: "), (name, line)
        doc = parse(line)
        assert "tags" not in doc and doc["timestamp"] == stamp, (name, doc)


async def test_syslog_rfc5424_stamps(make_service: object, udp: socket.socket) -> None:
    clock = Clock()
    log = VerdictLog(f"syslog:udp:127.0.0.1:{udp.getsockname()[1]}", syslog_format="rfc5424", clock=clock)
    lines = await _lines_at_each_clock(make_service, log, clock,
                                       lambda: [udp.recv(65536).decode() for _ in CLOCKS])
    for line, (now, _) in zip(lines, CLOCKS.values(), strict=True):
        iso = now.isoformat(timespec="microseconds")
        assert line.startswith(f"<22>1 {iso} {log.hostname} mailowl {log.pid} - - job: "), line
        assert parse(line)["timestamp"] == iso


async def test_file_lines_carry_the_clock(make_service: object, tmp_path: Path) -> None:
    clock = Clock()
    klms_path, ecs_path = tmp_path / "klms.log", tmp_path / "ecs.log"
    klms = await _lines_at_each_clock(make_service, VerdictLog(f"file:{klms_path}", clock=clock), clock,
                                      lambda: klms_path.read_text().splitlines())
    ecs = await _lines_at_each_clock(make_service, VerdictLog(f"file:{ecs_path}", fmt="ecs", clock=clock), clock,
                                     lambda: ecs_path.read_text().splitlines())
    for klms_line, ecs_line, (now, stamp) in zip(klms, ecs, CLOCKS.values(), strict=True):
        assert klms_line.startswith(f"{stamp} "), klms_line
        assert parse(klms_line)["timestamp"] == stamp
        assert json.loads(ecs_line)["@timestamp"] == now.isoformat()


async def test_logs_parse_reads_mailowls_own_lines(make_service: object, tmp_path: Path, udp: socket.socket) -> None:
    clock = Clock()
    lines = []
    for syslog_format in ("rfc3164", "rfc5424"):
        log = VerdictLog(f"syslog:udp:127.0.0.1:{udp.getsockname()[1]}", syslog_format=syslog_format, clock=clock)
        lines += await _lines_at_each_clock(make_service, log, clock,
                                            lambda: [udp.recv(65536).decode() for _ in CLOCKS])
    path = tmp_path / "own.log"
    lines += await _lines_at_each_clock(make_service, VerdictLog(f"file:{path}", clock=clock), clock,
                                        lambda: path.read_text().splitlines())
    path.write_text("".join(line + "\n" for line in lines))
    for schema in ("klms", "ecs"):
        out = subprocess.run([sys.executable, "-m", "mailowl.cli", "logs", "parse", "--schema", schema, str(path)],
                             capture_output=True, text=True, check=True).stdout.splitlines()
        docs = [json.loads(line) for line in out]
        assert len(docs) == 3 * len(CLOCKS)
        assert not [doc for doc in docs if "tags" in doc], out
        if schema == "ecs":
            expected = [now for now, _ in CLOCKS.values()]
            for doc, now in zip(docs, expected * 3, strict=True):
                # RFC 3164 has no year (the parser takes the latest one not in the future) and no zone
                assert doc["@timestamp"][5:19] == now.isoformat()[5:19], doc


class NoStrftime(datetime):
    """A clock value that fails where a locale-dependent strftime would be used."""

    def strftime(self, fmt: str) -> str:
        raise AssertionError(f"strftime({fmt!r}) depends on the locale")

    def __format__(self, spec: str) -> str:
        if spec:
            raise AssertionError(f"format(datetime, {spec!r}) goes through strftime")
        return str(self)


def test_stamps_never_go_through_strftime() -> None:
    now = NoStrftime(2026, 5, 9, 8, 7, 6, tzinfo=UTC)
    for syslog_format in ("rfc3164", "rfc5424"):
        log = VerdictLog("", syslog_format=syslog_format, clock=lambda: now)
        log._kind = "udp"  # frame() only; nothing is sent
        frame = log.frame("clean: size=1", now).decode()
        assert frame.startswith("<22>May  9 08:07:06 " if syslog_format == "rfc3164" else
                                "<22>1 2026-05-09T08:07:06.000000+00:00 "), frame
    assert VerdictLog("").frame("clean: size=1", now).decode().startswith("May  9 08:07:06 ")


@pytest.fixture(scope="module")
def german_locale(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """de_DE.UTF-8 compiled into a private directory: month names Mär, Mai, Okt, Dez."""
    where = tmp_path_factory.mktemp("locale")
    if shutil.which("localedef") is None:
        pytest.skip("localedef is not installed; test_stamps_never_go_through_strftime covers the writer")
    built = subprocess.run(["localedef", "-i", "de_DE", "-f", "UTF-8", str(where / "de_DE.UTF-8")],
                           capture_output=True, text=True)
    if not (where / "de_DE.UTF-8").exists():
        pytest.skip(f"cannot build de_DE.UTF-8: {built.stderr.strip()}")
    return {**os.environ, "LOCPATH": str(where), "LC_ALL": "de_DE.UTF-8", "LANG": "de_DE.UTF-8"}


LOCALE_SCRIPT = """
import json, locale, time
from datetime import UTC, datetime
locale.setlocale(locale.LC_ALL, "")  # as an embedding application or a library may do
from mailowl.logs.klms import parse, to_ecs
from mailowl.logs.verdicts import VerdictLog
log = VerdictLog("")
out = {"strftime": time.strftime("%b", (2026, 3, 9, 0, 0, 0, 0, 68, 0)), "lines": []}
for month in (3, 5, 10, 12):
    line = log.frame('clean: message-id="<a@b>": size=1', datetime(2026, month, 9, 8, 7, 6, tzinfo=UTC)).decode()
    out["lines"].append([line, to_ecs(parse(line)).get("@timestamp")])
print(json.dumps(out))
"""


def test_month_names_do_not_follow_the_locale(german_locale: dict[str, str]) -> None:
    run = subprocess.run([sys.executable, "-c", LOCALE_SCRIPT], env=german_locale, capture_output=True, text=True,
                         check=True)
    out = json.loads(run.stdout)
    assert out["strftime"] == "Mär", "the German locale did not take effect"
    for (line, stamp), month, number in zip(out["lines"], ["Mar", "May", "Oct", "Dec"], ["03", "05", "10", "12"],
                                            strict=True):
        assert line.startswith(f"{month}  9 08:07:06 "), line
        assert stamp is not None and stamp[5:] == f"{number}-09T08:07:06", (line, stamp)


# --- a log target that is down or slow never holds up mail (issue 7, point 8) --------------------------------

def _scan_and_wait(server: Server, content: bytes, filename: str = "x.bat") -> int:
    status, payload, _ = server.scan(content, filename)
    assert status == 200, payload
    job_id = int(payload["job_id"])
    assert server.verdict(job_id)["result"] == "bad"
    return job_id


def _dropped(server: Server) -> float:
    status, text, _ = server.request("GET", "/metrics")
    assert status == 200
    values = [float(line.split()[1]) for line in text.splitlines()
              if line.startswith("mailowl_log_lines_dropped_total ")]
    assert values, "mailowl_log_lines_dropped_total is missing from /metrics"
    return values[0]


def _wait_for(predicate: Callable[[], bool], timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_serve_starts_with_a_dead_tcp_target_and_delivers_after_reconnect(tmp_path: Path) -> None:
    port = free_port()
    server = Server(tmp_path, f'[log]\ntarget = "syslog:tcp:127.0.0.1:{port}"\n')
    listener = socket.socket()
    got = bytearray()
    try:
        early = _scan_and_wait(server, b"@echo nobody listens")
        # the writer has tried the target and found it down, and stderr says so
        assert _wait_for(lambda: "Connection refused" in (tmp_path / "server.log").read_text(), 30)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()

        def read() -> None:
            conn, _ = listener.accept()
            with conn:
                while data := conn.recv(65536):
                    got.extend(data)

        threading.Thread(target=read, daemon=True).start()
        late = _scan_and_wait(server, b"@echo now somebody does")
        # the line queued while the target was down arrives after the reconnect, then the new one
        assert _wait_for(lambda: got.count(b"\n") >= 2), bytes(got)
        docs = [parse(line) for line in bytes(got).decode().splitlines()]
        assert [doc.get("job_id") for doc in docs] == [str(early), str(late)], docs
        assert all(doc["program"] == "mailowl" and "tags" not in doc for doc in docs)
        assert _dropped(server) == 0
    finally:
        server.stop()
        listener.close()


def test_a_target_that_never_reads_costs_lines_not_mail(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited by the accepted connection
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)  # the kernel completes the handshakes; nobody ever accepts or reads
    config = (f'[log]\ntarget = "syslog:tcp:127.0.0.1:{listener.getsockname()[1]}"\nformat = "ecs"\n'
              'queue_size = 5\nsend_timeout = 2\n')
    server = Server(tmp_path, config)
    try:
        # about 5 KB a line (the upload's header allows a 4,000-character name); the kernel buffers some 2 MB
        # of a connection nobody reads, so lines start to drop after a few hundred scans
        long_name = "n" * 4000 + ".bat"
        with ThreadPoolExecutor(4) as pool:
            for batch in range(30):
                list(pool.map(lambda n: _scan_and_wait(server, b"@echo %d" % n, long_name),
                              range(batch * 100, batch * 100 + 100)))
                if _dropped(server) > 0:
                    break
        assert _dropped(server) > 0
        assert _wait_for(lambda: "line(s) dropped" in (tmp_path / "server.log").read_text(), 30)
        # mail still flows while lines are being dropped
        _scan_and_wait(server, b"@echo still answered")
    finally:
        server.stop()
        listener.close()


def _job(number: int) -> Job:
    job = Job(id=number, facts={"filename": f"{number}.bat", "size": 9, "sha256": "0" * 64},
              created_at=datetime(2026, 11, 24, tzinfo=UTC))
    job.finish(Result.bad, "a bat file", [], datetime(2026, 11, 24, tzinfo=UTC))
    return job


def test_drops_are_counted_and_reported_at_most_once_a_minute(capsys: pytest.CaptureFixture[str]) -> None:
    ticks = [1000.0]
    log = VerdictLog(f"syslog:tcp:127.0.0.1:{free_port()}", queue_size=3, monotonic=lambda: ticks[0])
    before = metrics.LOG_LINES_DROPPED._value.get()
    try:
        seen = ""

        def reports() -> int:
            nonlocal seen
            seen += capsys.readouterr().err
            return seen.count("line(s) dropped")

        for number in range(10):  # nothing listens: the writer holds up to four lines, three wait, the rest drop
            log.job(_job(number))
        assert _wait_for(lambda: reports() == 1, 30), seen
        first = log.dropped
        assert first >= 3 and metrics.LOG_LINES_DROPPED._value.get() - before == first
        assert "the queue of 3 lines is full" in seen and "syslog:tcp:127.0.0.1:" in seen
        ticks[0] += 59  # within the minute: more drops, no new report
        for number in range(4):  # the writer takes nothing while it retries: at least one of these drops
            log.job(_job(10 + number))
        assert log.dropped > first
        time.sleep(2)  # the writer looks at least twice a second; a report now would be one too many
        assert reports() == 1, seen
        ticks[0] += 2
        log.job(_job(20))
        assert _wait_for(lambda: reports() == 2, 30), seen
        assert f"{log.dropped - first} line(s) dropped since the last report ({log.dropped} in all" in seen, seen
    finally:
        log.close(timeout=5)
    assert "not written at shutdown" in capsys.readouterr().err


def test_close_writes_what_is_queued(tmp_path: Path) -> None:
    path = tmp_path / "many.log"
    log = VerdictLog(f"file:{path}", queue_size=5000)
    for number in range(3000):
        log.job(_job(number))
    log.close(timeout=30)
    lines = path.read_text().splitlines()
    assert len(lines) == 3000 and log.dropped == 0
    assert [parse(line)["job_id"] for line in lines] == [str(n) for n in range(3000)]


def test_close_gives_up_on_a_target_that_never_reads(capsys: pytest.CaptureFixture[str]) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    log = VerdictLog(f"syslog:tcp:127.0.0.1:{listener.getsockname()[1]}", send_timeout=60, queue_size=100_000)
    try:
        big = _job(1)
        big.facts["filename"] = "n" * 100_000 + ".bat"
        for _ in range(100):  # 10 MB: more than the kernel buffers
            log.job(big)
        log.close(timeout=1)  # returns although the writer is stuck in a send that may last a minute
        assert "queued line(s) were not written" in capsys.readouterr().err
    finally:
        listener.close()
