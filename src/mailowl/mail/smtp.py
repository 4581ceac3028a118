"""SMTP content filter for MTAs without milter support (Postfix content_filter, Exim, OpenSMTPD).

mailowl receives the mail with aiosmtpd, applies the same decision as the milter, and re-injects accepted
mail (with the X-Mailowl-Result header) to the next hop. Rejects and tempfails are SMTP replies, and a
failed re-injection is a tempfail: the sending MTA keeps the mail until it is delivered or refused.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib

from aiosmtpd.smtp import SMTP, Session
from aiosmtpd.smtp import Envelope as SmtpEnvelope

from mailowl.analysis.service import AnalysisService
from mailowl.mail.policy import Envelope, MailPolicy, decide

log = logging.getLogger(__name__)


class _Handler:
    def __init__(self, service: AnalysisService, policy: MailPolicy, next_hop: tuple[str, int]) -> None:
        self.service = service
        self.policy = policy
        self.next_hop = next_hop

    async def handle_DATA(self, server: SMTP, session: Session, envelope: SmtpEnvelope) -> str:
        raw = envelope.original_content or b""
        peer = session.peer[0] if isinstance(session.peer, tuple) else None
        env = Envelope(mail_from=envelope.mail_from or "", rcpt_to=list(envelope.rcpt_tos), client_ip=peer)
        try:
            decision = await decide(self.service, raw, env, self.policy, "smtp")
        except Exception as exc:
            log.exception("content filter: deciding failed")
            return f"451 4.7.1 Temporary analysis error: {exc}"
        if decision.action in ("reject", "tempfail"):
            return decision.reply
        if decision.action == "discard":
            return f"250 2.7.0 Message discarded (support-id: {decision.support_id})"
        header = f"{self.policy.header}: {decision.header_value}\r\n".encode()
        if decision.action == "quarantine":
            header += f"X-Mailowl-Quarantine: {decision.support_id}\r\n".encode()
        try:
            await asyncio.to_thread(self._reinject, env, header + raw)
        except (OSError, smtplib.SMTPException) as exc:
            log.warning("content filter: re-injection to %s:%d failed: %s", *self.next_hop, exc)
            return f"451 4.3.0 Next hop unavailable, try again later (support-id: {decision.support_id})"
        return f"250 2.0.0 OK (support-id: {decision.support_id})"

    def _reinject(self, env: Envelope, data: bytes) -> None:
        with smtplib.SMTP(*self.next_hop, timeout=60) as client:
            client.sendmail(env.mail_from, env.rcpt_to, data)


class ContentFilter:
    def __init__(self, service: AnalysisService, policy: MailPolicy, listen: tuple[str, int],
                 next_hop: tuple[str, int], max_size: int) -> None:
        self.handler = _Handler(service, policy, next_hop)
        self.listen = listen
        self.max_size = max_size
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SMTP(self.handler, hostname="mailowl", data_size_limit=self.max_size, ident="mailowl"),
            *self.listen)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
