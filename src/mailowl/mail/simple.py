"""The fast path of mailowl.mail.parts.extract for simple, well-formed messages held in memory.

Most messages an MTA hook posts are small and tidy: one kind of line end throughout, header blocks of
``Name: value`` lines ended by a blank line, multiparts with their first and closing boundary lines. For
those the line-by-line walker in parts.py does much work that cannot change the result: it reads every
line through the ``Lines`` reader, builds an ``email`` message from every header line, checks every
line against every enclosing boundary and decodes through spooled files. Here the same result comes from
slicing the message: boundary lines are found by a literal search, a header block is checked by one
regular expression, and only its Content-* fields are looked at. A value of the plainest form
(``type/sub; name=token; name="quoted"``) is read directly, as ``email`` would read it (property-tested);
any other goes through the very ``email`` calls the walker makes.

Anything outside that shape (a bare CR or LF among CRLF, a non-header line in a header block, a
message/* part, a missing or repeated boundary line, a limit that would be reached, ...) returns None
and the full walker runs from the start; a message taken here is therefore never incomplete, has no
findings of its own, and equals the walker's extraction exactly (tests/test_simple_path.py checks this
on generated messages and on every sample message).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from email.message import Message
from typing import Any

from mailowl.mail.decode import Identity, decoder
from mailowl.mail.parts import _CHUNK, _POLICY, Extraction, MailLimits, _Parts, _value_params, described

#: a header block: field lines, each optionally followed by continuation lines; nothing else
_BLOCK = re.compile(rb"[\041-\071\073-\176]+:[^\n]*\n(?:(?:[\041-\071\073-\176]+:|[ \t])[^\n]*\n)*")
#: the fields that decide how a part is walked and named, each with its continuation lines
_MIME = re.compile(rb"(?<![^\n])(content-(?:type|disposition|transfer-encoding)):[^\n]*\n(?:[ \t][^\n]*\n)*",
                   re.IGNORECASE)
#: header values of the plainest form, whose parsing by ``email`` is known in advance (_plain)
_PLAIN = re.compile(r"[ \t]*([A-Za-z0-9][A-Za-z0-9.+_-]*(?:/[A-Za-z0-9][A-Za-z0-9.+_-]*)?)"
                    r"(?:[ \t]*;[ \t]*[A-Za-z0-9-]+=(?:[A-Za-z0-9._-]+|\"[A-Za-z0-9'()+_,./:=? -]*\"))*[ \t]*")
_PARAM = re.compile(r";[ \t]*([A-Za-z0-9-]+)=(?:([A-Za-z0-9._-]+)|\"([^\"]*)\")")
_CTE = re.compile(r"[A-Za-z0-9-]+")
#: what may follow the separator on a boundary line, by line end
_TAILS = {eol: re.compile(b"(--)?[ \t]*(?:" + eol + b"|\\Z)") for eol in (b"\n", b"\r\n")}
#: separators found inside lines before the walker is left to it
_MAX_MISSES = 64


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
    field = fields.get(b"content-type")
    plain = None if field is None else _plain(field[1])
    if field is None:
        ctype, header = default, None
    elif plain is not None and "/" in plain[0]:
        ctype, header = plain[0], None
    else:  # Message.get_content_type, which the walker asks to choose the way
        plain, header = None, _POLICY.header_fetch_parse(*field)
        ctype = str(header).partition(";")[0].strip().lower()
        if ctype.count("/") != 1:
            ctype = "text/plain"
    if ctype.startswith("multipart/"):
        _multipart(raw, field, plain, ctype, body, end, depth, eol, parts)
    elif ctype.startswith("message/"):
        raise _NotSimple
    else:
        if strip and end > body:
            end -= len(eol)
        _leaf(raw[body:end], fields, plain or _value_params(header), default, parts)


def _fields(raw: bytes, start: int, end: int) -> dict[bytes, tuple[str, str]]:
    """The block's Content-* fields as (name, value), the first of each (the one ``Message.get`` finds)."""
    fields: dict[bytes, tuple[str, str]] = {}
    for match in _MIME.finditer(raw, start, end):
        key = match.group(1).lower()
        if key not in fields:
            fields[key] = _POLICY.header_source_parse([match.group().decode("ascii", "surrogateescape")])
    return fields


