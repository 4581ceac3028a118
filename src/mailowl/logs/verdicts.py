"""The verdict log: one line per decided message and per REST job, in the KLMS format existing
Logstash/Kibana pipelines read, or as one ECS JSON document per line.

Targets: ``stdout``, ``file:/path`` (re-opened when logrotate moves it), ``syslog:unix:/dev/log``,
``syslog:udp:HOST:PORT`` or ``syslog:tcp:HOST:PORT``, with RFC 3164 or RFC 5424 headers. Lines are
never cut: TCP uses RFC 6587 octet counting for RFC 5424, and UDP is for short lines only (a datagram
holds at most 64 KiB; see the README for rsyslog's ``$MaxMessageSize``).

Callers only format a line and put it on a bounded queue; one writer thread does all I/O, connects
lazily and reconnects with backoff, so a slow or dead target can never hold up mail. A full queue
drops lines, counted in ``mailowl_log_lines_dropped_total``.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

import orjson

from mailowl import metrics
from mailowl.logs.klms import format_line, rfc3164_timestamp
from mailowl.results import Result

if TYPE_CHECKING:
    from mailowl.config import LogConfig
    from mailowl.mail.policy import Decision, Envelope
    from mailowl.store import Job

_STATUS = {"accept": "clean", "reject": "infected", "quarantine": "infected", "discard": "infected",
           "tempfail": "not processed"}
_ACTION = {"accept": "Skipped", "reject": "Rejected", "quarantine": "Skipped, Put in backup", "discard": "Deleted",
           "tempfail": "Deferred"}
_AV_STATUS = {"bad": "Infected", "failed": "Error", "good": "Clean", "ignored": "Clean", "unknown": "NotDetected",
              "unchecked": "NotScanned", None: "NotScanned"}
_FACILITY_MAIL = 2
_SEVERITY_INFO = 6


def _part_status(job: Job) -> str:
    return _AV_STATUS.get(job.result.name if job.result is not None else None, "NotScanned")


def _threats(job: Job) -> list[str]:
    return [r.rule for r in job.rules if r.result is Result.bad]


def klms_message(decision: Decision, envelope: Envelope, message_id: str | None, size: int) -> str:
    worst = max((_part_status(j) for j in decision.jobs), key=list(_AV_STATUS.values()).index, default="NotScanned")
    fields: list[tuple[str, object]] = [
        ("message-id", message_id or ""), ("relay-ip", envelope.client_ip or ""),
        ("action", _ACTION.get(decision.action, decision.action))]
    if decision.action == "quarantine":
        fields.append(("backup-reason", "AntiVirus"))  # and no rules=, as KLMS writes quarantine lines
    else:
        # KLMS counts the rules that triggered; mailowl counts the distinct rules that judged a part bad
        fields.append(("rules", len({rule for job in decision.jobs for rule in _threats(job)})))
    fields += [("size", size), ("mail-from", envelope.mail_from), ("rcpt-to", envelope.rcpt_to),
               ("av-status", worst), ("support-id", decision.support_id)]
    parts = []
    extraction = decision.extraction
    names = [p.filename for p in extraction.parts] if extraction else []
    for name, job in zip(names, decision.jobs, strict=False):
        part_fields: list[tuple[str, object]] = [("av-status", _part_status(job))]
        threats = _threats(job)
        if threats:
            part_fields.append(("threats", threats))
        parts.append((name or "(unnamed)", part_fields))
    return format_line(_STATUS.get(decision.action, decision.action), fields, parts)


def klms_job(job: Job) -> str:
    facts = job.facts
    return format_line("job", [
        ("job-id", job.id), ("result", job.result.name if job.result else "pending"), ("reason", job.reason or ""),
        ("filename", facts.get("filename") or ""), ("size", int(facts.get("size") or 0)),
        ("sha256", facts.get("sha256") or ""), ("rules", [r.rule for r in job.rules])], [])


def ecs_message(decision: Decision, envelope: Envelope, message_id: str | None, size: int,
                now: datetime | None = None) -> dict[str, Any]:
    extraction = decision.extraction
    attachments = []
    for part, job in zip(extraction.parts if extraction else [], decision.jobs, strict=False):
        attachments.append({"file": {"name": part.filename, "size": len(part.content), "mime_type": part.content_type,
                                     "hash": {"sha256": job.facts.get("sha256")}},
                            "mailowl": {"result": job.result.name if job.result else None, "threats": _threats(job)}})
    return {
        "@timestamp": ecs_timestamp(now or local_now()), "event": {
            "kind": "event", "category": ["email"], "action": decision.action,
            "outcome": "success" if decision.action == "accept" else "failure"},
        "email": {"message_id": message_id, "from": {"address": [envelope.mail_from] if envelope.mail_from else []},
                  "to": {"address": envelope.rcpt_to}, "attachments": attachments},
        "source": {"ip": envelope.client_ip}, "mailowl": {
            "support_id": decision.support_id, "verdict": decision.verdict, "reply": decision.reply, "size": size},
    }


def ecs_job(job: Job, now: datetime | None = None) -> dict[str, Any]:
    return {"@timestamp": ecs_timestamp(now or local_now()),
            "event": {"kind": "event", "category": ["file"], "action": "scan",
                      "outcome": "success" if job.result not in (Result.failed, None) else "failure"},
            "file": {"name": job.facts.get("filename"), "size": job.facts.get("size"),
                     "hash": {"sha256": job.facts.get("sha256")}},
            "mailowl": {"job_id": job.id, "result": job.result.name if job.result else None, "reason": job.reason,
                        "rules": [r.as_dict() for r in job.rules]}}


Clock = Callable[[], datetime]


def local_now() -> datetime:
    """The wall clock in the machine's time zone, with its offset (RFC 3164 stamps are local time)."""
    return datetime.now(UTC).astimezone()


