"""The values expressions compute with, behaving as PeekabooAV 2.1's do under Python's operators.

Expressions evaluate with Python's own operators on Python values, so what must match PeekabooAV is the
behaviour of the few special values it introduces; everything else (int, float, str, list, set, bool,
None) is Python's. The facts, from PeekabooAV's behaviour:

- A regex ``/re/`` is equal to a string it matches from start to end (``re.match`` on ``re$``), and
  ``in`` one it is found in (``re.search``); against a list or set it tests the elements, against None
  it is false, against anything else Python's ``re`` raises TypeError. It defines equality without a
  hash, so it cannot be put into a set: ``{/a/}`` raises TypeError.
- A list literal holding a regex is a *pattern list*: ``==`` holds if one of its elements equals the
  other side put into a one-element list (a plain string element therefore never does), and ``x in``
  it holds if ``x in element`` for one element — for a plain string element, that tests whether x is a
  substring of the listed string. Otherwise it is a list (``+``, ``<``, ``%`` work as on lists).
- Result literals are an enumeration, not numbers: ``bad == 5`` is false, ``{bad, 5}`` has two members,
  ``-bad`` raises, and ``<`` between results means ``<=`` (``good < good`` holds).
- For ``==``/``!=`` a regex or pattern list on the right is swapped to the left, for ``in``/``not in``
  one on the left is swapped to the right, so that its own method decides; ``x in None`` and
  ``x not in None`` are both false.
"""

from __future__ import annotations

import enum
import operator
import re
from collections.abc import Callable
from typing import Any

_SEQUENCES = (list, set)


class Regex:
    """A regex literal. No ``__hash__``: a regex cannot be a set member, as in PeekabooAV."""

    __slots__ = ("source", "search_re", "match_re")

    def __init__(self, source: str) -> None:
        self.source = source
        self.search_re = re.compile(source)
        # re.match anchors the start only; "$" makes == a whole-string match
        self.match_re = re.compile(f"{source}$")

    def __repr__(self) -> str:
        return f"/{self.source}/"

    @staticmethod
    def _any(test: Callable[[Any], Any], other: Any) -> bool:
        if isinstance(other, _SEQUENCES):
            return any(test(value) for value in other)
        if other is None:
            return False
        return bool(test(other))

    def __eq__(self, other: object) -> bool:
        return self._any(self.match_re.match, other)

    def __ne__(self, other: object) -> bool:
        return not self._any(self.match_re.match, other)

    def __contains__(self, other: object) -> bool:
        return self._any(self.search_re.search, other)

    __hash__ = None  # type: ignore[assignment]


class PatternList(list[Any]):
    """A list literal holding at least one regex."""

    def __eq__(self, other: object) -> bool:
        wrapped = other if isinstance(other, _SEQUENCES) else [other]
        return any(element == wrapped for element in self)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __contains__(self, item: object) -> bool:
        return any(item in element for element in self)

    __hash__ = None  # type: ignore[assignment]


def is_pattern(value: Any) -> bool:
    return isinstance(value, (Regex, PatternList))


class Result(enum.Enum):
    """Result literals and result-valued attributes inside expressions. The class is called ``Result``
    and numbered from 1 because ``'%s' % bad`` and ``bad.value`` show it, as they do in PeekabooAV."""

    unchecked = 1
    unknown = 2
    ignored = 3
    good = 4
    failed = 5
    bad = 6

    def __lt__(self, other: Any) -> bool:
        if type(other) is Result:
            return self.value <= other.value  # PeekabooAV's "<" is "<="; kept so verdicts agree
        return NotImplemented

    def __le__(self, other: Any) -> bool:
        if type(other) is Result:
            return self.value <= other.value
        return NotImplemented

    def __gt__(self, other: Any) -> bool:
        if type(other) is Result:
            return self.value > other.value
        return NotImplemented

    def __ge__(self, other: Any) -> bool:
        if type(other) is Result:
            return self.value >= other.value
        return NotImplemented


def _in(a: Any, b: Any) -> bool:
    return b is not None and a in b


def _not_in(a: Any, b: Any) -> bool:
    return b is not None and a not in b


def _isdisjoint(a: Any, b: Any) -> Any:
    return a.isdisjoint(b)


def _swapping(func: Callable[[Any, Any], Any], swap_when_right: bool) -> Callable[[Any, Any], Any]:
    if swap_when_right:  # == and !=: a pattern on the right decides from the left
        def compare(a: Any, b: Any) -> Any:
            return func(b, a) if is_pattern(b) else func(a, b)
    else:  # in, not in: a pattern on the left is asked whether it is found in the right
        def compare(a: Any, b: Any) -> Any:
            return func(b, a) if is_pattern(a) else func(a, b)
    return compare


COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": _swapping(operator.eq, True),
    "!=": _swapping(operator.ne, True),
    "in": _swapping(_in, False),
    "not in": _swapping(_not_in, False),
    "is": operator.is_,
    "is not": operator.is_not,
    "isdisjoint": _isdisjoint,
}

# PeekabooAV folds a chain of these with augmented assignment (``ret += x``): a list extends itself
# with any iterable, a set is updated in place. Literals are built afresh for every evaluation and
# attributes are read as copies, so nothing outside the expression changes.
ARITHMETIC: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.iadd,
    "-": operator.isub,
    "*": operator.imul,
    "/": operator.itruediv,
    "//": operator.ifloordiv,
    "%": operator.imod,
    "<<": operator.ilshift,
    ">>": operator.irshift,
    "&": operator.iand,
    "^": operator.ixor,
    "|": operator.ior,
}


def _plus(value: Any) -> Any:
    return value  # PeekabooAV's unary + returns its operand untouched: +True is True


UNARY: dict[str, Callable[[Any], Any]] = {
    "+": _plus,
    "-": operator.neg,
    "~": operator.invert,
    "not": operator.not_,
}
