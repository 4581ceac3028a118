"""Compile a parsed expression into nested closures and check it as PeekabooAV checks it at start-up.

Two dialects. ``peekaboo`` (the default) is PeekabooAV 2.1's language, outcomes included: a name or
attribute that does not exist is refused only if PeekabooAV's start-up trial (one evaluation on its
dummy sample and empty reports, see ``schema.py``) reaches it — elsewhere it is accepted, with a
warning, and fails the sample that reaches it, as in PeekabooAV. Two things are refused although
PeekabooAV starts with them: a regex inside a set literal (it could only ever fail), and PeekabooAV's
internal attributes (``sample.content`` ...), which mailowl does not have.

``mailowl`` (opt-in, ``[expressions] dialect = mailowl``) differs in four ways: every name and
attribute is checked at start-up wherever it is, and nothing is tried on dummies; sets may hold
regexes; in a list or set holding regexes a plain string stands for exactly that text (``x in
[/re/, 'text']`` searches ``text`` in x); regex literals reach the regex engine as written (only
``\\/`` is unescaped) and tabs stay tabs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mailowl.expr import schema
from mailowl.expr.syntax import Node, SyntaxProblem, parse
from mailowl.expr.values import ARITHMETIC, COMPARISONS, UNARY, PatternList, Regex, Result
from mailowl.results import Result as Verdict

Resolver = Callable[[str], Any]
Run = Callable[[Resolver], Any]
DIALECTS = ("peekaboo", "mailowl")

_RESULT_WORDS = {"bad": Result.bad, "fail": Result.failed, "good": Result.good, "ignore": Result.ignored,
                 "unknown": Result.unknown}
# values whose attributes an expression may read (PeekabooAV allows any; these are all mailowl's facts are)
_PLAIN = (str, int, float, bool, type(None), list, set, Result)


class ExpressionError(ValueError):
    """A bad expression; ``line`` and ``column`` are 1-based within the expression text."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        where = f" at line {line}, column {column}" if line is not None else ""
        super().__init__(f"{message}{where}")
        self.line, self.column = line, column


class Unreadable(Exception):
    """An identifier or attribute that does not exist, met while evaluating; ``problem`` says which."""

    def __init__(self, problem: str, offset: int) -> None:
        super().__init__(problem)
        self.problem, self.offset = problem, offset


class UndefinedIdentifier(Unreadable, LookupError):
    pass


class UnknownAttribute(Unreadable, AttributeError):
    pass


class NotAResult(TypeError):
    pass


class _TrialStop(Exception):
    """The trial reached a report it has no dummy for (Cortex, Cuckoo): PeekabooAV stops there too."""


@dataclass(frozen=True)
class Expression:
    text: str
    identifiers: frozenset[str]
    _run: Run
    dialect: str = "peekaboo"
    #: names and attributes that do not exist but are accepted because PeekabooAV's trial misses them
    warnings: tuple[str, ...] = ()

    def evaluate(self, resolve: Resolver) -> Verdict | None:
        """The result if the condition holds, None if it does not; raises on operands that do not fit
        (the caller turns that into ``failed``) and NotAResult if the expression yields something else."""
        value = self._run(resolve)
        if value is None:
            return None
        if isinstance(value, Result):
            return Verdict[value.name]
        shown = repr(value)
        raise NotAResult(f"the expression yields {shown[:80] + '...' if len(shown) > 80 else shown}, not a result")


def _position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def fact(value: Any) -> Any:
    """A report attribute as expressions see it: copies of lists and sets, results as result literals."""
    kind = type(value)
    if kind is list or kind is set:
        return kind(value)
    if kind is tuple:
        return list(value)
    if kind is frozenset:
        return set(value)
    if isinstance(value, Verdict):
        return Result[value.name]
    return value


