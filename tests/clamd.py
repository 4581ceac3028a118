"""A private clamd (Debian's clamav-daemon) on a signature database the tests write: signature downloads
cannot work here, and the tests must not depend on which signatures the machine has."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from .server import free_port, stop_process

CLAMD = shutil.which("clamd") or "/usr/sbin/clamd"
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
#: bytes the test body pattern (.ndb) matches anywhere in a file
MARKER = b"mailowl-test-malware-marker"
#: clamd appends this to signatures from unofficial databases such as ours
EICAR_NAME = "Mailowl-Test-EICAR.UNOFFICIAL"
MARKER_NAME = "Mailowl.Test.Body.UNOFFICIAL"


class Clamd:
    def __init__(self, tmp: Path, stream_max: str = "1M", idle_timeout: int = 30) -> None:
        self.dir = tmp
        self.socket = str(tmp / "clamd.sock")
        self.port = free_port()
        db = tmp / "db"
        db.mkdir(parents=True, exist_ok=True)
        # an md5 signature for the EICAR file and a hex body pattern
        (db / "test.hdb").write_text("44d88612fea8a8f36de82e1278abb02f:68:Mailowl-Test-EICAR\n")
        (db / "test.ndb").write_text(f"Mailowl.Test.Body:0:*:{MARKER.hex()}\n")
        (tmp / "clamd.conf").write_text(
            f"LocalSocket {self.socket}\nTCPSocket {self.port}\nTCPAddr 127.0.0.1\nDatabaseDirectory {db}\n"
            f"Foreground yes\nLogFile {tmp / 'clamd.log'}\nStreamMaxLength {stream_max}\nUser root\n"
            f"SelfCheck 0\nIdleTimeout {idle_timeout}\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def tcp(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen([CLAMD, "-c", str(self.dir / "clamd.conf")], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not self._pong():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.dir / "clamd.log").read_text() if (self.dir / "clamd.log").exists() else ""
                self.stop()
                raise RuntimeError(f"clamd did not start: {log[-2000:]}")
            time.sleep(0.1)

    def _pong(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(5)
                sock.connect(self.socket)
                sock.sendall(b"zPING\0")
                return sock.recv(16) == b"PONG\0"
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
