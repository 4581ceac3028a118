"""Every built-in rule, PeekabooAV's semantics first."""

from __future__ import annotations

import io
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mailowl.results import Result
from mailowl.rules import RulesetError
from mailowl.store.journal import JournalEntry, KnownReport

from .helpers import engine, run

OFFICE = Path(__file__).parent / "data" / "office"
WHITELIST = {"whitelist": ["text/plain", "inode/x-empty"]}
GREYLIST = {"greylist": ["application/pdf", "application/octet-stream"]}


def journal(*entries: tuple[Result, str, int]) -> KnownReport:
    now = datetime.now(UTC)
    return KnownReport([JournalEntry(now - timedelta(days=d), r, reason) for r, reason, d in entries])


def test_result_order() -> None:
    assert Result.unchecked < Result.unknown < Result.ignored < Result.good < Result.failed < Result.bad


def test_known_returns_worst_earlier_verdict_and_stops() -> None:
    eng = engine(["known", "final_rule"])
    v = run(eng, b"abc", journal=journal((Result.good, "fine", 3), (Result.bad, "evil", 2), (Result.unknown, "?", 1)))
    assert (v.result, v.reason) == (Result.bad, "evil")
    assert [r.rule for r in v.rules] == ["known"]


def test_known_continues_for_unknown_samples() -> None:
    v = run(engine(["known", "final_rule"]), b"abc")
    assert [r.rule for r in v.rules] == ["known", "final_rule"]
    assert v.result is Result.unknown


@pytest.mark.parametrize(("size", "result", "stops"), [(4, Result.ignored, True), (5, Result.ignored, True),
                                                       (6, Result.unknown, False)])
def test_file_larger_than(size: int, result: Result, stops: bool) -> None:
    v = run(engine(["file_larger_than", "final_rule"], file_larger_than={"bytes": 5}), b"x" * size)
    assert v.rules[0].result is result
    assert (len(v.rules) == 1) is stops


def test_file_larger_than_default_and_bad_option() -> None:
    assert run(engine(["file_larger_than", "final_rule"]), b"12345").result is Result.ignored
    with pytest.raises(RulesetError, match=r"\[file_larger_than\] bytes: expected a whole number"):
        engine(["file_larger_than"], file_larger_than={"bytes": "five"})


def test_whitelist_needs_every_type_listed() -> None:
    eng = engine(["file_type_on_whitelist", "final_rule"], file_type_on_whitelist=WHITELIST)
    assert run(eng, b"just some text here", "a.txt", "text/plain").result is Result.ignored
    # declared type not whitelisted: not ignored
    v = run(eng, b"just some text here", "a.txt", "application/octet-stream")
    assert v.rules[0].result is Result.unknown and len(v.rules) == 2
    # .exe name gives a type that is not whitelisted
    assert run(eng, b"just some text here", "a.exe").rules[0].result is Result.unknown


def test_greylist_continues_on_listed_or_unknown_types_only() -> None:
    eng = engine(["file_type_on_greylist", "final_rule"], file_type_on_greylist=GREYLIST)
    assert len(run(eng, b"%PDF-1.4\n" + b"x" * 50, "a.pdf", "application/pdf").rules) == 2
    stopped = run(eng, b"GIF89a\x01\x00\x01\x00\x00\x00\x00;" + b"\x00" * 50, "a.gif", "image/gif")
    assert len(stopped.rules) == 1 and stopped.result is Result.unknown
    assert "image/gif" in stopped.reason


def test_lists_must_not_be_empty() -> None:
    with pytest.raises(RulesetError, match="whitelist"):
        engine(["file_type_on_whitelist"], file_type_on_whitelist={"whitelist": []})
    with pytest.raises(RulesetError, match="greylist"):
        engine(["file_type_on_greylist"])


def test_office_macro() -> None:
    eng = engine(["office_macro", "final_rule"])
    bad = run(eng, (OFFICE / "sample_with_vba.ppt").read_bytes(), "sample_with_vba.ppt")
    assert bad.result is Result.bad and "macro" in bad.reason
    xlm = run(eng, (OFFICE / "excel4_sample_macro.xls").read_bytes(), "excel4_sample_macro.xls")
    assert xlm.result is Result.bad
    clean = run(eng, (OFFICE / "harmless-clean.docm").read_bytes(), "harmless-clean.docm")
    assert clean.result is Result.unknown and len(clean.rules) == 2


def test_plain_text_is_not_a_macro() -> None:
    # olevba parses text as VBA source; like PeekabooAV, that alone is no macro
    text = b"Sub AutoOpen()\r\n  Shell \"calc.exe\"\r\nEnd Sub\r\n"
    assert run(engine(["office_macro", "final_rule"]), text, "macro.txt").result is Result.unknown


