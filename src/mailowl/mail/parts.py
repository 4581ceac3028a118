"""From a message to the parts worth analysing: one streaming walker for every path (milter, content
filter, ``mail inspect``), whose parts are exactly those the standard ``email`` package finds.

The message is read from a file (or bytes) line by line as ``email``'s feed parser reads it (mailowl.mail.lines);
header blocks become ``email`` messages through ``email``'s own policy and header classes; leaf bodies are
never held whole: they are walked past by offset,
then decoded in pieces into spooled files (mailowl.mail.decode). Every limit is a budget for the whole message;
hitting one stops the walk and marks the extraction incomplete, so the message is judged unparsable.

Every non-body leaf part becomes a part with its declared filename, content type and disposition. The
filename comes from Content-Disposition ``filename`` or Content-Type ``name`` in any quoting, RFC 2231
(continuations, charsets) or RFC 2047 encoded-words, reduced to its basename. multipart/* and
message/rfc822 are walked (depth-limited), uuencoded blocks are pulled out of text bodies, and TNEF
``winmail.dat`` members are unpacked. Broken encodings are findings, never exceptions.
"""

from __future__ import annotations

import binascii
import contextlib
import email.header
import email.policy
import email.utils
import hashlib
import io
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import errors
from email.message import EmailMessage, Message
from email.parser import BytesParser
from typing import IO, Any

from mailowl.analysis.sample import basename
from mailowl.config import Config
from mailowl.mail.decode import decoder
from mailowl.mail.lines import BLANK, Line, Lines


class _Policy(email.policy.EmailPolicy):
    """policy.default, remembering parsed header values: the parser asks for a part's Content-Type
    several times, and each answer would otherwise parse the header afresh."""

    def header_fetch_parse(self, name: str, value: str) -> Any:
        key = (name, value)
        parsed = _PARSED.get(key)
        if parsed is None:
            parsed = super().header_fetch_parse(name, value)
            if len(_PARSED) > 4096:
                _PARSED.clear()
            _PARSED[key] = parsed
        return parsed


_PARSED: dict[tuple[str, str], Any] = {}
_POLICY = _Policy()
_UU_BEGIN = re.compile(rb"^begin(?:-base64)? +([0-7]{3,4}) +(.+?)\r?$", re.M)
_TNEF_TYPES = {"application/ms-tnef", "application/vnd.ms-tnef"}


@dataclass(frozen=True)
class MailLimits:
    max_depth: int = 10
    max_parts: int = 1000
    max_total_size: int = 256 * 2**20
    #: all header blocks of the message together
    max_header_size: int = 16 * 2**20


def limits_for(config: Config) -> MailLimits:
    """The message-wide budgets a configuration sets; decoded parts may take four samples' worth."""
    return MailLimits(max_depth=config.mail.max_depth, max_parts=config.mail.max_parts,
                      max_total_size=config.server.max_sample_size * 4, max_header_size=config.mail.max_header_size)


@dataclass
class Part:
    filename: str | None
    content_type: str
    disposition: str | None
    content: bytes
    #: problems found while decoding this part
    findings: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"filename": self.filename, "content_type": self.content_type, "disposition": self.disposition,
                "size": len(self.content), "sha256": hashlib.sha256(self.content).hexdigest()}


@dataclass
class Extraction:
    parts: list[Part] = field(default_factory=list)
    #: problems with the message as a whole (structure, limits)
    findings: list[str] = field(default_factory=list)
    #: a limit stopped extraction: some parts were not looked at
    incomplete: bool = False
    size: int = 0


class _Limit(Exception):
    pass


@dataclass
class _Leaf:
    msg: Message
    #: where the body lies in the file, in order
    spans: list[tuple[int, int]]
    #: a multipart without usable boundaries: the ``email`` package never trims its last line end
    multipart: bool


_EOL_AT_END = re.compile(r"(\r\n|\r|\n)\Z")
_HEADER_LINE = re.compile(rb"From |[\041-\071\073-\176]*:|[\t ]")
_FIELD_NAME = re.compile(rb"[\041-\071\073-\176]*")
_SPOOL = 1 << 20
_CHUNK = 1 << 20


