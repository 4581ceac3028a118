"""The per-message decision shared by every ingress path (milter, SMTP content filter, ...).

bad part -> reject 554 5.7.1 (or quarantine / discard); a part still being analysed -> tempfail
451 4.7.1 while the analysis goes on, so the sender's retry is answered from the cache; failed part ->
configurable, tempfail by default; a message that cannot be taken apart completely -> tempfail unless
configured otherwise; else accept with an X-Mailowl-Result header. Every decision gets a support id that
finds the message, its parts and their verdicts in the store.
"""

from __future__ import annotations

import asyncio
import email.errors
import email.header
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

from mailowl.analysis.sample import Sample
from mailowl.core.service import AnalysisService, QueueFull
from mailowl.mail.parts import Extraction, MailLimits, extract
from mailowl.results import Result
from mailowl.store import Job
from mailowl.store.messages import MessageRecord

# Messages below this size are taken apart on the event loop: a thread hand-off would cost more.
_INLINE_PARSE = 256 * 1024


@dataclass(frozen=True)
class MailPolicy:
    #: seconds to wait for verdicts before answering "try again later"
    wait: float = 2.0
    on_bad: str = "reject"  # reject | quarantine | discard
    on_failed: str = "tempfail"  # tempfail | reject | accept
    on_unparsable: str = "tempfail"  # tempfail | reject | accept
    reject_text: str = "Message rejected: it carries a malicious attachment"
    tempfail_text: str = "Attachment analysis in progress, try again later"
    failed_text: str = "Attachment analysis failed, try again later"
    unparsable_text: str = "Message could not be taken apart for analysis, try again later"
    include_bodies: bool = False
    limits: MailLimits = field(default_factory=MailLimits)
    header: str = "X-Mailowl-Result"


@dataclass
class Envelope:
    mail_from: str = ""
    rcpt_to: list[str] = field(default_factory=list)
    client_ip: str | None = None
    client_name: str | None = None
    #: given by the message API's callers (rspamd, Exim, ...); answered back, not stored
    helo: str | None = None
    queue_id: str | None = None


@dataclass
class Decision:
    action: str  # accept | tempfail | reject | quarantine | discard
    code: int
    status: str
    text: str
    support_id: str
    verdict: str
    jobs: list[Job] = field(default_factory=list)
    extraction: Extraction | None = None

    @property
    def reply(self) -> str:
        return f"{self.code} {self.status} {self.text} (support-id: {self.support_id})"

    @property
    def header_value(self) -> str:
        return f"{self.verdict}; support-id={self.support_id}"


def new_support_id() -> str:
    """``mo-`` and 12 random hex digits, from the system's random source read in batches (one read per
    message was a system call each)."""
    global _random_at
    if _random_at >= len(_random):
        _refill()
    _random_at += 6
    return f"mo-{_random[_random_at - 6:_random_at].hex()}"


def _refill() -> None:
    global _random, _random_at
    _random, _random_at = os.urandom(6 * 512), 0


_random, _random_at = b"", 0
# a forked child must not hand out the ids its parent still holds
os.register_at_fork(after_in_child=lambda: globals().update(_random=b"", _random_at=0))


def _worst(jobs: list[Job]) -> tuple[str, list[Job]]:
    """('pending' or the worst result name, the jobs that carry it)."""
    pending = [j for j in jobs if not j.finished]
    if pending:
        return "pending", pending
    worst = max((j.result for j in jobs if j.result is not None), default=None)
    if worst is None:
        return "clean", []
    return worst.name, [j for j in jobs if j.result is worst]


async def decide(service: AnalysisService, message: bytes | IO[bytes], envelope: Envelope, policy: MailPolicy,
                 ingress: str) -> Decision:
    """Judge a message given as bytes or as a seekable file (large messages stay on disk)."""
    support_id = new_support_id()
    if isinstance(message, bytes):
        raw, size = message, len(message)
    else:
        size = message.seek(0, 2)
        message.seek(0)
        raw = message.read(65536)
        if size <= _INLINE_PARSE:
            # a small spool (the milter's) read whole: extract takes its fast path for bytes
            message = raw if size <= len(raw) else raw + message.read()
    if size <= _INLINE_PARSE:
        extraction = extract(message, policy.limits, policy.include_bodies)
    else:
        extraction = await asyncio.to_thread(extract, message, policy.limits, policy.include_bodies)
    jobs: list[Job] = []
    try:
        for part in extraction.parts:
            sample = Sample(part.content, part.filename, part.content_type, part.disposition)
            jobs.append(service.cached(sample) or await service.submit(sample, origin="mail"))
    except QueueFull:
        decision = Decision("tempfail", 451, "4.7.1", "Analysis queue is full, try again later", support_id,
                            "pending", jobs, extraction)
        _record(service, decision, raw, size, envelope, ingress)
        return decision
    if policy.wait > 0 and any(not j.finished for j in jobs):
        await asyncio.wait([asyncio.ensure_future(j.wait(policy.wait)) for j in jobs if not j.finished])
    verdict, _ = _worst(jobs)
    decision = _judge(verdict, extraction, policy, support_id)
    decision.jobs, decision.extraction = jobs, extraction
    _record(service, decision, raw, size, envelope, ingress)
    return decision


