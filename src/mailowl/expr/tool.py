"""``mailowl expr``: try an expression on a sample's facts before putting it into a ruleset.

Every answer is ``{"result": ..., "error": ..., "phase": ...}``: ``result`` is the result name, or null
when the condition does not hold; an expression that cannot be loaded has ``phase: "load"`` and the
message check-config gives; one that raises while evaluated (or yields no result) has ``result:
"failed"``, ``phase: "eval"`` and the error — the ``expressions`` rule makes such a sample ``failed``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any

from mailowl.expr import schema
from mailowl.expr.evaluate import Expression, ExpressionError, NotAResult, Unreadable, load

Answer = dict[str, Any]


class Evaluator:
    """Answers cases, loading each distinct expression once."""

    def __init__(self, dialect: str = "peekaboo") -> None:
        self.dialect = dialect
        self._loaded: dict[str, Expression | ExpressionError] = {}

    def load(self, text: str) -> Expression | ExpressionError:
        loaded = self._loaded.get(text)
        if loaded is None:
            try:
                loaded = load(text, self.dialect)
            except ExpressionError as exc:
                loaded = exc
            self._loaded[text] = loaded
        return loaded

    def answer(self, text: str, facts: Mapping[str, Any]) -> Answer:
        loaded = self.load(text)
        if isinstance(loaded, ExpressionError):
            return {"result": None, "error": str(loaded), "phase": "load"}
        try:
            reports = schema.from_json(facts)
        except ValueError as exc:
            return {"result": "failed", "error": f"facts: {exc}", "phase": "eval"}

        def resolve(name: str) -> Any:
            try:
                return reports[name]
            except KeyError:
                raise schema.MissingFact(f"no facts of {name} given") from None

        try:
            result = loaded.evaluate(resolve)
        except Unreadable as exc:
            return {"result": "failed", "error": exc.problem, "phase": "eval"}
        except Exception as exc:
            return {"result": "failed", "error": describe(exc), "phase": "eval"}
        return {"result": result.name if result is not None else None, "error": None, "phase": None}


def describe(exc: BaseException) -> str:
    if isinstance(exc, (schema.MissingFact, NotAResult)):  # their messages say it all
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def batch(lines: Iterable[str], evaluator: Evaluator) -> Iterator[Answer]:
    """One answer per non-empty line of ``{"expression": ..., "facts": {...}}``, in order."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            case = json.loads(line)
            text, facts = case["expression"], case.get("facts", {})
            if not isinstance(text, str) or not isinstance(facts, Mapping):
                raise TypeError("expression must be a string and facts an object")
        except (ValueError, KeyError, TypeError) as exc:
            yield {"result": None, "error": f"line {number}: not a case: {describe(exc)}", "phase": "load"}
            continue
        yield evaluator.answer(text, facts)


def write_lines(answers: Iterable[Answer], out: IO[str]) -> None:
    dumps = json.JSONEncoder(ensure_ascii=False).encode
    out.writelines(dumps(answer) + "\n" for answer in answers)
