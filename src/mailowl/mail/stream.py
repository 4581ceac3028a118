"""Taking large messages apart from a file, streaming, so memory holds the decoded parts and not much more.

The header blocks are parsed by the ``email`` package (the same policy as mailowl.mail.parts); MIME bodies
are split by python-multipart's streaming parser and decoded chunk by chunk into spooled temporary files.
message/rfc822 and nested multiparts are walked from their spool files.
"""

from __future__ import annotations

import binascii
import re
import tempfile
from email.parser import BytesHeaderParser
from typing import IO, Any

from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError

from mailowl.mail.parts import _POLICY, Extraction, MailLimits, _describe, _Walker

_CHUNK = 1 << 20
_SPOOL = 1 << 20
_HEADER_LIMIT = 1 << 20
_WS = b" \t\r\n"


class _Base64:
    def __init__(self, out: IO[bytes]) -> None:
        self.out, self.rest, self.broken = out, b"", False

    def write(self, data: bytes) -> None:
        data = self.rest + data.translate(None, _WS)
        cut = len(data) // 4 * 4
        self.rest = data[cut:]
        if cut:
            try:
                self.out.write(binascii.a2b_base64(data[:cut]))
            except binascii.Error:
                self.broken = True

    def finish(self) -> None:
        if self.rest.rstrip(b"="):
            try:
                self.out.write(binascii.a2b_base64(self.rest + b"=" * (-len(self.rest) % 4)))
            except binascii.Error:
                self.broken = True


class _QuotedPrintable:
    def __init__(self, out: IO[bytes]) -> None:
        self.out, self.rest = out, b""

    def write(self, data: bytes) -> None:
        data = self.rest + data
        cut = data.rfind(b"\n") + 1
        self.rest = data[cut:]
        if cut:
            self.out.write(binascii.a2b_qp(data[:cut]))

    def finish(self) -> None:
        self.out.write(binascii.a2b_qp(self.rest))


class _Plain:
    def __init__(self, out: IO[bytes]) -> None:
        self.out = out

    def write(self, data: bytes) -> None:
        self.out.write(data)

    def finish(self) -> None:
        pass


def _split_head(source: IO[bytes]) -> tuple[bytes, int]:
    """The header block at the start of ``source`` and the offset where the body begins."""
    head = bytearray()
    while len(head) < _HEADER_LIMIT:
        line = source.readline(_HEADER_LIMIT)
        if not line:
            break
        head += line
        if line in (b"\r\n", b"\n"):
            break
    return bytes(head), source.tell()


class _StreamWalker(_Walker):
    def entity(self, source: IO[bytes], depth: int) -> None:
        """One MIME entity (headers + body) starting at the current position of ``source``."""
        if self.out.incomplete:
            return
        head, _ = _split_head(source)
        msg = BytesHeaderParser(policy=_POLICY).parsebytes(head)
        ctype, disposition, filename = _describe(msg)
        if ctype.startswith("multipart/") or ctype in ("message/rfc822", "message/global"):
            if depth >= self.limits.max_depth:
                self._stop(f"nested deeper than {self.limits.max_depth} levels")
                return
            if ctype.startswith("message/"):
                self.entity(source, depth + 1)
                return
            boundary = _boundary(msg)
            if boundary is None:
                self.out.findings.append("multipart without a boundary: read as one part")
            else:
                self.multipart(source, boundary, depth)
                return
        self.stream_leaf(source, msg, ctype, disposition, filename)

    def multipart(self, source: IO[bytes], boundary: bytes, depth: int) -> None:
        children: list[Any] = []
        current: list[Any] = []

        def on_part_begin() -> None:
            spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL)  # noqa: SIM115 (closed below)
            current[:] = [spool]
            children.append(spool)

        def on_header_field(data: bytes, start: int, end: int) -> None:
            current[0].write(data[start:end])

        def on_header_value(data: bytes, start: int, end: int) -> None:
            current[0].write(b": " + data[start:end])

        def on_header_end() -> None:
            current[0].write(b"\r\n")

        def on_headers_finished() -> None:
            current[0].write(b"\r\n")

        def on_part_data(data: bytes, start: int, end: int) -> None:
            current[0].write(data[start:end])

        parser = MultipartParser(boundary, callbacks={  # type: ignore[arg-type]
            "on_part_begin": on_part_begin, "on_header_field": on_header_field,
            "on_header_value": on_header_value, "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished, "on_part_data": on_part_data})
        # python-multipart expects the first boundary at the start: skip the preamble
        marker = b"--" + boundary
        while True:
            position = source.tell()
            line = source.readline(_HEADER_LIMIT)
            if not line:
                self.out.findings.append("StartBoundaryNotFoundDefect: no first boundary")
                return
            if line.startswith(marker):
                source.seek(position)
                break
        try:
            held = b""
            while chunk := source.read(_CHUNK):
                # the parser needs CRLF line ends; some messages use bare LF
                chunk = held + chunk
                held = b"\r" if chunk.endswith(b"\r") else b""
                chunk = chunk[:-1] if held else chunk
                parser.write(chunk.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
            if held:
                parser.write(held)
            parser.finalize()
        except MultipartParseError as exc:
            self.out.findings.append(f"broken multipart structure: {exc}")
        try:
            for spool in children:
                spool.seek(0)
                self.entity(spool, depth + 1)
        finally:
            for spool in children:
                spool.close()

    def stream_leaf(self, source: IO[bytes], msg: Any, ctype: str, disposition: str | None,
                    filename: str | None) -> None:
        findings: list[str] = []
        cte = str(msg.get("content-transfer-encoding", "")).strip().lower()
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL) as decoded:
            decoder: _Base64 | _QuotedPrintable | _Plain
            decoder = (_Base64(decoded) if cte == "base64" else _QuotedPrintable(decoded)
                       if cte == "quoted-printable" else _Plain(decoded))
            while chunk := source.read(_CHUNK):
                decoder.write(chunk)
            decoder.finish()
            if isinstance(decoder, _Base64) and decoder.broken:
                findings.append("broken base64: undecodable data skipped")
            decoded.seek(0)
            content = decoded.read()
        self.emit(content, ctype, disposition, filename, findings)


def _boundary(msg: Any) -> bytes | None:
    try:
        boundary = msg.get_boundary()
    except Exception:
        return None
    if not boundary or not re.fullmatch(r"[ -~]{1,200}", boundary):
        return None
    return str(boundary).encode("ascii")


def extract_file(source: IO[bytes], limits: MailLimits | None = None, include_bodies: bool = False) -> Extraction:
    """Like mailowl.mail.parts.extract, from a seekable binary file; never raises for bad input."""
    walker = _StreamWalker(limits or MailLimits(), include_bodies)
    source.seek(0)
    try:
        walker.entity(source, 0)
    except Exception as exc:
        walker.out.findings.append(f"message could not be walked: {type(exc).__name__}: {exc}")
        walker.out.incomplete = True
    return walker.out
