"""systemd: the unit file (systemd-analyze verify and security) and the notify protocol, spoken by a real
`mailowl serve` to a unix datagram socket this test listens on, as systemd would."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from mailowl.notify import Notifier

from .server import free_port, stop_process

UNIT = Path(__file__).parent.parent / "deploy" / "systemd" / "mailowl.service"
EXEC = "/opt/mailowl/bin/mailowl"


def _analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze is missing: scripts/bootstrap --test installs Debian's systemd")
    return path


def _unit_here(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at an executable that exists here (verify checks that it does);
    nothing else is changed."""
    text = UNIT.read_text()
    assert f"ExecStart={EXEC} serve" in text
    stub = tmp_path / "bin" / "mailowl"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    unit = tmp_path / "mailowl.service"
    unit.write_text(text.replace(EXEC, str(stub)))
    return unit


def test_unit_file_verifies(tmp_path: Path) -> None:
    unit = _unit_here(tmp_path)
    run = subprocess.run([_analyze(), "verify", str(unit)], capture_output=True, text=True, timeout=120)
    complaints = [line for line in (run.stdout + run.stderr).splitlines() if "mailowl" in line]
    assert run.returncode == 0 and not complaints, run.stdout + run.stderr


def test_verify_catches_a_mistake(tmp_path: Path) -> None:
    """The check above would notice a misspelt option (verify only warns, so warnings are failures)."""
    unit = _unit_here(tmp_path)
    unit.write_text(unit.read_text().replace("NoNewPrivileges=", "NoNewPrivilege="))
    run = subprocess.run([_analyze(), "verify", str(unit)], capture_output=True, text=True, timeout=120)
    assert "Unknown key" in run.stdout + run.stderr


def test_unit_file_is_hardened(tmp_path: Path) -> None:
    settings = dict(line.split("=", 1) for line in UNIT.read_text().splitlines()
                    if "=" in line and not line.startswith("#"))
    assert settings["Type"] == "notify" and settings["WatchdogSec"]
    assert settings["ProtectSystem"] == "strict" and settings["NoNewPrivileges"] == "yes"
    assert settings["DynamicUser"] == "yes" and settings["StateDirectory"] == "mailowl"
    assert settings["Environment"] == "MAILOWL_SERVER_DATA_DIR=%S/mailowl"  # the only writable place
    # systemd's own rating of the sandbox, offline: 2.5 on its 0-10 scale ("OK") at most
    run = subprocess.run([_analyze(), "security", "--offline=yes", "--threshold=25", str(_unit_here(tmp_path))],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr


# --- the notify protocol

class Listener:
    """systemd's end: a datagram socket, by path or in the abstract namespace."""

    def __init__(self, tmp_path: Path, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"mailowl-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.address = str(tmp_path / "notify.sock")
            self.sock.bind(self.address)
        self.messages: list[str] = []

    def next(self, timeout: float = 60) -> str:
        self.sock.settimeout(timeout)
        message = self.sock.recv(4096).decode()
        self.messages.append(message)
        return message

    def until(self, field: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while True:
            message = self.next(max(0.1, deadline - time.monotonic()))
            if field in message.split("\n"):
                return message

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_notifier_speaks_the_protocol(tmp_path: Path, abstract: bool) -> None:
    listener = Listener(tmp_path, abstract)
    try:
        notifier = Notifier(listener.address)
        assert notifier.ready("listening on 127.0.0.1:8100")
        assert listener.next(5) == "READY=1\nSTATUS=listening on 127.0.0.1:8100"
        assert notifier.watchdog() and listener.next(5) == "WATCHDOG=1"
        assert notifier.status("busy") and listener.next(5) == "STATUS=busy"
        assert notifier.stopping() and listener.next(5) == "STOPPING=1"
    finally:
        listener.close()


def test_notifier_without_systemd_does_nothing(tmp_path: Path) -> None:
    assert not Notifier(None).enabled and not Notifier(None).ready()
    assert not Notifier("relative/path").enabled  # neither a path nor "@name": ignored, not guessed
    # a manager that went away: a warning, never an exception
    assert not Notifier(str(tmp_path / "gone.sock")).ready()


def test_watchdog_interval() -> None:
    assert Notifier("/x", "30000000").watchdog_interval == 15  # half of WatchdogSec=30s
    assert Notifier("/x", "30000000", "123", pid=123).watchdog_interval == 15
    assert Notifier("/x", "30000000", "124", pid=123).watchdog_interval is None  # meant for another process
    assert Notifier("/x", None).watchdog_interval is None
    assert Notifier("/x", "0").watchdog_interval is None
    assert Notifier("/x", "soon").watchdog_interval is None


def test_from_environ_hides_the_socket_from_children(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "@somewhere")
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    notifier = Notifier.from_environ()
    assert notifier.address == "\0somewhere" and notifier.watchdog_interval == 2
    assert "NOTIFY_SOCKET" not in os.environ and "WATCHDOG_USEC" not in os.environ


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return True
    except OSError:
        return False


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_serve_notifies_systemd(tmp_path: Path, abstract: bool) -> None:
    """READY=1 comes only when the REST API, the milter and the content filter all accept connections;
    then watchdog pings; STOPPING=1 on SIGTERM; a clean exit."""
    listener = Listener(tmp_path, abstract)
    rest, milter, smtp = free_port(), free_port(), free_port()
    env = {**os.environ, "NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "400000",  # a ping every 0.2 s
           "MAILOWL_MILTER_LISTEN": f"127.0.0.1:{milter}", "MAILOWL_SMTP_LISTEN": f"127.0.0.1:{smtp}",
           "MAILOWL_SMTP_NEXT_HOP": f"127.0.0.1:{free_port()}"}
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "mailowl.cli", "serve", "--listen", f"127.0.0.1:{rest}",
                             "--data-dir", str(tmp_path / "data")], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        try:
            ready = listener.until("READY=1", timeout=90)
        except TimeoutError:
            pytest.fail(f"no READY=1: {(tmp_path / 'server.log').read_text()}")
        assert all(_listening(port) for port in (rest, milter, smtp)), "READY=1 before every listener was up"
        assert f"127.0.0.1:{rest}" in ready  # STATUS= says where
        assert not any("WATCHDOG=1" in m or "STOPPING=1" in m for m in listener.messages[:-1])
        for _ in range(3):
            listener.until("WATCHDOG=1", timeout=60)
        proc.send_signal(signal.SIGTERM)
        listener.until("STOPPING=1", timeout=60)
        # uvicorn ends by raising the SIGTERM it caught again, which systemd counts as a clean exit
        assert proc.wait(60) in (0, -signal.SIGTERM)
    finally:
        stop_process(proc)
        log.close()
        listener.close()
