"""Compile a parsed expression into nested closures; no ``eval``, no attribute outside a report's FIELDS."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from mailowl.expr.values import BINARY, COMPARISONS, UNARY, Regex, RegexCollection
from mailowl.results import Result

Resolver = Callable[[str], Any]
Node = Callable[[Resolver], Any]

_RESULTS = {"bad": Result.bad, "fail": Result.failed, "good": Result.good, "ignore": Result.ignored,
            "unknown": Result.unknown}
_WS_ESCAPES = {r"\t": "\t", r"\n": "\n", r"\f": "\f", r"\r": "\r"}
_ESCAPE = re.compile(r"\\(.)", re.S)


class ExpressionError(ValueError):
    """A bad expression; ``line`` and ``column`` are 1-based within the expression text."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        where = f" at line {line}, column {column}" if line is not None else ""
        super().__init__(f"{message}{where}")
        self.line, self.column = line, column


@cache
def _parser() -> Lark:
    grammar = resources.files("mailowl.expr").joinpath("grammar.lark").read_text()
    return Lark(grammar, parser="lalr", lexer="contextual", propagate_positions=True)


def _unquote(text: str) -> str:
    """PeekabooAV's quoting: \\t \\n \\f \\r become whitespace, then a backslash keeps the next character."""
    body = text[1:-1]
    for esc, char in _WS_ESCAPES.items():
        body = body.replace(esc, char)
    return _ESCAPE.sub(r"\1", body)


@dataclass(frozen=True)
class Expression:
    text: str
    identifiers: frozenset[str]
    _run: Node

    def evaluate(self, resolve: Resolver) -> Result | None:
        """The result if the condition holds, None if it does not; raises TypeError and the like on
        operands that do not fit (the caller turns that into ``failed``)."""
        value = self._run(resolve)
        if value is None:
            return None
        if not isinstance(value, Result):
            raise TypeError(f"expression yields {value!r}, not a result")
        return value


