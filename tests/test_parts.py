"""Attachment extraction: the shared samples, the ways real clients write messages, broken input, fuzzing."""

from __future__ import annotations

import base64
import binascii
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailowl.mail.parts import MailLimits, extract
from tests.test_mime_walk import reference

SAMPLES = Path(__file__).parent.parent.parent / "shared" / "mail-samples"
if not SAMPLES.exists():
    SAMPLES = Path(__file__).parent / "data" / "mail-samples"


def names(raw: bytes, **kwargs: object) -> list[str | None]:
    return [p.filename for p in extract(raw, **kwargs).parts]  # type: ignore[arg-type]


def message(body: str, ctype: str = 'multipart/mixed; boundary="b"', extra: str = "") -> bytes:
    return (f"From: a@example.org\r\nTo: b@example.net\r\nSubject: t\r\nMIME-Version: 1.0\r\n{extra}"
            f"Content-Type: {ctype}\r\n\r\n{body}").encode()


@pytest.mark.parametrize(("sample", "expected"), [
    ("01-name-in-content-type.eml", [("cat.png.bat", None)]),
    ("02-filename-in-disposition.eml", [("report.txt", "attachment")]),
    ("03-rfc2231-filename.eml", [("Rechnung März.docm", "attachment")]),
    ("04-forwarded-attachment.eml", [("invoice.exe", "attachment")]),
    ("05-inline-image.eml", [("logo.png", "inline")]),
])
def test_shared_samples(sample: str, expected: list[tuple[str, str | None]]) -> None:
    raw = (SAMPLES / sample).read_bytes()
    parts = extract(raw).parts
    assert [(p.filename, p.disposition) for p in parts] == expected
    assert [(p.filename, p.content_type, p.disposition, p.content) for p in parts] == reference(raw, False)


def test_rfc2231_continuations_and_charsets() -> None:
    body = ("--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment;\r\n"
            " filename*0*=iso-8859-1''Gr%FC%DFe%20aus;\r\n filename*1*=%20K%F6ln.pdf\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b--\r\n")
    assert names(message(body)) == ["Grüße aus Köln.pdf"]


def test_encoded_words_quoting_and_paths() -> None:
    body = ('--b\r\nContent-Type: application/octet-stream; name="=?UTF-8?B?w7xiZXIuZXhl?="\r\n\r\nMZ\r\n'
            '--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; '
            'filename="C:\\\\Users\\\\x\\\\evil.exe"\r\n\r\nMZ\r\n'
            "--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; "
            "filename=plain.bin\r\n\r\nxx\r\n"
            '--b\r\nContent-Type: application/octet-stream; name="../../etc/passwd"\r\n\r\nroot\r\n--b--\r\n')
    assert names(message(body)) == ["über.exe", "evil.exe", "plain.bin", "passwd"]


def test_bodies_are_skipped_unless_asked() -> None:
    body = ("--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b\r\nContent-Type: text/html\r\n\r\n<p>hi</p>\r\n"
            "--b\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=notes.txt\r\n\r\nn\r\n--b--\r\n")
    assert names(message(body)) == ["notes.txt"]
    assert names(message(body), include_bodies=True) == [None, None, "notes.txt"]


def test_nested_forwards_are_walked_within_depth() -> None:
    inner = message("--b\r\nContent-Type: application/x-sh; name=run.sh\r\n\r\necho hi\r\n--b--\r\n")
    raw = inner
    for level in range(3):
        raw = message(f"--b{level}\r\nContent-Type: message/rfc822\r\n\r\n".replace("b" + str(level), f"x{level}")
                      + raw.decode() + f"\r\n--x{level}--\r\n", f'multipart/mixed; boundary="x{level}"')
    assert names(raw) == ["run.sh"]
    shallow = extract(raw, MailLimits(max_depth=3))
    assert shallow.incomplete and "nested deeper" in shallow.findings[-1]


