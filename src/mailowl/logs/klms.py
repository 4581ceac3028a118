"""KLMS/KSMG verdict lines: ``<status>: key="value": key=value, key="v1, v2": part "name", av-status="..."``.

One compiled regex finds every ``key=value`` and ``part "name"`` token; a line is accepted only if its
tokens, separators and status account for every character, so a line that is not in this format is
reported as such (``_grokparsefailure``) instead of being half-parsed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any, BinaryIO

import orjson

# syslog prefixes: RFC 3164 ("Nov 23 10:00:00 host prog[pid]: "), ISO timestamps, RFC 5424
_PREFIX_3164 = re.compile(r"(?:<\d{1,3}>)?([A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) (\S+) ([^\s\[:]+)(?:\[(\d+)\])?: ")
_PREFIX_ISO = re.compile(r"(?:<\d{1,3}>)?(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?) (\S+) "
                         r"([^\s\[:]+)(?:\[(\d+)\])?: ")
_PREFIX_5424 = re.compile(r"<\d{1,3}>1 (\S+) (\S+) (\S+) (\S+) \S+ (?:-|(?:\[(?:[^\]\\]|\\.)*\])+) ")
# each token consumes the separator before it, so the scan moves from token to token (no lookbehind tried at
# every character); quoted strings and unquoted values are written as unrolled loops
_QUOTED = r'"[^"\\]*(?:\\.[^"\\]*)*"'
_TOKEN = re.compile(rf'(?:^|: |, )(?:part ({_QUOTED})|([A-Za-z][A-Za-z0-9_-]*)=({_QUOTED}|[^,:"]*(?:[,:](?! )[^,:"]*)*))')
_STATUS = re.compile(r"([^:=\"]*?): (?=[A-Za-z][A-Za-z0-9_-]*=)")
_ESCAPE = re.compile(r"\\(.)", re.S)

try:  # the same tokenizer in C, built at install time where a compiler is available
    from mailowl.logs._klmsfast import ndjson as _fast_ndjson
    from mailowl.logs._klmsfast import parse_body as _fast
    from mailowl.logs._klmsfast import parse_line as _fast_line
except ImportError:  # pragma: no cover
    _fast = _fast_line = _fast_ndjson = None

INT_FIELDS = {"size", "rules"}
LIST_FIELDS = {"rcpt_to", "threats"}
NULL_SENDER = "NULL_SENDER_RFC5321"
# orjson writes integers up to 2**64 - 1 and refuses larger ones; a larger number in a log line stays the
# string it was, so one hostile line cannot stop `mailowl logs parse` (_klmsfast.c decides the same)
INT_MAX = 2**64 - 1


def _number(digits: str) -> int | str:
    """int(digits) when orjson can write it, else digits unchanged."""
    # without its leading zeros first: int() refuses more than 4,300 digits, zeros included
    significant = digits.lstrip("0") or "0"
    if len(significant) > 20:
        return digits
    value = int(significant)
    return value if value <= INT_MAX else digits


def _value(raw: str) -> str:
    if raw.startswith('"'):
        raw = raw[1:-1]
        if "\\" in raw:
            raw = _ESCAPE.sub(r"\1", raw)
    return raw


def split_prefix(line: str) -> tuple[dict[str, Any], str]:
    """(syslog fields, the rest of the line)."""
    if not line or line[0] not in "<ADFJMNOS0123456789":
        return {}, line
    match = _PREFIX_3164.match(line) or _PREFIX_ISO.match(line)
    if match:
        prefix: dict[str, Any] = {"timestamp": match.group(1), "host": match.group(2), "program": match.group(3)}
        if match.group(4):
            prefix["pid"] = _number(match.group(4))
        return prefix, line[match.end():]
    match = _PREFIX_5424.match(line)
    if match:
        prefix = {"timestamp": match.group(1), "host": match.group(2), "program": match.group(3)}
        # isdecimal, not isdigit: int() refuses "²", which isdigit accepts
        if match.group(4).isdecimal():
            prefix["pid"] = _number(match.group(4))
        return prefix, line[match.end():]
    return {}, line


def parse(line: str) -> dict[str, Any]:
    """One document for one line, with the flat field names of the well-known grok pattern; a line that
    is not a verdict line comes back as ``{"message": line, "tags": ["_grokparsefailure"]}``."""
    if _fast_line is not None:
        doc = _fast_line(line)
        if doc is not NotImplemented and doc is not None:
            return doc  # type: ignore[no-any-return]
    line = line.rstrip("\r\n")
    prefix, rest = split_prefix(line)
    doc = _fast(rest) if _fast is not None else NotImplemented
    if doc is NotImplemented:
        doc = parse_body(rest)
    if doc is None:
        return {"message": line, "tags": ["_grokparsefailure"], **prefix}
    return {**prefix, **doc} if prefix else doc


def parse_body(rest: str) -> dict[str, Any] | None:
    """The document for a line without its syslog prefix, or None (the reference for _klmsfast.c)."""
    status = _STATUS.match(rest)
    if status is None:
        return None
    body = rest[status.end():]
    tokens = _TOKEN.findall(body)
    # every character must be accounted for: tokens plus one two-character separator between each pair
    covered = 2 * (len(tokens) - 1)
    for part, key, value in tokens:
        covered += len(part) + 5 if part else len(key) + 1 + len(value)
    if not tokens or covered != len(body):
        return None
    doc: dict[str, Any] = {"status_letter": status.group(1)}
    parts: list[dict[str, Any]] = []
    target = doc
    for part, key, value in tokens:
        if part:
            target = {"name": _value(part)}
            parts.append(target)
            continue
        name = key.replace("-", "_")
        text = _value(value)
        if name in INT_FIELDS and text.isascii() and text.isdigit() and "\\" not in value:
            target[name] = _number(text)
        elif name in LIST_FIELDS:
            target[name] = [v for v in text.split(", ") if v] if text else []
        else:
            target[name] = text
    if "mail_from" in doc and not doc["mail_from"]:
        doc["mail_from"] = NULL_SENDER
    if parts:
        doc["part"] = parts
    return doc


def _quote(value: object) -> str:
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ")
    return f'"{text}"'


def format_line(status: str, fields: list[tuple[str, object]], parts: list[tuple[str, list[tuple[str, object]]]]) -> str:
    """Write a verdict line; lists become one quoted value joined with ", "; ints stay unquoted."""
    out = [status.replace(":", " ")]
    for key, value in fields:
        out.append(f"{key}={_render(value)}")
    for name, part_fields in parts:
        out.append(f"part {_quote(name)}, " + ", ".join(f"{k}={_render(v)}" for k, v in part_fields))
    return ": ".join(out)


def _render(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, (list, tuple)):
        return _quote(", ".join(str(v).replace(", ", ",") for v in value))
    return _quote(value)


_MODULES = ("kt", "av", "ap", "as", "ma", "cf")


# RFC 3164 month names are English whatever the locale: strftime's %b and strptime's %b are not
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_NUMBER = {name: number for number, name in enumerate(MONTHS, 1)}
_STAMP_3164 = re.compile(r"([A-Z][a-z]{2}) {1,2}(\d{1,2}) (\d\d):(\d\d):(\d\d)")


def rfc3164_timestamp(now: datetime) -> str:
    """``Nov  4 03:54:01``: day padded with a space, time with zeros, in the clock's own time zone."""
    return f"{MONTHS[now.month - 1]} {now.day:2d} {now.hour:02d}:{now.minute:02d}:{now.second:02d}"


