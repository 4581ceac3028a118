"""Who wrote a job row (``jobs.run``: host, pid, process start time) and whether that process still runs."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path


def _start_ticks(pid: int | str) -> str | None:
    """When the process started, in clock ticks since boot: with the pid, names one process for good."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def run_name() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()} {pid} {_start_ticks(pid) or uuid.uuid4().hex}"[:128]


def on_this_host(run: str) -> bool:
    return run.rsplit(" ", 2)[0] == socket.gethostname()


def alive(run: str) -> bool:
    """Only meaningful for a run on this host: another host's pids say nothing here."""
    _host, pid, ticks = run.rsplit(" ", 2)
    return pid.isdigit() and _start_ticks(pid) == ticks