class _Parts:
    """Where decoded leaves go: the part budget, text bodies, uuencoded blocks, TNEF (shared by the walker
    and the fast path in mailowl.mail.simple)."""

    def __init__(self, limits: MailLimits, include_bodies: bool, on_part: Callable[[Part], None] | None) -> None:
        self.limits = limits
        self.include_bodies = include_bodies
        self.on_part = on_part
        self.out = Extraction()
        self.count = 0

    def add(self, part: Part) -> None:
        if self.count >= self.limits.max_parts:
            raise _Limit(f"more than {self.limits.max_parts} parts")
        self.count += 1
        if self.on_part is not None:
            self.on_part(part)
        else:
            self.out.parts.append(part)

    def emit(self, content: bytes, ctype: str, disposition: str | None, filename: str | None,
             findings: list[str]) -> None:
        """A decoded leaf: skipped if it is a body (but for uuencoded blocks in it), unpacked if TNEF."""
        is_body = filename is None and disposition != "attachment" and ctype in ("text/plain", "text/html")
        if is_body:
            for uu in _uudecode(content):
                self.add(uu)
            if not self.include_bodies:
                return
        if ctype in _TNEF_TYPES or (filename or "").lower() == "winmail.dat":
            members = _tnef(content, findings)
            if members is not None:
                for member in members:
                    self.add(member)
                return
        self.add(Part(filename, ctype, disposition, content, findings))



