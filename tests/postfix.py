"""Private Postfix instances on loopback for end-to-end tests; /etc/postfix is only copied, never changed."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from .server import free_port


def _postconf(etc: Path, *args: str) -> None:
    subprocess.run(["postconf", "-c", str(etc), *args], check=True, capture_output=True)


class Postfix:
    def __init__(self, root: Path, name: str, main: list[str], services: list[str]) -> None:
        # Postfix's daemons run as postfix/nobody: pytest's private (0700) folders are out of their reach
        root = Path(tempfile.mkdtemp(prefix=f"mailowl-{name}-"))
        self.root = root
        self.name = name
        self.etc = root / "etc"
        self.port = free_port()
        self.mbox = root / "mbox"
        self.log = root / "maillog"
        for sub in ("etc", "data", "queue"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy("/etc/postfix/main.cf", self.etc)
        shutil.copy("/etc/postfix/master.cf", self.etc)
        os.chmod(root, 0o755)
        self.mbox.touch()
        os.chmod(self.mbox, 0o666)
        _postconf(self.etc, "-e", f"queue_directory = {root / 'queue'}", f"data_directory = {root / 'data'}",
                  f"maillog_file = {self.log}", f"maillog_file_prefixes = {root}", "inet_interfaces = 127.0.0.1", "inet_protocols = ipv4",
                  "mydestination =", "alias_maps =", "alias_database =", "mynetworks = 127.0.0.0/8",
                  "smtpd_relay_restrictions = permit_mynetworks, reject", f"multi_instance_name = {name}",
                  f"myhostname = {name}.localdomain", "smtputf8_enable = no", "biff = no",
                  "minimal_backoff_time = 1s", "maximal_backoff_time = 2s", "queue_run_delay = 1s",
                  "smtp_dns_support_level = disabled", "smtpd_banner = $myhostname ESMTP", *main)
        _postconf(self.etc, "-M#", "smtp/inet")
        _postconf(self.etc, "-Me", f"127.0.0.1:{self.port}/inet = 127.0.0.1:{self.port} inet n - n - - smtpd")
        _postconf(self.etc, "-Me", "filedump/unix = filedump unix - n n - - pipe flags=F user=nobody "
                  f"argv=/usr/bin/tee -a {self.mbox}")
        for service in services:
            _postconf(self.etc, "-Me", service)
        _postconf(self.etc, "-F", "*/*/chroot = n")
        shutil.chown(root / "data", "postfix")
        subprocess.run(["postfix", "-c", str(self.etc), "check"], check=True, capture_output=True)
        self._start()

    def _start(self) -> None:
        subprocess.run(["postfix", "-c", str(self.etc), "start"], check=True, capture_output=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"postfix {self.name} did not start: {self.log.read_text() if self.log.exists() else ''}")

    def flush(self) -> None:
        subprocess.run(["postqueue", "-c", str(self.etc), "-f"], check=True, capture_output=True)

    def queue(self) -> str:
        return subprocess.run(["postqueue", "-c", str(self.etc), "-p"], capture_output=True, text=True).stdout

    def delivered(self) -> list[bytes]:
        """Messages in the mailbox file, split at the From_ lines the pipe transport writes."""
        raw = self.mbox.read_bytes()
        chunks = raw.split(b"\nFrom ")
        return [c for c in chunks if c.strip()]

    def wait_delivered(self, count: int, timeout: float = 30) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            messages = self.delivered()
            if len(messages) >= count:
                return messages
            time.sleep(0.1)
        raise AssertionError(f"{self.name}: {len(self.delivered())} delivered, expected {count}\n{self.log.read_text()}")

    def queue_entries(self) -> list[dict[str, Any]]:
        """`postqueue -j`: one dict per queued message, with queue_name and each recipient's delay_reason."""
        out = subprocess.run(["postqueue", "-c", str(self.etc), "-j"], capture_output=True, text=True).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def pause(self) -> None:
        """Stops the daemons but keeps the queue and configuration, for resume()."""
        subprocess.run(["postfix", "-c", str(self.etc), "stop"], check=True, capture_output=True)

    def resume(self) -> None:
        self._start()

    def reload(self) -> None:
        """Re-reads main.cf and lookup tables such as texthash maps."""
        subprocess.run(["postfix", "-c", str(self.etc), "reload"], check=True, capture_output=True)

    def stop(self) -> None:
        subprocess.run(["postfix", "-c", str(self.etc), "stop"], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


def receiver(root: Path, milter_port: int | None = None, extra: list[str] | None = None,
             services: list[str] | None = None) -> Postfix:
    main = ["default_transport = filedump", "relay_transport = filedump"]
    if milter_port:
        main += [f"smtpd_milters = inet:127.0.0.1:{milter_port}", "milter_protocol = 6",
                 "milter_default_action = tempfail"]
    return Postfix(root, f"rx{free_port()}", main + (extra or []), services or [])


def sender(root: Path, relay_port: int) -> Postfix:
    return Postfix(root, f"tx{free_port()}", [f"relayhost = [127.0.0.1]:{relay_port}", "default_transport = smtp",
                                               "relay_transport = smtp"], [])


def access_map(entries: dict[str, str]) -> Path:
    """A texthash access(5) map (key -> action) where Postfix's unprivileged daemons can read it.

    Use it as f"texthash:{path}"; remove path.parent when done. Rewrite it and reload() to change it.
    """
    folder = Path(tempfile.mkdtemp(prefix="mailowl-map-"))
    os.chmod(folder, 0o755)
    path = folder / "access"
    write_access_map(path, entries)
    return path


def write_access_map(path: Path, entries: dict[str, str]) -> None:
    path.write_text("".join(f"{key} {action}\n" for key, action in entries.items()))
    os.chmod(path, 0o644)
