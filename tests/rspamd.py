"""A private rspamd (Debian's 3.4) on loopback: its own standalone configuration, data and log in a temporary
folder; /etc/rspamd is only read. The milter proxy worker scans by itself (self_scan) and loads
integrations/rspamd/mailowl.lua."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .server import free_port, stop_process

PLUGIN = Path(__file__).parent.parent / "integrations/rspamd/mailowl.lua"
STANDALONE = Path(__file__).parent.parent / "integrations/rspamd/rspamd.conf"
# rspamd compiles its public-suffix list at a cold start (~9 s); these few suffixes are all the tests need
_TLDS = "com\norg\nnet\nlocaldomain\nexample\ninvalid\n"


def _rspamd_owned(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    shutil.chown(path, "_rspamd", "_rspamd")


class Rspamd:
    def __init__(self, section: str, name: str = "rspamd", plugin: bool = True) -> None:
        """``section``: the body of the plugin's `mailowl { ... }` section; ``plugin=False``: rspamd alone."""
        self.root = Path(tempfile.mkdtemp(prefix=f"mailowl-{name}-"))
        os.chmod(self.root, 0o755)
        self.port = free_port()
        self.conf = self.root / "rspamd.conf"
        self.log = self.root / "log" / "rspamd.log"
        for sub in ("run", "db", "log"):
            _rspamd_owned(self.root / sub)
        shutil.copy(PLUGIN, self.root / "mailowl.lua")
        (self.root / "tld.dat").write_text(_TLDS)
        (self.root / "mailowl.conf").write_text(section)
        # the standalone configuration shipped in integrations/rspamd, with this instance's port
        conf = STANDALONE.read_text().replace("127.0.0.1:11332", f"127.0.0.1:{self.port}")
        if not plugin:
            conf = conf[:conf.index('lua = "$MAILOWL_PLUGIN";')]
        self.conf.write_text(conf)
        self.args = ["rspamd", "-f", "-u", "_rspamd", "-g", "_rspamd", "-c", str(self.conf),
                     *self.vars()]
        self.out = (self.root / "stdout").open("w")
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def vars(self) -> list[str]:
        return [f"--var=CONFDIR={self.root}", f"--var=RUNDIR={self.root / 'run'}",
                f"--var=DBDIR={self.root / 'db'}", f"--var=LOGDIR={self.root / 'log'}",
                f"--var=MAILOWL_PLUGIN={self.root / 'mailowl.lua'}"]

    def configtest(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["rspamadm", *self.vars(), "configtest", "-c", str(self.conf)],
                              capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdout=self.out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rspamd exited: {self.log_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"rspamd did not start: {self.log_text()}")

    def log_text(self) -> str:
        parts = [p.read_text(errors="replace") for p in (self.log, self.root / "stdout") if p.exists()]
        return "\n".join(parts)

    def wait_log(self, needle: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_text()
            if needle in text:
                return text
            time.sleep(0.1)
        raise AssertionError(f"{needle!r} not in rspamd's log:\n{self.log_text()[-5000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 30)
            self.proc = None
        self.out.close()
        shutil.rmtree(self.root, ignore_errors=True)
