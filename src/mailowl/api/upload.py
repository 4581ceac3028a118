"""Streaming parser for sample uploads (multipart/form-data), bounded in size and in memory.

The file part goes to a spooled temporary file (memory up to 1 MiB, disk above), so a 100 MB upload
costs one 100 MB buffer, not two or three.
"""

from __future__ import annotations

import email.errors
import email.header
import email.message
import email.utils
import logging
import re
import tempfile
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError

# python-multipart logs a warning for every malformed form; the client gets that detail in its 400, and
# the log must not be something any client can fill
logging.getLogger("python_multipart").setLevel(logging.ERROR)

_SPOOL = 1 << 20
_SMALL_FIELD = 64 * 1024
#: python-multipart's own ceiling; RFC 2046 asks for at most 70 characters
MAX_BOUNDARY = 256
#: a form carries "file" and, in v2, "options": many more parts are an attack on memory, not a form
MAX_PARTS = 16
# python-multipart bounds each part's headers: at most 8 lines of at most 4224 bytes
_CHUNK_OFFSET = re.compile(r"\s*(?:\(\d+\)|at (?:index )?\d+)$")


class UploadError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Part:
    headers: dict[str, str] = field(default_factory=dict)
    name: str | None = None
    filename: str | None = None
    content_type: str | None = None
    size: int = 0
    spool: Any = None

    def data(self) -> bytes:
        if self.spool is None:
            return b""
        self.spool.seek(0)
        data: bytes = self.spool.read()
        self.spool.close()
        return data


def _header_params(value: str) -> email.message.Message:
    msg = email.message.Message()
    msg["content-disposition"] = value
    return msg


_SIMPLE_PARAM = re.compile(r';\s*([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s"]*))')
_QUOTED_PAIR = re.compile(r"\\(.)")


def _simple_params(value: str) -> dict[str, str] | None:
    """Parameters of a header without RFC 2231 parts; None when the header needs the full parser."""
    if "*" in value or "=?" in value:
        return None
    params: dict[str, str] = {}
    for match in _SIMPLE_PARAM.finditer(value):
        quoted, bare = match.group(2), match.group(3)
        params[match.group(1).lower()] = _QUOTED_PAIR.sub(r"\1", quoted) if quoted is not None else bare
    return params


def parse_disposition(value: str) -> tuple[str | None, str | None]:
    """(field name, filename) from a part's Content-Disposition: ``filename`` as PeekabooAV reads it, else
    RFC 2231 ``filename*``; RFC 2047 encoded-words some clients put in filenames are decoded."""
    simple = _simple_params(value)
    if simple is not None:
        return storable(simple.get("name")), storable(simple.get("filename"))
    name, filename = _full_disposition(value)
    if filename and "=?" in filename:
        filename = _decode_words(filename)
    return storable(name), storable(filename)


def storable(text: str | None) -> str | None:
    """``text`` as every later stage can take it: UTF-8-encodable (decoders such as UTF-7 can yield lone
    surrogates, which hashing the identity chokes on; they become U+FFFD) and without NUL (which
    PostgreSQL refuses, failing the whole group commit; dropped, as Sample drops it from filenames)."""
    if text is None:
        return None
    if "\x00" in text:
        text = text.replace("\x00", "")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text


def _decode_words(text: str) -> str:
    """``text`` with its RFC 2047 encoded-words decoded; as written if any of them cannot be.

    The filename comes from the attachment, so from whoever sent the mail: refusing the upload for an
    unknown charset or bytes that are not what the charset says would let a sender make any attachment
    unscannable. Kept as written, the name is what PeekabooAV (which decodes nothing) would see.
    """
    try:
        decoded = str(email.header.make_header(email.header.decode_header(text)))
        decoded.encode("utf-8")  # lone surrogates (UTF-7 can make them) count as undecodable
    except (LookupError, ValueError, email.errors.MessageError):
        return text
    return decoded


def _full_disposition(value: str) -> tuple[str | None, str | None]:
    msg = _header_params(value)
    name = msg.get_param("name", header="content-disposition")
    raw = msg.get_param("filename*", header="content-disposition")
    filename: str | None = None
    if isinstance(raw, str) and "'" in raw:
        charset, _, rest = raw.partition("'")
        _lang, _, encoded = rest.partition("'")
        try:
            filename = urllib.parse.unquote(encoded, encoding=charset or "utf-8", errors="replace")
        except LookupError:
            filename = urllib.parse.unquote(encoded, errors="replace")
    if filename is None:
        plain = msg.get_param("filename", header="content-disposition")
        if plain is not None:
            filename = email.utils.collapse_rfc2231_value(plain)
    field_name = email.utils.collapse_rfc2231_value(name) if name is not None else None
    return field_name, filename


