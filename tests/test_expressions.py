"""The expression language as PeekabooAV 2.1 has it (tests/test_expr_differential.py asks PeekabooAV itself)."""

from __future__ import annotations

from typing import Any

import pytest

from mailowl.expr import ExpressionError, compile_expression, load
from mailowl.expr.evaluate import NotAResult, UnknownAttribute
from mailowl.expr.schema import REPORTS, SCHEMA, from_json
from mailowl.results import Result

FACTS: dict[str, dict[str, Any]] = {
    "sample": {"filename": "smime.p7s", "name_declared": "smime.p7s", "type_declared": "text/plain",
               "file_extension": "p7s", "file_size": 100, "content_disposition": None, "sha256sum": "00"},
    "filereport": {"mime_types": ["text/plain"], "type_by_content": "text/plain", "type_by_name": None,
                   "type_as_text": "ASCII text"},
    "knownreport": {"known": True, "result": "good", "last_result": "good", "worst_result": "good", "first": 3,
                    "last": 1},
    "olereport": {"has_office_macros": False, "vba_code": "", "has_autoexec": False, "detected_autoexec": "[]",
                  "is_suspicious": False, "detected_suspicious": "[]"},
}


def ev(text: str, dialect: str = "peekaboo", **changes: dict[str, Any]) -> Result | None:
    facts = {name: {**values, **changes.get(name, {})} for name, values in FACTS.items()}
    reports = from_json(facts)
    return compile_expression(text, dialect=dialect).evaluate(reports.__getitem__)


def holds(condition: str, dialect: str = "peekaboo", **changes: dict[str, Any]) -> bool:
    return ev(f"{condition} -> bad", dialect, **changes) is Result.bad


@pytest.mark.parametrize("condition", [
    "1 + 2 * 3 == 7", "(1 + 2) * 3 == 9", "2 ** 3 ** 2 == 512", "-2 ** 2 == -4", "10 - 4 - 3 == 3",
    "7 / 2 == 3.5", "7 // 2 == 3", "7 % 4 == 3", "1 << 4 == 16", "256 >> 4 == 16", "6 & 3 == 2",
    "6 ^ 3 == 5", "6 | 3 == 7", "~0 == -1", "+3 == 3", "1 + 2 << 1 == 6", "1 | 2 ^ 3 & 4 == 3",
    "1 < 2", "2 <= 2", "3 > 2", "3 >= 3", "1 != 2", "1 < 2 < 3", "not 3 < 2 < 4",
    "'a' in ['a', 'b']", "'c' not in ['a', 'b']", "'a' in {'a'}", "None is None", "1 is not None",
    "{1, 2} isdisjoint {3}", "not {1, 2} isdisjoint {2}", "{'a'} <= {'a', 'b'}", "{'a'} | {'b'} == {'a', 'b'}",
    "True and not False", "False or True", "not False and True", "not (True and False)",
    "1 == 1 and 2 == 2 or 1 == 2", "1.5 + 1.5 == 3.0", "'ab' + 'cd' == 'abcd'", "[1, 2] == [1, 2]",
    "{None, 'x'} == {'x'}", "{sample.type_declared} == {'text/plain'}", "[] == []", "{} == [] or True",
    "not ('x' in None)", "not ('x' not in None)", "'%s' % 'a' == 'a'",
])
def test_operators_and_precedence(condition: str) -> None:
    assert holds(condition), condition


@pytest.mark.parametrize(("condition", "expected"), [
    ("sample.name_declared == /smime.p7[mcs]/", True),
    ("sample.name_declared == /smime/", False),  # == is a whole-string match
    ("/smime/ in sample.name_declared", True),  # in is a search
    ("sample.name_declared in /p7/", True),  # either order
    ("sample.name_declared != /smime/", True),
    ("/ASCII/ in filereport.type_as_text", True),
    ("/^text/ == filereport.mime_types", False),
    ("/text.*/ == filereport.mime_types", True),  # any element of a set
    ("/plain/ in filereport.mime_types", True),
    ("sample.file_extension in [/nomatch/, /p7s$/]", True),  # a list of regexes: any
    ("/x/ in None", False),
    ("/x/ not in None", True),
    ("/a\\.b/ in 'axb'", True),  # PeekabooAV drops a backslash before any character: \\. is "."
    ("/a\\\\.b/ in 'axb'", False),  # a doubled backslash keeps one: \\\\. is a literal dot
    ("'it\\'s' == \"it's\"", True),
    ("'a\\tb' == 'a\\\\tb'", True),  # \t becomes a tab first, then the backslash before the tab goes
    ('"\\\\n" == \'\\n\'', False),  # ...but a backslash before a newline stays (PeekabooAV's un-escaping)
    ("'a\tb' == 'a      b'", True),  # a literal tab is expanded to spaces, tab stops of 8
])
def test_regex_and_string_semantics(condition: str, expected: bool) -> None:
    assert holds(condition) is expected, condition


