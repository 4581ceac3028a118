"""Milter listener for Postfix (protocol version 6), on kilter.protocol's message codecs.

Lean on purpose: it asks Postfix not to send what it does not need (HELO, DATA, unknown commands) and
not to wait for replies to events it only records (connect, sender, recipients, headers, body chunks),
collects the message (spooled to disk past 1 MiB), and decides once, at end-of-message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import tempfile
from typing import Any

from kilter.protocol import messages as m
from kilter.protocol.buffer import SimpleBuffer

from mailowl.core.service import AnalysisService
from mailowl.mail.policy import Decision, Envelope, MailPolicy, decide
from mailowl.store import StoreError

log = logging.getLogger(__name__)

_HEAD = struct.Struct("!L")
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)
_MAX_FRAME = 8 * 2**20
_SPOOL = 2**20

_WANT_OFF = (m.ProtocolFlags.NO_HELO | m.ProtocolFlags.NO_UNKNOWN | m.ProtocolFlags.NO_DATA)
_NO_REPLY = (m.ProtocolFlags.NR_CONNECT | m.ProtocolFlags.NR_SENDER | m.ProtocolFlags.NR_RECIPIENT
             | m.ProtocolFlags.NR_HEADER | m.ProtocolFlags.NR_END_OF_HEADERS | m.ProtocolFlags.NR_BODY)
_ACTIONS = m.ActionFlags.ADD_HEADERS | m.ActionFlags.QUARANTINE
# events that need a reply unless negotiated away
_EVENTS = {m.Connect.ident: m.ProtocolFlags.NR_CONNECT, m.EnvelopeFrom.ident: m.ProtocolFlags.NR_SENDER,
           m.EnvelopeRecipient.ident: m.ProtocolFlags.NR_RECIPIENT, m.Header.ident: m.ProtocolFlags.NR_HEADER,
           m.EndOfHeaders.ident: m.ProtocolFlags.NR_END_OF_HEADERS, m.Body.ident: m.ProtocolFlags.NR_BODY,
           m.Helo.ident: m.ProtocolFlags.NR_HELO, m.Data.ident: m.ProtocolFlags.NR_DATA,
           m.Unknown.ident: m.ProtocolFlags.NR_UNKNOWN}


def _frame(message: m.Message, size: int = 4096) -> bytes:
    buf = SimpleBuffer(size)
    message.pack(buf)
    return bytes(buf[:])


_CONTINUE = _frame(m.Continue())
_ACCEPT = _frame(m.Accept())
_DISCARD = _frame(m.Discard())


class _Session(asyncio.Protocol):
    """One MTA connection. Frames are handled as they arrive, without a task per connection or per frame;
    only end-of-message, which waits for verdicts, runs as a task, and frames arriving meanwhile wait."""

    def __init__(self, server: MilterServer) -> None:
        self.server = server
        self.transport: Any = None
        self.sock: Any = None
        self.flags = m.ProtocolFlags(0)
        self.client_ip: str | None = None
        self.client_name: str | None = None
        self.buf = bytearray()
        self.busy = False
        self.closed = False
        self._reset()

    def _reset(self) -> None:
        self.envelope = Envelope(client_ip=self.client_ip, client_name=self.client_name)
        self.spool: Any = None

    def _spool(self) -> Any:
        if self.spool is None:
            self.spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL)  # noqa: SIM115 (closed in _finish)
        return self.spool

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # uvloop's transports are not asyncio.Transport subclasses
        sock = transport.get_extra_info("socket")
        self.sock = sock if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6) else None
        if self.sock is not None:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.spool is not None and not self.busy:
            self.spool.close()

    def data_received(self, data: bytes) -> None:
        if self.sock is not None and _QUICKACK is not None:
            # Postfix sends many small frames and, with no-reply events, we send nothing back until
            # end-of-message: a delayed ACK would hold Postfix's next frame back (Nagle) for up to 40 ms
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        self.buf += data
        if not self.busy:
            self._process()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _process(self) -> None:
        """Every complete frame in the buffer; Postfix streams many without waiting for replies."""
        buf, start = self.buf, 0
        try:
            while len(buf) - start >= 4:
                (size,) = _HEAD.unpack_from(buf, start)
                if not 0 < size <= _MAX_FRAME:
                    log.warning("milter: frame of %d bytes from the MTA, closing", size)
                    self._close()
                    return
                if len(buf) - start - 4 < size:
                    break
                frame = bytes(buf[start + 4:start + 4 + size])
                start += 4 + size
                if not self._handle(frame[0], memoryview(frame)[1:]):
                    self._close()
                    return
                if self.busy:
                    break
        finally:
            del buf[:start]

    def _handle(self, ident: int, data: memoryview) -> bool:
        if ident == m.Body.ident:
            self._spool().write(data)
        elif ident == m.Header.ident:
            try:
                header = m.Header.from_buffer(data)
                name, value = header.name.encode("ascii"), bytes(header.value)
            except (UnicodeDecodeError, ValueError, AssertionError):  # a non-ASCII header name: keep its bytes
                name, _, value = bytes(data).rstrip(b"\x00").partition(b"\x00")
            self._spool().write(name + b": " + value + b"\r\n")
        elif ident == m.EndOfHeaders.ident:
            self._spool().write(b"\r\n")
        elif ident == m.EnvelopeRecipient.ident:
            self.envelope.rcpt_to.append(_address(m.EnvelopeRecipient.from_buffer(data).recipient))
        elif ident == m.EnvelopeFrom.ident:
            self.envelope.mail_from = _address(m.EnvelopeFrom.from_buffer(data).sender)
        elif ident == m.Connect.ident:
            connect = m.Connect.from_buffer(data)
            self.client_name = connect.hostname
            self.client_ip = str(connect.address) if connect.address is not None else None
            self.envelope.client_ip, self.envelope.client_name = self.client_ip, self.client_name
        elif ident == m.EndOfMessage.ident:
            if len(data):
                self._spool().write(data)
            self.busy = True
            task = asyncio.get_running_loop().create_task(self._finish())
            self.server.tasks.add(task)
            task.add_done_callback(self.server.tasks.discard)
            return True
        elif ident == m.Negotiate.ident:
            offer = m.Negotiate.from_buffer(data)
            self.flags = (_WANT_OFF | _NO_REPLY) & offer.protocol_flags
            actions = _ACTIONS & offer.action_flags
            macros: dict[m.Stage, list[str]] = {}
            if m.ActionFlags.SETSYMLIST in offer.action_flags:
                # ask for no macros at all: mailowl reads none, and each one costs a frame per event
                actions |= m.ActionFlags.SETSYMLIST
                macros = {stage: [] for stage in m.Stage}
            self._write(_frame(m.Negotiate(6, actions, self.flags, macros)))
            return True
        elif ident == m.Abort.ident:
            if self.spool is not None:
                self.spool.close()
            self._reset()
            return True
        elif ident == m.Close.ident:
            return False
        elif ident == m.Macro.ident:
            self.server.macro_frames += 1
            return True
        flag = _EVENTS.get(ident)
        if flag is not None and flag not in self.flags:
            self._write(_CONTINUE)
        return True

    async def _finish(self) -> None:
        spool = self._spool()
        self.spool = None
        try:
            decision = await decide(self.server.service, spool, self.envelope, self.server.policy, "milter")
            reply = self._answer(decision)
        except StoreError as exc:
            # the database is down or refused the commit: nothing was acknowledged, the MTA keeps the mail
            # and retries; its peer is told the configured tempfail text, not the database's error
            log.warning("milter: store unavailable, tempfailing: %s", exc)
            reply = _frame(m.ReplyCode(f"451 4.7.1 {self.server.policy.tempfail_text}\x00".encode("utf-8",
                                                                                               "replace")))
        except Exception as exc:  # never accept what we could not judge
            log.exception("milter: deciding failed")
            reply = _frame(m.ReplyCode(f"451 4.7.1 Temporary analysis error: {exc}\x00".encode()))
        finally:
            spool.close()
        self._write(reply)
        self._reset()
        self.busy = False
        if self.buf and not self.closed:
            self._process()

    def _answer(self, decision: Decision) -> bytes:
        if decision.action in ("reject", "tempfail"):
            return _frame(m.ReplyCode(f"{decision.reply}\x00".encode("utf-8", "replace")))
        if decision.action == "discard":
            return _DISCARD
        out = _frame(m.AddHeader(self.server.policy.header, decision.header_value.encode()))
        if decision.action == "quarantine":
            out += _frame(m.Quarantine(f"mailowl: {decision.verdict} (support-id: {decision.support_id})"))
        return out + _ACCEPT


def _address(raw: Any) -> str:
    text = raw if isinstance(raw, str) else bytes(raw).decode("utf-8", "replace")
    return text.strip().removeprefix("<").removesuffix(">")


class MilterServer:
    def __init__(self, service: AnalysisService, policy: MailPolicy) -> None:
        self.service = service
        self.policy = policy
        self._server: asyncio.base_events.Server | None = None
        #: macro frames received; should stay 0 once Postfix honours the empty macro lists
        self.macro_frames = 0
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.get_running_loop().create_server(lambda: _Session(self), host, port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