def _plain(value: str) -> tuple[str, dict[str, str]] | None:
    """(value, parameters) as ``email`` parses them, lowercased and unquoted, for a header value of the
    plainest form (``type/sub; name=token; name="quoted"``, ASCII, each parameter once); else None.
    ``email``'s header parser costs far more than the rest of taking a small message apart, and every
    message has a Content-Type of its own (its boundary)."""
    value = value.replace("\r", "").replace("\n", "")  # as header_fetch_parse does
    match = _PLAIN.fullmatch(value)
    if match is None or "=?" in value:  # no encoded-words either
        return None
    params: dict[str, str] = {}
    for param in _PARAM.finditer(value, match.end(1)):
        name = param.group(1).lower()
        if name in params:
            return None
        token = param.group(2)
        params[name] = param.group(3) if token is None else token
    return match.group(1).lower(), params


def _multipart(raw: bytes, field: Any, plain: tuple[str, dict[str, str]] | None, ctype: str, body: int, end: int,
               depth: int, eol: bytes, parts: _Parts) -> None:
    if plain is not None:
        boundary = plain[1].get("boundary")
        boundary = None if boundary is None else boundary.rstrip()
    else:  # the walker's way (email's older parameter parser), on a message of just this field
        msg: Message = _POLICY.message_factory(policy=_POLICY)  # type: ignore[misc]
        msg.set_raw(*field)
        boundary = msg.get_boundary()
    if boundary is None:
        raise _NotSimple
    separator = b"--" + boundary.encode("ascii", "surrogateescape")
    default = "message/rfc822" if ctype == "multipart/digest" else "text/plain"
    part_start = -1
    for line_start, line_end, closing in _boundary_lines(raw, separator, eol, body, end):
        if part_start < 0:  # the first boundary line ends the preamble; a closing one there is a defect
            if closing:
                raise _NotSimple
        else:
            # a boundary line right after another: the walker skips repeated ones (or a close among them)
            if line_start == part_start or depth >= parts.limits.max_depth:
                raise _NotSimple
            _entity(raw, part_start, line_start, depth + 1, default, eol, parts, True)
            if closing:
                return  # closed; the epilogue is not looked at
        part_start = line_end
    raise _NotSimple  # no first or no closing boundary line


def _boundary_lines(raw: bytes, separator: bytes, eol: bytes, start: int, end: int) -> Iterator[tuple[int, int, bool]]:
    """(start, end, closing) of the lines in raw[start:end] the walker takes for this boundary: at the start
    of a line, the separator, optionally ``--`` (closing), blanks. A literal search, no regular expression
    per boundary: every message has a boundary of its own, and compiling one costs more than the rest."""
    tail = _TAILS[eol]
    misses = 0
    at = raw.find(separator, start, end)
    while at >= 0:
        if at == 0 or raw[at - 1] == 0x0A:
            line = tail.match(raw, at + len(separator), end)
            if line is not None:
                yield at, line.end(), line.group(1) is not None
        else:
            misses += 1
            if misses > _MAX_MISSES:  # the separator all over the lines: the walker's regular expression
                raise _NotSimple
        at = raw.find(separator, at + 1, end)


def _leaf(content: bytes, fields: dict[bytes, tuple[str, str]], content_type: tuple[str | None, dict[str, Any]],
          default: str, parts: _Parts) -> None:
    field = fields.get(b"content-disposition")
    plain = None if field is None else _plain(field[1])
    if plain is None or "/" in plain[0]:
        disposition = _value_params(None if field is None else _POLICY.header_fetch_parse(*field))
    else:
        disposition = plain
    ctype, disp, filename = described(content_type, disposition, default)
    field = fields.get(b"content-transfer-encoding")
    if field is None:
        cte = ""
    elif _CTE.fullmatch(field[1]):
        cte = field[1].lower()
    else:
        cte = str(_POLICY.header_fetch_parse(*field)).lower()
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
    parts.emit(data, ctype, disp, filename, findings)
