"""ClamAV through a real clamd: detections are bad with the signature named, no detection goes on to the
next rule, and every clamd problem (down, slow, refusing the stream) is failed, never clean or bad."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailowl.analysis.clamav import ClamavError, parse_address, parse_reply
from mailowl.analysis.clamav import Clamd as Client
from mailowl.analysis.contract import Resources
from mailowl.results import Result
from mailowl.rules import RulesetError
from mailowl.rules.loader import build_engine

from . import helpers
from .clamd import EICAR, EICAR_NAME, MARKER, MARKER_NAME, Clamd
from .server import Server

RULESET = "[rules]\nrule.1 : clamav\nrule.2 : final_rule\n"


@pytest.fixture(scope="module")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clamd]:
    daemon = Clamd(tmp_path_factory.mktemp("clamd"))
    yield daemon
    daemon.stop()


def test_client_against_clamd_on_unix_and_tcp(clamd: Clamd) -> None:
    for address in (clamd.socket, clamd.tcp):
        client = Client(address, timeout=30)
        assert client.ping()
        assert client.scan(EICAR).signatures == (EICAR_NAME,)
        assert client.scan(b"before " + MARKER + b" after").signatures == (MARKER_NAME,)
        clean = client.scan(b"just a harmless note")
        assert not clean.infected and clean.signatures == ()
        assert not client.scan(b"").infected


def test_a_stream_over_clamds_limit_is_an_error_not_clean(clamd: Clamd) -> None:
    with pytest.raises(ClamavError, match="INSTREAM size limit exceeded"):
        Client(clamd.socket).scan(b"\0" * (2 * 2**20))  # the private clamd takes 1 MiB


def test_rule_through_the_server(clamd: Clamd, tmp_path: Path) -> None:
    (tmp_path / "r.conf").write_text(RULESET)
    srv = Server(tmp_path, f'[clamav]\nsocket = "{clamd.socket}"\n', ruleset=str(tmp_path / "r.conf"))
    try:
        bad = srv.verdict(srv.scan(EICAR, "eicar.com")[1]["job_id"])
        assert bad["result"] == "bad" and EICAR_NAME in bad["reason"]
        clean = srv.verdict(srv.scan(b"quarterly figures attached", "q.txt")[1]["job_id"])
        # nothing found: the next rule decides
        assert [r["rule"] for r in clean["rules"]] == ["clamav", "final_rule"] and clean["result"] == "unknown"
    finally:
        srv.stop()


def test_clamd_down_is_failed_and_the_rule_recovers(tmp_path: Path) -> None:
    daemon = Clamd(tmp_path / "clamd")
    (tmp_path / "r.conf").write_text(RULESET)
    srv = Server(tmp_path / "srv", f'[clamav]\nsocket = "{daemon.tcp}"\ntimeout = 20\n',
                 ruleset=str(tmp_path / "r.conf"))
    try:
        daemon.stop()
        down = srv.verdict(srv.scan(EICAR, "eicar.com")[1]["job_id"])
        assert down["result"] == "failed" and "unreachable" in down["reason"], down
        daemon.start()
        # a failed verdict is not remembered: the same sample is analysed again once clamd is back
        back = srv.verdict(srv.scan(EICAR, "eicar.com")[1]["job_id"])
        assert back["result"] == "bad" and EICAR_NAME in back["reason"], back
    finally:
        srv.stop()
        daemon.stop()


def test_a_session_clamd_ended_is_replaced_transparently(tmp_path: Path) -> None:
    daemon = Clamd(tmp_path, idle_timeout=1)
    try:
        client = Client(daemon.socket, timeout=30)
        assert client.scan(EICAR).infected
        time.sleep(2.5)  # clamd has ended the idle session by now
        assert client.scan(EICAR).signatures == (EICAR_NAME,)
        assert client.scan(b"fine").infected is False
    finally:
        daemon.stop()


@pytest.fixture
def silent_clamd() -> Iterator[str]:
    """Accepts connections and reads, but never answers: a hung clamd."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_a_clamd_that_does_not_answer_is_failed_within_the_time_limit(silent_clamd: str) -> None:
    eng = build_engine({"rules": ["clamav", "final_rule"]}, "test", Resources(clamd=Client(silent_clamd, timeout=0.5)))
    verdict = helpers.run(eng, EICAR, "eicar.com")
    assert verdict.result is Result.failed and "did not answer within 0.5 s" in verdict.reason


def test_replies_and_addresses() -> None:
    assert parse_reply("stream: OK").infected is False
    assert parse_reply("stream: Win.Test.EICAR_HDB-1 FOUND").signatures == ("Win.Test.EICAR_HDB-1",)
    with pytest.raises(ClamavError, match="Can't allocate memory"):
        parse_reply("Can't allocate memory ERROR")
    with pytest.raises(ClamavError, match="unexpected answer"):
        parse_reply("UNKNOWN COMMAND")
    assert parse_address("/run/clamav/clamd.ctl") == (socket.AF_UNIX, "/run/clamav/clamd.ctl")
    assert parse_address("[::1]:3310") == (socket.AF_INET6, ("::1", 3310))
    for wrong in ("clamd.ctl", "localhost", "127.0.0.1:0", "127.0.0.1:70000", "host:port"):
        with pytest.raises(ValueError):
            parse_address(wrong)


def test_configuration_errors_are_clear(tmp_path: Path) -> None:
    from .test_cli import mailowl

    (tmp_path / "r.conf").write_text(RULESET)
    (tmp_path / "bad.toml").write_text('[clamav]\nsocket = "clamd.ctl"\n')
    wrong = mailowl("check-config", "--config", str(tmp_path / "bad.toml"), "--ruleset", str(tmp_path / "r.conf"))
    assert wrong.returncode == 2 and "[clamav] socket" in wrong.stderr and "HOST:PORT" in wrong.stderr
    (tmp_path / "none.toml").write_text("")
    missing = mailowl("check-config", "--config", str(tmp_path / "none.toml"), "--ruleset", str(tmp_path / "r.conf"))
    assert missing.returncode == 2 and "[clamav]" in missing.stderr and "socket" in missing.stderr


def test_an_expression_reading_clamavreport_needs_clamd(clamd: Clamd) -> None:
    raw = {"rules": ["expressions"], "expressions": {"expression": ["clamavreport.infected -> bad"]}}
    with pytest.raises(RulesetError, match=r"'clamavreport': clamd is not configured \(\[clamav\] socket\)"):
        build_engine(raw, "test")
    eng = build_engine(raw, "test", Resources(clamd=Client(clamd.socket)))
    assert helpers.run(eng, EICAR, "eicar.com").result is Result.bad
    assert helpers.run(eng, b"harmless", "note.txt").result is Result.unknown