def iso_timestamp(stamp: str, now: datetime | None = None) -> str | None:
    """ISO 8601 for a syslog timestamp; RFC 3164 has no year: the latest one not in the future."""
    if stamp[:4].isdigit():
        return stamp
    match = _STAMP_3164.fullmatch(stamp)
    if match is None or match.group(1) not in _MONTH_NUMBER:
        return None
    now = (now or datetime.now()).replace(tzinfo=None, microsecond=0)
    month, day, hour, minute, second = _MONTH_NUMBER[match.group(1)], *(int(g) for g in match.groups()[1:])
    for year in range(now.year, now.year - 5, -1):  # four years back reach the last 29 February
        try:
            parsed = datetime(year, month, day, hour, minute, second)
        except ValueError:
            continue
        if parsed <= now + timedelta(days=1):
            return parsed.isoformat()
    return None


def _file(name: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name}
    extension = name.rpartition(".")[2] if name else ""
    if name and "." in name.strip(".") and 0 < len(extension) <= 10:
        out["extension"] = extension.lower()
    return out


def to_ecs(doc: dict[str, Any]) -> dict[str, Any]:
    """Elastic Common Schema fields for a parsed line; KLMS-specific values under ``klms``."""
    stamp = iso_timestamp(doc["timestamp"]) if "timestamp" in doc else None
    if "tags" in doc:
        return {"message": doc["message"], "tags": doc["tags"], **({"@timestamp": stamp} if stamp else {})}
    vendor = {k: v for k, v in doc.items() if k not in (
        "timestamp", "host", "program", "pid", "message_id", "mail_from", "rcpt_to", "relay_ip", "part", "rules")}
    out: dict[str, Any] = {"event": {"kind": "event", "category": ["email"], "action": doc.get("action"),
                                     "outcome": "success" if doc.get("status_letter") == "clean" else "failure"},
                           "email": {}, "klms": vendor}
    if stamp:
        out["@timestamp"] = stamp
    if "host" in doc:
        out["host"] = {"hostname": doc["host"]}
    if "program" in doc:
        out["process"] = {"name": doc["program"], **({"pid": doc["pid"]} if "pid" in doc else {})}
    email: dict[str, Any] = out["email"]
    if "message_id" in doc:
        email["message_id"] = doc["message_id"]
    if "mail_from" in doc:
        email["from"] = {"address": [doc["mail_from"]]}
    if "rcpt_to" in doc:
        email["to"] = {"address": doc["rcpt_to"]}
    if "part" in doc:
        email["attachments"] = [{"file": _file(p.get("name")), "klms": {k: v for k, v in p.items() if k != "name"}}
                                for p in doc["part"]]
    if "relay_ip" in doc:
        out["source"] = {"ip": doc["relay_ip"]}
    if "rules" in doc:
        out["rule"] = {"id": str(doc["rules"])}
    return out


