"""ClamAV: the sample streamed to clamd (INSTREAM) over its unix or TCP socket.

Each thread keeps one IDSESSION connection open per clamd, so clamd is not asked for a connection per
attachment. Against a local clamd, mailowl's whole rule (sessions, Engine.run included) scanned as many
samples/s as a bare client opening a connection per scan (bench/clamav.py, BENCHMARKS.md); over TCP to a
remote clamd the saved handshakes count more. clamd ends idle sessions (IdleTimeout) and ends a session
after an error; a closed session is replaced once, transparently.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass

from mailowl.analysis.sample import Sample

_CHUNK = 64 * 1024
_MAX_REPLY = 64 * 1024
_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.-]+)):(?P<port>\d{1,5})$")


class ClamavError(RuntimeError):
    """clamd could not be reached, did not answer in time, or answered with an error."""


class _Closed(Exception):
    """clamd closed the connection before answering."""


_local = threading.local()


def _sessions() -> dict[str, socket.socket]:
    """This thread's open sessions by clamd address; a forked worker process starts without any (its
    copies of the parent's sockets belong to the parent's conversation)."""
    if getattr(_local, "pid", None) != os.getpid():
        _local.pid, _local.sessions = os.getpid(), {}
    sessions: dict[str, socket.socket] = _local.sessions
    return sessions


@dataclass(frozen=True, slots=True)
class ClamavReport:
    """What expressions read as ``clamavreport``."""

    FIELDS = frozenset({"infected", "signatures"})

    infected: bool
    signatures: tuple[str, ...] = ()


def parse_address(text: str) -> tuple[socket.AddressFamily, str | tuple[str, int]]:
    """A unix socket path ("/run/clamav/clamd.ctl") or HOST:PORT ("127.0.0.1:3310", "[::1]:3310")."""
    if text.startswith("/"):
        return socket.AF_UNIX, text
    match = _HOST_PORT.match(text)
    if match is None or not 0 < int(match["port"]) < 65536:
        raise ValueError(f"expected an absolute unix socket path or HOST:PORT, got {text!r}")
    if match["v6"]:
        return socket.AF_INET6, (match["v6"], int(match["port"]))
    return socket.AF_INET, (match["host"], int(match["port"]))


@dataclass(frozen=True)
class Clamd:
    address: str
    #: seconds for connecting, sending and clamd's answer together
    timeout: float = 30.0

    def __post_init__(self) -> None:
        parse_address(self.address)

    def _connect(self, deadline: float) -> socket.socket:
        family, where = parse_address(self.address)
        try:
            if family == socket.AF_UNIX:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.settimeout(_left(deadline))
                    sock.connect(where)
                except BaseException:
                    sock.close()
                    raise
            else:
                assert isinstance(where, tuple)
                sock = socket.create_connection(where, timeout=_left(deadline))
            sock.settimeout(_left(deadline))
            sock.sendall(b"zIDSESSION\0")
        except OSError as exc:
            raise ClamavError(f"clamd at {self.address} is unreachable: {exc}") from None
        return sock

    def _command(self, command: bytes, payload: bytes | None = None) -> str:
        deadline = time.monotonic() + self.timeout
        sessions = _sessions()
        for _attempt in range(2):
            sock = sessions.pop(self.address, None)
            reused = sock is not None
            if sock is None:
                sock = self._connect(deadline)
            try:
                reply = self._exchange(sock, command, payload, deadline)
            except _Closed:
                sock.close()
                if reused:
                    continue  # clamd ended the idle session (IdleTimeout): once more on a new one
                raise ClamavError(f"clamd at {self.address} closed the connection without an answer") from None
            except BaseException:
                sock.close()
                raise
            if reply.endswith("ERROR"):
                sock.close()  # clamd ends the session after an error
            else:
                sessions[self.address] = sock
            return reply
        raise ClamavError(f"clamd at {self.address} closed the connection without an answer")

    def _exchange(self, sock: socket.socket, command: bytes, payload: bytes | None, deadline: float) -> str:
        try:
            sock.settimeout(_left(deadline))
            sock.sendall(b"z" + command + b"\0")
            if payload is not None:
                view = memoryview(payload)
                for start in range(0, len(view), _CHUNK):
                    chunk = view[start:start + _CHUNK]
                    sock.settimeout(_left(deadline))
                    sock.sendall(struct.pack(">I", len(chunk)) + chunk)
                sock.sendall(struct.pack(">I", 0))
        except TimeoutError:
            raise ClamavError(f"clamd at {self.address} did not take the sample within {self.timeout:g} s") from None
        except OSError:
            pass  # clamd stops reading when it refuses a stream (size limit): its reply says why
        reply = b""
        try:
            while not reply.endswith(b"\0"):
                sock.settimeout(_left(deadline))
                data = sock.recv(4096)
                if not data:
                    raise _Closed
                reply += data
                if len(reply) > _MAX_REPLY:
                    raise ClamavError(f"clamd at {self.address} sent an overlong reply")
        except TimeoutError:
            raise ClamavError(f"clamd at {self.address} did not answer within {self.timeout:g} s") from None
        except ConnectionError:
            raise _Closed from None
        except OSError as exc:
            raise ClamavError(f"clamd at {self.address} broke the connection: {exc}") from None
        # in a session every answer starts with the number of its request
        _number, _, text = reply[:-1].decode("utf-8", "replace").partition(": ")
        return text

    def ping(self) -> bool:
        try:
            return self._command(b"PING") == "PONG"
        except ClamavError:
            return False

    def scan(self, data: bytes) -> ClamavReport:
        return parse_reply(self._command(b"INSTREAM", data), self.address)


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


def parse_reply(reply: str, address: str = "clamd") -> ClamavReport:
    """``stream: OK``, ``stream: <signature> FOUND`` or ``<message> ERROR``."""
    text = reply.removeprefix("stream:").strip()
    if text == "OK":
        return ClamavReport(False)
    if text.endswith(" FOUND") and reply.startswith("stream:"):
        return ClamavReport(True, (text[:-len(" FOUND")].strip(),))
    if text.endswith("ERROR"):
        raise ClamavError(f"clamd at {address}: {text[:-len('ERROR')].strip().rstrip('.')}")
    raise ClamavError(f"clamd at {address} gave an unexpected answer: {reply[:200]!r}")


def clamav_report(sample: Sample, clamd: Clamd) -> ClamavReport:
    return clamd.scan(sample.content)
