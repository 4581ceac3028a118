"""The fast path of mailowl.mail.parts.extract for simple, well-formed messages held in memory.

Most messages an MTA hook posts are small and tidy: one kind of line end throughout, header blocks of
``Name: value`` lines ended by a blank line, multiparts with their first and closing boundary lines. For
those the line-by-line walker in parts.py does much work that cannot change the result: it reads every
line through the ``Lines`` reader, builds an ``email`` message from every header line, checks every
line against every enclosing boundary and decodes through spooled files. Here the same result comes from
slicing the message: boundary lines are found by one regular expression per multipart, a header block is
checked by one regular expression, and only its Content-* fields become an ``email`` message, so each
part's type, boundary, filename and encoding come from the very ``email`` calls the walker makes.

Anything outside that shape (a bare CR or LF among CRLF, a non-header line in a header block, a
message/* part, a missing or repeated boundary line, a limit that would be reached, ...) returns None
and the full walker runs from the start; a message taken here is therefore never incomplete, has no
findings of its own, and equals the walker's extraction exactly (tests/test_simple_path.py checks this
on generated messages and on every sample message).
"""

from __future__ import annotations

import re
from email.message import Message
from typing import Any

from mailowl.mail.decode import Identity, decoder
from mailowl.mail.parts import _CHUNK, _POLICY, Extraction, MailLimits, _Parts, describe

#: a header block: field lines, each optionally followed by continuation lines; nothing else
_BLOCK = re.compile(rb"[\041-\071\073-\176]+:[^\n]*\n(?:(?:[\041-\071\073-\176]+:|[ \t])[^\n]*\n)*")
#: the fields that decide how a part is walked and named, each with its continuation lines
_MIME = re.compile(rb"(?<![^\n])(content-(?:type|disposition|transfer-encoding)):[^\n]*\n(?:[ \t][^\n]*\n)*",
                   re.IGNORECASE)
_boundaries: dict[tuple[bytes, bytes], re.Pattern[bytes]] = {}


class _NotSimple(Exception):
    pass


class _Chunks(list[bytes]):
    """A decoder's sink collecting the pieces it writes."""

    write = list.append


def simple_extract(raw: bytes, limits: MailLimits, include_bodies: bool) -> Extraction | None:
    """The walker's extraction of ``raw``, or None if the message is not simple enough for this path."""
    if len(raw) > min(limits.max_total_size, limits.max_header_size, _CHUNK):
        # so no header block outgrows its budget, and the walker decodes each body in one piece as here
        # (the base64 decoder's "skipped" finding may depend on where pieces are cut)
        return None
    if b"\r" in raw:
        crlf = raw.count(b"\r\n")
        if crlf != raw.count(b"\r") or crlf != raw.count(b"\n"):
            return None
        eol = b"\r\n"
    else:
        eol = b"\n"
    parts = _Parts(limits, include_bodies, None)
    try:
        _entity(raw, 0, len(raw), 0, "text/plain", eol, parts, False)
    except Exception:  # _NotSimple, a limit, anything else: the walker decides
        return None
    return parts.out


def _entity(raw: bytes, start: int, end: int, depth: int, default: str, eol: bytes, parts: _Parts,
            strip: bool) -> None:
    """The entity in raw[start:end] (whole lines): a leaf or a multipart. ``strip``: the line end before
    ``end`` belongs to the boundary line there."""
    if raw.startswith(eol, start):
        body, fields = start + len(eol), {}
    else:
        cut = raw.find(eol + eol, start, end)
        if cut < 0 or _BLOCK.fullmatch(raw, start, cut + len(eol)) is None:
            raise _NotSimple
        body, fields = cut + 2 * len(eol), _fields(raw, start, cut + len(eol))
    ctype_header = _fetch(fields, b"content-type")
    # Message.get_content_type, which the walker asks to choose the way
    ctype = default
    if ctype_header is not None:
        ctype = str(ctype_header).partition(";")[0].strip().lower()
        if ctype.count("/") != 1:
            ctype = "text/plain"
    if ctype.startswith("multipart/"):
        _multipart(raw, fields, ctype, body, end, depth, eol, parts)
    elif ctype.startswith("message/"):
        raise _NotSimple
    else:
        if strip and end > body:
            end -= len(eol)
        _leaf(raw[body:end], fields, ctype_header, default, parts)


