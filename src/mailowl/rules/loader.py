"""Reading rulesets: PeekabooAV's ruleset.conf (INI, ``opt.N`` lists, ``.d/`` drop-ins) or native TOML."""

from __future__ import annotations

import re
from importlib import resources as importlib_resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailowl.analysis.clamav import Clamd
from mailowl.analysis.contract import Resources
from mailowl.analysis.cortex import CortexSettings
from mailowl.rules import RULES, Rule, RulesetError, load_builtin_rules
from mailowl.rules.engine import Engine
from mailowl.tomlfile import load_ini, load_toml

if TYPE_CHECKING:
    from mailowl.config import Config

# PeekabooAV rules mailowl knows by name but cannot run; their sections may stay in a migrated file.
UNSUPPORTED_RULES = {
    "cuckoo_evil_sig": "Cuckoo is not supported by mailowl",
    "cuckoo_score": "Cuckoo is not supported by mailowl",
    "cuckoo_analysis_failed": "Cuckoo is not supported by mailowl",
    "requests_evil_domain": "it needs Cuckoo's network report, and Cuckoo is not supported by mailowl",
}
_DROPIN = re.compile(r"^[0-9][0-9]-.*\.conf$")

RawRuleset = dict[str, Any]  # {"rules": [...], "<rule>": {option: value-or-list}}


def default_ruleset_path() -> Path:
    return Path(str(importlib_resources.files("mailowl").joinpath("defaults/ruleset.toml")))


def _ini_sections(path: Path) -> list[tuple[str, list[tuple[str, str]]]]:
    parser = load_ini(path, RulesetError, "ruleset file")
    return [(name, list(parser[name].items())) for name in parser.sections()]


def read_peekaboo(path: Path) -> RawRuleset:
    """Merge the main file and its drop-ins. ``opt.<anything>`` entries form list ``opt`` in file order;
    ``opt.-: -`` empties the list built so far; a plain option set again in a later file replaces it."""
    files = [path]
    dropins = path.parent / f"{path.name}.d"
    if dropins.is_dir():
        files += sorted(p for p in dropins.iterdir() if _DROPIN.match(p.name) and p.is_file())
    merged: dict[str, dict[str, Any]] = {}
    for file in files:
        for section, items in _ini_sections(file):
            target = merged.setdefault(section, {})
            for key, value in items:
                base, dot, suffix = key.partition(".")
                if not dot:
                    if isinstance(target.get(base), dict):
                        raise RulesetError(f"{file}: [{section}] {key}: {base} is a list, write {base}.1, {base}.2, ...")
                    target[base] = value
                    continue
                entries = target.get(base)
                if entries is None:
                    entries = target[base] = {}
                elif not isinstance(entries, dict):
                    raise RulesetError(f"{file}: [{section}] {key}: {base} was given as a single value before")
                if suffix == "-" and value.strip() == "-":
                    entries.clear()
                else:
                    entries[suffix] = value
    raw: RawRuleset = {}
    for section, options in merged.items():
        raw[section] = {k: list(v.values()) if isinstance(v, dict) else v for k, v in options.items()}
    rules_section = raw.pop("rules", None)
    if rules_section is None:
        raise RulesetError(f"{path}: no [rules] section listing the rules (rule.1 : known, ...)")
    unknown = set(rules_section) - {"rule"}
    if unknown:
        raise RulesetError(f"{path}: [rules]: unknown option(s) {', '.join(sorted(unknown))} (allowed: rule.N)")
    rule_list = rules_section.get("rule", [])
    if isinstance(rule_list, str):
        raise RulesetError(f"{path}: [rules] rule: write the rules as rule.1, rule.2, ...")
    raw["rules"] = [r.strip() for r in rule_list]
    return raw


def read_toml(path: Path) -> RawRuleset:
    data = load_toml(path, RulesetError)
    ruleset: RawRuleset = data.get("ruleset", data)
    return ruleset


def read_ruleset(path: Path) -> RawRuleset:
    return read_toml(path) if path.suffix == ".toml" else read_peekaboo(path)


def build_engine(raw: RawRuleset, origin: str, resources: Resources | None = None) -> Engine:
    """Instantiate the rules; every problem is a RulesetError naming ``origin``, the section and option."""
    load_builtin_rules()
    resources = resources or Resources()
    names = raw.get("rules")
    if not isinstance(names, list) or not names:
        raise RulesetError(f"{origin}: the rule list is empty; name the rules to run in order")
    known_sections = set(RULES) | set(UNSUPPORTED_RULES) | {"rules"}
    unknown_sections = sorted(set(raw) - known_sections)
    if unknown_sections:
        raise RulesetError(f"{origin}: unknown section(s) {', '.join(unknown_sections)} "
                           f"(sections are rule names: {', '.join(sorted(RULES))})")
    rules: list[Rule] = []
    for name in names:
        if name in UNSUPPORTED_RULES:
            raise RulesetError(f"{origin}: rule '{name}' cannot be enabled: {UNSUPPORTED_RULES[name]}")
        if name not in RULES:
            raise RulesetError(f"{origin}: unknown rule '{name}' (known: {', '.join(sorted(RULES))})")
        options = raw.get(name, {})
        if not isinstance(options, dict):
            raise RulesetError(f"{origin}: [{name}] must be a table of options")
        try:
            rules.append(RULES[name](options, resources))
        except RulesetError as exc:
            raise RulesetError(f"{origin}: {exc}") from None
    return Engine(rules, resources)


def load_engine(path: Path | None = None, resources: Resources | None = None) -> Engine:
    path = path or default_ruleset_path()
    return build_engine(read_ruleset(path), str(path), resources)


def engine_for(config: Config) -> Engine:
    """The configured ruleset with the configured analysis backends."""
    resources = Resources()
    if config.clamav.socket:
        resources.clamd = Clamd(config.clamav.socket, config.clamav.timeout)
    cortex = config.cortex
    if cortex.url:
        resources.cortex = CortexSettings(cortex.url, cortex.tlp, cortex.api_token, cortex.poll_interval,
                                          cortex.submit_original_filename, cortex.maximum_job_age, cortex.wait)
    return load_engine(config.ruleset_path, resources)