class _Walker(_Parts):
    def __init__(self, lines: Lines, limits: MailLimits, include_bodies: bool,
                 on_part: Callable[[Part], None] | None) -> None:
        _Parts.__init__(self, limits, include_bodies, on_part)
        self.lines = lines
        self.header_size = 0
        #: the last leaf read, kept back until it is known whether its last line end belongs to a boundary
        self.pending: _Leaf | None = None
        #: the entity the feed parser would call "last": whose line end a boundary takes
        self.last: Message | None = None

    # limits -----------------------------------------------------------------------------------------------
    def _stop(self, why: str) -> None:
        if not self.out.incomplete:
            self.out.findings.append(f"limit reached: {why}; remaining parts not extracted")
        self.out.incomplete = True

    def _container(self, depth: int) -> None:
        if depth >= self.limits.max_depth:
            raise _Limit(f"nested deeper than {self.limits.max_depth} levels")

    # structure, as email.feedparser walks it --------------------------------------------------------------
    def entity(self, depth: int, default_type: str) -> None:
        self.flush(strip=False)
        msg = self.headers(default_type)
        self.last = msg
        for defect in msg.defects:
            self.out.findings.append(f"{type(defect).__name__}: {defect}".rstrip(": "))
        ctype = msg.get_content_type()
        if ctype == "message/delivery-status":
            self._container(depth)
            self.delivery_status(depth)
        elif msg.get_content_maintype() == "message":
            self._container(depth)
            self.entity(depth + 1, "text/plain")
        elif msg.get_content_maintype() == "multipart":
            self.multipart(msg, depth)
        else:
            self.pending = _Leaf(msg, self.body(), False)

    def headers(self, default_type: str) -> Message:
        lines = self.lines
        block: list[bytes] = []
        last: Line | None = None
        while (line := lines.readline()) is not None:
            head = line.head
            length = line.end - line.start
            if length > len(head):
                if length > self.limits.max_header_size - self.header_size:
                    if _HEADER_LINE.match(head) or _FIELD_NAME.fullmatch(head):
                        raise _Limit(f"header blocks larger than {self.limits.max_header_size} bytes")
                else:
                    head = lines.read(line.start, line.end)
            if not _HEADER_LINE.match(head):
                if head[:1] not in (b"\r", b"\n"):
                    self.out.findings.append("MissingHeaderBodySeparatorDefect: a body line among the headers")
                    lines.unread(line)
                break
            self.header_size += length
            if self.header_size > self.limits.max_header_size:
                raise _Limit(f"header blocks larger than {self.limits.max_header_size} bytes")
            block.append(head)
            last = line
        if last is not None and len(block) > 1 and block[-1].startswith(b"From "):
            lines.unread(last)  # as email does: an envelope-looking last line starts the body
        msg = _header_message(block)
        msg.set_default_type(default_type)
        return msg

    def body(self) -> list[tuple[int, int]]:
        lines = self.lines
        spans: list[tuple[int, int]] = []
        while lines.pushed:
            line = lines.readline()
            if line is None:
                return spans
            spans.append((line.start, line.end))
        start = lines.pos
        end = lines.skip()
        if end > start:
            spans.append((start, end))
        return spans

    def multipart(self, msg: Message, depth: int) -> None:
        lines = self.lines
        boundary = msg.get_boundary()
        if boundary is None:
            self.out.findings.append("NoBoundaryInMultipartDefect: multipart without a boundary, read as one part")
            self.pending = _Leaf(msg, self.body(), True)
            return
        try:
            separator: bytes | None = b"--" + boundary.encode("ascii", "surrogateescape")
        except UnicodeEncodeError:
            separator = None  # no line of the message can be that boundary
        default = "message/rfc822" if msg.get_content_type() == "multipart/digest" else "text/plain"
        preamble: list[tuple[int, int]] = []
        in_preamble, closed = True, False
        while True:
            if in_preamble and not lines.pushed:
                start = lines.pos
                end = lines.skip(separator)
                if end > start:
                    preamble.append((start, end))
            line = lines.readline()
            if line is None:
                break
            if separator is None or not lines.is_boundary(line, separator):
                preamble.append((line.start, line.end))
                continue
            if lines.is_close(line, separator):
                closed = True
                break
            if in_preamble:
                in_preamble = False
                lines.unread(line)
                continue
            while True:  # repeated boundary lines make no empty parts
                line = lines.readline()
                if line is None or not lines.is_boundary(line, separator):
                    lines.unread(line)
                    break
            self._container(depth)
            lines.ends.append(separator)
            self.entity(depth + 1, default)
            self.flush(strip=self.pending is not None and self.last is self.pending.msg
                       and not self.pending.multipart)
            lines.ends.pop()
            self.last = msg
        if in_preamble:
            self.out.findings.append("StartBoundaryNotFoundDefect: multipart without its first boundary, "
                                     "read as one part")
            self.pending = _Leaf(msg, preamble, True)
            self.body()  # the rest is epilogue
            return
        if not closed:
            self.out.findings.append("CloseBoundaryNotFoundDefect: multipart without its closing boundary")
            return
        self.body()  # epilogue

    def delivery_status(self, depth: int) -> None:
        lines = self.lines
        while True:  # blocks of headers, one entity each, separated by blank lines
            lines.ends.append(BLANK)
            self.entity(depth + 1, "text/plain")
            lines.ends.pop()
            lines.readline()
            line = lines.readline()
            if line is None:
                return
            lines.unread(line)

    # leaves -----------------------------------------------------------------------------------------------
    def flush(self, strip: bool) -> None:
        leaf, self.pending = self.pending, None
        if leaf is None:
            return
        spans = list(leaf.spans)
        if strip and spans:  # the line end before a boundary belongs to the boundary
            start, end = spans[-1]
            tail = self.lines.read(max(start, end - 2), end)
            end -= 2 if tail.endswith(b"\r\n") else 1 if tail[-1:] in (b"\r", b"\n") else 0
            spans[-1] = (start, end)
        msg = leaf.msg
        ctype, disposition, filename = _describe(msg)
        findings = [f"{type(d).__name__}: {d}".rstrip(": ") for d in msg.defects]
        self.emit(self.decode(msg, spans, findings), ctype, disposition, filename, findings)

    def decode(self, msg: Message, spans: list[tuple[int, int]], findings: list[str]) -> bytes:
        cte = str(msg.get("content-transfer-encoding", "")).lower()
        budget = self.limits.max_total_size - self.out.size
        small = sum(end - start for start, end in spans) <= _SPOOL
        with io.BytesIO() if small else tempfile.SpooledTemporaryFile(max_size=_SPOOL) as spool:
            sink = _Budgeted(spool, budget, self.limits.max_total_size)
            work = decoder(cte, sink)
            for chunk in self._read(spans):
                work.write(chunk)
            if not work.finish():
                findings.append(f"could not decode {cte}: the part is taken as it is")
                spool.seek(0)
                spool.truncate()
                sink.written = 0
                for chunk in self._read(spans):
                    sink.write(chunk.translate(None, b"\r\n") if cte == "base64" else chunk)
            elif getattr(work, "skipped", False):
                findings.append("broken base64: undecodable data skipped")
            self.out.size += sink.written
            spool.seek(0)
            return spool.read()

    def _read(self, spans: list[tuple[int, int]]) -> Iterator[bytes]:
        for start, end in spans:
            for offset in range(start, end, _CHUNK):
                yield self.lines.read(offset, min(end, offset + _CHUNK))