def _judge(verdict: str, extraction: Extraction, policy: MailPolicy, support_id: str) -> Decision:
    def action(name: str, text: str, verdict_: str) -> Decision:
        if name == "reject":
            return Decision("reject", 554, "5.7.1", text, support_id, verdict_)
        if name == "tempfail":
            return Decision("tempfail", 451, "4.7.1", text, support_id, verdict_)
        if name in ("quarantine", "discard"):
            return Decision(name, 250, "2.7.0", f"Message {name}d: {text}", support_id, verdict_)
        return Decision("accept", 250, "2.0.0", "OK", support_id, verdict_)

    if verdict == Result.bad.name:
        return action(policy.on_bad, policy.reject_text, verdict)
    if verdict == "pending":
        return action("tempfail", policy.tempfail_text, verdict)
    if extraction.incomplete:
        return action(policy.on_unparsable, policy.unparsable_text, "unparsable")
    if verdict == Result.failed.name:
        return action(policy.on_failed, policy.failed_text, verdict)
    return action("accept", "", verdict)


def _record(service: AnalysisService, decision: Decision, raw: bytes, size: int, envelope: Envelope,
            ingress: str) -> None:
    extraction = decision.extraction
    parts: list[dict[str, Any]] = []
    if extraction is not None:
        for part, job in zip(extraction.parts, decision.jobs, strict=False):
            parts.append({"filename": part.filename, "content_type": part.content_type,
                          "disposition": part.disposition, "size": len(part.content),
                          "sha256": job.facts.get("sha256"), "job_id": job.id or None,
                          # the verdict at decision time; a cached one has no job of its own
                          "result": job.result.name if job.result is not None else None,
                          "reason": job.reason, "findings": part.findings})
    found = _top_headers(raw[:65536], (b"message-id", b"subject"))
    message_id = found.get(b"message-id")
    service.verdict_log.message(decision, envelope, message_id, size)
    service.store.record_message(MessageRecord(
        support_id=decision.support_id, created_at=datetime.now(UTC), ingress=ingress, message_id=message_id,
        subject=_decoded(found[b"subject"]) if b"subject" in found else None,
        mail_from=envelope.mail_from, rcpt_to=envelope.rcpt_to, client_ip=envelope.client_ip, size=size,
        action=decision.action, reply=decision.reply, parts=parts,
        findings=extraction.findings if extraction else []))


#: where the message's own header block ends: the first line that is empty but for CRs
_BLANK_LINE = re.compile(rb"(?:\A|\n)\r*(?:\n|\Z)")


def _top_headers(head: bytes, names: tuple[bytes, ...]) -> dict[bytes, str]:
    """The first of each named header of the message's own header block, unfolded; a cheap scan of the
    first bytes, not a parse (the record only shows them)."""
    found: dict[bytes, str] = {}
    current: bytes | None = None
    end = _BLANK_LINE.search(head)  # only the header block is split into lines, not the whole head
    if end is not None:
        head = head[:end.start()]
    for line in head.split(b"\n"):
        line = line.rstrip(b"\r")
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                found[current] += " " + line.strip().decode("utf-8", "replace")
            continue
        name, colon, value = line.partition(b":")
        name = name.strip().lower()
        current = name if colon and name in names and name not in found else None
        if current is not None:
            found[current] = value.strip().decode("utf-8", "replace")
    return found


def _decoded(value: str) -> str:
    """RFC 2047 encoded words decoded; the text as it came where they cannot be (an unknown charset)."""
    if "=?" not in value:
        return value
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (LookupError, UnicodeError, ValueError, email.errors.HeaderParseError):
        return value
