"""PeekabooAV 2.1's expressions rule and `mailowl expr eval --batch` on the same expressions and facts.

Every case is run by PeekabooAV's own rule (tests/peekaboo_expr.py in .venv-peekaboo) and by the mailowl
command; a case passes when both give the same outcome — a result, no result, ``failed``, or refusing the
expression at start-up — or when mailowl refuses it at start-up for a documented reason. Cases:

- one hand-written group per rule of the language in docs/rules.md, on every facts profile;
- generated cases (tests/exprgen.py): ``MAILOWL_EXPR_SEED`` (default 1124), ``MAILOWL_EXPR_COUNT``
  (default 300; a few thousand make a good run by hand, at about 30 cases a second per core for PeekabooAV);
- the known-equal corpus, tests/data/expr/corpus.jsonl, against PeekabooAV's recorded outcomes (mailowl
  only, always); ``MAILOWL_EXPR_RECHECK=1`` runs PeekabooAV on it again. ``python tests/exprgen.py SEED...
  COUNT`` adds agreeing generated cases to it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from .exprgen import CORPUS, PEEKABOO_PYTHON, PROFILES, Generator, differences, run_mailowl, run_peekaboo

needs_peekaboo = pytest.mark.skipif(not PEEKABOO_PYTHON.exists(),
                                    reason="PeekabooAV 2.1 is not installed in .venv-peekaboo "
                                           "(scripts/bootstrap --test installs it)")

GROUPS: dict[str, list[str]] = {
    "precedence": [
        "1 + 2 * 3 == 7", "(1 + 2) * 3 == 9", "2 ** 3 ** 2 == 512", "-2 ** 2 == -4", "10 - 4 - 3 == 3",
        "7 // 2 + 7 % 2 == 4", "7 / 2 == 3.5", "1 | 2 ^ 3 & 4 << 1 == 3", "1 + 2 << 1 == 6", "~0 == -1",
        "not 1 == 2 and 3 < 4 or False", "not True or True", "sample.file_size + 1 > 5 * 2", "2 ** -1 == 0.5",
    ],
    "comparisons": [
        "1 < sample.file_size < 2000", "1 < 2 > 1", "'a' < 'b' <= 'b'", "sample.file_size == 1000 != 5",
        "1 < 'a'", "None < 1", "sample.filename < 'b'", "[1, 2] < [1, 3]", "{1} < {1, 2}", "1 == 1.0",
        "True == 1", "sample.file_size is 1000", "None is None is not 1", "'a' in 'abc' in ['abc']",
    ],
    "short-circuit": [
        "False and sample.nosuch", "True or nosuch", "sample.file_size > 5 and sample.nosuch",
        "sample.file_size < 5 or sample.nosuch.x", "knownreport.known and knownreport.first < 14",
        "sample.file_size > 5 and nosuch", "False and 1 / 0", "1 < 0 < 1 / 0", "sample.file_size > 5 and 1 / 0",
        "sample.file_size > 5 and sample.(a.b)",
    ],
    "regexes": [
        "sample.file_extension == /ex./", "/ex/ == sample.file_extension", "/ex/ in sample.file_extension",
        "sample.file_extension in /ex/", "/x/ in filereport.mime_types", "/dosexec$/ == filereport.mime_types",
        "/zzz/ != sample.filename", "sample.file_size > 5 and /a/ == sample.file_size",
        "/^MS-DOS/ in filereport.type_as_text", "sample.name_declared == /smime.p7[mcs]/", "/(/ in 'x'",
        "/a\\.exe/ in 'aXexe'", "/a\\\\.exe/ in 'aXexe'", "// == ''", "/x\\/y/ in 'x/y'", "/[/ in 'x'",
    ],
    "pattern lists": [
        "'exe' in [/doc/, 'xe']", "'xe' in [/doc/, 'exe']", "sample.file_extension in [/doc/, 'exe']",
        "sample.file_extension in [/ex/, /doc/]", "filereport.type_as_text in [/PE32/, 'MS-DOS executable']",
        "sample.file_size > 5 and filereport.type_as_text in [/PE32/, 'MS-DOS executable']",
        "sample.file_size > 5 and filereport.mime_types in [/zzz/, 'application/x-dosexec']",
        "[/a/, 'b'] == 'b'", "sample.filename == [/\\\\.exe$/, /\\\\.scr$/]",
        "sample.file_size > 5 and sample.filename == [/\\\\.exe$/, /\\\\.scr$/]", "[/a/] != 'a'",
        "sample.file_size > 5 and 5 in [/a/, 5]", "[/a/] in 'cat'", "[/a/, 'b'] + ['c'] == 'c'",
    ],
    "sets": [
        "sample.file_extension in {'exe', 'scr'}", "{sample.type_declared} | filereport.mime_types <= {'text/plain'}",
        "{None, 'x'} == {'x'}", "sample.file_extension in {/exe/}", "sample.file_size > 5 and sample.file_extension in "
        "{/exe/, /scr/}", "{filereport.mime_types}", "sample.file_size > 5 and {filereport.mime_types}",
        "{} == set() or {} == {}", "filereport.mime_types & {'text/plain'}", "filereport.mime_types - {'x'} ^ {'y'}",
        "{1, 1.0, True} == {1}", "{'a', 'b'} == {'b', 'a'}",
    ],
    "none": [
        "'x' in None", "'x' not in None", "/x/ in None", "/x/ not in None", "sample.content_disposition is None",
        "sample.content_disposition == None", "None in [None]", "None in {None}", "sample.type_declared in None",
        "not sample.content_disposition",
    ],
    "isdisjoint": [
        "{'a'} isdisjoint filereport.mime_types", "filereport.mime_types isdisjoint ['text/plain']",
        "sample.file_size > 5 and sample.filename isdisjoint {'a'}", "{1} isdisjoint 'abc'",
        "{'a'} isdisjoint 'abc'", "[1] isdisjoint {1}", "filereport.mime_types isdisjoint {/x/}",
    ],
    "implications": [
        "True -> bad -> good", "(False -> bad) -> good", "True -> (False -> bad)", "True -> None", "True -> 5",
        "True -> knownreport.result", "knownreport.known -> knownreport.worst_result", "1 -> bad", "[] -> bad",
        "'x' -> fail", "(True -> bad)", "True -> bad and good", "sample.filename -> ignore", "True -> (bad)",
    ],
    "results": [
        "good < good", "bad == 6", "bad > good", "{bad, 6} == {6, bad}", "knownreport.result == good",
        "knownreport.result < bad", "'%s' % bad == 'Result.bad'", "knownreport.result.name == 'bad'",
        "knownreport.result.value >= 4", "bad < 5", "-bad", "bad + 1", "ignore >= ignore > unknown",
        "knownreport.worst_result <= knownreport.last_result", "[bad] == [bad]", "bad in {bad}",
    ],
    "escapes": [
        "\"\\\\n\" == '\\n'", "'a\\tb' == 'a\\\\tb'", "'\\\\' == '\\\\\\\\'", "'it\\'s' == \"it's\"",
        "'\\x' == 'x'", "'a\\nb' == 'a\\\\nb'", "/\\d/ in 'd'", "/\\\\d/ in '5'", "/a\\tb/ in 'a\\tb'",
        "'\\\"' == '\"'", "'a\\rb' != 'ab'", "'\\f' == '\\\\f'",
    ],
    "tabs": [
        "'a\tb' == 'a      b'", "'a\tb' == 'a\\tb'", "sample.filename\t== 'a.exe'", "/a\tb/ in 'a      b'",
        "'\t' == '        '", "\tTrue",
    ],
    "unary": [
        "+True is True", "+'x' == 'x'", "-True == -1", "~sample.file_size == -1001", "-'x'", "+None is None",
        "not sample.filename", "- -1 == 1", "+[1] == [1]", "~True == -2", "-sample.file_size < 0",
    ],
    "list arithmetic": [
        "[1] + 'ab' == [1, 'a', 'b']", "[1] + {2} == [1, 2]", "[1] * 2 == [1, 1]", "[1] + [/a/] == ['a']",
        "'%s' % [1] == '[1]'", "[/a/] < [1]", "[1] + None", "sample.filename + 'x' == 'a.exex'",
        "'%s' % ['a', 'b'] == \"['a', 'b']\"", "'%s-%s' % [1, 2]", "[1] - [1]", "[1, 2] + filereport.mime_types",
    ],
    "names": [
        "(sample).filename == 'a.exe'", "[(sample.filename)] == ['a.exe']", "sample . filename == 'a.exe'",
        "sample.(filename) == 'a.exe'", "filereport", "(True)", "True or not", "False and and", "sample.(a.b)",
        "sample.file_size.real > 3", "sample.content", "sample.id", "sample.filename.upper", "Nonex",
        "nosuch", "sample", "sample.nosuch", "(sample.filename == 'a.exe')", "((sample)).filename",
    ],
    "attributes": [],  # filled below: every attribute of every report PeekabooAV has
    "keywords": [
        "True->bad", "1and 2", "'a'in 'ab'", "Trueish", "sample.in", "1 is not None", "1 isnot None",
        "{1}isdisjoint{2}", "not\nTrue", "1 not  in [2]", "True andTrue", "(True)and(True)",
    ],
    "syntax": [
        "[1,]", "[-1]", "[(1)]", "1 = 1", "'abc", "sample.__class__", "True -> bad\f", "1.", ".5", "1.5.2",
        "[1 2]", "((True)", "1 <<= 2", "'a\nb' == 'a'", "", "-> bad",
    ],
}
for _report, _attrs in {"sample": ["filename", "name_declared", "type_declared", "content_disposition",
                                   "file_extension", "file_size", "sha256sum"],
                        "filereport": ["type_by_content", "type_by_name", "type_as_text", "mime_types"],
                        "olereport": ["has_office_macros", "vba_code", "has_autoexec", "detected_autoexec",
                                      "is_suspicious", "detected_suspicious"],
                        "knownreport": ["known", "last_result", "result", "worst_result", "first", "last"]}.items():
    GROUPS["attributes"] += [f"{_report}.{_attr}" for _attr in _attrs]
    GROUPS["attributes"] += [f"'%s' % [{_report}.{_attr}] == '%s' % [{_report}.{_attr}]" for _attr in _attrs]


def group_cases() -> list[dict[str, Any]]:
    cases = []
    for name, conditions in GROUPS.items():
        for condition in conditions:
            text = condition if "->" in condition else f"{condition} -> bad"
            cases += [{"group": name, "expression": text, "profile": profile} for profile in sorted(PROFILES)]
    return cases


def _report(found: list[tuple[str, str | None, str | None, str | None]]) -> str:
    return "\n".join(f"{text!r}: PeekabooAV {theirs}, mailowl {ours} ({error})" for text, theirs, ours, error in found[:30])


@needs_peekaboo
def test_every_rule_of_the_language_as_peekaboo() -> None:
    cases = group_cases()
    found = differences(cases, run_peekaboo(cases), run_mailowl(cases))
    assert not found, f"{len(found)} silent differences:\n{_report(found)}"


@needs_peekaboo
def test_generated_expressions_as_peekaboo() -> None:
    seed, count = int(os.environ.get("MAILOWL_EXPR_SEED", "1124")), int(os.environ.get("MAILOWL_EXPR_COUNT", "300"))
    cases = Generator(seed).cases(count)
    theirs = run_peekaboo(cases)
    found = differences(cases, theirs, run_mailowl(cases))
    assert not found, f"seed {seed}: {len(found)} of {count} differ:\n{_report(found)}"
    assert len({outcome for outcome in theirs}) >= 6  # results, no result, failed and refusals all occur


def test_known_equal_corpus() -> None:
    cases = [json.loads(line) for line in CORPUS.read_text().splitlines()]
    assert len(cases) >= 1000
    recorded = [case["peekaboo"] for case in cases]
    if os.environ.get("MAILOWL_EXPR_RECHECK") and PEEKABOO_PYTHON.exists():
        assert run_peekaboo(cases) == recorded, "PeekabooAV's outcomes changed since they were recorded"
    found = differences(cases, recorded, run_mailowl(cases))
    assert not found, f"{len(found)} of {len(cases)} differ from PeekabooAV's recorded outcomes:\n{_report(found)}"