_FORM_BOUNDARY = re.compile(r'^\s*multipart/form-data\s*;\s*boundary=("?)([0-9A-Za-z\'()+_,./:=?-]{1,70})\1\s*$', re.I)


def boundary_of(content_type: str) -> bytes | None:
    """The form's boundary; None if the body is not multipart/form-data, b"" if the boundary is missing."""
    quick = _FORM_BOUNDARY.match(content_type)
    if quick:
        return quick.group(2).encode("ascii")
    msg = email.message.Message()
    msg["content-type"] = content_type
    if msg.get_content_type() != "multipart/form-data":
        return None
    boundary = msg.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        return b""
    return boundary.encode("latin-1", "replace")


async def receive_body(receive: Callable[[], Awaitable[Any]]) -> AsyncIterator[bytes]:
    """The request body from ASGI ``receive``; UploadError(400) if the client goes away first.

    Every upload route reads through this, so a disconnect is an ordinary upload error (answered into
    the void, never logged as a crash) on the v1 fast path and the Starlette routes alike.
    """
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise UploadError(400, "Client disconnected during upload")
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


def _too_many_parts() -> UploadError:
    return UploadError(400, 'Invalid number of fields in form, we accept only one field "file"')


async def read_form(body: AsyncIterator[bytes], boundary: bytes, limit: int) -> list[Part]:
    """All parts of the form; each may hold up to ``limit`` bytes and all together ``limit`` + 64 KiB.
    Raises UploadError(413) past the limit without reading further, UploadError(400) for anything
    that is not a well-formed form of at most MAX_PARTS parts."""
    if len(boundary) > MAX_BOUNDARY:
        raise UploadError(400, f"Invalid MIME structure in request: the multipart boundary has {len(boundary)} "
                               f"characters, at most {MAX_BOUNDARY} are allowed")
    parts: list[Part] = []
    current: list[Part] = []
    header_field = bytearray()
    header_value = bytearray()
    total = [0]

    def on_part_begin() -> None:
        if len(parts) >= MAX_PARTS:
            raise _too_many_parts()
        current[:] = [Part()]

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        key = header_field.decode("latin-1").strip().lower()
        try:
            value = header_value.decode("utf-8")
        except UnicodeDecodeError:
            value = header_value.decode("latin-1")
        current[0].headers[key] = value.strip()
        header_field.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        part = current[0]
        disposition = part.headers.get("content-disposition")
        if disposition:
            part.name, part.filename = parse_disposition(disposition)
        ctype = part.headers.get("content-type")
        if ctype:
            part.content_type = storable(ctype.split(";", 1)[0].strip().lower() or None)
        # closed by Part.data() or by the error path below
        part.spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL)  # noqa: SIM115

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part = current[0]
        part.size += end - start
        total[0] += end - start
        if part.size > limit or total[0] > limit + _SMALL_FIELD:
            raise UploadError(413, f"Sample too large: the limit is {limit} bytes")
        part.spool.write(data[start:end])

    def on_part_end() -> None:
        parts.append(current[0])

    try:
        parser = MultipartParser(boundary, callbacks={  # type: ignore[arg-type]
            "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
            "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data, "on_part_end": on_part_end,
        })
        fed = 0
        async for chunk in body:
            if chunk:
                parser.write(chunk)
                fed += len(chunk)
        parser.finalize()
    except FormParserError as exc:
        _discard(parts + current)
        # PeekabooAV's text for anything that is not a well-formed form, then what and where
        detail = _CHUNK_OFFSET.sub("", str(exc))
        offset = getattr(exc, "offset", -1)
        where = f" near byte {fed + offset} of the body" if isinstance(offset, int) and offset >= 0 else ""
        raise UploadError(400, f"Invalid MIME structure in request: {detail}{where}") from None
    except BaseException:
        _discard(parts + current)
        raise
    return parts


def _discard(parts: list[Part]) -> None:
    for part in parts:
        if part.spool is not None:
            part.spool.close()
