"""Parsing expressions into a small tree, accepting exactly what PeekabooAV 2.1's parser accepts.

PeekabooAV parses with a PEG (ordered choice, backtracking), so this is a hand-written recursive-descent
parser with the same alternatives in the same order rather than a grammar for a table-driven parser;
the places where that matters:

- An operand is tried as a literal, then a list or set, then a parenthesised expression. A literal
  includes dotted names, and a dotted name may be parenthesised: ``(sample).filename`` and
  ``[(sample.filename)]`` are accepted, and inside such parentheses any word is a name, so ``(True)``
  is the identifier ``True``.
- Where an operand is expected, every word that is not ``True False None bad fail good ignore
  unknown`` is a name, ``and``/``or``/``not``/``in``/``is`` included: ``True or not -> bad`` parses.
- Keywords (``-> and or not in is`` and the literals above) must not touch a letter, digit, ``_`` or
  ``$`` on either side: ``True->bad`` and ``1and 2`` are syntax errors.
- The text has its tabs expanded to spaces (tab stops of 8) before anything else, strings and regexes
  included; spaces, tabs, CR and LF separate tokens, nothing else does.
- String and regex literals end at their line. In both, ``\\t \\n \\f \\r`` are replaced by the control
  character first, then a backslash before any other character is dropped — so ``/\\./`` is the regex
  ``.`` and ``"\\\\n"`` is a backslash followed by a newline.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Any

WORD_CHARS = frozenset(string.ascii_letters + string.digits + "_$")
_SPACE = " \t\r\n"
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_REAL = re.compile(r"[0-9]+\.[0-9]+")
_INT = re.compile(r"[0-9]+")
_QUOTED = {q: re.compile(rf"{re.escape(q)}(?:\\.|[^{re.escape(q)}\n\r\\])*{re.escape(q)}") for q in "\"'/"}
_CONTROL = (("\\t", "\t"), ("\\n", "\n"), ("\\f", "\f"), ("\\r", "\r"))
_BACKSLASH = re.compile(r"\\(.)")  # no DOTALL: a backslash before a newline stays
_RESULT_WORDS = ("bad", "fail", "good", "ignore", "unknown")
_TOKEN = re.compile(r"\*\*|//|<<|>>|<=|>=|==|!=|->|[-+*/%&|^~<>()\[\]{},.]|[A-Za-z][A-Za-z0-9_]*|[0-9]+|[\"'/]")
MAX_DEPTH = 40
# tightest first: (node kind, operator tokens — longer first where one is a prefix of another — or keyword)
_LEVELS: list[tuple[str, tuple[str, ...] | str]] = [
    ("power", ("**",)), ("unary", ("+", "-", "~")), ("arith", ("*", "//", "/", "%")), ("arith", ("+", "-")),
    ("arith", ("<<", ">>")), ("arith", ("&",)), ("arith", ("^",)), ("arith", ("|",)), ("compare", ()),
    ("unary", "not"), ("logic", "and"), ("logic", "or"), ("implies", "->"),
]
_FIRSTS = [frozenset(t[0] for t in tokens) if isinstance(tokens, tuple) else frozenset() for _, tokens in _LEVELS]


class SyntaxProblem(ValueError):
    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


@dataclass(frozen=True, slots=True, eq=False)
class Node:
    """``kind`` is one of: const (``value``), regex (``value``: the source), name (``value``), attr
    (``value``: attribute name, ``items[0]``: the object), badattr (an attribute that is not a name),
    result (``value``: the word), list, set, unary (``value``: operator), arith / compare / logic
    (``ops`` between ``items``), power, implies."""

    kind: str
    offset: int
    value: Any = None
    items: tuple[Node, ...] = ()
    ops: tuple[str, ...] = ()


def unescape(body: str) -> str:
    """PeekabooAV's un-escaping of a string or regex literal's text."""
    if "\\" in body:
        for escape, char in _CONTROL:
            body = body.replace(escape, char)
    return _BACKSLASH.sub(r"\g<1>", body)


def _keep_unless_slash(match: re.Match[str]) -> str:
    return "/" if match.group(1) == "/" else match.group(0)


Parsed = tuple[Node, int] | None


class Parser:
    """One parse of one text. Methods take an offset and return (node, end offset) or None; ``far``
    remembers the furthest offset where something was expected, for the error message."""

    def __init__(self, text: str, raw_regex: bool = False) -> None:
        self.text = text
        self.raw_regex = raw_regex
        self.far = 0
        self.depth = 0
        # where the next token starts, for every offset: skipping spaces is the parser's commonest step
        self.starts = list(range(len(text) + 1))
        for pos in range(len(text) - 1, -1, -1):
            if text[pos] in _SPACE:
                self.starts[pos] = self.starts[pos + 1]

    # terminals
    def skip(self, pos: int) -> int:
        return self.starts[pos]

    def literal(self, pos: int, token: str) -> int | None:
        pos = self.starts[pos]
        if self.text.startswith(token, pos):
            return pos + len(token)
        if pos > self.far:
            self.far = pos
        return None

    def keyword(self, pos: int, word: str) -> int | None:
        pos = self.starts[pos]
        text, end = self.text, pos + len(word)
        if (text.startswith(word, pos) and (pos == 0 or text[pos - 1] not in WORD_CHARS)
                and (end >= len(text) or text[end] not in WORD_CHARS)):
            return end
        if pos > self.far:
            self.far = pos
        return None

    def pattern(self, pos: int, regex: re.Pattern[str]) -> tuple[str, int, int] | None:
        pos = self.starts[pos]
        match = regex.match(self.text, pos)
        if match is None:
            if pos > self.far:
                self.far = pos
            return None
        return match.group(), pos, match.end()

    # operators of each level
    def operator(self, level: int, pos: int) -> tuple[str, int] | None:
        tokens = _LEVELS[level][1]
        if isinstance(tokens, str):
            end = self.keyword(pos, tokens)
            return None if end is None else (tokens, end)
        if not tokens:
            return self._comparison(pos)
        start = self.starts[pos]
        if start < len(self.text) and self.text[start] in _FIRSTS[level]:
            for token in tokens:
                if self.text.startswith(token, start):
                    return token, start + len(token)
        if start > self.far:
            self.far = start
        return None

    def _comparison(self, pos: int) -> tuple[str, int] | None:
        end = self.keyword(pos, "is")
        if end is not None:
            after = self.keyword(end, "not")
            return ("is", end) if after is None else ("is not", after)
        end = self.keyword(pos, "in")
        if end is not None:
            return "in", end
        end = self.keyword(pos, "not")
        if end is not None:
            after = self.keyword(end, "in")
            if after is not None:
                return "not in", after
        start = self.starts[pos]
        for token in ("<=", "<", ">=", ">", "!=", "==", "isdisjoint"):
            if self.text.startswith(token, start):
                return token, start + len(token)
        if start > self.far:
            self.far = start
        return None

    # the levels, loosest last
    def expression(self, pos: int, level: int = 12) -> Parsed:
        if level < 0:
            return self.base(pos)
        kind = _LEVELS[level][0]
        if kind == "unary":
            found = self.operator(level, pos)
            if found is not None:
                operand = self.nested(found[1], level)
                if operand is not None:
                    return Node("unary", self.skip(pos), found[0], (operand[0],)), operand[1]
            return self.expression(pos, level - 1)
        first = self.expression(pos, level - 1)
        if first is None:
            return None
        items, ops, end = [first[0]], [], first[1]
        while (found := self.operator(level, end)) is not None:
            right = self.expression(found[1], level - 1)
            if right is None:
                break
            ops.append(found[0])
            items.append(right[0])
            end = right[1]
        if not ops:
            return first
        return Node(kind, items[0].offset, None, tuple(items), tuple(ops)), end

    def nested(self, pos: int, level: int) -> Parsed:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise SyntaxProblem(f"syntax error: nested more than {MAX_DEPTH} levels deep", self.skip(pos))
            return self.expression(pos, level)
        finally:
            self.depth -= 1

    def base(self, pos: int) -> Parsed:
        found = self.operand(pos)
        if found is not None:
            return found
        end = self.literal(pos, "(")
        if end is None:
            return None
        inner = self.nested(end, 12)
        if inner is None:
            return None
        close = self.literal(inner[1], ")")
        return None if close is None else (inner[0], close)

    def operand(self, pos: int) -> Parsed:
        found = self.rval(pos)
        if found is not None:
            return found
        for kind, opening, closing in (("list", "[", "]"), ("set", "{", "}")):
            end = self.literal(pos, opening)
            if end is None:
                continue
            items: list[Node] = []
            item = self.rval(end)
            if item is not None:
                items.append(item[0])
                end = item[1]
                while (comma := self.literal(end, ",")) is not None and (item := self.rval(comma)) is not None:
                    items.append(item[0])
                    end = item[1]
            close = self.literal(end, closing)
            if close is not None:
                return Node(kind, self.skip(pos), None, tuple(items)), close
        return None

    def rval(self, pos: int) -> Parsed:
        start = self.starts[pos]
        first = self.text[start:start + 1]
        # each alternative below can only match on its first character: try only those that can
        if first.isalpha():
            for word, value in (("True", True), ("False", False), ("None", None)):
                end = self.keyword(start, word)
                if end is not None:
                    return Node("const", start, value), end
            for word in _RESULT_WORDS:
                end = self.keyword(start, word)
                if end is not None:
                    return Node("result", start, word), end
        elif first.isdigit():
            for regex, convert in ((_REAL, float), (_INT, int)):
                number = self.pattern(start, regex)
                if number is not None:
                    return Node("const", start, convert(number[0])), number[2]
        elif first in _QUOTED:
            quoted = self.pattern(start, _QUOTED[first])
            if quoted is None:
                return None
            body = quoted[0][1:-1]
            if first != "/":
                return Node("const", start, unescape(body)), quoted[2]
            source = _BACKSLASH.sub(_keep_unless_slash, body) if self.raw_regex else unescape(body)
            return Node("regex", start, source), quoted[2]
        return self.dotted(start)

    def dotted(self, pos: int) -> Parsed:
        first = self.dotted_base(pos)
        if first is None:
            return None
        node, end = first
        while (dot := self.literal(end, ".")) is not None and (name := self.dotted_base(dot)) is not None:
            attr = name[0]
            if attr.kind == "name":
                node = Node("attr", node.offset, attr.value, (node,))
            else:  # PeekabooAV accepts a.(b.c) but fails when it evaluates it
                node = Node("badattr", node.offset, None, (node,))
            end = name[1]
        return node, end

    def dotted_base(self, pos: int) -> Parsed:
        name = self.pattern(pos, _NAME)
        if name is not None:
            return Node("name", name[1], name[0]), name[2]
        end = self.literal(pos, "(")
        if end is None:
            return None
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise SyntaxProblem(f"syntax error: nested more than {MAX_DEPTH} levels deep", self.skip(pos))
            inner = self.dotted(end)
        finally:
            self.depth -= 1
        if inner is None:
            return None
        close = self.literal(inner[1], ")")
        return None if close is None else (inner[0], close)

    def parse(self) -> Node:
        found = self.expression(0)
        end = self.skip(found[1]) if found is not None else 0
        if found is not None and end == len(self.text):
            return found[0]
        at = max(self.far, end)
        if at >= len(self.text):
            raise SyntaxProblem("syntax error: expression ends too early", at)
        token = _TOKEN.match(self.text, at)
        if token is None or token.group() in "\"'":
            what = "unterminated string" if token is not None else f"unexpected character {self.text[at]!r}"
            raise SyntaxProblem(f"syntax error: {what}", at)
        raise SyntaxProblem(f"syntax error: unexpected {token.group()!r}", at)


def parse(text: str, peekaboo: bool = True) -> tuple[Node, str]:
    """The tree and the text its offsets refer to (PeekabooAV's parser expands tabs first; mailowl's
    dialect keeps them and passes regexes through with only ``\\/`` unescaped)."""
    if peekaboo:
        text = text.expandtabs()
    return Parser(text, raw_regex=not peekaboo).parse(), text
