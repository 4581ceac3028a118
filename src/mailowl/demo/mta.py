"""The demo's two mail servers around mailowl: the receiving one delivers into a Maildir, the sending one keeps
a deferred mail and tries again, as a sending MTA does (Postfix waits minutes; the demo a second)."""

from __future__ import annotations

import asyncio
import mailbox
import smtplib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session


class _Deliver:
    def __init__(self, maildir: mailbox.Maildir) -> None:
        self.maildir = maildir
        self.delivered: list[str] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        recipients = ", ".join(envelope.rcpt_tos)
        key = self.maildir.add(f"Delivered-To: {recipients}\r\n".encode() + content)
        self.delivered.append(key)
        return f"250 2.0.0 Delivered to Maildir as {key}"


class MaildirServer:
    """The next hop: an SMTP server that puts every mail it accepts into a Maildir."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.maildir = mailbox.Maildir(path, create=True)
        self.handler = _Deliver(self.maildir)
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: SMTP(self.handler, hostname="maildir.demo"), host, port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@dataclass
class Attempt:
    code: int
    reply: str

    @property
    def support_id(self) -> str | None:
        marker = "support-id: "
        if marker not in self.reply:
            return None
        return self.reply.split(marker, 1)[1].split(")", 1)[0]


@dataclass
class Outgoing:
    sender: str
    recipients: list[str]
    data: bytes
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def state(self) -> str:
        """queued, deferred (4xx: tried again), delivered (2xx) or bounced (5xx)."""
        if not self.attempts:
            return "queued"
        code = self.attempts[-1].code
        return "delivered" if code < 400 else "deferred" if code < 500 else "bounced"


def _send(address: tuple[str, int], mail: Outgoing) -> Attempt:
    """One delivery attempt over SMTP; the reply to the message itself, or to whatever refused it first."""
    try:
        with smtplib.SMTP(*address, timeout=60) as client:
            client.ehlo("sender.example")
            code, text = client.mail(mail.sender)
            if code < 400:
                for recipient in mail.recipients:
                    code, text = client.rcpt(recipient)
                    if code >= 400:
                        break
            if code < 400:
                code, text = client.data(mail.data)
    except smtplib.SMTPDataError as exc:
        code, text = exc.smtp_code, exc.smtp_error if isinstance(exc.smtp_error, bytes) else exc.smtp_error.encode()
    except (OSError, smtplib.SMTPException) as exc:
        return Attempt(451, f"451 4.4.1 cannot reach the next hop: {exc}")
    return Attempt(code, f"{code} {text.decode('utf-8', 'replace')}")


class Sender:
    """Sends each mail; a deferred one is tried again after ``retry_delay`` seconds, up to ``tries`` times."""

    def __init__(self, address: tuple[str, int], retry_delay: float = 1.0, tries: int = 20) -> None:
        self.address = address
        self.retry_delay = retry_delay
        self.tries = tries

    async def deliver(self, mail: Outgoing, tell: Callable[[Outgoing, Attempt], Awaitable[Any]]) -> Outgoing:
        while len(mail.attempts) < self.tries:
            # smtplib blocks, and mailowl answers on this very event loop
            attempt = await asyncio.to_thread(_send, self.address, mail)
            mail.attempts.append(attempt)
            await tell(mail, attempt)
            if mail.state != "deferred":
                break
            await asyncio.sleep(self.retry_delay)
        return mail
