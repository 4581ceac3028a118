"""KLMS verdict lines: the reference examples (groundwork for the log analytics issue)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailowl.logs.klms import format_line, parse, to_ecs


def test_reference_lines() -> None:
    doc = parse('not processed: message-id="<666@from.hell>": relay-ip="1.6.6.6": kt-reason="blacklist", '
                'av-reason="blacklist": action="Rejected": rules="2": size=1111: mail-from="goat@from.hell": '
                'rcpt-to="angel@firma.ru"')
    assert doc == {"status_letter": "not processed", "message_id": "<666@from.hell>", "relay_ip": "1.6.6.6",
                   "kt_reason": "blacklist", "av_reason": "blacklist", "action": "Rejected", "rules": 2,
                   "size": 1111, "mail_from": "goat@from.hell", "rcpt_to": ["angel@firma.ru"]}
    parts = parse('Nov 23 10:00:00 mx1 klms[12]: infected: message-id="<a@b>": relay-ip="10.0.0.1": '
                  'action="Skipped, Put in backup": backup-reason="AntiSpam": size=5: mail-from="": '
                  'rcpt-to="a@x.ru, b@y.ru": av-status="Infected": part "Смета.xlsx", av-status="Encrypted": '
                  'part "P.xlsx", av-status="Infected", threats="HEUR:Exploit.MSOffice.CVE-2018-0802.gen, UDS:x"')
    assert parts["host"] == "mx1" and parts["pid"] == 12 and parts["mail_from"] == "NULL_SENDER_RFC5321"
    assert parts["rcpt_to"] == ["a@x.ru", "b@y.ru"] and parts["backup_reason"] == "AntiSpam"
    assert parts["part"] == [{"name": "Смета.xlsx", "av_status": "Encrypted"},
                             {"name": "P.xlsx", "av_status": "Infected",
                              "threats": ["HEUR:Exploit.MSOffice.CVE-2018-0802.gen", "UDS:x"]}]


def test_garbage_is_kept_with_a_tag() -> None:
    for line in ["", "hello world", 'clean: message-id="x": oops "broken', "clean: =: :"]:
        doc = parse(line)
        assert doc["tags"] == ["_grokparsefailure"] and doc["message"] == line


def test_written_lines_parse_back() -> None:
    line = format_line("infected", [("message-id", "<m@x>"), ("relay-ip", "192.0.2.1"), ("action", "Rejected"),
                                    ("size", 42), ("mail-from", 'odd "name": here'), ("rcpt-to", ["a@x", "b@y"])],
                       [("in: voice, 1.bat", [("av-status", "Infected"), ("threats", ["expressions"])])])
    doc = parse(line)
    assert doc["mail_from"] == 'odd "name": here' and doc["rcpt_to"] == ["a@x", "b@y"] and doc["size"] == 42
    assert doc["part"] == [{"name": "in: voice, 1.bat", "av_status": "Infected", "threats": ["expressions"]}]


def test_logs_parse_command(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text('Nov 23 10:00:00 mx1 klms[12]: clean: message-id="<a@b>": relay-ip="10.0.0.1": action="Skipped": '
                   'size=5: mail-from="x@y": rcpt-to="a@x.ru, b@y.ru"\nnot a verdict line\n')
    flat = subprocess.run([sys.executable, "-m", "mailowl.cli", "logs", "parse", "--schema", "klms", str(log)],
                          capture_output=True, text=True, check=True).stdout.splitlines()
    assert [json.loads(line).get("rcpt_to") for line in flat] == [["a@x.ru", "b@y.ru"], None]
    assert json.loads(flat[1])["tags"] == ["_grokparsefailure"]
    ecs = subprocess.run([sys.executable, "-m", "mailowl.cli", "logs", "parse"], input=log.read_text(),
                         capture_output=True, text=True, check=True).stdout.splitlines()
    doc = json.loads(ecs[0])
    assert doc["email"]["to"]["address"] == ["a@x.ru", "b@y.ru"] and doc["source"]["ip"] == "10.0.0.1"
    assert doc["klms"]["status_letter"] == "clean" and doc["host"]["hostname"] == "mx1"


KEYS = ["message-id", "relay-ip", "kt-reason", "av-reason", "action", "backup-reason", "rules", "size", "mail-from",
        "rcpt-to", "kt-status", "av-status", "as-status", "as-method", "dmarc", "spf", "dkim", "cf-status"]
VALUE = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from(list(',:"\\ =')),
                max_size=30)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(KEYS), unique=True, min_size=1), st.data(),
       st.lists(st.tuples(VALUE, st.lists(VALUE.filter(lambda v: ", " not in v and v.strip() == v and v), max_size=3)),
                max_size=3),
       st.sampled_from(["clean", "not clean", "put to asp quarantine", "infected"]))
def test_generated_lines_parse_back(keys: list[str], data: st.DataObject, parts: list[tuple[str, list[str]]],
                                    status: str) -> None:
    fields: list[tuple[str, object]] = []
    for key in keys:
        if key in ("size", "rules"):
            fields.append((key, data.draw(st.integers(0, 10**9))))
        elif key == "rcpt-to":
            fields.append((key, data.draw(st.lists(VALUE.filter(lambda v: ", " not in v and v.strip() == v and v),
                                                   max_size=4))))
        else:
            fields.append((key, data.draw(VALUE)))
    part_fields = [(name, [("av-status", "Infected")] + ([("threats", threats)] if threats else []))
                   for name, threats in parts]
    doc = parse(format_line(status, fields, part_fields))
    assert "tags" not in doc, doc
    assert doc["status_letter"] == status
    for key, value in fields:
        name = key.replace("-", "_")
        if name == "mail_from" and value == "":
            assert doc[name] == "NULL_SENDER_RFC5321"
        else:
            assert doc[name] == value, (key, value, doc)
    assert [p["name"] for p in doc.get("part", [])] == [name for name, _ in parts]
    for (_, threats), got in zip(parts, doc.get("part", []), strict=True):
        assert got.get("threats", []) == threats


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_garbage_never_crashes(line: str) -> None:
    doc = parse(line)
    assert isinstance(doc, dict) and ("tags" in doc or "status_letter" in doc)


def test_c_tokenizer_is_built() -> None:
    from mailowl.logs import klms

    assert klms._fast is not None, "mailowl.logs._klmsfast was not built (is a C compiler installed?)"


PIECES = st.sampled_from(['clean', 'not clean', ': ', ', ', 'message-id=', 'size=', 'rules=', 'rcpt-to=', 'x-y=',
                          '"', '\\', 'a', 'ü', '1', '=', ':', ',', ' ', 'part "', 'threats="a, b"', '""', '12',
                          '007', '18446744073709551616', '9' * 4400])


@settings(max_examples=1500, deadline=None)
@given(st.lists(PIECES, max_size=40))
def test_c_and_python_tokenizers_agree(pieces: list[str]) -> None:
    from mailowl.logs import klms

    body = "".join(pieces)
    if klms._fast is None:
        return
    fast = klms._fast(body)
    if fast is NotImplemented:
        return
    assert fast == klms.parse_body(body), body


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(KEYS), unique=True, min_size=1), st.lists(VALUE, min_size=18, max_size=18))
def test_c_and_python_agree_on_formatted_lines(keys: list[str], values: list[str]) -> None:
    from mailowl.logs import klms

    line = format_line("infected", list(zip(keys, values, strict=False)), [("a.bat", [("threats", ["x", "y"])])])
    assert klms._fast(line) == klms.parse_body(line)


def _python_parse(line: str) -> dict[str, object]:
    from mailowl.logs import klms

    line = line.rstrip("\r\n")
    prefix, rest = klms.split_prefix(line)
    doc = klms.parse_body(rest)
    return {"message": line, "tags": ["_grokparsefailure"], **prefix} if doc is None else {**prefix, **doc}


PREFIXES = st.sampled_from(["", "Nov 23 10:00:00 mx1 klms[123]: ", "<22>Nov  3 01:02:03 mx.example.org mailowl: ",
                            "Nov 23 10:00:00 mx1 klms: ", "Jan 1 1:1:1 x y: ", "Nov 23 10:00:00 mx1 kl[ms]: ",
                            "2026-11-23T10:00:00Z mx1 klms[1]: ", "<13>1 2026-11-23T10:00:00Z mx1 klms 12 - - ",
                            "Nov 23 10:00:00 mx1 klmß[1]: ", "Nov 23 10:00:00  mx1 klms[1]: "])


@settings(max_examples=800, deadline=None)
@given(PREFIXES, st.lists(PIECES, max_size=30), st.sampled_from(["", "\n", "\r\n"]))
def test_whole_line_fast_path_agrees(prefix: str, pieces: list[str], end: str) -> None:
    from mailowl.logs import klms

    line = prefix + "".join(pieces) + end
    assert klms.parse(line) == _python_parse(line)
    assert klms.parse(prefix + "clean: message-id=\"<a@b>\": size=3" + end) == \
        _python_parse(prefix + "clean: message-id=\"<a@b>\": size=3" + end)


def _write_calls(summary: str) -> int:
    for line in summary.splitlines():
        fields = line.split()
        if fields and fields[-1] == "write":
            return int(fields[3])
    return 0


def test_logs_parse_writes_in_blocks_even_unbuffered(tmp_path: Path) -> None:
    """PYTHONUNBUFFERED=1 (most container images) must not turn every output line into a write call."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed (scripts/bootstrap --test installs it)")
    source, out, summary = tmp_path / "in.log", tmp_path / "out.ndjson", tmp_path / "strace.txt"
    count = 20_000
    with source.open("w") as handle:
        for n in range(count):
            handle.write(f"Nov {n % 28 + 1:2d} {n % 24:02d}:00:00 mx1 klms[12]: " + format_line(
                "clean", [("message-id", f"<{n}@x>"), ("relay-ip", "10.0.0.1"), ("action", "Skipped"), ("size", n),
                          ("mail-from", "a@x"), ("rcpt-to", ["b@y", "c@z"])], []) + "\n")
    for schema in ("klms", "ecs"):
        with out.open("wb") as stdout:
            subprocess.run(["strace", "-f", "-c", "-e", "trace=write", "-o", str(summary), sys.executable, "-m",
                            "mailowl.cli", "logs", "parse", "--schema", schema, str(source)],
                           stdout=stdout, env={**os.environ, "PYTHONUNBUFFERED": "1"}, check=True)
        docs = [json.loads(line) for line in out.read_bytes().splitlines()]
        assert len(docs) == count and not [d for d in docs if "tags" in d]
        calls = _write_calls(summary.read_text())
        # 1 MiB blocks; a little slack for anything else the interpreter writes
        assert 0 < calls <= out.stat().st_size // 2**20 + 10, (schema, calls, out.stat().st_size)