class _Compiler:
    def __init__(self, text: str, schema_: Mapping[str, frozenset[str] | None], dialect: str) -> None:
        self.text = text
        self.schema = schema_
        self.strict = dialect == "mailowl"
        self.identifiers: set[str] = set()
        self.unreadable: dict[int, str] = {}

    def error(self, node: Node, message: str) -> ExpressionError:
        return ExpressionError(message, *_position(self.text, node.offset))

    def build(self, node: Node) -> Run:
        method: Callable[[Node], Run] = getattr(self, f"_{node.kind}")
        return method(node)

    # literals and names
    def _const(self, node: Node) -> Run:
        value = node.value
        return lambda r: value

    def _result(self, node: Node) -> Run:
        value = _RESULT_WORDS[node.value]
        return lambda r: value

    def _regex(self, node: Node) -> Run:
        try:
            value = Regex(node.value)
        except re.error as exc:
            raise self.error(node, f"bad regular expression /{node.value}/: {exc}") from None
        return lambda r: value

    def _unknown_identifier(self, name: str) -> str:
        known = sorted(n for n, fields in self.schema.items() if fields is not None)  # not the refused ones
        return f"unknown identifier '{name}' (known: {', '.join(known)})"

    def _name(self, node: Node) -> Run:
        name = node.value
        self.identifiers.add(name)
        if name not in self.schema:
            problem = self._unknown_identifier(name)
            if self.strict:
                raise self.error(node, problem)
            return self._unreadable(node, problem, UndefinedIdentifier)
        if self.strict and self.schema[name] is not None:
            raise self.error(node, f"'{name}' needs an attribute (one of: {', '.join(sorted(self.schema[name] or ()))})")
        return lambda r: r(name)

    def _unreadable(self, node: Node, problem: str, kind: type[Unreadable], before: Run | None = None) -> Run:
        self.unreadable[node.offset] = problem
        offset = node.offset

        def run(resolve: Resolver) -> Any:
            if before is not None:
                before(resolve)  # PeekabooAV reads what comes before the missing name first
            raise kind(problem, offset)

        return run

    def _attr(self, node: Node) -> Run:
        base, attr = node.items[0], node.value
        if base.kind == "name" and base.value in self.schema:
            root = base.value
            self.identifiers.add(root)
            fields = self.schema[root]
            if fields is None:
                return lambda r: getattr(r(root), attr)
            if attr in fields:
                return lambda r: fact(getattr(r(root), attr))
            known = f"(known: {', '.join(sorted(fields))})"
            if attr in schema.PEEKABOO_INTERNALS.get(root, ()):
                raise self.error(node, f"'{root}.{attr}' is an internal of PeekabooAV, not a fact about the "
                                       f"sample; mailowl does not provide it {known}")
            problem = f"unknown attribute '{attr}' of '{root}' {known}"
            if self.strict:
                raise self.error(node, problem)
            return self._unreadable(node, problem, UnknownAttribute, lambda r: r(root))
        if self.strict:
            raise self.error(node, f"'.{attr}': only report attributes can be read, not attributes of their values")
        inner = self.build(base)

        def run(resolve: Resolver) -> Any:
            value = inner(resolve)
            if not isinstance(value, _PLAIN):
                raise AttributeError(f"'{type(value).__name__}' object has no attribute '{attr}'")
            return getattr(value, attr)

        return run

    def _badattr(self, node: Node) -> Run:
        problem = "'.' must be followed by a name, not by a parenthesised dotted name"
        if self.strict:
            raise self.error(node, problem)
        return self._unreadable(node, problem, UnknownAttribute, self.build(node.items[0]))

    def _list(self, node: Node) -> Run:
        items = [self.build(item) for item in node.items]
        strict = self.strict

        def run(resolve: Resolver) -> Any:
            values = [item(resolve) for item in items]
            for value in values:
                if isinstance(value, Regex):
                    return PatternList(_as_patterns(values) if strict else values)
            return values

        return run

    def _set(self, node: Node) -> Run:
        if self.strict:
            listed = self._list(node)

            def run_strict(resolve: Resolver) -> Any:
                value = listed(resolve)
                return value if isinstance(value, PatternList) else {v for v in value if v is not None}

            return run_strict
        for item in node.items:
            if item.kind == "regex":
                raise self.error(item, "a set cannot hold a regex: PeekabooAV cannot build such a set, so the "
                                       "expression could only fail; use a list [/.../, /.../] instead")
        items = [self.build(item) for item in node.items]

        def run(resolve: Resolver) -> Any:
            out = set()
            for item in items:
                value = item(resolve)
                if value is not None:  # {sample.type_declared} is empty when nothing was declared
                    out.add(value)
            return out

        return run

    # operators
    def _unary(self, node: Node) -> Run:
        func, operand = UNARY[node.value], self.build(node.items[0])
        return lambda r: func(operand(r))

    def _arith(self, node: Node) -> Run:
        first, rest = self.build(node.items[0]), [(ARITHMETIC[op], self.build(item))
                                                  for op, item in zip(node.ops, node.items[1:], strict=True)]

        def run(resolve: Resolver) -> Any:
            value = first(resolve)
            for func, item in rest:
                value = func(value, item(resolve))
            return value

        return run

    def _power(self, node: Node) -> Run:
        items = [self.build(item) for item in node.items]

        def run(resolve: Resolver) -> Any:
            value = items[-1](resolve)  # the exponent first, then towards the base, as PeekabooAV does
            for item in reversed(items[:-1]):
                value = item(resolve) ** value
            return value

        return run

    def _compare(self, node: Node) -> Run:
        first, rest = self.build(node.items[0]), [(COMPARISONS[op], self.build(item))
                                                  for op, item in zip(node.ops, node.items[1:], strict=True)]

        def run(resolve: Resolver) -> bool:
            left = first(resolve)
            for func, item in rest:
                right = item(resolve)
                if not func(left, right):
                    return False
                left = right
            return True

        return run

    def _logic(self, node: Node) -> Run:
        items = [self.build(item) for item in node.items]
        if node.ops[0] == "and":
            return lambda r: all(item(r) for item in items)
        return lambda r: any(item(r) for item in items)

    def _implies(self, node: Node) -> Run:
        items = [self.build(item) for item in node.items]

        def run(resolve: Resolver) -> Any:
            value = items[0](resolve)
            for item in items[1:]:
                value = item(resolve) if value else None
            return value

        return run


