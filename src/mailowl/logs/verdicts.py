"""The verdict log: one line per decided message and per REST job, in the KLMS format existing
Logstash/Kibana pipelines read, or as one ECS JSON document per line.

Targets: ``stdout``, ``file:/path`` (re-opened when logrotate moves it), ``syslog:unix:/dev/log``,
``syslog:udp:HOST:PORT`` or ``syslog:tcp:HOST:PORT``, with RFC 3164 or RFC 5424 headers. Lines are
never cut: TCP uses RFC 6587 octet counting for RFC 5424, and UDP is for short lines only (a datagram
holds at most 64 KiB; see the README for rsyslog's ``$MaxMessageSize``).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

import orjson

from mailowl.logs.klms import format_line
from mailowl.results import Result

if TYPE_CHECKING:
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


def ecs_message(decision: Decision, envelope: Envelope, message_id: str | None, size: int) -> dict[str, Any]:
    extraction = decision.extraction
    attachments = []
    for part, job in zip(extraction.parts if extraction else [], decision.jobs, strict=False):
        attachments.append({"file": {"name": part.filename, "size": len(part.content), "mime_type": part.content_type,
                                     "hash": {"sha256": job.facts.get("sha256")}},
                            "mailowl": {"result": job.result.name if job.result else None, "threats": _threats(job)}})
    return {
        "@timestamp": datetime.now(UTC).isoformat(), "event": {
            "kind": "event", "category": ["email"], "action": decision.action,
            "outcome": "success" if decision.action == "accept" else "failure"},
        "email": {"message_id": message_id, "from": {"address": [envelope.mail_from] if envelope.mail_from else []},
                  "to": {"address": envelope.rcpt_to}, "attachments": attachments},
        "source": {"ip": envelope.client_ip}, "mailowl": {
            "support_id": decision.support_id, "verdict": decision.verdict, "reply": decision.reply, "size": size},
    }


def ecs_job(job: Job) -> dict[str, Any]:
    return {"@timestamp": datetime.now(UTC).isoformat(),
            "event": {"kind": "event", "category": ["file"], "action": "scan",
                      "outcome": "success" if job.result not in (Result.failed, None) else "failure"},
            "file": {"name": job.facts.get("filename"), "size": job.facts.get("size"),
                     "hash": {"sha256": job.facts.get("sha256")}},
            "mailowl": {"job_id": job.id, "result": job.result.name if job.result else None, "reason": job.reason,
                        "rules": [r.as_dict() for r in job.rules]}}


class VerdictLog:
    def __init__(self, target: str = "", fmt: str = "klms", syslog_format: str = "rfc3164",
                 program: str = "mailowl") -> None:
        self.target, self.fmt, self.syslog_format, self.program = target, fmt, syslog_format, program
        self.hostname = socket.gethostname().split(".")[0] or "-"
        self.pid = os.getpid()
        self._file: IO[str] | None = None
        self._inode: int | None = None
        self._checked = 0.0
        self._sock: socket.socket | None = None
        self._sock_address: Any = None
        self._kind = target.split(":", 2)[1] if target.startswith("syslog:") else None
        if target.startswith("syslog:"):
            self._connect()

    @property
    def enabled(self) -> bool:
        return bool(self.target)

    def message(self, decision: Decision, envelope: Envelope, message_id: str | None, size: int) -> None:
        if not self.target:
            return
        if self.fmt == "ecs":
            self._emit(orjson.dumps(ecs_message(decision, envelope, message_id, size)).decode())
        else:
            self._emit(klms_message(decision, envelope, message_id, size))

    def job(self, job: Job) -> None:
        if not self.target:
            return
        self._emit(orjson.dumps(ecs_job(job)).decode() if self.fmt == "ecs" else klms_job(job))

    # targets --------------------------------------------------------------------------------------------
    def _emit(self, line: str) -> None:
        try:
            if self.target == "stdout":
                sys.stdout.write(line + "\n")
            elif self.target.startswith("file:"):
                self._file_write(line)
            else:
                self._syslog(line)
        except OSError as exc:  # a log target that is down must never stop mail
            print(f"mailowl: verdict log {self.target}: {exc}", file=sys.stderr)

    def _file_write(self, line: str) -> None:
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
            self._file = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 (kept open)
            self._inode = os.fstat(self._file.fileno()).st_ino
        self._file.write(line + "\n")

    def _connect(self) -> None:
        rest = self.target.split(":", 2)[2]
        if self._kind == "unix":
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock_address = rest
        else:
            host, _, port = rest.rpartition(":")
            kind = socket.SOCK_DGRAM if self._kind == "udp" else socket.SOCK_STREAM
            self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind)
            self._sock_address = (host.strip("[]"), int(port))
            if self._kind == "tcp":
                self._sock.connect(self._sock_address)

    def _syslog(self, line: str) -> None:
        pri = _FACILITY_MAIL * 8 + _SEVERITY_INFO
        if self.syslog_format == "rfc5424":
            stamp = datetime.now(UTC).isoformat(timespec="microseconds")
            frame = f"<{pri}>1 {stamp} {self.hostname} {self.program} {self.pid} - - {line}"
        else:
            stamp = datetime.now().strftime("%b %d %H:%M:%S").replace(" 0", "  ", 1)
            frame = f"<{pri}>{stamp} {self.hostname} {self.program}[{self.pid}]: {line}"
        data = frame.encode("utf-8")
        if self._sock is None:
            self._connect()
        assert self._sock is not None
        if self._kind == "tcp":
            # RFC 6587: octet counting keeps multi-kilobyte lines whole; LF framing for RFC 3164 receivers
            payload = b"%d %s" % (len(data), data) if self.syslog_format == "rfc5424" else data + b"\n"
            try:
                self._sock.sendall(payload)
            except OSError:
                self._sock.close()
                self._connect()
                self._sock.sendall(payload)
        else:
            self._sock.sendto(data, self._sock_address)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._sock is not None:
            self._sock.close()
