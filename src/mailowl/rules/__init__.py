"""Rules: small classes with one job each, registered by the name a ruleset uses for them."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from mailowl.results import Result, RuleResult

if TYPE_CHECKING:
    from mailowl.analysis.contract import Resources
    from mailowl.rules.context import AnalysisContext


class RulesetError(ValueError):
    """A ruleset that cannot work; the message names the file, section and option."""


@dataclass(frozen=True)
class Option:
    kind: str  # int | str | list | relist | irelist | result
    default: Any = None
    #: a list option that must not be empty
    required: bool = False


def _regexes(values: list[str], flags: int, where: str) -> list[re.Pattern[str]]:
    out = []
    for value in values:
        try:
            out.append(re.compile(value, flags))
        except re.error as exc:
            raise RulesetError(f"{where}: bad regular expression {value!r}: {exc}") from exc
    return out


def coerce_option(rule: str, name: str, option: Option, raw: Any) -> Any:
    where = f"[{rule}] {name}"
    if option.kind == "int":
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise RulesetError(f"{where}: expected a whole number, got {raw!r}") from None
    if option.kind == "result":
        try:
            return Result[str(raw)]
        except KeyError:
            allowed = ", ".join(r.name for r in Result)
            raise RulesetError(f"{where}: expected one of {allowed}, got {raw!r}") from None
    if option.kind == "str":
        return str(raw)
    if not isinstance(raw, list):
        raise RulesetError(f"{where}: expected a list; write {name}.1, {name}.2, ... in a ruleset.conf "
                           f"or {name} = [...] in TOML")
    values = [str(v) for v in raw]
    if option.required and not values:
        raise RulesetError(f"{where}: the list is empty, give at least one {name}")
    if option.kind == "relist":
        return _regexes(values, 0, where)
    if option.kind == "irelist":
        return _regexes(values, re.IGNORECASE, where)
    return values


class Rule:
    name: ClassVar[str] = "unnamed"
    options: ClassVar[dict[str, Option]] = {}

    def __init__(self, config: dict[str, Any], resources: Resources) -> None:
        unknown = sorted(set(config) - set(self.options))
        if unknown:
            allowed = ", ".join(sorted(self.options)) or "none"
            raise RulesetError(f"[{self.name}]: unknown option(s) {', '.join(unknown)} (allowed: {allowed})")
        self.config: dict[str, Any] = {}
        for key, option in self.options.items():
            if key in config:
                self.config[key] = coerce_option(self.name, key, option, config[key])
            elif option.required:
                raise RulesetError(f"[{self.name}] {key}: required, give at least one {key}")
            else:
                self.config[key] = option.default
        self.resources = resources
        self.setup()

    def setup(self) -> None:
        """Check and prepare options; raise RulesetError for anything unusable."""

    def result(self, result: Result, reason: str, further: bool) -> RuleResult:
        return RuleResult(self.name, result, reason, further)

    def evaluate(self, ctx: AnalysisContext) -> RuleResult:
        raise NotImplementedError


RULES: dict[str, type[Rule]] = {}


def rule(cls: type[Rule]) -> type[Rule]:
    RULES[cls.name] = cls
    return cls


def load_builtin_rules() -> None:
    from mailowl.rules import builtin  # noqa: F401  (registers every rule module)


RuleFactory = Callable[[dict[str, Any]], Rule]