def test_block_reader_gives_the_documents_of_line_by_line_parsing() -> None:
    import io

    from mailowl.logs.klms import line_blocks, to_ndjson

    line = 'Nov 23 10:00:00 mx1 klms[12]: clean: message-id="<a@b>": size=5: rcpt-to="a@x.ru, b@y.ru"'
    long = "clean: message-id=\"<" + "x" * 3000 + "@b>\": size=1"
    text = (f"{line}\r\n{long}\n\nnot a verdict line\n".encode() + b"clean: mail-from=\"\xff\xfe\": size=2\n"
            + "клмс: ü\n".encode() + line.encode())  # the last line has no LF
    expected = [orjson.dumps(parse(raw.decode("utf-8", "replace"))) for raw in io.BytesIO(text)]
    for size in (1, 7, 100, 1 << 20):  # blocks that cut lines, characters and CRLF in every place
        assert [x for block in line_blocks(io.BytesIO(text), size) for x in block] == \
            [raw.decode("utf-8", "replace").removesuffix("\n") for raw in io.BytesIO(text)]
    out = io.BytesIO()
    assert to_ndjson(io.BytesIO(text), out, ecs=False) == len(expected)
    assert out.getvalue().splitlines() == expected
    out = io.BytesIO()
    to_ndjson(io.BytesIO(text), out, ecs=True)
    assert [orjson.loads(x) for x in out.getvalue().splitlines()] == [to_ecs(orjson.loads(x)) for x in expected]


