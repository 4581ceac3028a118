"""The request parsers in-process: job ids, Content-Disposition, the multipart reader (fuzzed with
hypothesis: whatever the client sends, only an UploadError with a 4xx comes out), and the read deadline of
the HTTP protocol."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailowl.api.app import Api
from mailowl.api.ids import BadId, parse_job_id
from mailowl.api.upload import (
    MAX_PARTS,
    UploadError,
    parse_disposition,
    read_form,
    receive_body,
)

# job ids -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw", ["1", "42", "9223372036854775807"])
def test_job_ids_accepted(raw: str) -> None:
    assert parse_job_id(raw) == int(raw)


@pytest.mark.parametrize(("raw", "why"), [
    ("", "missing"), ("0", "got 0"), ("000", "got 0"), ("007", "leading zero"),
    ("1_0", "digits 0-9 only"), ("+1", "digits 0-9 only"), ("-1", "digits 0-9 only"), (" 1", "digits 0-9 only"),
    ("1 ", "digits 0-9 only"), ("\u0663", "digits 0-9 only"), ("\uff11", "digits 0-9 only"), ("1e3", "digits 0-9 only"),
    ("0x10", "digits 0-9 only"), ("9223372036854775808", "too large"), ("1" * 20, "too large"),
    ("1" * 5000, "5000 digits is too large"),
])
def test_job_ids_refused(raw: str, why: str) -> None:
    with pytest.raises(BadId) as caught:
        parse_job_id(raw)
    assert why in caught.value.message and len(caught.value.message) < 200


# fuzzing the whole upload parser in-process: only UploadError may come out ------------------------------------

async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


_header_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=80)
_disposition = st.one_of(
    _header_text,
    st.builds(lambda n, f: f'form-data; name="{n}"; filename="{f}"', st.sampled_from(["file", "options", "x", ""]),
              _header_text),
    st.builds(lambda c, e, t: f'form-data; name="file"; filename="=?{c}?{e}?{t}?="',
              st.sampled_from(["utf-8", "x-bogus", "iso-8859-1", "utf-16", "", "zlib", "base64"]),
              st.sampled_from(["Q", "B", "q", "x"]), _header_text),
    st.builds(lambda c, t: f"form-data; name=file; filename*={c}''{t}",
              st.sampled_from(["utf-8", "x-bogus", ""]), _header_text),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(disposition=_disposition, ctype=_header_text, boundary=st.text(min_size=0, max_size=300),
       content=st.binary(max_size=200), tail=st.binary(max_size=40), chunk=st.integers(1, 64),
       options=st.one_of(st.none(), st.binary(max_size=40)), v2=st.booleans())
def test_fuzzed_uploads_raise_only_upload_errors(disposition: str, ctype: str, boundary: str, content: bytes,
                                                 tail: bytes, chunk: int, options: bytes | None, v2: bool) -> None:
    api = Api(None, 2048)  # type: ignore[arg-type]  # parsing only: the service is never reached
    b = boundary.encode("utf-8", "replace")
    body = b"--" + b + b"\r\nContent-Disposition: " + disposition.encode() + b"\r\nContent-Type: " + ctype.encode() \
        + b"\r\n\r\n" + content + b"\r\n"
    if options is not None:
        body += b"--" + b + b'\r\nContent-Disposition: form-data; name="options"\r\n\r\n' + options + b"\r\n"
    body += b"--" + b + b"--\r\n" + tail
    headers = {"content-type": f"multipart/form-data; boundary=\"{boundary}\"", "content-length": str(len(body))}
    try:
        asyncio.run(api._sample(headers, _chunks(body, chunk), v2))
    except UploadError as exc:
        assert 400 <= exc.status < 500 and exc.message


_charset_words = st.builds(lambda c, e, t: f'form-data; name="file"; filename="=?{c}?{e}?{t}?="',
                           st.sampled_from(["utf-7", "utf-16", "utf-8", "x-bogus", "latin-1"]),
                           st.sampled_from(["Q", "B"]), st.text(max_size=40))
_charset_2231 = st.builds(lambda c, t: f"form-data; name=file; filename*={c}''{t}",
                          st.sampled_from(["utf-7", "utf-16", "utf-8", "x-bogus"]),
                          st.text(st.sampled_from("%+-/ABDZ0123456789.a\x00"), max_size=40))


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=300), _charset_words, _charset_2231))
def test_fuzzed_dispositions_never_raise(value: str) -> None:
    for text in parse_disposition(value):
        # what comes out can be hashed into the identity and stored in any of the databases
        if text is not None:
            assert "\x00" not in text
            text.encode("utf-8")  # raises on a lone surrogate


def test_boundary_limit_is_checked_before_reading() -> None:
    async def never() -> AsyncIterator[bytes]:
        raise AssertionError("body read")
        yield b""  # pragma: no cover

    with pytest.raises(UploadError) as caught:
        asyncio.run(read_form(never(), b"x" * 257, 1024))
    assert caught.value.status == 400 and "257 characters" in caught.value.message




def test_parts_and_part_headers_are_bounded() -> None:
    many = b"".join(b'--zz\r\nContent-Disposition: form-data; name="f"\r\n\r\nx\r\n' for _ in range(MAX_PARTS + 1))
    with pytest.raises(UploadError) as caught:
        asyncio.run(read_form(_chunks(many + b"--zz--\r\n", 1000), b"zz", 1024))
    assert caught.value.status == 400 and "only one field" in caught.value.message
    fat = b"--zz\r\nX-Fat: " + b"a" * 10_000 + b"\r\n\r\nx\r\n--zz--\r\n"
    with pytest.raises(UploadError) as caught:
        asyncio.run(read_form(_chunks(fat, 4096), b"zz", 1024))
    assert caught.value.status == 400
    message = caught.value.message
    assert message.startswith("Invalid MIME structure in request: Maximum header size exceeded near byte ")
    assert 4096 <= int(message.split("near byte ")[1].split()[0]) <= len(fat)
    lots = b"--zz\r\n" + b"".join(b"X-H%d: a\r\n" % i for i in range(20)) + b"\r\nx\r\n--zz--\r\n"
    with pytest.raises(UploadError) as caught:
        asyncio.run(read_form(_chunks(lots, 7), b"zz", 1024))
    assert "Maximum header count exceeded" in caught.value.message


def test_disconnect_is_an_upload_error() -> None:
    messages: Iterator[dict[str, object]] = iter([
        {"type": "http.request", "body": b"--zz\r\n", "more_body": True}, {"type": "http.disconnect"}])

    async def receive() -> dict[str, object]:
        return next(messages)

    with pytest.raises(UploadError) as caught:
        asyncio.run(read_form(receive_body(receive), b"zz", 1024))
    assert caught.value.status == 400 and "disconnected" in caught.value.message


# the read deadline in the protocol, in-process ------------------------------------------------------------------

class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 1234) if name in ("peername", "sockname") else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _run_protocol(app: Callable[..., Awaitable[None]], data: list[bytes], read_timeout: float,
                        until: Callable[[_Transport], bool]) -> _Transport:
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from mailowl.api.transport import http_protocol

    config = Config(app=app, lifespan="off", log_level="warning")
    config.load()
    protocol = http_protocol(read_timeout)(config=config, server_state=ServerState(), app_state={})
    transport = _Transport()
    protocol.connection_made(transport)
    for piece in data:
        protocol.data_received(piece)
    for _ in range(3000):  # generous: only a broken protocol waits this out
        if until(transport):
            break
        await asyncio.sleep(0.01)
    protocol.connection_lost(None)
    return transport


def test_no_deadline_while_the_application_works() -> None:
    # a long-polling report takes as long as it takes: the deadline is for reading requests only
    async def slow_app(scope: dict[str, object], receive: object, send: Callable[..., Awaitable[None]]) -> None:
        await asyncio.sleep(0.5)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"{}"})

    transport = asyncio.run(_run_protocol(slow_app, [b"GET /v2/jobs/1?wait=300 HTTP/1.1\r\nHost: x\r\n\r\n"], 0.05,
                                          lambda t: t.written.endswith(b"{}") or t.closed))
    assert transport.written.startswith(b"HTTP/1.1 200 ") and transport.written.endswith(b"{}")


def test_deadline_answers_a_stalled_body_with_408_and_the_app_sees_a_disconnect() -> None:
    seen: list[object] = []

    async def reading_app(scope: dict[str, object], receive: Callable[[], Awaitable[dict[str, object]]],
                          send: Callable[..., Awaitable[None]]) -> None:
        while True:
            message = await receive()
            seen.append(message["type"])
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                return

    stalled = b"POST /v1/scan HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhalf"
    transport = asyncio.run(_run_protocol(reading_app, [stalled], 0.05, lambda t: t.closed))
    assert transport.closed and transport.written.startswith(b"HTTP/1.1 408 ")
    assert b'"Request body not received completely within 0.05 s (server.read_timeout)"' in transport.written
    assert seen[-1] == "http.disconnect"