def _fields(raw: bytes, start: int, end: int) -> dict[bytes, tuple[str, str]]:
    """The block's Content-* fields as (name, value), the first of each (the one ``Message.get`` finds)."""
    fields: dict[bytes, tuple[str, str]] = {}
    for match in _MIME.finditer(raw, start, end):
        key = match.group(1).lower()
        if key not in fields:
            fields[key] = _POLICY.header_source_parse([match.group().decode("ascii", "surrogateescape")])
    return fields


def _fetch(fields: dict[bytes, tuple[str, str]], key: bytes) -> Any:
    """What ``Message.get`` answers for the field: the parsed header, or None."""
    field = fields.get(key)
    return None if field is None else _POLICY.header_fetch_parse(*field)


def _multipart(raw: bytes, fields: dict[bytes, tuple[str, str]], ctype: str, body: int, end: int, depth: int,
               eol: bytes, parts: _Parts) -> None:
    # the walker's way to the boundary (email's older parameter parser), on a message of just this field
    msg: Message = _POLICY.message_factory(policy=_POLICY)  # type: ignore[misc]
    msg.set_raw(*fields[b"content-type"])
    boundary = msg.get_boundary()
    if boundary is None:
        raise _NotSimple
    separator = b"--" + boundary.encode("ascii", "surrogateescape")
    default = "message/rfc822" if ctype == "multipart/digest" else "text/plain"
    part_start = -1
    for line in _boundary_lines(separator, eol).finditer(raw, body, end):
        if part_start < 0:  # the first boundary line ends the preamble; a closing one there is a defect
            if line.group(1) is not None:
                raise _NotSimple
        else:
            # a boundary line right after another: the walker skips repeated ones (or a close among them)
            if line.start() == part_start or depth >= parts.limits.max_depth:
                raise _NotSimple
            _entity(raw, part_start, line.start(), depth + 1, default, eol, parts, True)
            if line.group(1) is not None:
                return  # closed; the epilogue is not looked at
        part_start = line.end()
    raise _NotSimple  # no first or no closing boundary line


def _boundary_lines(separator: bytes, eol: bytes) -> re.Pattern[bytes]:
    """Lines the walker takes for this boundary: the separator, optionally ``--`` (closing), blanks."""
    key = (separator, eol)
    pattern = _boundaries.get(key)
    if pattern is None:
        if len(_boundaries) > 256:
            _boundaries.clear()
        # the separator first, so the search is a fast literal one; then: at the start of a line
        escaped = re.escape(separator)
        pattern = _boundaries[key] = re.compile(
            escaped + b"(?<![^\n]" + escaped + b")(--)?[ \t]*(?:" + re.escape(eol) + b"|\\Z)")
    return pattern


def _leaf(content: bytes, fields: dict[bytes, tuple[str, str]], ctype_header: Any, default: str,
          parts: _Parts) -> None:
    ctype, disposition, filename = describe(ctype_header, _fetch(fields, b"content-disposition"), default)
    cte_header = _fetch(fields, b"content-transfer-encoding")
    cte = "" if cte_header is None else str(cte_header).lower()
    findings: list[str] = []
    chunks = _Chunks()
    work = decoder(cte, chunks)
    if isinstance(work, Identity):
        data = content  # the body as it is: no copy
    else:
        if content:
            work.write(content)
        if not work.finish():
            findings.append(f"could not decode {cte}: the part is taken as it is")
            data = content.translate(None, b"\r\n") if cte == "base64" else content
        else:
            if getattr(work, "skipped", False):
                findings.append("broken base64: undecodable data skipped")
            data = b"".join(chunks)
    out = parts.out
    if out.size + len(data) > parts.limits.max_total_size:
        raise _NotSimple  # the walker stops here with its finding
    out.size += len(data)
    parts.emit(data, ctype, disposition, filename, findings)
