"""From message bytes to the parts worth analysing: a pure function, built on the standard ``email`` package.

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
import re
from dataclasses import dataclass, field
from email.message import EmailMessage, Message
from email.parser import BytesParser
from typing import Any

from mailowl.analysis.sample import basename


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


class _Walker:
    def __init__(self, limits: MailLimits, include_bodies: bool) -> None:
        self.limits = limits
        self.include_bodies = include_bodies
        self.out = Extraction()

    def add(self, part: Part) -> bool:
        if len(self.out.parts) >= self.limits.max_parts:
            self._stop(f"more than {self.limits.max_parts} parts")
            return False
        self.out.size += len(part.content)
        if self.out.size > self.limits.max_total_size:
            self._stop(f"decoded parts exceed {self.limits.max_total_size} bytes")
            return False
        self.out.parts.append(part)
        return True

    def _stop(self, why: str) -> None:
        if not self.out.incomplete:
            self.out.findings.append(f"limit reached: {why}; remaining parts not extracted")
        self.out.incomplete = True

    def walk(self, msg: Message, depth: int) -> None:
        if self.out.incomplete:
            return
        for defect in msg.defects:
            self.out.findings.append(f"{type(defect).__name__}: {defect}".rstrip(": "))
        if msg.is_multipart():
            if depth >= self.limits.max_depth:
                self._stop(f"nested deeper than {self.limits.max_depth} levels")
                return
            payload = msg.get_payload()
            for sub in payload if isinstance(payload, list) else []:
                if isinstance(sub, Message):
                    self.walk(sub, depth + 1)
            return
        self.leaf(msg)

    def leaf(self, msg: Message) -> None:
        ctype, disposition, filename = _describe(msg)
        findings: list[str] = []
        content = _decode(msg, findings)
        self.emit(content, ctype, disposition, filename, findings)

    def emit(self, content: bytes, ctype: str, disposition: str | None, filename: str | None,
             findings: list[str]) -> None:
        """A decoded leaf: skipped if it is a body (but for uuencoded blocks in it), unpacked if TNEF."""
        is_body = filename is None and disposition != "attachment" and ctype in ("text/plain", "text/html")
        if is_body:
            for uu in _uudecode(content):
                if not self.add(uu):
                    return
            if not self.include_bodies:
                return
        if ctype in _TNEF_TYPES or (filename or "").lower() == "winmail.dat":
            members = _tnef(content, findings)
            if members is not None:
                for member in members:
                    if not self.add(member):
                        return
                return
        self.add(Part(filename, ctype, disposition, content, findings))


def _header(msg: Message, name: str) -> tuple[str | None, dict[str, Any]]:
    """(value, parameters) of a MIME header, each header parsed once; parameters are RFC 2231-decoded."""
    try:
        header: Any = msg.get(name)
    except Exception:
        return None, {}
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
    ctype, ctype_params = _header(msg, "content-type")
    if ctype is None or "/" not in ctype:
        ctype = "text/plain" if msg.get_default_type() == "text/plain" else msg.get_default_type()
    disposition, disp_params = _header(msg, "content-disposition")
    return ctype, disposition, _filename(disp_params.get("filename") or ctype_params.get("name"))


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


def _decode(msg: Message, findings: list[str]) -> bytes:
    cte = str(msg.get("content-transfer-encoding", "")).strip().lower()
    try:
        payload = msg.get_payload(decode=True)
    except Exception as exc:
        findings.append(f"could not decode {cte or 'part'}: {exc}")
        raw = msg.get_payload()
        return raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else b""
    for defect in msg.defects:
        findings.append(f"{type(defect).__name__}: {defect}".rstrip(": "))
    if payload is None:
        return b""
    if isinstance(payload, bytes):
        return payload
    return str(payload).encode("utf-8", "surrogateescape")


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


def extract(raw: bytes, limits: MailLimits | None = None, include_bodies: bool = False) -> Extraction:
    """The parts of a message in the order found; never raises for bad input."""
    walker = _Walker(limits or MailLimits(), include_bodies)
    try:
        msg = BytesParser(policy=_POLICY).parsebytes(raw)
    except Exception as exc:  # the parser is lenient; this is for the truly unexpected
        walker.out.findings.append(f"message could not be parsed: {exc}")
        walker.out.incomplete = True
        return walker.out
    try:
        walker.walk(msg, 0)
    except RecursionError:
        walker._stop("nesting too deep for the parser")
    except Exception as exc:
        walker.out.findings.append(f"message could not be walked: {type(exc).__name__}: {exc}")
        walker.out.incomplete = True
    return walker.out


def as_email_message(raw: bytes) -> EmailMessage:
    msg = BytesParser(policy=email.policy.default).parsebytes(raw, headersonly=True)
    assert isinstance(msg, EmailMessage)
    return msg