def _as_patterns(values: list[Any]) -> list[Any]:
    return [Regex(re.escape(v)) if isinstance(v, str) else v for v in values]


def compile_expression(text: str, schema_: Mapping[str, frozenset[str] | None] | None = None,
                       dialect: str = "peekaboo", trial: Mapping[str, Any] | None = None,
                       check: bool = True) -> Expression:
    """Parse and check one expression. ``schema_`` maps identifiers to the attributes they have (None:
    any attribute; default: every report's); ``trial`` holds the dummy reports of PeekabooAV's start-up
    check (default: PeekabooAV's); ``check=False`` skips that trial."""
    if dialect not in DIALECTS:
        raise ExpressionError(f"unknown dialect {dialect!r} (known: {', '.join(DIALECTS)})")
    try:
        tree, expanded = parse(text, peekaboo=dialect == "peekaboo")
    except SyntaxProblem as exc:
        expanded = text.expandtabs() if dialect == "peekaboo" else text
        raise ExpressionError(str(exc), *_position(expanded, exc.offset)) from None
    except RecursionError:
        raise ExpressionError("syntax error: expression nested too deeply") from None
    if tree.kind != "implies":
        raise ExpressionError("expression has no implication '-> result'", 1, 1)
    compiler = _Compiler(expanded, schema.SCHEMA if schema_ is None else schema_, dialect)
    run = compiler.build(tree)
    warnings: tuple[str, ...] = ()
    if dialect == "peekaboo":
        if check:
            _trial(run, schema.trial_reports() if trial is None else trial, compiler)
        warnings = tuple(f"{problem} at line {line}, column {column}: accepted because PeekabooAV's start-up "
                         f"check does not reach it, but a sample that reaches it fails"
                         for offset, problem in sorted(compiler.unreadable.items())
                         for line, column in [_position(expanded, offset)])
    return Expression(text, frozenset(compiler.identifiers), run, dialect, warnings)


def _trial(run: Run, reports: Mapping[str, Any], compiler: _Compiler) -> None:
    def resolve(name: str) -> Any:
        if name not in reports:
            raise _TrialStop
        return reports[name]

    try:
        run(resolve)
    except _TrialStop:
        pass
    except Unreadable as exc:
        raise ExpressionError(exc.problem, *_position(compiler.text, exc.offset)) from None
    except RecursionError:
        raise ExpressionError("expression nested too deeply") from None
    except Exception as exc:
        raise ExpressionError(f"PeekabooAV refuses it at start-up, where it evaluates every expression once on "
                              f"a 5-byte sample without a name and empty reports: {type(exc).__name__}: {exc}") from None


#: reports PeekabooAV has that mailowl refuses, and why
UNSUPPORTED = {
    "cuckooreport": "Cuckoo is not supported by mailowl; use yara, pe or archive reports instead",
}


def load(text: str, dialect: str = "peekaboo") -> Expression:
    """An expression of a ruleset, checked as at start-up: what check-config and the ``expressions``
    rule refuse raises ExpressionError with the message they show. ``cortexreport.<Name>Report.<attribute>``
    is accepted for any analyzer, as a ruleset with Cortex configured accepts it (nested attributes: the
    start-up check reads them on empty reports)."""
    from mailowl.analysis.cortex import TrialCortexReport

    refused: dict[str, frozenset[str] | None] = {name: None for name in UNSUPPORTED}
    expression = compile_expression(text, {**schema.SCHEMA, **refused, "cortexreport": None}, dialect,
                                    {**schema.trial_reports(), "cortexreport": TrialCortexReport()})
    for identifier in sorted(expression.identifiers & UNSUPPORTED.keys()):
        raise ExpressionError(f"'{identifier}': {UNSUPPORTED[identifier]}")
    return expression
