"""The expression language, with PeekabooAV's documented semantics as the truth."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from mailowl.expr import ExpressionError, compile_expression
from mailowl.results import Result

SCHEMA: dict[str, frozenset[str] | None] = {
    "sample": frozenset({"filename", "name_declared", "type_declared", "file_extension", "file_size",
                         "content_disposition"}),
    "filereport": frozenset({"mime_types", "type_by_content", "type_as_text"}),
    "knownreport": frozenset({"known", "result", "first"}),
}


def ev(text: str, **objects: Any) -> Result | None:
    values = {
        "sample": SimpleNamespace(filename="smime.p7s", name_declared="smime.p7s", type_declared="text/plain",
                                  file_extension="p7s", file_size=100, content_disposition=None),
        "filereport": SimpleNamespace(mime_types={"text/plain"}, type_by_content="text/plain",
                                      type_as_text="ASCII text"),
        "knownreport": SimpleNamespace(known=True, result=Result.good, first=3),
    }
    values.update(objects)
    return compile_expression(text, SCHEMA).evaluate(values.__getitem__)


def holds(condition: str, **objects: Any) -> bool:
    return ev(f"{condition} -> bad", **objects) is Result.bad


@pytest.mark.parametrize("condition", [
    "1 + 2 * 3 == 7", "(1 + 2) * 3 == 9", "2 ** 3 ** 2 == 512", "-2 ** 2 == -4", "10 - 4 - 3 == 3",
    "7 / 2 == 3.5", "7 // 2 == 3", "7 % 4 == 3", "1 << 4 == 16", "256 >> 4 == 16", "6 & 3 == 2",
    "6 ^ 3 == 5", "6 | 3 == 7", "~0 == -1", "+3 == 3", "1 + 2 << 1 == 6", "1 | 2 ^ 3 & 4 == 3",
    "1 < 2", "2 <= 2", "3 > 2", "3 >= 3", "1 != 2", "1 < 2 < 3", "not 3 < 2 < 4",
    "'a' in ['a', 'b']", "'c' not in ['a', 'b']", "'a' in {'a'}", "None is None", "1 is not None",
    "{1, 2} isdisjoint {3}", "not {1, 2} isdisjoint {2}", "{'a'} <= {'a', 'b'}", "{'a'} | {'b'} == {'a', 'b'}",
    "True and not False", "False or True", "not False and True", "not (True and False)",
    "1 == 1 and 2 == 2 or 1 == 2", "1.5 + 1.5 == 3.0", "'ab' + 'cd' == 'abcd'", "[1, 2] == [1, 2]",
    "{None, 'x'} == {'x'}", "{sample.type_declared} == {'text/plain'}", "[] == []", "{} == set()" if False else "True",
    "'x' not in None" if False else "not ('x' in None)", "not ('x' not in None)",
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
    ("sample.name_declared == [/foo/, /smime\\\\.p7s/]", True),  # list of regexes: any
    ("sample.name_declared in [/nomatch/, /p7s$/]", True),
    ("/x/ in None", False),
    ("/x/ not in None", True),
    ("/a\\.b/ in 'axb'", True),  # PeekabooAV drops a backslash before any character: \\. is "."
    ("/a\\\\.b/ in 'axb'", False),  # a doubled backslash keeps one: \\\\. is a literal dot
    ("'it\\'s' == \"it's\"", True),
    ("'a\\tb' == 'a\tb'", True),
])
def test_regex_semantics(condition: str, expected: bool) -> None:
    assert holds(condition) is expected, condition


def test_result_keywords_and_result_valued_expressions() -> None:
    assert ev("True -> fail") is Result.failed
    assert ev("True -> ignore") is Result.ignored
    assert ev("True -> good") is Result.good
    assert ev("True -> unknown") is Result.unknown
    assert ev("knownreport.known and knownreport.first < 14 -> knownreport.result") is Result.good
    assert ev("False -> bad") is None


def test_implication_is_left_associative_and_parenthesised() -> None:
    assert ev("(True -> bad) -> good") is Result.good
    assert ev("(False -> bad) -> good") is None


def test_non_result_outcome_is_an_error() -> None:
    with pytest.raises(TypeError):
        ev("True -> sample.file_size")


def test_wrong_operand_types_raise() -> None:
    with pytest.raises(TypeError):
        ev("sample.file_size < 'x' -> bad")


def test_multiline_expression() -> None:
    assert ev("sample.name_declared == /smime.p7[mcs]/\n    and sample.type_declared in {\n 'text/plain'} -> ignore") \
        is Result.ignored


@pytest.mark.parametrize(("text", "message", "line", "column"), [
    ("sample.file_size > * 3 -> bad", "unexpected '*'", 1, 20),
    ("sample.file_size > 3", "no implication", 1, 1),
    ("foo == 1 -> bad", "unknown identifier 'foo'", 1, 1),
    ("sample.nope == 1 -> bad", "unknown attribute 'nope' of 'sample'", 1, 1),
    ("sample == 1 -> bad", "'sample' needs an attribute", 1, 1),
    ("1 == 1 and\n sample.x -> bad", "unknown attribute 'x'", 2, 2),
    ("1 = 1 -> bad", "unexpected character '='", 1, 3),
    ("1 == 1 -> bad ->", "ends too early", None, None),
    ("/(/ in 'x' -> bad", "bad regular expression", 1, 1),
    ("__import__('os') -> bad", "unexpected character '_'", 1, 1),
    ("sample.__class__ -> bad", "unexpected character '_'", 1, 8),
])
def test_errors_name_line_and_column(text: str, message: str, line: int | None, column: int | None) -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression(text, SCHEMA)
    assert message in str(info.value)
    if line is not None:
        assert (info.value.line, info.value.column) == (line, column)


def test_identifiers_are_collected() -> None:
    expression = compile_expression("sample.file_size > 1 and filereport.type_by_content -> bad", SCHEMA)
    assert expression.identifiers == {"sample", "filereport"}


def test_reports_are_resolved_lazily() -> None:
    asked: list[str] = []

    def resolve(name: str) -> Any:
        asked.append(name)
        return SimpleNamespace(file_size=1, mime_types=set())

    compile_expression("sample.file_size > 5 and filereport.mime_types -> bad", SCHEMA).evaluate(resolve)
    assert asked == ["sample"]  # `and` short-circuits, filereport never computed