def ecs_timestamp(now: datetime) -> str:
    return now.astimezone(UTC).isoformat()


def rfc5424_timestamp(now: datetime) -> str:
    return now.astimezone(UTC).isoformat(timespec="microseconds")


class _Throttle:
    """True at most once per interval, so a lasting problem is reported, not repeated for every line."""

    def __init__(self, interval: float, monotonic: Callable[[], float]) -> None:
        self.interval, self.monotonic = interval, monotonic
        self._last: float | None = None

    def ready(self) -> bool:
        now = self.monotonic()
        if self._last is not None and now - self._last < self.interval:
            return False
        self._last = now
        return True


_BATCH = 1000  # lines written with one system call at most; bounds the bytes resent after a failure
_NOTE_INTERVAL = 60.0


class VerdictLog:
    """Formats lines in the caller's thread and hands them to one writer thread through a bounded queue.

    ``clock`` gives every timestamp written; ``monotonic`` paces the reports on stderr. Neither is read
    for anything else, so tests can inject both.
    """

    def __init__(self, target: str = "", fmt: str = "klms", syslog_format: str = "rfc3164",
                 program: str = "mailowl", *, queue_size: int = 10_000, send_timeout: float = 5.0,
                 max_backoff: float = 10.0, clock: Clock = local_now,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.target, self.fmt, self.syslog_format, self.program = target, fmt, syslog_format, program
        self.queue_size, self.send_timeout, self.max_backoff = queue_size, send_timeout, max_backoff
        self.clock, self.monotonic = clock, monotonic
        self.hostname = socket.gethostname().split(".")[0] or "-"
        self.pid = os.getpid()
        self._kind = target.split(":", 2)[1] if target.startswith("syslog:") else None
        self._queue: queue.Queue[bytes] = queue.Queue(queue_size)
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._dropped = 0
        self._reported = 0
        self._drop_note = _Throttle(_NOTE_INTERVAL, monotonic)
        self._error_note = _Throttle(_NOTE_INTERVAL, monotonic)
        # writer-thread state
        self._file: IO[bytes] | None = None
        self._inode: int | None = None
        self._checked = 0.0
        self._sock: socket.socket | None = None
        self._writer: threading.Thread | None = None
        if target:
            self._writer = threading.Thread(target=self._run, name="mailowl-verdict-log", daemon=True)
            self._writer.start()

    @classmethod
    def from_config(cls, log: LogConfig) -> VerdictLog:
        return cls(log.target, log.format, log.syslog_format, queue_size=log.queue_size,
                   send_timeout=log.send_timeout)

    @property
    def enabled(self) -> bool:
        return bool(self.target)

    @property
    def dropped(self) -> int:
        """Lines lost by this log so far (the queue was full, or the target refused them at close)."""
        with self._lock:
            return self._dropped

    def message(self, decision: Decision, envelope: Envelope, message_id: str | None, size: int) -> None:
        if not self.target:
            return
        now = self.clock()
        if self.fmt == "ecs":
            self._put(orjson.dumps(ecs_message(decision, envelope, message_id, size, now)).decode(), now)
        else:
            self._put(klms_message(decision, envelope, message_id, size), now)

    def job(self, job: Job) -> None:
        if not self.target:
            return
        now = self.clock()
        self._put(orjson.dumps(ecs_job(job, now)).decode() if self.fmt == "ecs" else klms_job(job), now)

    def frame(self, line: str, now: datetime) -> bytes:
        """The bytes the target receives for one line, with its header and framing."""
        if self._kind is None:
            if self.fmt == "ecs":
                return (line + "\n").encode("utf-8")
            # KLMS lines carry a syslog prefix in files too, as in /var/log/mail.log: grok's SYSLOGBASE and
            # `mailowl logs parse` read the time and host from it
            return f"{rfc3164_timestamp(now)} {self.hostname} {self.program}[{self.pid}]: {line}\n".encode()
        pri = _FACILITY_MAIL * 8 + _SEVERITY_INFO
        if self.syslog_format == "rfc5424":
            data = f"<{pri}>1 {rfc5424_timestamp(now)} {self.hostname} {self.program} {self.pid} - - {line}".encode()
        else:
            data = f"<{pri}>{rfc3164_timestamp(now)} {self.hostname} {self.program}[{self.pid}]: {line}".encode()
        if self._kind == "tcp":
            # RFC 6587: octet counting keeps multi-kilobyte lines whole; LF framing for RFC 3164 receivers
            return b"%d %s" % (len(data), data) if self.syslog_format == "rfc5424" else data + b"\n"
        return data

    def _put(self, line: str, now: datetime) -> None:
        if not self._closing.is_set():
            try:
                self._queue.put_nowait(self.frame(line, now))
                return
            except queue.Full:
                pass
        with self._lock:
            self._dropped += 1
        metrics.LOG_LINES_DROPPED.inc()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every line queued so far is written (or given up); False if that took too long."""
        deadline = time.monotonic() + timeout
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._queue.all_tasks_done.wait(left)
        return True

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued, waiting at most ``timeout`` seconds for a slow or dead target."""
        if self._writer is None or self._closing.is_set():
            return
        self._closing.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(b"")  # wakes the writer at once
        self._writer.join(timeout)
        if self._writer.is_alive():
            left = self._queue.qsize()
            print(f"mailowl: verdict log {self.target}: {left} queued line(s) were not written: the target did "
                  f"not take them within {timeout:g} s of shutdown", file=sys.stderr, flush=True)

    # the writer thread ----------------------------------------------------------------------------------
    def _run(self) -> None:
        batch: list[bytes] = []
        taken = 0  # frames got from the queue and not yet marked done, the wake-up b"" included
        failures = 0
        try:
            while True:
                self._note_drops()
                if not batch and self._closing.is_set() and self._queue.empty():
                    return
                if not batch:
                    try:
                        batch.append(self._queue.get(timeout=0.5))
                        taken += 1
                    except queue.Empty:
                        if self._closing.is_set():
                            return
                        continue
                    # a batch retried after a failure is not topped up: the queue alone then holds what waits,
                    # and its bound decides what is dropped
                    while len(batch) < _BATCH:
                        try:
                            batch.append(self._queue.get_nowait())
                            taken += 1
                        except queue.Empty:
                            break
                    batch = [frame for frame in batch if frame]
                try:
                    if batch:
                        self._deliver(batch)
                except Exception as exc:  # OSError and timeouts mostly; nothing may end the writer
                    self._disconnect()
                    failures += 1
                    if self._closing.is_set():
                        self._give_up(batch, exc)
                        self._done(taken)
                        return
                    delay = min(self.max_backoff, 0.25 * 2 ** min(failures - 1, 16))
                    if self._error_note.ready():
                        print(f"mailowl: verdict log {self.target}: {exc or type(exc).__name__}; retrying every "
                              f"{self.max_backoff:g} s at most, lines wait in a queue of {self.queue_size}",
                              file=sys.stderr, flush=True)
                    self._pause(delay)
                    continue
                if failures:
                    print(f"mailowl: verdict log {self.target}: writing again after {failures} failed attempt(s)",
                          file=sys.stderr, flush=True)
                    failures = 0
                batch = []
                self._done(taken)
                taken = 0
        finally:
            self._note_drops()
            self._disconnect()
            if self._file is not None:
                self._file.close()

    def _done(self, count: int) -> None:
        for _ in range(count):
            self._queue.task_done()

    def _pause(self, delay: float) -> None:
        """Back off, but keep reporting drops and stop waiting as soon as close() is called."""
        deadline = time.monotonic() + delay
        while not self._closing.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._closing.wait(min(left, 0.5))
            self._note_drops()

    def _give_up(self, batch: list[bytes], exc: Exception) -> None:
        lost = len(batch)
        while True:
            try:
                lost += bool(self._queue.get_nowait())
            except queue.Empty:
                break
            self._queue.task_done()
        with self._lock:
            self._dropped += lost
        metrics.LOG_LINES_DROPPED.inc(lost)
        print(f"mailowl: verdict log {self.target}: {exc or type(exc).__name__}; {lost} line(s) not written at "
              "shutdown", file=sys.stderr, flush=True)

    def _note_drops(self) -> None:
        with self._lock:
            dropped = self._dropped
        if dropped > self._reported and self._drop_note.ready():
            print(f"mailowl: verdict log {self.target}: the queue of {self.queue_size} lines is full, "
                  f"{dropped - self._reported} line(s) dropped since the last report ({dropped} in all; "
                  "metric mailowl_log_lines_dropped_total)", file=sys.stderr, flush=True)
            self._reported = dropped

    def _deliver(self, batch: list[bytes]) -> None:
        if self.target == "stdout":
            sys.stdout.write(b"".join(batch).decode("utf-8"))
            sys.stdout.flush()
        elif self.target.startswith("file:"):
            self._file_write(b"".join(batch))
        elif self._kind == "tcp":
            sock = self._sock or self._connect()
            sock.sendall(b"".join(batch))
        else:
            sock = self._sock or self._connect()
            address = self._address()
            for frame in batch:
                sock.sendto(frame, address)

    def _file_write(self, data: bytes) -> None:
        path = self.target[5:]
        now = time.monotonic()
        if self._file is not None and now - self._checked > 1:
            self._checked = now
            try:
                moved = os.stat(path).st_ino != self._inode
            except FileNotFoundError:
                moved = True
            if moved:  # logrotate moved the file away: start a new one
                self._file.close()
                self._file = None
        if self._file is None:
            self._file = open(path, "ab")  # noqa: SIM115 (kept open)
            self._inode = os.fstat(self._file.fileno()).st_ino
        self._file.write(data)
        self._file.flush()

    def _address(self) -> Any:
        rest = self.target.split(":", 2)[2]
        if self._kind == "unix":
            return rest
        host, _, port = rest.rpartition(":")
        return host.strip("[]"), int(port)

    def _connect(self) -> socket.socket:
        address = self._address()
        if self._kind == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        else:
            family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM if self._kind == "tcp" else socket.SOCK_DGRAM)
        sock.settimeout(self.send_timeout)
        if self._kind == "tcp":
            try:
                sock.connect(address)
            except OSError:
                sock.close()
                raise
        self._sock = sock
        return sock

    def _disconnect(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