# ---- the C block writer (_klmsfast.ndjson) against orjson.dumps(parse(line)) ----

def _expected(lines: list[str]) -> bytes:
    return b"".join(orjson.dumps(parse(line), option=orjson.OPT_APPEND_NEWLINE) for line in lines)


def _ndjson(lines: list[str]) -> tuple[bytes, list[str]]:
    """The block's NDJSON from C and the lines it left to the fallback."""
    from mailowl.logs import klms

    if klms._fast_ndjson is None:
        pytest.skip("mailowl.logs._klmsfast was not built")
    left: list[str] = []

    def fallback(line: str) -> bytes:
        left.append(line)
        return klms._dumps_line(line)

    return klms._fast_ndjson(lines, fallback), left


# every character class orjson treats differently: controls (short and \u00xx escapes), quote, backslash,
# DEL, non-ASCII of 2, 3 and 4 bytes, U+2028, and the grammar's own separators; plain letters to make up words
CHARS = list('\x00\x01\x08\t\n\x0b\x0c\r\x1f"\\\x7fü€\U0001f600\u2028\xa0,:=- ') + list("abcxyz019.@<>")
TEXT = st.text(alphabet=st.sampled_from(CHARS) | st.characters(blacklist_categories=("Cs",)), max_size=12)
# unquoted values that stay within the format more often than not
PLAIN = st.text(alphabet=st.sampled_from([c for c in CHARS if c != '"']), max_size=12).map(
    lambda v: re.sub(r"([,:]) ", r"\1_", v))