def test_uuencoded_blocks_in_text_bodies() -> None:
    payload = b"@echo off\r\nformat c:\r\n"
    lines = [binascii.b2a_uu(payload[i:i + 45]) for i in range(0, len(payload), 45)]
    uu = b"begin 644 tool.bat\n" + b"".join(lines) + b"`\nend\n"
    raw = message("Here it is:\r\n" + uu.decode() + "bye\r\n", "text/plain")
    parts = extract(raw).parts
    assert [(p.filename, p.content) for p in parts] == [("tool.bat", payload)]
    assert "uuencoded" in parts[0].findings[0]


def test_tnef_winmail_dat_members() -> None:
    tnef = (Path(__file__).parent / "data" / "tnef" / "one-file.tnef").read_bytes()
    body = ("--b\r\nContent-Type: application/ms-tnef; name=winmail.dat\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + base64.encodebytes(tnef).decode() + "--b--\r\n")
    parts = extract(message(body)).parts
    assert parts and all("TNEF" in p.findings[0] for p in parts)
    assert parts[0].filename and parts[0].content


def test_broken_base64_is_a_finding_not_a_crash() -> None:
    body = ("--b\r\nContent-Type: application/pdf; name=a.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            "JVBERi0x!!!LjQK===\r\nnot base64 at all ~~~\r\n--b--\r\n")
    result = extract(message(body))
    assert [p.filename for p in result.parts] == ["a.pdf"]
    assert result.parts[0].findings


def test_missing_end_boundary_and_garbage() -> None:
    body = "--b\r\nContent-Type: application/pdf; name=a.pdf\r\n\r\n%PDF-1.4\r\n"
    result = extract(message(body))
    assert [p.filename for p in result.parts] == ["a.pdf"]
    assert any("Boundary" in f for f in result.findings)
    assert extract(b"").parts == [] and extract(b"\x00\xff" * 1000).parts == []


def test_ten_thousand_tiny_parts_hit_the_limit() -> None:
    body = "".join(f"--b\r\nContent-Type: application/octet-stream; name=p{i}.bin\r\n\r\nx{i}\r\n"
                   for i in range(10_000)) + "--b--\r\n"
    result = extract(message(body))
    assert len(result.parts) == 1000 and result.incomplete
    assert "more than 1000 parts" in result.findings[-1]
    everything = extract(message(body), MailLimits(max_parts=20_000))
    assert len(everything.parts) == 10_000 and not everything.incomplete


def test_inspect_command() -> None:
    out = subprocess.run([sys.executable, "-m", "mailowl.cli", "mail", "inspect", str(SAMPLES / "03-rfc2231-filename.eml")],
                         capture_output=True, text=True, check=True).stdout
    import json

    parts = json.loads(out)["parts"]
    assert parts[0]["filename"] == "Rechnung März.docm" and parts[0]["size"] == 52
    assert set(parts[0]) == {"filename", "content_type", "disposition", "size", "sha256"}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4000))
def test_fuzz_arbitrary_bytes(raw: bytes) -> None:
    result = extract(raw, MailLimits(max_parts=50, max_depth=5, max_total_size=100_000))
    assert len(result.parts) <= 50 and result.size <= 100_000


MIME_PIECES = st.sampled_from([
    "--b\r\n", "--b--\r\n", "Content-Type: multipart/mixed; boundary=b\r\n", "Content-Type: message/rfc822\r\n",
    "Content-Transfer-Encoding: base64\r\n", "Content-Transfer-Encoding: quoted-printable\r\n",
    "Content-Disposition: attachment; filename*0*=utf-8''%C3; filename*1=x\r\n", "\r\n", "=?utf-8?q?=C3?=",
    "begin 644 x.bat\n", "M86)C\n", "end\n", "QUJD==\r\n", "=\r\n", "name=\"", "\x00", "\xff",
])


@settings(max_examples=300, deadline=None)
@given(st.lists(MIME_PIECES, max_size=80))
def test_fuzz_mime_shaped_input(pieces: list[str]) -> None:
    raw = ("MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" + "".join(pieces)).encode(
        "utf-8", "surrogateescape")
    result = extract(raw, MailLimits(max_parts=30, max_depth=4))
    assert len(result.parts) <= 30
    if not result.incomplete:
        assert [(p.filename, p.content_type, p.disposition, p.content) for p in result.parts] == reference(
            raw, include_bodies=False)
