"""Private database servers for tests that stop and start their database: PostgreSQL and MariaDB, each on a
data directory under /tmp and a free loopback port of its own, started and stopped by the test.

The machine's shared servers (127.0.0.1:3306 and :5432) serve the other tests and are never touched here.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .server import free_port

KINDS = ("postgresql", "mariadb")


def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    if not found:
        raise RuntimeError("PostgreSQL's server binaries are not installed (/usr/lib/postgresql/*/bin)")
    return found[-1]


class PrivateDatabase:
    """What the tests use: the SQLAlchemy url of the database `mailowl` on it, stop(), start(), remove()."""

    kind = ""
    url = ""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def remove(self) -> None:
        raise NotImplementedError


class PrivatePostgres(PrivateDatabase):
    """initdb'd under /tmp, on a port of its own, run as the postgres user (PostgreSQL refuses root)."""

    kind = "postgresql"

    def __init__(self) -> None:
        self.bin = _pg_bin()
        self.dir = Path(tempfile.mkdtemp(prefix="mailowl-pg-"))
        shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self.port = free_port()
        self._as_postgres([str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                           "--no-sync"])
        self.start()
        self._as_postgres([str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                           "mailowl"])
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/mailowl"

    def _as_postgres(self, args: list[str]) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "-o",
                           f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off", "start"])

    def stop(self) -> None:
        self._as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])

    def remove(self) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", str(self.bin / "pg_ctl"), "-D", str(self.data), "-m",
                        "immediate", "-w", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivateMariaDB(PrivateDatabase):
    """mariadb-install-db'd under /tmp, mariadbd on a port of its own, dropping to the mysql user;
    --skip-grant-tables: root (or anyone) connects without a password, over TCP only from loopback."""

    kind = "mariadb"

    def __init__(self) -> None:
        server = shutil.which("mariadbd", path="/usr/sbin:/usr/bin") or shutil.which("mysqld", path="/usr/sbin")
        install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
        if server is None or install is None:
            raise RuntimeError("MariaDB's server binaries are not installed (mariadb-server)")
        self.server = server
        self.dir = Path(tempfile.mkdtemp(prefix="mailowl-maria-"))
        shutil.chown(self.dir, "mysql", "mysql")
        self.data = self.dir / "data"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        subprocess.run([install, "--no-defaults", f"--datadir={self.data}", "--user=mysql",
                        "--auth-root-authentication-method=normal", "--skip-test-db"],
                       check=True, capture_output=True, timeout=120)
        self.start()
        subprocess.run(["mariadb", "--no-defaults", "-h", "127.0.0.1", "-P", str(self.port), "-u", "root", "-e",
                        "CREATE DATABASE mailowl"], check=True, capture_output=True, timeout=60)
        self.url = f"mysql+asyncmy://root@127.0.0.1:{self.port}/mailowl"

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        log = (self.dir / "out.log").open("ab")
        self.proc = subprocess.Popen(
            [self.server, "--no-defaults", f"--datadir={self.data}", f"--port={self.port}",
             "--bind-address=127.0.0.1", f"--socket={self.dir / 'sock'}", f"--pid-file={self.dir / 'pid'}",
             f"--log-error={self.dir / 'error.log'}", "--user=mysql", "--skip-grant-tables", "--skip-log-bin",
             "--innodb-flush-log-at-trx-commit=2", "--innodb-buffer-pool-size=64M", "--max-connections=500"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mariadbd exited: {self._log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
                if subprocess.run(["mariadb", "--no-defaults", "-h", "127.0.0.1", "-P", str(self.port), "-u",
                                   "root", "-e", "SELECT 1"], capture_output=True, timeout=30).returncode == 0:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mariadbd did not start: {self._log()}")
            time.sleep(0.1)

    def _log(self) -> str:
        path = self.dir / "error.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        """A normal shutdown (SIGTERM): open connections are cut, InnoDB writes its state and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)

    def remove(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        shutil.rmtree(self.dir, ignore_errors=True)


def create(kind: str) -> PrivateDatabase:
    if kind == "postgresql":
        return PrivatePostgres()
    if kind == "mariadb":
        return PrivateMariaDB()
    raise ValueError(kind)


@contextmanager
def private_database(kind: str) -> Iterator[PrivateDatabase]:
    """A fresh private server of that kind with an empty database `mailowl`; removed afterwards."""
    server = create(kind)
    try:
        yield server
    finally:
        server.remove()
