"""POST /v2/messages: mailowl's decision for a whole message, for any MTA hook (rspamd, Exim, Haraka, ...).

The body is the raw RFC 5322 message (``Content-Type: message/rfc822``); the envelope and ``wait`` come as
query parameters, so curl and a Lua plugin need nothing but a URL:

    POST /v2/messages?from=alice@example.org&rcpt=bob@example.net&rcpt=carol@example.net
                     &ip=192.0.2.1&helo=mx.example.org&hostname=mx.example.org&queue_id=4Xyz&wait=2

The message goes through mail.policy.decide, the same extraction and policy the milter and the SMTP
content filter use, and is recorded under its support id (GET /v2/messages/<support-id>). It is read as a
stream, held in memory up to 1 MiB and spooled to a temporary file beyond, and refused with 413 past the
message limit (4 × server.max_sample_size, as the content filter's SMTP SIZE) without reading the rest.

Served straight from ASGI, as the v1 hot endpoints are: an MTA asks once per message.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from mailowl.api.upload import UploadError
from mailowl.core.service import AnalysisService
from mailowl.mail.policy import Decision, Envelope, MailPolicy, decide
from mailowl.store import StoreError

log = logging.getLogger(__name__)

MAX_WAIT = 300.0
#: held in memory up to this, then spooled to disk (as the milter does)
_SPOOL = 2**20
_PARAMS = frozenset({"from", "rcpt", "ip", "helo", "hostname", "queue_id", "wait"})
_TYPES = (b"message/rfc822", b"application/octet-stream", b"text/plain")
_MAX_RCPT = 1000
_MAX_FIELDS = _MAX_RCPT + len(_PARAMS)


class MessageError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_query(query: bytes) -> tuple[Envelope, float | None]:
    """The envelope and ``wait`` of a query string; MessageError(400) for anything unknown or malformed."""
    try:
        pairs = _pairs(query.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise MessageError(400, f"Malformed query string: {exc}") from None
    envelope = Envelope()
    wait: float | None = None
    seen: set[str] = set()
    for key, value in pairs:
        if key not in _PARAMS:
            raise MessageError(400, f"Unknown query parameter {key[:40]!r} (allowed: {', '.join(sorted(_PARAMS))})")
        if key != "rcpt":
            if key in seen:
                raise MessageError(400, f"Query parameter {key!r} given more than once")
            seen.add(key)
        if len(value) > 1024:
            raise MessageError(400, f"Query parameter {key!r} is longer than 1024 characters")
        if key == "rcpt":
            envelope.rcpt_to.append(_address(value))
        elif key == "from":
            envelope.mail_from = _address(value)
        elif key == "ip":
            envelope.client_ip = value or None
        elif key == "hostname":
            envelope.client_name = value or None
        elif key == "helo":
            envelope.helo = value or None
        elif key == "queue_id":
            envelope.queue_id = value or None
        else:
            try:
                wait = float(value)
            except ValueError:
                wait = -1.0
            if not 0 <= wait <= MAX_WAIT:  # also NaN
                raise MessageError(400, f"wait must be a number of seconds from 0 to {MAX_WAIT:g}")
    return envelope, wait


def _pairs(text: str) -> list[tuple[str, str]]:
    """urllib.parse.parse_qsl(text, keep_blank_values=True, max_num_fields=_MAX_FIELDS), without its cost
    for the plain names and values most queries consist of (unquote only where there is something to do)."""
    if text and text.count("&") >= _MAX_FIELDS:
        raise ValueError("Max number of fields exceeded")
    pairs = []
    for piece in text.split("&"):
        if piece:
            name, _, value = piece.partition("=")
            if "%" in name or "+" in name:
                name = unquote(name.replace("+", " "))
            if "%" in value or "+" in value:
                value = unquote(value.replace("+", " "))
            pairs.append((name, value))
    return pairs


def _address(value: str) -> str:
    return value.strip().removeprefix("<").removesuffix(">")


def as_answer(decision: Decision, policy: MailPolicy, envelope: Envelope) -> dict[str, Any]:
    """The JSON answer for a decision: what to tell the SMTP client, what to add, every part's verdict."""
    parts = []
    extraction = decision.extraction
    if extraction is not None:
        for part, job in zip(extraction.parts, decision.jobs, strict=False):
            parts.append({"filename": part.filename, "content_type": part.content_type,
                          "disposition": part.disposition, "size": len(part.content),
                          "sha256": job.facts.get("sha256"), "job_id": job.id or None,
                          "state": job.state, "result": job.result.name if job.result is not None else None,
                          "reason": job.reason})
    header = None
    if decision.action in ("accept", "quarantine"):
        header = {"name": policy.header, "value": decision.header_value}
    return {
        "support_id": decision.support_id, "action": decision.action, "code": decision.code,
        "status": decision.status, "text": decision.text, "reply": decision.reply, "verdict": decision.verdict,
        "header": header, "parts": parts,
        "incomplete": bool(extraction and extraction.incomplete),
        "findings": list(extraction.findings) if extraction else [],
        "envelope": {"from": envelope.mail_from, "rcpt": envelope.rcpt_to, "ip": envelope.client_ip,
                     "hostname": envelope.client_name, "helo": envelope.helo, "queue_id": envelope.queue_id},
    }