class _Compiler:
    def __init__(self, schema: Mapping[str, frozenset[str] | None]) -> None:
        self.schema = schema
        self.identifiers: set[str] = set()

    def build(self, node: Tree | Token) -> Node:
        if isinstance(node, Token):
            raise ExpressionError(f"unexpected {node!r}")
        handler = getattr(self, f"_{node.data}")
        result: Node = handler(node)
        return result

    def _error(self, node: Tree, message: str) -> ExpressionError:
        meta = node.meta
        return ExpressionError(message, getattr(meta, "line", None), getattr(meta, "column", None))

    # literals
    def _true(self, node: Tree) -> Node:
        return lambda r: True

    def _false(self, node: Tree) -> Node:
        return lambda r: False

    def _none(self, node: Tree) -> Node:
        return lambda r: None

    def _int(self, node: Tree) -> Node:
        value = int(str(node.children[0]))
        return lambda r: value

    def _real(self, node: Tree) -> Node:
        value = float(str(node.children[0]))
        return lambda r: value

    def _string(self, node: Tree) -> Node:
        value = _unquote(str(node.children[0]))
        return lambda r: value

    def _regex(self, node: Tree) -> Node:
        source = _unquote(str(node.children[0]))
        try:
            value = Regex(source)
        except re.error as exc:
            raise self._error(node, f"bad regular expression /{source}/: {exc}") from exc
        return lambda r: value

    def _result(self, node: Tree) -> Node:
        value = _RESULTS[str(node.children[0])]
        return lambda r: value

    def _dotted(self, node: Tree) -> Node:
        names = [str(t) for t in node.children]
        root, attrs = names[0], names[1:]
        if root not in self.schema:
            raise self._error(node, f"unknown identifier '{root}' (known: {', '.join(sorted(self.schema))})")
        fields = self.schema[root]
        if fields is not None:
            if not attrs:
                raise self._error(node, f"'{root}' needs an attribute (one of: {', '.join(sorted(fields))})")
            if attrs[0] not in fields or len(attrs) > 1:
                bad = attrs[0] if attrs[0] not in fields else ".".join(attrs)
                raise self._error(node, f"unknown attribute '{bad}' of '{root}' (known: {', '.join(sorted(fields))})")
        elif any(a.startswith("_") for a in attrs):
            raise self._error(node, f"attribute names may not start with '_': {'.'.join(names)}")
        self.identifiers.add(root)

        def run(resolve: Resolver) -> Any:
            value = resolve(root)
            for attr in attrs:
                value = getattr(value, attr)
            return value

        return run

    def _collection(self, node: Tree, make: Callable[[list[Any]], Any]) -> Node:
        items = [self.build(c) for c in node.children if c is not None]

        def run(resolve: Resolver) -> Any:
            values = [item(resolve) for item in items]
            if any(isinstance(v, Regex) for v in values):
                return RegexCollection(values)
            return make(values)

        return run

    def _list(self, node: Tree) -> Node:
        return self._collection(node, list)

    def _set(self, node: Tree) -> Node:
        # None never lands in a set: {sample.type_declared} is empty when nothing was declared.
        return self._collection(node, lambda vs: {v for v in vs if v is not None})

    # operators
    def _binop(self, node: Tree) -> Node:
        left_tree, op_tok, right_tree = node.children
        left, right, op = self.build(left_tree), self.build(right_tree), str(op_tok)
        if op == "->":
            return lambda r: right(r) if left(r) else None
        func = BINARY[op]
        return lambda r: func(left(r), right(r))

    def _power(self, node: Tree) -> Node:
        base, exponent = self.build(node.children[0]), self.build(node.children[2])
        return lambda r: base(r) ** exponent(r)

    def _unary(self, node: Tree) -> Node:
        op_tok, operand_tree = node.children
        func, operand = UNARY[str(op_tok)], self.build(operand_tree)
        return lambda r: func(operand(r))

    def _logic(self, node: Tree) -> Node:
        left, op_tok, right = self.build(node.children[0]), str(node.children[1]), self.build(node.children[2])
        if op_tok == "and":
            return lambda r: bool(left(r) and right(r))
        return lambda r: bool(left(r) or right(r))

    def _compare(self, node: Tree) -> Node:
        children = node.children
        operands = [self.build(c) for c in children[0::2]]
        ops = [COMPARISONS[_comp_name(c)] for c in children[1::2]]

        def run(resolve: Resolver) -> bool:
            left = operands[0](resolve)
            for func, operand in zip(ops, operands[1:], strict=True):
                right = operand(resolve)
                if not func(left, right):
                    return False
                left = right
            return True

        return run


def _comp_name(node: Tree | Token) -> str:
    if isinstance(node, Tree):
        if node.data == "not_in":
            return "not in"
        if node.data == "is_not":
            return "is not"
        return str(node.children[0])
    return str(node)


def compile_expression(text: str, schema: Mapping[str, frozenset[str] | None]) -> Expression:
    """Parse and check one expression. ``schema`` maps identifiers to their allowed attributes
    (None: any attribute, checked when evaluated)."""
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as exc:
        raise ExpressionError(_describe(exc, text), exc.line, exc.column) from None
    if not (isinstance(tree, Tree) and tree.data == "binop" and str(tree.children[1]) == "->"):
        raise ExpressionError("expression has no implication '-> result'", 1, 1)
    compiler = _Compiler(schema)
    run = compiler.build(tree)
    return Expression(text=text, identifiers=frozenset(compiler.identifiers), _run=run)


def _describe(exc: UnexpectedInput, text: str) -> str:
    if isinstance(exc, UnexpectedEOF):
        return "syntax error: expression ends too early"
    if isinstance(exc, UnexpectedToken):
        token = exc.token
        if token.type == "$END":
            return "syntax error: expression ends too early"
        return f"syntax error: unexpected {str(token)!r}"
    if isinstance(exc, UnexpectedCharacters) and exc.pos_in_stream is not None:
        return f"syntax error: unexpected character {text[exc.pos_in_stream]!r}"
    return "syntax error"
