"""SMTP content filter for MTAs without milter support (Postfix content_filter, Exim, OpenSMTPD).

mailowl is a proxy in front of the next hop: MAIL and every RCPT are relayed as they arrive and answered with
the next hop's reply, so a recipient the next hop refuses is refused to the sending MTA, which bounces (5xx) or
keeps (4xx) just that recipient. After DATA mailowl applies the same decision as the milter; mail it lets
through is sent on (with the X-Mailowl-Result header) and the next hop's reply becomes mailowl's reply. A next
hop that is down or silent is a tempfail: the sending MTA keeps the mail until it is delivered or refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import smtplib
import socket
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from aiosmtpd.smtp import SMTP, Session
from aiosmtpd.smtp import Envelope as SmtpEnvelope

from mailowl.core.service import AnalysisService
from mailowl.mail.policy import Envelope, MailPolicy, decide

log = logging.getLogger(__name__)

T = TypeVar("T")

#: seconds for connecting and the next hop's greeting and EHLO reply (Postfix's smtp_connect_timeout is 30 s)
CONNECT_TIMEOUT = 30.0
#: seconds the next hop may take for any later reply; its reply to the message may need its own filters' time.
#: Both stay below the sending Postfix's timeouts (smtp_rcpt_timeout 300 s), so it hears a 451 rather than
#: giving up on mailowl.
NEXT_HOP_TIMEOUT = 120.0
#: MAIL parameters worth passing on, each only if the next hop announces the matching extension
_PASSED_ON = {"BODY": "8bitmime", "SIZE": "size"}
_UNAVAILABLE = "451 4.4.1 Next hop unavailable, try again later"


def reply_line(code: int, text: bytes | str) -> str:
    """The next hop's reply as one line for the sending MTA: same code, its text flattened to ASCII."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    flat = " ".join(text.split()).encode("ascii", "replace").decode()[:400]
    if not 200 <= code <= 599:
        return f"451 4.5.0 Next hop gave an unusable reply: {flat}".rstrip()
    if code == 421:  # the next hop is closing, but this connection is not: a plain tempfail keeps it usable
        return f"451 {flat}".rstrip()
    return f"{code} {flat}".rstrip()


class NextHop:
    """One front connection's connection to the next hop.

    smtplib blocks, so its calls run on one thread of their own, strictly in the order they were made: a
    late close always waits for the command still in flight instead of pulling the socket away under it.
    """

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self._client: smtplib.SMTP | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mailowl-next-hop")

    async def _run(self, call: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._guarded, call, *args)

    def _guarded(self, call: Callable[..., T], *args: Any) -> T:
        try:
            return call(*args)
        except smtplib.SMTPDataError:
            raise  # a refused DATA command leaves the connection usable
        except (OSError, smtplib.SMTPException):
            # after a timeout or a broken reply the next line read could answer an earlier command
            self._drop()
            raise

    async def mail(self, sender: str, options: list[str]) -> tuple[int, bytes]:
        return await self._run(self._mail, sender, options)

    async def rcpt(self, recipient: str) -> tuple[int, bytes]:
        return await self._run(self._rcpt, recipient)

    async def data(self, content: bytes) -> tuple[int, bytes]:
        """The next hop's reply to the message; raises SMTPDataError if it refuses the DATA command itself."""
        return await self._run(self._data, content)

    def close(self) -> None:
        """Ends the connection once the command in flight (if any) is answered; does not wait for it."""
        self._pool.submit(self._quit)
        self._pool.shutdown(wait=False)

    def abort(self) -> None:
        """Makes a command waiting on the next hop fail at once (at shutdown: the sending MTA retries)."""
        client = self._client
        sock = client.sock if client is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed
                sock.shutdown(socket.SHUT_RDWR)

    def _connect(self) -> smtplib.SMTP:
        if self._client is not None:
            try:
                # ends a transaction mailowl refused or the sender abandoned, and finds out whether the next
                # hop closed the idle connection meanwhile: then this mail gets a new one, not a tempfail
                if self._client.rset()[0] != 250:
                    self._drop()
            except (OSError, smtplib.SMTPException):
                self._drop()
        if self._client is None:
            client = smtplib.SMTP(*self.address, timeout=CONNECT_TIMEOUT)
            try:
                client.ehlo_or_helo_if_needed()
            except (OSError, smtplib.SMTPException):
                client.close()
                raise
            if client.sock is not None:
                client.sock.settimeout(NEXT_HOP_TIMEOUT)
            self._client = client
        return self._client

    def _mail(self, sender: str, options: list[str]) -> tuple[int, bytes]:
        client = self._connect()
        passed = [o for o in options if client.has_extn(_PASSED_ON.get(o.partition("=")[0], "-"))]
        return self._checked(client.mail(sender, passed))

    def _rcpt(self, recipient: str) -> tuple[int, bytes]:
        if self._client is None:
            raise smtplib.SMTPServerDisconnected("no connection to the next hop")
        return self._checked(self._client.rcpt(recipient))

    def _data(self, content: bytes) -> tuple[int, bytes]:
        if self._client is None:
            raise smtplib.SMTPServerDisconnected("no connection to the next hop")
        return self._checked(self._client.data(content))

    def _checked(self, result: tuple[int, bytes]) -> tuple[int, bytes]:
        if result[0] == 421:  # the next hop hangs up after a 421; the next command needs a new connection
            self._drop()
        return result

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _quit(self) -> None:
        if self._client is None:
            return
        try:
            if self._client.sock is not None:
                self._client.sock.settimeout(5)  # shutting down must not wait on a silent next hop
            self._client.quit()
        except (OSError, smtplib.SMTPException):
            pass
        finally:
            self._drop()