DIGITS = st.one_of(st.integers(0, 10**6).map(str), st.integers(0, 2**70).map(str),
                   st.sampled_from(["0", "007", "000", "18446744073709551615", "18446744073709551616",
                                    "0018446744073709551615", "9" * 25, "0" * 4400 + "12", "1" * 4400, "12a", ""]))
KEY = st.one_of(st.sampled_from(KEYS), st.sampled_from(KEYS + ["part", "name", "status-letter", "status_letter", "host", "pid", "timestamp",
                                        "program", "mail_from", "rcpt_to", "message_id", "x" * 70]),
                st.builds(str.__add__, st.sampled_from("aZ"), st.text(alphabet="aZ09_-", max_size=6)))


@st.composite
def _value(draw: st.DrawFn, key: str) -> str:
    if key in ("size", "rules") and draw(st.booleans()):
        digits = draw(DIGITS)
        return f'"{digits}"' if draw(st.booleans()) else digits
    if draw(st.booleans()):  # quoted, with escapes
        raw = draw(TEXT)
        return '"' + raw.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return draw(st.one_of(PLAIN, PLAIN, TEXT))  # TEXT: often not in the format, which is tested too


SYSLOG_3164 = st.builds(
    lambda pri, day, host, prog, pid: f"{pri}Nov {day} 10:00:00 {host} {prog}{pid}: ",
    st.sampled_from(["", "<13>", "<13>", "<1234>", "<>"]), st.sampled_from(["23", " 3", "03"]),
    st.sampled_from(["mx1", "mx1", 'm"x', "m\\x", "m\x7fx", "mx.example.org"]),
    st.sampled_from(["klms", "klms", "k\\l", 'k"l', "mailowl"]),
    st.sampled_from(["", "[1]", "[12]", "[007]", "[18446744073709551616]", "[" + "9" * 30 + "]", "[]",
                     "[1a]"]))


@st.composite
def _verdict_line(draw: st.DrawFn) -> str:
    prefix = draw(st.one_of(PREFIXES, st.just(""), SYSLOG_3164, SYSLOG_3164))
    status = draw(st.one_of(st.sampled_from(["clean", "not clean", "infected", "", "a\\b", "ü\x01", "x\x7f€"]), TEXT))
    out = [prefix, status]
    for n in range(draw(st.integers(1, 8))):
        separator = draw(st.sampled_from([": ", ", "])) if n else ": "  # the status ends at ": "
        if draw(st.integers(0, 5)) == 0:
            name = draw(TEXT)
            out += [separator, 'part "' + name.replace("\\", "\\\\").replace('"', '\\"') + '"']
            continue
        key = draw(KEY)
        out += [separator, key, "=", draw(_value(key.replace("-", "_")))]
    line = "".join(out)
    if draw(st.integers(0, 6)) == 0:  # a near miss: one character added or taken away somewhere
        at = draw(st.integers(0, len(line)))
        line = line[:at] + draw(st.sampled_from(['"', "\\", ":", ",", " ", "=", "x", ""])) + line[at + 1:]
    return line + draw(st.sampled_from(["", "", "\r", "\r\n", "\n"]))


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.one_of(_verdict_line(), _verdict_line(), _verdict_line(), st.text(max_size=60)), max_size=4))
def test_block_writer_matches_orjson_of_parse(lines: list[str]) -> None:
    got, _ = _ndjson(lines)
    assert got == _expected(lines)