def test_office_macro_with_suspicious_keyword() -> None:
    eng = engine(["office_macro_with_suspicious_keyword", "final_rule"],
                 office_macro_with_suspicious_keyword={"keyword": ["auto_?open"]})
    xlm = run(eng, (OFFICE / "excel4_sample_macro.xls").read_bytes(), "x.xls")
    assert xlm.result is Result.bad and "auto_?open" in xlm.reason
    no_keyword = run(eng, (OFFICE / "sample_with_vba.ppt").read_bytes(), "x.ppt")
    assert no_keyword.result is Result.unknown
    eng2 = engine(["office_macro_with_suspicious_keyword", "final_rule"],
                  office_macro_with_suspicious_keyword={"keyword": ["MSGBOX"]})  # case-insensitive
    assert run(eng2, (OFFICE / "sample_with_vba.ppt").read_bytes(), "x.ppt").result is Result.bad
    with pytest.raises(RulesetError, match="bad regular expression"):
        engine(["office_macro_with_suspicious_keyword"], office_macro_with_suspicious_keyword={"keyword": ["("]})


def test_expressions_first_match_decides_with_peekaboo_reason() -> None:
    eng = engine(["expressions", "final_rule"], expressions={"expression": [
        "sample.file_extension == 'txt' -> ignore",
        "sample.file_extension in {'bat', 'exe'} -> bad",
        "sample.file_size > 0 -> good",
    ]})
    v = run(eng, b"@echo off", "x.bat")
    assert (v.result, v.reason) == (Result.bad, "The expression (1) classified the sample as Result.bad")
    assert run(eng, b"hello", "x.txt").result is Result.ignored
    assert run(eng, b"hello", "x.pdf").result is Result.good


def test_expressions_none_holding_continues() -> None:
    eng = engine(["expressions", "final_rule"], expressions={"expression": ["sample.file_size > 100 -> bad"]})
    v = run(eng, b"small")
    assert [r.rule for r in v.rules] == ["expressions", "final_rule"]


def test_expression_errors_stop_startup_with_position() -> None:
    with pytest.raises(RulesetError, match=r"expression \(1\).*line 1, column 6"):
        engine(["expressions"], expressions={"expression": ["True -> bad", "True = False -> bad"]})
    with pytest.raises(RulesetError, match="Cuckoo is not supported"):
        engine(["expressions"], expressions={"expression": ["cuckooreport.score > 4 -> bad"]})


def test_a_failing_rule_gives_failed_never_bad() -> None:
    eng = engine(["expressions", "final_rule"], expressions={"expression": ["sample.file_size > 5 and sample.file_size < 'x' -> bad"]})
    v = run(eng, b"content")
    assert v.result is Result.failed
    assert "Rule 'expressions' aborted with error" in v.reason and "expression (0)" in v.reason
    assert [r.rule for r in v.rules] == ["expressions"]


def test_worst_result_wins_with_last_reason() -> None:
    eng = engine(["expressions", "final_rule"], expressions={"expression": ["True -> good"]})
    # good from expressions stops; final_rule never runs
    assert run(eng, b"x").result is Result.good
    eng = engine(["file_larger_than", "final_rule"], file_larger_than={"bytes": 1})
    v = run(eng, b"xyz")
    assert v.reason == "File does not seem to exhibit recognizable malicious behaviour"  # unknown == unknown: last wins


def test_knownreport_in_expressions() -> None:
    eng = engine(["expressions", "final_rule"], expressions={"expression": [
        "knownreport.known and knownreport.first < 14 -> knownreport.result"]})
    assert run(eng, b"x", journal=journal((Result.good, "ok", 3))).result is Result.good
    assert run(eng, b"x", journal=journal((Result.good, "ok", 30))).result is Result.unknown


def test_pe_facts_for_expressions() -> None:
    eng = engine(["pe", "expressions", "final_rule"], expressions={"expression": ["pereport.is_pe -> bad"]})
    assert run(eng, b"MZ" + b"\x00" * 100, "x.exe").result is Result.unknown  # not a valid PE
    assert run(eng, b"not an exe at all", "x.exe").rules[0].reason == "Not a PE executable"


def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


ARCHIVE_RULES = ["archive", "expressions", "final_rule"]
BAT_IS_BAD = {"expression": ["sample.file_extension == 'bat' -> bad"]}


def test_archive_member_verdict_decides() -> None:
    eng = engine(ARCHIVE_RULES, expressions=BAT_IS_BAD)
    bad = run(eng, _zip({"readme.txt": b"hi", "run.bat": b"@echo off"}), "x.zip")
    assert bad.result is Result.bad and "run.bat" in bad.reason
    clean = run(eng, _zip({"readme.txt": b"hi"}), "x.zip")
    assert clean.result is Result.unknown
    assert "1 member" in clean.rules[0].reason


def test_archive_yarareport_attributes_in_expressions() -> None:
    eng = engine(["archive", "expressions", "final_rule"], expressions={"expression": [
        "archivereport.member_count > 1 and 'a.txt' in archivereport.members -> bad"]})
    assert run(eng, _zip({"a.txt": b"1", "b.txt": b"2"})).result is Result.bad