@pytest.mark.parametrize(("condition", "expected"), [
    # a plain string in a list with regexes: the value must be a substring of it (PeekabooAV's reading)
    ("'exe' in [/doc/, 'xe']", False),
    ("'xe' in [/doc/, 'exe']", True),
    ("sample.file_size > 5 and sample.file_extension == [/doc/, 'p7s']", False),  # and == never matches it
    # results are an enumeration with PeekabooAV's ordering, where < means <=
    ("good < good", True), ("bad == 6", False), ("knownreport.result.value == 4", True), ("'%s' % bad == 'Result.bad'", True),
    ("{bad, 6} == {6, bad}", True), ("knownreport.result is good", True), ("knownreport.result > ignore", True),
    # unary + returns its operand; + on a list extends it with any iterable
    ("+True is True", True), ("+'x' == 'x'", True), ("[1] + 'ab' == [1, 'a', 'b']", True),
    ("[1] + [/a/] == ['a']", False), ("[/a/] + ['b'] == 'a'", True),
    # names PeekabooAV accepts
    ("(sample).filename == 'smime.p7s'", True), ("[(sample.filename)] == ['smime.p7s']", True),
    ("sample.(filename) == 'smime.p7s'", True), ("filereport", True), ("sample . file_size . real == 100", True),
    ("True or sample.nosuch", True), ("False and nosuch", False), ("True or not", True),
])
def test_peekaboo_semantics(condition: str, expected: bool) -> None:
    assert holds(condition) is expected, condition


def test_results_and_result_valued_expressions() -> None:
    assert ev("True -> fail") is Result.failed
    assert ev("True -> ignore") is Result.ignored
    assert ev("True -> good") is Result.good
    assert ev("True -> unknown") is Result.unknown
    assert ev("knownreport.known and knownreport.first < 14 -> knownreport.result") is Result.good
    assert ev("True -> knownreport.worst_result", knownreport={"worst_result": "unchecked"}) is Result.unchecked
    assert ev("False -> bad") is None
    assert ev("True -> None") is None
    with pytest.raises(NotAResult, match="yields 100, not a result"):
        ev("True -> sample.file_size")


def test_implication_is_left_associative_and_parenthesised() -> None:
    assert ev("(True -> bad) -> good") is Result.good
    assert ev("(False -> bad) -> good") is None
    assert ev("True -> bad -> good") is Result.good
    assert ev("True -> (False -> bad)") is None


def test_wrong_operand_types_raise_when_evaluated() -> None:
    # sample.file_size > 5 is false on PeekabooAV's 5-byte dummy, so its start-up check never compares
    with pytest.raises(TypeError):
        ev("sample.file_size > 5 and sample.file_size < 'x' -> bad")


def test_multiline_expression() -> None:
    assert ev("sample.name_declared == /smime.p7[mcs]/\n    and sample.type_declared in {\n 'text/plain'} -> ignore") \
        is Result.ignored


@pytest.mark.parametrize(("text", "message", "line", "column"), [
    ("sample.file_size > * 3 -> bad", "unexpected '*'", 1, 20),
    ("sample.file_size > 3", "no implication", 1, 1),
    ("foo == 1 -> bad", "unknown identifier 'foo'", 1, 1),
    ("sample.nope == 1 -> bad", "unknown attribute 'nope' of 'sample'", 1, 1),
    ("1 == 1 and\n sample.x -> bad", "unknown attribute 'x'", 2, 2),
    ("1 = 1 -> bad", "unexpected character '='", 1, 3),
    ("1 == 1 -> bad ->", "ends too early", 1, 17),
    ("/(/ in 'x' -> bad", "bad regular expression", 1, 1),
    ("__import__('os') -> bad", "unexpected character '_'", 1, 1),
    ("sample.__class__ -> bad", "unexpected character '_'", 1, 8),
    ("'abc -> bad", "unterminated string", 1, 1),
    ("(True) -> bad", "unknown identifier 'True'", 1, 2),  # in PeekabooAV, (word) is always a name
    ("1and 2 -> bad", "unexpected 'and'", 1, 2),  # keywords must not touch a word
    ("sample.(a.b) -> bad", "must be followed by a name", 1, 1),
    ("sample.content -> bad", "internal of PeekabooAV", 1, 1),
    ("sample.file_extension in {/exe/, /scr/} -> bad", "a set cannot hold a regex", 1, 27),
    ("filereport.type_as_text in [/PE32/, 'MS-DOS executable'] -> bad", "PeekabooAV refuses it at start-up", None, None),
    ("(" * 41 + "True" + ")" * 41 + " -> bad", "nested more than 40 levels", 1, 41),
])
def test_load_errors_name_line_and_column(text: str, message: str, line: int | None, column: int | None) -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression(text)
    assert message in str(info.value)
    assert (info.value.line, info.value.column) == (line, column)