def _header_message(block: list[bytes]) -> Message:
    """A message holding these header lines, as email's feed parser builds it (without its overhead)."""
    msg: Message = _POLICY.message_factory(policy=_POLICY)  # type: ignore[misc]
    name, value = "", []
    last = len(block) - 1
    for index, raw in enumerate(block):
        line = raw.decode("ascii", "surrogateescape")
        if line[0] in " \t":
            if name:
                value.append(line)
            else:
                _POLICY.handle_defect(msg, errors.FirstHeaderLineIsContinuationDefect(line))
            continue
        if name:
            msg.set_raw(*_POLICY.header_source_parse(value))
            name, value = "", []
        if line.startswith("From "):
            if index == 0:
                msg.set_unixfrom(_EOL_AT_END.sub("", line))
            elif index < last:
                msg.defects.append(errors.MisplacedEnvelopeHeaderDefect(line))
            continue  # the last line starts the body: the caller put it back
        colon = line.find(":")
        if colon == 0:
            msg.defects.append(errors.InvalidHeaderDefect("Missing header name."))
            continue
        name, value = line[:colon], [line]
    if name:
        msg.set_raw(*_POLICY.header_source_parse(value))
    return msg


class _Budgeted:
    """A spool that stops the walk when the decoded parts of the message outgrow their budget."""

    def __init__(self, spool: IO[bytes], budget: int, limit: int) -> None:
        self.spool, self.budget, self.limit = spool, budget, limit
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)
        if self.written > self.budget:
            raise _Limit(f"decoded parts exceed {self.limit} bytes")
        self.spool.write(data)


def _header(msg: Message, name: str) -> Any:
    """The parsed header, or None if it is missing or cannot be parsed."""
    try:
        return msg.get(name)
    except Exception:
        return None


def _value_params(header: Any) -> tuple[str | None, dict[str, Any]]:
    """(value, parameters) of a parsed MIME header; parameters are RFC 2231-decoded."""
    if header is None:
        return None, {}
    value = getattr(header, "content_type", None) or getattr(header, "content_disposition", None)
    try:
        params = dict(getattr(header, "params", {}) or {})
    except Exception:
        params = {}
    return (str(value).lower() if value else None), params


def _describe(msg: Message) -> tuple[str, str | None, str | None]:
    """(content type, disposition, filename) of a leaf part."""
    return describe(_header(msg, "content-type"), _header(msg, "content-disposition"), msg.get_default_type())


def describe(ctype_header: Any, disposition_header: Any, default_type: str) -> tuple[str, str | None, str | None]:
    """(content type, disposition, filename) of a leaf part from its parsed Content-Type and
    Content-Disposition headers (None when missing)."""
    return described(_value_params(ctype_header), _value_params(disposition_header), default_type)