class MessagesApi:
    def __init__(self, service: AnalysisService, policy: MailPolicy, max_size: int) -> None:
        self.service = service
        self.policy = policy
        #: the largest message taken; the content filter's SMTP SIZE limit
        self.max_size = max_size
        self._policies: dict[float, MailPolicy] = {}

    def _policy(self, wait: float | None) -> MailPolicy:
        if wait is None or wait == self.policy.wait:
            return self.policy
        policy = self._policies.get(wait)
        if policy is None:
            if len(self._policies) > 64:
                self._policies.clear()
            policy = self._policies[wait] = dataclasses.replace(self.policy, wait=wait)
        return policy

    async def post(self, scope: Mapping[str, Any], receive: Any) -> tuple[int, dict[str, Any]]:
        """(status, JSON payload) for one POST /v2/messages."""
        try:
            envelope, wait = parse_query(scope.get("query_string", b""))
            body = await self._read(scope, receive)
        except MessageError as exc:
            return exc.status, {"message": exc.message}
        except UploadError as exc:
            return exc.status, {"message": exc.message}
        policy = self._policy(wait)
        try:
            decision = await decide(self.service, body, envelope, policy, "api")
        except StoreError as exc:
            return 503, {"message": f"Store unavailable, try again later: {exc}"}
        finally:
            if not isinstance(body, bytes):
                body.close()
        return 200, as_answer(decision, policy, envelope)

    async def _read(self, scope: Mapping[str, Any], receive: Any) -> Any:
        ctype = b""
        length = b""
        for key, value in scope["headers"]:
            if key == b"content-type":
                ctype = value
            elif key == b"content-length":
                length = value
        media = ctype.split(b";", 1)[0].strip().lower()
        if media and media not in _TYPES:
            raise MessageError(415, "Content-Type must be message/rfc822 (the raw message as the request body)")
        limit = self.max_size
        if length.isdigit() and (len(length) > 19 or int(length) > limit):
            raise MessageError(413, f"Message too large: the limit is {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        spool: Any = None
        try:
            # receive_body's loop, inline: an async generator per request costs more than the small body
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise UploadError(400, "Client disconnected during upload")
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise MessageError(413, f"Message too large: the limit is {limit} bytes")
                if spool is not None:
                    spool.write(chunk)
                elif size > _SPOOL:
                    spool = tempfile.TemporaryFile()  # noqa: SIM115 (closed by post)
                    spool.writelines(chunks)
                    spool.write(chunk)
                    chunks = []
                elif chunk:
                    chunks.append(chunk)
                if not message.get("more_body", False):
                    break
        except BaseException:
            if spool is not None:
                spool.close()
            raise
        if spool is not None:
            return spool
        if size == 0:
            raise MessageError(400, "Empty request body: send the raw message (Content-Type: message/rfc822)")
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