class FrontConnection(SMTP):
    """One connection from the sending MTA, with its own connection to the next hop."""

    def __init__(self, handler: _Handler, next_hop: tuple[str, int], **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.next_hop = NextHop(next_hop)

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        self.next_hop.close()


def _next_hop(server: SMTP) -> NextHop:
    if not isinstance(server, FrontConnection):
        raise TypeError("the content filter's handler needs a FrontConnection")
    return server.next_hop


class _Handler:
    def __init__(self, service: AnalysisService, policy: MailPolicy, next_hop: tuple[str, int]) -> None:
        self.service = service
        self.policy = policy
        self.next_hop = next_hop

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: SmtpEnvelope, address: str,
                          mail_options: list[str]) -> str:
        try:
            code, text = await _next_hop(server).mail(address, mail_options)
        except (OSError, smtplib.SMTPException) as exc:
            log.warning("content filter: next hop %s:%d unavailable: %s", *self.next_hop, exc)
            return _UNAVAILABLE
        if 200 <= code < 300:
            envelope.mail_from = address
            envelope.mail_options.extend(mail_options)
        return reply_line(code, text)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: SmtpEnvelope, address: str,
                          rcpt_options: list[str]) -> str:
        try:
            code, text = await _next_hop(server).rcpt(address)
        except (OSError, smtplib.SMTPException) as exc:
            log.warning("content filter: next hop %s:%d failed at RCPT: %s", *self.next_hop, exc)
            return _UNAVAILABLE
        if 200 <= code < 300:
            envelope.rcpt_tos.append(address)
        return reply_line(code, text)

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
        text: bytes | str
        try:
            code, text = await _next_hop(server).data(header + raw)
        except smtplib.SMTPDataError as exc:  # the DATA command itself was refused
            code, text = exc.smtp_code, exc.smtp_error
        except (OSError, smtplib.SMTPException) as exc:
            log.warning("content filter: sending to next hop %s:%d failed: %s", *self.next_hop, exc)
            return f"{_UNAVAILABLE} (support-id: {decision.support_id})"
        if not 200 <= code < 300:
            log.info("content filter: next hop refused %s: %s", decision.support_id, reply_line(code, text))
        return f"{reply_line(code, text)} (support-id: {decision.support_id})"


class ContentFilter:
    def __init__(self, service: AnalysisService, policy: MailPolicy, listen: tuple[str, int],
                 next_hop: tuple[str, int], max_size: int) -> None:
        self.handler = _Handler(service, policy, next_hop)
        self.next_hop = next_hop
        self.listen = listen
        self.max_size = max_size
        self._server: asyncio.base_events.Server | None = None
        self._connections: weakref.WeakSet[FrontConnection] = weakref.WeakSet()

    def _connection(self) -> FrontConnection:
        connection = FrontConnection(self.handler, self.next_hop, hostname="mailowl", data_size_limit=self.max_size,
                                     ident="mailowl")
        self._connections.add(connection)
        return connection

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._connection, *self.listen)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        # a thread waiting on a silent next hop would hold up the process's exit for minutes; every mail not
        # yet answered stays with the sending MTA, which retries it
        for connection in list(self._connections):
            connection.next_hop.abort()
            if connection.transport is not None:
                connection.transport.close()
        if self._server is not None:
            await self._server.wait_closed()