def described(content_type: tuple[str | None, dict[str, Any]], disposition: tuple[str | None, dict[str, Any]],
              default_type: str) -> tuple[str, str | None, str | None]:
    """describe() from the (value, parameters) of the two headers."""
    ctype, ctype_params = content_type
    if ctype is None or "/" not in ctype:
        ctype = default_type
    return ctype, disposition[0], _filename(disposition[1].get("filename") or ctype_params.get("name"))


def _filename(name: Any) -> str | None:
    if isinstance(name, tuple):  # an undecodable RFC 2231 triple
        name = email.utils.collapse_rfc2231_value(name)
    if not name:
        return None
    name = str(name)
    if "=?" in name:
        with contextlib.suppress(Exception):
            name = str(email.header.make_header(email.header.decode_header(name)))
    return basename(name.strip())


def _uudecode(text: bytes) -> list[Part]:
    out = []
    for match in _UU_BEGIN.finditer(text):
        name = basename(match.group(2).decode("utf-8", "replace").strip())
        data = bytearray()
        broken = False
        for line in text[match.end():].splitlines()[1:]:
            stripped = line.strip()
            if stripped == b"end":
                break
            if not stripped:
                continue
            try:
                data += binascii.a2b_uu(line)
            except binascii.Error:
                # some encoders pad badly: retry with the length the first byte announces
                try:
                    length = ((line[0] - 32) & 63) * 4 // 3 + 1
                    data += binascii.a2b_uu(line[:length + 1])
                except (binascii.Error, IndexError):
                    broken = True
        out.append(Part(name, "application/octet-stream", "attachment", bytes(data),
                        ["uuencoded block in a text body"] + (["broken uuencoding"] if broken else [])))
    return out


def _tnef(content: bytes, findings: list[str]) -> list[Part] | None:
    """Members of a TNEF (winmail.dat) container; None if it is not one."""
    if not content.startswith(b"\x78\x9f\x3e\x22"):
        return None
    try:
        from tnefparse import TNEF

        tnef = TNEF(content)
    except Exception as exc:
        findings.append(f"damaged TNEF container: {exc}")
        return None
    members = []
    for attachment in tnef.attachments:
        name = attachment.long_filename() or attachment.name
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        members.append(Part(basename(str(name).strip("\x00")) if name else None, "application/octet-stream",
                            "attachment", bytes(attachment.data), ["member of a TNEF winmail.dat"]))
    return members


def extract(message: bytes | IO[bytes], limits: MailLimits | None = None, include_bodies: bool = False,
            on_part: Callable[[Part], None] | None = None) -> Extraction:
    """The parts of a message (bytes, or a seekable binary file) in the order found; never raises for bad
    input. With ``on_part``, each part is handed over as it is found instead of being collected."""
    limits = limits or MailLimits()
    if isinstance(message, bytes) and on_part is None:
        from mailowl.mail.simple import simple_extract  # it builds on this module

        simple = simple_extract(message, limits, include_bodies)
        if simple is not None:
            return simple
    return walk(message, limits, include_bodies, on_part)


def walk(message: bytes | IO[bytes], limits: MailLimits, include_bodies: bool = False,
         on_part: Callable[[Part], None] | None = None) -> Extraction:
    """extract() by the line-by-line walker alone, for any message (the reference for the fast path)."""
    source = io.BytesIO(message) if isinstance(message, bytes) else message
    walker = _Walker(Lines(source), limits, include_bodies, on_part)
    try:
        walker.entity(0, "text/plain")
        walker.flush(strip=False)
    except _Limit as exc:
        walker._stop(str(exc))
    except RecursionError:
        walker._stop("nesting too deep for the parser")
    except Exception as exc:  # a bug here must not let a message through unanalysed
        walker.out.findings.append(f"message could not be walked: {type(exc).__name__}: {exc}")
        walker.out.incomplete = True
    return walker.out


def as_email_message(raw: bytes) -> EmailMessage:
    msg = BytesParser(policy=email.policy.default).parsebytes(raw, headersonly=True)
    assert isinstance(msg, EmailMessage)
    return msg