def test_startup_trial_is_peekaboos() -> None:
    # PeekabooAV evaluates each expression once on a 5-byte sample without a name and empty reports
    with pytest.raises(ExpressionError, match="TypeError"):
        compile_expression("sample.filename + '.bak' == 'x' -> bad")
    compile_expression("sample.file_size > 5 and sample.filename + '.bak' == 'x' -> bad")
    with pytest.raises(ExpressionError, match="unknown attribute 'nope'"):
        compile_expression("sample.file_size > 4 and sample.nope -> bad")


def test_what_the_trial_misses_is_accepted_with_a_warning_and_fails_when_reached() -> None:
    expression = compile_expression("sample.file_size > 5 and sample.nope -> bad")
    assert len(expression.warnings) == 1
    assert expression.warnings[0].startswith("unknown attribute 'nope' of 'sample' (known: ")
    assert "at line 1, column 26: accepted because PeekabooAV's start-up check does not reach it" in expression.warnings[0]
    reports = from_json(FACTS)
    with pytest.raises(UnknownAttribute):
        expression.evaluate(reports.__getitem__)
    assert compile_expression("sample.file_size > 500 and sample.nope -> bad").evaluate(reports.__getitem__) is None


def test_unsupported_reports_are_refused() -> None:
    with pytest.raises(ExpressionError, match="'cuckooreport': Cuckoo is not supported"):
        load("True or cuckooreport.score > 5 -> bad")
    # cortexreport is read as in a ruleset with Cortex configured (mailowl expr eval on facts given)
    assert load("cortexreport.FileInfoReport.md5sum == 'x' -> bad").identifiers == {"cortexreport"}


@pytest.mark.parametrize(("condition", "expected"), [
    ("sample.file_extension in {/p7s/, /exe/}", True),  # sets may hold regexes
    ("'exe' in [/doc/, 'xe']", True),  # a plain string among regexes: that text, found in the value
    ("'xe' in [/doc/, 'exe']", False),
    ("sample.file_extension == [/doc/, 'p7s']", True),
    ("/\\.p7s$/ in sample.filename", True),  # regexes reach the regex engine as written
    ("/\\.p7s$/ in 'smimexp7s'", False),
    ("/a\\/b/ in 'a/b'", True),
    ("'a\tb' == 'a\\tb'", True),  # tabs stay tabs
    ("filereport.type_as_text in [/PE32/, 'ASCII']", True),
])
def test_mailowl_dialect(condition: str, expected: bool) -> None:
    assert holds(condition, "mailowl") is expected, condition


@pytest.mark.parametrize(("text", "message"), [
    ("True or sample.nope -> bad", "unknown attribute 'nope'"),
    ("False and nosuch -> bad", "unknown identifier 'nosuch'"),
    ("filereport -> bad", "'filereport' needs an attribute"),
    ("knownreport.result.name == 'good' -> bad", "only report attributes"),
])
def test_mailowl_dialect_checks_every_name(text: str, message: str) -> None:
    compile_expression(text)  # accepted by PeekabooAV's rules
    with pytest.raises(ExpressionError, match=message):
        compile_expression(text, dialect="mailowl")


def test_identifiers_are_collected() -> None:
    expression = compile_expression("sample.file_size > 1 and filereport.type_by_content -> bad")
    assert expression.identifiers == {"sample", "filereport"}


def test_reports_are_resolved_lazily_and_attributes_are_copies() -> None:
    asked: list[str] = []
    reports = from_json(FACTS)

    def resolve(name: str) -> Any:
        asked.append(name)
        return reports[name]

    compile_expression("sample.file_size > 500 and filereport.mime_types -> bad").evaluate(resolve)
    assert asked == ["sample"]  # `and` short-circuits, filereport never computed
    # PeekabooAV extends lists and updates sets in place (`ret += x`); the report keeps its own
    assert ev("(filereport.mime_types | {'x'}) and filereport.mime_types == {'text/plain'} -> bad") is Result.bad


def test_schema_is_what_the_reports_have() -> None:
    from mailowl.analysis.archive import ArchiveReport
    from mailowl.analysis.clamav import ClamavReport
    from mailowl.analysis.cortex import KNOWN
    from mailowl.analysis.filetype import FileReport
    from mailowl.analysis.ole import OleReport
    from mailowl.analysis.pe import PeReport
    from mailowl.analysis.yara import YaraReport
    from mailowl.rules.context import SampleView
    from mailowl.store.journal import KnownReport

    fields = {"sample": SampleView.FIELDS, "filereport": FileReport.FIELDS, "olereport": OleReport.FIELDS,
              "knownreport": KnownReport.FIELDS, "pereport": PeReport.FIELDS, "yarareport": YaraReport.FIELDS,
              "archivereport": ArchiveReport.FIELDS, "clamavreport": ClamavReport.FIELDS,
              "cortexreport": frozenset(KNOWN)}
    assert fields == SCHEMA
    assert set(REPORTS) == set(fields)
