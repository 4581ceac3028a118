"""uvicorn's httptools protocol with one write per response, a read deadline and JSON protocol errors.

One write: uvicorn writes a response's head and body separately; for the small JSON answers that
dominate mailowl's traffic that doubles the send system calls. The protocol holds the head back until
the body follows (or the event loop turns once), then writes both together.

Read deadline: uvicorn's keep-alive timeout only covers the quiet time between two requests. A
connection that sends nothing, stops in the middle of its headers, or sends a body shorter than its
Content-Length would otherwise stay open for ever, holding a file descriptor and an upload buffer.
Here the headers of a request must arrive within ``read_timeout`` of its first byte (or of the
connection's opening), and its body may not pause for longer than ``read_timeout`` between two reads.
While the application works on a complete request (a long-polling report, say) no deadline runs.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

DEFAULT_READ_TIMEOUT = 30.0
_GRACE = 0.01


class _CoalescingTransport:
    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        if self._head is None and data.startswith(b"HTTP/") and data.endswith(b"\r\n\r\n"):  # no slices
            self._head = data
            asyncio.get_running_loop().call_soon(self._flush)
            return
        if self._head is not None:
            data, self._head = self._head + data, None
        self._transport.write(data)

    def _flush(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def json_error(status: int, reason: str, message: str) -> bytes:
    """A complete HTTP/1.1 response carrying the API's usual ``{"message": ...}``, closing the connection."""
    body = orjson.dumps({"message": message})
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, reason.encode("ascii"), len(body), body))


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    read_timeout: float = DEFAULT_READ_TIMEOUT

    # The hooks below run for every request: they call the base class directly (cheaper than super())
    # and arm no timer unless a request stays incomplete after a read.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        HttpToolsProtocol.connection_made(self, _CoalescingTransport(transport))  # type: ignore[arg-type]
        now = self.loop.time()
        # a fresh connection is "reading headers" until its first request is complete
        self._reading = True
        self._partial = False
        self._started = now
        self._last_read = now
        self._deadline: asyncio.TimerHandle | None = self.loop.call_later(self.read_timeout, self._check_deadline)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        HttpToolsProtocol.connection_lost(self, exc)

    def data_received(self, data: bytes) -> None:
        self._last_read = self.loop.time()
        HttpToolsProtocol.data_received(self, data)
        if self._reading and self._deadline is None and self.parser is not None:
            self._deadline = self.loop.call_later(self.read_timeout, self._check_deadline)

    def on_message_begin(self) -> None:
        HttpToolsProtocol.on_message_begin(self)
        if not self._reading:
            self._reading = True
            self._started = self._last_read  # the read that brought this first byte
        self._partial = True

    def on_message_complete(self) -> None:
        self._reading = False
        self._partial = False
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        HttpToolsProtocol.on_message_complete(self)

    @property
    def _headers_done(self) -> bool:
        # uvicorn makes the request's cycle, around the scope on_message_begin made, once the headers are in
        return self.cycle is not None and self.cycle.scope is self.scope

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _check_deadline(self) -> None:
        self._deadline = None
        if not self._reading or self.transport.is_closing():
            return
        now = self.loop.time()
        if self.flow.read_paused:
            # the server stopped reading (a full upload buffer, a pipelined request): not the client's delay
            self._last_read = now
            self._started = now
            self._deadline = self.loop.call_later(self.read_timeout, self._check_deadline)
            return
        due = (self._last_read if self._headers_done else self._started) + self.read_timeout
        if now < due:
            self._deadline = self.loop.call_later(due - now, self._check_deadline)
            return
        # timers run before the loop polls sockets: after a stall of the loop itself, data the client sent
        # in time may be waiting unread. A short grace (a timer, so a poll comes first) lets it be read.
        self.loop.call_later(_GRACE, self._confirm_time_out, self._last_read)

    def _confirm_time_out(self, last_read: float) -> None:
        if not self._reading or self.transport.is_closing():
            return
        # a read during the grace may have armed a new timer: it must not extend the headers' deadline,
        # which counts from their first byte (else a client trickling in step with the timer stays for ever)
        self._cancel_deadline()
        if self._headers_done and self._last_read != last_read:
            self._check_deadline()  # the body moved on: not a stall
            return
        self._time_out()

    def _time_out(self) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # the application sees a disconnect and its answer goes nowhere; the 408 below is the answer
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started or not self._headers_done:
                # an answer is already on the wire, or an earlier request's still will be: nothing may follow
                self.transport.close()
                return
        if self._partial:
            what = "body" if self._headers_done else "headers"
            self.transport.write(json_error(
                408, "Request Timeout",
                f"Request {what} not received completely within {self.read_timeout:g} s (server.read_timeout)"))
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers requests httptools cannot parse in plain text; the API's errors are JSON
        self.transport.write(json_error(400, "Bad Request", f"Malformed HTTP request: {msg}"))
        self.transport.close()


def http_protocol(read_timeout: float = DEFAULT_READ_TIMEOUT) -> type[CoalescingHttpToolsProtocol]:
    """The protocol class for ``uvicorn.run(http=...)`` with the given read deadline in seconds."""
    if not read_timeout > 0:
        raise ValueError(f"read_timeout must be a positive number of seconds, got {read_timeout!r}")
    return type("HttpProtocol", (CoalescingHttpToolsProtocol,), {"read_timeout": float(read_timeout)})
