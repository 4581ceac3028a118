"""Regular-expression values and PeekabooAV's comparison rules for them.

``/re/ in x`` searches x (or any element of a list/set x); ``/re/ == x`` matches the whole string (the
pattern with ``$`` appended, as PeekabooAV does) against x or any element; ``!=`` is its negation. A list
or set holding regexes matches if any of its regexes does. Nothing is ever in None.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable
from typing import Any


class Regex:
    __slots__ = ("source", "search_re", "match_re")

    def __init__(self, source: str) -> None:
        self.source = source
        self.search_re = re.compile(source)
        self.match_re = re.compile(f"{source}$")

    def __repr__(self) -> str:
        return f"/{self.source}/"

    def __hash__(self) -> int:
        return hash(self.source)

    def _any(self, test: Callable[[Any], Any], other: Any) -> bool:
        if isinstance(other, (list, set, frozenset, tuple)):
            return any(test(v) for v in other)
        if other is None:
            return False
        return bool(test(other))

    def matches(self, other: Any) -> bool:
        return self._any(self.match_re.match, other)

    def found_in(self, other: Any) -> bool:
        return self._any(self.search_re.search, other)


class RegexCollection:
    """A list or set literal that holds at least one regex."""

    __slots__ = ("items",)

    def __init__(self, items: Iterable[Any]) -> None:
        self.items = list(items)

    def __repr__(self) -> str:
        return repr(self.items)

    def matches(self, other: Any) -> bool:
        if not isinstance(other, (list, set, frozenset, tuple)):
            other = [other]
        for item in self.items:
            if isinstance(item, Regex):
                if item.matches(other):
                    return True
            elif item == other:
                return True
        return False

    def found_in(self, other: Any) -> bool:
        for item in self.items:
            if isinstance(item, Regex):
                if item.found_in(other):
                    return True
            elif other is not None and item in other:
                return True
        return False


def _is_regex(value: Any) -> bool:
    return isinstance(value, (Regex, RegexCollection))


def eq(a: Any, b: Any) -> bool:
    if _is_regex(a):
        return a.matches(b)
    if _is_regex(b):
        return b.matches(a)
    return bool(a == b)


def ne(a: Any, b: Any) -> bool:
    if _is_regex(a) or _is_regex(b):
        return not eq(a, b)
    return bool(a != b)


def contains(a: Any, b: Any) -> bool:
    """``a in b``"""
    if _is_regex(a):
        return a.found_in(b)
    if _is_regex(b):
        return b.found_in(a)
    return b is not None and a in b


def not_contains(a: Any, b: Any) -> bool:
    if _is_regex(a) or _is_regex(b):
        return not contains(a, b)
    return b is not None and a not in b


def isdisjoint(a: Any, b: Any) -> bool:
    return bool(a.isdisjoint(b))


COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": eq,
    "!=": ne,
    "in": contains,
    "not in": not_contains,
    "is": operator.is_,
    "is not": operator.is_not,
    "isdisjoint": isdisjoint,
}

BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "//": operator.floordiv,
    "%": operator.mod,
    "<<": operator.lshift,
    ">>": operator.rshift,
    "&": operator.and_,
    "^": operator.xor,
    "|": operator.or_,
}

UNARY: dict[str, Callable[[Any], Any]] = {
    "+": operator.pos,
    "-": operator.neg,
    "~": operator.invert,
    "not": operator.not_,
}
