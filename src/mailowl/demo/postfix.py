"""`mailowl demo --postfix`: a private Postfix instance with mailowl's milter takes the sending MTA's mail.

It runs beside the system's Postfix and leaves /etc/postfix alone: its configuration (a copy of
/etc/postfix's, changed with postconf), queue and log live under the demo's directory; it listens on one
loopback port and relays every accepted mail to the demo's Maildir server. Postfix's master runs as root
and its daemons as the postfix user, so this needs root.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path


class PostfixError(RuntimeError):
    pass


def available() -> str | None:
    """Why a private Postfix cannot run here, or None."""
    if shutil.which("postfix") is None or shutil.which("postconf") is None:
        return "Postfix is not installed (Debian: apt-get install postfix)"
    if os.geteuid() != 0:
        return "a private Postfix needs root (its daemons switch to the postfix user)"
    return None


class PrivatePostfix:
    def __init__(self, root: Path, top: Path, port: int, milter: tuple[str, int], relay: tuple[str, int]) -> None:
        """``root`` holds the instance; ``top`` (root or a folder above it) is the demo's own directory."""
        self.root = root
        self.port = port
        self.etc = root / "etc"
        self.log = root / "maillog"
        for sub in ("etc", "data", "queue"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        # Postfix's daemons run as the postfix user: every folder above the queue must let them through. The
        # demo's own folders are opened for them; a folder above those is the user's to decide about
        for folder in (root, *root.parents):
            mode = folder.stat().st_mode
            if folder == top or top in folder.parents:
                os.chmod(folder, mode | 0o005)
            elif not mode & 0o001:
                raise PostfixError(f"Postfix's daemons (user postfix) cannot enter {folder}: choose a --dir they "
                                   "can reach, such as one under /tmp")
        shutil.copy("/etc/postfix/main.cf", self.etc)
        shutil.copy("/etc/postfix/master.cf", self.etc)
        self._postconf(
            "-e", f"queue_directory = {root / 'queue'}", f"data_directory = {root / 'data'}",
            f"maillog_file = {self.log}", f"maillog_file_prefixes = {root}", "inet_interfaces = 127.0.0.1",
            "inet_protocols = ipv4", "mydestination =", "alias_maps =", "alias_database =",
            "mynetworks = 127.0.0.0/8", "smtpd_relay_restrictions = permit_mynetworks, reject",
            f"multi_instance_name = mailowl-demo-{port}", "myhostname = postfix.demo", "smtputf8_enable = no",
            "biff = no", "smtp_dns_support_level = disabled", "queue_run_delay = 1s", "minimal_backoff_time = 1s",
            "maximal_backoff_time = 2s", f"relayhost = [{relay[0]}]:{relay[1]}", "default_transport = smtp",
            "relay_transport = smtp",
            f"smtpd_milters = inet:{milter[0]}:{milter[1]}", "milter_protocol = 6",
            # mailowl stopped or overloaded: the sending MTA keeps its mail
            "milter_default_action = tempfail")
        self._postconf("-M#", "smtp/inet")
        self._postconf("-Me", f"127.0.0.1:{port}/inet = 127.0.0.1:{port} inet n - n - - smtpd")
        self._postconf("-F", "*/*/chroot = n")
        shutil.chown(root / "data", "postfix")
        self._run("postfix", "-c", str(self.etc), "check")

    def _postconf(self, *args: str) -> None:
        self._run("postconf", "-c", str(self.etc), *args)

    def _run(self, *args: str) -> None:
        done = subprocess.run(args, capture_output=True, text=True)
        if done.returncode != 0:
            raise PostfixError(f"{' '.join(args[:2])}: {done.stderr.strip() or done.stdout.strip()}")

    def start(self) -> None:
        self._run("postfix", "-c", str(self.etc), "start")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise PostfixError(f"the private Postfix did not start; see {self.log}")

    def stop(self) -> None:
        subprocess.run(["postfix", "-c", str(self.etc), "stop"], capture_output=True)