def test_block_writer_handles_the_common_lines_itself() -> None:
    lines = ['Nov 23 10:00:00 mx1 klms[12]: infected: message-id="<a@b>": relay-ip="10.0.0.1": '
             'action="Skipped, Put in backup": size=005: rules="3": mail-from="": rcpt-to="a@x.ru, , b@y.ru": '
             'av-status="Infected": part "Смета \\"1\\".xlsx", av-status="Encrypted", size=1: '
             'part "P.xlsx", threats="HEUR:Exploit, UDS:x", mail-from=""',
             'clean: mail-from="tab\there\x01\x7f": rcpt-to="": threats=', "not a verdict line", "",
             "Nov 23 10:00:00 mx1 klms[12]: no verdict here", 'clean: size=99999999999999999999999: rules=18446744073709551615']
    got, left = _ndjson(lines)
    assert got == _expected(lines) and left == []
    docs = [orjson.loads(x) for x in got.splitlines()]
    assert docs[0]["mail_from"] == "NULL_SENDER_RFC5321" and docs[0]["part"][0]["name"] == 'Смета "1".xlsx'
    assert docs[0]["part"][1]["mail_from"] == "" and docs[0]["rcpt_to"] == ["a@x.ru", "b@y.ru"]
    assert docs[5] == {"status_letter": "clean", "size": "99999999999999999999999", "rules": 2**64 - 1}


def test_block_writer_leaves_the_unusual_to_python() -> None:
    lines = ["clean: size=1, size=2", "clean: part=x", 'clean: a=b: part "x", name="y"', "clean: status-letter=x",
             "Nov 23 10:00:00 mx1 klms[12]: clean: host=x", "<13>1 2026-11-23T10:00:00Z mx1 klms 12 - - clean: a=b",
             "Nov 23 10:00:00 mx1 klms[1a]: clean: a=b", "clean: " + "k" * 70 + "=1", "clean: a=\ud800"]
    got, left = _ndjson(lines[:-1])
    assert got == _expected(lines[:-1]) and left == lines[:-1]
    with pytest.raises(UnicodeEncodeError):  # what the fallback (parse) does with a lone surrogate
        _ndjson(lines[-1:])


def test_huge_numbers_stay_strings_and_do_not_stop_the_command(tmp_path: Path) -> None:
    huge = "1" + "0" * 30
    log = tmp_path / "mail.log"
    log.write_text(f"Nov 23 10:00:00 mx1 klms[{huge}]: clean: size={huge}: rules=18446744073709551616\n"
                   f"<13>1 2026-11-23T10:00:00Z mx1 klms {huge} - - clean: size={'9' * 5000}\n"
                   "<13>1 2026-11-23T10:00:00Z mx1 klms \u00b2 - - clean: size=18446744073709551615\n")
    for schema in ("klms", "ecs"):
        run = subprocess.run([sys.executable, "-m", "mailowl.cli", "logs", "parse", "--schema", schema, str(log)],
                             capture_output=True, check=True)
        docs = [json.loads(line) for line in run.stdout.splitlines()]
        assert len(docs) == 3, run.stderr
        if schema == "klms":
            assert docs[0]["pid"] == huge and docs[0]["size"] == huge and docs[0]["rules"] == "18446744073709551616"
            assert docs[1]["pid"] == huge and docs[1]["size"] == "9" * 5000
            assert "pid" not in docs[2] and docs[2]["size"] == 2**64 - 1


GOOD_PREFIXES = st.sampled_from(["", "Nov 23 10:00:00 mx1 klms[123]: ", "<22>Nov  3 01:02:03 mx.example.org mailowl: ",
                                 'Nov 03 10:00:00 m"x\\y k\\l"[007]: ', "<13>Nov 23 10:00:00 mx1 klms[" + "9" * 25 + "]: "])


@settings(max_examples=500, deadline=None)
@given(GOOD_PREFIXES, st.lists(st.sampled_from(KEYS), unique=True, min_size=1), st.data(),
       st.lists(st.tuples(TEXT, st.lists(st.sampled_from(KEYS[9:]), unique=True, max_size=4)), max_size=3),
       st.sampled_from(["clean", "not clean", "x\x01\x7fü€\U0001f600\\"]))
def test_block_writer_writes_verdict_lines_itself(prefix: str, keys: list[str], data: st.DataObject,
                                                  parts: list[tuple[str, list[str]]], status: str) -> None:
    """Lines as mailowl and KLMS write them never need the fallback, whatever their values hold."""
    def field(key: str) -> tuple[str, object]:
        if key in ("size", "rules"):
            return key, data.draw(st.one_of(st.integers(0, 2**64 - 1), st.integers(2**64, 2**80), DIGITS))
        if key in ("rcpt-to", "threats"):
            return key, data.draw(st.lists(TEXT, max_size=4))
        return key, data.draw(st.one_of(TEXT, st.just("")))

    line = prefix + format_line(status, [field(key) for key in keys],
                                [(name, [field(key) for key in part_keys]) for name, part_keys in parts])
    got, left = _ndjson([line])
    assert left == [] and got == _expected([line])