CHUNK = 1 << 20


def line_blocks(source: BinaryIO, size: int = CHUNK) -> Iterator[list[str]]:
    """The lines of a binary stream, without their LF, a block at a time: one read and one decode per
    block instead of per line (invalid UTF-8 becomes U+FFFD, as decoding each line would make it)."""
    rest = b""
    while chunk := source.read(size):
        if rest:
            chunk = rest + chunk
        cut = chunk.rfind(b"\n") + 1
        if cut == 0:  # a line longer than the block: keep reading
            rest = chunk
            continue
        rest = chunk[cut:]
        yield chunk[:cut - 1].decode("utf-8", "replace").split("\n")
    if rest:
        yield [rest.decode("utf-8", "replace")]


def to_ndjson(source: BinaryIO, out: BinaryIO, ecs: bool = True) -> int:
    """One JSON document per line of ``source`` (see parse and to_ecs), written a block at a time;
    returns the number of lines."""
    newline = orjson.OPT_APPEND_NEWLINE
    dumps, write, whole = orjson.dumps, out.write, _fast_line
    count = 0
    if not ecs and _fast_ndjson is not None:
        # the C module writes a block's documents itself; a dict per line and orjson were most of the time
        block, fallback = _fast_ndjson, _dumps_line
        for lines in line_blocks(source):
            write(block(lines, fallback))
            count += len(lines)
        return count
    for lines in line_blocks(source):
        for line in lines:
            # the C whole-line parser straight away: a Python call per line is a tenth of the time
            doc = whole(line) if whole is not None else None
            if doc is None or doc is NotImplemented:
                doc = parse(line)
            write(dumps(to_ecs(doc) if ecs else doc, option=newline))
        count += len(lines)
    return count


def _dumps_line(line: str) -> bytes:
    """A line's klms document as _klmsfast.ndjson writes it, for the lines it leaves to Python."""
    return orjson.dumps(parse(line), option=orjson.OPT_APPEND_NEWLINE)
