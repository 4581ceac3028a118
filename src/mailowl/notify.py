"""systemd's readiness protocol (sd_notify) without libsystemd: datagrams to $NOTIFY_SOCKET.

With `Type=notify`, systemd considers mailowl started when it sends READY=1 (once every listener is up),
hears STOPPING=1 when it begins to shut down, and with `WatchdogSec=` expects WATCHDOG=1 at least every
$WATCHDOG_USEC microseconds (mailowl pings twice as often, from its event loop: a stuck loop stops the
pings and systemd restarts it). Outside systemd, where $NOTIFY_SOCKET is unset, everything here does
nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
from collections.abc import Mapping

import uvicorn

log = logging.getLogger("mailowl")


class Notifier:
    """Sends state changes to the service manager; a no-op when there is none."""

    def __init__(self, address: str | None, watchdog_usec: str | None = None, watchdog_pid: str | None = None,
                 pid: int | None = None) -> None:
        self.address: str | bytes | None = None
        if address and address[0] in "/@":
            # "@name" is a socket in the abstract namespace: a leading NUL byte on the wire
            self.address = "\0" + address[1:] if address[0] == "@" else address
        elif address:
            log.warning("NOTIFY_SOCKET=%r is neither a path nor an abstract socket: not notifying", address)
        self.watchdog_interval: float | None = None
        pid = os.getpid() if pid is None else pid
        if watchdog_usec and watchdog_usec.isdigit() and int(watchdog_usec) > 0 and (
                not watchdog_pid or watchdog_pid == str(pid)):
            self.watchdog_interval = int(watchdog_usec) / 2e6  # seconds, half the manager's timeout

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None, unset: bool = True) -> Notifier:
        """The notifier systemd set up for this process; with `unset` its variables are removed, so that
        processes started from here (analysis workers, bsdtar) cannot speak for mailowl."""
        env = os.environ if environ is None else environ
        notifier = cls(env.get("NOTIFY_SOCKET"), env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID"))
        if unset and environ is None:
            for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                os.environ.pop(name, None)
        return notifier

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """Sends VARIABLE=value lines in one datagram; True if it went out. Never raises: a service manager
        that went away must not take mailowl with it."""
        if self.address is None:
            return False
        message = "\n".join(assignments).encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self.address)
            return True
        except OSError as exc:
            log.warning("cannot notify the service manager at %r: %s", self.address, exc)
            return False

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self, status: str = "") -> bool:
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    async def keep_alive(self) -> None:
        """Pings the watchdog until cancelled (returns at once without a watchdog)."""
        if self.address is None or self.watchdog_interval is None:
            return
        while True:
            self.watchdog()
            await asyncio.sleep(self.watchdog_interval)


class NotifyingServer(uvicorn.Server):
    """uvicorn's server that tells systemd: READY=1 once its socket listens (the lifespan, which starts the
    store, the workers, the milter and the content filter, has completed before that), STOPPING=1 when
    shutdown begins, WATCHDOG=1 in between."""

    def __init__(self, config: uvicorn.Config, notifier: Notifier | None = None) -> None:
        super().__init__(config)
        self.notifier = notifier or Notifier.from_environ()
        self._pings: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            listen = ", ".join(_address(s.getsockname()) for server in self.servers for s in server.sockets or ())
            self.notifier.ready(f"listening on {listen}" if listen else "listening")
            self._pings = asyncio.get_running_loop().create_task(self.notifier.keep_alive())

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.notifier.stopping("shutting down")
        try:
            await super().shutdown(sockets)
        finally:
            if self._pings is not None:
                self._pings.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._pings


def _address(name: object) -> str:
    return f"{name[0]}:{name[1]}" if isinstance(name, tuple) else str(name)


def run(config: uvicorn.Config) -> None:
    """uvicorn.run() for one process, with systemd notification."""
    server = NotifyingServer(config)
    server.run()
    if not server.started:
        sys.exit(3)  # uvicorn's STARTUP_FAILURE, as uvicorn.run() exits
